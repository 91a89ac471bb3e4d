"""Do English and Japanese share one emotion geometry inside the model?

    python studies/crosslingual.py                       # embedded Gemma-3-270M, EN/JA, a few minutes on CPU
    python studies/crosslingual.py --model Qwen/Qwen2.5-7B-Instruct --remote   # the same on NDIF

Per layer: EN-JA cosine of each emotion's vector (raw, centered, denoised); RSA of the two 30x30 cosine
matrices with a label-permutation test and a bootstrap CI over stories; cross-layer RSA; PCA against
valence/arousal; clustering agreement; Procrustes alignment against a shuffled-label null; geodesic vs
euclidean RSA; a logit lens of the vectors; and cross-lingual transfer of a nearest-vector classifier.
Writes outputs/crosslingual/<model>/ (config.json, results/*.parquet, figures/, vectors/, report.md).
"""

from __future__ import annotations

import click
import numpy as np
import polars as pl
from tqdm.auto import tqdm

from emonn import EmonnError, corpus, extract, models, plots, stats, study
from emonn import textmetrics as tm
from emonn.vectors import EmotionVectors


def upper_cosines(vectors: np.ndarray) -> np.ndarray:
    """Cosine matrices per layer of `(n_emotions, n_layers, d)`: `(n_layers, n_emotions, n_emotions)`."""
    return np.stack([stats.cosine_matrix(vectors[:, i]) for i in range(vectors.shape[1])])


@study.command("crosslingual", models=(models.MULTILINGUAL_MODEL,))
@click.option("--denoise/--no-denoise", default=True, show_default=True,
              help="Project out the neutral texts' top PCs (50%% of their variance).")
