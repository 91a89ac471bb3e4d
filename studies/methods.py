"""Generation-based vs comprehension-based emotion activations: which separates emotions better, and do they agree?

    python studies/methods.py                                      # SmolLM2-135M-Instruct, minutes on CPU
    python studies/methods.py --model smollm2-135m --model gemma3-270m  # or a HF id with --remote

Comprehension: the model reads each emotion's first English stories; generation: it writes about a character
feeling that emotion on the same topics, each layer averaged over the generated tokens. Per layer: separation
scores, tests across layers, RSA between the methods' emotion RDMs; then the generation method's sensitivity to
its sub-parameters, and precision (float32, bfloat16, the GGUF's arithmetic emulated), on a subset.
"""

from __future__ import annotations

import altair as alt
import click
import numpy as np
import polars as pl

from emonn import EmonnError, corpus, extract, models, plots, readings, stats, study
from emonn.precision import by_type, gguf_check, variants

METHODS = ("comprehension", "generation")
SCORES = {"distance_ratio": "between/within cosine-distance ratio", "accuracy": "nearest-centroid accuracy",
          "silhouette": "silhouette (cosine)"}
#: Prompt templates: (instruction for a chat template, opening line for a base model).
TEMPLATES = {
    "story": ("Write a short story about {topic} in which a character feels {emotion}.",
              "Here is a short story about {topic}, in which a character feels {emotion}.\n\n"),
    "diary": ("Write a diary entry by someone who felt {emotion} during {topic}.",
              "Dear diary, today I felt {emotion}. It happened during {topic}."),
    "scene": ("Describe what a person feeling {emotion} thinks and does during {topic}, in the first person.",
              "I was feeling {emotion}. This is what I thought and did during {topic}:"),
}


def prompts(model: models.Model, frame: pl.DataFrame, template: str) -> list[str]:
    """The prompts of the items of `frame`: the template's instruction as a chat turn, or its opening line."""
    instruction, opening = TEMPLATES[template]
    topic = dict(corpus.topics().select("topic", "en").iter_rows())
    return [model.chat(instruction.format(emotion=e, topic=topic[t])) if model.has_chat
            else opening.format(emotion=e, topic=topic[t]) for e, t in zip(frame["emotion"], frame["topic"])]


def floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EmonnError(f"{option} '{text}' must be a comma-separated list of numbers") from None


def measure(r: readings.Readings, emotions: list[str]) -> dict[str, np.ndarray]:
    """The three scores per layer `(n_layers,)` and the emotion RDMs `rdm` `(n_layers, E, E)` (1 - centroid cosine),
    on activations centered per layer (the common direction, which differs between methods, would dominate)."""
    centered = r.acts - r.acts.mean(0)
    result = stats.separation_scores(centered, r.emotion, r.topic)
    centroids = np.stack([centered[r.emotion == e].mean(0) for e in emotions])  # (E, L, d)
    rdms = np.stack([1 - stats.cosine_matrix(centroids[:, j]) for j in range(r.acts.shape[1])])
    return {**{score: getattr(result, score) for score in SCORES}, "rdm": rdms}


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mann-Whitney and Cohen's d (independent, with CI) of a vs b, plus the paired versions (same layers)."""
    mw, d = stats.mann_whitney(a, b), stats.cohens_d(a, b)
    row = {"mean_a": float(np.mean(a)), "mean_b": float(np.mean(b)), "n": len(a), "mw_u": mw.statistic,
           "mw_p": mw.p, "rank_biserial": mw.effect, "d": d.d, "d_low": d.low, "d_high": d.high}
    if len(a) == len(b) and np.any(np.asarray(a) != np.asarray(b)):
        dz = stats.cohens_d(a, b, paired=True)
        row.update(wilcoxon_p=stats.wilcoxon(a, b).p, dz=dz.d, dz_low=dz.low, dz_high=dz.high)
    return row


def layer_rows(labels: dict, r: readings.Readings, scores: dict, **per_layer: np.ndarray) -> list[dict]:
    """One row per (score, layer): `labels`, the score's value and the `per_layer` columns `(n_layers,)`."""
    return [{**labels, "score": score, "layer": layer, "depth": float(r.depth[j]), "value": float(scores[score][j]),
             **{key: float(column[j]) for key, column in per_layer.items()}}
            for score in SCORES for j, layer in enumerate(r.layers)]


