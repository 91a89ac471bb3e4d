"""Do the emotion vectors *cause* anything? Steer generation with them and judge the text from outside.

    python studies/steering.py                      # embedded SmolLM2, about 10 min on 2 CPU cores
    python studies/steering.py --model meta-llama/Llama-3.1-8B-Instruct --remote   # the same code on NDIF

One generate call per neutral prompt and decoding holds every row: the unsteered baseline, each emotion's vector at
each layer and alpha, and random directions (the control), each adding alpha * mean‖h_layer‖ * v̂ to the generated
positions (emonn.steer). An external classifier and text metrics judge every text (emonn.classify.judge); the
controls of emotion e's classifier shift are a random direction and the next emotion's vector. --layers default:
depths 0.3, 0.5, 0.7. Writes outputs/steering/<model>/ (units/ per prompt and decoding: a killed run resumes).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import altair as alt
import click
import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from emonn import EmonnError, classify, corpus, models, plots, stats, steer, study
from emonn import textmetrics as tm

#: Neutral English prompts: open-ended enough that an emotion can show, with none in them.
PROMPTS = ("Write a few sentences about your morning.", "Describe a walk to the corner shop.",
           "Tell me about a typical day at work.", "Describe the room you are in.",
           "Write a short paragraph about the weather today.", "Tell me what you did last weekend.",
           "Describe a train journey.", "Write a few sentences about cooking dinner.",
           "Describe a visit to the library.", "Tell me about your neighbour.")
DEPTHS = (0.3, 0.5, 0.7)  # default steering layers, as relative depths
REGIME_COLORS = ["#59a14f", "#bab0ac", "#f28e2b", "#e15759"]  # in the order of textmetrics.REGIMES
CONDITIONS = ("emotion vector", "random direction", "other emotion")
CELLS = ["decoding", "layer", "alpha"]


def plan(emotions: list[str], layers: list[int], alphas: list[float], n_random: int) -> list[dict]:
    """The rows of one generate call: baseline, emotion x layer x alpha, random direction x layer x alpha."""
    return ([{"condition": "baseline", "vector": "none", "layer": None, "alpha": 0.0}]
            + [{"condition": "emotion", "vector": e, "layer": layer, "alpha": a}
               for layer in layers for a in alphas for e in emotions]
            + [{"condition": "random", "vector": f"random-{r}", "layer": layer, "alpha": a}
               for layer in layers for a in alphas for r in range(n_random)])


def steering_deltas(rows: list[dict], directions: dict[tuple[str, int], np.ndarray], norms: dict[int, float],
                    d: int) -> dict[int, torch.Tensor]:
    """{layer: (n_rows, d) addition}: each row gets its vector at its own layer, zeros elsewhere."""
    out = {}
    for layer in norms:
        hits = [row["layer"] == layer for row in rows]
        dirs = np.stack([directions[row["vector"], layer] if hit else np.zeros(d) for row, hit in zip(rows, hits)])
        alphas = np.array([row["alpha"] if hit else 0.0 for row, hit in zip(rows, hits)])
        out[layer] = steer.deltas(dirs, alphas, norms[layer])
    return out


def generate_unit(model: models.Model, prompt: str, lang: str, rows: list[dict], deltas: dict[int, torch.Tensor],
                  *, decoding: str, new_tokens: int, temperature: float, seed: int, steer_prompt: bool,
                  batch_tokens: int) -> pl.DataFrame:
    """One prompt x decoding: every row generated in one call, then its model-side metrics."""
    tok, stop = model.tokenizer, {model.tokenizer.eos_token_id, model.tokenizer.pad_token_id}
    gen = steer.generate(model, [prompt] * len(rows), delta=deltas, steer_prompt=steer_prompt, seed=seed,
                         max_new_tokens=new_tokens, do_sample=decoding == "sample", temperature=temperature)
    continuations = [ids[:next((i for i, t in enumerate(ids) if t in stop), len(ids))] for ids in gen.ids.tolist()]
    logprobs = steer.continuation_logprobs(model, [tok(prompt)["input_ids"]] * len(rows), continuations,
                                           batch_tokens=batch_tokens)
    decode = functools.partial(tok.decode, skip_special_tokens=True)
    records = [{**row, "text": decode(ids), "n_tokens": len(ids), "ended": len(ids) < new_tokens,
                "ppl": tm.perplexity(lp), **classify.measure(decode(ids), ids, decode, lang)}
               for row, ids, lp in zip(rows, continuations, logprobs)]
    return pl.DataFrame(records, infer_schema_length=None).with_columns(pl.col("layer").cast(pl.Int64))


def control_shifts(frame: pl.DataFrame, emotions: list[str], n_random: int, margin: float) -> pl.DataFrame:
    """Per emotion e, cell (decoding, layer, alpha) and prompt: the rise of e's score over the baseline text
    under e's vector, under random direction (i mod n_random) and under the next emotion's vector."""
    rows = {(r["decoding"], r["prompt_id"], r["vector"], r["layer"], r["alpha"]): r
            for r in frame.iter_rows(named=True)}
    out = []
    for (dec, prompt_id, vector, layer, alpha), row in rows.items():
        if row["condition"] != "emotion":
            continue
        i = emotions.index(vector)
        base = rows[dec, prompt_id, "none", None, 0.0][f"p_{vector}"]
        sources = {"emotion vector": row,
                   "random direction": rows[dec, prompt_id, f"random-{i % n_random}", layer, alpha],
                   "other emotion": rows[dec, prompt_id, emotions[(i + 1) % len(emotions)], layer, alpha]}
        out += [{"decoding": dec, "layer": layer, "alpha": alpha, "emotion": vector, "prompt_id": prompt_id,
                 "condition": condition, "shift": source[f"p_{vector}"] - base,
                 "success": source[f"p_{vector}"] - base > margin} for condition, source in sources.items()]
    return pl.DataFrame(out)


def summarise(shifts: pl.DataFrame, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per cell and condition: successes k/n, mean shift with a 95% bootstrap CI (stratified by emotion);
    per cell: one-sided Wilcoxon signed-rank p of vector > each control, FDR-corrected over cells."""
    cells, tests = [], []
    for (dec, layer, alpha), part in shifts.group_by(*CELLS, maintain_order=True):
        by = {c: part.filter(pl.col("condition") == c).sort("emotion", "prompt_id") for c in CONDITIONS}
        strata = by["emotion vector"]["emotion"].to_numpy()
        for condition, sub in by.items():
            ci = stats.bootstrap_ci(lambda idx, v=sub["shift"].to_numpy(): v[idx].mean(), strata, seed=seed)
            cells.append({"decoding": dec, "layer": layer, "alpha": alpha, "condition": condition,
                          "k": int(sub["success"].sum()), "n": sub.height, "mean_shift": ci.estimate,
                          "ci_low": ci.low, "ci_high": ci.high})
        target = by["emotion vector"]["shift"].to_numpy()
        controls = {name: by[c]["shift"].to_numpy() for name, c in (("random", "random direction"),
                                                                     ("other", "other emotion"))}
        tests.append({"decoding": dec, "layer": layer, "alpha": alpha, **{
            f"p_vs_{name}": stats.wilcoxon(target, c, alternative="greater").p if np.any(target != c) else 1.0
            for name, c in controls.items()}})
    tests = pl.DataFrame(tests)
    tests = tests.with_columns(**{f"{c}_fdr": pl.Series(stats.correct(tests[c].to_numpy()).p_adjusted)
                                  for c in ("p_vs_random", "p_vs_other")})
    return pl.DataFrame(cells), tests


