"""Steering: add `alpha * mean‖h‖ * v̂` to a layer's residual stream, in a trace or while generating.

`alpha` is a fraction of the layer's mean residual norm (measured on the corpus with `mean_norms`), so
one alpha means the same push at every layer and in every model. Each batch row carries its own vector
and alpha (a `(batch, d)` delta), so one forward pass serves a whole sweep; `next_token_logprobs_per_condition`
reads many prompts under many conditions, their common beginning once (a shared key-value cache). The in-trace
half, `add`, lives in `emonn.reducers` (the one module shipped to NDIF); this module is the host-side
orchestration.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nnsight
import numpy as np
import torch

from emonn import EmonnError
from emonn.models import Model
from emonn.reducers import add, hidden, mean_from


def deltas(directions: np.ndarray, alphas: np.ndarray, norm: float) -> torch.Tensor:
    """Per-row additions `(batch, d)`: `alphas[i] * norm * directions[i] / ‖directions[i]‖`."""
    directions = np.asarray(directions, dtype=np.float64)
    units = directions / np.maximum(np.linalg.norm(directions, axis=-1, keepdims=True), 1e-12)
    return torch.tensor(np.asarray(alphas, dtype=np.float64)[:, None] * norm * units, dtype=torch.float32)


def random_directions(n: int, d: int, *, seed: int) -> np.ndarray:
    """`n` random unit directions `(n, d)` (normalised Gaussians: uniform on the sphere), reproducible from
    `seed`. The control for an emotion vector: the same push in a direction that means nothing."""
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def mean_norms(model: Model, texts: list[str], layers: list[int], *, start: int = 1, batch_tokens: int = 2048
               ) -> dict[int, float]:
    """Mean per-token residual norm ‖h‖ at each of `layers`, over tokens >= `start` of each text, averaged
    over `texts`; read in length-sorted batches of at most `batch_tokens` padded tokens."""
    from emonn.extract import batches

    layers = model.check_layers(layers)
    ids = model.tokenizer(list(texts))["input_ids"]
    blocks, total = [model.layer(i) for i in layers], torch.zeros(len(layers), dtype=torch.float64)
    for group in batches([len(row) for row in ids], batch_tokens):
        enc = dict(model.tokenizer.pad({"input_ids": [ids[i] for i in group]}, return_tensors="pt"))
        w = mean_from(enc["attention_mask"], start)
        with torch.no_grad(), model.trace(enc) as tracer:
            norms = nnsight.save([(hidden(b.output).float().norm(dim=-1) * w.to(hidden(b.output).device)).sum()
                                  for b in blocks])
            tracer.stop()
        total += torch.tensor([float(n) for n in norms], dtype=torch.float64)
    return {layer: float(n) / len(ids) for layer, n in zip(layers, total)}


@dataclass(frozen=True)
class Generation:
    """Token ids `(batch, n_new)` generated after each prompt, and their decoded text."""

    ids: torch.Tensor
    texts: list[str]


def generate(model: Model, prompts: list[str], *, layer: int | None = None,
             delta: torch.Tensor | dict[int, torch.Tensor] | None = None, steer_prompt: bool = False,
             max_new_tokens: int = 40, do_sample: bool = False, temperature: float = 1.0, seed: int = 0
             ) -> Generation:
    """Generate from `prompts` (one row each), adding `delta[i]` `(batch, d)` at `layer` to row i.

    `delta` may instead map several layers to their `(batch, d)` additions (`layer=None`), so rows steered
    at different layers share one generate call (a zero row leaves that row unchanged at that layer).
    By default the addition reaches the generated tokens only: at the prompt step it is added at the last
    prompt position (whose output predicts the first new token), then at every new token.
    `steer_prompt=True` adds it at every prompt token as well. `delta=None` generates unsteered.
    """
    if not prompts:
        raise EmonnError("no prompts to generate from")
    enc = dict(model.tokenizer(list(prompts), return_tensors="pt", padding=True))
    options = dict(max_new_tokens=max_new_tokens, pad_token_id=model.tokenizer.pad_token_id, **model.route(),
                   **({"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}))
    torch.manual_seed(seed)
    if delta is None:
        with torch.no_grad(), model.lm.generate(enc, **options) as tracer:
            ids = tracer.result.save()
    else:
        steering = _by_layer(model, layer, delta, len(prompts))
        mask = enc["attention_mask"] if steer_prompt else torch.zeros_like(enc["attention_mask"])
        mask[:, -1] = 1  # left padding: the last column is every row's last prompt token
        blocks, rows = [model.layer(i) for i in steering], list(steering.values())  # (batch, d) each
        with warnings.catch_warnings():
            # the open `tracer.all()` loop ends at the last step by design; nnsight warns about it every call
            warnings.filterwarnings("ignore", message=".*was never reached", category=UserWarning)
            with torch.no_grad(), model.lm.generate(**options) as tracer:
                with tracer.invoke(enc):
                    for step in tracer.all():
                        for block, row in zip(blocks, rows):
                            add(block.output, row, mask if step == 0 else None)
                with tracer.invoke():
                    ids = tracer.result.save()
    new = ids[:, enc["input_ids"].shape[1]:]
    return Generation(new, model.tokenizer.batch_decode(new, skip_special_tokens=True))


def _by_layer(model: Model, layer: int | None, delta: torch.Tensor | dict[int, torch.Tensor], rows: int
              ) -> dict[int, torch.Tensor]:
    """`{layer: (rows, d) addition}` in ascending layer order (nnsight edits must follow execution order)."""
    if not isinstance(delta, dict):
        delta = {layer: delta}
    elif layer is not None:
        raise EmonnError("pass the layer either as `layer=` or as the keys of a `delta` dict, not both")
    steering: dict[int, torch.Tensor] = {}
    for key, value in delta.items():
        if key is None:
            raise EmonnError("steering needs a layer: pass `layer=`")
        if value.shape != (rows, model.d_model):
            raise EmonnError(f"steering delta {tuple(value.shape)} must be (n_prompts, d_model) = "
                             f"({rows}, {model.d_model})")
        index = model.check_layers([key])[0]
        if index in steering:
            raise EmonnError(f"layer {key} appears twice in the steering deltas")
        steering[index] = value
    return dict(sorted(steering.items()))


#: The most bytes of logits one log-probability batch may hold (a large vocabulary x a long continuation).
LOGIT_BYTES = 2**30


def continuation_logprobs(model: Model, prompts: list[list[int]], continuations: list[list[int]], *,
                          batch_tokens: int = 2048) -> list[np.ndarray]:
    """Unsteered log-probability of each continuation token given its prompt and the tokens before it:
    one float32 array `(len(continuations[i]),)` per row. (Perplexity = exp(-mean).) Only the last
    positions' logits are computed (`logits_to_keep`), so the lm_head runs on the continuation alone.
    Rows are read in length-sorted batches of at most `batch_tokens` padded tokens."""
    from emonn.extract import batches

    if len(prompts) != len(continuations):
        raise EmonnError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    lm, result = model.lm, [None] * len(prompts)
    vocab = model.hf.config.get_text_config().vocab_size if hasattr(model.hf.config, "get_text_config") else \
        model.hf.config.vocab_size
    longest = max([len(c) for c in continuations] + [1])  # the kept logits, (rows, longest + 1, vocab) float32
    rows_cap = max(1, LOGIT_BYTES // ((longest + 1) * vocab * 4 * 3))  # x3: the float copy and log_softmax
    for group in batches([len(p) + len(c) for p, c in zip(prompts, continuations)], batch_tokens, rows_cap):
        rows = [(prompts[i], continuations[i]) for i in group]
        keep = max(len(c) for _, c in rows)
        if keep == 0:
            for i in group:
                result[i] = np.zeros(0, np.float32)
            continue
        enc = dict(model.tokenizer.pad({"input_ids": [list(p) + list(c) for p, c in rows]}, return_tensors="pt"))
        targets = enc["input_ids"][:, -keep:]  # left padding: every row's continuation ends in the last column
        with torch.no_grad(), model.trace(enc, logits_to_keep=keep + 1):
            logits = lm.output.logits[:, :-1].float()
            logprobs = logits.log_softmax(-1).gather(-1, targets[..., None].to(logits.device))[..., 0].save()
        for j, (i, (_, c)) in enumerate(zip(group, rows)):
            result[i] = logprobs[j, keep - len(c):].cpu().numpy()
    return result


def next_token_logprobs(model: Model, enc: dict, *, layer: int | None = None, delta: torch.Tensor | None = None,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probabilities of the next token after each row of `enc`: `(batch, vocab)`, optionally steered by
    `delta` `(batch, d)` at `layer` on the positions where `mask` `(batch, tokens)` is 1 (default: all)."""
    lm = model.lm
    if delta is None:
        with torch.no_grad(), model.trace(enc):
            logits = lm.output.logits[:, -1].save()
    else:
        where = enc["attention_mask"] if mask is None else mask
        block = model.layer(model.check_layers([layer])[0])
        with torch.no_grad(), model.trace(enc):
            add(block.output, delta, where)
            logits = lm.output.logits[:, -1].save()
    return torch.log_softmax(logits.float(), dim=-1)