@study.command("methods", models=(models.DEFAULT_MODEL,), many=True, langs="en", neutral=False)
@click.option("--per-emotion", default=6, show_default=True, help="Stories per emotion (each emotion's first, by id).")
@click.option("--template", type=click.Choice(list(TEMPLATES)), default="story", show_default=True,
              help="Generation prompt template.")
@click.option("--new-tokens", default=40, show_default=True, help="Tokens generated (and averaged) per prompt.")
@click.option("--temperature", default=0.7, show_default=True, help="Sampling temperature (0: greedy).")
@click.option("--grid-temperatures", default="0,1.2", show_default=True, help="Sensitivity: other temperatures.")
@click.option("--grid-lengths", default="16,80", show_default=True, help="Sensitivity: other lengths; empty: none.")
@click.option("--grid-templates", default="diary,scene", show_default=True, help="Sensitivity: other templates.")
@click.option("--grid-seeds", default="1", show_default=True, help="Sensitivity: other seeds (the sampling noise).")
@click.option("--grid-per-emotion", default=3, show_default=True, help="Sensitivity: prompts per emotion.")
@click.option("--precision/--no-precision", default=True, show_default=True, help="Compare arithmetic precisions.")
@click.option("--permutations", default=5000, show_default=True, help="Label permutations per RSA test.")
@click.option("--batch-size", default=extract.GENERATE_BATCH, show_default=True, help="Prompts per generate call.")
def main(run: study.Run, per_emotion: int, template: str, new_tokens: int, temperature: float,
         grid_temperatures: str, grid_lengths: str, grid_templates: str, grid_seeds: str, grid_per_emotion: int,
         precision: bool, permutations: int, batch_size: int) -> None:
    others = [t.strip() for t in grid_templates.split(",") if t.strip()]
    if unknown := [t for t in others if t not in TEMPLATES]:
        raise EmonnError(f"unknown template '{unknown[0]}': use one of {', '.join(TEMPLATES)}")
    if per_emotion < 2 or not 2 <= grid_per_emotion <= per_emotion:
        raise EmonnError(f"need 2 <= --grid-per-emotion ({grid_per_emotion}) <= --per-emotion ({per_emotion})")
    if run.langs != ["en"]:
        raise EmonnError("the methods study reads the English stories only: use --langs en")
    grid = ([("temperature", t) for t in floats(grid_temperatures, "--grid-temperatures") if t != temperature]
            + [("length", int(n)) for n in floats(grid_lengths, "--grid-lengths") if int(n) != new_tokens]
            + [("template", t) for t in others if t != template]
            + [("seed", int(n)) for n in floats(grid_seeds, "--grid-seeds") if int(n) != run.seed])
    base = {"temperature": temperature, "length": new_tokens, "template": template, "seed": run.seed}

    # ---- the matched items: each emotion's first stories and, for generation, the same (emotion, topic)
    stories = run.stories("en")
    emotions = [e for e in corpus.emotion_names() if e in set(stories["emotion"])]
    items = (stories.sort("id").group_by("emotion", maintain_order=True).head(per_emotion)
             .sort(pl.col("emotion").replace_strict(emotions, list(range(len(emotions)))), "id"))
    if len(emotions) < 3 or items["topic"].n_unique() < 2:
        raise EmonnError("need at least 3 emotions and 2 topics among the English stories")
    run.note(corpus_digest=corpus.digest(items))
    subset = np.sort(items.with_row_index().group_by("emotion", maintain_order=True).head(grid_per_emotion)
                     ["index"].to_numpy())

    score_rows, rsa_rows, sens_rows, prec_rows, gen_rows, notes = [], [], [], [], [], {}
    for name, model in zip(run.options["model"], run.models):
        layers, labels = run.layers(model), {"model": model.name}
        if len(layers) < 2:
            raise EmonnError("the tests across layers need at least 2 layers: widen --layers")

        def generate(rows: np.ndarray, temperature: float, length: int, template: str, seed: int) -> tuple:
            frame, texts = items[rows], prompts(model, items[rows], template)
            result = extract.generated_activations(model, texts, max_new_tokens=length, do_sample=temperature > 0,
                                                   temperature=temperature, seed=seed, layers=layers,
                                                   batch_size=batch_size, cache=run.generation_cache(model))
            gen_rows.extend({**labels, "template": template, "temperature": temperature, "new_tokens": length,
                             "seed": seed, "emotion": e, "topic": t, "prompt": p, "text": text, "n_tokens": len(ids),
                             "names_emotion": e in text.lower()} for e, t, p, text, ids in zip(
                frame["emotion"], frame["topic"], texts, result.texts, result.ids))
            return readings.of(result.acts, frame, layers=layers, n_layers=model.n_layers), result.ids

        # ---- reading (comprehension: the shared cache; generation: per unit), scores, tests, RSA
        reads = {"comprehension": run.read(model, items, layers=layers)}
        reads["generation"], generated_ids = generate(np.arange(len(items)), **base)
        scores = {method: measure(reads[method], emotions) for method in METHODS}
        score_rows += [row for m in METHODS for row in layer_rows({**labels, "method": m}, reads[m], scores[m])]
        for j, layer in enumerate(layers):
            test = stats.rsa_test(scores["comprehension"]["rdm"][j], scores["generation"]["rdm"][j],
                                  n_permutations=permutations, seed=run.seed)
            low, high = np.quantile(test.null, [0.025, 0.975])
            rsa_rows.append({**labels, "layer": layer, "depth": float(model.depth(layer)), "r": test.statistic,
                             "p": test.p, "null_low": float(low), "null_high": float(high)})

        # ---- sensitivity of the generation method: one sub-parameter changed at a time, on a subset
        sub = {method: measure(reads[method].take(subset), emotions)["rdm"] for method in METHODS}
        for parameter, setting in [("base", "base"), *grid]:
            variant = reads["generation"].take(subset) if parameter == "base" else generate(
                subset, **{**base, parameter: setting})[0]
            measured = measure(variant, emotions)
            sens_rows += layer_rows({**labels, "parameter": parameter, "setting": str(setting)}, variant, measured,
                                    rsa_with_base=stats.rsa_stack(measured["rdm"], sub["generation"]),
                                    rsa_with_comprehension=stats.rsa_stack(measured["rdm"], sub["comprehension"]))

        # ---- precision: the subset's stories and generated tokens (re-read), in other arithmetic
        if precision and model.remote:
            notes[model.name] = "precision comparison skipped: --remote models run in the server's precision"
        elif precision:
            check = run.unit({"gguf": model.name}, lambda: gguf_check(model), name="gguf-check")  # empty: no GGUF
            notes[model.name] = by_type(check).to_dicts()
            sub_items, sub_ids, reference = items[subset], [generated_ids[i] for i in subset], {}
            for variant, reader, suffix in variants(model, name, check):
                story = extract.activations(reader, sub_items["text"].to_list(), start=run.start, layers=layers,
                                            cache=run.cache(reader, suffix=suffix), batch_tokens=run.batch_tokens)
                reread = extract.reread(reader, prompts(model, sub_items, template), sub_ids, layers=layers,
                                        cache=run.cache(reader, "reread", suffix=suffix), batch_tokens=run.batch_tokens)
                for method, acts in zip(METHODS, (story, reread)):
                    ref, r = reference.setdefault(method, acts), readings.of(acts, sub_items, layers=layers,
                                                                             n_layers=model.n_layers)
                    cosine = (acts * ref).sum(-1) / np.linalg.norm(acts, axis=-1) / np.linalg.norm(ref, axis=-1)
                    prec_rows += layer_rows({**labels, "precision": variant, "method": method}, r, measure(r, emotions),
                                            cosine_to_float32=np.array([c.mean() for c in cosine.T]),
                                            min_cosine_to_float32=cosine.min(0))

    # ---- tables
    separation, names = pl.DataFrame(score_rows), [[model.name] for model in run.models]
    tests = pl.DataFrame([  # per model, and across models: every (model, layer) value of each method
        {"model": group[0] if len(group) == 1 else "all models", "score": score, **compare(*(separation.filter(
            pl.col("model").is_in(group), score=score, method=m)["value"].to_numpy() for m in METHODS[::-1]))}
        for group in names + ([sum(names, [])] if len(names) > 1 else []) for score in SCORES
    ]).rename({"mean_a": "mean_generation", "mean_b": "mean_comprehension"})
    rsa = pl.concat([part.with_columns(p_fdr=pl.Series(stats.correct(part["p"].to_numpy()).p_adjusted))
                     for part in pl.DataFrame(rsa_rows).partition_by("model", maintain_order=True)])
    sensitivity = pl.DataFrame(sens_rows)
    joined = sensitivity.join(sensitivity.filter(parameter="base").select(
        "model", "score", "layer", base_value=pl.col("value")), on=["model", "score", "layer"])
    sens_tests = pl.DataFrame([
        {"model": m, "parameter": p, "setting": s, "score": score, "rsa_with_base": part["rsa_with_base"].mean(),
         "rsa_with_comprehension": part["rsa_with_comprehension"].mean(),
         **({"mean_a": part["value"].to_numpy().mean(), "mean_b": part["base_value"].to_numpy().mean()}
            if p == "base" else compare(part["value"].to_numpy(), part["base_value"].to_numpy()))}
        for (m, p, s, score), part in joined.group_by("model", "parameter", "setting", "score", maintain_order=True)],
        infer_schema_length=None).rename({"mean_a": "mean", "mean_b": "mean_base"})
    generations = pl.DataFrame(gen_rows).unique(maintain_order=True)
    prec = pl.DataFrame(prec_rows) if prec_rows else None
    prec_tests = None if prec is None else pl.DataFrame([
        {"model": m, "precision": v, "score": score,
         **{f"cosine_{x}": part.filter(method=x)["cosine_to_float32"].mean() for x in METHODS},
         **compare(*(part.filter(method=x)["value"].to_numpy() for x in METHODS[::-1]))}
        for (m, v, score), part in prec.group_by("model", "precision", "score", maintain_order=True)
    ]).rename({"mean_a": "mean_generation", "mean_b": "mean_comprehension"})
    for table, frame in dict(separation=separation, method_tests=tests, rsa=rsa, sensitivity=sensitivity,
                             sensitivity_tests=sens_tests, generations=generations, precision=prec,
                             precision_tests=prec_tests).items():
        if frame is not None:
            run.table(table, frame)

    # ---- figures
    chance = 1 / len(emotions)
    series = separation.with_columns(series=pl.format("{} · {}", "model", "method"))
    run.figure("separation_by_depth", alt.vconcat(*[
        plots.lines(series.filter(score=score), x="depth", y="value", color="series", y_title=title,
                    title=f"{title} by relative depth" + (f" (chance {chance:.3f})" if score == "accuracy" else ""))
        for score, title in SCORES.items()]))
    band = plots.band(rsa, x="depth", low="null_low", high="null_high", label="permutation null, 95%")
    rsa_chart = plots.lines(rsa, x="depth", y="r", color="model", y_title="RSA (Spearman r)",
                            title="RSA of the two methods' emotion RDMs by relative depth")
    run.figure("rsa_by_depth", band + rsa_chart if len(run.models) == 1 else rsa_chart)  # one null band fits
    sens_series = sensitivity.filter(score="accuracy").with_columns(
        variant=pl.format("{} · {} {}", "model", "parameter", "setting"))
    run.figure("sensitivity", alt.hconcat(*[
        plots.lines(sens_series, x="depth", y=y, color="variant", y_title=axis, title=f"Generation sub-parameters: {t}")
        for y, axis, t in (("value", "accuracy", f"accuracy on the subset (chance {chance:.3f})"),
                           ("rsa_with_comprehension", "RSA r", "RSA with comprehension"))]))
    if prec is not None:
        run.figure("precision", plots.lines(prec.filter(score="accuracy").with_columns(
            series=pl.format("{} · {} · {}", "model", "precision", "method")), x="depth", y="value", color="series",
            y_title="accuracy", title="Accuracy by arithmetic precision"))

    # ---- report and summary
    best = [{**part.sort("r", descending=True).row(0, named=True), "median": part["r"].median(),
             "significant": int((part["p_fdr"] < 0.05).sum()), "n_layers": part.height}
            for part in rsa.partition_by("model", maintain_order=True)]
    main_rows = generations.filter(template=template, temperature=temperature, new_tokens=new_tokens, seed=run.seed)
    lengths = main_rows.group_by("model", maintain_order=True).agg(mean=pl.col("n_tokens").mean(), n=pl.len(),
        short=(pl.col("n_tokens") < new_tokens).sum(), named=pl.col("names_emotion").mean())
    samples = main_rows.unique(["model", "emotion"], maintain_order=True).group_by("model", maintain_order=True).head(2)
    run.report(emotions=emotions, n_items=len(items), n_subset=len(subset), chance=chance, tests=tests, best=best,
               sensitivity=sens_tests, precision=prec_tests, notes=notes, lengths=lengths,
               samples=samples.with_columns(pl.col("text").str.slice(0, 300).map_elements(repr, pl.String)))
    run.done(*(f"{b['model']}: RSA between methods peaks at layer {b['layer']} (depth {b['depth']:.2f}) r={b['r']:.3f} "
               f"p={b['p']:.2g}; median r {b['median']:.3f}" for b in best))


if __name__ == "__main__":
    main()
