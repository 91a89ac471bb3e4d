"""Does emotion steering shift which behaviours the model prefers? A/B preferences, Bradley-Terry and Elo.

    python studies/elo.py                       # embedded SmolLM2: 4,032 prompts x 4 conditions
    python studies/elo.py --model meta-llama/Llama-3.1-8B-Instruct --remote   # the same on NDIF

Every pair of activities in both orders, "Would you prefer to (A) ... or (B) ...?", answered by the next-token
log-odds of A against B, unsteered and steered (each emotion vector, a random direction) on the activity tokens;
Bradley-Terry and Elo ratings per condition, steered minus baseline per category (studies/elo.md: the method).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import altair as alt
import click
import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from emonn import EmonnError, corpus, models, plots, stats, steer, study

#: The question, with the activities in its middle; the answer is read as the next token.
QUESTION = "Answer with A or B only. Would you prefer to (A) {a} or (B) {b}?"
#: The answer's first character, written for the model: its next token is then the letter. On SmolLM2 this lifts
#: P(A) + P(B) from about 0.3 (it often starts "(" or "I ...") to 0.96, and the pull towards "A" from 3 to 0.6.
ANSWER_START = "("
DEPTH = 0.5  # default steering layer, as a relative depth
ELO_POINTS = 400 / math.log(10)  # a Bradley-Terry log-strength difference in Elo points
REPLICATE_ORDERINGS = 10  # Elo orderings per bootstrap / permutation replicate (the estimates use --orderings)
SPANS = ("activities", "prompt")
METRICS = {"bt": "Bradley-Terry", "elo": "Elo"}  # rating methods, in the order of every table


#: One ordered pair: activity `first` as (A), `second` as (B); token ids and which tokens are steered.
Prompt = NamedTuple("Prompt", [("first", int), ("second", int), ("ids", tuple), ("steered", tuple)])


def build_prompt(model: models.Model, activities: list[str], first: int, second: int, chat: bool, span: str) -> Prompt:
    """The question about two activities as the model reads it, up to the answer's first character."""
    a, b = activities[first], activities[second]
    question = QUESTION.format(a=a, b=b)
    text = (model.chat(question) if chat else f"Question: {question}\nAnswer: ") + ANSWER_START
    at_a = text.index(question) + QUESTION.index("{a}")  # where each activity's characters begin in `text`
    at_b = at_a + len(a) + QUESTION.index("{b}") - QUESTION.index("{a}") - len("{a}")
    spans = [(at_a, at_a + len(a)), (at_b, at_b + len(b))]
    if span == "prompt":
        return Prompt(first, second, tuple(ids := model.tokenizer(text)["input_ids"]), (True,) * len(ids))
    ids, steered = steer.token_marks(model.tokenizer, text, spans)  # a token overlapping an activity is steered
    return Prompt(first, second, tuple(ids), tuple(steered))


def preferences(model: models.Model, prompts: list[Prompt], deltas: torch.Tensor, layer: int,
                letters: list[list[int]]) -> np.ndarray:
    """Per prompt and condition (a row of `deltas`): log-odds of A against B, and P(A) + P(B): `(n, n_cond, 2)`."""
    logprobs = steer.next_token_logprobs_per_condition(model, [p.ids for p in prompts], deltas, layer=layer,
                                                       marks=[p.steered for p in prompts], tokens=letters)
    a, b = logprobs.unbind(-1)
    return torch.stack([a - b, a.exp() + b.exp()], -1).double().numpy()


@study.command("elo", models=(models.DEFAULT_MODEL,), langs="en")
@click.option("--emotions", default="angry,calm", show_default=True, help="Emotion vectors to steer with.")
@click.option("--alpha", default=0.5, show_default=True, help="Steering strength, a fraction of the mean ‖h‖.")
@click.option("--layer", type=int, default=None, help=f"Steering layer (default: depth {DEPTH}).")
@click.option("--steer-span", type=click.Choice(SPANS), default="activities", show_default=True,
              help="Steer the activity tokens only, or every prompt token.")
