"""Do different models, and base vs instruct, share one emotion geometry?

    python studies/models.py       # every installed embedded model (SmolLM2 EN; Gemma-3-270M, Qwen2.5-Coder EN+JA)
    python studies/models.py --model meta-llama/Llama-3.1-8B --model meta-llama/Llama-3.1-8B-Instruct --remote

Per model, language and layer: the 30x30 cosine matrix (RDM) of the centered emotion vectors, raw and denoised. Per
pair of models and shared language: RSA of every (layer_a, layer_b), the best pair and the mean at matched depth, with
label-permutation p and bootstrap CIs over stories, against (a) lexical (input embeddings), (b) random-init twins and
(c) shuffled-label baselines. Valence axis: PC1 at each model's best layer. Writes outputs/models/<a>__<b>[__...]/.
"""

from __future__ import annotations

import itertools
from collections import namedtuple

import altair as alt
import click
import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from emonn import EmonnError, corpus, extract, models, plots, runs, stats, study
from emonn.readings import Readings
from emonn.vectors import EmotionVectors

KINDS = ("model", "random init", "input embedding")
REMOTE_RECIPE = ("python studies/models.py --model meta-llama/Llama-3.1-8B "
                 "--model meta-llama/Llama-3.1-8B-Instruct --remote")
#: One model (or baseline) reading one language's stories. gram: variant -> `(n_layers, n, n)` inner products of the
#: stories' (projected) activations, whence every RDM (`stats.class_mean_cosines`); vectors: variant -> emotion vectors.
Geometry = namedtuple("Geometry", "layers depth gram vectors n_pcs")


def geometry(readings: Readings, neutral: Readings | None, emotions: list[str]) -> Geometry:
    """The stories' emotion vectors (the neutral texts' top PCs projected out, if any) and Gram matrices."""
    vectors = EmotionVectors.fit(readings, neutral=neutral, emotions=emotions)
    x = (readings.acts - readings.acts.mean(0)).astype(np.float64).transpose(1, 0, 2)  # centered means: shift-free
    gram, fitted = {"raw": (x @ x.transpose(0, 2, 1)).astype(np.float32)}, {"raw": vectors.means - vectors.center}
    if vectors.pcs:
        projected = np.stack([xl - (xl @ p.T) @ p for xl, p in zip(x, vectors.pcs)])
        gram["denoised"] = (projected @ projected.transpose(0, 2, 1)).astype(np.float32)
        fitted["denoised"] = vectors.vectors
    return Geometry(list(vectors.layers), readings.depth, gram, fitted, vectors.n_pcs)


