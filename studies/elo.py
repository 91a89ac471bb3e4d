"""Does emotion steering shift which behaviours the model prefers? A/B preferences, Bradley-Terry and Elo.

    python studies/elo.py                       # embedded SmolLM2: 4,032 prompts x 4 conditions
    python studies/elo.py --model meta-llama/Llama-3.1-8B-Instruct --remote   # the same on NDIF

For every pair of activities (emonn.corpus.behaviours: 8 categories x 8) the model is asked whether it
would prefer to (A) do one or (B) the other, in both orders, inside its chat template, with the answer begun
as "(": the answer is the next-token log-odds of "A" against "B" (each letter's single-token spellings, e.g.
"A" and " A", log-sum-exp'd). Each prompt
is read under several conditions: unsteered, steered by each emotion vector (denoised, from the English
stories) and by a random direction of the same norm (the control), adding alpha * mean‖h‖ * v̂ at one layer
to the activity tokens (or the whole prompt). The two orders of a pair are averaged in log-odds, which
cancels a constant preference for "A" or "B", and give a soft outcome P(first preferred). Ratings per
condition: Bradley-Terry maximum likelihood and Elo (K-factor, averaged over random orderings), per
activity and per category (mean of its activities); steered minus baseline per category, with bootstrap
CIs over pairs and permutation p-values (condition labels swapped within pairs), FDR-corrected.

All conditions of a prompt share one forward pass (one batch row each, with its own delta). Locally the
prompts of one first activity share a key-value cache of their common beginning, so each row runs only
its second activity and the closing tokens. Finished units (one first activity each) are cached under
units/: a killed run resumes. Writes outputs/elo/<model>/: config.json, units/, results/*.parquet,
figures/ (HTML + PNG), report.md.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import math
import time
from typing import NamedTuple

import altair as alt
import click
import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from emonn import EmonnError, corpus, extract, models, plots, runs, stats, steer

#: The question, with the activities in its middle; the answer is read as the next token.
QUESTION = "Answer with A or B only. Would you prefer to (A) {a} or (B) {b}?"
#: The answer's first character, written for the model: its next token is then the letter. On SmolLM2 this
#: lifts P(A) + P(B) from about 0.3 (it often starts "(" or "I ...") to about 0.96, and the pull towards
#: "A" from about 3 to 0.6 in log-odds.
ANSWER_START = "("
LETTERS = ("A", "B")
DEPTH = 0.5  # default steering layer, as a relative depth
ELO_POINTS = 400 / math.log(10)  # a Bradley-Terry log-strength difference in Elo points
REPLICATE_ORDERINGS = 10  # Elo orderings per bootstrap / permutation replicate (the estimates use --orderings)
# batch rows (prompts x conditions) per forward pass: locally, small length-sorted batches waste little on
# padding; full prompts (remote runs) go in larger batches, as each is a request
ROWS_SHARED_PREFIX, ROWS_FULL_PROMPT = 64, 512
SPANS = ("activities", "prompt")


def render(tokenizer, question: str, chat: bool) -> str:
    """The question as the model reads it, up to the answer's first character: in its chat template, or as a
    Question/Answer text."""
    if not chat:
        return f"Question: {question}\nAnswer: {ANSWER_START}"
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id:
        text = text[len(bos):]  # the tokenizer adds its own BOS: the template's would double it
    return text + ANSWER_START


def letter_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of each answer letter: every single-token spelling of "A" / " A" (and "B" / " B")."""
    ids = []
    for letter in LETTERS:
        found = {tokens[0] for variant in (letter, f" {letter}")
                 if len(tokens := tokenizer(variant, add_special_tokens=False)["input_ids"]) == 1}
        ids.append(sorted(found))
    if not ids[0] or not ids[1] or set(ids[0]) & set(ids[1]):
        raise EmonnError(f"the tokenizer has no distinct single tokens for the answers A and B (found {ids})")
    return ids[0], ids[1]


class Prompt(NamedTuple):
    """One ordered pair: activity `first` as (A), `second` as (B); token ids and which tokens are steered."""

    first: int
    second: int
    ids: tuple[int, ...]
    steered: tuple[bool, ...]


