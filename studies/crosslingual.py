"""Do English and Japanese share one emotion geometry inside the model?

    python studies/crosslingual.py                       # embedded Gemma-3-270M, EN/JA, a few minutes on CPU
    python studies/crosslingual.py --model Qwen/Qwen2.5-7B-Instruct --remote   # the same on NDIF

Per layer: EN-JA cosine of each emotion's vector (raw, centered, denoised); RSA of the two 30x30 cosine
matrices with the emotions as the unit (bootstrap CI over emotions, label-permutation p per layer and for
the best layer), the noise-corrected RSA (split-half, Spearman-Brown), the stimulus baselines (TF-IDF, the
topic design) and the partial RSA without them; cross-layer RSA; PCA against valence/arousal; clustering
agreement against a permutation null; Procrustes alignment against a shuffled-label null; geodesic vs
euclidean RSA; a logit lens of the vectors; and cross-lingual transfer of a nearest-vector classifier.
Writes outputs/crosslingual/<model>/ (config.json, results/*.parquet, figures/, vectors/, report.md).
"""

from __future__ import annotations

import click
import numpy as np
import polars as pl
from tqdm.auto import tqdm

from emonn import EmonnError, baselines, corpus, extract, models, plots, stats, study
from emonn import textmetrics as tm
from emonn.vectors import EmotionVectors


def upper_cosines(vectors: np.ndarray) -> np.ndarray:
    """Cosine matrices per layer of `(n_emotions, n_layers, d)`: `(n_layers, n_emotions, n_emotions)`."""
    return np.stack([stats.cosine_matrix(vectors[:, i]) for i in range(vectors.shape[1])])


@study.command("crosslingual", models=(models.MULTILINGUAL_MODEL,))
@click.option("--denoise/--no-denoise", default=True, show_default=True,
              help="Project out the neutral texts' top PCs (50%% of their variance).")
