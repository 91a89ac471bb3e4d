"""Arithmetic precision: what a GGUF-quantized model computes, compared and emulated on the loaded float model.

transformers dequantizes a GGUF on load, so the loaded float32 model holds the quantized weights but not
llama.cpp's quantized arithmetic. `gguf_check` says how close the loaded weights are to the file's tensors
(one row per quantized linear module, `by_type` per quantization type); `quantized_arithmetic` rounds each
quantized linear layer's input to 8 bits per block, as llama.cpp's CPU matmuls do, for as long as it is open;
`variants` hands a study the model in each arithmetic in turn (float32, a bfloat16 twin, emulated q8).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import torch

from emonn import models

#: The cache-folder suffix of activations read under `quantized_arithmetic` (`study.Run.cache(..., suffix=)`).
Q8_SUFFIX = "-q8act"
#: The columns of `gguf_check`: the linear module (HF name), its GGUF quantization type, and the largest
#: |difference| of its loaded weights from the file's tensor dequantized and from their own re-quantization.
CHECK_SCHEMA = {"module": pl.String, "type": pl.String, "dequantized": pl.Float64, "requantized": pl.Float64}


def gguf_check(model: models.Model, path: Path | None = None) -> pl.DataFrame:
    """The GGUF at `path` (default: the embedded model's; no rows for a model without one) against `model`'s
    loaded weights: one row per linear module stored quantized (not F32/F16/BF16). `dequantized`: the largest
    |difference| between the loaded weights and the file's tensor dequantized by the `gguf` package, on sorted
    values (the HF conversion permutes the rows of some matrices); `requantized`: between the loaded weights
    and their re-quantization in the same type (null where the package cannot quantize that type). Parsing
    the file takes ~20 s: cache the frame (`study.Run.unit`)."""
    import gguf
    from gguf import quants

    if path is None and model.name not in models.EMBEDDED:
        return pl.DataFrame(schema=CHECK_SCHEMA)
    reader = gguf.GGUFReader(path or models.EMBEDDED[model.name].gguf())
    field = reader.fields["general.architecture"]
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == bytes(field.parts[field.data[0]]).decode())
    names, tensors = gguf.get_tensor_name_map(arch, model.n_layers), {t.name: t for t in reader.tensors}
    rows = []
    for name, module in model.hf.named_modules():
        mapped = names.get_name(name) if isinstance(module, torch.nn.Linear) else None
        tensor = tensors.get(f"{mapped}.weight") if mapped else None
        if tensor is None or tensor.tensor_type.name in ("F32", "F16", "BF16"):
            continue
        kind, weight = tensor.tensor_type, module.weight.detach().float().numpy()
        original = quants.dequantize(tensor.data, kind)
        try:
            requantized = float(np.abs(quants.dequantize(quants.quantize(weight, kind), kind) - weight).max())
        except (NotImplementedError, quants.QuantError):
            requantized = None
        rows.append({"module": name, "type": kind.name, "requantized": requantized,
                     "dequantized": float(np.abs(np.sort(original, axis=None) - np.sort(weight, axis=None)).max())})
    return pl.DataFrame(rows, schema=CHECK_SCHEMA)


def by_type(check: pl.DataFrame) -> pl.DataFrame:
    """`gguf_check` per quantization type (in order of first appearance): the largest `dequantized` and
    `requantized` differences; `requantized` is null where any module of the type could not be re-quantized."""
    requantized = pl.col("requantized")
    return check.group_by("type", maintain_order=True).agg(
        pl.col("dequantized").max(),
        pl.when(requantized.null_count() > 0).then(None).otherwise(requantized.max()).alias("requantized"))


def quantized_types(check: pl.DataFrame) -> dict[str, str]:
    """{linear module: quantization type} of a `gguf_check` frame: the `types` of `quantized_arithmetic`."""
    return dict(zip(check["module"], check["type"]))


def block_size(kind: str) -> int:
    """The block over which llama.cpp quantizes a matmul's input for weights of type `kind`: 256 for k-quants
    (Q8_K), else 32 (Q8_0/Q8_1)."""
    return 256 if kind.endswith("_K") else 32


@contextlib.contextmanager
def quantized_arithmetic(model: models.Model, types: dict[str, str]) -> Iterator[None]:
    """Emulate llama.cpp's CPU matmuls with quantized weights while open: the input `(..., d_in)` of each
    linear module named in `types` ({module: quantization type}) is rounded to 8 bits per block of
    `block_size(type)` values, with scale max|x|/127, before the exact product with the dequantized weights.
    Norms, attention and the f16 KV cache are not emulated. The hooks are removed on exit."""

    def hook(block: int):
        def round_input(module, args):
            x = args[0]
            blocks = x.reshape(*x.shape[:-1], -1, block)
            scale = blocks.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
            return ((blocks / scale).round() * scale).reshape(x.shape), *args[1:]
        return round_input

    modules = dict(model.hf.named_modules())
    handles = [modules[name].register_forward_pre_hook(hook(block_size(kind))) for name, kind in types.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def variants(model: models.Model, source: str, check: pl.DataFrame | None = None
             ) -> Iterator[tuple[str, models.Model, str]]:
    """`(variant, reader, cache suffix)` for each arithmetic of `model`, each yielded while it is in effect:
    `float32` (`model` as loaded), `bfloat16` (a twin loaded again from `source`, the name `model` was loaded
    by: a load in that dtype, not a cast, so the buffers transformers keeps in float32 stay float32) and, where
    the `gguf_check` has rows, `q8 activations` (`model` under `quantized_arithmetic`, cached with `Q8_SUFFIX`).
    Loop to the end: leaving the loop early keeps the q8 hooks until the generator is closed."""
    yield "float32", model, ""
    yield "bfloat16", models.load(source, dtype=torch.bfloat16), ""
    if check is not None and check.height:
        with quantized_arithmetic(model, quantized_types(check)):
            yield "q8 activations", model, Q8_SUFFIX


__all__ = ["CHECK_SCHEMA", "Q8_SUFFIX", "block_size", "by_type", "gguf_check", "quantized_arithmetic",
           "quantized_types", "variants"]
