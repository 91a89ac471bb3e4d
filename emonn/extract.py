"""Texts -> residual-stream activations `(n_texts, n_layers, d_model)`, reduced over tokens inside the trace.

Comprehension-based extraction reads the model while it reads a story. One forward pass per batch reads
every decoder layer; the reduction (`emonn.reducers`) runs in the trace, and `tracer.stop()` after the
last layer skips the final norm and the lm_head (62% of Gemma-3-270M's forward), so extraction runs as
fast as the decoder stack alone. Batches are formed from length-sorted texts under a token budget, and
finished chunks go to an `ActivationCache`, so a killed run resumes where it stopped.

Generation-based extraction (`generated_activations`) reads the model while it writes: every layer is
averaged over the tokens it generates, inside the same generate trace (so it also runs on NDIF), and each
finished unit of prompts goes to a `GenerationCache`. `reread` reads given generated tokens teacher-forced.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass

import nnsight
import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from emonn import EmonnError, readings
from emonn.models import Model
from emonn.reducers import REDUCERS, gather, lens, pool, still_generating, weights
from emonn.readings import Readings
from emonn.runs import ActivationCache, GenerationCache, dtype_name

#: Default first token position of the mean. The literature uses 50 on long stories; ours are 90-200
#: tokens, and a smaller start keeps more of each story.
START = 20
CHUNK = 32  # texts per cached unit of work
GENERATE_BATCH = 45  # prompts per generate call: the cached unit of generation-based extraction


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def batches(lengths: list[int], batch_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of length-sorted texts whose padded size stays under `batch_tokens` (and,
    with `max_rows`, of at most that many texts)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for index in order:
        if groups and (len(groups[-1]) + 1) * lengths[index] <= batch_tokens and len(groups[-1]) < (
                max_rows or len(lengths)):
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


#: The most bytes one remote request may bring back (NDIF returns results whole, through object storage); a
#: batch whose result would be larger is split. Local runs are bounded by `batch_tokens` alone.
RESULT_BYTES = 64 * 2**20


def result_rows(model: Model, row_bytes: int) -> int | None:
    """The most texts per remote request whose results fit `RESULT_BYTES` (`row_bytes` each); None locally."""
    return max(1, RESULT_BYTES // row_bytes) if model.remote else None


def missing(keys: list[str], found: dict[str, np.ndarray]) -> list[int]:
    """Indices of the distinct keys not in `found` (the first text of each)."""
    return list({key: i for i, key in enumerate(keys) if key not in found}.values())


def fill(found: dict[str, np.ndarray], keys: list[str], todo: list[int], lengths: list[int] | dict[int, int],
         compute, *, cache: ActivationCache | None, batch_tokens: int, desc: str, progress: bool,
         max_rows: int | None = None) -> None:
    """Computes rows `todo` into `found` (key -> row): `compute(indices)` runs one length-sorted batch under
    `batch_tokens` padded tokens (`lengths` in tokens, per index; at most `max_rows` rows) and returns
    `(batch, ...)`. Finished rows go to `cache` every CHUNK texts, so a killed run resumes from the last
    stored chunk."""
    groups = [[todo[j] for j in group] for group in batches([lengths[i] for i in todo], batch_tokens, max_rows)]
    bar = tqdm(total=len(todo), desc=desc, unit="text", disable=not progress or not todo)
    pending: dict[str, np.ndarray] = {}
    for group in groups:
        rows = {keys[i]: row for i, row in zip(group, compute(group).numpy())}
        pending.update(rows)
        found.update(rows)
        bar.update(len(group))
        if cache and (len(pending) >= CHUNK or group is groups[-1]):
            cache.store(pending)
            pending = {}
    bar.close()


def forward_pooled(model: Model, input_ids: list[list[int]], *, reducer: str = "mean", start: int = START
                   ) -> torch.Tensor:
    """One batch through the model, every layer reduced in the trace: `(batch, n_layers, d_model)`."""
    enc = model.tokenizer.pad({"input_ids": input_ids}, return_tensors="pt")
    return pool_layers(model, dict(enc), weights(enc["attention_mask"], reducer, start))


def pool_layers(model: Model, enc: dict, w: torch.Tensor) -> torch.Tensor:
    """One padded batch `enc` through the model, every layer pooled in the trace with token weights `w`
    `(batch, tokens)`: `(batch, n_layers, d_model)`."""
    blocks = [model.layer(i) for i in range(model.n_layers)]
    with torch.no_grad(), model.trace(enc) as tracer:
        pooled = nnsight.save(gather([pool(block.output, w) for block in blocks]))
        tracer.stop()  # no final norm, no lm_head: nothing after the last layer is read
    return pooled.cpu()


def forward_embedding(model: Model, input_ids: list[list[int]], *, reducer: str = "mean", start: int = START
                      ) -> torch.Tensor:
    """One batch's input embeddings (what block 0 reads), reduced over tokens in the trace: `(batch, d_model)`."""
    enc = model.tokenizer.pad({"input_ids": input_ids}, return_tensors="pt")
    w = weights(enc["attention_mask"], reducer, start)
    embed = model.embedding()
    with torch.no_grad(), model.trace(dict(enc)) as tracer:
        pooled = pool(embed.output, w).save()
        tracer.stop()  # nothing after the embedding is read
    return pooled.cpu()