def build_prompt(tokenizer, activities: list[str], first: int, second: int, *, chat: bool, span: str) -> Prompt:
    head, rest = QUESTION.split("{a}")
    middle, tail = rest.split("{b}")
    a, b = activities[first], activities[second]
    question = head + a + middle + b + tail
    text = render(tokenizer, question, chat)
    start = text.index(question)
    spans = [(start + len(head), start + len(head) + len(a))]
    spans.append((spans[0][1] + len(middle), spans[0][1] + len(middle) + len(b)))
    if span == "prompt":
        enc = tokenizer(text)
        return Prompt(first, second, tuple(enc["input_ids"]), (True,) * len(enc["input_ids"]))
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
    except NotImplementedError:
        raise EmonnError("--steer-span activities needs a fast tokenizer (token offsets); "
                         "use --steer-span prompt") from None
    # a token is an activity token if its characters overlap an activity's
    steered = [any(lo < end and hi > begin for begin, end in spans) for lo, hi in enc["offset_mapping"]]
    return Prompt(first, second, tuple(enc["input_ids"]), tuple(steered))


def left_pad(rows: list[tuple], value) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences left-padded with `value` `(n, longest)` and the mask of real entries."""
    width = max(len(r) for r in rows)
    padded = torch.tensor([[value] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return padded, mask


def common_prefix(prompts: list[Prompt]) -> int:
    """How many leading tokens (ids and steering marks alike) every prompt shares; at least one stays."""
    shortest = min(len(p.ids) for p in prompts)
    for n in range(shortest - 1):
        if len({(p.ids[n], p.steered[n]) for p in prompts}) > 1:
            return n
    return shortest - 1


def cache_argument(model: models.Model) -> str:
    """The forward keyword of the key-value cache (`cache` in recent transformers, `past_key_values` before)."""
    return "cache" if "cache" in inspect.signature(model.lm._module.forward).parameters else "past_key_values"


def can_share_prefix(model: models.Model, prompts: list[Prompt]) -> bool:
    """A shared key-value cache is local only, and needs every prompt inside a sliding attention window."""
    config = model.lm._module.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    return not model.remote and (window is None or max(len(p.ids) for p in prompts) <= window)


def prefill(model: models.Model, prompt: Prompt, length: int, deltas: torch.Tensor, layer: int):
    """The key-value cache `(n_conditions rows)` of the first `length` tokens of `prompt`, each row steered by
    its condition's delta on the steered tokens (local only: the cache object is filled in place)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.lm._module.config)
    ids = torch.tensor([prompt.ids[:length]] * len(deltas))
    marks = torch.tensor([prompt.steered[:length]] * len(deltas))
    block = model.layer(layer)
    with torch.no_grad(), model.trace({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                       cache_argument(model): cache, "use_cache": True, "logits_to_keep": 1}):
        steer.add(block.output, deltas[:, None, :] * marks[..., None].float())
    return cache


def steered_logprobs(model: models.Model, prompts: list[Prompt], deltas: torch.Tensor, layer: int, start: int = 0,
                     prefix=None) -> torch.Tensor:
    """Next-token log-probabilities `(n_prompts * n_conditions, vocab)`, row i * n_conditions + c holding
    prompt i under condition c (`deltas` `(n_conditions, d)`, added at `layer` on the steered tokens).

    With a `prefix` cache of the prompts' first `start` tokens (`prefill`), each row runs only its own tokens."""
    from transformers import DynamicCache

    n_cond = len(deltas)
    condition = torch.arange(n_cond).repeat(len(prompts))
    ids, mask = left_pad([p.ids[start:] for p in prompts], model.tokenizer.pad_token_id)
    marks, _ = left_pad([p.steered[start:] for p in prompts], False)
    ids, mask, marks = (x.repeat_interleave(n_cond, 0) for x in (ids, mask, marks))
    enc = {"input_ids": ids, "attention_mask": torch.cat([torch.ones(len(ids), start, dtype=mask.dtype), mask], 1),
           # explicit positions: left padding (and the cached prefix) shift them, and any extra key in the
           # encoding stops nnsight from supplying them
           "position_ids": (start + mask.cumsum(1) - 1).clamp(min=0), "logits_to_keep": 1, "use_cache": bool(start)}
    if start:
        enc[cache_argument(model)] = DynamicCache(ddp_cache_data=[(c.keys[condition], c.values[condition])
                                                                  for c in prefix.layers],
                                                  config=model.lm._module.config)
    return steer.next_token_logprobs(model, enc, layer=layer, delta=deltas[condition], mask=marks)


