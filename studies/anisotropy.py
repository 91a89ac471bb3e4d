"""How similar are any two texts' activations, and does emotion separation exceed that baseline?

    python studies/anisotropy.py                           # SmolLM2 (EN) and Gemma-3-270M (EN, JA)
    python studies/anisotropy.py --model google/gemma-3-1b-pt --remote

Residual streams are anisotropic: two unrelated texts can have a cosine near 1 (2604.11050 reports 0.997 for
Gemma-3-1B base), so raw emotion-vector cosines say little on their own. Per model, language and layer:
- anisotropy: the mean pairwise cosine of the neutral texts' activations, raw and mean-centred (about
  -1 / (n - 1) if the offset shared by all texts is the whole anisotropy), with a bootstrap CI over texts;
- emotion separation: within-emotion minus between-emotion mean cosine of the stories' activations (raw and
  centred), and relative to the baseline: separation / (1 - anisotropy), its share of the cosine range
  that is left above the text-to-text similarity;
- a shuffled-label null of the separation (p = (k + 1) / (n + 1));
- a random-direction baseline: the held-out effect size (one emotion's stories vs the rest) of projections
  on each emotion's direction, fitted on the other half of the topics, against random directions;
- per layer, whether emotion separation exceeds both baselines (p FDR-corrected across layers).
Writes outputs/anisotropy/<model[__model...]>/ (config.json, results/, figures/, report.md).
"""

from __future__ import annotations

import time

import altair as alt
import click
import numpy as np
import polars as pl

from emonn import EmonnError, corpus, extract, models, plots, runs, stats

VARIANTS = ("raw", "centred")


@click.command(cls=runs.Command)
@click.option("--model", "model_names", multiple=True, default=(models.DEFAULT_MODEL, models.MULTILINGUAL_MODEL),
              show_default=True, help="Embedded alias, HF repo id, model folder or .gguf file; repeat to compare.")
@click.option("--remote", is_flag=True, help="Run the traces on NDIF (needs NDIF_API_KEY).")
@click.option("--langs", default="en,ja", show_default=True,
              help="Corpus languages; each model reads those it supports (SmolLM2: en only).")
@click.option("--layers", default="", help="Layers to analyse, e.g. '2-10' or '0,5,-1' (default: all).")
@click.option("--start-token", default=extract.START, show_default=True,
              help="Average each text's residual stream from this token on.")
@click.option("--permutations", default=1000, show_default=True, help="Label shuffles for the separation null.")
@click.option("--random-directions", "n_random", default=200, show_default=True,
              help="Draws of random directions (one per emotion) for the direction baseline.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples of the neutral texts.")
@click.option("--alpha", default=0.05, show_default=True, help="FDR level of the per-layer verdict.")
@click.option("--corpus", "corpus_path", type=click.Path(), default=None, help="A stories file instead of the shipped one.")
@click.option("--neutral", "neutral_path", type=click.Path(), default=None,
              help="A neutral-texts file instead of the shipped one.")