def embeddings(model: Model, texts: list[str], *, reducer: str = "mean", start: int = START,
               batch_tokens: int = 8192, cache: ActivationCache | None = None, progress: bool = True) -> np.ndarray:
    """The input embeddings of `texts` reduced over the same tokens as `activations` (e.g. the mean from token
    `start`): float32 `(n_texts, d_model)`. What the tokens alone carry, before any layer: a lexical baseline.
    Read through a trace, so it also runs on NDIF; `cache` holds one `(d_model,)` row per text."""
    if reducer not in REDUCERS:
        raise EmonnError(f"unknown reducer '{reducer}': use one of {', '.join(REDUCERS)}")
    ids = model.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    keys = [text_key(text) for text in texts]
    found = cache.lookup(keys) if cache else {}
    fill(found, keys, missing(keys, found), [len(row) for row in ids],
         lambda group: forward_embedding(model, [ids[i] for i in group], reducer=reducer, start=start),
         cache=cache, batch_tokens=batch_tokens, desc=f"embeddings {model.slug}", progress=progress)
    return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)


def logit_lens(model: Model, vectors: np.ndarray) -> np.ndarray:
    """Vectors `(n, d)` read through the final norm and the unembedding: logits `(n, vocab)`.
    Runs as a trace (the norm and lm_head may live on NDIF), stopped before the model's own forward."""
    x = torch.tensor(np.asarray(vectors), dtype=torch.float32)
    enc, embed, norm, head = dict(model.tokenizer(["."], return_tensors="pt")), model.embedding(), model.final_norm, \
        model.unembed  # envoys resolved before the trace: the trace must not carry the Model
    with torch.no_grad(), model.trace(enc) as tracer:
        logits = lens(norm, head, x, embed.output).save()
        tracer.stop()
    return logits.cpu().numpy()


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
    todo = missing(keys, found)
    short = sum(1 for i in todo if len(ids[i]) <= start) if reducer == "mean" else 0
    if short:
        warnings.warn(f"{short} texts have <= {start} tokens: their mean uses only their last token", stacklevel=2)
    fill(found, keys, todo, [len(row) for row in ids],
         lambda group: forward_pooled(model, [ids[i] for i in group], reducer=reducer, start=start),
         cache=cache, batch_tokens=batch_tokens, desc=f"extract {model.slug}", progress=progress,
         max_rows=result_rows(model, model.n_layers * model.d_model * 4))
    return np.stack([found[key][layers] for key in keys]).astype(np.float32, copy=False)


