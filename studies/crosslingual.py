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

import time
import unicodedata

import click
import numpy as np
import polars as pl
from tqdm.auto import tqdm

from emonn import EmonnError, corpus, extract, models, plots, runs, stats
from emonn.vectors import EmotionVectors

VARIANTS = ("raw", "centered", "denoised")


def script(token: str) -> str:
    """The writing system of a token's letters: latin, kana, han, hangul, or other (digits, punctuation)."""
    names = {unicodedata.name(ch, "").split(" ")[0] for ch in token if ch.isalpha()}
    for script_name, keys in (("kana", {"HIRAGANA", "KATAKANA"}), ("han", {"CJK"}), ("hangul", {"HANGUL"}),
                              ("latin", {"LATIN"})):
        if names & keys:
            return script_name
    return "other"


EXPECTED_SCRIPTS = {"en": {"latin"}, "ja": {"kana", "han"}}


def upper_cosines(vectors: np.ndarray) -> np.ndarray:
    """Cosine matrices per layer of `(n_emotions, n_layers, d)`: `(n_layers, n_emotions, n_emotions)`."""
    return np.stack([stats.cosine_matrix(vectors[:, i]) for i in range(vectors.shape[1])])


@click.command(cls=runs.Command)
@click.option("--model", "model_name", default=models.MULTILINGUAL_MODEL, show_default=True,
              help="Embedded alias, HF repo id, model folder or .gguf file.")
@click.option("--remote", is_flag=True, help="Run the traces on NDIF (needs NDIF_API_KEY).")
@click.option("--langs", default="en,ja", show_default=True, help="Two languages of the corpus to compare.")
@click.option("--layers", default="", help="Layers to analyse, e.g. '2-10' or '0,5,-1' (default: all).")
@click.option("--start-token", default=extract.START, show_default=True,
              help="Average each story's residual stream from this token on.")
@click.option("--denoise/--no-denoise", default=True, show_default=True,
              help="Project out the neutral texts' top PCs (50%% of their variance).")
@click.option("--permutations", default=10_000, show_default=True, help="Label permutations per RSA test.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples of the stories.")
@click.option("--pca-layer", type=int, default=None, help="Layer for PCA, clustering, logit lens (default: best RSA).")
@click.option("--corpus", "corpus_path", type=click.Path(), default=None, help="A stories file instead of the shipped one.")
@click.option("--neutral", "neutral_path", type=click.Path(), default=None,
              help="A neutral-texts file (for --denoise) instead of the shipped one.")
