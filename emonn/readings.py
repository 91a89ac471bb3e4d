"""`Readings`: what a model read from a frame of texts, as one value (activations + one label row per text).

`extract.read(model, frame)` returns it: activations `(n, n_layers, d)` reduced over tokens, the emotion,
topic, lang and id of every row, the layers read and their relative depth, and the provenance (model,
reducer, start token, dtype, corpus digest). Studies select a language or emotions, resample rows for a
bootstrap and center it with the methods here instead of taking the corpus frame apart again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from emonn import EmonnError, corpus

#: The label columns every row carries (a neutral text has emotion and topic "neutral" or null).
LABELS = ("id", "emotion", "lang", "topic")


def emotion_order(labels: list[str] | np.ndarray) -> tuple[str, ...]:
    """The distinct emotions of `labels` in the canonical order of the corpus (`emotions.csv`), then any
    others (a user corpus may have its own) in order of first appearance."""
    present = list(dict.fromkeys(np.asarray(labels).tolist()))
    known = [e for e in corpus.emotion_names() if e in set(present)]
    return tuple(known + [e for e in present if e not in set(known)])


@dataclass(frozen=True)
class Readings:
    """Activations of `n` texts with their labels.

    acts:   float32 `(n, n_layers, d)`, one row per text of `rows`.
    rows:   polars frame with `LABELS` (`id, emotion, lang, topic`), one per text, in the order of `acts`.
    layers: the model layers of axis 1; `depth` their relative depth layer / (n_layers_of_model - 1).
    meta:   provenance: model, reducer, start, dtype, corpus digest (of the texts read).
    """

    acts: np.ndarray
    rows: pl.DataFrame
    layers: tuple[int, ...]
    depth: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.acts.ndim != 3 or len(self.acts) != self.rows.height or self.acts.shape[1] != len(self.layers):
            raise EmonnError(f"activations {self.acts.shape} do not match {self.rows.height} rows x "
                             f"{len(self.layers)} layers")

    def __len__(self) -> int:
        return len(self.acts)

    # ---------------------------------------------------------------- labels
    @property
    def emotion(self) -> np.ndarray:
        """The emotion label of every row `(n,)`."""
        return self.rows["emotion"].to_numpy()

    @property
    def topic(self) -> np.ndarray:
        return self.rows["topic"].to_numpy()

    @property
    def lang(self) -> np.ndarray:
        return self.rows["lang"].to_numpy()

    @property
    def emotions(self) -> tuple[str, ...]:
        """The emotions present, in the corpus's canonical order."""
        return emotion_order(self.emotion)

    @property
    def langs(self) -> list[str]:
        return sorted(set(self.lang.tolist()))

    @property
    def corpus(self) -> str:
        """The digest of the texts read (`corpus.digest`)."""
        return self.meta.get("corpus", "")

    # ---------------------------------------------------------------- views
    def at(self, layer: int) -> np.ndarray:
        """Activations at model layer `layer`: `(n, d)`."""
        if layer not in self.layers:
            raise EmonnError(f"layer {layer} was not read (read: {', '.join(map(str, self.layers))})")
        return self.acts[:, self.layers.index(layer)]

    def take(self, index: np.ndarray | list[int]) -> Readings:
        """The rows at `index` (in that order; repeats allowed, as in a bootstrap resample)."""
        index = np.asarray(index, dtype=np.int64)
        return dataclasses.replace(self, acts=self.acts[index], rows=self.rows[index])

    def where(self, keep: np.ndarray) -> Readings:
        """The rows where the boolean mask `keep` `(n,)` is true."""
        return self.take(np.flatnonzero(keep))

    def select(self, *, lang: str | None = None, emotions: list[str] | tuple[str, ...] | None = None) -> Readings:
        """The rows of one language and/or of the given emotions (an absent one is an error)."""
        keep = np.ones(len(self), bool)
        if lang is not None:
            if lang not in self.langs:
                raise EmonnError(f"no texts in language '{lang}' (read: {', '.join(self.langs)})")
            keep &= self.lang == lang
        if emotions is not None:
            absent = sorted(set(emotions) - set(self.emotion[keep].tolist()))
            if absent:
                raise EmonnError(f"no texts for emotion '{absent[0]}'")
            keep &= np.isin(self.emotion, list(emotions))
        return self.where(keep)

    def layers_at(self, layers: list[int]) -> Readings:
        """Only the given model layers (a subset of those read)."""
        index = [self.layers.index(layer) for layer in layers if layer in self.layers]
        if len(index) != len(layers):
            raise EmonnError(f"layers {layers} were not all read (read: {', '.join(map(str, self.layers))})")
        return dataclasses.replace(self, acts=self.acts[:, index], layers=tuple(layers), depth=self.depth[index])

    # ---------------------------------------------------------------- resampling, centering
    def strata(self, by: tuple[str, ...] = ("lang", "emotion")) -> np.ndarray:
        """One label per row joining the columns `by` (e.g. `en:joyful`): the strata of a bootstrap."""
        return np.asarray(["\x1f".join(map(str, row)) for row in self.rows.select(by).iter_rows()])

    def resample(self, rng: np.random.Generator, by: tuple[str, ...] = ("lang", "emotion")) -> np.ndarray:
        """Row indices of one bootstrap resample: rows drawn with replacement within each stratum `by`, so
        every (language, emotion) keeps its count. Use `take` to apply it."""
        strata = self.strata(by)
        out = np.empty(len(self), np.int64)
        for label in np.unique(strata):
            members = np.flatnonzero(strata == label)
            out[members] = rng.choice(members, size=len(members), replace=True)
        return out

    def halves(self, rng: np.random.Generator, by: tuple[str, ...] = ("lang", "emotion")) -> tuple[np.ndarray, ...]:
        """Row indices of a random split into two halves within each stratum `by` (an odd stratum gives its
        extra row to the second half): the two samples of a split-half reliability."""
        from emonn import stats

        return stats.split_halves(self.strata(by), rng)

    def emotion_means(self, emotions: tuple[str, ...] | None = None) -> np.ndarray:
        """Mean activation per emotion: float64 `(n_emotions, n_layers, d)` in the order of `emotions`."""
        emotions = self.emotions if emotions is None else tuple(emotions)
        onehot = (self.emotion[None, :] == np.asarray(emotions)[:, None]).astype(np.float32)
        counts = onehot.sum(1)
        if np.any(counts == 0):
            raise EmonnError(f"no texts for emotion '{emotions[int(np.argmin(counts))]}'")
        means = (onehot @ self.acts.reshape(len(self), -1)).reshape(len(emotions), *self.acts.shape[1:])
        return means.astype(np.float64) / counts[:, None, None]

    def centered(self) -> Readings:
        """The activations minus the mean over emotions of the emotion means, per layer (each emotion weighs
        the same, whatever its count): the centering of `EmotionVectors`."""
        center = self.emotion_means().mean(0)
        return dataclasses.replace(self, acts=(self.acts - center).astype(np.float32))


def of(acts: np.ndarray, frame: pl.DataFrame, *, layers: list[int], n_layers: int | None = None,
       meta: dict[str, Any] | None = None) -> Readings:
    """`Readings` from activations `(n, len(layers), d)` and a frame with (some of) the `LABELS` columns
    (missing ones are null); `n_layers` of the model gives the depths (default: the highest layer + 1)."""
    rows = frame.with_columns(pl.lit(None, pl.String).alias(c) for c in LABELS if c not in frame.columns
                              ).select(LABELS)  # (with_columns: a frame of literals alone would have one row)
    total = (max(layers) + 1) if n_layers is None else n_layers
    depth = np.array([layer / max(total - 1, 1) for layer in layers])
    meta = {"corpus": corpus.digest(frame) if "text" in frame.columns and "id" in frame.columns else "",
            **(meta or {})}
    return Readings(np.asarray(acts, dtype=np.float32), rows, tuple(layers), depth, meta)