@click.option("--pairs", type=int, default=None, help="Sample this many pairs of activities (default: all).")
@click.option("--control/--no-control", default=True, show_default=True, help="Add a same-norm random direction.")
@click.option("--k", default=16.0, show_default=True, help="Elo K-factor.")
@click.option("--orderings", default=100, show_default=True, help="Random match orderings Elo averages over.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples of the pairs.")
@click.option("--permutations", default=1000, show_default=True, help="Permutations per steered condition.")
@click.option("--chat/--no-chat", default=None, help="Use the chat template (default: if the model has one).")
@click.option("--behaviours", type=click.Path(), help="A behaviours CSV (category, activity) to use instead.")
def main(run: study.Run, emotions: str, alpha: float, layer: int | None, steer_span: str, pairs: int | None,
         control: bool, k: float, orderings: int, bootstrap: int, permutations: int, chat: bool | None,
         behaviours: str | None) -> None:
    emotion_list = list(dict.fromkeys(e.strip() for e in emotions.split(",") if e.strip()))
    if not emotion_list:
        raise EmonnError("--emotions needs at least one emotion, e.g. angry,calm")
    if alpha <= 0 or orderings < 1 or bootstrap < 1 or permutations < 1:
        raise EmonnError("--alpha must be > 0, and --orderings, --bootstrap, --permutations at least 1")
    table = corpus.check_behaviours(pl.read_csv(behaviours), behaviours) if behaviours else corpus.behaviours()
    activities, categories = table["activity"].to_list(), table["category"].to_list()
    category_names = list(dict.fromkeys(categories))
    n, n_cat = len(activities), len(category_names)
    all_pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if pairs is not None and not 1 <= pairs <= len(all_pairs):
        raise EmonnError(f"--pairs must be between 1 and {len(all_pairs)} (all pairs of {n} activities)")
    chosen = all_pairs if pairs is None else [all_pairs[i] for i in np.sort(
        np.random.default_rng(run.seed).choice(len(all_pairs), pairs, replace=False))]
    stories = run.stories("en")
    if missing := sorted(set(emotion_list) - set(stories["emotion"])):
        raise EmonnError(f"emotion '{missing[0]}' has no English stories in the corpus")
    model = run.model
    layer = model.check_layers([round(DEPTH * (model.n_layers - 1)) if layer is None else layer])[0]
    chat = model.has_chat if chat is None else chat
    run.note(layer=layer, chat=chat, pairs=len(chosen), corpus_digest=corpus.digest(stories))

    # ---- steering deltas: baseline (zero), each emotion vector, a random direction; alpha * mean‖h‖
    vectors, _ = run.vectors(model, "en", layers=[layer])
    # the mean norm is stable: two stories per emotion measure it well, at a sixth of the cost of all
    sample = stories.group_by("emotion", maintain_order=True).head(2)["text"].to_list()
    norm = steer.mean_norms(model, sample, [layer], batch_tokens=run.batch_tokens)[layer]
    conditions = ["baseline", *emotion_list, *(["random"] if control else [])]
    n_cond = len(conditions)
    directions = [np.zeros(model.d_model), *(vectors.at(layer)[vectors.emotions.index(e)] for e in emotion_list)]
    directions += list(steer.random_directions(1, model.d_model, seed=run.seed)) if control else []
    deltas = steer.deltas(np.stack(directions), np.array([0.0] + [alpha] * (n_cond - 1)), norm)
    timings = {"vectors and norm": run.elapsed}  # (the model's loading included)

    # ---- preferences: one unit per first activity, every condition in the same forward passes
    letters = steer.answer_ids(model.tokenizer, ["A", "B"])  # each letter's spellings, e.g. "A" and " A"
    ordered = [(i, j) for i, j in chosen] + [(j, i) for i, j in chosen]
    prompts = [build_prompt(model, activities, i, j, chat=chat, span=steer_span) for i, j in ordered]

    def answer(group: list[Prompt]) -> pl.DataFrame:
        values = preferences(model, group, deltas, layer, letters)
        return pl.DataFrame({"first": np.repeat([p.first for p in group], n_cond), "second": np.repeat(
            [p.second for p in group], n_cond), "condition": conditions * len(group),
            "logodds": values[..., 0].ravel(), "letter_mass": values[..., 1].ravel()})

    by_first = {i: group for i in range(n) if (group := [p for p in prompts if p.first == i])}
    units = [run.unit([model.name, layer, steer_span, conditions, deltas.tolist(), letters, group],
                      functools.partial(answer, group), name=f"a{i:03d}")
             for i, group in tqdm(by_first.items(), desc=f"preferences ({n_cond} conditions)", unit="activity")]
    answers = pl.concat(units).with_columns(**{f"{c}_activity": pl.col(c).replace_strict(
        list(range(n)), activities, return_dtype=pl.String) for c in ("first", "second")})
    run.table("answers", answers)
    timings["preferences"] = run.elapsed - sum(timings.values())

    # ---- both orders -> one soft outcome per pair: P(i preferred to j) = sigmoid(mean of the two log-odds)
    i_first = pl.DataFrame({"first": [i for i, _ in chosen], "second": [j for _, j in chosen]})
    swapped = answers.select(first="second", second="first", condition="condition", logodds_back="logodds")
    pair_frame = (i_first.join(answers.select("first", "second", "condition", "logodds"), on=["first", "second"])
                  .join(swapped, on=["first", "second", "condition"])
                  .with_columns(preference=(pl.col("logodds") - pl.col("logodds_back")) / 2,
                                position_bias=(pl.col("logodds") + pl.col("logodds_back")) / 2)
                  .with_columns(p_first=1 / (1 + (-pl.col("preference")).exp())))
    run.table("pairs", pair_frame)
    first, second = np.array([i for i, _ in chosen]), np.array([j for _, j in chosen])
    outcome = np.stack([i_first.join(pair_frame.filter(pl.col("condition") == c), on=["first", "second"],
                                     how="left", maintain_order="left")["p_first"].to_numpy() for c in conditions])
    membership = np.array([[c == name for c in categories] for name in category_names], dtype=float)
    membership /= membership.sum(1, keepdims=True)  # (n_categories, n): a category's mean over its activities

    def rate(scores: np.ndarray, f: np.ndarray, s: np.ndarray, n_orderings: int = REPLICATE_ORDERINGS) -> np.ndarray:
        """Outcomes `(r, n_pairs)` of pairs f, s -> ratings `(r, 2, n)`: Bradley-Terry in Elo points, Elo - 1000."""
        return np.stack([stats.bradley_terry_batch(f, s, n, scores) * ELO_POINTS,
                         stats.elo_batch(f, s, scores, n, k=k, n_orderings=n_orderings, seed=run.seed) - 1000], 1)

    def replicate(idx: np.ndarray) -> np.ndarray:
        """Resampled pairs `(r, n_pairs)` -> per replicate: activity ratings, category ratings, category deltas."""
        rated = np.stack([rate(w[idx], first[idx], second[idx]) for w in outcome], 1)  # (r, n_conditions, 2, n)
        by_category = rated @ membership.T
        return np.concatenate([rated.reshape(len(idx), -1), by_category.reshape(len(idx), -1),
                               (by_category[:, 1:] - by_category[:, :1]).reshape(len(idx), -1)], 1)

    boot = stats.bootstrap_ci(replicate, np.zeros(len(chosen)), n_boot=bootstrap, seed=run.seed, vectorized=True)
    (act_low, cat_low, delta_low), (act_high, cat_high, delta_high) = (
        np.split(bound, np.cumsum([n_cond * 2 * n, n_cond * 2 * n_cat])) for bound in (boot.low, boot.high))
    # the estimates: the replicates' Newton fit (bradley_terry's optimum, to more digits), Elo over all --orderings
    estimate = rate(outcome, first, second, orderings)  # (n_conditions, 2, n)
    by_category = estimate @ membership.T

    # permutation test per steered condition: swap its outcome with the baseline's in a random half of pairs
    def category_shift(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Baseline-like and steered-like outcomes `(r, n_pairs)` each -> category deltas `(r, 2 * n_categories)`."""
        both = rate(np.concatenate([xs, ys]), first, second) @ membership.T
        return (both[len(xs):] - both[:len(xs)]).reshape(len(xs), -1)

    tests = [stats.paired_permutation_test(category_shift, outcome[0], outcome[c], n_permutations=permutations,
                                           seed=run.seed) for c in tqdm(range(1, n_cond), desc="permutation tests")]
    timings["statistics"] = run.elapsed - sum(timings.values())

    def rows(values: np.ndarray, low: np.ndarray, high: np.ndarray, names: list[str], key: str, value: str,
             steered: int = 0) -> pl.DataFrame:
        """Estimates `(n_conditions - steered, 2, len(names))`, flat CI bounds -> a row per condition x metric x
        name; `steered=1`: the steered conditions (deltas), with their permutation p-values."""
        c, m, g = np.indices(values.shape).reshape(3, -1)
        return pl.DataFrame({"condition": np.array(conditions[steered:])[c], key: np.array(names)[g],
                             "metric": np.array(list(METRICS))[m], value: values.ravel(), "ci_low": low,
                             "ci_high": high, **({"p": np.concatenate([t.p for t in tests])} if steered else {})})

    ratings = rows(estimate, act_low, act_high, activities, "activity", "rating").with_columns(
        category=pl.col("activity").replace_strict(activities, categories)).select(
        "condition", "activity", "category", "metric", "rating", "ci_low", "ci_high")
    category_ratings = rows(by_category, cat_low, cat_high, category_names, "category", "rating")
    changes = rows(by_category[1:] - by_category[:1], delta_low, delta_high, category_names, "category", "delta", 1)
    # one FDR family per rating method: every steered condition x category
    fdr = {m: stats.correct(changes.filter(pl.col("metric") == m)["p"].to_numpy()) for m in METRICS}
    changes = pl.concat([changes.filter(pl.col("metric") == m).with_columns(
        p_fdr=pl.Series(fdr[m].p_adjusted), significant=pl.Series(fdr[m].reject)) for m in METRICS])
    for name, frame in (("ratings", ratings), ("category_ratings", category_ratings), ("category_deltas", changes)):
        run.table(name, frame)

    # ---- figures
    bars = functools.partial(plots.bars, x="category", error=("ci_low", "ci_high"))
    run.figure("category_deltas", alt.vconcat(*[alt.hconcat(*[
        bars(changes.filter((pl.col("metric") == m) & (pl.col("condition") == c)), y="delta",
             title=f"{METRICS[m]}: {c} − baseline (Elo points)") for c in conditions[1:]]).resolve_scale(y="shared")
        for m in METRICS]))
    run.figure("baseline_categories", alt.hconcat(*[
        bars(category_ratings.filter((pl.col("condition") == "baseline") & (pl.col("metric") == m)), y="rating",
             title=f"Unsteered {METRICS[m]} rating per category (Elo points, mean 0)") for m in METRICS]))
    elo = ratings.filter(pl.col("metric") == "elo").select("condition", "activity", "rating")
    shift = (elo.join(elo.filter(pl.col("condition") == "baseline").select("activity", base="rating"), on="activity")
             .filter(pl.col("condition") != "baseline").with_columns(delta=pl.col("rating") - pl.col("base")))
    run.figure("activity_deltas", plots.heatmap(shift, x="condition", y="activity", color="delta", size=640,
                                                sort_x=conditions[1:], sort_y=activities,
                                                title="Elo change per activity (steered − baseline)"))

    # ---- report
    diagnostics = (pair_frame.group_by("condition").agg(
        position_bias=pl.col("position_bias").mean(),
        order_consistent=((pl.col("logodds") > 0) != (pl.col("logodds_back") > 0)).mean())
        .join(answers.group_by("condition").agg(letter_mass=pl.col("letter_mass").mean(),
                                                answers_a=(pl.col("logodds") > 0).mean()), on="condition")
        .sort(pl.col("condition").replace_strict(conditions, list(range(n_cond)))))

    def wide(frame: pl.DataFrame, value: str, keys: list[str], extra: tuple[str, ...] = ()) -> pl.DataFrame:
        """One row per `keys`, Elo then BT columns: the value rounded to 0.1, its CI and `extra` columns."""
        frame = frame.with_columns(pl.col(value).round(1), ci=pl.format(
            "[{}, {}]", pl.col("ci_low").round(1), pl.col("ci_high").round(1)))
        parts = [frame.filter(pl.col("metric") == m).select(*keys, pl.col(value).alias(m), pl.col("ci").alias(
            f"{m}_ci"), *(pl.col(x).alias(f"{m}_{x}") for x in extra)) for m in ("elo", "bt")]
        return parts[0].join(parts[1], on=keys, maintain_order="left")

    table = wide(changes.with_columns(sig=pl.when("significant").then(pl.lit("*")).otherwise(pl.lit(""))), "delta",
                 ["condition", "category"], ("p", "p_fdr", "sig"))
    largest = changes.filter(pl.col("metric") == "bt").group_by("condition", maintain_order=True).agg(
        pl.col("delta").abs().max())
    run.report(model=model, n=n, n_cat=n_cat, n_prompts=len(prompts), conditions=conditions, norm=norm,
               n_stories=stories.height, timings=timings, question=QUESTION, answer_start=ANSWER_START,
               letters=letters, replicate_orderings=REPLICATE_ORDERINGS, changes=table, largest=dict(largest.rows()),
               baseline=wide(category_ratings.filter(pl.col("condition") == "baseline"), "rating", ["category"]),
               top=ratings.filter((pl.col("condition") == "baseline") & (pl.col("metric") == "bt")).sort("rating"),
               diagnostics=diagnostics)
    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_width_chars=140):
        run.done(f"\nCategory change in Elo points, steered − baseline ({model.name}, layer {layer}, alpha "
                 f"{alpha:g}; * FDR < 0.05):\n{table.drop('elo_p', 'elo_p_fdr', 'bt_p', 'bt_p_fdr')}",
                 f"{len(prompts)} prompts x {n_cond} conditions")


if __name__ == "__main__":
    main()