def preferences(model: models.Model, prompts: list[Prompt], deltas: torch.Tensor, layer: int,
                letters: tuple[list[int], list[int]], *, share_prefix: bool) -> np.ndarray:
    """Per prompt and condition: the log-odds of answering A rather than B, and the probability of either
    letter at all: `(n_prompts, n_conditions, 2)`. Forward passes hold prompts of similar length (little
    padding); with `share_prefix` the prompts' common beginning runs once (`prefill`)."""
    start = common_prefix(prompts) if share_prefix else 0
    prefix = prefill(model, prompts[0], start, deltas, layer) if start else None
    per_forward = max(1, (ROWS_SHARED_PREFIX if share_prefix else ROWS_FULL_PROMPT) // len(deltas))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids))
    out = np.empty((len(prompts), len(deltas), 2))
    for begin in range(0, len(order), per_forward):
        chunk = order[begin:begin + per_forward]
        logprobs = steered_logprobs(model, [prompts[i] for i in chunk], deltas, layer, start, prefix)
        a, b = (torch.logsumexp(logprobs[:, ids], dim=-1) for ids in letters)
        out[chunk] = torch.stack([a - b, a.exp() + b.exp()], -1).reshape(len(chunk), len(deltas), 2).double().numpy()
    return out


def markdown(frame: pl.DataFrame) -> str:
    """A polars frame as a GitHub markdown table (floats to 4 significant digits)."""
    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()])


def reading(deltas: pl.DataFrame, diagnostics: pl.DataFrame, control: bool) -> list[str]:
    """Two cautions in numbers: emotion shifts against the random direction's, and how far the baseline's answers
    follow the activities rather than the position."""
    bt = deltas.filter(pl.col("metric") == "bt")
    largest = bt.group_by("condition", maintain_order=True).agg(pl.col("delta").abs().max())
    sizes = dict(zip(largest["condition"], largest["delta"]))
    lines = []
    if control and "random" in sizes:
        emotions = {c: v for c, v in sizes.items() if c != "random"}
        lines.append("Against the control: the largest |category change| (BT) is " + ", ".join(
            f"{c} {v:.1f}" for c, v in emotions.items()) + f", random direction {sizes['random']:.1f}. A change is "
            "emotion-specific only where it exceeds what a random direction of the same norm does.")
    consistent = diagnostics.filter(pl.col("condition") == "baseline")["order_consistent"]
    if len(consistent):
        lines.append(f"Unsteered, {consistent[0]:.0%} of pairs get the same activity chosen in both orders (the rest "
                     "follow the position); the lower this is, the less the ratings say about the model's preferences.")
    return lines


@click.command(cls=runs.Command)
@click.option("--model", "model_name", default=models.DEFAULT_MODEL, show_default=True,
              help="Embedded alias, HF repo id, model folder or .gguf file.")
@click.option("--remote", is_flag=True, help="Run the traces on NDIF (needs NDIF_API_KEY).")
@click.option("--emotions", default="angry,calm", show_default=True, help="Emotion vectors to steer with.")
@click.option("--alpha", default=0.5, show_default=True, type=float,
              help="Steering strength, as a fraction of the layer's mean residual norm on the stories.")
@click.option("--layer", type=int, default=None, help=f"Steering layer (default: depth {DEPTH}).")
@click.option("--steer-span", type=click.Choice(SPANS), default="activities", show_default=True,
              help="Steer the activity tokens only, or every prompt token.")
@click.option("--pairs", "n_pairs", type=int, default=None,
              help="Sample this many pairs of activities (each asked in both orders; default: all).")
