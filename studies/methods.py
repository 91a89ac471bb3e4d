"""Generation-based vs comprehension-based emotion activations: which separates emotions better, and do they agree?

    python studies/methods.py                                      # SmolLM2-135M-Instruct, minutes on CPU
    python studies/methods.py --model smollm2-135m --model gemma3-270m
    python studies/methods.py --model meta-llama/Llama-3.1-8B-Instruct --remote

Comprehension-based: the model reads the corpus's English stories (mean from token k). Generation-based: the
model is asked to write about a character feeling each emotion, on the topics of the same stories (through
its chat template where it has one; a plain opening line for base models), and each layer is averaged over
the tokens it generated, inside the generate trace. Both methods get the same (emotion, topic) items.
Per layer and method: three separation scores on centred activations (between/within cosine-distance
ratio, leave-topics-out nearest-centroid accuracy, cosine silhouette); Mann-Whitney across layers (and
across models), Cohen's d with CI; RSA between the two methods' emotion RDMs with a permutation test.
Then the generation method's sensitivity to its sub-parameters (temperature, length, prompt template) on a
subset, and a precision comparison (float32 vs bfloat16; the GGUF's quantized arithmetic, emulated) so that
the confounds of arXiv 2604.11050 can be told apart. Writes outputs/methods/<model[__model...]>/.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import altair as alt
import click
import numpy as np
import polars as pl
import torch

from emonn import EmonnError, corpus, extract, models, plots, runs, stats
from emonn.corpus.generate import chat

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


def prompt(tokenizer, template: str, emotion: str, topic: str) -> str:
    """The generation prompt: the template's instruction as a chat turn, or its opening line (base models)."""
    instruction, opening = TEMPLATES[template]
    if getattr(tokenizer, "chat_template", None):
        return chat(tokenizer, instruction.format(emotion=emotion, topic=topic))
    return opening.format(emotion=emotion, topic=topic)


def floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EmonnError(f"{option} '{text}' must be a comma-separated list of numbers") from None


def separation(acts: np.ndarray, labels: np.ndarray, topics: np.ndarray) -> dict[str, np.ndarray]:
    """The three scores per layer `(n_layers,)` of activations `(n, n_layers, d)`, centred per layer (the
    common direction of all texts, which differs between methods, would otherwise dominate every cosine)."""
    result = stats.separation_scores(acts - acts.mean(0), labels, topics)
    return {score: getattr(result, score) for score in SCORES}


def emotion_rdms(acts: np.ndarray, labels: np.ndarray, emotions: list[str]) -> np.ndarray:
    """Per layer, 1 - cosine between the emotions' centroids of the centred activations: `(n_layers, E, E)`."""
    centred = acts - acts.mean(0)
    centroids = np.stack([centred[labels == e].mean(0) for e in emotions])  # (E, L, d)
    return np.stack([1 - stats.cosine_matrix(centroids[:, j]) for j in range(acts.shape[1])])


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mann-Whitney and Cohen's d (independent, with CI) of a vs b, plus the paired versions (same layers)."""
    mw, d = stats.mann_whitney(a, b), stats.cohens_d(a, b)
    row = {"mean_a": float(np.mean(a)), "mean_b": float(np.mean(b)), "n": len(a), "mw_u": mw.statistic,
           "mw_p": mw.p, "rank_biserial": mw.effect, "d": d.d, "d_low": d.low, "d_high": d.high}
    if len(a) == len(b) and np.any(np.asarray(a) != np.asarray(b)):
        dz = stats.cohens_d(a, b, paired=True)
        row.update(wilcoxon_p=stats.wilcoxon(a, b).p, dz=dz.d, dz_low=dz.low, dz_high=dz.high)
    return row