@click.option("--permutations", default=10_000, show_default=True, help="Label permutations per RSA test.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples of the emotions.")
@click.option("--splits", default=5, show_default=True, help="Random split-halves per language (noise ceiling).")
@click.option("--pca-layer", type=int, default=None, help="Layer for PCA, clustering, logit lens (default: best RSA).")
def main(run: study.Run, denoise: bool, permutations: int, bootstrap: int, splits: int, pca_layer: int | None) -> None:
    if len(run.langs) != 2:
        raise EmonnError(f"--langs needs two different languages, e.g. en,ja (got '{run.options['langs']}')")
    (a, b), model, seed = run.langs, run.model, run.seed
    layers = run.layers(model)
    focus = None if pca_layer is None else model.check_layers([pca_layer])[0]  # checked before any reading
    if focus is not None and focus not in layers:
        raise EmonnError(f"--pca-layer {focus} is not among the analysed --layers")
    stories = run.stories()
    run.note(corpus_digest=corpus.digest(stories))

    # ---- read the stories (cached per text) and fit the vectors per language
    present = {lang: set(stories.filter(pl.col("lang") == lang)["emotion"]) for lang in run.langs}
    emotions = [e for e in corpus.emotion_names() if all(e in present[lang] for lang in run.langs)]
    if len(emotions) < 4:
        raise EmonnError(f"need at least 4 emotions present in both languages, found {len(emotions)}")
    vec, readings, centered = {}, {}, {}
    for lang in run.langs:
        vec[lang], readings[lang] = run.vectors(model, lang, denoise=denoise, layers=layers, emotions=emotions)
        centered[lang] = EmotionVectors.fit(readings[lang], emotions=emotions)
        run.save_vectors(lang, vec[lang])
    depth = readings[a].depth
    variant_arrays = {"raw": {lang: centered[lang].means for lang in run.langs},
                      "centered": {lang: centered[lang].vectors for lang in run.langs},
                      **({"denoised": {lang: vec[lang].vectors for lang in run.langs}} if denoise else {})}
    main_variant = "denoised" if denoise else "centered"

    # ---- 1. per-emotion cosine between the languages' vectors
    rows = []
    for variant, arrays in variant_arrays.items():
        ua, ub = (arrays[lang] / np.linalg.norm(arrays[lang], axis=-1, keepdims=True) for lang in run.langs)
        cos = (ua * ub).sum(-1)  # (n_emotions, n_layers)
        rows += [{"variant": variant, "layer": layer, "depth": float(depth[j]), "emotion": emotion,
                  "cosine": float(cos[i, j])} for i, emotion in enumerate(emotions) for j, layer in enumerate(layers)]
    emotion_cos = pl.DataFrame(rows)
    cos_by_depth = emotion_cos.group_by("variant", "layer", "depth").agg(pl.col("cosine").mean()).sort("variant",
                                                                                                          "layer")

    # ---- 2. RSA per layer, emotions as the unit: CI over emotions, p per layer and for the best (max over layers);
    # the noise-corrected RSA (split halves); stimulus baselines (TF-IDF, topics) and the partial RSA without them
    cos_a, cos_b = upper_cosines(vec[a].vectors), upper_cosines(vec[b].vectors)
    boot = dict(n_boot=bootstrap, seed=seed)
    tests = {m: stats.condition_test(cos_a, cos_b, n_permutations=permutations, method=m, **boot)
             for m in ("spearman", "pearson")}
    rng = np.random.default_rng(seed)
    halves = {lang: np.stack([[upper_cosines(EmotionVectors.fit(readings[lang].take(h), emotions=emotions,
                                                                 pcs=vec[lang].pcs).vectors)
                               for h in readings[lang].halves(rng)] for _ in range(splits)]) for lang in run.langs}
    corrected = stats.noise_corrected(cos_a, cos_b, halves[a], halves[b], **boot)
    base = {lang: baselines.stimulus(stories.filter((pl.col("lang") == lang) & pl.col("emotion").is_in(emotions)),
                                     emotions) for lang in run.langs}
    controls = {lang: np.stack(list(base[lang].values())) for lang in run.langs}  # a constant one removes nothing
    few = dict(n_permutations=min(permutations, 2000), **boot)  # partial and baseline tests: 2,000 shuffles at most
    partial = stats.condition_test(cos_a, cos_b, controls_a=controls[a], controls_b=controls[b], **few)
    n = np.arange(len(emotions))
    extra = {"corrected": corrected.estimate, "corrected_low": corrected.low, "corrected_high": corrected.high,
             f"reliability_{a}": corrected.reliability_a, f"reliability_{b}": corrected.reliability_b,
             "partial": partial.estimate, "partial_low": partial.low, "partial_high": partial.high,
             "partial_p": partial.p, **{f"{name}_{lang}": stats.rsa_samples(c, np.broadcast_to(m, c.shape), n)[0]
                                        for lang, c in ((a, cos_a), (b, cos_b)) for name, m in base[lang].items()}}
    rsa = pl.concat([pl.DataFrame({  # p FDR-corrected within each measure: one family per measure
        "layer": layers, "depth": depth, "method": method, "r": t.estimate, "ci_low": t.low, "ci_high": t.high,
        "p": t.p, "p_fdr": stats.correct(t.p).p_adjusted,
        **dict(zip(("null_low", "null_high"), np.quantile(t.null, [0.025, 0.975], axis=0))),
        **(extra if method == "spearman" else {})}) for method, t in tests.items()], how="diagonal")
    spearman = rsa.filter(pl.col("method") == "spearman")
    # the partial RSA at the layer chosen on the raw RSA, against the max over layers of its null (the choice
    # was made on a correlated statistic, so it is paid for the same way)
    top = tests["spearman"].best
    best = spearman.row(top, named=True) | {"p_best": tests["spearman"].p_best, "partial_p_best": stats.permutation_p(
        float(partial.estimate[top]), np.nanmax(partial.null, axis=1))}
    stimulus = pl.DataFrame([{"rdm": k, "r": (t := stats.condition_test(base[a][k], base[b][k], **few)).estimate[0],
                              "ci_low": t.low[0], "ci_high": t.high[0], "p": t.p[0]} for k in base[a]])

    # ---- 3. cross-layer RSA
    pairs = {f"{a}x{a}": (cos_a, cos_a), f"{b}x{b}": (cos_b, cos_b), f"{a}x{b}": (cos_a, cos_b)}
    cross_layer = pl.DataFrame([{"pair": name, "layer_a": la, "layer_b": lb, "r": float(grid[i, k])}
                                for name, grid in ((name, stats.rsa_grid(*m)) for name, m in pairs.items())
                                for i, la in enumerate(layers) for k, lb in enumerate(layers)])

    # ---- 4-7 at one layer: PCA vs valence/arousal, clustering, Procrustes; geodesic vs euclidean per layer
    focus = best["layer"] if pca_layer is None else focus
    j = layers.index(focus)
    meta = corpus.emotions().filter(pl.col("emotion").is_in(emotions)).sort(
        pl.col("emotion").replace_strict(emotions, list(range(len(emotions)))))
    norms = {"valence": meta["valence"].to_numpy(), "arousal": meta["arousal"].to_numpy()}
    pca_rows, points = [], []
    for lang in run.langs:  # PC signs fixed by valence, so the two languages' PCs point the same way
        x = vec[lang].vectors[:, j].astype(np.float64)
        pca_rows += [{"lang": lang, "layer": focus, **row}
                     for row in stats.pc_correlations(x, norms, sign_by=norms["valence"])]
        scores = stats.pc_scores(x, n_pcs=2, sign_by=norms["valence"])
        label = meta["ja"].to_list() if lang == "ja" else emotions
        points.append(pl.DataFrame({"lang": lang, "emotion": emotions, "label": label, "pc1": scores[:, 0],
                                    "pc2": scores[:, 1], "valence": norms["valence"]}))
    pca = pl.DataFrame(pca_rows)
    clusters = {lang: stats.kmeans_labels(vec[lang].vectors[:, j], k=4, seed=seed) for lang in run.langs}
    agreement = stats.cluster_agreement(vec[a].vectors[:, j], vec[b].vectors[:, j], k=4, seed=seed)
    procrustes = stats.procrustes_test(vec[a].vectors[:, j], vec[b].vectors[:, j],
                                       n_permutations=min(permutations, 1000), seed=seed)
    dist = {kind: [np.stack([f(vec[lang].vectors[:, k]) for k in range(len(layers))]) for lang in run.langs]
            for kind, f in (("euclidean", stats.euclidean_distances), ("geodesic", stats.geodesic_distances))}
    geo_r = {kind: stats.rsa_stack(*pair) for kind, pair in dist.items()}
    low, high, _ = stats.condition_bootstrap(lambda rows: stats.rsa_samples(*dist["geodesic"], rows)
                                             - stats.rsa_samples(*dist["euclidean"], rows), len(emotions), **boot)
    geodesic = pl.DataFrame({"layer": layers, "depth": depth, **geo_r, "difference": geo_r["geodesic"] - geo_r[
        "euclidean"], "difference_low": low, "difference_high": high})

    # ---- 8. logit lens of the vectors at the focus layer; a mismatch is a token whose letters are mostly in
    # a script that is not the language's (tokens without letters are never one)
    lens_rows = []
    for lang in run.langs:
        logits = extract.logit_lens(model, vec[lang].vectors[:, j])
        for i, emotion in enumerate(emotions):
            ranked = np.argsort(logits[i])
            for end, ids in (("top", ranked[::-1][:10]), ("bottom", ranked[:10])):
                for rank, token_id in enumerate(ids):
                    token = model.tokenizer.decode([int(token_id)])
                    script = tm.token_script(token)
                    lens_rows.append({"lang": lang, "emotion": emotion, "end": end, "rank": rank + 1, "token": token,
                                      "script": script, "logit": float(logits[i, token_id]),
                                      "mismatch": script is not None
                                      and script not in tm.LANG_SCRIPTS.get(lang, frozenset())})
    lens = pl.DataFrame(lens_rows, schema_overrides={"script": pl.String})
    mismatch = lens.filter(pl.col("end") == "top").group_by("lang").agg(pl.col("mismatch").mean()).sort("lang")
    top5 = lens.filter((pl.col("end") == "top") & (pl.col("rank") <= 5))
    lens_table = pl.DataFrame({"emotion": emotions, **{lang.upper(): [" ".join(repr(t) for t in top5.filter(
        (pl.col("lang") == lang) & (pl.col("emotion") == e))["token"]) for e in emotions] for lang in run.langs}})

    # ---- 9. cross-lingual transfer of a nearest-vector classifier
    space, transfer_rows = {lang: vec[lang].transform(readings[lang].acts) for lang in run.langs}, []
    for k, layer in enumerate(layers):
        at = {lang: (space[lang][:, k], readings[lang].emotion) for lang in run.langs}
        accuracy = {f"{s}->{t}": stats.transfer_accuracy(*at[s], *at[t], center=False) for s, t in ((a, b), (b, a))}
        accuracy |= {f"{lang} (held-out topics)": stats.nearest_centroid_accuracy(*at[lang], readings[lang].topic,
                                                                                  center=False) for lang in run.langs}
        transfer_rows += [{"layer": layer, "depth": float(depth[k]), "direction": d, "accuracy": v}
                          for d, v in accuracy.items()]
    transfer = pl.DataFrame(transfer_rows)
    chance = 1 / len(emotions)
    best_transfer = transfer.filter(pl.col("direction").str.contains("->")).sort("accuracy", descending=True).row(
        0, named=True)

    # ---- tables and figures
    for name, frame in (("emotion_cosine", emotion_cos), ("rsa", rsa), ("cross_layer_rsa", cross_layer),
                        ("pca", pca), ("geodesic_rsa", geodesic), ("logit_lens", lens), ("transfer", transfer),
                        ("clusters", pl.DataFrame({"emotion": emotions,
                                                   **{f"cluster_{lang}": clusters[lang] for lang in run.langs}}))):
        run.table(name, frame)
    pair = f"{a.upper()}-{b.upper()}"
    run.figure("emotion_cosine_heatmap", plots.heatmap(
        emotion_cos.filter(pl.col("variant") == main_variant), x="emotion", y="layer", color="cosine",
        domain=(-1, 1), sort_x=emotions, title=f"{pair} cosine per emotion ({main_variant})"))
    run.figure("emotion_cosine_by_depth", plots.lines(cos_by_depth, x="depth", y="cosine", color="variant",
                                                      title=f"Mean {pair} cosine over emotions", y_title="mean cosine"))
    curves = pl.concat([spearman.select("depth", pl.lit(kind).alias("kind"), pl.col(col).alias("r"),
                                        pl.col(f"{prefix}_low").alias("low"), pl.col(f"{prefix}_high").alias("high"))
                        for kind, col, prefix in (("RSA", "r", "ci"), ("noise-corrected", "corrected", "corrected"),
                                                  ("partial (no TF-IDF, topic)", "partial", "partial"))])
    run.figure("rsa_by_depth", plots.band(spearman, x="depth", low="null_low", high="null_high",
                                          label="permutation null, 95%", color="#bdbdbd")
               + plots.lines(curves, x="depth", y="r", color="kind", band=("low", "high"),
                             y_title="Spearman r (95% CI over emotions)",
                             title=f"{pair} RSA of emotion cosine matrices by relative depth"))
    for name in cross_layer["pair"].unique(maintain_order=True):
        run.figure(f"cross_layer_rsa_{name}", plots.heatmap(cross_layer.filter(pl.col("pair") == name), x="layer_a",
                                                            y="layer_b", color="r", domain=(-1, 1),
                                                            title=f"Cross-layer RSA {name.upper()}", size=300))
    for frame in points:
        lang = frame["lang"][0]
        run.figure(f"pca_{lang}", plots.scatter(frame, x="pc1", y="pc2", color="valence", label="label",
                                                title=f"{lang.upper()} emotion vectors, layer {focus}: PC1 x PC2"))
    ordered = [emotions[i] for i in stats.hierarchical_order(cos_a[j])]
    for lang, c in ((a, cos_a), (b, cos_b)):
        heat = pl.DataFrame({"emotion_a": np.repeat(emotions, len(emotions)),
                             "emotion_b": np.tile(emotions, len(emotions)), "cosine": c[j].ravel()})
        run.figure(f"cosine_{lang}_clustered", plots.heatmap(heat, x="emotion_a", y="emotion_b", color="cosine",
                                                             domain=(-1, 1), sort_x=ordered, sort_y=ordered,
                                                             title=f"{lang.upper()} cosine, layer {focus} "
                                                                   f"(order: {a.upper()} clustering)"))
    run.figure("geodesic_vs_euclidean", plots.lines(geodesic, x="depth", y="difference",
                                                    band=("difference_low", "difference_high"), y_title="RSA r",
                                                    title="Geodesic minus euclidean RSA (95% CI over emotions)"))
    run.figure("transfer_by_depth", plots.lines(transfer, x="depth", y="accuracy", color="direction",
                                                title=f"Nearest-vector classification (chance {chance:.3f})"))

    # ---- report and summary
    pearson = {r["layer"]: r for r in rsa.filter(pl.col("method") == "pearson").iter_rows(named=True)}
    run.report(a=a, b=b, emotions=emotions, n_stories={lang: len(readings[lang]) for lang in run.langs},
               variant=main_variant, denoise=denoise, n_pcs={lang: vec[lang].n_pcs for lang in run.langs},
               best=best, profile=cos_by_depth.filter(pl.col("variant") == main_variant).sort("layer").to_dicts(),
               best_transfer=best_transfer, chance=chance, focus=focus, agreement=agreement, procrustes=procrustes,
               stimulus=stimulus.to_dicts(), splits=splits, geodesic=geodesic.row(j, named=True),
               pc1_valence=pca.filter((pl.col("pc") == 1) & (pl.col("target") == "valence")).to_dicts(),
               mismatch=mismatch.to_dicts(), rsa_rows=[{**r, "pearson": pearson[r["layer"]]}
                                                       for r in spearman.iter_rows(named=True)],
               lens_table=lens_table)
    summary = spearman.select("layer", pl.col("depth").round(2), pl.col("r").round(3), pl.col("ci_low").round(3),
                              pl.col("ci_high").round(3), pl.col("p").round(5), pl.col("corrected").round(3),
                              pl.col("partial").round(3))
    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        table = str(summary)
    run.done(f"\n{pair} RSA by layer ({model.name}):\n{table}",
             f"best: layer {best['layer']} (depth {best['depth']:.2f}) r={best['r']:.3f} "
             f"[{best['ci_low']:.3f}, {best['ci_high']:.3f}] p(best of {len(layers)})={best['p_best']:.2g}; "
             f"partial r={best['partial']:.3f}; TF-IDF r={stimulus['r'][0]:.3f}; "
             f"transfer {best_transfer['direction']} {best_transfer['accuracy']:.3f} (chance {chance:.3f})")


if __name__ == "__main__":
    main()
