"""Does the internal emotion track a number in the prompt?

    python studies/sweep.py                     # SmolLM2: "I just took {X} mg of Tylenol ..." at X = 0..16000 mg
    python studies/sweep.py --template "My dog is {X} years old." --template "..." --values 1,2,4,8,16

Every paraphrase of the template is filled with every value X (rendered as one user turn of the chat template
where the model has one, so the final token is where the assistant starts to answer) and read at its final
token. An emotion's score is the cosine of that reading with the emotion's vector (fitted here on the stories,
neutral-PC denoised) at the layer whose readings classify the stories best (`share.choose_layer`: chosen on
the stories, never on the sweep). Per emotion and X: the mean over paraphrases with a 95% t interval (the
paraphrase is the unit; a bootstrap of 4-5 units undercovers); per paraphrase Spearman's rho of score vs X
(rank-based: the same for log X). Baseline: the same sweep scored with vectors fitted after permuting the
emotion labels across the stories (`--shuffles` seeds), which keeps everything but the labels.
Writes outputs/sweep/<model>/ (config.json, results/*.parquet, figures/, vectors/, report.md).
"""

from __future__ import annotations

import dataclasses

import altair as alt
import click
import numpy as np
import polars as pl
from scipy import stats as sps

from emonn import EmonnError, plots, share, stats, study
from emonn.vectors import EmotionVectors

PARAPHRASES = ("I just took {X} mg of Tylenol for my back pain.",
               "My back hurts, so a few minutes ago I swallowed {X} mg of Tylenol.",
               "For my back pain I have just taken {X} mg of Tylenol.",
               "I took {X} milligrams of Tylenol a moment ago because my back was aching.",
               "Quick question: I've just had {X} mg of Tylenol for a sore back.")
VALUES = "0,250,500,1000,2000,4000,8000,16000"


def t_interval(values: np.ndarray, ci: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the last axis of `values` `(..., n)` with its t interval (n - 1 degrees of freedom)."""
    n = values.shape[-1]
    mean = values.mean(-1)
    half = sps.t.ppf((1 + ci) / 2, n - 1) * values.std(-1, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of `y` `(..., n)` with `x` `(n,)` (ties: mean ranks; a constant row: NaN)."""
    rx, ry = sps.rankdata(x), sps.rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(), ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ry @ rx) / np.sqrt((ry**2).sum(-1) * (rx**2).sum())


