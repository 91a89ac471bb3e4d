"""How similar are any two texts' activations, and does emotion separation exceed that baseline?

    python studies/anisotropy.py                           # SmolLM2 (EN) and Gemma-3-270M (EN, JA)
    python studies/anisotropy.py --model google/gemma-3-1b-pt --remote

Residual streams are anisotropic: two unrelated texts can have a cosine near 1 (2604.11050 reports 0.997 for
Gemma-3-1B base), so raw emotion-vector cosines say little on their own. Per model, language and layer:
- anisotropy: the mean pairwise cosine of the neutral texts' activations, raw and mean-centered (about
  -1 / (n - 1) if the offset shared by all texts is the whole anisotropy), with a bootstrap CI over texts;
- emotion separation: within-emotion minus between-emotion mean cosine of the stories' activations (raw and
  centered), and relative to the baseline: separation / (1 - anisotropy), its share of the cosine range
  that is left above the text-to-text similarity;
- a shuffled-label null of the separation (p = (k + 1) / (n + 1));
- a random-direction baseline: the held-out effect size (one emotion's stories vs the rest) of projections
  on each emotion's direction, fitted on the other half of its topics, against random directions;
- per layer, whether emotion separation exceeds both baselines (p FDR-corrected across layers).
Writes outputs/anisotropy/<model[__model...]>/ (config.json, results/, figures/, report.md).
"""

from __future__ import annotations

import altair as alt
import click
import numpy as np
import polars as pl

from emonn import EmonnError, corpus, models, plots, stats, study

VARIANTS = ("raw", "centered")


@study.command("anisotropy", models=(models.DEFAULT_MODEL, models.MULTILINGUAL_MODEL), many=True)
@click.option("--permutations", default=1000, show_default=True, help="Label shuffles for the separation null.")
@click.option("--random-directions", "n_random", default=200, show_default=True,
              help="Draws of random directions (one per emotion) for the direction baseline.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples of the neutral texts.")
