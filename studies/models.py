"""Do different models, and base vs instruct, share one emotion geometry?

    python studies/models.py       # every installed embedded model (SmolLM2 EN; Gemma-3-270M, Qwen2.5-Coder EN+JA)
    python studies/models.py --model meta-llama/Llama-3.1-8B --model meta-llama/Llama-3.1-8B-Instruct --remote

Per model and language: emotion vectors from the activation cache the other studies share, and per layer
the 30x30 cosine matrix (RDM) of the centered vectors, raw and with the neutral texts' top PCs projected
out (denoised). Per pair of models and shared language: RSA (Spearman) of every (layer_a, layer_b), a
depth x depth grid; the best-matching pair of layers and the mean RSA along matched relative depth, each
with a label-permutation p (p = (k+1)/(n+1); for the best pair the null maximises over the grid too) and a
basic bootstrap CI over stories (stratified by emotion). Baselines a shared geometry must beat: (a) lexical,
the RDM of the stories' mean input embeddings; (b) architecture, a randomly initialised model of the same
architecture and tokenizer reading the same texts (local models only; in bfloat16 where this machine
multiplies it at least twice as fast); (c) shuffled labels, the same two models with the stories' emotion
labels shuffled (one shuffle for both). Valence axis: PC1 at each model's best layer, sign fixed by valence,
its correlation with corpus valence and across models (second order).
Writes outputs/models/<slug-a>__<slug-b>[__...]/ (config.json, results/*.parquet, figures/, report.md).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from typing import NamedTuple

import altair as alt
import click
import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from emonn import EmonnError, corpus, extract, models, plots, runs, stats
from emonn.vectors import EmotionVectors

KINDS = ("model", "random init", "input embedding")
REMOTE_RECIPE = ("python studies/models.py --model meta-llama/Llama-3.1-8B "
                 "--model meta-llama/Llama-3.1-8B-Instruct --remote")


def random_init(model: models.Model, seed: int, *, dtype: torch.dtype | None = None, initialise: bool = True
                ) -> models.Model:
    """The architecture baseline: a model built from `model`'s config, in `dtype` (default: the model's), with
    weights drawn afresh (seeded), sharing its tokenizer object. `initialise=False` skips drawing the weights
    (fast, left uninitialised): only for a model whose activations are all cached already."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    hf = model.lm._module
    torch.manual_seed(seed)
    with contextlib.nullcontext() if initialise else no_init_weights():
        baseline = AutoModelForCausalLM.from_config(hf.config, dtype=dtype or next(hf.parameters()).dtype)
    return models.wrap(baseline.eval(), model.tokenizer, name=f"{model.name}-random-init-seed{seed}",
                       langs=model.langs)


def fast_dtype(model: models.Model) -> torch.dtype:
    """bfloat16 where the model's device multiplies it at least twice as fast as the model's own dtype (CPUs
    with AMX or AVX512-BF16, GPUs), else the model's dtype."""
    param = next(model.lm._module.parameters())
    faster = param.dtype == torch.bfloat16 or bfloat16_faster(param.device.type, param.dtype)
    return torch.bfloat16 if faster else param.dtype


@functools.cache
def bfloat16_faster(device: str, dtype: torch.dtype) -> bool:
    """Whether `device` multiplies bfloat16 at least twice as fast as `dtype`: a (512, 1024) x (1024, 4096)
    product, best of 5 after a warm-up. A property of the machine: measured once per run, so every model's
    twin in a run gets the same answer."""

    def seconds(kind: torch.dtype) -> float:
        x, w = (torch.randn(shape, dtype=kind, device=device) for shape in ((512, 1024), (1024, 4096)))
        times = []
        for _ in range(6):
            began = time.perf_counter()
            x @ w
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        return min(times[1:])

    return 2 * seconds(torch.bfloat16) < seconds(dtype)


class Geometry(NamedTuple):
    """One model (or baseline) reading one language's stories, at `layers`.

    gram:    variant -> `(n_layers, n_stories, n_stories)` float32 inner products of the stories' activations
             (minus their mean, after the variant's projection): every RDM, resampled or relabelled, derives
             from it (`stats.class_mean_cosines`).
    vectors: variant -> `(n_emotions, n_layers, d)` centered emotion vectors, emotions in corpus order.
    """

    layers: list[int]
    depth: np.ndarray
    gram: dict[str, np.ndarray]
    vectors: dict[str, np.ndarray]


def geometry(acts: np.ndarray, vectors: EmotionVectors, depth: np.ndarray) -> Geometry:
    """From the stories' activations `(n, n_layers, d)` and their emotion vectors (with neutral PCs, if any)."""
    x = (acts - acts.mean(0)).astype(np.float64).transpose(1, 0, 2)  # a constant shift leaves centered means alone
    gram = {"raw": (x @ x.transpose(0, 2, 1)).astype(np.float32)}
    fitted = {"raw": vectors.means - vectors.center}
    if vectors.pcs:
        projected = np.stack([xl - (xl @ p.T) @ p for xl, p in zip(x, vectors.pcs)])
        gram["denoised"] = (projected @ projected.transpose(0, 2, 1)).astype(np.float32)
        fitted["denoised"] = vectors.vectors
    return Geometry(list(vectors.layers), depth, gram, fitted)