@click.option("--batch-tokens", default=2048, show_default=True, help="Padded tokens per forward pass.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="outputs", show_default=True, type=click.Path())
def main(model_name: str, remote: bool, langs: str, layers: str, start_token: int, denoise: bool, permutations: int,
         bootstrap: int, pca_layer: int | None, corpus_path: str | None, neutral_path: str | None,
         batch_tokens: int, seed: int, out: str) -> None:
    started = time.perf_counter()
    config = {k: v for k, v in locals().items() if k != "started"}
    lang_list = corpus.parse_langs(langs)
    if len(lang_list) != 2:
        raise EmonnError(f"--langs needs two different languages, e.g. en,ja (got '{langs}')")
    a, b = lang_list
    stories = corpus.load(corpus_path, langs=lang_list)
    neutral = corpus.load(neutral_path, neutral=True, langs=lang_list) if denoise else None
    model = models.load(model_name, remote=remote)
    layer_ids = model.check_layers(runs.parse_layers(layers))
    depth = np.array([model.depth(layer) for layer in layer_ids])
    run = runs.Run.create(out, "crosslingual", model.slug, {**config, "corpus": corpus.digest(stories)})
    cache = runs.activation_cache(out, model, "mean", start_token)

    # ---- extraction (cached per text) and vectors per language
    emotions = [e for e in corpus.emotion_names()
                if all(e in set(stories.filter(pl.col("lang") == lang)["emotion"]) for lang in lang_list)]
    if len(emotions) < 4:
        raise EmonnError(f"need at least 4 emotions present in both languages, found {len(emotions)}")
    frames, acts, vec, centered = {}, {}, {}, {}
    for lang in lang_list:
        frames[lang] = stories.filter((pl.col("lang") == lang) & pl.col("emotion").is_in(emotions))
        vec[lang], acts[lang] = extract.emotion_vectors(
            model, frames[lang], neutral=neutral.filter(pl.col("lang") == lang) if denoise else None,
            start=start_token, layers=layer_ids, cache=cache, batch_tokens=batch_tokens)
        centered[lang] = EmotionVectors.fit(acts[lang], frames[lang]["emotion"].to_list(), layers=layer_ids,
                                            emotions=emotions)
        vec[lang].save(run.folder / "vectors" / lang)
    labels = {lang: np.asarray(frames[lang]["emotion"].to_list()) for lang in lang_list}
    main_vec = vec if denoise else centered
    variant_arrays = {"raw": {lang: centered[lang].means for lang in lang_list},
                      "centered": {lang: centered[lang].vectors for lang in lang_list}}
    if denoise:
        variant_arrays["denoised"] = {lang: vec[lang].vectors for lang in lang_list}

    # ---- 1. per-emotion cosine between the languages' vectors
    rows = []
    for variant, arrays in variant_arrays.items():
        ua, ub = (arrays[lang] / np.linalg.norm(arrays[lang], axis=-1, keepdims=True) for lang in lang_list)
        cos = (ua * ub).sum(-1)  # (n_emotions, n_layers)
        rows += [{"variant": variant, "layer": layer, "depth": float(depth[j]), "emotion": emotion,
                  "cosine": float(cos[i, j])} for i, emotion in enumerate(emotions) for j, layer in enumerate(layer_ids)]
    emotion_cos = pl.DataFrame(rows)
    run.table("emotion_cosine", emotion_cos)
    main_variant = "denoised" if denoise else "centered"
    run.figure("emotion_cosine_heatmap", plots.heatmap(
        emotion_cos.filter(pl.col("variant") == main_variant), x="emotion", y="layer", color="cosine",
        domain=(-1, 1), sort_x=emotions, title=f"{a.upper()}-{b.upper()} cosine per emotion ({main_variant})"))
    cos_by_depth = emotion_cos.group_by("variant", "layer", "depth").agg(pl.col("cosine").mean()).sort("variant",
                                                                                                          "layer")
    run.figure("emotion_cosine_by_depth", plots.lines(cos_by_depth, x="depth", y="cosine", color="variant",
                                                      title=f"Mean {a.upper()}-{b.upper()} cosine over emotions",
                                                      y_title="mean cosine"))

    # ---- 2. RSA per layer: permutation test, bootstrap CI over stories, null band
    cos_a, cos_b = upper_cosines(main_vec[a].vectors), upper_cosines(main_vec[b].vectors)
    rsa_rows = []
    for j, layer in enumerate(tqdm(layer_ids, desc="RSA permutation tests")):
        for method in ("spearman", "pearson"):
            test = stats.rsa_test(cos_a[j], cos_b[j], n_permutations=permutations, seed=seed, method=method)
            low, high = np.quantile(test.null, [0.025, 0.975])
            rsa_rows.append({"layer": layer, "depth": float(depth[j]), "method": method, "r": test.statistic,
                             "p": test.p, "null_low": float(low), "null_high": float(high)})
    n_a = len(labels[a])
    strata = np.concatenate([[f"{a}:{e}" for e in labels[a]], [f"{b}:{e}" for e in labels[b]]])

    def rsa_per_layer(idx: np.ndarray) -> np.ndarray:
        refit = {}
        for lang, part in ((a, idx[idx < n_a]), (b, idx[idx >= n_a] - n_a)):
            refit[lang] = EmotionVectors.fit(acts[lang][part], labels[lang][part], layers=layer_ids,
                                             emotions=emotions, pcs=main_vec[lang].pcs).vectors
        ca, cb = upper_cosines(refit[a]), upper_cosines(refit[b])
        return stats.rsa_stack(ca, cb)

    boot = stats.bootstrap_ci(rsa_per_layer, strata, n_boot=bootstrap, seed=seed, method="basic")
    rsa = pl.DataFrame(rsa_rows).join(pl.DataFrame({"layer": layer_ids, "method": "spearman",
                                                    "ci_low": boot.low, "ci_high": boot.high,
                                                    "boot_mean": boot.samples.mean(0)}),
                                      on=["layer", "method"], how="left")
    rsa = rsa.with_columns(p_fdr=pl.Series(stats.correct(rsa["p"].to_numpy()).p_adjusted))
    run.table("rsa", rsa)
    spearman = rsa.filter(pl.col("method") == "spearman")
    best = spearman.sort("r", descending=True).row(0, named=True)
    run.figure("rsa_by_depth", plots.band(spearman, x="depth", low="null_low", high="null_high",
                                          label="permutation null, 95%")
               + plots.lines(spearman.with_columns(kind=pl.lit("RSA, 95% bootstrap CI")), x="depth", y="r",
                             color="kind", band=("ci_low", "ci_high"), y_title="RSA (Spearman r)",
                             title=f"{a.upper()}-{b.upper()} RSA of emotion cosine matrices by relative depth"))

    # ---- 3. cross-layer RSA
    cross = []
    for name, (left, right) in {f"{a}x{a}": (cos_a, cos_a), f"{b}x{b}": (cos_b, cos_b), f"{a}x{b}": (cos_a, cos_b)}.items():
        cross += [{"pair": name, "layer_a": la, "layer_b": lb, "r": stats.rsa(left[i], right[k])}
                  for i, la in enumerate(layer_ids) for k, lb in enumerate(layer_ids)]
    cross_layer = pl.DataFrame(cross)
    run.table("cross_layer_rsa", cross_layer)
    for pair in cross_layer["pair"].unique(maintain_order=True):
        run.figure(f"cross_layer_rsa_{pair}", plots.heatmap(cross_layer.filter(pl.col("pair") == pair), x="layer_a",
                                                            y="layer_b", color="r", domain=(-1, 1),
                                                            title=f"Cross-layer RSA {pair.upper()}", size=300))

    # ---- 4-7 at one layer: PCA vs valence/arousal, clustering, Procrustes, geodesic vs euclidean
    focus = best["layer"] if pca_layer is None else model.check_layers([pca_layer])[0]
    if focus not in layer_ids:
        raise EmonnError(f"--pca-layer {focus} is not among the analysed --layers")
    j = layer_ids.index(focus)
    meta = corpus.emotions().filter(pl.col("emotion").is_in(emotions)).sort(
        pl.col("emotion").replace_strict(emotions, list(range(len(emotions)))))
    norms = {"valence": meta["valence"].to_numpy(), "arousal": meta["arousal"].to_numpy()}
    pca_rows, points = [], []
    for lang in lang_list:
        x = main_vec[lang].vectors[:, j].astype(np.float64)
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
    run.table("pca", pca)
    for frame in points:
        lang = frame["lang"][0]
        run.figure(f"pca_{lang}", plots.scatter(frame, x="pc1", y="pc2", color="valence", label="label",
                                                title=f"{lang.upper()} emotion vectors, layer {focus}: PC1 x PC2"))
    order = stats.hierarchical_order(cos_a[j])
    ordered = [emotions[i] for i in order]
    heat = pl.concat([pl.DataFrame({"lang": lang, "emotion_a": np.repeat(emotions, len(emotions)),
                                    "emotion_b": np.tile(emotions, len(emotions)), "cosine": c[j].ravel()})
                      for lang, c in ((a, cos_a), (b, cos_b))])
    for lang in lang_list:
        run.figure(f"cosine_{lang}_clustered", plots.heatmap(heat.filter(pl.col("lang") == lang), x="emotion_a",
                                                             y="emotion_b", color="cosine", domain=(-1, 1),
                                                             sort_x=ordered, sort_y=ordered,
                                                             title=f"{lang.upper()} cosine, layer {focus} "
                                                                   f"(order: {a.upper()} clustering)"))
    clusters = {lang: stats.kmeans_labels(main_vec[lang].vectors[:, j], k=4, seed=seed) for lang in lang_list}
    ari = stats.adjusted_rand(clusters[a], clusters[b])
    run.table("clusters", pl.DataFrame({"emotion": emotions, **{f"cluster_{lang}": clusters[lang] for lang in lang_list}}))
    procrustes = stats.procrustes_test(main_vec[a].vectors[:, j], main_vec[b].vectors[:, j],
                                       n_permutations=min(permutations, 1000), seed=seed)
    geo_rows = []
    for k, layer in enumerate(layer_ids):
        for kind, dist in (("euclidean", stats.euclidean_distances), ("geodesic", stats.geodesic_distances)):
            da, db = dist(main_vec[a].vectors[:, k]), dist(main_vec[b].vectors[:, k])
            geo_rows.append({"layer": layer, "depth": float(depth[k]), "distance": kind, "r": stats.rsa(da, db)})
    geodesic = pl.DataFrame(geo_rows)
    run.table("geodesic_rsa", geodesic)
    run.figure("geodesic_vs_euclidean", plots.lines(geodesic, x="depth", y="r", color="distance",
                                                    title="RSA of distance matrices by depth", y_title="RSA r"))

    # ---- 8. logit lens of the vectors at the focus layer
    lens_rows = []
    for lang in lang_list:
        logits = extract.logit_lens(model, main_vec[lang].vectors[:, j])
        for i, emotion in enumerate(emotions):
            ranked = np.argsort(logits[i])
            for end, ids in (("top", ranked[::-1][:10]), ("bottom", ranked[:10])):
                for rank, token_id in enumerate(ids):
                    token = model.tokenizer.decode([int(token_id)])
                    lens_rows.append({"lang": lang, "emotion": emotion, "end": end, "rank": rank + 1, "token": token,
                                      "script": script(token), "logit": float(logits[i, token_id])})
    lens = pl.DataFrame(lens_rows).with_columns(
        mismatch=pl.struct("lang", "script").map_elements(
            lambda r: r["script"] not in EXPECTED_SCRIPTS.get(r["lang"], set()) and r["script"] != "other",
            return_dtype=pl.Boolean))
    run.table("logit_lens", lens)
    mismatch = lens.filter(pl.col("end") == "top").group_by("lang").agg(pl.col("mismatch").mean()).sort("lang")

    # ---- 9. cross-lingual transfer of a nearest-vector classifier
    transfer_rows = []
    space = {lang: main_vec[lang].transform(acts[lang]) for lang in lang_list}
    for k, layer in enumerate(layer_ids):
        for src, dst in ((a, b), (b, a)):
            accuracy = stats.transfer_accuracy(space[src][:, k], labels[src], space[dst][:, k], labels[dst],
                                               center=False)
            transfer_rows.append({"layer": layer, "depth": float(depth[k]), "direction": f"{src}->{dst}",
                                  "accuracy": accuracy})
        for lang in lang_list:
            within = stats.nearest_centroid_accuracy(space[lang][:, k], labels[lang],
                                                     frames[lang]["topic"].to_numpy(), center=False)
            transfer_rows.append({"layer": layer, "depth": float(depth[k]), "direction": f"{lang} (held-out topics)",
                                  "accuracy": within})
    transfer = pl.DataFrame(transfer_rows)
    run.table("transfer", transfer)
    run.figure("transfer_by_depth", plots.lines(transfer, x="depth", y="accuracy", color="direction",
                                                title=f"Nearest-vector classification (chance {1 / len(emotions):.3f})"))

    # ---- report
    chance = 1 / len(emotions)
    best_transfer = transfer.filter(pl.col("direction").str.contains("->")).sort("accuracy", descending=True).row(0, named=True)
    pc1_valence = pca.filter((pl.col("pc") == 1) & (pl.col("target") == "valence"))
    profile = cos_by_depth.filter(pl.col("variant") == main_variant).sort("layer")
    n_stories = {lang: len(frames[lang]) for lang in lang_list}
    elapsed = time.perf_counter() - started
    lines = [
        f"# Cross-lingual emotion geometry: {model.name}, {a.upper()} vs {b.upper()}", "",
        f"{len(emotions)} emotions; stories: {n_stories[a]} {a.upper()}, {n_stories[b]} {b.upper()}; "
        f"mean from token {start_token}; vectors {main_variant}"
        + (f" (neutral PCs removed per layer: {a.upper()} {vec[a].n_pcs}, {b.upper()} {vec[b].n_pcs})" if denoise else "")
        + f"; {model.n_layers} layers. Corpus {corpus.digest(stories)}. Run time {elapsed:.0f} s.", "",
        "## Headline", "",
        f"- **RSA** (Spearman, {len(emotions) * (len(emotions) - 1) // 2} emotion pairs) peaks at layer {best['layer']} "
        f"(depth {best['depth']:.2f}): r = {best['r']:.3f}, 95% bootstrap CI [{best['ci_low']:.3f}, {best['ci_high']:.3f}] "
        f"({bootstrap} stratified resamples of stories; basic interval: resampled corpora repeat stories, which "
        f"makes emotion means noisier and lowers the replicates' RSA by {best['r'] - best['boot_mean']:.2f} on "
        f"average, a sign that the measured r itself is attenuated by 12-story noise; the basic interval "
        f"corrects for that shift, the percentile one would not cover r), permutation p = {best['p']:.2g} ({permutations} label shuffles; "
        f"null 95% band [{best['null_low']:.3f}, {best['null_high']:.3f}]).",
        f"- **Per-emotion {a.upper()}-{b.upper()} cosine** ({main_variant}), mean over emotions: "
        + ", ".join(f"L{r['layer']} {r['cosine']:.2f}" for r in profile.iter_rows(named=True)) + ".",
        f"- **Transfer**: best {best_transfer['direction']} accuracy {best_transfer['accuracy']:.3f} at layer "
        f"{best_transfer['layer']} (chance {chance:.3f}; n = {n_stories[best_transfer['direction'].split('->')[1]]} stories).",
        "- **PC1 vs valence** at layer {}: ".format(focus)
        + ", ".join(f"{r['lang'].upper()} r = {r['r']:.2f} (p = {r['p']:.2g}, n = {len(emotions)})"
                    for r in pc1_valence.iter_rows(named=True)) + ".",
        f"- **Clustering** (k-means, k = 4) agreement {a.upper()} vs {b.upper()}: adjusted Rand = {ari:.3f} (0 = chance).",
        f"- **Procrustes** {a.upper()}->{b.upper()} leave-one-out retrieval at layer {focus}: {procrustes.statistic:.3f} "
        f"(chance {chance:.3f}); shuffled-label null p = {procrustes.p:.2g}. With {len(emotions)} points in "
        f"{model.d_model} dimensions an in-sample fit is perfect by construction; only held-out retrieval counts.",
        "- **Logit lens** (top-10 tokens per emotion) script mismatch with the language: "
        + ", ".join(f"{r['lang'].upper()} {r['mismatch']:.0%}" for r in mismatch.iter_rows(named=True)) + ".", "",
        "## RSA by layer", "", "| layer | depth | Spearman r | 95% CI | p | p (FDR) | Pearson r | Pearson p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pearson = {r["layer"]: r for r in rsa.filter(pl.col("method") == "pearson").iter_rows(named=True)}
    for r in spearman.iter_rows(named=True):
        lines.append(f"| {r['layer']} | {r['depth']:.2f} | {r['r']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                     f"{r['p']:.2g} | {r['p_fdr']:.2g} | {pearson[r['layer']]['r']:.3f} | {pearson[r['layer']]['p']:.2g} |")
    lines += ["", "## Logit lens (layer {}, top 5 tokens)".format(focus), "", "| emotion | " + " | ".join(
        l.upper() for l in lang_list) + " |", "|---|" + "---|" * len(lang_list)]
    top5 = lens.filter((pl.col("end") == "top") & (pl.col("rank") <= 5))
    for emotion in emotions:
        cells = [" ".join(repr(t) for t in top5.filter((pl.col("lang") == lang) & (pl.col("emotion") == emotion))["token"])
                 for lang in lang_list]
        lines.append(f"| {emotion} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Figures: `figures/` (HTML and PNG). Tables: `results/`. Vectors: `vectors/`."]
    run.report("\n".join(lines) + "\n")

    summary = spearman.select("layer", pl.col("depth").round(2), pl.col("r").round(3), pl.col("ci_low").round(3),
                              pl.col("ci_high").round(3), pl.col("p").round(5))
    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        click.echo(f"\n{a.upper()}-{b.upper()} RSA by layer ({model.name}):\n{summary}")
    click.echo(f"best: layer {best['layer']} (depth {best['depth']:.2f}) r={best['r']:.3f} p={best['p']:.2g}; "
               f"transfer {best_transfer['direction']} {best_transfer['accuracy']:.3f} (chance {chance:.3f}); "
               f"{elapsed:.0f} s\nwrote {run.folder}/ (report.md, results/, figures/, vectors/)")


if __name__ == "__main__":
    main()