@click.option("--fdr", default=0.05, show_default=True, help="FDR level of the per-layer verdict.")
def main(run: study.Run, permutations: int, n_random: int, bootstrap: int, fdr: float) -> None:
    if min(permutations, n_random, bootstrap) < 10 or not 0 < fdr < 1:
        raise EmonnError("--permutations, --random-directions and --bootstrap need at least 10 each, --fdr in (0, 1)")
    stories, neutral = run.stories(), run.neutral()
    run.note(corpus_digest=corpus.digest(stories), neutral_digest=corpus.digest(neutral))

    # ---- per model and language: activations (shared cache), anisotropy, separation, nulls
    layer_parts, direction_parts = [], []
    for model in run.models:
        for lang in model.reads(run.langs):
            frame, neutral_frame = run.stories(lang), run.neutral(lang)
            labels, topics = frame["emotion"].to_numpy(), frame["topic"].to_numpy()
            # two folds of topics for the direction baseline: each emotion's direction is fitted on one half of
            # its own topics (every other one, sorted) and tested on its stories of the other half
            rank = pl.DataFrame({"e": labels, "t": topics}).select(pl.col("t").rank("dense").over("e"))["t"]
            halves = rank.to_numpy() % 2 == 1
            short = [e for e in np.unique(labels) if min(np.sum(halves & (labels == e)),
                                                         np.sum(~halves & (labels == e))) < 2]
            if short or neutral_frame.height < 3:
                raise EmonnError(f"the {lang} corpus needs >= 2 stories per emotion in each half of the topics "
                                 f"(not '{short[0]}')" if short else f"need at least 3 {lang} neutral texts")
            readings, neutral_readings = run.read(model, frame), run.read(model, neutral_frame)
            acts, neutral_acts = readings.acts, neutral_readings.acts
            keys = {"model": model.name, "lang": lang, "series": f"{model.name} {lang.upper()}"}
            for variant in VARIANTS:
                # centered: each set minus its own mean per layer (the stories as in the localization study)
                x, nx = (acts, neutral_acts) if variant == "raw" else (acts - acts.mean(0),
                                                                       neutral_acts - neutral_acts.mean(0))
                aniso = stats.bootstrap_ci(lambda idx: stats.mean_pairwise_cosine(nx, resamples=idx),
                                           np.zeros(len(nx)), n_boot=bootstrap, seed=run.seed, vectorized=True)
                sep = stats.separation_scores(x, labels, topics)
                null = stats.separation_permutation_test(x, labels, n_permutations=permutations, seed=run.seed)
                null_low, null_high = np.quantile(null.null, [0.025, 0.975], axis=0)
                layer_parts.append(pl.DataFrame({
                    **keys, "variant": variant, "layer": readings.layers, "depth": readings.depth,
                    "anisotropy": aniso.estimate, "anisotropy_low": aniso.low, "anisotropy_high": aniso.high,
                    "within": sep.within, "between": sep.between, "separation": null.statistic,
                    "relative": null.statistic / (1 - aniso.estimate), "null_low": null_low, "null_high": null_high,
                    "p_shuffle": null.p, "p_shuffle_fdr": stats.correct(null.p).p_adjusted}))
            test = stats.direction_test(acts, labels, halves, n_random=n_random, seed=run.seed)
            low, high = np.quantile(test.null, [0.025, 0.975], axis=0)
            direction_parts.append(pl.DataFrame({
                **keys, "layer": readings.layers, "depth": readings.depth, "d_emotion": test.statistic,
                "d_random_mean": [column.mean() for column in test.null.T], "d_random_low": low,
                "d_random_high": high, "p_random": test.p, "p_random_fdr": stats.correct(test.p).p_adjusted}))
    layers, directions = pl.concat(layer_parts), pl.concat(direction_parts)
    verdict = (layers.filter(pl.col("variant") == "raw")
               .select("model", "lang", "series", "layer", "depth", "anisotropy", "separation", "relative",
                       "p_shuffle_fdr")
               .join(directions.select("series", "layer", "d_emotion", "p_random_fdr"), on=["series", "layer"],
                     maintain_order="left")
               .with_columns(exceeds=(pl.col("p_shuffle_fdr") < fdr) & (pl.col("p_random_fdr") < fdr)))
    run.table("layers", layers)
    run.table("random_direction", directions)
    run.table("verdict", verdict)

    # ---- figures: the anisotropy profile and the separation relative to it; separation against both nulls
    series_names = list(dict.fromkeys(layers["series"]))
    run.figure("anisotropy_by_depth", alt.vconcat(*[alt.hconcat(
        plots.lines(part, x="depth", y="anisotropy", color="series", band=("anisotropy_low", "anisotropy_high"),
                    y_title="mean pairwise cosine",
                    title=f"Anisotropy ({variant}): neutral texts' mean pairwise cosine, 95% CI"),
        plots.lines(part, x="depth", y="relative", color="series", y_title="(within - between) / (1 - anisotropy)",
                    title=f"Emotion separation relative to the anisotropy ({variant})"))
        for variant in VARIANTS for part in [layers.filter(pl.col("variant") == variant)]]))
    run.figure("separation_vs_baselines", alt.vconcat(*[alt.hconcat(
        plots.band(part, x="depth", low="null_low", high="null_high", label="shuffled labels, 95%")
        + plots.lines(part.with_columns(kind=pl.lit("emotions")), x="depth", y="separation", color="kind",
                      y_title="within - between cosine (raw)", title=f"{series}: separation vs shuffled labels"),
        plots.band(dirs, x="depth", low="d_random_low", high="d_random_high", label="random directions, 95%")
        + plots.lines(dirs.with_columns(kind=pl.lit("emotion directions")), x="depth", y="d_emotion", color="kind",
                      y_title="held-out Cohen's d", title=f"{series}: emotion vs random directions"))
        for series in series_names
        for part, dirs in [(layers.filter((pl.col("series") == series) & (pl.col("variant") == "raw")),
                            directions.filter(pl.col("series") == series))]]))

    # ---- report and summary: per series, the anisotropy range and the layers that beat both baselines
    n_neutral = dict(neutral.group_by("lang").len().sort("lang").iter_rows())
    headlines = []
    for series, lang in verdict.select("series", "lang").unique(maintain_order=True).iter_rows():
        rows = verdict.filter(pl.col("series") == series).join(
            layers.filter((pl.col("series") == series) & (pl.col("variant") == "centered"))
            .select("layer", pl.col("anisotropy").alias("anisotropy_c"), pl.col("relative").alias("relative_c")),
            on="layer", maintain_order="left")
        raw, centered = rows["anisotropy"], rows["anisotropy_c"]
        headlines.append({
            "series": series, "rows": rows.to_dicts(), "raw_min": raw.min(), "raw_max": raw.max(),
            "raw_mean": raw.mean(), "max_layer": rows["layer"][raw.arg_max()], "centered_min": centered.min(),
            "centered_max": centered.max(), "floor": -1 / (n_neutral[lang] - 1), "n_layers": rows.height,
            "beats_shuffle": int((rows["p_shuffle_fdr"] < fdr).sum()),
            "beats_random": int((rows["p_random_fdr"] < fdr).sum()),
            "both": rows.filter(pl.col("exceeds"))["layer"].to_list(),
            "other": rows.filter(~pl.col("exceeds"))["layer"].to_list()})
    run.report(names=list(dict.fromkeys(layers["model"])), n_neutral=n_neutral, n_stories=stories.height,
               langs=run.langs, headlines=headlines)
    run.done("Anisotropy (mean pairwise cosine of neutral texts) and layers beating the baselines:", *(
        f"  {h['series']}: raw {h['raw_min']:.4f} to {h['raw_max']:.4f}, centered {h['centered_min']:.4f} to "
        f"{h['centered_max']:.4f}; of {h['n_layers']} layers {h['beats_shuffle']} beat the shuffled labels, "
        f"{h['beats_random']} the random directions, {len(h['both'])} both" for h in headlines))


if __name__ == "__main__":
    main()