def read(model: Model, frame: pl.DataFrame, *, reducer: str = "mean", start: int = START,
         layers: list[int] | None = None, batch_tokens: int = 2048, cache: ActivationCache | None = None,
         progress: bool = True) -> Readings:
    """The texts of `frame` (columns `text` and any of id, emotion, lang, topic) read by `model`: `Readings`
    with activations `(n, len(layers), d)`, one label row per text, and the provenance."""
    layers = model.check_layers(layers)
    acts = activations(model, frame["text"].to_list(), reducer=reducer, start=start, layers=layers, cache=cache,
                       batch_tokens=batch_tokens, progress=progress)
    meta = {"model": model.name, "reducer": reducer, "start": start, "dtype": dtype_name(model.dtype)}
    return readings.of(acts, frame, layers=layers, n_layers=model.n_layers, meta=meta)


# ---------------------------------------------------------------- generation-based extraction
@dataclass(frozen=True)
class Generated:
    """Generation-based activations: `acts` float32 `(n_prompts, n_layers, d_model)`, each layer's residual
    stream averaged over the tokens the model generated after the prompt; `ids` those tokens (a stop token
    and what follows it excluded) and `texts` their decoded text."""

    acts: np.ndarray
    ids: list[list[int]]
    texts: list[str]


def generate_pooled(model: Model, prompts: list[str], *, max_new_tokens: int, do_sample: bool, temperature: float
                    ) -> tuple[torch.Tensor, list[list[int]]]:
    """One batch: generate up to `max_new_tokens` after each prompt and average every layer over the generated
    tokens inside the generate trace. Returns `(batch, n_layers, d_model)` and the generated ids read.

    Step 0 reads the prompt (weight 0); step s reads generated token s-1, weighted 1 until the row reads a
    stop token (`reducers.still_generating`). One extra token is generated so that all `max_new_tokens` are
    read (the model never reads its last token); it is dropped. `min_new_tokens=1` gives every row a token.
    Only sums leave the trace: `(batch, n_layers, d)` and `(batch,)`, whatever the length.
    """
    enc = dict(model.tokenizer(list(prompts), return_tensors="pt", padding=True))
    stop = torch.tensor(model.stop_ids())
    options = dict(max_new_tokens=max_new_tokens + 1, min_new_tokens=1, eos_token_id=stop.tolist(),
                   pad_token_id=model.tokenizer.pad_token_id, **model.route(),
                   **({"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}))
    lm, blocks = model.lm, [model.layer(i) for i in range(model.n_layers)]
    prompt_weights = torch.zeros_like(enc["attention_mask"], dtype=torch.float32)
    alive = torch.ones(len(prompts))
    with warnings.catch_warnings():
        # the open loop ends when generation does: nnsight's "never reached" warning is expected here
        warnings.filterwarnings("ignore", message=".*was never reached", category=UserWarning)
        # IN-TRACE CODE RULE: only envoys resolved above, tensors and emonn.reducers below (it may run on
        # NDIF). One statement per line: nnsight maps the traced body back to its source lines.
        with torch.no_grad(), lm.generate(**options) as tracer:
            with tracer.invoke(enc):
                for step in tracer.all():
                    if step == 0:
                        total = gather([pool(block.output, prompt_weights) for block in blocks])
                        count = prompt_weights.sum(1).to(total.device)
                    else:
                        alive = still_generating(alive, lm.inputs[1]["input_ids"], stop)
                        total = total + gather([pool(block.output, alive[:, None]) for block in blocks])
                        count = count + alive
                    nnsight.save(total)
                    nnsight.save(count)
            with tracer.invoke():
                ids = tracer.result.save()
    new, stops = ids[:, enc["input_ids"].shape[1]:][:, :max_new_tokens].tolist(), set(stop.tolist())
    read = [row[:next((i for i, t in enumerate(row) if t in stops), len(row))] for row in new]
    if [len(row) for row in read] != count.cpu().long().tolist():
        raise EmonnError("generated-token count in the trace disagrees with the generated ids: report this bug")
    return (total / count[:, None, None]).float().cpu(), read


def generated_activations(model: Model, prompts: list[str], *, max_new_tokens: int = 40, do_sample: bool = True,
                          temperature: float = 0.7, seed: int = 0, layers: list[int] | None = None,
                          batch_size: int = GENERATE_BATCH, cache: GenerationCache | None = None,
                          progress: bool = True) -> Generated:
    """Generation-based extraction: the model writes `max_new_tokens` after each prompt (format prompts with
    the chat template where there is one) and every layer is averaged over the generated tokens only, in the
    generate trace (so it runs on NDIF too): `Generated` with acts float32 `(n_prompts, len(layers), d)`.

    Prompts are generated in units of `batch_size` consecutive prompts; each unit is seeded from `seed` and
    its own content (a unit's samples do not depend on the others) and stored in `cache` when finished, so a
    killed run resumes at the first missing unit. (On NDIF the server's sampler is not seeded.)
    """
    if not prompts:
        raise EmonnError("no prompts to generate from")
    if max_new_tokens < 1 or batch_size < 1:
        raise EmonnError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be >= 1")
    layers = model.check_layers(layers)
    settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed, "stop": model.stop_ids(),
                **({"temperature": temperature} if do_sample else {})}
    units = [list(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
    keys = [hashlib.sha1(json.dumps({**settings, "prompts": unit}).encode()).hexdigest() for unit in units]
    found = {key: cache.load(key) for key in keys} if cache else {}
    todo = [i for i, key in enumerate(keys) if found.get(key) is None]
    bar = tqdm(total=sum(len(units[i]) for i in todo), desc=f"generate {model.slug}", unit="prompt",
               disable=not progress or not todo)
    for i in todo:
        torch.manual_seed(int(keys[i][:12], 16))
        acts, ids = generate_pooled(model, units[i], max_new_tokens=max_new_tokens, do_sample=do_sample,
                                    temperature=temperature)
        found[keys[i]] = (acts.numpy(), ids, model.tokenizer.batch_decode(ids, skip_special_tokens=True))
        if cache:
            cache.store(keys[i], *found[keys[i]])
        bar.update(len(units[i]))
    bar.close()
    results = [found[key] for key in keys]
    return Generated(np.concatenate([acts[:, layers] for acts, _, _ in results]).astype(np.float32, copy=False),
                     [row for _, ids, _ in results for row in ids], [text for _, _, texts in results for text in texts])


def reread(model: Model, prompts: list[str], ids: list[list[int]], *, layers: list[int] | None = None,
           batch_tokens: int = 2048, cache: ActivationCache | None = None, progress: bool = True) -> np.ndarray:
    """Teacher-forced generation-based activations: each prompt followed by its generated tokens `ids[i]`,
    read in one forward pass and averaged over those tokens: float32 `(n_prompts, len(layers), d_model)`.
    The same numbers as `generated_activations` up to float rounding (the KV cache sums in another order);
    lets a model in another precision read exactly the same text. `cache` holds one row per (prompt, ids)."""
    if len(prompts) != len(ids) or any(not row for row in ids):
        raise EmonnError("reread needs one non-empty list of generated ids per prompt")
    layers = model.check_layers(layers)
    keys = [text_key(json.dumps([prompt, list(row)])) for prompt, row in zip(prompts, ids)]
    found = cache.lookup(keys) if cache else {}
    todo = missing(keys, found)
    rows = {i: p + list(ids[i]) for i, p in zip(todo, model.tokenizer([prompts[i] for i in todo])["input_ids"])
            } if todo else {}

    def compute(group: list[int]) -> torch.Tensor:
        enc = model.tokenizer.pad({"input_ids": [rows[i] for i in group]}, return_tensors="pt")
        n_new = torch.tensor([len(ids[i]) for i in group])
        width = enc["input_ids"].shape[1]
        # left padding: each row's generated tokens are its last n_new columns
        w = (torch.arange(width)[None, :] >= width - n_new[:, None]).float() / n_new[:, None]
        return pool_layers(model, dict(enc), w)

    fill(found, keys, todo, {i: len(row) for i, row in rows.items()}, compute, cache=cache,
         batch_tokens=batch_tokens, desc=f"reread {model.slug}", progress=progress)
    return np.stack([found[key][layers] for key in keys]).astype(np.float32, copy=False)
