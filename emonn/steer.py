"""Steering: add `alpha * mean‖h‖ * v̂` to a layer's residual stream, in a trace or while generating.

`alpha` is a fraction of the layer's mean residual norm (measured on the corpus with `mean_norms`), so
one alpha means the same push at every layer and in every model. Each batch row carries its own vector
and alpha (a `(batch, d)` delta), so one forward pass serves a whole sweep. The in-trace half, `add`,
lives in `emonn.reducers` (the one module shipped to NDIF); this module is the host-side orchestration.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

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


def mean_norms(model: Model, texts: list[str], layers: list[int], *, start: int = 1) -> dict[int, float]:
    """Mean per-token residual norm ‖h‖ at each of `layers`, over tokens >= `start` of `texts`."""
    layers = model.check_layers(layers)
    enc = dict(model.tokenizer(list(texts), return_tensors="pt", padding=True))
    w = mean_from(enc["attention_mask"], start)
    blocks = [model.layer(i) for i in layers]
    with torch.no_grad(), model.trace(enc) as tracer:
        norms = nnsight.save([(hidden(b.output).float().norm(dim=-1) * w).sum(1).mean() for b in blocks])
        tracer.stop()
    return {layer: float(n) for layer, n in zip(layers, norms)}


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
        blocks = [model.layer(i) for i in steering]
        firsts = [d[:, None, :] * mask[..., None].float() for d in steering.values()]
        laters = [d[:, None, :] for d in steering.values()]
        with warnings.catch_warnings():
            # the open `tracer.all()` loop ends at the last step by design; nnsight warns about it every call
            warnings.filterwarnings("ignore", message=".*was never reached", category=UserWarning)
            with torch.no_grad(), model.lm.generate(**options) as tracer:
                with tracer.invoke(enc):
                    for step in tracer.all():
                        for block, first, later in zip(blocks, firsts, laters):
                            add(block.output, first if step == 0 else later)
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


def continuation_logprobs(model: Model, prompts: list[list[int]], continuations: list[list[int]], *,
                          batch_size: int = 16) -> list[np.ndarray]:
    """Unsteered log-probability of each continuation token given its prompt and the tokens before it:
    one float32 array `(len(continuations[i]),)` per row. (Perplexity = exp(-mean).) Only the last
    positions' logits are computed (`logits_to_keep`), so the lm_head runs on the continuation alone."""
    if len(prompts) != len(continuations):
        raise EmonnError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    lm, result = model.lm, []
    for begin in range(0, len(prompts), batch_size):
        rows = list(zip(prompts[begin:begin + batch_size], continuations[begin:begin + batch_size]))
        keep = max(len(c) for _, c in rows)
        if keep == 0:
            result += [np.zeros(0, np.float32) for _ in rows]
            continue
        enc = dict(model.tokenizer.pad({"input_ids": [list(p) + list(c) for p, c in rows]}, return_tensors="pt"))
        targets = enc["input_ids"][:, -keep:]  # left padding: every row's continuation ends in the last column
        with torch.no_grad(), model.trace(enc, logits_to_keep=keep + 1):
            logprobs = lm.output.logits[:, :-1].float().log_softmax(-1).gather(-1, targets[..., None])[..., 0].save()
        result += [logprobs[i, keep - len(c):].numpy() for i, (_, c) in enumerate(rows)]
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
        where = (enc["attention_mask"] if mask is None else mask)[..., None].float()
        block, addition = model.layer(model.check_layers([layer])[0]), delta[:, None, :] * where
        with torch.no_grad(), model.trace(enc):
            add(block.output, addition)
            logits = lm.output.logits[:, -1].save()
    return torch.log_softmax(logits.float(), dim=-1)