def parse_values(text: str) -> list[str]:
    """`--values` as strings (filled in as written), in increasing numeric order."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    try:
        values = sorted(values, key=float)
    except ValueError:
        raise EmonnError(f"--values '{text}' is not a list of numbers like 0,250,500") from None
    if len({float(v) for v in values}) < 3:
        raise EmonnError(f"--values needs at least 3 distinct numbers for a trend, got '{text}'")
    return values


def prompts(templates: tuple[str, ...], values: list[str]) -> pl.DataFrame:
    """One row per (paraphrase, X), paraphrase-major: paraphrase index, x (the number), prompt."""
    bad = [t for t in templates if "{X}" not in t]
    if bad:
        raise EmonnError(f"--template '{bad[0]}' has no {{X}}: mark where the value goes, e.g. 'I took {{X}} mg'")
    if len(templates) < 2:
        raise EmonnError("pass at least 2 --template paraphrases: the interval is over paraphrases")
    return pl.DataFrame([{"paraphrase": i, "x": float(v), "prompt": t.replace("{X}", v)}
                         for i, t in enumerate(templates) for v in values])


def trends(scores: np.ndarray, x: np.ndarray, emotions: list[str]) -> tuple[pl.DataFrame, np.ndarray]:
    """Per emotion, from `scores` `(1 + n_shuffles, n_emotions, n_paraphrases, n_x)` (fit 0: the real
    vectors): the mean over paraphrases of Spearman's rho vs `x` with its t interval (clipped to [-1, 1]),
    how many paraphrases rise, the change from the smallest to the largest X (t interval), and the two-sided
    permutation p of the mean rho against every label-shuffled vector's (BH q over emotions). Also returns
    that null `(n,)`."""
    rho = spearman(x, scores)  # (fits, emotions, paraphrases)
    null = rho[1:].mean(-1).ravel()
    mean, low, high = (np.clip(v, -1, 1) for v in t_interval(rho[0]))  # a rho outside [-1, 1] means nothing
    delta = t_interval(scores[0, ..., -1] - scores[0, ..., 0])
    p = np.array([stats.permutation_p(m, null, alternative="two-sided") for m in mean])
    frame = pl.DataFrame({"emotion": emotions, "rho": mean, "rho_low": low, "rho_high": high,
                          "rho_positive": (rho[0] > 0).sum(-1), "delta": delta[0], "delta_low": delta[1],
                          "delta_high": delta[2], "p": p, "q": stats.correct(p).p_adjusted})
    return frame.sort("rho", descending=True), null


@study.command("sweep", langs="en")
@click.option("--template", "templates", multiple=True, default=PARAPHRASES, show_default=True,
              help="A prompt with {X}; repeat for paraphrases (the unit of the interval).")
@click.option("--values", default=VALUES, show_default=True, help="The values of X, comma-separated.")
@click.option("--emotions", "shown", default="afraid,anxious,calm", show_default=True,
              help="Emotions to chart; the first is the headline.")
@click.option("--shuffles", default=50, show_default=True, help="Label-shuffled vector fits (seeds).")
@click.option("--chat/--no-chat", default=True, show_default=True, help="Render prompts as a user turn.")
def main(run: study.Run, templates: tuple[str, ...], values: str, shown: str, shuffles: int, chat: bool) -> None:
    model, lang = run.model, run.model.reads(run.langs)[0]
    xs = parse_values(values)
    frame = prompts(templates, xs)
    if shuffles < 10:
        raise EmonnError(f"--shuffles {shuffles} is too few for a null: use at least 10 (default 50)")
    chat = chat and model.has_chat
    frame = frame.with_columns(text=pl.col("prompt").map_elements(model.chat, pl.String) if chat else pl.col("prompt"))

    # ---- vectors on the stories (shared cache), the layer chosen on the stories, the sweep read at its last token
    present = set(run.stories(lang)["emotion"])
    shown = [e.strip() for e in shown.split(",") if e.strip()]
    unknown = [e for e in shown if e not in present]
    if unknown or not shown:
        raise EmonnError(f"unknown emotion '{(unknown or [''])[0]}' in --emotions: use some of "
                         f"{', '.join(sorted(present))}")
    vectors, readings = run.vectors(model, lang, layers=run.layers(model))
    emotions = list(vectors.emotions)
    choice = share.choose_layer(vectors, readings)
    layer, j = choice.layer, vectors.layers.index(choice.layer)
    card = {"lang": lang, "best_layer": layer, "best_accuracy": choice.best, "chance": choice.chance,
            "accuracy": choice.accuracy.tolist(), "n_topics": choice.n_topics, "layer_choice": share.CHOICE}
    run.save_vectors(lang, dataclasses.replace(vectors, meta={**vectors.meta, **card}))
    ids = pl.format("sweep-{}-{}", "paraphrase", "x").alias("id")
    acts = run.read(model, frame.with_columns(ids, lang=pl.lit(lang)), reducer="last", layers=[layer]).acts
    # acts: (n_prompts, 1, d), paraphrase-major
    run.note(layer=layer, story_accuracy=choice.best, chance=choice.chance, chat=chat, n_prompts=frame.height)

    def score(labels: np.ndarray) -> np.ndarray:  # one layer, the real fit's neutral PCs: (emotions, par, x)
        fitted = EmotionVectors.from_arrays(readings.acts[:, [j]], labels, layers=[layer], emotions=emotions,
                                            pcs=(vectors.pcs[j],))
        return fitted.scores(acts)[:, 0].reshape(len(templates), len(xs), -1).transpose(2, 0, 1)

    rng = np.random.default_rng(run.seed)
    scores = np.stack([score(readings.emotion)] + [score(rng.permutation(readings.emotion)) for _ in range(shuffles)])
    x = np.array([float(v) for v in xs])
    fits, es, ps, vs = np.indices(scores.shape).reshape(4, -1)
    run.table("scores", pl.DataFrame({"vectors": np.where(fits == 0, "emotion", "shuffled"), "seed": fits - 1,
                                      "emotion": np.array(emotions)[es], "paraphrase": ps, "x": x[vs],
                                      "score": scores.ravel()}))

    # ---- per emotion and X: mean over paraphrases (t interval); per paraphrase: Spearman's rho vs X
    mean, low, high = t_interval(scores[0].transpose(0, 2, 1))  # (emotions, x)
    curve = pl.DataFrame({"emotion": np.repeat(emotions, len(x)), "x": np.tile(x, len(emotions)),
                          "score": mean.ravel(), "low": low.ravel(), "high": high.ravel(), "n": len(templates)})
    trend, null = trends(scores, x, emotions)
    null_low, null_high = (float(v) for v in np.quantile(null, [0.025, 0.975]))
    run.table("curve", curve)
    run.table("trend", trend)

    # ---- figures: scores vs X with t intervals; the headline emotion's change vs the shuffled-label band
    axis = "log10(1 + X)" if x.min() >= 0 else "X"
    at = np.log10(1 + x) if axis != "X" else x
    head = shown[0]
    centered = scores - scores.mean(-1, keepdims=True)  # each paraphrase's curve minus its mean over X
    band_low, band_high = np.quantile(centered[1:].mean(2).reshape(-1, len(x)), [0.025, 0.975], axis=0)
    own = t_interval(centered[0, emotions.index(head)].T)
    run.figure("scores_vs_x", alt.hconcat(
        plots.lines(curve.filter(pl.col("emotion").is_in(shown)).with_columns(
            ((pl.col("x") + 1).log10() if axis != "X" else pl.col("x")).alias(axis)), x=axis, y="score",
            color="emotion", band=("low", "high"), zero=False, y_title="cosine at the final token",
            title=f"Emotion score vs X, layer {layer} (95% t interval over {len(templates)} paraphrases)"),
        plots.band(pl.DataFrame({axis: at, "low": band_low, "high": band_high}), x=axis, low="low", high="high",
                   label="label-shuffled vectors (95% range)", color="#999999")
        + plots.lines(pl.DataFrame({axis: at, "score": own[0], "low": own[1], "high": own[2], "emotion": head}),
                      x=axis, y="score", color="emotion", band=("low", "high"), zero=False,
                      y_title="score minus its mean over X", title=f"'{head}' vs label-shuffled vectors")))

    # ---- report and summary
    top = trend.row(trend["emotion"].to_list().index(head), named=True)
    ends = curve.filter(pl.col("emotion") == head)
    run.report(head=top, first=ends.row(0, named=True), last=ends.row(-1, named=True), choice=choice,
               n_par=len(templates), n_x=len(x), shuffles=shuffles, null_low=null_low,
               null_high=null_high, n_null=len(null), trend=trend, templates=templates, values=", ".join(xs),
               n_stories=len(readings), lang=lang)
    run.done(f"'{head}' at the final token, layer {layer}: {ends['score'][0]:+.3f} at X={x[0]:g} -> "
             f"{ends['score'][-1]:+.3f} at X={x[-1]:g}; Spearman rho vs X {top['rho']:+.2f} "
             f"[{top['rho_low']:+.2f}, {top['rho_high']:+.2f}] (t, {len(templates)} paraphrases); label-shuffled "
             f"vectors' rho 95% range [{null_low:+.2f}, {null_high:+.2f}] (n = {len(null)}), p = {top['p']:.3g}")


if __name__ == "__main__":
    main()
