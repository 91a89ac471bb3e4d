"""Where in the network do emotions live?

    python studies/localization.py                         # SmolLM2 (EN) and Gemma-3-270M (EN, JA) on one chart
    python studies/localization.py --model meta-llama/Llama-3.1-8B --remote

Per model, language and layer: how well the stories' activations (mean from token k, centered per layer)
separate the 30 emotions, by three scores: the between/within cosine-distance ratio, leave-topics-out
nearest-centroid accuracy and the cosine silhouette, each with a stratified bootstrap CI over stories.
Plotted against relative depth for every model; per score the best layer and its depth (with a bootstrap
CI of the argmax) and a quadratic fit in depth with a bootstrap CI of its vertex: the mid-depth peak
("U-shape") test. Writes outputs/localization/<model[__model...]>/ (config.json, results/, figures/, report.md).
"""

from __future__ import annotations

import altair as alt
import click
import numpy as np
import polars as pl

from emonn import EmonnError, corpus, models, plots, stats, study

SCORES = {"distance_ratio": "between/within cosine-distance ratio", "accuracy": "nearest-centroid accuracy",
          "silhouette": "silhouette (cosine)"}
EXTRA = ("within", "between")  # the mean cosines behind the ratio, kept in the table
NAMES = (*SCORES, *EXTRA)


def shape(fit: stats.QuadraticFit) -> str:
    """The quadratic fit in words: its curvature's sign where the CI of `a` excludes 0, and where the vertex lies."""
    if fit.a_high < 0:
        kind = "peak (inverted U)"
    elif fit.a_low > 0:
        kind = "trough (U)"
    else:
        return "no curvature (CI of a contains 0)"
    inside = 0 < fit.vertex_low and fit.vertex_high < 1
    return f"{kind}, vertex {'inside' if inside else 'not resolved inside'} the network" + (
        ", CI contains depth 0.5" if inside and fit.vertex_low <= 0.5 <= fit.vertex_high else "")


@study.command("localization", models=(models.DEFAULT_MODEL, models.MULTILINGUAL_MODEL), many=True, neutral=False)
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples of the stories.")
def main(run: study.Run, bootstrap: int) -> None:
    if bootstrap < 10:
        raise EmonnError(f"--bootstrap {bootstrap} is too few for a CI: use at least 10 (default 1000)")
    digest = corpus.digest(run.stories())  # every --langs language must be in the corpus, read or not
    run.note(corpus_digest=digest)

    # ---- per model and language: activations (shared cache), separation scores with bootstrap CIs
    rows, fits = [], []
    for model in run.models:
        for lang in model.reads(run.langs):
            frame = run.stories(lang)
            if frame["emotion"].n_unique() < 2 or frame["topic"].n_unique() < 2:
                raise EmonnError(f"the {lang} stories need at least two emotions and two topics")
            readings = run.read(model, frame)
            # centered per layer: the common direction of all stories would dominate every cosine
            centered = readings.acts - readings.acts.mean(0)
            labels, topics, depth = readings.emotion, readings.topic, readings.depth

            def scores(idx: np.ndarray) -> np.ndarray:  # (n_resamples, n_scores, n_layers)
                res = stats.separation_scores(centered, labels, topics, resamples=idx)
                return np.stack([getattr(res, score) for score in NAMES], axis=1)

            # centered interval: repeated stories make centroids noisier, which lowers accuracy and silhouette in
            # every replicate, a shift that real samples (no repeats) lack; percentile intervals would miss the estimate
            boot = stats.bootstrap_ci(scores, labels, n_boot=bootstrap, seed=run.seed, vectorized=True, method="centered")
            series = f"{model.name} {lang.upper()}"
            for s, score in enumerate(NAMES):
                rows += [{"model": model.name, "lang": lang, "series": series, "score": score, "layer": layer,
                          "depth": float(depth[j]), "value": boot.estimate[s, j], "ci_low": boot.low[s, j],
                          "ci_high": boot.high[s, j], "boot_mean": boot.samples[:, s, j].mean()}
                         for j, layer in enumerate(readings.layers)]
                if score not in SCORES:
                    continue
                best = stats.peak(depth, boot.estimate[s], samples=boot.samples[:, s])
                fit = stats.quadratic_vertex(depth, boot.estimate[s], samples=boot.samples[:, s])
                fits.append({"model": model.name, "lang": lang, "series": series, "score": score,
                             "n_stories": len(readings), "n_emotions": len(readings.emotions),
                             "best_layer": readings.layers[best.index], "best_depth": best.position,
                             "best_value": float(boot.estimate[s, best.index]),
                             "best_low": boot.low[s, best.index], "best_high": boot.high[s, best.index],
                             "depth_low": best.low, "depth_high": best.high, "vertex": fit.vertex,
                             "vertex_low": fit.vertex_low, "vertex_high": fit.vertex_high, "a": fit.a,
                             "a_low": fit.a_low, "a_high": fit.a_high, "shape": shape(fit)})
    separation = pl.DataFrame(rows)
    peaks = pl.DataFrame(fits)
    run.table("separation", separation)
    run.table("peaks", peaks)

    # ---- figures: every score by relative depth, every model on one chart; peak depths
    chance = min(1 / n for n in peaks.unique("series")["n_emotions"])
    panels = [plots.lines(separation.filter(pl.col("score") == score), x="depth", y="value", color="series",
                          band=("ci_low", "ci_high"), y_title=title, zero=score != "distance_ratio",
                          title=f"{title} by relative depth (95% bootstrap CI)"
                                + (f"; chance {chance:.3f}" if score == "accuracy" else ""))
              for score, title in SCORES.items()]
    run.figure("separation_by_depth", alt.vconcat(*panels))
    shown = peaks.with_columns(label=pl.col("series") + " · " + pl.col("score"),
                               **{c: pl.col(c).clip(-0.5, 1.5) for c in ("vertex", "vertex_low", "vertex_high")})
    run.figure("peak_depth", alt.hconcat(
        plots.bars(shown, x="label", y="best_depth", color="score", error=("depth_low", "depth_high"),
                   title="Depth of the best layer (95% CI of the bootstrap argmax)"),
        plots.bars(shown, x="label", y="vertex", color="score", error=("vertex_low", "vertex_high"),
                   title="Quadratic vertex in depth (95% CI; clipped to [-0.5, 1.5])")))

    # ---- report and summary
    cells: dict[str, dict[int, dict[str, dict]]] = {}  # series -> layer -> score -> row
    for row in separation.iter_rows(named=True):
        cells.setdefault(row["series"], {}).setdefault(row["layer"], {})[row["score"]] = row
    n_stories = dict(peaks.unique("series", maintain_order=True).select("series", "n_stories").iter_rows())
    run.report(peaks=peaks.to_dicts(), cells=cells, scores=list(SCORES), n_stories=n_stories, chance=chance,
               digest=digest)

    def interval(low: str, high: str) -> pl.Expr:
        return pl.format("[{}, {}]", pl.col(low).round(2), pl.col(high).round(2))

    summary = peaks.select("series", "score", "best_layer", pl.col("best_depth").round(2),
                           interval("depth_low", "depth_high").alias("depth CI"), pl.col("vertex").round(2),
                           interval("vertex_low", "vertex_high").alias("vertex CI"), "shape")
    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, fmt_str_lengths=90,
                   tbl_width_chars=200):
        run.done(f"\nEmotion separation peaks:\n{summary}")


if __name__ == "__main__":
    main()
