"""Texts -> residual-stream activations `(n_texts, n_layers, d_model)`, reduced over tokens inside the trace.

Comprehension-based extraction reads the model while it reads a story. One forward pass per batch reads
every decoder layer; the reduction (`emonn.reducers`) runs in the trace, and `tracer.stop()` after the
last layer skips the final norm and the lm_head (62% of Gemma-3-270M's forward), so extraction runs as
fast as the decoder stack alone. Batches are formed from length-sorted texts under a token budget, and
finished chunks go to an `ActivationCache`, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import warnings

import nnsight
import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from emonn import EmonnError, corpus
from emonn.models import Model
from emonn.reducers import REDUCERS, pool, weights
from emonn.runs import ActivationCache
from emonn.vectors import EmotionVectors

#: Default first token position of the mean. The literature uses 50 on long stories; ours are 90-200
#: tokens, and a smaller start keeps more of each story.
START = 20
CHUNK = 32  # texts per cached unit of work


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of length-sorted texts whose padded size stays under `batch_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for index in order:
        if groups and (len(groups[-1]) + 1) * lengths[index] <= batch_tokens:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def forward_pooled(model: Model, input_ids: list[list[int]], *, reducer: str = "mean", start: int = START
                   ) -> torch.Tensor:
    """One batch through the model, every layer reduced in the trace: `(batch, n_layers, d_model)`."""
    enc = model.tokenizer.pad({"input_ids": input_ids}, return_tensors="pt")
    w = weights(enc["attention_mask"], reducer, start)
    blocks = [model.layer(i) for i in range(model.n_layers)]
    with torch.no_grad(), model.trace(dict(enc)) as tracer:
        pooled = nnsight.save([pool(block.output, w) for block in blocks])
        tracer.stop()  # no final norm, no lm_head: nothing after the last layer is read
    return torch.stack(pooled, 1)


def logit_lens(model: Model, vectors: np.ndarray) -> np.ndarray:
    """Vectors `(n, d)` read through the final norm and the unembedding: logits `(n, vocab)`.
    Runs as a trace (the norm and lm_head may live on NDIF), stopped before the model's own forward."""
    norm, head, x = model.final_norm, model.unembed, torch.tensor(np.asarray(vectors), dtype=torch.float32)
    enc = dict(model.tokenizer(["."], return_tensors="pt"))
    with torch.no_grad(), model.trace(enc) as tracer:
        logits = head(norm(x)).save()
        tracer.stop()
    return logits.float().numpy()


def activations(model: Model, texts: list[str], *, reducer: str = "mean", start: int = START,
                layers: list[int] | None = None, batch_tokens: int = 2048, cache: ActivationCache | None = None,
                progress: bool = True) -> np.ndarray:
    """Reduced activations of `texts`, float32 `(n_texts, len(layers), d_model)` (all layers by default).

    `reducer` is `mean` (mean over real tokens at positions >= `start`; see `reducers.mean_from` for texts
    shorter than that) or `last` (last real token).
    """
    if reducer not in REDUCERS:
        raise EmonnError(f"unknown reducer '{reducer}': use one of {', '.join(REDUCERS)}")
    if not texts:
        raise EmonnError("no texts to extract activations from")
    layers = model.check_layers(layers)
    ids = model.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    empty = [i for i, row in enumerate(ids) if not row or not texts[i].strip()]
    if empty:
        raise EmonnError(f"text #{empty[0]} is empty ({len(empty)} empty texts): remove them")
    keys = [text_key(text) for text in texts]
    found = cache.lookup(keys) if cache else {}
    todo = list({keys[i]: i for i in range(len(texts)) if keys[i] not in found}.values())  # distinct texts
    lengths = [len(ids[i]) for i in todo]
    if todo:
        short = sum(1 for n in lengths if n <= start) if reducer == "mean" else 0
        if short:
            warnings.warn(f"{short} texts have <= {start} tokens: their mean uses only their last token",
                          stacklevel=2)
    groups = [[todo[j] for j in group] for group in batches(lengths, batch_tokens)]
    bar = tqdm(total=len(todo), desc=f"extract {model.slug}", unit="text", disable=not progress or not todo)
    pending: dict[str, np.ndarray] = {}
    for group in groups:
        result = forward_pooled(model, [ids[i] for i in group], reducer=reducer, start=start).numpy()
        pending.update({keys[i]: row for i, row in zip(group, result)})
        bar.update(len(group))
        if cache and (len(pending) >= CHUNK or group is groups[-1]):
            cache.store(pending)
            pending = {}
        found.update({keys[i]: row for i, row in zip(group, result)})
    bar.close()
    return np.stack([found[key][layers] for key in keys]).astype(np.float32, copy=False)


def emotion_vectors(model: Model, stories: pl.DataFrame, *, neutral: pl.DataFrame | None = None,
                    start: int = START, layers: list[int] | None = None, cache: ActivationCache | None = None,
                    variance: float = 0.5, batch_tokens: int = 2048, progress: bool = True
                    ) -> tuple[EmotionVectors, np.ndarray]:
    """Comprehension-based emotion vectors from corpus rows (id, emotion, lang, topic, text), with the
    neutral texts' top PCs projected out when `neutral` is given. Returns the vectors and the stories'
    activations `(n_stories, n_layers, d)` (for bootstraps, transfer and classification)."""
    layers = model.check_layers(layers)
    acts = activations(model, stories["text"].to_list(), start=start, layers=layers, cache=cache,
                       batch_tokens=batch_tokens, progress=progress)
    neutral_acts = None
    if neutral is not None:
        neutral_acts = activations(model, neutral["text"].to_list(), start=start, layers=layers, cache=cache,
                                   batch_tokens=batch_tokens, progress=progress)
    meta = {"model": model.name, "corpus": corpus.digest(stories), "reducer": "mean", "start": start,
            "langs": sorted(stories["lang"].unique().to_list()), "n_texts": len(stories),
            "neutral": corpus.digest(neutral) if neutral is not None else None}
    labels = stories["emotion"].to_list()
    order = [e for e in corpus.emotion_names() if e in set(labels)]  # the canonical order of emotions.csv
    vectors = EmotionVectors.fit(acts, labels, layers=layers, emotions=order, neutral=neutral_acts,
                                 variance=variance, meta=meta)
    return vectors, acts
