"""Stimulus baselines: emotion × emotion similarity matrices that no model made, from the texts alone (TF-IDF of
words for English, of character n-grams for Japanese, which has no spaces) and from the corpus design (the
stories' topics). An RSA between languages or models is read against what these give.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.feature_extraction.text import TfidfVectorizer

#: TfidfVectorizer settings per language; other languages use the Japanese ones (no word boundaries assumed).
TFIDF = {"en": {"analyzer": "word"}, "ja": {"analyzer": "char", "ngram_range": (2, 3)}}


def _centered_cosines(means: np.ndarray) -> np.ndarray:
    """Cosines of the centered rows; a row equal to the mean (e.g. every emotion on the same topics) has no
    direction and gets cosine 0, so a constant baseline is a constant matrix (which removes nothing)."""
    centered = means - means.mean(0)
    unit = centered / np.maximum(np.linalg.norm(centered, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def _means(x, labels: np.ndarray, emotions: list[str]) -> np.ndarray:
    return np.stack([np.asarray(x[labels == e].mean(0)).ravel() for e in emotions])


def tfidf_similarity(stories: pl.DataFrame, emotions: list[str]) -> np.ndarray:
    """Cosines of the emotions' centered mean TF-IDF vectors `(n_emotions, n_emotions)`, over the stories of
    one language (the vocabulary is that language's own, so two languages share none of it)."""
    lang = stories["lang"][0]
    x = TfidfVectorizer(**TFIDF.get(lang, TFIDF["ja"])).fit_transform(stories["text"].to_list())
    return _centered_cosines(_means(x, stories["emotion"].to_numpy(), emotions))


def topic_similarity(stories: pl.DataFrame, emotions: list[str]) -> np.ndarray:
    """Cosines of the emotions' centered topic-count vectors `(n_emotions, n_emotions)` (stories per topic):
    the topic design itself as a similarity matrix."""
    topics = sorted(stories["topic"].unique().to_list())
    onehot = (stories["topic"].to_numpy()[:, None] == np.array(topics)[None]).astype(float)
    return _centered_cosines(_means(onehot, stories["emotion"].to_numpy(), emotions))


def stimulus(stories: pl.DataFrame, emotions: list[str]) -> dict[str, np.ndarray]:
    """Both baselines of one language's stories: {"tfidf": ..., "topic": ...}."""
    return {"tfidf": tfidf_similarity(stories, emotions), "topic": topic_similarity(stories, emotions)}
