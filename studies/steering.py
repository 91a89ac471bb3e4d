"""Do the emotion vectors *cause* anything? Steer generation with them and judge the text from outside.

    python studies/steering.py                      # embedded SmolLM2, about 10 min on 2 CPU cores
    python studies/steering.py --model meta-llama/Llama-3.1-8B-Instruct --remote   # the same code on NDIF

Each neutral prompt gets one generate call per decoding (greedy, seeded sampling) holding every row: the
unsteered baseline, each emotion's vector at each layer and alpha, and random directions of the same
norm (the control). Steering adds alpha * mean‖h_layer‖ * v̂ to the generated positions (emonn.steer).
Every generation gets: its perplexity under the unsteered model and the ratio to the baseline text's;
repetition (distinct-1/2, longest repeated n-gram, zlib compression ratio); the share of tokens and
letters in a script foreign to the prompt's language (leakage); an external classifier's emotion scores
(emonn.classify, not the steered model); and a regime (surgical, inert, repetitive, explosive; the
thresholds are documented in emonn.textmetrics.Thresholds). Controls for the classifier shift of emotion
e: a random direction, and another emotion's vector (the next one in --emotions).
Writes outputs/steering/<model>/: config.json, units/ (one cached file per prompt and decoding: a killed
run resumes), results/*.parquet, figures/regime_map + classifier_shift, examples.md, report.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import time

import altair as alt
import click
import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from emonn import EmonnError, classify, corpus, extract, models, plots, runs, stats, steer
from emonn import textmetrics as tm

#: Neutral English prompts: open-ended enough that an emotion can show, with none in them.
PROMPTS = (
    "Write a few sentences about your morning.",
    "Describe a walk to the corner shop.",
    "Tell me about a typical day at work.",
    "Describe the room you are in.",
    "Write a short paragraph about the weather today.",
    "Tell me what you did last weekend.",
    "Describe a train journey.",
    "Write a few sentences about cooking dinner.",
    "Describe a visit to the library.",
    "Tell me about your neighbour.",
)
DEPTHS = (0.3, 0.5, 0.7)  # default steering layers, as relative depths
REGIME_SHORT = {"surgical": "S", "inert": "I", "repetitive": "R", "explosive": "E"}
REGIME_COLORS = ["#59a14f", "#bab0ac", "#f28e2b", "#e15759"]  # in the order of textmetrics.REGIMES
CONDITIONS = ("emotion vector", "random direction", "other emotion")


def render(tokenizer, prompt: str, chat: bool) -> str:
    """The prompt as the model reads it: inside its chat template (instruct models) or as is."""
    if not chat:
        return prompt
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id:
        text = text[len(bos):]  # the tokenizer adds its own BOS: the template's would double it
    return text


def plan(emotions: list[str], layers: list[int], alphas: list[float], n_random: int) -> list[dict]:
    """The rows of one generate call: baseline, emotion x layer x alpha, random direction x layer x alpha."""
    rows = [{"condition": "baseline", "vector": "none", "layer": None, "alpha": 0.0}]
    rows += [{"condition": "emotion", "vector": e, "layer": layer, "alpha": a}
             for layer in layers for a in alphas for e in emotions]
    rows += [{"condition": "random", "vector": f"random-{r}", "layer": layer, "alpha": a}
             for layer in layers for a in alphas for r in range(n_random)]
    return rows


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
                  *, decoding: str, new_tokens: int, temperature: float, seed: int, steer_prompt: bool
                  ) -> pl.DataFrame:
    """One prompt x decoding: every row generated in one call, then its model-side metrics."""
    tok = model.tokenizer
    gen = steer.generate(model, [prompt] * len(rows), delta=deltas, steer_prompt=steer_prompt,
                         max_new_tokens=new_tokens, do_sample=decoding == "sample", temperature=temperature,
                         seed=seed)
    stop = {tok.eos_token_id, tok.pad_token_id}
    continuations = []
    for ids in gen.ids.tolist():
        end = next((i for i, token in enumerate(ids) if token in stop), len(ids))
        continuations.append(ids[:end])
    prompt_ids = tok(prompt)["input_ids"]
    logprobs = steer.continuation_logprobs(model, [prompt_ids] * len(rows), continuations)

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=True)

    records = []
    for row, ids, lp in zip(rows, continuations, logprobs):
        text = decode(ids)
        foreign_letters, letters = tm.foreign_letters(text, lang)
        foreign_tokens, lettered = tm.foreign_tokens(tm.token_pieces(ids, decode), lang)
        records.append({**row, "text": text, "n_tokens": len(ids), "ended": len(ids) < new_tokens,
                        "ppl": tm.perplexity(lp), "n_units": len(tm.units(text)), "distinct1": tm.distinct(text, 1),
                        "distinct2": tm.distinct(text, 2), "repeat": tm.longest_repeat(text),
                        "compression": tm.compression_ratio(text), "foreign_letters": foreign_letters,
                        "letters": letters, "foreign_tokens": foreign_tokens, "lettered_tokens": lettered})
    return pl.DataFrame(records, infer_schema_length=None).with_columns(pl.col("layer").cast(pl.Int64))


def score_and_label(frame: pl.DataFrame, classifier: classify.Classifier, emotions: list[str],
                    thresholds: tm.Thresholds) -> pl.DataFrame:
    """Adds p_<emotion> (classifier scores), ppl_ratio (to the same prompt's baseline text), shift (the
    steered emotion's score minus the baseline text's; emotion rows only) and regime."""
    scores = classifier.scores(frame["text"].to_list())
    frame = frame.with_columns(pl.Series(f"p_{e}", scores[:, classifier.labels.index(e)]) for e in emotions)
    base = frame.filter(pl.col("condition") == "baseline").select(
        "decoding", "prompt_id", base_ppl=pl.col("ppl"), **{f"base_{e}": pl.col(f"p_{e}") for e in emotions})
    frame = frame.join(base, on=["decoding", "prompt_id"]).with_columns(ppl_ratio=pl.col("ppl") / pl.col("base_ppl"))
    shift = pl.lit(None, pl.Float64)
    for e in emotions:
        shift = pl.when(pl.col("vector") == e).then(pl.col(f"p_{e}") - pl.col(f"base_{e}")).otherwise(shift)
    frame = frame.with_columns(shift=shift).drop([f"base_{e}" for e in emotions])
    regimes = [tm.regime(n_units=r["n_units"], distinct2=r["distinct2"], repeat=r["repeat"],
                         compression=r["compression"], ppl_ratio=r["ppl_ratio"],
                         foreign=tm.share(r["foreign_letters"], r["letters"]),
                         shift=math.nan if r["shift"] is None else r["shift"], thresholds=thresholds)
               for r in frame.iter_rows(named=True)]
    return frame.with_columns(regime=pl.Series(regimes))


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
    for (dec, layer, alpha), part in shifts.group_by("decoding", "layer", "alpha", maintain_order=True):
        by = {c: part.filter(pl.col("condition") == c).sort("emotion", "prompt_id") for c in CONDITIONS}
        strata = by["emotion vector"]["emotion"].to_numpy()
        for condition, sub in by.items():
            values = sub["shift"].to_numpy()
            ci = stats.bootstrap_ci(lambda idx, v=values: v[idx].mean(), strata, seed=seed)
            cells.append({"decoding": dec, "layer": layer, "alpha": alpha, "condition": condition,
                          "k": int(sub["success"].sum()), "n": sub.height, "mean_shift": ci.estimate,
                          "ci_low": ci.low, "ci_high": ci.high})
        target = by["emotion vector"]["shift"].to_numpy()
        p = {}
        for name, condition in (("random", "random direction"), ("other", "other emotion")):
            control = by[condition]["shift"].to_numpy()
            p[f"p_vs_{name}"] = (stats.wilcoxon(target, control, alternative="greater").p
                                 if np.any(target != control) else 1.0)
        tests.append({"decoding": dec, "layer": layer, "alpha": alpha, **p})
    tests = pl.DataFrame(tests)
    tests = tests.with_columns(**{f"{c}_fdr": pl.Series(stats.correct(tests[c].to_numpy()).p_adjusted)
                                  for c in ("p_vs_random", "p_vs_other")})
    return pl.DataFrame(cells), tests


def regime_shares(frame: pl.DataFrame) -> pl.DataFrame:
    """Share of each regime among the emotion-steered rows per decoding x layer x alpha, the dominant one,
    and a tile label."""
    shares = (frame.filter(pl.col("condition") == "emotion").group_by("decoding", "layer", "alpha")
              .agg(*[(pl.col("regime") == name).mean().alias(name) for name in tm.REGIMES], n=pl.len())
              .sort("decoding", "layer", "alpha"))
    return shares.with_columns(
        dominant=pl.concat_list(tm.REGIMES).list.arg_max().replace_strict(list(range(len(tm.REGIMES))), tm.REGIMES),
        label=pl.concat_str([pl.format(f"{REGIME_SHORT[name]} {{}}%", (pl.col(name) * 100).round().cast(pl.Int64))
                             for name in tm.REGIMES], separator="\n"))


def leakage(frame: pl.DataFrame) -> pl.DataFrame:
    """Pooled share of lettered tokens / letters in a script foreign to the prompt's language, per decoding
    and steering vector (emotion rows by emotion; baseline; random directions)."""
    group = pl.when(pl.col("condition") == "emotion").then(pl.col("vector")).otherwise(pl.col("condition"))
    return (frame.with_columns(group=group).group_by("decoding", "group").agg(
        generations=pl.len(), lettered_tokens=pl.col("lettered_tokens").sum(),
        foreign_token_share=pl.col("foreign_tokens").sum() / pl.col("lettered_tokens").sum(),
        foreign_letter_share=pl.col("foreign_letters").sum() / pl.col("letters").sum(),
        with_foreign=(pl.col("foreign_letters") > 0).sum()).sort("decoding", "group"))


def examples(frame: pl.DataFrame, prompts: list[str], emotions: list[str], n_random: int, layer: int,
             decoding: str, model_name: str) -> str:
    """Markdown: per emotion one prompt (rotating, not picked), baseline vs steered at each alpha at `layer`,
    each beside the random-direction control of the same strength."""
    part = frame.filter(pl.col("decoding") == decoding)
    rows = {(r["prompt_id"], r["vector"], r["layer"], r["alpha"]): r for r in part.iter_rows(named=True)}
    alphas = sorted(part.filter(pl.col("condition") == "emotion")["alpha"].unique())
    lines = [f"# Steering examples: {model_name}, {decoding}, layer {layer}", "",
             "In brackets: regime, and the classifier shift (the steered emotion's score minus the baseline's).", ""]
    for i, e in enumerate(emotions):
        prompt_id = i % len(prompts)
        base = rows[prompt_id, "none", None, 0.0]
        lines += [f"## {e} — prompt: “{prompts[prompt_id]}”", "", f"- **baseline**: {base['text'].strip()!r}"]
        for alpha in alphas:
            row, control = rows[prompt_id, e, layer, alpha], rows[prompt_id, f"random-{i % n_random}", layer, alpha]
            lines += [f"- **{e}, alpha {alpha:g}** [{row['regime']}, {row['shift']:+.2f}]: {row['text'].strip()!r}",
                      f"  - random direction, alpha {alpha:g} [{control['regime']}, "
                      f"{control[f'p_{e}'] - base[f'p_{e}']:+.2f}]: {control['text'].strip()!r}"]
        lines.append("")
    return "\n".join(lines)


def markdown(frame: pl.DataFrame, digits: int = 3) -> str:
    """A polars frame as a GitHub markdown table."""
    def cell(value) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


@click.command(cls=runs.Command)
@click.option("--model", "model_name", default=models.DEFAULT_MODEL, show_default=True,
              help="Embedded alias, HF repo id, model folder or .gguf file.")
@click.option("--remote", is_flag=True, help="Run the traces on NDIF (needs NDIF_API_KEY).")
@click.option("--layers", default="", help="Steering layers, e.g. '9,14,20' (default: depths 0.3, 0.5, 0.7).")
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
@click.option("--corpus", "corpus_path", type=click.Path(), default=None,
              help="A corpus file instead of the shipped one.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="outputs", show_default=True, type=click.Path())
def main(model_name: str, remote: bool, layers: str, emotions: str, alphas: str, n_prompts: int, new_tokens: int,
         decoding: str, temperature: float, n_random: int, classifier_spec: str, margin: float, steer_prompt: bool,
         chat: bool | None, corpus_path: str | None, seed: int, out: str) -> None:
    started = time.perf_counter()
    config = {k: v for k, v in locals().items() if k != "started"}
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
    thresholds = tm.Thresholds(margin=margin)
    stories = corpus.load(corpus_path, langs=["en"])
    missing = sorted(set(emotion_list) - set(stories["emotion"]))
    if missing:
        raise EmonnError(f"emotion '{missing[0]}' has no English stories in the corpus")
    neutral = corpus.load(neutral=True, langs=["en"])
    classifier = classify.load(classifier_spec, stories.filter(pl.col("emotion").is_in(emotion_list)))
    absent = [e for e in emotion_list if e not in classifier.labels]
    if absent:
        raise EmonnError(f"classifier {classifier.name} has no label for '{absent[0]}' "
                         f"(labels: {', '.join(classifier.labels)}); choose --emotions it knows")
    model = models.load(model_name, remote=remote)
    layer_ids = model.check_layers(runs.parse_layers(layers) or [round(x * (model.n_layers - 1)) for x in DEPTHS])
    chat = bool(model.tokenizer.chat_template) if chat is None else chat
    run = runs.Run.create(out, "steering", model.slug, {**config, "layers": layer_ids, "chat": chat,
                                                        "corpus": corpus.digest(stories)})

    # ---- vectors (cached activations), norms, the random control directions, every row's addition
    cache = runs.activation_cache(out, model, "mean", extract.START)
    vectors, _ = extract.emotion_vectors(model, stories, neutral=neutral, layers=layer_ids, cache=cache)
    norms = steer.mean_norms(model, neutral["text"].to_list(), layer_ids)
    randoms = steer.random_directions(n_random * len(layer_ids), model.d_model, seed=seed).reshape(
        len(layer_ids), n_random, model.d_model)
    directions = {(e, layer): vectors.at(layer)[vectors.emotions.index(e)] for e in emotion_list for layer in layer_ids}
    directions |= {(f"random-{r}", layer): randoms[j, r] for j, layer in enumerate(layer_ids) for r in range(n_random)}
    rows = plan(emotion_list, layer_ids, alpha_list, n_random)
    deltas = steering_deltas(rows, directions, norms, model.d_model)
    digest = hashlib.sha1(b"".join(deltas[layer].numpy().tobytes() for layer in layer_ids)).hexdigest()

    # ---- generation: one call per prompt and decoding, each a cached unit
    prompts, units = list(PROMPTS[:n_prompts]), []
    todo = [(dec, i) for dec in decodings for i in range(len(prompts))]
    for dec, i in tqdm(todo, desc=f"steer {model.slug} ({len(rows)} rows per call)", unit="call"):
        prompt = render(model.tokenizer, prompts[i], chat)
        key = json.dumps([model.name, prompt, dec, temperature if dec == "sample" else None, seed, new_tokens,
                          steer_prompt, rows, digest])
        path = run.folder / "units" / f"{dec}-p{i:02d}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.parquet"
        if not path.exists():
            unit = generate_unit(model, prompt, "en", rows, deltas, decoding=dec, new_tokens=new_tokens,
                                 temperature=temperature, seed=seed + i, steer_prompt=steer_prompt)
            buffer = io.BytesIO()
            unit.write_parquet(buffer)
            runs.atomic_write(path, buffer.getvalue())
        units.append(pl.read_parquet(path).with_columns(prompt_id=pl.lit(i), decoding=pl.lit(dec)))

    # ---- judge, controls, regimes, leakage
    frame = score_and_label(pl.concat(units), classifier, emotion_list, thresholds)
    shifts = control_shifts(frame, emotion_list, n_random, margin)
    summary, tests = summarise(shifts, seed)
    regimes = regime_shares(frame)
    leaks = leakage(frame)
    for name, table in {"generations": frame, "shifts": shifts, "shift_summary": summary, "shift_tests": tests,
                        "regime_map": regimes, "leakage": leaks}.items():
        run.table(name, table)
    run.figure("regime_map", alt.hconcat(*[
        plots.tiles(regimes.filter(pl.col("decoding") == dec).with_columns(pl.col("alpha").cast(pl.String)),
                    x="alpha", y="layer", category="dominant", text="label", categories=list(tm.REGIMES),
                    colors=REGIME_COLORS, title=f"{model.name}, {dec}: regimes of emotion-steered text")
        for dec in decodings]))
    run.figure("classifier_shift", alt.vconcat(*[alt.hconcat(*[
        plots.lines(summary.filter((pl.col("decoding") == dec) & (pl.col("layer") == layer)), x="alpha",
                    y="mean_shift", color="condition", band=("ci_low", "ci_high"), y_title="score rise vs baseline",
                    title=f"{dec}, layer {layer}: steered emotion's classifier score")
        for layer in layer_ids]) for dec in decodings]))
    runs.atomic_write(run.folder / "examples.md", examples(frame, prompts, emotion_list, n_random,
                                                           layer_ids[len(layer_ids) // 2], decodings[0], model.name))

    # ---- report
    elapsed = time.perf_counter() - started
    cells = ["decoding", "layer", "alpha"]
    success = (summary.pivot(on="condition", index=cells, values="k")
               .join(summary.filter(pl.col("condition") == "emotion vector").select(*cells, "n"), on=cells)
               .join(tests, on=cells))
    best = success.sort("emotion vector", descending=True).row(0, named=True)
    pooled = {dec: {c: shifts.filter((pl.col("decoding") == dec) & (pl.col("condition") == c)) for c in CONDITIONS}
              for dec in decodings}
    pooled_text = "; ".join(f"{dec}: " + ", ".join(f"{c} {int(f['success'].sum())}/{f.height}" for c, f in by.items())
                            for dec, by in pooled.items())
    base_regimes = (frame.filter(pl.col("condition") == "baseline").group_by("decoding")
                    .agg(*[(pl.col("regime") == name).mean().alias(name) for name in tm.REGIMES]).sort("decoding"))
    norm_text = ", ".join(f"layer {layer}: {norms[layer]:.1f}" for layer in layer_ids)
    report = [
        f"# Steering study: {model.name}", "",
        f"{len(prompts)} neutral English prompts{' (chat template)' if chat else ''} x {len(emotion_list)} emotions "
        f"x layers {layer_ids} x alphas {alpha_list}, plus {n_random} random directions per layer and alpha; "
        f"{new_tokens} new tokens; decoding {', '.join(decodings)} (sampling: temperature {temperature}, seeded). "
        f"{frame.height} generations; wall time {elapsed / 60:.1f} min.", "",
        f"Steering adds alpha x mean‖h‖ x v̂ at one layer on the generated positions"
        f"{' and the prompt' if steer_prompt else ''}; mean residual norms on the English neutral texts: {norm_text}. "
        f"Vectors: denoised emotion vectors from {stories.height} English stories (corpus {corpus.digest(stories)}).",
        "", "## External classifier", "",
        f"`{classifier.name}`, labels {', '.join(classifier.labels)}. Accuracy on the corpus: "
        f"**{classifier.accuracy:.3f}** ({classifier.accuracy_note}).", "",
        "## Regime map (emotion-steered rows; S surgical, I inert, R repetitive, E explosive)", "",
        "Thresholds (emonn.textmetrics.Thresholds): " + ", ".join(
            f"{k} {v}" for k, v in dataclasses.asdict(thresholds).items()) + ". Repetitive: distinct-2 < distinct2, "
        "a repeated n-gram of >= repeat words, or compression ratio > compression. Explosive: perplexity ratio to "
        "the baseline text > ppl_ratio, foreign letters > foreign, or no word at all. Surgical: neither, and the "
        "classifier shift > margin. Inert: neither, no shift.", "",
        markdown(regimes.select(*cells, "dominant", *tm.REGIMES, "n"), 2), "",
        "The unsteered (baseline) texts under the same rules (no shift, so never surgical):", "",
        markdown(base_regimes, 2), "",
        "## Classifier success: the steered emotion's score rises by more than the margin", "",
        f"Margin {margin}; n = emotions x prompts per cell. Controls: the same emotion's score on text steered by a "
        "random direction of the same norm, and by the next emotion's vector. p: one-sided Wilcoxon signed-rank of "
        "the shifts (vector > control), FDR-corrected over cells.", "",
        f"**Best cell** ({best['decoding']}, layer {best['layer']}, alpha {best['alpha']:g}; chosen after the fact): "
        f"{best['emotion vector']}/{best['n']} with the emotion vector vs {best['random direction']}/{best['n']} "
        f"with a random direction vs {best['other emotion']}/{best['n']} with another emotion's vector "
        f"(p vs random {best['p_vs_random_fdr']:.2g}, vs other {best['p_vs_other_fdr']:.2g}, FDR).", "",
        f"Pooled over all layers and alphas: {pooled_text}.", "",
        markdown(success.select(*cells, *CONDITIONS, "n", "p_vs_random_fdr", "p_vs_other_fdr"), 3), "",
        "Mean shifts with 95% bootstrap CIs: results/shift_summary.parquet, figures/classifier_shift.png.", "",
        "## Cross-lingual leakage: tokens / letters in a non-Latin script (the prompts are English)", "",
        markdown(leaks, 4), "",
        "## Files", "",
        "results/generations.parquet (every generation with its metrics), results/shifts.parquet, "
        "results/shift_summary.parquet, results/shift_tests.parquet, results/regime_map.parquet, "
        "results/leakage.parquet, figures/regime_map.png|html, figures/classifier_shift.png|html, examples.md.",
    ]
    run.report("\n".join(report))
    click.echo(markdown(regimes.filter(pl.col("decoding") == decodings[0]).select(*cells[1:], "dominant",
                                                                                  *tm.REGIMES), 2))
    click.echo(f"classifier {classifier.name}: corpus accuracy {classifier.accuracy:.3f}")
    click.echo(f"best cell {best['decoding']} layer {best['layer']} alpha {best['alpha']:g}: vector "
               f"{best['emotion vector']}/{best['n']} vs random {best['random direction']}/{best['n']}; "
               f"pooled {pooled_text}")
    click.echo(f"wall time {elapsed / 60:.1f} min; wrote {run.folder}")


if __name__ == "__main__":
    main()