# ---- the embedded models' GGUF: what the loaded (dequantized) weights are, compared with the file
def gguf_check(model: models.Model) -> dict:
    """The embedded model's GGUF against the loaded weights: `types` {linear module: quantization type}; per
    type, the largest |difference| between the loaded weights and the file's tensors dequantized by the `gguf`
    package (`dequantized`; sorted values, as the HF conversion permutes the rows of some matrices), and
    between the loaded weights and their re-quantization in the same type (`requantized`; None where the
    package cannot quantize that type)."""
    import gguf
    from gguf import quants

    reader = gguf.GGUFReader(models.EMBEDDED[model.name].gguf())
    field = reader.fields["general.architecture"]
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == bytes(field.parts[field.data[0]]).decode())
    names, tensors = gguf.get_tensor_name_map(arch, model.n_layers), {t.name: t for t in reader.tensors}
    found: dict[str, dict] = {"types": {}, "dequantized": {}, "requantized": {}}
    for name, module in model.lm._module.named_modules():
        mapped = names.get_name(name) if isinstance(module, torch.nn.Linear) else None
        tensor = tensors.get(f"{mapped}.weight") if mapped else None
        if tensor is None or tensor.tensor_type.name in ("F32", "F16", "BF16"):
            continue
        kind, weight = tensor.tensor_type, module.weight.detach().float().numpy()
        found["types"][name] = kind.name
        original = quants.dequantize(tensor.data, kind)
        difference = float(np.abs(np.sort(original, axis=None) - np.sort(weight, axis=None)).max())
        found["dequantized"][kind.name] = max(found["dequantized"].get(kind.name, 0.0), difference)
        try:
            error = float(np.abs(quants.dequantize(quants.quantize(weight, kind), kind) - weight).max())
        except (NotImplementedError, quants.QuantError):
            error = None
        previous = found["requantized"].get(kind.name, 0.0)
        found["requantized"][kind.name] = None if error is None or previous is None else max(previous, error)
    return found


def gguf_facts(model: models.Model, out: str) -> dict:
    """`gguf_check`, computed once and kept under the model's cache folder (parsing the GGUF's metadata alone
    takes ~20 s)."""
    path = Path(out) / "cache" / model.slug / "gguf-facts.json"
    if not path.exists():
        runs.atomic_write(path, json.dumps(gguf_check(model)))
    return json.loads(path.read_text())


