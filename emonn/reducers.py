"""Every function that runs inside an nnsight trace: reductions over token positions and the steering add.

This is the only emonn module shipped to NDIF (`emonn.remote.register_emonn`), so it imports nothing beyond
torch and nothing from emonn (see NNSIGHT_NOTES). A reducer is a weight matrix `(batch, tokens)` built from
the attention mask *outside* the trace; the in-trace part is one batched matmul (`pool`), so only
`(batch, d_model)` per layer leaves the trace. `add` is the in-trace half of steering (`emonn.steer`).
"""

from __future__ import annotations

import torch


def hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    """A decoder block's residual-stream output `(batch, tokens, d)`: a tensor in transformers 5, a tuple
    `(hidden, ...)` in some 4.x models."""
    return output[0] if isinstance(output, tuple) else output


def add(output: torch.Tensor | tuple, delta: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """In-trace, in place: residual `(batch, tokens, d)` += `delta` `(batch, d)` at every position, or only
    where `mask` `(batch, tokens)` is nonzero (times it). The `(batch, d)` delta and the mask are what a
    remote request carries; the `(batch, tokens, d)` addition is made here, on the residual's device."""
    h = hidden(output)
    step = delta.to(h.device, h.dtype)[:, None, :]
    if mask is not None:
        step = step * mask.to(h.device, h.dtype)[..., None]
    h += step


def pool(output: torch.Tensor | tuple, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over tokens in float32: `(batch, tokens, d)` x `(batch, tokens)` -> `(batch, d)`. Autocast
    is off, so a server that runs traces under bfloat16 autocast still computes (and returns) float32."""
    h = hidden(output)
    with torch.autocast(h.device.type, enabled=False):
        return torch.bmm(weights.to(h.device, torch.float32).unsqueeze(1), h.float()).squeeze(1)


def gather(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer results `[(batch, ...)]` stacked on the first one's device `(batch, n, ...)`: under a device
    map the layers of one model live on several GPUs."""
    return torch.stack([t.to(tensors[0].device) for t in tensors], 1)


def mean_from(attention_mask: torch.Tensor, start: int) -> torch.Tensor:
    """Weights `(batch, tokens)` of a mean over each text's real tokens at positions >= `start`.

    Positions count real tokens only (left padding is skipped; a BOS token, where the tokenizer adds
    one, is position 0). Rule for short texts: a text with `start` or fewer tokens is averaged over its
    last token alone, so every text gets a vector (`extract.activations` warns how many).
    """
    mask = attention_mask.bool()
    position = mask.long().cumsum(1) - 1
    first = torch.clamp(mask.sum(1, keepdim=True) - 1, max=start)
    keep = (mask & (position >= first)).float()
    return keep / keep.sum(1, keepdim=True)


def last_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """Weights `(batch, tokens)` selecting each text's last real token."""
    return mean_from(attention_mask, start=attention_mask.shape[1])


def still_generating(alive: torch.Tensor, input_ids: torch.Tensor, stop_ids: torch.Tensor) -> torch.Tensor:
    """In-trace, at a generation step after the prompt: `alive` `(batch,)` (1 while a row has read no stop
    token yet) updated with the token this step reads, the last column of `input_ids` `(batch, tokens)`.
    A row's stop token and everything after it (padding) get weight 0."""
    token = input_ids[:, -1]
    return alive.to(token.device) * ~torch.isin(token, stop_ids.to(token.device))


def token_cosines(output: torch.Tensor | tuple, center: torch.Tensor, pcs: torch.Tensor, units: torch.Tensor
                  ) -> torch.Tensor:
    """Cosine of every token's residual stream with each emotion vector, in float32 (`emonn.probe`):
    `(batch, tokens, d)` minus `center` `(d,)`, the neutral directions `pcs` `(n_pcs, d)` (orthonormal rows;
    `(0, d)`: none) projected out, normalised, times the unit vectors `units` `(n_emotions, d)` ->
    `(batch, tokens, n_emotions)`: `EmotionVectors.scores` per token. Autocast is off, so a server that runs
    traces under bfloat16 autocast still computes (and returns) float32."""
    h = hidden(output)
    with torch.autocast(h.device.type, enabled=False):
        x = h.float() - center.to(h.device, torch.float32)
        p = pcs.to(h.device, torch.float32)
        x = x - (x @ p.T) @ p
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x @ units.to(h.device, torch.float32).T


def lens(norm: torch.nn.Module, head: torch.nn.Module, x: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """In-trace: vectors x `(n, d)` through the final norm and the unembedding, first moved to the device and
    dtype of `partner` (a model tensor, e.g. the input embedding's output): float32 logits `(n, vocab)`."""
    return head(norm(x.to(partner.device, partner.dtype))).float()


REDUCERS = ("mean", "last")


def weights(attention_mask: torch.Tensor, reducer: str, start: int) -> torch.Tensor:
    """The weights of reducer `reducer` (`mean` from token `start`, or `last`)."""
    return mean_from(attention_mask, start) if reducer == "mean" else last_token(attention_mask)