@click.option("--control/--no-control", default=True, show_default=True,
              help="Add a random direction of the same norm as a control condition.")
@click.option("--k", "k_factor", default=16.0, show_default=True, help="Elo K-factor.")
@click.option("--orderings", default=100, show_default=True, help="Random match orderings Elo averages over.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples of the pairs.")
@click.option("--permutations", default=1000, show_default=True, help="Permutations per steered condition.")
@click.option("--chat/--no-chat", default=None, help="Use the chat template (default: if the model has one).")
@click.option("--behaviours", "behaviours_path", type=click.Path(), default=None,
              help="A behaviours CSV (category, activity) instead of the shipped one.")
@click.option("--corpus", "corpus_path", type=click.Path(), default=None,
              help="A stories file (for the emotion vectors) instead of the shipped one.")
@click.option("--neutral", "neutral_path", type=click.Path(), default=None,
              help="A neutral-texts file (their top PCs are projected out of the vectors) instead of the shipped one.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="outputs", show_default=True, type=click.Path())
def main(model_name: str, remote: bool, emotions: str, alpha: float, layer: int | None, steer_span: str,
         n_pairs: int | None, control: bool, k_factor: float, orderings: int, bootstrap: int, permutations: int,
         chat: bool | None, behaviours_path: str | None, corpus_path: str | None, neutral_path: str | None, seed: int,
         out: str) -> None:
    started = time.perf_counter()
    config = {k: v for k, v in locals().items() if k != "started"}
    emotion_list = list(dict.fromkeys(e.strip() for e in emotions.split(",") if e.strip()))
    if not emotion_list:
        raise EmonnError("--emotions needs at least one emotion, e.g. angry,calm")
    if alpha <= 0 or orderings < 1 or bootstrap < 1 or permutations < 1:
        raise EmonnError("--alpha must be > 0, and --orderings, --bootstrap, --permutations at least 1")
    behaviours = (corpus.check_behaviours(pl.read_csv(behaviours_path), behaviours_path) if behaviours_path
                  else corpus.behaviours())
    activities, categories = behaviours["activity"].to_list(), behaviours["category"].to_list()
    category_names = list(dict.fromkeys(categories))
    n = len(activities)
    all_pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if n_pairs is not None and not 1 <= n_pairs <= len(all_pairs):
        raise EmonnError(f"--pairs must be between 1 and {len(all_pairs)} (all pairs of {n} activities)")
    rng = np.random.default_rng(seed)
    pairs = (all_pairs if n_pairs is None
             else [all_pairs[i] for i in np.sort(rng.choice(len(all_pairs), n_pairs, replace=False))])
    stories = corpus.load(corpus_path, langs=["en"])
    missing = sorted(set(emotion_list) - set(stories["emotion"]))
    if missing:
        raise EmonnError(f"emotion '{missing[0]}' has no English stories in the corpus")
    neutral = corpus.load(neutral_path, neutral=True, langs=["en"])
    model = models.load(model_name, remote=remote)
    layer = model.check_layers([round(DEPTH * (model.n_layers - 1)) if layer is None else layer])[0]
    chat = bool(model.tokenizer.chat_template) if chat is None else chat
    run = runs.Run.create(out, "elo", model.slug, {**config, "layer": layer, "chat": chat, "pairs": len(pairs),
                                                    "corpus": corpus.digest(stories)})
    timings = {}

    # ---- steering deltas: baseline (zero), each emotion vector, a random direction; alpha * mean‖h‖
    tick = time.perf_counter()
    cache = runs.activation_cache(out, model, "mean", extract.START)
    vectors, _ = extract.emotion_vectors(model, stories, neutral=neutral, layers=[layer], cache=cache)
    # the mean norm is stable: two stories per emotion measure it well, at a sixth of the cost of all
    sample = stories.group_by("emotion", maintain_order=True).head(2)["text"].to_list()
    norm = steer.mean_norms(model, sample, [layer])[layer]
    conditions = ["baseline", *emotion_list, *(["random"] if control else [])]
    directions = [np.zeros(model.d_model), *(vectors.at(layer)[vectors.emotions.index(e)] for e in emotion_list)]
    directions += list(steer.random_directions(1, model.d_model, seed=seed)) if control else []
    deltas = steer.deltas(np.stack(directions), np.array([0.0] + [alpha] * (len(conditions) - 1)), norm)
    timings["vectors and norm"] = time.perf_counter() - tick

    # ---- preferences: one unit per first activity, every condition in the same forward passes
    tick = time.perf_counter()
    letters = letter_ids(model.tokenizer)
    ordered = [(i, j) for i, j in pairs] + [(j, i) for i, j in pairs]
    prompts = [build_prompt(model.tokenizer, activities, i, j, chat=chat, span=steer_span) for i, j in ordered]
    share = can_share_prefix(model, prompts)
    digest = hashlib.sha1(deltas.numpy().tobytes()).hexdigest()[:10]
    units = []
    by_first = {i: [p for p in prompts if p.first == i] for i in range(n)}
    todo = [(i, group) for i, group in by_first.items() if group]
    for i, group in tqdm(todo, desc=f"preferences {model.slug} ({len(conditions)} conditions)", unit="activity"):
        key = json.dumps([model.name, layer, steer_span, conditions, digest, letters, [p.ids for p in group],
                          [p.steered for p in group]])
        path = run.folder / "units" / f"a{i:03d}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.parquet"
        if not path.exists():
            values = preferences(model, group, deltas, layer, letters, share_prefix=share)
            unit = pl.DataFrame({"first": np.repeat([p.first for p in group], len(conditions)),
                                 "second": np.repeat([p.second for p in group], len(conditions)),
                                 "condition": conditions * len(group),
                                 "logodds": values[..., 0].ravel(), "letter_mass": values[..., 1].ravel()})
            buffer = io.BytesIO()
            unit.write_parquet(buffer)
            runs.atomic_write(path, buffer.getvalue())
        units.append(pl.read_parquet(path))
    answers = pl.concat(units).with_columns(
        first_activity=pl.col("first").map_elements(activities.__getitem__, return_dtype=pl.String),
        second_activity=pl.col("second").map_elements(activities.__getitem__, return_dtype=pl.String))
    run.table("answers", answers)
    timings["preferences"] = time.perf_counter() - tick

    # ---- both orders -> one soft outcome per pair: P(i preferred to j) = sigmoid(mean of the two log-odds)
    tick = time.perf_counter()
    i_first = pl.DataFrame({"first": [i for i, _ in pairs], "second": [j for _, j in pairs]})
    swapped = answers.select(first="second", second="first", condition="condition", logodds_back="logodds")
    pair_frame = (i_first.join(answers.select("first", "second", "condition", "logodds"), on=["first", "second"])
                  .join(swapped, on=["first", "second", "condition"])
                  .with_columns(preference=(pl.col("logodds") - pl.col("logodds_back")) / 2,
                                position_bias=(pl.col("logodds") + pl.col("logodds_back")) / 2))
    pair_frame = pair_frame.with_columns(p_first=1 / (1 + (-pl.col("preference")).exp()))
    run.table("pairs", pair_frame)
    first, second = np.array([i for i, _ in pairs]), np.array([j for _, j in pairs])
    outcome = np.stack([i_first.join(pair_frame.filter(pl.col("condition") == c), on=["first", "second"],
                                     how="left", maintain_order="left")["p_first"].to_numpy() for c in conditions])
    membership = np.array([[c == name for c in categories] for name in category_names], dtype=float)
    membership /= membership.sum(1, keepdims=True)  # (n_categories, n): a category's mean over its activities

    def rate(scores: np.ndarray, f: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Outcomes `(r, n_pairs)` of pairs f, s -> ratings `(r, 2, n)`: Bradley-Terry in Elo points, Elo minus
        1000 (every row plays the same Elo orderings, so differences between rows carry less ordering noise)."""
        return np.stack([stats.bradley_terry_batch(f, s, n, scores) * ELO_POINTS,
                         stats.elo_batch(f, s, scores, n, k=k_factor, n_orderings=REPLICATE_ORDERINGS, seed=seed)
                         - 1000], 1)

    def replicate(idx: np.ndarray) -> np.ndarray:
        """Resampled pairs `(r, n_pairs)` -> per replicate: activity ratings, category ratings, category deltas."""
        rated = np.stack([rate(w[idx], first[idx], second[idx]) for w in outcome], 1)  # (r, n_conditions, 2, n)
        by_category = rated @ membership.T
        return np.concatenate([rated.reshape(len(idx), -1), by_category.reshape(len(idx), -1),
                               (by_category[:, 1:] - by_category[:, :1]).reshape(len(idx), -1)], 1)

    boot = stats.bootstrap_ci(replicate, np.zeros(len(pairs)), n_boot=bootstrap, seed=seed, vectorized=True)
    n_cond, n_cat = len(conditions), len(category_names)
    sizes = [n_cond * 2 * n, n_cond * 2 * n_cat, (n_cond - 1) * 2 * n_cat]
    (act_low, cat_low, delta_low), (act_high, cat_high, delta_high) = (
        np.split(bound, np.cumsum(sizes)[:-1]) for bound in (boot.low, boot.high))
    # the estimates: the same Newton fit as the replicates (bradley_terry's optimum, to more digits), and Elo
    # over all --orderings
    estimate = np.stack([stats.bradley_terry_batch(first, second, n, outcome) * ELO_POINTS,
                         stats.elo_batch(first, second, outcome, n, k=k_factor, n_orderings=orderings, seed=seed)
                         - 1000], 1)  # (n_conditions, 2, n)
    by_category = estimate @ membership.T

    # permutation test per steered condition: swap its outcome with the baseline's in a random half of pairs
    def category_shift(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Baseline-like and steered-like outcomes `(r, n_pairs)` each -> category deltas `(r, 2 * n_categories)`."""
        both = rate(np.concatenate([xs, ys]), first, second) @ membership.T
        return (both[len(xs):] - both[:len(xs)]).reshape(len(xs), -1)

    tests = [stats.paired_permutation_test(category_shift, outcome[0], outcome[c], n_permutations=permutations,
                                           seed=seed) for c in tqdm(range(1, n_cond), desc="permutation tests")]
    timings["statistics"] = time.perf_counter() - tick

    metrics = ("bt", "elo")
    ratings = pl.DataFrame([
        {"condition": c, "activity": activities[a], "category": categories[a], "metric": metric,
         "rating": float(estimate[ci, mi, a]), "ci_low": float(act_low.reshape(n_cond, 2, n)[ci, mi, a]),
         "ci_high": float(act_high.reshape(n_cond, 2, n)[ci, mi, a])}
        for ci, c in enumerate(conditions) for mi, metric in enumerate(metrics) for a in range(n)])
    run.table("ratings", ratings)
    category_ratings = pl.DataFrame([
        {"condition": c, "category": name, "metric": metric, "rating": float(by_category[ci, mi, g]),
         "ci_low": float(cat_low.reshape(n_cond, 2, n_cat)[ci, mi, g]),
         "ci_high": float(cat_high.reshape(n_cond, 2, n_cat)[ci, mi, g])}
        for ci, c in enumerate(conditions) for mi, metric in enumerate(metrics) for g, name in enumerate(category_names)])
    run.table("category_ratings", category_ratings)
    rows = []
    for ci, c in enumerate(conditions[1:]):
        for mi, metric in enumerate(metrics):
            for g, name in enumerate(category_names):
                j = mi * n_cat + g
                rows.append({"condition": c, "category": name, "metric": metric,
                             "delta": float(by_category[ci + 1, mi, g] - by_category[0, mi, g]),
                             "ci_low": float(delta_low.reshape(n_cond - 1, 2, n_cat)[ci, mi, g]),
                             "ci_high": float(delta_high.reshape(n_cond - 1, 2, n_cat)[ci, mi, g]),
                             "p": float(tests[ci].p[j])})
    deltas_frame = pl.DataFrame(rows)
    corrected = []
    for metric in metrics:  # one FDR family per rating method: every steered condition x category
        part = deltas_frame.filter(pl.col("metric") == metric)
        fdr = stats.correct(part["p"].to_numpy())
        corrected.append(part.with_columns(p_fdr=pl.Series(fdr.p_adjusted), significant=pl.Series(fdr.reject)))
    deltas_frame = pl.concat(corrected)
    run.table("category_deltas", deltas_frame)

    # ---- figures
    names = {"bt": "Bradley-Terry", "elo": "Elo"}
    run.figure("category_deltas", alt.vconcat(*[alt.hconcat(*[
        plots.bars(deltas_frame.filter((pl.col("metric") == metric) & (pl.col("condition") == c)), x="category",
                   y="delta", error=("ci_low", "ci_high"), title=f"{names[metric]}: {c} − baseline (Elo points)")
        for c in conditions[1:]]).resolve_scale(y="shared") for metric in metrics]))
    run.figure("baseline_categories", alt.hconcat(*[
        plots.bars(category_ratings.filter((pl.col("condition") == "baseline") & (pl.col("metric") == metric)),
                   x="category", y="rating", error=("ci_low", "ci_high"),
                   title=f"Unsteered {names[metric]} rating per category (Elo points, mean 0)")
        for metric in metrics]))
    activity_shift = (ratings.filter(pl.col("metric") == "elo").select("condition", "activity", "rating")
                      .join(ratings.filter((pl.col("metric") == "elo") & (pl.col("condition") == "baseline"))
                            .select("activity", base="rating"), on="activity")
                      .filter(pl.col("condition") != "baseline")
                      .with_columns(delta=pl.col("rating") - pl.col("base")))
    run.figure("activity_deltas", plots.heatmap(activity_shift, x="condition", y="activity", color="delta",
                                                sort_x=conditions[1:], sort_y=activities, size=640,
                                                title="Elo change per activity (steered − baseline)"))

    # ---- report
    elapsed = time.perf_counter() - started
    diagnostics = (pair_frame.group_by("condition").agg(
        position_bias=pl.col("position_bias").mean(),
        order_consistent=((pl.col("logodds") > 0) != (pl.col("logodds_back") > 0)).mean())
        .join(answers.group_by("condition").agg(letter_mass=pl.col("letter_mass").mean(),
                                                answers_a=(pl.col("logodds") > 0).mean()), on="condition")
        .sort(pl.col("condition").replace_strict(conditions, list(range(n_cond)))))
    table = deltas_frame.with_columns(
        ci=pl.format("[{}, {}]", pl.col("ci_low").round(1), pl.col("ci_high").round(1)),
        delta=pl.col("delta").round(1), sig=pl.when(pl.col("significant")).then(pl.lit("*")).otherwise(pl.lit("")))
    wide = (table.filter(pl.col("metric") == "elo").select("condition", "category", elo="delta", elo_ci="ci",
                                                           elo_p="p", elo_p_fdr="p_fdr", elo_sig="sig")
            .join(table.filter(pl.col("metric") == "bt").select("condition", "category", bt="delta", bt_ci="ci",
                                                                bt_p="p", bt_p_fdr="p_fdr", bt_sig="sig"),
                  on=["condition", "category"], maintain_order="left"))
    baseline = category_ratings.filter(pl.col("condition") == "baseline").with_columns(
        ci=pl.format("[{}, {}]", pl.col("ci_low").round(1), pl.col("ci_high").round(1)), rating=pl.col("rating").round(1))
    base_wide = (baseline.filter(pl.col("metric") == "elo").select("category", elo="rating", elo_ci="ci")
                 .join(baseline.filter(pl.col("metric") == "bt").select("category", bt="rating", bt_ci="ci"),
                       on="category", maintain_order="left"))
    top = ratings.filter((pl.col("condition") == "baseline") & (pl.col("metric") == "bt")).sort("rating")
    significant = wide.filter((pl.col("elo_sig") == "*") | (pl.col("bt_sig") == "*"))
    lines = [
        f"# Behaviour preferences under emotion steering: {model.name}", "",
        f"{n} activities in {n_cat} categories; {len(pairs)} pairs x 2 orders = {len(prompts)} prompts"
        f"{' (chat template)' if chat else ''} x {n_cond} conditions ({', '.join(conditions)}). Steering: layer "
        f"{layer} (depth {model.depth(layer):.2f}), alpha {alpha:g} x mean‖h‖ {norm:.1f} on the "
        f"{'activity tokens' if steer_span == 'activities' else 'whole prompt'}; denoised emotion vectors from "
        f"{stories.height} English stories (corpus {corpus.digest(stories)})"
        f"{'; the control is a random direction of the same norm' if control else ''}. Wall time {elapsed / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}).", "",
        f"Prompt: “{QUESTION}”, the answer begun with “{ANSWER_START}”; answer = next-token log-odds of A vs B (token ids {letters[0]} vs {letters[1]}, "
        "log-sum-exp over each letter's spellings). The two orders of a pair are averaged in log-odds (which "
        "cancels a constant pull towards A or B): P(i preferred to j) = sigmoid((m_ij − m_ji) / 2). Ratings: "
        f"Bradley–Terry maximum likelihood on these soft outcomes (log-strengths x 400/ln 10, in Elo points, mean 0) "
        f"and Elo (K = {k_factor:g}, start 1000, shown minus 1000, averaged over {orderings} random orderings). "
        "A category's rating is the mean of its activities'.", "",
        f"CIs: 95% percentile bootstrap over pairs ({bootstrap} resamples; Elo replicates average "
        f"{REPLICATE_ORDERINGS} orderings shared by all conditions). p: permutation test, the baseline and steered "
        f"outcomes of a pair swapped at random ({permutations} permutations, two-sided, p = (k + 1)/(n + 1)); "
        "p_fdr: Benjamini–Hochberg over every steered condition x category, per rating method; * = significant at "
        "FDR 0.05.", "",
        "## Per-category change under steering (steered − baseline, Elo points)", "",
        markdown(wide), "",
        "Significant after FDR: " + ("; ".join(f"{r['condition']} {r['category']} (Elo {r['elo']:+.1f}, "
                                               f"BT {r['bt']:+.1f})" for r in significant.iter_rows(named=True))
                                     or "none") + ".", "",
        *reading(deltas_frame, diagnostics, control), "",
        "## Unsteered ratings per category", "", markdown(base_wide), "",
        "Most preferred (Bradley–Terry): " + ", ".join(f"{r['activity']} ({r['rating']:+.0f})"
                                                       for r in top.reverse().head(5).iter_rows(named=True))
        + ". Least: " + ", ".join(f"{r['activity']} ({r['rating']:+.0f})" for r in top.head(5).iter_rows(named=True))
        + ".", "",
        "## Answer diagnostics", "",
        "position_bias: mean (m_ij + m_ji)/2, the log-odds pull towards A whatever the activities; "
        "order_consistent: share of pairs where both orders pick the same activity; letter_mass: mean P(A) + P(B) "
        "over the vocabulary (how much the model answers with a letter at all); answers_a: share of prompts "
        "answered A.", "", markdown(diagnostics), "",
        "## Files", "",
        "results/answers.parquet (every prompt x condition), pairs.parquet (soft outcomes), ratings.parquet "
        "(per activity, with CIs), category_ratings.parquet, category_deltas.parquet; figures/category_deltas, "
        "baseline_categories, activity_deltas (HTML + PNG); units/ (cached answers per first activity).",
    ]
    run.report("\n".join(lines) + "\n")
    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_width_chars=140):
        click.echo(f"\nCategory change in Elo points, steered − baseline ({model.name}, layer {layer}, alpha {alpha:g}; "
                   f"* FDR < 0.05):\n" + str(wide.select("condition", "category", "elo", "elo_ci", "elo_sig", "bt",
                                                         "bt_ci", "bt_sig")))
    click.echo(f"{len(prompts)} prompts x {n_cond} conditions; {elapsed / 60:.1f} min; wrote {run.folder}/ "
               "(report.md, results/, figures/)")


if __name__ == "__main__":
    main()