@contextlib.contextmanager
def quantized_arithmetic(model: models.Model, types: dict[str, str]):
    """Emulate llama.cpp's CPU matmuls with quantized weights: each quantized linear layer's input is rounded
    to 8 bits per block (Q8_0/Q8_1: 32 values, Q8_K for k-quants: 256) with scale max|x|/127 before the exact
    product with the dequantized weights. Norms, attention and the f16 KV cache are not emulated."""

    def hook(block: int):
        def round_input(module, args):
            x = args[0]
            blocks = x.reshape(*x.shape[:-1], -1, block)
            scale = blocks.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
            return ((blocks / scale).round() * scale).reshape(x.shape), *args[1:]
        return round_input

    modules = dict(model.lm._module.named_modules())
    handles = [modules[name].register_forward_pre_hook(hook(256 if kind.endswith("_K") else 32))
               for name, kind in types.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@click.command(cls=runs.Command)
@click.option("--model", "model_names", multiple=True, default=(models.DEFAULT_MODEL,), show_default=True,
              help="Embedded alias, HF repo id, model folder or .gguf file; repeat to compare models.")
@click.option("--remote", is_flag=True, help="Run the traces on NDIF (needs NDIF_API_KEY).")
@click.option("--layers", default="", help="Layers to analyse, e.g. '2-10' or '0,5,-1' (default: all).")
@click.option("--start-token", default=extract.START, show_default=True,
              help="Average each story's residual stream from this token on (comprehension).")
@click.option("--per-emotion", default=6, show_default=True,
              help="Stories per emotion (each emotion's first, by id); generation uses the same topics.")
@click.option("--template", type=click.Choice(list(TEMPLATES)), default="story", show_default=True,
              help="Generation prompt template.")
@click.option("--new-tokens", default=40, show_default=True, help="Tokens generated (and averaged) per prompt.")
@click.option("--temperature", default=0.7, show_default=True, help="Sampling temperature (0: greedy).")
@click.option("--grid-temperatures", default="0,1.2", show_default=True,
              help="Sensitivity: other temperatures (0: greedy); empty: none.")
@click.option("--grid-lengths", default="16,80", show_default=True, help="Sensitivity: other lengths; empty: none.")
@click.option("--grid-templates", default="diary,scene", show_default=True,
              help="Sensitivity: other templates; empty: none.")
@click.option("--grid-seeds", default="1", show_default=True,
              help="Sensitivity: other sampling seeds (the noise to compare the other changes with); empty: none.")
@click.option("--grid-per-emotion", default=3, show_default=True,
              help="Sensitivity: prompts per emotion (the first topics of the main set).")
@click.option("--precision/--no-precision", default=True, show_default=True,
              help="Compare float32, bfloat16 and emulated quantized arithmetic on the subset (local models).")
@click.option("--permutations", default=5000, show_default=True, help="Label permutations per RSA test.")
@click.option("--corpus", "corpus_path", type=click.Path(), default=None,
              help="A stories file instead of the shipped one.")
@click.option("--batch-size", default=extract.GENERATE_BATCH, show_default=True,
              help="Prompts per generate call (the cached unit).")
@click.option("--batch-tokens", default=2048, show_default=True, help="Padded tokens per forward pass.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="outputs", show_default=True, type=click.Path())
def main(model_names: tuple[str, ...], remote: bool, layers: str, start_token: int, per_emotion: int, template: str,
         new_tokens: int, temperature: float, grid_temperatures: str, grid_lengths: str, grid_templates: str,
         grid_seeds: str, grid_per_emotion: int, precision: bool, permutations: int, corpus_path: str | None,
         batch_size: int, batch_tokens: int, seed: int, out: str) -> None:
    started = time.perf_counter()
    config = {k: v for k, v in locals().items() if k != "started"}
    unknown = [t for t in grid_templates.split(",") if t.strip() and t.strip() not in TEMPLATES]
    if unknown:
        raise EmonnError(f"unknown template '{unknown[0]}': use one of {', '.join(TEMPLATES)}")
    if per_emotion < 2 or not 2 <= grid_per_emotion <= per_emotion:
        raise EmonnError(f"need 2 <= --grid-per-emotion ({grid_per_emotion}) <= --per-emotion ({per_emotion})")
    grid = ([("temperature", t) for t in floats(grid_temperatures, "--grid-temperatures") if t != temperature]
            + [("length", int(n)) for n in floats(grid_lengths, "--grid-lengths") if int(n) != new_tokens]
            + [("template", t.strip()) for t in grid_templates.split(",") if t.strip() and t.strip() != template]
            + [("seed", int(n)) for n in floats(grid_seeds, "--grid-seeds") if int(n) != seed])
    base = {"temperature": temperature, "length": new_tokens, "template": template, "seed": seed}

    # ---- the matched items: each emotion's first stories and, for generation, the same (emotion, topic)
    stories = corpus.load(corpus_path, langs=["en"])
    emotions = [e for e in corpus.emotion_names() if e in set(stories["emotion"])]
    items = (stories.sort("id").group_by("emotion", maintain_order=True).head(per_emotion)
             .sort(pl.col("emotion").replace_strict(emotions, list(range(len(emotions)))), "id"))
    if len(emotions) < 3 or items["topic"].n_unique() < 2:
        raise EmonnError("need at least 3 emotions and 2 topics among the English stories")
    topic_text = dict(corpus.topics().select("topic", "en").iter_rows())
    labels, topics = items["emotion"].to_numpy(), items["topic"].to_numpy()
    subset = np.sort(items.with_row_index().group_by("emotion", maintain_order=True).head(grid_per_emotion)
                     ["index"].to_numpy())

    score_rows, test_rows, rsa_rows, sens_rows, prec_rows, gen_rows, notes, slugs = [], [], [], [], [], [], {}, []
    for name in dict.fromkeys(model_names):
        model = models.load(name, remote=remote)
        slugs.append(model.slug)
        layer_ids = model.check_layers(runs.parse_layers(layers))
        if len(layer_ids) < 2:
            raise EmonnError("the tests across layers need at least 2 layers: widen --layers")
        depth = np.array([model.depth(layer) for layer in layer_ids])
        gen_cache = runs.generation_cache(out, model)

        def prompts_for(rows: np.ndarray, template: str) -> list[str]:
            return [prompt(model.tokenizer, template, labels[i], topic_text[topics[i]]) for i in rows]

        def generate(rows: np.ndarray, *, temperature: float, length: int, template: str, seed: int
                     ) -> extract.Generated:
            prompts = prompts_for(rows, template)
            result = extract.generated_activations(model, prompts, max_new_tokens=length, do_sample=temperature > 0,
                                                   temperature=temperature, seed=seed, layers=layer_ids,
                                                   batch_size=batch_size, cache=gen_cache)
            gen_rows.extend({"model": model.name, "template": template, "temperature": temperature,
                             "new_tokens": length, "seed": seed, "emotion": labels[i], "topic": topics[i], "prompt": p,
                             "text": text, "n_tokens": len(ids), "names_emotion": labels[i] in text.lower()}
                            for i, p, text, ids in zip(rows, prompts, result.texts, result.ids))
            return result

        # ---- extraction: comprehension (the shared activation cache) and generation (cached per unit)
        comp = extract.activations(model, items["text"].to_list(), start=start_token, layers=layer_ids,
                                   cache=runs.activation_cache(out, model, "mean", start_token),
                                   batch_tokens=batch_tokens)
        gen = generate(np.arange(len(items)), **base)
        acts = {"comprehension": comp, "generation": gen.acts}

        # ---- per-layer separation, tests across layers, RSA of the methods' RDMs
        scores = {method: separation(acts[method], labels, topics) for method in METHODS}
        for method in METHODS:
            for score in SCORES:
                score_rows += [{"model": model.name, "method": method, "score": score, "layer": layer,
                                "depth": float(depth[j]), "value": float(scores[method][score][j])}
                               for j, layer in enumerate(layer_ids)]
        for score in SCORES:
            test_rows.append({"model": model.name, "score": score,
                              **compare(scores["generation"][score], scores["comprehension"][score])})
        rdms = {method: emotion_rdms(acts[method], labels, emotions) for method in METHODS}
        for j, layer in enumerate(layer_ids):
            test = stats.rsa_test(rdms["comprehension"][j], rdms["generation"][j], n_permutations=permutations,
                                  seed=seed)
            low, high = np.quantile(test.null, [0.025, 0.975])
            rsa_rows.append({"model": model.name, "layer": layer, "depth": float(depth[j]), "r": test.statistic,
                             "p": test.p, "null_low": float(low), "null_high": float(high)})

        # ---- sensitivity of the generation method: one sub-parameter changed at a time, on a subset
        sub_labels, sub_topics = labels[subset], topics[subset]
        sub_base = separation(gen.acts[subset], sub_labels, sub_topics)
        sub_rdm = {"base": emotion_rdms(gen.acts[subset], sub_labels, emotions),
                   "comprehension": emotion_rdms(comp[subset], sub_labels, emotions)}
        for parameter, setting in [("base", "base"), *grid]:
            if parameter == "base":
                variant_scores, rdm = sub_base, sub_rdm["base"]
            else:
                variant = generate(subset, **{**base, parameter: setting}).acts
                variant_scores, rdm = separation(variant, sub_labels, sub_topics), emotion_rdms(variant, sub_labels,
                                                                                               emotions)
            rsa_base = stats.rsa_stack(rdm, sub_rdm["base"])
            rsa_comp = stats.rsa_stack(rdm, sub_rdm["comprehension"])
            for score in SCORES:
                sens_rows += [{"model": model.name, "parameter": parameter, "setting": str(setting), "score": score,
                               "layer": layer, "depth": float(depth[j]), "value": float(variant_scores[score][j]),
                               "rsa_with_base": float(rsa_base[j]), "rsa_with_comprehension": float(rsa_comp[j])}
                              for j, layer in enumerate(layer_ids)]

        # ---- precision: the same items and the same generated tokens, read in other arithmetic
        if precision and remote:
            notes[model.name] = "precision comparison skipped: --remote models run in the server's precision"
        elif precision:  # on the sensitivity subset: the same items, read three ways
            sub_prompts, sub_texts = prompts_for(subset, template), items["text"].gather(subset).to_list()

            def read(reader: models.Model, suffix: str = "") -> dict[str, np.ndarray]:
                """Both methods' activations as `reader` computes them: the stories, and the generated tokens
                re-read (cached under the reader's dtype, plus `suffix` for emulated arithmetic)."""
                story_cache, reread_cache = (runs.activation_cache(out, reader, reducer, start_token)
                                             for reducer in ("mean", "reread"))
                if suffix:
                    story_cache, reread_cache = (runs.ActivationCache(c.folder.with_name(c.folder.name + suffix))
                                                 for c in (story_cache, reread_cache))
                return {"comprehension": extract.activations(reader, sub_texts, start=start_token, layers=layer_ids,
                                                             cache=story_cache, batch_tokens=batch_tokens),
                        "generation": extract.reread(reader, sub_prompts, [gen.ids[i] for i in subset],
                                                     layers=layer_ids, cache=reread_cache, batch_tokens=batch_tokens)}

            variants = {"float32": read(model), "bfloat16": read(models.load(name, dtype=torch.bfloat16))}
            if model.name in models.EMBEDDED:
                facts = gguf_facts(model, out)
                notes[model.name] = facts
                with quantized_arithmetic(model, facts["types"]):
                    variants["q8 activations"] = read(model, "-q8act")
            reference = variants["float32"]
            for variant, variant_acts in variants.items():
                for method in METHODS:
                    a, ref = variant_acts[method], reference[method]
                    cosine = (a * ref).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(ref, axis=-1)
                    variant_scores = separation(a, sub_labels, sub_topics)
                    for score in SCORES:
                        prec_rows += [{"model": model.name, "precision": variant, "method": method, "score": score,
                                       "layer": layer, "depth": float(depth[j]),
                                       "value": float(variant_scores[score][j]),
                                       "cosine_to_float32": float(cosine[:, j].mean()),
                                       "min_cosine_to_float32": float(cosine[:, j].min())}
                                      for j, layer in enumerate(layer_ids)]
        del model

    # ---- tables
    run = runs.Run.create(out, "methods", "__".join(slugs), {**config, "corpus": corpus.digest(items)})
    separation_frame = pl.DataFrame(score_rows)
    if len(slugs) > 1:  # across models: every (model, layer) value of each method
        for score in SCORES:
            part = separation_frame.filter(pl.col("score") == score)
            test_rows.append({"model": "all models", "score": score, **compare(
                part.filter(pl.col("method") == "generation")["value"].to_numpy(),
                part.filter(pl.col("method") == "comprehension")["value"].to_numpy())})
    tests = pl.DataFrame(test_rows).rename({"mean_a": "mean_generation", "mean_b": "mean_comprehension"})
    rsa = pl.concat([part.with_columns(p_fdr=pl.Series(stats.correct(part["p"].to_numpy()).p_adjusted))
                     for part in pl.DataFrame(rsa_rows).partition_by("model", maintain_order=True)])
    sensitivity = pl.DataFrame(sens_rows)
    base_values = sensitivity.filter(pl.col("parameter") == "base").select("model", "score", "layer",
                                                                            base_value=pl.col("value"))
    sens_summary = []
    for key, part in sensitivity.join(base_values, on=["model", "score", "layer"]).group_by(
            "model", "parameter", "setting", "score", maintain_order=True):
        values, base_value = part["value"].to_numpy(), part["base_value"].to_numpy()
        tested = {"mean_a": values.mean(), "mean_b": base_value.mean()} if key[1] == "base" else compare(values,
                                                                                                       base_value)
        sens_summary.append({"model": key[0], "parameter": key[1], "setting": key[2], "score": key[3],
                             "rsa_with_base": part["rsa_with_base"].mean(),
                             "rsa_with_comprehension": part["rsa_with_comprehension"].mean(), **tested})
    sens_summary = pl.DataFrame(sens_summary, infer_schema_length=None).rename({"mean_a": "mean",
                                                                                 "mean_b": "mean_base"})
    generations = pl.DataFrame(gen_rows).unique(maintain_order=True)
    for name, frame in (("separation", separation_frame), ("method_tests", tests), ("rsa", rsa), ("sensitivity",
                        sensitivity), ("sensitivity_tests", sens_summary), ("generations", generations)):
        run.table(name, frame)
    prec_tests = None
    if prec_rows:
        prec = pl.DataFrame(prec_rows)
        run.table("precision", prec)
        prec_tests = []
        for key, part in prec.group_by("model", "precision", "score", maintain_order=True):
            by_method = {m: part.filter(pl.col("method") == m) for m in METHODS}
            prec_tests.append({"model": key[0], "precision": key[1], "score": key[2],
                               **{f"cosine_{m}": by_method[m]["cosine_to_float32"].mean() for m in METHODS},
                               **compare(by_method["generation"]["value"].to_numpy(),
                                         by_method["comprehension"]["value"].to_numpy())})
        prec_tests = pl.DataFrame(prec_tests).rename({"mean_a": "mean_generation", "mean_b": "mean_comprehension"})
        run.table("precision_tests", prec_tests)

    # ---- figures
    series = separation_frame.with_columns(series=pl.col("model") + " · " + pl.col("method"))
    chance = 1 / len(emotions)
    run.figure("separation_by_depth", alt.vconcat(*[
        plots.lines(series.filter(pl.col("score") == score), x="depth", y="value", color="series", y_title=title,
                    title=f"{title} by relative depth" + (f" (chance {chance:.3f})" if score == "accuracy" else ""))
        for score, title in SCORES.items()]))
    rsa_chart = plots.lines(rsa, x="depth", y="r", color="model", y_title="RSA (Spearman r)",
                            title="RSA of the two methods' emotion RDMs by relative depth")
    if len(slugs) == 1:  # one model: its permutation null band fits the chart
        rsa_chart = plots.band(rsa, x="depth", low="null_low", high="null_high",
                               label="permutation null, 95%") + rsa_chart
    run.figure("rsa_by_depth", rsa_chart)
    sens_series = sensitivity.filter(pl.col("score") == "accuracy").with_columns(
        variant=pl.col("model") + " · " + pl.col("parameter") + " " + pl.col("setting"))
    run.figure("sensitivity", alt.hconcat(
        plots.lines(sens_series, x="depth", y="value", color="variant", y_title="accuracy",
                    title=f"Generation sub-parameters: accuracy on the subset (chance {chance:.3f})"),
        plots.lines(sens_series, x="depth", y="rsa_with_comprehension", color="variant", y_title="RSA r",
                    title="Generation sub-parameters: RSA with comprehension")))
    if prec_rows:
        run.figure("precision", plots.lines(
            prec.filter(pl.col("score") == "accuracy").with_columns(
                series=pl.col("model") + " · " + pl.col("precision") + " · " + pl.col("method")),
            x="depth", y="value", color="series", y_title="accuracy", title="Accuracy by arithmetic precision"))

    # ---- report and summary
    elapsed = time.perf_counter() - started
    lines = [f"# Generation- vs comprehension-based emotion activations: {', '.join(dict.fromkeys(tests['model']))}", "",
             f"{len(emotions)} emotions x {per_emotion} items ({len(items)}): each emotion's first {per_emotion} English "
             f"stories (mean from token {start_token}) and, for generation, the same (emotion, topic) pairs asked "
             f"with the '{template}' template, {new_tokens} tokens at temperature {temperature} "
             f"({'greedy' if temperature == 0 else 'sampled, seed ' + str(seed)}), averaged over the generated tokens "
             f"only. Scores on activations centred per layer; accuracy holds each topic out in turn (chance "
             f"{chance:.3f}). Corpus {corpus.digest(items)}. Run time {elapsed:.0f} s.", "",
             "## Method comparison across layers (generation vs comprehension)", "",
             "Mann-Whitney U over the per-layer scores (two-sided; rank-biserial r > 0: generation higher) and "
             "Cohen's d (independent, 95% CI). Layers are not independent samples (neighbours correlate), so "
             "these p-values overstate the evidence; the paired Wilcoxon and d_z treat each layer as a pair.", "",
             "| model | score | mean gen | mean comp | MW U | MW p | r | d [95% CI] | Wilcoxon p | d_z [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in tests.iter_rows(named=True):
        paired = (f"{r['wilcoxon_p']:.2g} | {r['dz']:.2f} [{r['dz_low']:.2f}, {r['dz_high']:.2f}]"
                  if r.get("wilcoxon_p") is not None else "- | -")
        lines.append(f"| {r['model']} | {r['score']} | {r['mean_generation']:.3f} | {r['mean_comprehension']:.3f} | "
                     f"{r['mw_u']:.0f} | {r['mw_p']:.2g} | {r['rank_biserial']:.2f} | {r['d']:.2f} "
                     f"[{r['d_low']:.2f}, {r['d_high']:.2f}] | {paired} |")
    lines += ["", "## RSA between the methods' emotion RDMs", "",
              f"Spearman r of the {len(emotions)}x{len(emotions)} centroid cosine-distance matrices per layer; "
              f"label-permutation p ({permutations} permutations), FDR over layers.", "",
              "| model | best layer | depth | r | p | p (FDR) | median r over layers | layers with p (FDR) < 0.05 |",
              "|---|---|---|---|---|---|---|---|"]
    for part in rsa.partition_by("model", maintain_order=True):
        best = part.sort("r", descending=True).row(0, named=True)
        lines.append(f"| {best['model']} | {best['layer']} | {best['depth']:.2f} | {best['r']:.3f} | {best['p']:.2g} | "
                     f"{best['p_fdr']:.2g} | {part['r'].median():.3f} | {(part['p_fdr'] < 0.05).sum()}/{part.height} |")
    lines += ["", "## Sensitivity of the generation method", "",
              f"One sub-parameter changed at a time on {len(subset)} items ({grid_per_emotion} per emotion); means over "
              "layers; MW and d against the base setting on the same items; RSA of the RDMs with the base setting "
              "and with comprehension (mean over layers). The seed rows repeat the base setting with other sampling "
              "seeds: that is the sampling noise, against which the other changes are to be read.", "",
              "| model | parameter | setting | score | mean | mean base | MW p | d [95% CI] | RSA with base | RSA with comprehension |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sens_summary.filter(pl.col("score") != "silhouette").iter_rows(named=True):
        tested = ("- | -" if r["parameter"] == "base" else
                  f"{r['mw_p']:.2g} | {r['d']:.2f} [{r['d_low']:.2f}, {r['d_high']:.2f}]")
        lines.append(f"| {r['model']} | {r['parameter']} | {r['setting']} | {r['score']} | {r['mean']:.3f} | "
                     f"{r['mean_base']:.3f} | {tested} | {r['rsa_with_base']:.3f} | {r['rsa_with_comprehension']:.3f} |")
    lines += ["", "## Precision", ""]
    if prec_tests is not None:
        lines += [f"The {len(subset)} items of the sensitivity subset and the same generated tokens (teacher-forced: "
                  "the float32 generations re-read), so only the arithmetic differs, not the sampled text. Cosine: "
                  "mean over items of the cosine to the float32 activation, averaged over layers.", "",
                  "| model | precision | score | mean gen | mean comp | MW p (gen vs comp) | d [95% CI] | cosine gen | cosine comp |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in prec_tests.filter(pl.col("score") != "silhouette").iter_rows(named=True):
            lines.append(f"| {r['model']} | {r['precision']} | {r['score']} | {r['mean_generation']:.3f} | "
                         f"{r['mean_comprehension']:.3f} | {r['mw_p']:.2g} | {r['d']:.2f} [{r['d_low']:.2f}, "
                         f"{r['d_high']:.2f}] | {r['cosine_generation']:.5f} | {r['cosine_comprehension']:.5f} |")
    for model_name, note in notes.items():
        if isinstance(note, str):
            lines += ["", f"- {model_name}: {note}."]
            continue
        dequantized = ", ".join(f"{kind} {e:.3g}" for kind, e in note["dequantized"].items())
        requantized = ", ".join(f"{kind} {'not quantizable by the gguf package' if e is None else f'{e:.3g}'}"
                                for kind, e in note["requantized"].items())
        identical = all(e == 0 for e in note["dequantized"].values())
        lines += ["", f"- {model_name}, quantized vs dequantized: transformers dequantizes the GGUF on load. Largest "
                  f"|Δw| between the loaded weights and the GGUF tensors dequantized by the gguf package: {dequantized}"
                  f"; between the loaded weights and their re-quantization in the GGUF's own type: {requantized}. "
                  + ("The loaded float32 model computes with exactly the quantized weights, so the original quantized "
                     "model differs from it in arithmetic only, not in weights (a re-quantized model is the float32 "
                     "model itself). " if identical else "The loaded weights are not exactly the GGUF's. ")
                  + "'q8 activations' emulates the main part of llama.cpp's arithmetic (each quantized matmul's input "
                  "rounded to 8 bits per block); its f16 KV cache and accumulation order are not emulated, so this "
                  "is an approximation."]
    main_rows = generations.filter(pl.col("template") == template, pl.col("temperature") == temperature,
                                   pl.col("new_tokens") == new_tokens, pl.col("seed") == seed)
    read = main_rows.group_by("model", maintain_order=True).agg(
        mean=pl.col("n_tokens").mean(), short=(pl.col("n_tokens") < new_tokens).sum(), n=pl.len(),
        named=pl.col("names_emotion").mean())
    lines += ["", "Generated tokens averaged per item (a row ends at its stop token): " + "; ".join(
        f"{r['model']} mean {r['mean']:.1f} of {new_tokens}, {r['short']}/{r['n']} rows stopped early, the emotion "
        f"word itself in {r['named']:.0%} of the texts" for r in read.iter_rows(named=True)) + "."]
    sample = main_rows.unique(["model", "emotion"], maintain_order=True).group_by("model", maintain_order=True
                                                                                 ).head(2)
    lines += ["", "## Sample generations", ""] + [f"- {r['model']}, {r['emotion']} / {r['topic']}: "
                                                  f"{r['text'][:300]!r}" for r in sample.iter_rows(named=True)]
    lines += ["", "Figures: `figures/` (HTML and PNG). Tables: `results/` (generated texts in "
              "`results/generations.parquet`)."]
    run.report("\n".join(lines) + "\n")

    summary = pl.DataFrame([{"model": r["model"], "score": r["score"], "gen": round(r["mean_generation"], 3),
                             "comp": round(r["mean_comprehension"], 3), "MW p": f"{r['mw_p']:.2g}",
                             "d [95% CI]": f"{r['d']:.2f} [{r['d_low']:.2f}, {r['d_high']:.2f}]"}
                            for r in tests.iter_rows(named=True)])
    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, fmt_str_lengths=60):
        click.echo(f"\nGeneration vs comprehension, per-layer scores:\n{summary}")
    for part in rsa.partition_by("model", maintain_order=True):
        best = part.sort("r", descending=True).row(0, named=True)
        click.echo(f"{best['model']}: RSA between methods peaks at layer {best['layer']} (depth {best['depth']:.2f}) "
                   f"r={best['r']:.3f} p={best['p']:.2g}; median r {part['r'].median():.3f}")
    click.echo(f"{elapsed:.0f} s; wrote {run.folder}/ (report.md, results/, figures/)")


if __name__ == "__main__":
    main()
