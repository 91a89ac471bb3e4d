"""Steering: add `alpha * mean‖h‖ * v̂` to a layer's residual stream, in a trace or while generating.

`alpha` is a fraction of the layer's mean residual norm (measured on the corpus with `mean_norms`), so
one alpha means the same push at every layer and in every model. Each batch row carries its own vector
and alpha (a `(batch, d)` delta), so one forward pass serves a whole sweep. `add` is the only code that
runs inside the trace; it imports nothing beyond torch so it ships to NDIF (see `emonn.remote`).
"""

from __future__ import annotations

from dataclasses import dataclass

import nnsight
import numpy as np
import torch

from emonn import EmonnError
from emonn.models import Model
from emonn.reducers import hidden, mean_from


def add(output: torch.Tensor | tuple, delta: torch.Tensor) -> None:
    """In-trace, in place: residual `(batch, tokens, d)` += `delta` (broadcast from `(batch, tokens|1, d)`)."""
    h = hidden(output)
    h += delta.to(h.device, h.dtype)


def deltas(directions: np.ndarray, alphas: np.ndarray, norm: float) -> torch.Tensor:
    """Per-row additions `(batch, d)`: `alphas[i] * norm * directions[i] / ‖directions[i]‖`."""
    directions = np.asarray(directions, dtype=np.float64)
    units = directions / np.maximum(np.linalg.norm(directions, axis=-1, keepdims=True), 1e-12)
    return torch.tensor(np.asarray(alphas, dtype=np.float64)[:, None] * norm * units, dtype=torch.float32)


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


def generate(model: Model, prompts: list[str], *, layer: int | None = None, delta: torch.Tensor | None = None,
             steer_prompt: bool = False, max_new_tokens: int = 40, do_sample: bool = False,
             temperature: float = 1.0, seed: int = 0) -> Generation:
    """Generate from `prompts` (one row each), adding `delta[i]` `(batch, d)` at `layer` to row i.

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
        if delta.shape != (len(prompts), model.d_model):
            raise EmonnError(f"steering delta {tuple(delta.shape)} must be (n_prompts, d_model) = "
                             f"({len(prompts)}, {model.d_model})")
        mask = enc["attention_mask"] if steer_prompt else torch.zeros_like(enc["attention_mask"])
        mask[:, -1] = 1  # left padding: the last column is every row's last prompt token
        first, later = delta[:, None, :] * mask[..., None].float(), delta[:, None, :]
        block = model.layer(model.check_layers([layer])[0])
        with torch.no_grad(), model.lm.generate(**options) as tracer:
            with tracer.invoke(enc):
                for step in tracer.all():
                    add(block.output, first if step == 0 else later)
            with tracer.invoke():
                ids = tracer.result.save()
    new = ids[:, enc["input_ids"].shape[1]:]
    return Generation(new, model.tokenizer.batch_decode(new, skip_special_tokens=True))


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