# ---------------------------------------------------------------- prompts with marked words, and their answers
def answer_ids(tokenizer: Any, answers: Sequence[str]) -> list[list[int]]:
    """Per answer (e.g. "A", "B"): the sorted token ids of its single-token spellings, bare and after a space,
    i.e. the `tokens` groups of `next_token_logprobs_per_condition`. An answer with no single-token spelling,
    or a token shared by two answers, is an error."""
    ids = [sorted({tokens[0] for variant in (answer, f" {answer}")
                   if len(tokens := tokenizer(variant, add_special_tokens=False)["input_ids"]) == 1})
           for answer in answers]
    if not all(ids) or len(set().union(*ids)) < sum(len(group) for group in ids):
        raise EmonnError(f"the tokenizer has no distinct single tokens for the answers {', '.join(answers)} "
                         f"(found {ids})")
    return ids


def token_marks(tokenizer: Any, text: str, spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """`text`'s token ids (special tokens included) and, per token, whether its characters overlap any of the
    character `spans` `[(begin, end), ...]`: the marks that steer only those words. Needs a fast tokenizer."""
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
    except NotImplementedError:
        raise EmonnError("steering chosen words needs a fast tokenizer (token offsets); steer every token "
                         "instead") from None
    return enc["input_ids"], [any(lo < end and hi > begin for begin, end in spans) for lo, hi in enc["offset_mapping"]]


# ---------------------------------------------------------------- many prompts x many conditions, prefix read once
#: Batch rows (prompts x conditions) per forward pass: with a shared prefix, small length-sorted batches waste
#: little on padding; full prompts (remote runs) go in larger batches, as each is a request.
ROWS_SHARED_PREFIX, ROWS_FULL_PROMPT = 64, 512


def common_prefix(prompts: Sequence[Sequence[int]], marks: Sequence[Sequence[bool]]) -> int:
    """How many leading tokens every prompt shares, token ids and steering marks alike (at least one token
    of the shortest prompt stays out, so every row has a position to predict from)."""
    shortest = min(len(p) for p in prompts)
    for n in range(shortest - 1):
        if len({(p[n], m[n]) for p, m in zip(prompts, marks)}) > 1:
            return n
    return shortest - 1


def can_share_prefix(model: Model, longest: int) -> bool:
    """Whether a key-value cache of the common prefix can be shared: local runs only (the cache object is
    filled in place), with prompts of up to `longest` tokens inside any sliding attention window."""
    config = model.hf.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    return not model.remote and (window is None or longest <= window)


def _cache_argument(model: Model) -> str:
    """The forward keyword of the key-value cache (`cache` in recent transformers, `past_key_values` before)."""
    return "cache" if "cache" in inspect.signature(model.hf.forward).parameters else "past_key_values"


def _prefill(model: Model, ids: Sequence[int], marks: Sequence[bool], deltas: torch.Tensor, layer: int) -> Any:
    """The key-value cache `(n_conditions rows)` of the prefix `ids`, row c steered by `deltas[c]` on the
    marked tokens."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.hf.config)
    ids_, marks_ = torch.tensor([list(ids)] * len(deltas)), torch.tensor([list(marks)] * len(deltas))
    with torch.no_grad(), model.trace({"input_ids": ids_, "attention_mask": torch.ones_like(ids_),
                                       _cache_argument(model): cache, "use_cache": True, "logits_to_keep": 1}):
        add(model.layer(layer).output, deltas, marks_)
    return cache


def _left_pad(rows: Sequence[Sequence], value: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences left-padded with `value` `(n, longest)` and the mask of real entries."""
    width = max(len(r) for r in rows)
    padded = torch.tensor([[value] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return padded, mask


def _rest_logprobs(model: Model, prompts: Sequence[Sequence[int]], marks: Sequence[Sequence[bool]],
                   deltas: torch.Tensor, layer: int, start: int, prefix: Any) -> torch.Tensor:
    """Next-token log-probs `(n_prompts * n_conditions, vocab)`, row i * n_conditions + c = prompt i under
    condition c; with a `prefix` cache of the first `start` tokens, each row runs only its own tokens."""
    from transformers import DynamicCache

    n_cond = len(deltas)
    condition = torch.arange(n_cond).repeat(len(prompts))
    ids, mask = _left_pad([p[start:] for p in prompts], model.tokenizer.pad_token_id)
    steered, _ = _left_pad([m[start:] for m in marks], False)
    ids, mask, steered = (x.repeat_interleave(n_cond, 0) for x in (ids, mask, steered))
    enc = {"input_ids": ids, "attention_mask": torch.cat([torch.ones(len(ids), start, dtype=mask.dtype), mask], 1),
           # explicit positions: left padding (and the cached prefix) shift them, and any extra key in the
           # encoding stops nnsight from supplying them
           "position_ids": (start + mask.cumsum(1) - 1).clamp(min=0), "logits_to_keep": 1, "use_cache": bool(start)}
    if start:
        enc[_cache_argument(model)] = DynamicCache(ddp_cache_data=[(c.keys[condition], c.values[condition])
                                                                   for c in prefix.layers], config=model.hf.config)
    return next_token_logprobs(model, enc, layer=layer, delta=deltas[condition], mask=steered)


def next_token_logprobs_per_condition(
    model: Model, prompts: Sequence[Sequence[int]], deltas: torch.Tensor, *, layer: int,
    marks: Sequence[Sequence[bool]] | None = None, tokens: Sequence[Sequence[int]] | None = None,
    share_prefix: bool | None = None, rows: int | None = None,
) -> torch.Tensor:
    """Next-token log-probabilities after each prompt under each steering condition, float32
    `(n_prompts, n_conditions, len(tokens))` (or `(..., vocab)` with `tokens=None`).

    `prompts`: token ids (special tokens included); prompt i under condition c has `deltas[c]`
    `(n_conditions, d)` added at `layer` on the tokens where `marks[i]` is True (default: every token; a
    zero row is the unsteered baseline). `tokens`: groups of token ids, each group's log-probability
    (log-sum-exp over its ids, e.g. every spelling of an answer letter) instead of the whole vocabulary.

    All conditions of a prompt share a forward pass (one batch row each); forward passes hold `rows` rows
    of prompts of similar length (little padding). With `share_prefix` (default: where `can_share_prefix`)
    the prompts' common beginning (`common_prefix`) runs once per condition into a key-value cache that every
    row continues from; the answers equal full forward passes to float precision.
    """
    n_cond = len(deltas)
    if not prompts:
        raise EmonnError("no prompts to read")
    marks = [(True,) * len(p) for p in prompts] if marks is None else marks
    if len(marks) != len(prompts) or any(len(m) != len(p) for m, p in zip(marks, prompts)):
        raise EmonnError("steering marks must have one entry per prompt token")
    layer = model.check_layers([layer])[0]
    share_prefix = can_share_prefix(model, max(len(p) for p in prompts)) if share_prefix is None else share_prefix
    start = common_prefix(prompts, marks) if share_prefix else 0
    prefix = _prefill(model, prompts[0][:start], marks[0][:start], deltas, layer) if start else None
    per_forward = max(1, (rows or (ROWS_SHARED_PREFIX if share_prefix else ROWS_FULL_PROMPT)) // n_cond)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = None
    for begin in range(0, len(order), per_forward):
        chunk = order[begin:begin + per_forward]
        logprobs = _rest_logprobs(model, [prompts[i] for i in chunk], [marks[i] for i in chunk], deltas, layer,
                                  start, prefix)
        if tokens is not None:
            logprobs = torch.stack([torch.logsumexp(logprobs[:, list(ids)], dim=-1) for ids in tokens], -1)
        if out is None:
            out = torch.empty(len(prompts), n_cond, logprobs.shape[-1])
        out[chunk] = logprobs.reshape(len(chunk), n_cond, -1).cpu()
    return out
