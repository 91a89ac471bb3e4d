"""Do different models, and base vs instruct, share one emotion geometry?

    python studies/models.py       # every installed embedded model (SmolLM2 EN; Gemma-3-270M, Qwen2.5-Coder EN+JA)
    python studies/models.py --model meta-llama/Llama-3.1-8B --model meta-llama/Llama-3.1-8B-Instruct --remote

Per model, language and layer: the 30x30 cosine matrix (RDM) of the centered emotion vectors, raw and denoised. Per
pair of models and shared language: RSA of every (layer_a, layer_b), the best pair and the mean at matched depth, with
label-permutation p (max over the grid for the best pair) and bootstrap CIs over emotions (the best pair re-chosen in
each replicate); the partial RSA without the stimulus (TF-IDF, topic design) and lexical (input-embedding) RDMs, raw and
over the models' noise ceilings; against (a) lexical, (b) random-init twins and (c) shuffled-label baselines. Valence
axis: PC1 at each model's best layer. Writes outputs/models/<a>__<b>[__...]/.
"""

from __future__ import annotations

import functools
import itertools
from collections import namedtuple

import altair as alt
import click
import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from emonn import EmonnError, baselines, corpus, extract, models, plots, runs, stats, study
from emonn.readings import Readings
from emonn.vectors import EmotionVectors

KINDS = ("model", "random init", "input embedding")
SPLITS = 5  # random split-halves of each emotion's stories per noise ceiling
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
@click.option("--random-init-dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
              show_default=True, help="The twins' dtype; auto: bfloat16 where this machine multiplies it 2x as fast.")