def matched(depth_a: np.ndarray, depth_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs at matched relative depth: each layer of the shallower model, the other's nearest in depth."""
    if len(depth_a) <= len(depth_b):
        return np.arange(len(depth_a)), np.abs(depth_b[None] - depth_a[:, None]).argmin(1)
    return np.abs(depth_a[None] - depth_b[:, None]).argmin(1), np.arange(len(depth_b))


@study.command("models", models=lambda: tuple(models.installed()[0]), many=True)
@click.option("--denoise/--no-denoise", default=True, show_default=True,
              help="Also compare vectors with the neutral texts' top PCs (50% of their variance) projected out.")
@click.option("--random-init/--no-random-init", "random_baseline", default=True, show_default=True,
              help="The architecture baseline: a random-weight copy of each model reads the same texts.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True, help="Local "
              "models' dtype; float32 shares the other studies' cache, bfloat16 reads 2-2.5x as fast on AMX CPUs.")
@click.option("--random-init-dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
              show_default=True, help="The twins' dtype; auto: bfloat16 where this machine multiplies it 2x as fast.")
@click.option("--permutations", default=10_000, show_default=True, help="Label permutations per RSA test.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples of the stories.")
@click.option("--shuffles", default=200, show_default=True, help="Story-label shuffles (baseline c).")
def main(run: study.Run, denoise: bool, random_baseline: bool, dtype: str, random_init_dtype: str, permutations: int,
         bootstrap: int, shuffles: int) -> None:
    names, remote, context = run.options["model"], run.options["remote"], click.get_current_context()
    skipped = models.installed()[1] if context.get_parameter_source("model").name == "DEFAULT" else []
    if len(names) < 2:
        raise EmonnError(f"need at least two models to compare, got {', '.join(names)} "
                         f"({'; '.join(skipped) or 'pass --model twice'})")
    if min(bootstrap, shuffles, permutations) < 10:
        raise EmonnError("--bootstrap, --shuffles and --permutations need at least 10 draws each")
    if dtype != "float32" and not remote:  # the harness loads float32, the dtype of the cache the studies share
        run.models = [models.load(name, dtype=getattr(torch, dtype)) for name in names]
    loaded, with_random = dict(zip(names, run.models)), random_baseline and not remote
    present = [set(frame["emotion"]) for frame in map(run.stories, run.langs)]
    emotions = [e for e in corpus.emotion_names() if all(e in found for found in present)]  # in corpus order
    if len(emotions) < 4:
        raise EmonnError(f"need at least 4 emotions with stories in every language of --langs, found {len(emotions)}")
    stories = {lang: run.stories(lang, emotions=emotions) for lang in run.langs}
    labels = {lang: frame["emotion"].to_numpy() for lang, frame in stories.items()}
    pairs = [(a, b, lang) for a, b in itertools.combinations(names, 2) for lang in run.langs
             if lang in loaded[a].langs and lang in loaded[b].langs]
    if not pairs:
        raise EmonnError(f"no two of {', '.join(names)} read a common language of --langs {run.options['langs']}")
    langs = {name: [lang for lang in run.langs if any(name in p[:2] and lang == p[2] for p in pairs)] for name in names}
    variants = ["raw", "denoised"] if denoise else ["raw"]
    readers, main_variant = [(name, lang) for name in names for lang in langs[name]], variants[-1]
    kinds, geo, twins = [kind for kind in KINDS if with_random or kind != "random init"], {}, {}
    run.note(corpus_digest=corpus.digest(run.stories()))

    # ---- per model: emotion vectors per language (shared cache), input embeddings, a random-init twin
    for name, model in loaded.items():
        layers, neutral = run.layers(model), {lang: run.neutral(lang) for lang in langs[name] if denoise}
        read = {"model": lambda frame: run.read(model, frame, layers=layers),  # how each kind reads a frame of texts
                "input embedding": lambda frame: run.embeddings(model, frame)}
        if with_random:  # the twin's weights are drawn only if some of its activations are not cached yet
            twins[name] = models.fast_dtype(model) if random_init_dtype == "auto" else getattr(torch, random_init_dtype)
            random = models.random_init(model, run.seed, dtype=twins[name], initialise=False)
            keys = {extract.text_key(t) for f in [*map(stories.get, langs[name]), *neutral.values()] for t in f["text"]}
            if len(run.cache(random).lookup(list(keys))) < len(keys):
                random = models.random_init(model, run.seed, dtype=twins[name])
            read["random init"] = lambda frame: run.read(random, frame, layers=layers)
        for lang, kind in itertools.product(langs[name], kinds):
            geo[name, kind, lang] = geometry(read[kind](stories[lang]), read[kind](neutral[lang]) if denoise else None,
                                             emotions)

    # ---- every layer's RSA with the model's own baselines (a) and (b)
    cos = {(key, v): stats.class_mean_cosines(geo[key].gram[v], labels[key[2]]) for key in geo for v in variants}
    rdm = {key: stats.rsa_vectors(c) for key, c in cos.items()}  # (n_layers, n_pairs) rank vectors of each RDM
    grid_rows, curve_rows, model_rows, rows, observed = [], [], [], [], {}
    for (name, lang), variant in itertools.product(readers, variants):
        own, g = rdm[(name, "model", lang), variant], geo[name, "model", lang]
        against = {"input embedding": own @ rdm[(name, "input embedding", lang), variant][0]}
        against |= {"random init": (own * rdm[(name, "random init", lang), variant]).sum(1)} if with_random else {}
        model_rows += [{"model": name, "lang": lang, "variant": variant, "baseline": base, "layer": layer,
                        "depth": float(g.depth[i]), "r": float(r[i])} for base, r in against.items()
                       for i, layer in enumerate(g.layers)]

    # ---- per pair: RSA grid, label-permutation tests, the statistics with the stories' labels shuffled (baseline c:
    # ---- one shuffle for both), a bootstrap over stories (within emotion) of them and their margins over (a), (b)
    rng, per = np.random.default_rng(run.seed), 3 if with_random else 2  # per statistic: RSA and its margins
    orders = {lang: np.stack([rng.permutation(len(labels[lang])) for _ in range(shuffles)]) for lang in run.langs}
    for (a, b, lang), variant in tqdm(list(itertools.product(pairs, variants)), desc="RSA grids, nulls, bootstrap"):
        ga, gb = geo[a, "model", lang], geo[b, "model", lang]
        test = stats.rsa_grid_test(cos[(a, "model", lang), variant], cos[(b, "model", lang), variant],
                                   n_permutations=permutations, seed=run.seed)
        (la, lb), (ia, ib) = np.unravel_index(np.argmax(test.grid), test.grid.shape), matched(ga.depth, gb.depth)
        observed[a, b, lang, variant], cells = test.grid, [(np.array([la]), np.array([lb])), (ia, ib)]
        grid = {kind: np.broadcast_to(rdm[(a, kind, lang), variant] @ rdm[(b, kind, lang), variant].T,
                                      test.grid.shape) for kind in kinds}  # the input embedding's grid is 1 x 1
        for kind, g in grid.items():
            common = {"model_a": a, "model_b": b, "lang": lang, "variant": variant, "kind": kind}
            grid_rows += [{**common, "layer_a": ga.layers[i], "layer_b": gb.layers[j], "depth_a": float(ga.depth[i]),
                           "depth_b": float(gb.depth[j]), "r": float(g[i, j])} for i, j in np.ndindex(g.shape)]
            curve_rows += [{**common, "layer_a": ga.layers[i], "layer_b": gb.layers[j], "depth": float(
                (ga.depth[i] + gb.depth[j]) / 2), "r": float(g[i, j])} for i, j in zip(ia, ib)]
        v = [np.concatenate([stats.rsa_vectors(stats.class_mean_cosines(geo[m, "model", lang].gram[variant], labels[
            lang][chunk])) for chunk in np.array_split(orders[lang], -(-shuffles // 50))]) for m in (a, b)]
        statistics = (lambda g: g.max((-2, -1)), lambda g: g[..., ia, ib].mean(-1))  # of grids (..., L_a, L_b)
        nulls = [statistic(v[0] @ v[1].transpose(0, 2, 1)) for statistic in statistics]  # (shuffles,) each

        def values(resamples: np.ndarray) -> np.ndarray:  # (1 + n_boot, 2 statistics x per)
            out = []
            for chunk in np.array_split(resamples, -(-len(resamples) // 200)):
                v = {kind: [stats.rsa_vectors(stats.class_mean_cosines(geo[m, kind, lang].gram[variant], labels[lang],
                                                                       resamples=chunk)) for m in (a, b)]
                     for kind in kinds}
                r = {kind: [(v[kind][0][:, i] * v[kind][1][:, j]).sum(-1).mean(-1) for i, j in cells]
                     for kind in kinds[:-1]}
                lexical = (v["input embedding"][0][:, 0] * v["input embedding"][1][:, 0]).sum(-1)
                out.append(np.stack([x for j in (0, 1) for x in [r["model"][j], r["model"][j] - lexical] + (
                    [r["model"][j] - r["random init"][j]] if with_random else [])], 1))
            return np.concatenate(out)

        ci = stats.bootstrap_ci(values, labels[lang], n_boot=bootstrap, seed=run.seed, method="basic", vectorized=True)
        bound = np.tile([1, 2, 2][:per], 2)  # RSA in [-1, 1], margins in [-2, 2]: basic CIs can overshoot
        low, high = (np.clip(x, -bound, bound).reshape(2, per) for x in (ci.low, ci.high))
        p = [stats.permutation_p(statistic(test.grid), statistic(test.null)) for statistic in statistics]
        for j, (lo, hi, null) in enumerate(zip(low, high, nulls)):  # the best pair, matched depth
            best, r = j == 0, float(test.grid[cells[j]].mean())
            where = (ga.layers[la], gb.layers[lb], float(ga.depth[la]), float(gb.depth[lb])) if best else (None,) * 4
            row = {"model_a": a, "model_b": b, "lang": lang, "variant": variant,
                   "statistic": "best pair" if best else "matched depth",
                   **dict(zip(("layer_a", "layer_b", "depth_a", "depth_b"), where)), "rsa": r, "ci_low": lo[0],
                   "ci_high": hi[0], "p": p[j], "p_cell": stats.permutation_p(test.grid[la, lb], test.null[:, la, lb])
                   if best else None, "lexical": float(grid["input embedding"][0, 0]), "over_lexical_low": lo[1],
                   "over_lexical_high": hi[1]}
            row |= {"random_init": float(grid["random init"][cells[j]].mean()), "over_random_low": lo[2],
                    "over_random_high": hi[2]} if with_random else {}
            row |= {"shuffled_mean": float(null.mean()), "shuffled_q95": float(np.quantile(null, 0.95)),
                    "p_shuffled": (null_p := stats.permutation_p(r, null))}
            hits = {"lexical": lo[1] <= 0, "random init": with_random and lo[-1] <= 0, "shuffled labels": null_p > 0.05}
            rows.append(row | {"reached_by": ", ".join(base for base, hit in hits.items() if hit)})
    grids, curves, per_model, pairwise = map(pl.DataFrame, (grid_rows, curve_rows, model_rows, rows))

    # ---- valence axis: PC1 at each model's best layer (where it agrees best with the others), sign by valence
    meta = pl.DataFrame({"emotion": emotions}).join(corpus.emotions(), on="emotion", maintain_order="left")
    valence, axes, valence_rows, agreement_rows = meta["valence"].to_numpy(), {}, [], []
    for (name, lang), kind in itertools.product(readers, kinds):
        best = None if kind == "input embedding" else int(np.argmax(np.mean([
            (g if a == name else g.T).max(1) for (a, b, la, var), g in observed.items()
            if la == lang and var == main_variant and name in (a, b)], 0)))
        x, g = geo[name, kind, lang].vectors[main_variant][:, best or 0], geo[name, "model", lang]
        (fit,) = stats.pc_correlations(x, {"valence": valence}, n_pcs=1)
        sign = 1.0 if fit["r"] >= 0 else -1.0
        axes[name, kind, lang] = (x, sign, sign * stats.pc_scores(x, n_pcs=1)[:, 0], sign * fit["r"])
        valence_rows.append({"model": name, "lang": lang, "source": kind, "layer": None if best is None else
                             g.layers[best], "depth": None if best is None else float(g.depth[best]),
                             "r_valence": sign * fit["r"], "p": fit["p"]})
    for (a, b, lang), kind in itertools.product(pairs, kinds):
        (x, sign, _, ra), (_, _, score_b, rb) = axes[a, kind, lang], axes[b, kind, lang]
        (fit,) = stats.pc_correlations(x, {"other": score_b}, n_pcs=1)
        agreement_rows.append({"model_a": a, "model_b": b, "lang": lang, "source": kind, "r": sign * fit["r"],
                               "p": fit["p"], "r_from_valence_alone": ra * rb})
    valence_axis, agreement = pl.DataFrame(valence_rows), pl.DataFrame(agreement_rows)
    for name, frame in {"rsa_grid": grids, "matched_depth": curves, "per_model_baselines": per_model,
                        "pairwise": pairwise, "valence_axis": valence_axis, "valence_agreement": agreement}.items():
        run.table(name, frame)

    # ---- figures
    for a, b, lang in pairs:
        panel = grids.filter(model_a=a, model_b=b, lang=lang).with_columns(pl.col("depth_a", "depth_b").round(2))
        run.figure(f"rsa_grid_{loaded[a].slug}__{loaded[b].slug}_{lang}", alt.hconcat(*[
            plots.heatmap(panel.filter(variant=variant, kind=kind), x="depth_a", y="depth_b", color="r",
                          domain=(-1, 1), size=240, title=variant if kind == "model" else f"{kind}, {variant}")
            for variant in variants for kind in kinds[:-1] if kind == "model" or variant == main_variant]).properties(
            title=f"RSA by depth: {a} (x) vs {b} (y), {lang.upper()}"))
    curves = curves.with_columns(series=pl.when(pl.col("kind") == "model").then(pl.format("models, {}", "variant"))
                                 .otherwise(pl.format("{}, {}", "kind", "variant")))
    run.figure("matched_depth", alt.concat(*[plots.lines(
        curves.filter((pl.col("kind") == "model") | (pl.col("variant") == main_variant), model_a=a, model_b=b,
                      lang=lang), x="depth", y="r", color="series", y_title="RSA (Spearman)",
        title=f"{a} vs {b}, {lang.upper()}: RSA at matched depth") for a, b, lang in pairs], columns=2))
    shown = pairwise.filter(variant=main_variant).with_columns(
        comparison=pl.format("{} × {} ({})", "model_a", "model_b", "lang"))
    measures = {"models": ("rsa", "ci_low", "ci_high"), "input embedding": ("lexical",) * 3, "shuffled labels, 95%": (
        "shuffled_q95",) * 3, **({"random init": ("random_init",) * 3} if with_random else {})}
    bars = pl.concat([shown.select("comparison", "statistic", kind=pl.lit(kind), r=pl.col(r), low=pl.col(low),
                                   high=pl.col(high)) for kind, (r, low, high) in measures.items()])
    run.figure("headline", alt.hconcat(*[
        plots.bars(bars.filter(statistic=stat), x="comparison", y="r", color="kind", offset="kind",
                   error=("low", "high"), title=f"{stat} RSA ({main_variant}) against the baselines")
        for stat in ("best pair", "matched depth")]))
    run.figure("valence_axes", alt.concat(*[plots.scatter(
        pl.DataFrame({"emotion": emotions, "pc1_a": axes[a, "model", lang][2], "pc1_b": axes[b, "model", lang][2],
                      "valence": valence}), x="pc1_a", y="pc1_b", color="valence", label="emotion",
        title=f"PC1, sign by valence: {a} (x) vs {b} (y), {lang.upper()}") for a, b, lang in pairs], columns=2))
    run.figure("per_model_baselines", alt.concat(*[plots.lines(
        frame.with_columns(series=pl.format("{}, {}", "baseline", "variant")), x="depth", y="r", color="series",
        y_title="RSA with the baseline RDM", title=f"{name}, {lang.upper()}: RSA of each layer with a baseline")
        for (name, lang), frame in per_model.group_by("model", "lang", maintain_order=True)], columns=2))

    # ---- report and summary
    tops = per_model.filter(variant=main_variant).group_by("model", "lang", "baseline", maintain_order=True).agg(
        pl.col("layer", "depth", "r").get(pl.col("r").arg_max()), mean=pl.col("r").mean())
    run.report(loaded=loaded, langs=langs, geo=geo, twins={name: runs.dtype_name(t) for name, t in twins.items()},
               skipped=skipped, emotions=emotions, stories=stories, variants=variants, with_random=with_random,
               recipe=REMOTE_RECIPE, pairwise=pairwise, tops=tops, valence=valence_axis, agreement=agreement)
    line = "{comparison}, {statistic}: RSA {rsa:.3f} [{ci_low:.2f}, {ci_high:.2f}], p {p:.2g}; reached by {reached_by}"
    run.done(*skipped, *(line.format(**r | {"reached_by": r["reached_by"] or "none"}) for r in shown.to_dicts()))


main.epilog = f"On NDIF: {REMOTE_RECIPE}"

if __name__ == "__main__":
    main()