@click.option("--permutations", default=10_000, show_default=True, help="Label permutations per RSA test.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples of the stories.")
@click.option("--pca-layer", type=int, default=None, help="Layer for PCA, clustering, logit lens (default: best RSA).")
def main(run: study.Run, denoise: bool, permutations: int, bootstrap: int, pca_layer: int | None) -> None:
    if len(run.langs) != 2:
        raise EmonnError(f"--langs needs two different languages, e.g. en,ja (got '{run.options['langs']}')")
    a, b = run.langs
    model, seed = run.model, run.seed
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
                      "centered": {lang: centered[lang].vectors for lang in run.langs}}
    if denoise:
        variant_arrays["denoised"] = {lang: vec[lang].vectors for lang in run.langs}
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

    # ---- 2. RSA per layer: permutation test, bootstrap CI over stories, null band
    cos_a, cos_b = upper_cosines(vec[a].vectors), upper_cosines(vec[b].vectors)
    rsa_rows = []
    for j, layer in enumerate(tqdm(layers, desc="RSA permutation tests")):
        for method in ("spearman", "pearson"):
            test = stats.rsa_test(cos_a[j], cos_b[j], n_permutations=permutations, seed=seed, method=method)
            low, high = np.quantile(test.null, [0.025, 0.975])
            rsa_rows.append({"layer": layer, "depth": float(depth[j]), "method": method, "r": test.statistic,
                             "p": test.p, "null_low": float(low), "null_high": float(high)})
    n_a = len(readings[a])
    strata = np.concatenate([readings[a].strata(), readings[b].strata()])  # all a rows, then all b rows

    def rsa_per_layer(idx: np.ndarray) -> np.ndarray:
        refit = {lang: EmotionVectors.fit(readings[lang].take(part), emotions=emotions, pcs=vec[lang].pcs).vectors
                 for lang, part in ((a, idx[idx < n_a]), (b, idx[idx >= n_a] - n_a))}
        return stats.rsa_stack(upper_cosines(refit[a]), upper_cosines(refit[b]))

    boot = stats.bootstrap_ci(rsa_per_layer, strata, n_boot=bootstrap, seed=seed, method="basic")
    rsa = pl.DataFrame(rsa_rows).join(pl.DataFrame({"layer": layers, "method": "spearman", "ci_low": boot.low,
                                                    "ci_high": boot.high, "boot_mean": boot.samples.mean(0)}),
                                      on=["layer", "method"], how="left")
    rsa = rsa.with_columns(p_fdr=pl.Series(stats.correct(rsa["p"].to_numpy()).p_adjusted))
    spearman = rsa.filter(pl.col("method") == "spearman")
    best = spearman.sort("r", descending=True).row(0, named=True)

    # ---- 3. cross-layer RSA
    cross = []
    pairs = {f"{a}x{a}": (cos_a, cos_a), f"{b}x{b}": (cos_b, cos_b), f"{a}x{b}": (cos_a, cos_b)}
    for name, (left, right) in pairs.items():
        cross += [{"pair": name, "layer_a": la, "layer_b": lb, "r": stats.rsa(left[i], right[k])}
                  for i, la in enumerate(layers) for k, lb in enumerate(layers)]
    cross_layer = pl.DataFrame(cross)

    # ---- 4-7 at one layer: PCA vs valence/arousal, clustering, Procrustes; geodesic vs euclidean per layer
    focus = best["layer"] if pca_layer is None else focus
    j = layers.index(focus)
    meta = corpus.emotions().filter(pl.col("emotion").is_in(emotions)).sort(
        pl.col("emotion").replace_strict(emotions, list(range(len(emotions)))))
    norms = {"valence": meta["valence"].to_numpy(), "arousal": meta["arousal"].to_numpy()}
    pca_rows, points = [], []
    for lang in run.langs:
        x = vec[lang].vectors[:, j].astype(np.float64)
        targets = dict(norms)
        for name, values in norms.items():
            top, bottom = np.argsort(values)[-5:], np.argsort(values)[:5]
            pole = x[top].mean(0) - x[bottom].mean(0)  # the high-minus-low pole direction of this quantity
            targets[f"{name}_pole"] = x @ pole / np.linalg.norm(pole)
        pca_rows += [{"lang": lang, "layer": focus, **row} for row in stats.pc_correlations(x, targets)]
        scores = stats.pc_scores(x, n_pcs=2)
        label = meta["ja"].to_list() if lang == "ja" else emotions
        points.append(pl.DataFrame({"lang": lang, "emotion": emotions, "label": label, "pc1": scores[:, 0],
                                    "pc2": scores[:, 1], "valence": targets["valence"]}))
    pca = pl.DataFrame(pca_rows)
    clusters = {lang: stats.kmeans_labels(vec[lang].vectors[:, j], k=4, seed=seed) for lang in run.langs}
    ari = stats.adjusted_rand(clusters[a], clusters[b])
    procrustes = stats.procrustes_test(vec[a].vectors[:, j], vec[b].vectors[:, j],
                                       n_permutations=min(permutations, 1000), seed=seed)
    geo_rows = []
    for k, layer in enumerate(layers):
        for kind, dist in (("euclidean", stats.euclidean_distances), ("geodesic", stats.geodesic_distances)):
            da, db = dist(vec[a].vectors[:, k]), dist(vec[b].vectors[:, k])
            geo_rows.append({"layer": layer, "depth": float(depth[k]), "distance": kind, "r": stats.rsa(da, db)})
    geodesic = pl.DataFrame(geo_rows)

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
    transfer_rows = []
    space = {lang: vec[lang].transform(readings[lang].acts) for lang in run.langs}
    for k, layer in enumerate(layers):
        for src, dst in ((a, b), (b, a)):
            accuracy = stats.transfer_accuracy(space[src][:, k], readings[src].emotion, space[dst][:, k],
                                               readings[dst].emotion, center=False)
            transfer_rows.append({"layer": layer, "depth": float(depth[k]), "direction": f"{src}->{dst}",
                                  "accuracy": accuracy})
        for lang in run.langs:
            within = stats.nearest_centroid_accuracy(space[lang][:, k], readings[lang].emotion, readings[lang].topic,
                                                     center=False)
            transfer_rows.append({"layer": layer, "depth": float(depth[k]), "direction": f"{lang} (held-out topics)",
                                  "accuracy": within})
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
    run.figure("rsa_by_depth", plots.band(spearman, x="depth", low="null_low", high="null_high",
                                          label="permutation null, 95%")
               + plots.lines(spearman.with_columns(kind=pl.lit("RSA, 95% bootstrap CI")), x="depth", y="r",
                             color="kind", band=("ci_low", "ci_high"), y_title="RSA (Spearman r)",
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
    run.figure("geodesic_vs_euclidean", plots.lines(geodesic, x="depth", y="r", color="distance",
                                                    title="RSA of distance matrices by depth", y_title="RSA r"))
    run.figure("transfer_by_depth", plots.lines(transfer, x="depth", y="accuracy", color="direction",
                                                title=f"Nearest-vector classification (chance {chance:.3f})"))

    # ---- report and summary
    pearson = {r["layer"]: r for r in rsa.filter(pl.col("method") == "pearson").iter_rows(named=True)}
    run.report(a=a, b=b, emotions=emotions, n_stories={lang: len(readings[lang]) for lang in run.langs},
               variant=main_variant, denoise=denoise, n_pcs={lang: vec[lang].n_pcs for lang in run.langs},
               best=best, profile=cos_by_depth.filter(pl.col("variant") == main_variant).sort("layer").to_dicts(),
               best_transfer=best_transfer, chance=chance, focus=focus, ari=ari, procrustes=procrustes,
               pc1_valence=pca.filter((pl.col("pc") == 1) & (pl.col("target") == "valence")).to_dicts(),
               mismatch=mismatch.to_dicts(), rsa_rows=[{**r, "pearson": pearson[r["layer"]]}
                                                       for r in spearman.iter_rows(named=True)],
               lens_table=lens_table)
    summary = spearman.select("layer", pl.col("depth").round(2), pl.col("r").round(3), pl.col("ci_low").round(3),
                              pl.col("ci_high").round(3), pl.col("p").round(5))
    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        table = str(summary)
    run.done(f"\n{pair} RSA by layer ({model.name}):\n{table}",
             f"best: layer {best['layer']} (depth {best['depth']:.2f}) r={best['r']:.3f} p={best['p']:.2g}; "
             f"transfer {best_transfer['direction']} {best_transfer['accuracy']:.3f} (chance {chance:.3f})")


if __name__ == "__main__":
    main()