def matched(depth_a: np.ndarray, depth_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs at matched relative depth: every layer of the model with fewer layers, with the other
    model's layer nearest in depth."""
    if len(depth_a) <= len(depth_b):
        return np.arange(len(depth_a)), np.abs(depth_b[None] - depth_a[:, None]).argmin(1)
    return np.abs(depth_a[None] - depth_b[:, None]).argmin(1), np.arange(len(depth_b))


@click.command(cls=runs.Command, epilog=f"On NDIF: {REMOTE_RECIPE}",
               help="Compare the emotion geometry (30x30 RDMs of emotion vectors) of two or more models, pair by "
                    "pair and layer by layer, against lexical, random-init and shuffled-label baselines. Writes "
                    "outputs/models/<slug-a>__<slug-b>[__...]/.")
@click.option("--model", "model_names", multiple=True,
              help="Embedded alias, HF repo id, model folder or .gguf file; repeat (at least two). "
                   "Default: every installed embedded model.")
@click.option("--remote", is_flag=True, help="Run the traces on NDIF (needs NDIF_API_KEY); no random-init baseline.")
@click.option("--langs", default="en,ja", show_default=True,
              help="Corpus languages; each pair compares the languages both models read.")
@click.option("--layers", default="", help="Layers to analyse per model, e.g. '2-10' or '0,5,-1' (default: all).")
@click.option("--start-token", default=extract.START, show_default=True,
              help="Average each story's residual stream from this token on.")
@click.option("--denoise/--no-denoise", default=True, show_default=True,
              help="Also compare vectors with the neutral texts' top PCs (50% of their variance) projected out.")
@click.option("--random-init/--no-random-init", "random_baseline", default=True, show_default=True,
              help="The architecture baseline: a random-weight copy of each model reads the same texts.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="Local models' dtype. float32 shares the activation cache of the other studies; bfloat16 has a "
                   "cache of its own and reads 2-2.5x as fast on CPUs with AMX or AVX512-BF16.")
@click.option("--random-init-dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
              show_default=True, help="The random-init twins' dtype; auto: bfloat16 where this machine multiplies it "
                                      "at least twice as fast as the model's dtype (random weights need no precision).")
@click.option("--permutations", default=10_000, show_default=True, help="Label permutations per RSA test.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples of the stories.")
@click.option("--shuffles", default=200, show_default=True, help="Story-label shuffles (baseline c).")
@click.option("--corpus", "corpus_path", type=click.Path(), default=None,
              help="A stories file instead of the shipped one.")
@click.option("--neutral", "neutral_path", type=click.Path(), default=None,
              help="A neutral-texts file (for --denoise) instead of the shipped one.")
@click.option("--batch-tokens", default=2048, show_default=True, help="Padded tokens per forward pass.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="outputs", show_default=True, type=click.Path())
def main(model_names: tuple[str, ...], remote: bool, langs: str, layers: str, start_token: int, denoise: bool,
         random_baseline: bool, dtype: str, random_init_dtype: str, permutations: int, bootstrap: int,
         shuffles: int, corpus_path: str | None, neutral_path: str | None, batch_tokens: int, seed: int, out: str
         ) -> None:
    started = time.perf_counter()
    config = {k: v for k, v in locals().items() if k != "started"}
    lang_list = corpus.parse_langs(langs)
    if bootstrap < 10 or shuffles < 10 or permutations < 10:
        raise EmonnError("--bootstrap, --shuffles and --permutations need at least 10 draws each")
    skipped: list[str] = []
    if not model_names:
        if remote:
            raise EmonnError(f"--remote needs the models to compare, e.g. {REMOTE_RECIPE}")
        model_names, skipped = models.installed()
        for line in skipped:
            click.echo(line)
    names = list(dict.fromkeys(model_names))
    if len(names) < 2:
        raise EmonnError(f"need at least two models to compare, got {', '.join(names) or 'none'} "
                         f"({'; '.join(skipped) or 'pass --model twice'})")
    with_random = random_baseline and not remote
    stories = corpus.load(corpus_path, langs=lang_list)
    neutral = corpus.load(neutral_path, neutral=True, langs=lang_list) if denoise else None
    variants = ["raw", "denoised"] if denoise else ["raw"]
    main_variant = variants[-1]
    present = [set(stories.filter(pl.col("lang") == lang)["emotion"]) for lang in lang_list]
    emotions = [e for e in corpus.emotion_names() if all(e in found for found in present)]  # corpus order
    if len(emotions) < 4:
        raise EmonnError(f"need at least 4 emotions with stories in every language of --langs, found {len(emotions)}")
    frames = {lang: stories.filter((pl.col("lang") == lang) & pl.col("emotion").is_in(emotions)) for lang in lang_list}
    labels = {lang: frames[lang]["emotion"].to_numpy() for lang in lang_list}

    # ---- load every model first: a missing package or a bad option stops the run before any extraction
    loaded = {name: models.load(name, remote=remote, dtype=getattr(torch, dtype)) for name in names}
    info = {name: {"slug": m.slug, "n_layers": m.n_layers, "d": m.d_model, "pcs": {},
                   "layers": m.check_layers(runs.parse_layers(layers)),
                   "langs": [lang for lang in lang_list if lang in m.langs]} for name, m in loaded.items()}
    pairs = [(a, b, lang) for a, b in itertools.combinations(names, 2) for lang in lang_list
             if lang in info[a]["langs"] and lang in info[b]["langs"]]
    if not pairs:
        raise EmonnError(f"no two of {', '.join(names)} read a common language of --langs {langs}")
    for name in names:  # only the languages some pair compares
        info[name]["langs"] = [lang for lang in info[name]["langs"] if (lang, name) in
                               {(p[2], m) for p in pairs for m in p[:2]}]
    kinds = [kind for kind in KINDS if with_random or kind != "random init"]
    run = runs.Run.create(out, "models", "__".join(info[name]["slug"] for name in names),
                          {**config, "model_names": names, "corpus": corpus.digest(stories)})

    # ---- per model: emotion vectors per language (shared cache), input embeddings, a random-init twin
    geo: dict[tuple[str, str, str], Geometry] = {}  # (model, kind, lang)
    for name in names:
        model, layer_ids, model_langs = loaded.pop(name), info[name]["layers"], info[name]["langs"]
        depth = np.array([model.depth(layer) for layer in layer_ids])
        cache = runs.activation_cache(out, model, "mean", start_token)
        embed_cache = runs.ActivationCache(cache.folder.with_name(f"embedding-{cache.folder.name}"))
        twin = None
        if with_random:
            twin_dtype = fast_dtype(model) if random_init_dtype == "auto" else getattr(torch, random_init_dtype)
            info[name]["random_init_dtype"] = runs.dtype_name(twin_dtype)
            random_cache = runs.ActivationCache(cache.folder.parent.with_name(f"{model.slug}-random-init-seed{seed}")
                                                / runs.cache_name("mean", start_token, twin_dtype))
            texts = [t for lang in model_langs for t in frames[lang]["text"].to_list()
                     + (neutral.filter(pl.col("lang") == lang)["text"].to_list() if denoise else [])]
            keys = {extract.text_key(text) for text in texts}
            cached = len(random_cache.lookup(list(keys))) == len(keys)
            twin = random_init(model, seed, dtype=twin_dtype, initialise=not cached)
        for lang in model_langs:
            frame = frames[lang]
            lang_neutral = neutral.filter(pl.col("lang") == lang) if denoise else None
            vec, acts = extract.emotion_vectors(model, frame, neutral=lang_neutral, start=start_token,
                                                layers=layer_ids, cache=cache, batch_tokens=batch_tokens)
            geo[name, "model", lang] = geometry(acts, vec, depth)
            info[name]["pcs"][lang] = vec.n_pcs
            emb = extract.embeddings(model, frame["text"].to_list(), start=start_token, cache=embed_cache)[:, None]
            emb_neutral = (extract.embeddings(model, lang_neutral["text"].to_list(), start=start_token,
                                              cache=embed_cache)[:, None] if denoise else None)
            emb_vec = EmotionVectors.fit(emb, labels[lang], layers=[0], emotions=emotions, neutral=emb_neutral)
            geo[name, "input embedding", lang] = geometry(emb, emb_vec, np.zeros(1))
            if twin is not None:
                rvec, racts = extract.emotion_vectors(twin, frame, neutral=lang_neutral, start=start_token,
                                                      layers=layer_ids, cache=random_cache, batch_tokens=batch_tokens)
                geo[name, "random init", lang] = geometry(racts, rvec, depth)
        del model, twin

    # ---- observed RDMs and RSA grids, label-permutation tests, per-model baselines
    rdm = {(key, variant): stats.rsa_vectors(stats.class_mean_cosines(geo[key].gram[variant], labels[key[2]]))
           for key in geo for variant in variants}  # (n_layers, n_pairs) rank vectors of each RDM
    grid_rows, pair_stats, curve_rows = [], {}, []
    for a, b, lang in tqdm(pairs, desc="RSA grids + permutation tests"):
        ga, gb = geo[a, "model", lang], geo[b, "model", lang]
        ia, ib = matched(ga.depth, gb.depth)
        for variant in variants:
            cos_a = stats.class_mean_cosines(ga.gram[variant], labels[lang])
            cos_b = stats.class_mean_cosines(gb.gram[variant], labels[lang])
            test = stats.rsa_grid_test(cos_a, cos_b, n_permutations=permutations, seed=seed)
            grid = {kind: rdm[(a, kind, lang), variant] @ rdm[(b, kind, lang), variant].T for kind in kinds}
            la, lb = np.unravel_index(np.argmax(test.grid), test.grid.shape)
            pair_stats[a, b, lang, variant] = {
                "best": (la, lb), "matched": (ia, ib), "grid": test.grid,
                "p_best": stats.permutation_p(test.grid.max(), test.null.max((1, 2))),
                "p_cell": stats.permutation_p(test.grid[la, lb], test.null[:, la, lb]),
                "p_matched": stats.permutation_p(test.grid[ia, ib].mean(), test.null[:, ia, ib].mean(1)),
                "baseline": {kind: grid[kind] for kind in kinds if kind != "model"}}
            for kind in kinds:
                g = grid[kind] if kind != "input embedding" else np.broadcast_to(grid[kind], test.grid.shape)
                grid_rows += [{"model_a": a, "model_b": b, "lang": lang, "variant": variant, "kind": kind,
                               "layer_a": ga.layers[i], "layer_b": gb.layers[j], "depth_a": float(ga.depth[i]),
                               "depth_b": float(gb.depth[j]), "r": float(g[i, j])}
                              for i in range(len(ga.layers)) for j in range(len(gb.layers))]
                curve_rows += [{"model_a": a, "model_b": b, "lang": lang, "variant": variant, "kind": kind,
                                "layer_a": ga.layers[i], "layer_b": gb.layers[j],
                                "depth": float((ga.depth[i] + gb.depth[j]) / 2), "r": float(g[i, j])}
                               for i, j in zip(ia, ib)]
    grids = pl.DataFrame(grid_rows)
    run.table("rsa_grid", grids)
    run.table("matched_depth", pl.DataFrame(curve_rows))
    model_rows = []
    for (name, kind, lang), g in geo.items():
        if kind != "model":
            continue
        for variant in variants:
            own = rdm[(name, kind, lang), variant]
            against = {"input embedding": own @ rdm[(name, "input embedding", lang), variant][0]}
            if with_random:
                against["random init"] = (own * rdm[(name, "random init", lang), variant]).sum(1)
            model_rows += [{"model": name, "lang": lang, "variant": variant, "baseline": base, "layer": layer,
                            "depth": float(g.depth[i]), "r": float(values[i])}
                           for base, values in against.items() for i, layer in enumerate(g.layers)]
    per_model = pl.DataFrame(model_rows)
    run.table("per_model_baselines", per_model)

    def stacked(keys: list[tuple[str, str, str]], variant: str) -> tuple[np.ndarray, dict]:
        """The keys' Gram matrices stacked along the layer axis (one call serves them all), and where each starts."""
        starts = np.cumsum([0] + [len(geo[key].layers) for key in keys])
        return np.concatenate([geo[key].gram[variant] for key in keys]), dict(zip(keys, starts))

    def at(v: np.ndarray, start: dict, key: tuple[str, str, str], index: np.ndarray) -> np.ndarray:
        return v[:, start[key] + np.asarray(index)]

    # ---- baseline (c): the same RSA statistics with the stories' labels shuffled (one shuffle for both models)
    rng = np.random.default_rng(seed)
    orders = {lang: np.stack([rng.permutation(len(labels[lang])) for _ in range(shuffles)]) for lang in lang_list}
    shuffled = {}
    for lang, variant in tqdm([(lang, v) for lang in lang_list for v in variants], desc="story-label shuffles"):
        keys = [(name, "model", lang) for name in names if lang in info[name]["langs"]]
        if len(keys) < 2:
            continue
        stack, start = stacked(keys, variant)
        v = np.concatenate([stats.rsa_vectors(stats.class_mean_cosines(stack, labels[lang][chunk]))
                            for chunk in np.array_split(orders[lang], -(-shuffles // 50))])  # (shuffles, N, pairs)
        for (a, b, la, var), s in pair_stats.items():
            if (la, var) == (lang, variant):
                g = at(v, start, (a, "model", lang), range(len(geo[a, "model", lang].layers))) @ at(
                    v, start, (b, "model", lang), range(len(geo[b, "model", lang].layers))).transpose(0, 2, 1)
                matched_mean = g[:, s["matched"][0], s["matched"][1]].mean(1)
                shuffled[a, b, lang, variant] = np.stack([g.max((1, 2)), matched_mean], 1)  # (shuffles, 2)

    # ---- bootstrap over stories (stratified by emotion, the same resamples for every model, kind and variant):
    # ---- the headline values and their margins over baselines (a) and (b)
    boot = {}
    for lang, variant in tqdm([(lang, v) for lang in lang_list for v in variants], desc="bootstrap"):
        specs = [(a, b) for (a, b, la, var) in pair_stats if (la, var) == (lang, variant)]
        if not specs:
            continue
        stack, start = stacked([key for key in geo if key[2] == lang], variant)

        def values(resamples: np.ndarray, specs=specs, stack=stack, start=start, lang=lang, variant=variant
                   ) -> np.ndarray:
            out = []
            for chunk in np.array_split(resamples, -(-len(resamples) // 200)):
                v = stats.rsa_vectors(stats.class_mean_cosines(stack, labels[lang], resamples=chunk))
                cols = []
                for a, b in specs:
                    s = pair_stats[a, b, lang, variant]
                    lexical = (at(v, start, (a, "input embedding", lang), 0)
                               * at(v, start, (b, "input embedding", lang), 0)).sum(-1)
                    for cells in ((s["best"][0], s["best"][1]), s["matched"]):
                        r = {kind: (at(v, start, (a, kind, lang), cells[0]) * at(v, start, (b, kind, lang), cells[1])
                                    ).sum(-1).reshape(len(chunk), -1).mean(-1) for kind in kinds[:-1]}
                        cols += [r["model"], r["model"] - lexical] + ([r["model"] - r["random init"]] if with_random
                                                                      else [])
                out.append(np.stack(cols, 1))
            return np.concatenate(out)

        result = stats.bootstrap_ci(values, labels[lang], n_boot=bootstrap, seed=seed, method="basic", vectorized=True)
        per = 3 if with_random else 2  # per pair and statistic (best pair, matched depth): RSA and its margins
        bound = np.tile([1, 2, 2] if with_random else [1, 2], 2 * len(specs))  # RSA in [-1, 1], margins in [-2, 2]
        low, high = np.clip(result.low, -bound, bound), np.clip(result.high, -bound, bound)  # basic CIs can overshoot
        for k, (a, b) in enumerate(specs):
            boot[a, b, lang, variant] = (low[k * 2 * per : (k + 1) * 2 * per], high[k * 2 * per : (k + 1) * 2 * per])

    # ---- the pairwise table
    rows = []
    for (a, b, lang, variant), s in pair_stats.items():
        ga, gb = geo[a, "model", lang], geo[b, "model", lang]
        (la, lb), per = s["best"], (3 if with_random else 2)  # per statistic: RSA, margin over (a)[, over (b)]
        for j, stat in enumerate(("best", "matched")):
            low, high = (bound[j * per : (j + 1) * per] for bound in boot[a, b, lang, variant])
            null = shuffled[a, b, lang, variant][:, j]
            cells = (np.array([la]), np.array([lb])) if stat == "best" else s["matched"]
            r = float(s["grid"][cells].mean())
            best = stat == "best"
            row = {"model_a": a, "model_b": b, "lang": lang, "variant": variant,
                   "statistic": "best pair" if best else "matched depth",
                   "layer_a": ga.layers[la] if best else None, "layer_b": gb.layers[lb] if best else None,
                   "depth_a": float(ga.depth[la]) if best else None, "depth_b": float(gb.depth[lb]) if best else None,
                   "rsa": r, "ci_low": low[0], "ci_high": high[0], "p": s[f"p_{stat}"],
                   "p_cell": s["p_cell"] if best else None,
                   "lexical": float(s["baseline"]["input embedding"][0, 0]), "over_lexical_low": low[1],
                   "over_lexical_high": high[1]}
            if with_random:
                row |= {"random_init": float(s["baseline"]["random init"][cells].mean()), "over_random_low": low[2],
                        "over_random_high": high[2]}
            row |= {"shuffled_mean": float(null.mean()), "shuffled_q95": float(np.quantile(null, 0.95)),
                    "p_shuffled": stats.permutation_p(r, null)}
            reached = [name for name, hit in (("lexical", row["over_lexical_low"] <= 0),
                                              ("random init", with_random and row["over_random_low"] <= 0),
                                              ("shuffled labels", row["p_shuffled"] > 0.05)) if hit]
            row["reached_by"] = ", ".join(reached)
            rows.append(row)
    pairwise = pl.DataFrame(rows)
    run.table("pairwise", pairwise)

    # ---- valence axis: PC1 at each model's best layer (where it agrees best with the others), sign by valence
    meta = corpus.emotions().filter(pl.col("emotion").is_in(emotions)).sort(
        pl.col("emotion").replace_strict(emotions, list(range(len(emotions)))))
    valence = meta["valence"].to_numpy()
    axes, valence_rows, points = {}, [], []
    for name in names:
        for lang in info[name]["langs"]:
            partners = [(s["grid"] if a == name else s["grid"].T)
                        for (a, b, la, variant), s in pair_stats.items()
                        if la == lang and variant == main_variant and name in (a, b)]
            if not partners:
                continue
            g = geo[name, "model", lang]
            best = int(np.argmax(np.mean([p.max(1) for p in partners], axis=0)))
            for kind in kinds:
                x = geo[name, kind, lang].vectors[main_variant][:, 0 if kind == "input embedding" else best]
                fit = stats.pc_correlations(x, {"valence": valence}, n_pcs=1)[0]
                sign = 1.0 if fit["r"] >= 0 else -1.0
                axes[name, kind, lang] = (x, sign, sign * stats.pc_scores(x, n_pcs=1)[:, 0])
                valence_rows.append({"model": name, "lang": lang, "source": kind,
                                     "layer": None if kind == "input embedding" else g.layers[best],
                                     "depth": None if kind == "input embedding" else float(g.depth[best]),
                                     "r_valence": sign * fit["r"], "p": fit["p"]})
    agreement_rows = []
    for a, b, lang in pairs:
        for kind in kinds:
            if (a, kind, lang) not in axes or (b, kind, lang) not in axes:
                continue
            x, sign, score_a = axes[a, kind, lang]
            score_b = axes[b, kind, lang][2]
            fit = stats.pc_correlations(x, {"other": score_b}, n_pcs=1)[0]
            ra, rb = (r["r_valence"] for r in valence_rows if r["lang"] == lang and r["source"] == kind
                      and r["model"] in (a, b))
            agreement_rows.append({"model_a": a, "model_b": b, "lang": lang, "source": kind, "r": sign * fit["r"],
                                   "p": fit["p"], "r_from_valence_alone": ra * rb})
            if kind == "model":
                points.append(pl.DataFrame({"pair": f"{a} (x) vs {b} (y), {lang.upper()}", "emotion": emotions,
                                            "pc1_a": score_a, "pc1_b": score_b, "valence": valence}))
    valence_table, agreement = pl.DataFrame(valence_rows), pl.DataFrame(agreement_rows)
    run.table("valence_axis", valence_table)
    run.table("valence_agreement", agreement)

    # ---- figures
    for a, b, lang in pairs:
        panel = grids.filter((pl.col("model_a") == a) & (pl.col("model_b") == b) & (pl.col("lang") == lang)
                             & (pl.col("kind") != "input embedding")).with_columns(
            pl.col("depth_a").round(2), pl.col("depth_b").round(2))
        charts = [plots.heatmap(panel.filter((pl.col("variant") == variant) & (pl.col("kind") == kind)), x="depth_a",
                                y="depth_b", color="r", domain=(-1, 1), size=240,
                                title=f"{kind}, {variant}" if kind != "model" else f"{variant}")
                  for variant in variants for kind in kinds[:-1] if kind == "model" or variant == main_variant]
        run.figure(f"rsa_grid_{info[a]['slug']}__{info[b]['slug']}_{lang}", alt.hconcat(*charts).properties(
            title=f"RSA by depth: {a} (x) vs {b} (y), {lang.upper()}"))
    curves = pl.DataFrame(curve_rows).with_columns(
        series=pl.when(pl.col("kind") == "model").then(pl.format("models, {}", "variant"))
        .otherwise(pl.format("{}, {}", "kind", "variant")))
    run.figure("matched_depth", alt.concat(*[
        plots.lines(curves.filter((pl.col("model_a") == a) & (pl.col("model_b") == b) & (pl.col("lang") == lang)
                                  & ((pl.col("kind") == "model") | (pl.col("variant") == main_variant))),
                    x="depth", y="r", color="series", y_title="RSA (Spearman)",
                    title=f"{a} vs {b}, {lang.upper()}: RSA at matched depth")
        for a, b, lang in pairs], columns=2))
    shown = pairwise.filter(pl.col("variant") == main_variant).with_columns(
        comparison=pl.format("{} × {} ({})", "model_a", "model_b", "lang"))
    measures = [("models", "rsa", "ci_low", "ci_high"), ("input embedding", "lexical", None, None),
                ("shuffled labels, 95%", "shuffled_q95", None, None)]
    measures += [("random init", "random_init", None, None)] if with_random else []
    bars = pl.concat([shown.select("comparison", "statistic", kind=pl.lit(kind), r=pl.col(col),
                                   low=pl.col(lo) if lo else pl.col(col), high=pl.col(hi) if hi else pl.col(col))
                      for kind, col, lo, hi in measures])
    run.figure("headline", alt.hconcat(*[
        plots.bars(bars.filter(pl.col("statistic") == stat), x="comparison", y="r", color="kind", offset="kind",
                   error=("low", "high"), title=f"{stat} RSA ({main_variant}) against the baselines")
        for stat in ("best pair", "matched depth")]))
    if points:
        run.figure("valence_axes", alt.concat(*[
            plots.scatter(frame, x="pc1_a", y="pc1_b", color="valence", label="emotion",
                          title=f"PC1, sign by valence: {frame['pair'][0]}") for frame in points], columns=2))
    run.figure("per_model_baselines", alt.concat(*[
        plots.lines(frame.with_columns(series=pl.format("{}, {}", "baseline", "variant")), x="depth", y="r",
                    color="series", y_title="RSA with the baseline RDM",
                    title=f"{name}, {lang.upper()}: RSA of each layer with a baseline")
        for (name, lang), frame in per_model.group_by("model", "lang", maintain_order=True)], columns=2))

    # ---- report and summary
    elapsed = time.perf_counter() - started
    lines = report(names, info, emotions, frames, pairwise, agreement, valence_table, per_model, skipped,
                   variants, with_random, remote, config, elapsed)
    run.report("\n".join(lines) + "\n")
    summary = pairwise.filter(pl.col("variant") == main_variant).select(
        pl.format("{} × {}", "model_a", "model_b").alias("pair"), "lang", "statistic", pl.col("rsa").round(3),
        pl.format("[{}, {}]", pl.col("ci_low").round(2), pl.col("ci_high").round(2)).alias("95% CI"),
        pl.col("p").round(4),
        pl.col("lexical").round(3), *([pl.col("random_init").round(3)] if with_random else []),
        pl.col("shuffled_q95").round(3), "reached_by")
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200, fmt_str_lengths=40, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True):
        click.echo(f"\nCross-model RSA ({main_variant} RDMs) against the baselines:\n{summary}")
    click.echo(f"{elapsed:.0f} s; wrote {run.folder}/ (report.md, results/, figures/)")


def report(names, info, emotions, frames, pairwise, agreement, valence_table, per_model, skipped, variants,
           with_random, remote, config, elapsed) -> list[str]:
    """report.md: the setup, the pairwise table with every baseline, plain verdicts, the valence axis."""
    main_variant = variants[-1]
    lines = [f"# Cross-model emotion geometry: {', '.join(names)}", "",
             f"{len(emotions)} emotions; stories per language: "
             + ", ".join(f"{lang.upper()} {len(frame)}" for lang, frame in frames.items())
             + f"; mean from token {config['start_token']}; RDM = cosine matrix of the centered emotion vectors "
               f"({' and '.join(variants)}). Run time {elapsed:.0f} s.", "",
             "| model | layers | d | languages | neutral PCs removed per layer |"
             + (" random-init twin |" if with_random else ""), "|---|---|---|---|---|" + ("---|" if with_random else "")]
    lines += [f"| {name} | {info[name]['n_layers']} | {info[name]['d']} | {', '.join(info[name]['langs'])} | "
              + "; ".join(f"{lang.upper()} {pcs}" for lang, pcs in info[name]["pcs"].items()) + " |"
              + (f" {info[name]['random_init_dtype']} |" if with_random else "") for name in names]
    lines += [f"- {line}" for line in skipped]
    lines += ["", "## How to read this", "",
              "- **best pair**: the (layer_a, layer_b) with the highest RSA (Spearman over the "
              f"{len(emotions) * (len(emotions) - 1) // 2} emotion pairs). Its p comes from "
              f"{config['permutations']} label permutations of model B's RDMs, taking the maximum over the whole grid "
              "in each (so the choice of the pair is paid for); `p_cell` in the table is the naive p at that cell.",
              "- **matched depth**: the mean RSA over the layers of the shallower model, each with the other model's "
              "layer nearest in relative depth: chosen before looking, no selection.",
              f"- **CI**: basic bootstrap, {config['bootstrap']} resamples of the stories within each emotion (the "
              "same resample for every model). Resampled corpora repeat stories, which makes emotion means noisier "
              "and biases replicate RSAs low; the basic interval corrects that shift, the percentile one would not "
              "(its bounds are clipped to the range of r, [-1, 1], or of a margin, [-2, 2], where the reflection "
              "overshoots).",
              "- **Baselines** (each a similarity that, if reached, is no evidence of a shared emotion geometry): "
              "(a) *lexical*: the RSA of the two models' input-embedding RDMs (stories' mean token embeddings over "
              "the same tokens); (b) *random init*: the RSA of randomly initialised copies of the two architectures "
              "(same tokenizers, same texts) at the same cells; (c) *shuffled labels*: the same statistic with the "
              f"stories' emotion labels shuffled ({config['shuffles']} shuffles, one per draw for both models): "
              "what two models reach on arbitrary groups of the same stories. The margins over (a) and (b) have "
              "paired bootstrap CIs; a margin whose CI reaches 0, or a shuffled-label p > 0.05, means the "
              "baseline already reaches the similarity.", ""]
    if not with_random:
        lines += ["- The random-init baseline was not run (" + ("NDIF serves only the trained weights"
                  if remote else "--no-random-init") + ").", ""]
    for variant in variants:
        lines += [f"## Pairwise RSA, {variant} RDMs", "",
                  "| pair | lang | statistic | layers (depth) | RSA | 95% CI | p | lexical (a) | margin over (a) "
                  + ("| random init (b) | margin over (b) " if with_random else "")
                  + "| shuffled (c) mean / 95% | p (c) | reached by |",
                  "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if with_random else "") + "---|---|---|"]
        for r in pairwise.filter(pl.col("variant") == variant).iter_rows(named=True):
            where = (f"{r['layer_a']} ({r['depth_a']:.2f}) × {r['layer_b']} ({r['depth_b']:.2f})"
                     if r["statistic"] == "best pair" else "all, matched")
            cells = [f"{r['model_a']} × {r['model_b']}", r["lang"].upper(), r["statistic"], where, f"{r['rsa']:.3f}",
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]", f"{r['p']:.2g}", f"{r['lexical']:.3f}",
                     f"[{r['over_lexical_low']:+.3f}, {r['over_lexical_high']:+.3f}]"]
            if with_random:
                cells += [f"{r['random_init']:.3f}", f"[{r['over_random_low']:+.3f}, {r['over_random_high']:+.3f}]"]
            cells += [f"{r['shuffled_mean']:.3f} / {r['shuffled_q95']:.3f}", f"{r['p_shuffled']:.2g}",
                      r["reached_by"] or "none"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Verdicts", ""]
    for r in pairwise.filter(pl.col("variant") == main_variant).iter_rows(named=True):
        head = f"- {r['model_a']} × {r['model_b']}, {r['lang'].upper()}, {r['statistic']}: RSA {r['rsa']:.3f}"
        if r["p"] > 0.05:
            head += f", **not significant under label permutation (p = {r['p']:.2g})**"
        if r["reached_by"]:
            lines.append(f"{head}; **already reached by the baseline(s): {r['reached_by']}. Not evidence of a "
                         "shared emotion geometry beyond what they explain.**")
        else:
            chosen = (" The pair is the best of the grid, and its margins (CIs at that cell) do not pay for "
                      "choosing it; the matched-depth row chooses nothing." if r["statistic"] == "best pair" else "")
            lines.append(f"{head}; above every baseline (lexical {r['lexical']:.3f}"
                         + (f", random init {r['random_init']:.3f}" if with_random else "")
                         + f", shuffled labels 95% {r['shuffled_q95']:.3f})." + chosen)
    lines += ["", f"## Per-model baselines ({main_variant})", "",
              "Highest RSA of any layer's RDM with the model's own input-embedding RDM"
              + (" and with its random-init twin's RDM at the same layer" if with_random else "") + ":", ""]
    for (name, lang, base), frame in per_model.filter(pl.col("variant") == main_variant).group_by(
            "model", "lang", "baseline", maintain_order=True):
        top = frame.sort("r", descending=True).row(0, named=True)
        lines.append(f"- {name} {lang.upper()} vs {base}: max r = {top['r']:.3f} at layer {top['layer']} "
                     f"(depth {top['depth']:.2f}); mean over layers {frame['r'].mean():.3f}.")
    lines += ["", f"## Valence axis ({main_variant})", "",
              f"PC1 of each model's {len(emotions)} vectors at its best layer (where its RDM agrees best with the "
              "others), sign fixed so that it correlates positively with corpus valence (NRC-VAD).", "",
              "| model | lang | source | layer (depth) | r with valence | p |", "|---|---|---|---|---|---|"]
    for r in valence_table.iter_rows(named=True):
        where = "—" if r["layer"] is None else f"{r['layer']} ({r['depth']:.2f})"
        lines.append(f"| {r['model']} | {r['lang'].upper()} | {r['source']} | {where} | {r['r_valence']:.3f} | "
                     f"{r['p']:.2g} |")
    lines += ["", f"Second order: correlation of the two models' {len(emotions)} PC1 scores (the cosine of their "
              "valence axes mapped through the shared emotions). `r from valence alone` = r_a × r_b, the agreement "
              "two axes would show if each were valence plus independent noise.", "",
              "| pair | lang | source | r | p | r from valence alone |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model_a']} × {r['model_b']} | {r['lang'].upper()} | {r['source']} | {r['r']:.3f} | "
              f"{r['p']:.2g} | {r['r_from_valence_alone']:.3f} |" for r in agreement.iter_rows(named=True)]
    lines += ["", "## On NDIF", "", f"`{REMOTE_RECIPE}` runs the same code on NDIF-hosted models (needs "
              "NDIF_API_KEY). Each extraction batch is one request (token ids, a (batch, tokens) weight matrix and the "
              "traced code: torch and emonn.reducers only); what comes back is (batch, n_layers, d) float32 and "
              "(batch, d) for the input embeddings, never per token (sizes: the README's NDIF section). Finished "
              "batches are cached, so an interrupted run resumes. The random-init baseline is "
              "local only (NDIF serves the trained weights). The output is this same folder layout and report.", "",
              "Figures: `figures/` (rsa_grid_* depth x depth grids, matched_depth, headline, valence_axes, "
              "per_model_baselines; HTML and PNG). Tables: `results/`."]
    return lines


if __name__ == "__main__":
    main()