@click.option("--batch-tokens", default=2048, show_default=True, help="Padded tokens per forward pass.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="outputs", show_default=True, type=click.Path())
def main(model_names: tuple[str, ...], remote: bool, langs: str, layers: str, start_token: int, permutations: int,
         n_random: int, bootstrap: int, alpha: float, corpus_path: str | None, neutral_path: str | None,
         batch_tokens: int, seed: int, out: str) -> None:
    started = time.perf_counter()
    config = {k: v for k, v in locals().items() if k != "started"}
    lang_list = corpus.parse_langs(langs)
    if min(permutations, n_random, bootstrap) < 10 or not 0 < alpha < 1:
        raise EmonnError("--permutations, --random-directions and --bootstrap need at least 10 each, --alpha in (0, 1)")
    stories = corpus.load(corpus_path, langs=lang_list)
    neutral = corpus.load(neutral_path, neutral=True, langs=lang_list)

    # ---- per model and language: activations (shared cache), anisotropy, separation, nulls
    layer_rows, direction_rows, slugs, series_names = [], [], [], []
    for name in dict.fromkeys(model_names):
        model = models.load(name, remote=remote)
        slugs.append(model.slug)
        layer_ids = model.check_layers(runs.parse_layers(layers))
        depth = np.array([model.depth(layer) for layer in layer_ids])
        cache = runs.activation_cache(out, model, "mean", start_token)
        for lang in model.reads(lang_list):
            frame = stories.filter(pl.col("lang") == lang)
            texts = neutral.filter(pl.col("lang") == lang)["text"].to_list()
            labels, topics = frame["emotion"].to_numpy(), frame["topic"].to_numpy()
            # two folds of topics for the direction baseline: fit on one half of the topics, test on the other
            halves = np.isin(topics, np.unique(topics)[::2])
            short = [e for e in np.unique(labels) if min(np.sum(halves & (labels == e)),
                                                         np.sum(~halves & (labels == e))) < 2]
            if short or len(texts) < 3:
                raise EmonnError(f"the {lang} corpus needs >= 2 stories per emotion in each half of the topics "
                                 f"(not '{short[0]}')" if short else f"need at least 3 {lang} neutral texts")
            kwargs = dict(start=start_token, layers=layer_ids, cache=cache, batch_tokens=batch_tokens)
            acts = extract.activations(model, frame["text"].to_list(), **kwargs)
            neutral_acts = extract.activations(model, texts, **kwargs)
            series = f"{model.name} {lang.upper()}"
            series_names.append(series)
            for variant in VARIANTS:
                # centred: each set minus its own mean per layer (the stories as in the localization study)
                x, nx = (acts, neutral_acts) if variant == "raw" else (acts - acts.mean(0),
                                                                       neutral_acts - neutral_acts.mean(0))
                aniso = stats.bootstrap_ci(lambda idx: stats.mean_pairwise_cosine(nx, resamples=idx),
                                           np.zeros(len(nx)), n_boot=bootstrap, seed=seed, vectorized=True)
                sep = stats.separation_scores(x, labels, topics)
                null = stats.separation_permutation_test(x, labels, n_permutations=permutations, seed=seed)
                p_fdr = stats.correct(null.p).p_adjusted
                null_low, null_high = np.quantile(null.null, [0.025, 0.975], axis=0)
                layer_rows += [{"model": model.name, "lang": lang, "series": series, "variant": variant,
                                "layer": layer, "depth": float(depth[j]), "anisotropy": aniso.estimate[j],
                                "anisotropy_low": aniso.low[j], "anisotropy_high": aniso.high[j],
                                "within": sep.within[j], "between": sep.between[j],
                                "separation": null.statistic[j], "relative": null.statistic[j] / (1 - aniso.estimate[j]),
                                "null_low": null_low[j], "null_high": null_high[j], "p_shuffle": null.p[j],
                                "p_shuffle_fdr": p_fdr[j]} for j, layer in enumerate(layer_ids)]
            test = stats.direction_test(acts, labels, halves, n_random=n_random, seed=seed)
            p_fdr = stats.correct(test.p).p_adjusted
            low, high = np.quantile(test.null, [0.025, 0.975], axis=0)
            direction_rows += [{"model": model.name, "lang": lang, "series": series, "layer": layer,
                                "depth": float(depth[j]), "d_emotion": test.statistic[j],
                                "d_random_mean": test.null[:, j].mean(), "d_random_low": low[j],
                                "d_random_high": high[j], "p_random": test.p[j], "p_random_fdr": p_fdr[j]}
                               for j, layer in enumerate(layer_ids)]
        del model
    run = runs.Run.create(out, "anisotropy", "__".join(slugs),
                          {**config, "corpus": corpus.digest(stories), "neutral": corpus.digest(neutral)})
    layer_table, directions = pl.DataFrame(layer_rows), pl.DataFrame(direction_rows)
    verdict = (layer_table.filter(pl.col("variant") == "raw")
               .select("model", "lang", "series", "layer", "depth", "anisotropy", "separation", "relative",
                       "p_shuffle_fdr")
               .join(directions.select("series", "layer", "d_emotion", "p_random_fdr"), on=["series", "layer"])
               .with_columns(exceeds=(pl.col("p_shuffle_fdr") < alpha) & (pl.col("p_random_fdr") < alpha)))
    run.table("layers", layer_table)
    run.table("random_direction", directions)
    run.table("verdict", verdict)

    # ---- figures: the anisotropy profile and the separation relative to it; separation against both nulls
    run.figure("anisotropy_by_depth", alt.vconcat(*[alt.hconcat(
        plots.lines(part, x="depth", y="anisotropy", color="series", band=("anisotropy_low", "anisotropy_high"),
                    y_title="mean pairwise cosine",
                    title=f"Anisotropy ({variant}): neutral texts' mean pairwise cosine, 95% CI"),
        plots.lines(part, x="depth", y="relative", color="series", y_title="(within - between) / (1 - anisotropy)",
                    title=f"Emotion separation relative to the anisotropy ({variant})"))
        for variant in VARIANTS for part in [layer_table.filter(pl.col("variant") == variant)]]))
    run.figure("separation_vs_baselines", alt.vconcat(*[alt.hconcat(
        plots.band(part, x="depth", low="null_low", high="null_high", label="shuffled labels, 95%")
        + plots.lines(part.with_columns(kind=pl.lit("emotions")), x="depth", y="separation", color="kind",
                      y_title="within - between cosine (raw)", title=f"{series}: separation vs shuffled labels"),
        plots.band(dirs, x="depth", low="d_random_low", high="d_random_high", label="random directions, 95%")
        + plots.lines(dirs.with_columns(kind=pl.lit("emotion directions")), x="depth", y="d_emotion", color="kind",
                      y_title="held-out Cohen's d", title=f"{series}: emotion vs random directions"))
        for series in series_names
        for part, dirs in [(layer_table.filter((pl.col("series") == series) & (pl.col("variant") == "raw")),
                            directions.filter(pl.col("series") == series))]]))

    # ---- report and summary
    elapsed = time.perf_counter() - started
    ranges = (layer_table.group_by("series", "variant", maintain_order=True)
              .agg(pl.col("anisotropy").min().alias("min"), pl.col("anisotropy").max().alias("max"),
                   pl.col("anisotropy").mean().alias("mean"),
                   pl.col("layer").get(pl.col("anisotropy").arg_max()).alias("max_layer")))
    passed = verdict.group_by("series", maintain_order=True).agg(
        pl.col("layer").filter(pl.col("exceeds")).alias("layers"),
        pl.col("layer").filter(~pl.col("exceeds")).alias("other_layers"), pl.len().alias("n_layers"),
        (pl.col("p_shuffle_fdr") < alpha).sum().alias("beats_shuffle"),
        (pl.col("p_random_fdr") < alpha).sum().alias("beats_random"))
    n_neutral = neutral.group_by("lang").len()
    lines = [f"# Anisotropy baseline: {', '.join(dict.fromkeys(layer_table['model']))}", "",
             f"Neutral texts per language: {', '.join(f'{lang} {n}' for lang, n in n_neutral.sort('lang').iter_rows())}; "
             f"stories: {len(stories)} ({', '.join(lang_list)}); mean from token {start_token}. Centred = each set "
             f"(neutral texts, stories) minus its own mean activation per layer; for n texts of equal norm the "
             f"centred mean pairwise cosine is exactly -1/(n-1), so a value near that says the raw anisotropy is "
             f"one offset shared by all texts. "
             f"Separation = within-emotion minus between-emotion mean cosine over story pairs; relative = "
             f"separation / (1 - anisotropy). Nulls: {permutations} label shuffles; {n_random} draws of one random "
             f"direction per emotion (topics split in two halves: fit on one, test on the other, both ways). "
             f"p values are FDR-corrected (Benjamini-Hochberg) across layers; verdict at alpha = {alpha}. "
             f"Corpus {corpus.digest(stories)}, neutral {corpus.digest(neutral)}. Run time {elapsed:.0f} s.", "",
             "## Headline", "",
             "The paper (2604.11050) reports a raw anisotropy of 0.997 for Gemma-3-1B base.", ""]
    for series, lang in layer_table.select("series", "lang").unique(maintain_order=True).iter_rows():
        raw, centred = (ranges.filter((pl.col("series") == series) & (pl.col("variant") == v)).row(0, named=True)
                        for v in VARIANTS)
        result = passed.filter(pl.col("series") == series).row(0, named=True)
        n_texts = n_neutral.filter(pl.col("lang") == lang)["len"][0]
        both, other = result["layers"], result["other_layers"]
        where = ("all layers" if not other else f"all layers but {', '.join(map(str, other))}"
                 if len(other) < len(both) else f"layers {', '.join(map(str, both))}" if both else "no layer")
        lines.append(f"- **{series}**: raw anisotropy {raw['min']:.4f} to {raw['max']:.4f} over layers (mean "
                     f"{raw['mean']:.4f}, highest at layer {raw['max_layer']}); centred {centred['min']:.4f} to "
                     f"{centred['max']:.4f} (-1/(n-1) = {-1 / (n_texts - 1):.4f}). Emotion separation beats the "
                     f"shuffled-label null at {result['beats_shuffle']}/{result['n_layers']} layers, the "
                     f"random-direction baseline at {result['beats_random']}/{result['n_layers']}; both at {where}.")
    for series in series_names:
        part = verdict.filter(pl.col("series") == series).join(
            layer_table.filter((pl.col("series") == series) & (pl.col("variant") == "centred"))
            .select("layer", pl.col("anisotropy").alias("anisotropy_c"), pl.col("relative").alias("relative_c")),
            on="layer")
        lines += ["", f"## {series}", "", "| layer | depth | anisotropy raw | centred | separation raw | relative raw "
                  "| relative centred | p shuffle (FDR) | d emotion | p random (FDR) | exceeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['depth']:.2f} | {r['anisotropy']:.4f} | {r['anisotropy_c']:.4f} | "
                  f"{r['separation']:.2e} | {r['relative']:.3f} | {r['relative_c']:.3f} | {r['p_shuffle_fdr']:.3g} | "
                  f"{r['d_emotion']:.2f} | {r['p_random_fdr']:.3g} | {'yes' if r['exceeds'] else 'no'} |"
                  for r in part.iter_rows(named=True)]
    lines += ["", "Figures: `figures/` (HTML and PNG). Tables: `results/layers.parquet` (per variant), "
              "`results/random_direction.parquet`, `results/verdict.parquet`."]
    run.report("\n".join(lines) + "\n")

    summary = (ranges.pivot(on="variant", index="series", values=["min", "max"])
               .select("series", "min_raw", "max_raw", "min_centred", "max_centred")
               .join(passed.select("series", "n_layers", "beats_shuffle", "beats_random",
                                   pl.col("layers").list.len().alias("exceed_both")), on="series"))
    with pl.Config(tbl_rows=100, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   float_precision=4, tbl_width_chars=200):
        click.echo(f"\nAnisotropy (mean pairwise cosine of neutral texts) and layers beating the baselines:\n{summary}")
    click.echo(f"{elapsed:.0f} s; wrote {run.folder}/ (report.md, results/, figures/)")


if __name__ == "__main__":
    main()