def examples(frame: pl.DataFrame, prompts: list[str], emotions: list[str], n_random: int, layer: int,
             decoding: str) -> list[dict]:
    """Per emotion one prompt (rotating, not picked): its baseline row and, at each alpha at `layer`, the
    steered row beside the random-direction control of the same strength (with the control's shift)."""
    part = frame.filter(pl.col("decoding") == decoding)
    rows = {(r["prompt_id"], r["vector"], r["layer"], r["alpha"]): r for r in part.iter_rows(named=True)}
    alphas = sorted(part.filter(pl.col("condition") == "emotion")["alpha"].unique())
    out = []
    for i, e in enumerate(emotions):
        p, base = i % len(prompts), rows[i % len(prompts), "none", None, 0.0]
        steered = [(a, rows[p, e, layer, a], rows[p, f"random-{i % n_random}", layer, a]) for a in alphas]
        out.append({"emotion": e, "prompt": prompts[p], "baseline": base, "steered": [
            {"alpha": a, "row": row, "control": c, "control_shift": c[f"p_{e}"] - base[f"p_{e}"]}
            for a, row, c in steered]})
    return out


@study.command("steering", models=(models.DEFAULT_MODEL,), langs="en")
@click.option("--emotions", default="joyful,sad,angry,afraid,calm,disgusted", show_default=True)
@click.option("--alphas", default="0.125,0.25,0.5,1", show_default=True,
              help="Steering strengths, as fractions of the layer's mean residual norm.")