@click.option("--permutations", default=10_000, show_default=True, help="Label permutations per RSA test.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples of the emotions.")
@click.option("--shuffles", default=200, show_default=True, help="Story-label shuffles (baseline c).")
def main(run: study.Run, denoise: bool, random_baseline: bool, random_init_dtype: str, permutations: int,
         bootstrap: int, shuffles: int) -> None:
    names, remote, context = run.options["model"], run.options["remote"], click.get_current_context()
    skipped = models.installed()[1] if context.get_parameter_source("model").name == "DEFAULT" else []
    if len(names) < 2:
        raise EmonnError(f"need at least two models to compare, got {', '.join(names)} "
                         f"({'; '.join(skipped) or 'pass --model twice'})")
    if min(bootstrap, shuffles, permutations) < 10:
        raise EmonnError("--bootstrap, --shuffles and --permutations need at least 10 draws each")
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

    # ---- per pair: RSA grid, permutation tests (the best pair paid for by the max over the grid), shuffled labels
    # ---- (baseline c), and over emotions: CIs of the raw RSA, of the partial RSA without the stimulus and lexical
    # ---- RDMs and of that over the models' noise ceilings (split halves), the best cell re-chosen per replicate
    rng = np.random.default_rng(run.seed)
    orders = {lang: np.stack([rng.permutation(len(labels[lang])) for _ in range(shuffles)]) for lang in run.langs}
    # class_mean_cosines orders the emotions as np.unique does (sorted): the baselines must follow that order
    stimulus = {lang: baselines.stimulus(stories[lang], sorted(emotions)) for lang in run.langs}
    splits = {lang: [stats.split_halves(labels[lang], rng) for _ in range(SPLITS)] for lang in run.langs}
    halves = {(key, v): np.stack([[stats.class_mean_cosines(geo[key].gram[v], labels[key[2]], resamples=half[None])[0]
                                   for half in split] for split in splits[key[2]]])
              for key in geo if key[1] == "model" for v in variants}  # (splits, 2, n_layers, n, n)
    for (a, b, lang), variant in tqdm(list(itertools.product(pairs, variants)), desc="RSA grids, nulls, bootstrap"):
        ga, gb = geo[a, "model", lang], geo[b, "model", lang]
        ca, cb = cos[(a, "model", lang), variant], cos[(b, "model", lang), variant]
        test = stats.rsa_grid_test(ca, cb, n_permutations=permutations, seed=run.seed)
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
        controls = np.stack([*stimulus[lang].values(), *(cos[(m, "input embedding", lang), variant][0] for m in (a, b))])
        ceilings = [halves[(m, "model", lang), variant] for m in (a, b)]

        emotion_unit = functools.partial(stats.grid_summaries, ca, cb, cells=(ia, ib), controls=controls,
                                         halves=ceilings)  # rows -> (R, 6)
        estimate = emotion_unit(np.arange(len(emotions))[None])[0]
        low, high, _ = stats.condition_bootstrap(emotion_unit, len(emotions), n_boot=bootstrap, seed=run.seed)
        p = [stats.permutation_p(statistic(test.grid), statistic(test.null)) for statistic in statistics]
        for j, null in enumerate(nulls):  # the best pair, matched depth
            best, r, at = j == 0, float(test.grid[cells[j]].mean()), slice(3 * j, 3 * j + 3)
            where = (ga.layers[la], gb.layers[lb], float(ga.depth[la]), float(gb.depth[lb])) if best else (None,) * 4
            row = {"model_a": a, "model_b": b, "lang": lang, "variant": variant,
                   "statistic": "best pair" if best else "matched depth",
                   **dict(zip(("layer_a", "layer_b", "depth_a", "depth_b"), where)), "rsa": r, "p": p[j],
                   "p_cell": stats.permutation_p(test.grid[la, lb], test.null[:, la, lb]) if best else None,
                   **{f"{name}{end}": float(x) for values, end in ((estimate, ""), (low, "_low"), (high, "_high"))
                      for name, x in zip(("ci", "partial", "corrected"), values[at]) if (name, end) != ("ci", "")},
                   "lexical": float(grid["input embedding"][0, 0]),
                   **({"random_init": float(grid["random init"][cells[j]].mean())} if with_random else {}),
                   "shuffled_mean": float(null.mean()), "shuffled_q95": float(np.quantile(null, 0.95)),
                   "p_shuffled": (null_p := stats.permutation_p(r, null))}
            hits = {"lexical": row["lexical"] >= row["ci_low"],
                    "random init": with_random and row["random_init"] >= row["ci_low"],
                    "shuffled labels": null_p > 0.05, "nothing beyond the stimulus and lexical RDMs":
                    row["partial_low"] <= 0}
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
        (fit,) = stats.pc_correlations(x, {"valence": valence}, n_pcs=1, sign_by=valence)
        axes[name, kind, lang] = (x, stats.pc_scores(x, n_pcs=1, sign_by=valence)[:, 0], fit["r"])
        valence_rows.append({"model": name, "lang": lang, "source": kind, "layer": None if best is None else
                             g.layers[best], "depth": None if best is None else float(g.depth[best]),
                             "r_valence": fit["r"], "p": fit["p"]})
    for (a, b, lang), kind in itertools.product(pairs, kinds):
        (x, _, ra), (_, score_b, rb) = axes[a, kind, lang], axes[b, kind, lang]
        (fit,) = stats.pc_correlations(x, {"other": score_b}, n_pcs=1, sign_by=valence)
        agreement_rows.append({"model_a": a, "model_b": b, "lang": lang, "source": kind, "r": fit["r"],
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
    measures = {"models": ("rsa", "ci_low", "ci_high"), "models, partial": ("partial", "partial_low", "partial_high"),
                "input embedding": ("lexical",) * 3, "shuffled labels, 95%": ("shuffled_q95",) * 3,
                **({"random init": ("random_init",) * 3} if with_random else {})}
    bars = pl.concat([shown.select("comparison", "statistic", kind=pl.lit(kind), r=pl.col(r), low=pl.col(low),
                                   high=pl.col(high)) for kind, (r, low, high) in measures.items()])
    run.figure("headline", alt.hconcat(*[
        plots.bars(bars.filter(statistic=stat), x="comparison", y="r", color="kind", offset="kind",
                   error=("low", "high"), title=f"{stat} RSA ({main_variant}) against the baselines")
        for stat in ("best pair", "matched depth")]))
    run.figure("valence_axes", alt.concat(*[plots.scatter(
        pl.DataFrame({"emotion": emotions, "pc1_a": axes[a, "model", lang][1], "pc1_b": axes[b, "model", lang][1],
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
