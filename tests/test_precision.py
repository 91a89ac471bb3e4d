import numpy as np
import polars as pl
import pytest
import torch

from emonn import extract, precision
from conftest import SENTENCES


def linear_names(model) -> list[str]:
    return [n for n, m in model.hf.named_modules() if isinstance(m, torch.nn.Linear) and "proj" in n]


def test_quantized_arithmetic_rounds_linear_inputs_and_is_undone(tiny):
    before = extract.activations(tiny, SENTENCES, start=0, progress=False)
    with precision.quantized_arithmetic(tiny, {name: "Q4_1" for name in linear_names(tiny)}):
        rounded = extract.activations(tiny, SENTENCES, start=0, progress=False)
    after = extract.activations(tiny, SENTENCES, start=0, progress=False)
    assert np.array_equal(before, after)  # the hooks are gone
    cosine = (rounded * before).sum(-1) / np.linalg.norm(rounded, axis=-1) / np.linalg.norm(before, axis=-1)
    assert not np.array_equal(rounded, before) and cosine.min() > 0.99


def test_quantized_arithmetic_is_blockwise_8_bit_rounding(tiny):
    name = linear_names(tiny)[0]
    module = dict(tiny.hf.named_modules())[name]
    seen = []
    with precision.quantized_arithmetic(tiny, {name: "Q8_0"}):
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))  # runs after it
        extract.activations(tiny, SENTENCES[:1], start=0, progress=False)
        handle.remove()
    blocks = seen[0].reshape(-1, precision.block_size("Q8_0"))
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    assert torch.allclose(blocks / scale, (blocks / scale).round(), atol=1e-3)  # 255 levels per block of 32
    assert precision.block_size("Q4_K") == 256 and precision.block_size("Q4_1") == 32


def test_by_type_takes_the_largest_difference_and_keeps_unquantizable_types_null():
    check = pl.DataFrame([
        {"module": "a", "type": "Q4_1", "dequantized": 0.0, "requantized": 0.1},
        {"module": "b", "type": "Q6_K", "dequantized": 0.2, "requantized": None},
        {"module": "c", "type": "Q4_1", "dequantized": 0.3, "requantized": 0.05},
        {"module": "d", "type": "Q6_K", "dequantized": 0.1, "requantized": 0.4},
    ], schema=precision.CHECK_SCHEMA)
    assert precision.by_type(check).to_dicts() == [
        {"type": "Q4_1", "dequantized": 0.3, "requantized": 0.1},
        {"type": "Q6_K", "dequantized": 0.2, "requantized": None}]
    assert precision.quantized_types(check) == {"a": "Q4_1", "b": "Q6_K", "c": "Q4_1", "d": "Q6_K"}


def write_gguf(path, model, kind):
    """A GGUF holding `model`'s linear weights quantized in `kind` (under their llama.cpp names)."""
    import gguf
    from gguf import quants

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.n_layers)
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, module in model.hf.named_modules():
        mapped = names.get_name(name) if isinstance(module, torch.nn.Linear) else None
        if mapped:
            weight = module.weight.detach().float().numpy()
            writer.add_tensor(f"{mapped}.weight", quants.quantize(weight, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_check_is_zero_for_weights_that_are_the_files_and_not_otherwise(tmp_path, tiny):
    from gguf import GGMLQuantizationType as Q, quants

    path = tmp_path / "tiny.gguf"
    write_gguf(path, tiny, Q.Q8_0)
    check = precision.gguf_check(tiny, path)  # the float weights against their quantization
    assert check.columns == list(precision.CHECK_SCHEMA) and set(check["type"]) == {"Q8_0"}
    assert set(linear_names(tiny)) <= set(check["module"])
    assert (check["dequantized"] > 0).all() and (check["requantized"] > 0).all()
    with torch.no_grad():  # the weights the file holds: dequantized, the file's own values exactly
        for name in check["module"]:
            weight = dict(tiny.hf.named_modules())[name].weight
            weight.copy_(torch.from_numpy(quants.dequantize(quants.quantize(weight.numpy(), Q.Q8_0), Q.Q8_0)))
    exact = precision.by_type(precision.gguf_check(tiny, path))
    assert exact.to_dicts() == [{"type": "Q8_0", "dequantized": 0.0, "requantized": 0.0}]


@pytest.mark.real
def test_real_loaded_weights_are_the_gguf_quantized_weights(smollm2):
    check = precision.gguf_check(smollm2)
    assert check.height == 7 * smollm2.n_layers and set(check["type"]) == {"Q4_1"}
    assert precision.by_type(check).to_dicts() == [{"type": "Q4_1", "dequantized": 0.0, "requantized": 0.0}]


def test_variants_yield_each_arithmetic_with_its_cache_suffix(tiny, monkeypatch):
    import copy

    from emonn import models

    twin = models.wrap(copy.deepcopy(tiny.hf).to(torch.bfloat16), tiny.tokenizer, name=tiny.name)
    monkeypatch.setattr(models, "load", lambda name, remote=False, dtype=torch.float32, **kw: twin)
    check = pl.DataFrame([{"module": n, "type": "Q8_0", "dequantized": 0.0, "requantized": 0.0}
                          for n in linear_names(tiny)], schema=precision.CHECK_SCHEMA)
    before = extract.activations(tiny, SENTENCES, start=0, progress=False)
    seen = {}
    for variant, reader, suffix in precision.variants(tiny, "tiny", check):
        seen[variant] = (reader.dtype, suffix, extract.activations(reader, SENTENCES, start=0, progress=False))
    assert list(seen) == ["float32", "bfloat16", "q8 activations"]
    assert [seen[v][:2] for v in seen] == [(torch.float32, ""), (torch.bfloat16, ""), (torch.float32, "-q8act")]
    assert np.array_equal(seen["float32"][2], before) and not np.array_equal(seen["q8 activations"][2], before)
    assert np.array_equal(extract.activations(tiny, SENTENCES, start=0, progress=False), before)  # hooks removed
    empty = pl.DataFrame(schema=precision.CHECK_SCHEMA)  # a model without a GGUF: no quantized variant
    assert [v for v, _, _ in precision.variants(tiny, "tiny", empty)] == ["float32", "bfloat16"]
    assert precision.gguf_check(tiny).is_empty()  # not an embedded model