@click.option("--n-prompts", default=len(PROMPTS), show_default=True, help="How many of the built-in prompts.")
@click.option("--new-tokens", default=32, show_default=True, help="Tokens generated per row.")
@click.option("--decoding", default="greedy,sample", show_default=True, help="greedy and/or seeded sampling.")
@click.option("--temperature", default=0.7, show_default=True, help="Sampling temperature.")
@click.option("--random-directions", "n_random", default=2, show_default=True,
              help="Random directions per layer and alpha (control); emotion i is compared to direction i mod n.")
@click.option("--classifier", "classifier_spec", default=classify.DEFAULT, show_default=True,
              help="External judge: minilm-centroids, or a Hugging Face text-classification model id/folder.")
@click.option("--margin", default=tm.Thresholds.margin, show_default=True,
              help="A classifier score rise above this counts as success (scores are probabilities).")
@click.option("--steer-prompt", is_flag=True, help="Steer the prompt tokens too (default: generated tokens only).")
@click.option("--chat/--no-chat", default=None, help="Use the chat template (default: if the model has one).")
def main(run: study.Run, emotions: str, alphas: str, n_prompts: int, new_tokens: int, decoding: str,
         temperature: float, n_random: int, classifier_spec: str, margin: float, steer_prompt: bool,
         chat: bool | None) -> None:
    emotion_list = [e.strip() for e in emotions.split(",") if e.strip()]
    decodings = [d.strip() for d in decoding.split(",") if d.strip()]
    try:
        alpha_list = sorted({float(a) for a in alphas.split(",")})
    except ValueError:
        raise EmonnError(f"--alphas '{alphas}' is not a list of numbers like 0.25,0.5,1") from None
    if len(emotion_list) < 2 or len(set(emotion_list)) < len(emotion_list):
        raise EmonnError("--emotions needs at least two different emotions (each is another's control)")
    if not decodings or not set(decodings) <= {"greedy", "sample"}:
        raise EmonnError(f"--decoding '{decoding}': use greedy, sample or greedy,sample")
    if not 1 <= n_prompts <= len(PROMPTS) or n_random < 1 or min(alpha_list) <= 0:
        raise EmonnError(f"need 1 <= --n-prompts <= {len(PROMPTS)}, --random-directions >= 1 and alphas > 0")
    model, stories, neutral = run.model, run.stories("en"), run.neutral("en")
    if missing := sorted(set(emotion_list) - set(stories["emotion"])):
        raise EmonnError(f"emotion '{missing[0]}' has no English stories in the corpus")
    classifier = classify.load(classifier_spec, stories.filter(pl.col("emotion").is_in(emotion_list)))
    classifier.require(emotion_list)
    layers = run.layers(model, default=[round(x * (model.n_layers - 1)) for x in DEPTHS])
    chat = model.has_chat if chat is None else chat
    prompts = list(PROMPTS[:n_prompts])
    inputs = [model.chat(prompt) for prompt in prompts] if chat else prompts  # --chat without a template fails here
    run.note(layers=layers, chat=chat, corpus_digest=corpus.digest(stories))

    # ---- vectors (cached activations), norms, the random control directions, every row's addition
    vectors, _ = run.vectors(model, "en", layers=layers)
    norms = steer.mean_norms(model, neutral["text"].to_list(), layers, batch_tokens=run.batch_tokens)
    randoms = steer.random_directions(n_random * len(layers), model.d_model, seed=run.seed).reshape(
        len(layers), n_random, model.d_model)
    directions = {(e, layer): vectors.at(layer)[vectors.emotions.index(e)] for e in emotion_list for layer in layers}
    directions |= {(f"random-{r}", layer): randoms[j, r] for j, layer in enumerate(layers) for r in range(n_random)}
    rows = plan(emotion_list, layers, alpha_list, n_random)
    deltas = steering_deltas(rows, directions, norms, model.d_model)
    digest = hashlib.sha1(b"".join(deltas[layer].numpy().tobytes() for layer in layers)).hexdigest()

    # ---- generation: one call per prompt and decoding, each a cached unit
    units = []
    for dec, i in tqdm([(dec, i) for dec in decodings for i in range(len(prompts))],
                       desc=f"steer {model.slug} ({len(rows)} rows per call)", unit="call"):
        key = [model.name, inputs[i], dec, temperature if dec == "sample" else None, run.seed, new_tokens,
               steer_prompt, rows, digest]
        unit = run.unit(key, lambda: generate_unit(
            model, inputs[i], "en", rows, deltas, decoding=dec, new_tokens=new_tokens, temperature=temperature,
            seed=run.seed + i, steer_prompt=steer_prompt, batch_tokens=run.batch_tokens), name=f"{dec}-p{i:02d}")
        units.append(unit.with_columns(prompt_id=pl.lit(i), decoding=pl.lit(dec)))

    # ---- judge, controls, regimes, leakage
    thresholds = tm.Thresholds(margin=margin)
    frame = classify.judge(pl.concat(units), classifier, emotion_list, thresholds)
    shifts = control_shifts(frame, emotion_list, n_random, margin)
    summary, tests = summarise(shifts, run.seed)
    regimes = classify.regime_shares(frame.filter(pl.col("condition") == "emotion"), CELLS)
    leaks = classify.leakage(frame.with_columns(group=pl.when(pl.col("condition") == "emotion").then(
        pl.col("vector")).otherwise(pl.col("condition"))), ["decoding", "group"])  # emotion rows by emotion
    for name, table in dict(generations=frame, shifts=shifts, shift_summary=summary, shift_tests=tests,
                            regime_map=regimes, leakage=leaks).items():
        run.table(name, table)
    run.figure("regime_map", alt.hconcat(*[plots.tiles(
        regimes.filter(pl.col("decoding") == dec).with_columns(pl.col("alpha").cast(pl.String)), x="alpha", y="layer",
        category="dominant", text="label", categories=list(tm.REGIMES), colors=REGIME_COLORS,
        title=f"{model.name}, {dec}: regimes of emotion-steered text") for dec in decodings]))
    run.figure("classifier_shift", alt.vconcat(*[alt.hconcat(*[
        plots.lines(summary.filter((pl.col("decoding") == dec) & (pl.col("layer") == layer)), x="alpha",
                    y="mean_shift", color="condition", band=("ci_low", "ci_high"), y_title="score rise vs baseline",
                    title=f"{dec}, layer {layer}: steered emotion's classifier score")
        for layer in layers]) for dec in decodings]))
    example_layer = layers[len(layers) // 2]
    run.report("steering_examples.md", to="examples.md", decoding=decodings[0], layer=example_layer,
               examples=examples(frame, prompts, emotion_list, n_random, example_layer, decodings[0]))

    # ---- report and summary
    success = (summary.pivot(on="condition", index=CELLS, values="k")
               .join(summary.filter(pl.col("condition") == "emotion vector").select(*CELLS, "n"), on=CELLS)
               .join(tests, on=CELLS))
    best = success.sort("emotion vector", descending=True).row(0, named=True)
    pooled = "; ".join(f"{dec}: " + ", ".join(
        f"{c} {int(part['success'].sum())}/{part.height}" for c in CONDITIONS
        for part in [shifts.filter((pl.col("decoding") == dec) & (pl.col("condition") == c))]) for dec in decodings)
    regime_table = regimes.select(*CELLS, "dominant", *tm.REGIMES, "n")
    run.report(prompts=prompts, emotions=emotion_list, alphas=alpha_list, decodings=decodings, n=frame.height,
               norms=norms, n_stories=stories.height, classifier=classifier, best=best, pooled=pooled,
               thresholds=dataclasses.asdict(thresholds), regimes=regime_table,
               base_regimes=classify.regime_shares(frame.filter(pl.col("condition") == "baseline"), ["decoding"])
               .select("decoding", *tm.REGIMES),
               success=success.select(*CELLS, *CONDITIONS, "n", "p_vs_random_fdr", "p_vs_other_fdr"), leaks=leaks)
    run.done(study.markdown_table(regime_table.filter(pl.col("decoding") == decodings[0]).drop("decoding", "n"), 2),
             f"classifier {classifier.name}: corpus accuracy {classifier.accuracy:.3f}",
             f"best cell {best['decoding']} layer {best['layer']} alpha {best['alpha']:g}: vector "
             f"{best['emotion vector']}/{best['n']} vs random {best['random direction']}/{best['n']}; pooled {pooled}")


if __name__ == "__main__":
    main()
