"""Generation-based extraction: the in-trace reduction over generated tokens, checked against plain HF."""

import numpy as np
import pytest
import torch
from nnsight.modeling.processing import positions

from emonn import EmonnError, extract, models
from emonn.reducers import still_generating
from emonn.runs import GenerationCache
from conftest import SENTENCES, crash_after, tiny_model


def _hf_generated_mean(model, prompts, ids):
    """Each layer's raw output (forward hooks, no final norm) over prompt + generated ids in one plain HF
    forward, averaged over the generated positions."""
    enc = model.tokenizer(prompts, return_tensors="pt", padding=True)
    width = max(len(row) for row in ids)
    new = torch.tensor([[model.tokenizer.pad_token_id] * (width - len(row)) + row for row in ids])
    real = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids])
    # generated ids sit right after the prompt: pad each row's tail, not its head, to keep positions
    new = torch.stack([torch.roll(row, -(width - len(ids[i]))) for i, row in enumerate(new)])
    real = torch.stack([torch.roll(row, -(width - len(ids[i]))) for i, row in enumerate(real)])
    input_ids = torch.cat([enc["input_ids"], new], 1)
    mask = torch.cat([enc["attention_mask"], real], 1)
    outputs = []
    hf = model.lm._module
    layers = [module for module in hf.modules() if module.__class__.__name__.endswith("DecoderLayer")]
    hooks = [layer.register_forward_hook(lambda mod, args, out: outputs.append(out[0] if isinstance(out, tuple)
                                                                                else out)) for layer in layers]
    try:
        with torch.no_grad():
            hf(input_ids=input_ids, attention_mask=mask, position_ids=positions(mask))
    finally:
        for hook in hooks:
            hook.remove()
    w = torch.cat([torch.zeros_like(enc["attention_mask"]), real], 1).float()
    w = w / w.sum(1, keepdim=True)
    return torch.stack([torch.bmm(w[:, None], h.float()).squeeze(1) for h in outputs], 1).numpy()


def _close(a, b, rtol=1e-5):
    """Equal up to float32 rounding at the activations' scale (the KV cache sums in another order)."""
    np.testing.assert_allclose(a, b, atol=1e-5 + rtol * float(np.abs(b).max()))


STOPS = [2, 5, 9, 12, 20, 30, 33]  # many stop tokens: rows end at different steps


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_in_trace_reduction_equals_a_plain_hf_forward(arch, monkeypatch):
    model = tiny_model(arch, bos=arch == "gemma3_text")
    monkeypatch.setattr(models.Model, "stop_ids", lambda self: STOPS)
    got = extract.generated_activations(model, SENTENCES * 2, max_new_tokens=7, temperature=3.0, batch_size=6,
                                        progress=False)
    lengths = [len(row) for row in got.ids]
    assert len(set(lengths)) > 1 and max(lengths) == 7 and min(lengths) >= 1  # some rows stopped early
    assert not any(t in STOPS for row in got.ids for t in row)
    assert got.acts.shape == (12, 4, 32) and got.acts.dtype == np.float32
    for unit in (slice(0, 6), slice(6, 12)):
        _close(got.acts[unit], _hf_generated_mean(model, (SENTENCES * 2)[unit], got.ids[unit]))
    _close(extract.reread(model, SENTENCES * 2, got.ids, progress=False), got.acts)
    assert got.texts == [model.tokenizer.decode(row, skip_special_tokens=True) for row in got.ids]


def test_strict_remote_check_gives_the_local_result_to_bfloat16_precision(tiny):
    local = extract.generated_activations(tiny, SENTENCES, max_new_tokens=5, do_sample=False, batch_size=4,
                                          progress=False)
    checked = extract.generated_activations(tiny.with_remote("check"), SENTENCES, max_new_tokens=5, do_sample=False,
                                            batch_size=4, progress=False)
    # run as the server runs it (bfloat16 autocast): greedy ids may part where two logits are within rounding
    same = [i for i, (a, b) in enumerate(zip(checked.ids, local.ids)) if a == b]
    assert len(same) >= len(local.ids) // 2 and checked.acts.dtype == np.float32
    a, b = checked.acts[same], local.acts[same]
    assert ((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min() > 0.999


def test_layers_seed_and_bad_input(tiny):
    every = extract.generated_activations(tiny, SENTENCES[:3], max_new_tokens=4, seed=1, progress=False)
    again = extract.generated_activations(tiny, SENTENCES[:3], max_new_tokens=4, seed=1, layers=[1, -1],
                                          progress=False)
    other = extract.generated_activations(tiny, SENTENCES[:3], max_new_tokens=4, seed=2, temperature=3.0,
                                          progress=False)
    np.testing.assert_array_equal(again.acts, every.acts[:, [1, 3]])
    assert other.ids != every.ids
    with pytest.raises(EmonnError, match="no prompts"):
        extract.generated_activations(tiny, [])
    with pytest.raises(EmonnError, match="must be >= 1"):
        extract.generated_activations(tiny, ["the cat"], max_new_tokens=0)
    with pytest.raises(EmonnError, match="one non-empty list"):
        extract.reread(tiny, ["the cat"], [[]])


def test_still_generating_zeroes_a_row_from_its_stop_token_on():
    alive = torch.ones(3)
    for column in ([4, 2, 4], [2, 4, 4], [4, 4, 7]):
        alive = still_generating(alive, torch.tensor([[9, t] for t in column]), torch.tensor([2, 7]))
    assert alive.tolist() == [0.0, 0.0, 0.0]
    assert still_generating(torch.ones(2), torch.tensor([[4], [2]]), torch.tensor([2])).tolist() == [1.0, 0.0]


def test_cache_resumes_per_unit_with_the_same_samples(tiny, tmp_path, monkeypatch):
    prompts = SENTENCES * 2
    expected = extract.generated_activations(tiny, prompts, max_new_tokens=5, temperature=2.0, batch_size=4,
                                             progress=False)
    cache, real = GenerationCache(tmp_path), extract.generate_pooled
    monkeypatch.setattr(extract, "generate_pooled", crash_after(1, real))
    with pytest.raises(KeyboardInterrupt):
        extract.generated_activations(tiny, prompts, max_new_tokens=5, temperature=2.0, batch_size=4, cache=cache,
                                      progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    monkeypatch.setattr(extract, "generate_pooled", real)
    resumed = extract.generated_activations(tiny, prompts, max_new_tokens=5, temperature=2.0, batch_size=4,
                                            cache=cache, progress=False)
    assert resumed.ids == expected.ids and resumed.texts == expected.texts
    np.testing.assert_allclose(resumed.acts, expected.acts, atol=1e-6)
    monkeypatch.setattr(extract, "generate_pooled", lambda *a, **k: pytest.fail("regenerated a cached unit"))
    cached = extract.generated_activations(tiny, prompts, max_new_tokens=5, temperature=2.0, batch_size=4,
                                           cache=cache, progress=False)
    assert cached.ids == expected.ids and np.array_equal(cached.acts, resumed.acts)


@pytest.mark.real
def test_real_in_trace_reduction_equals_hf_and_the_strict_check(smollm2):
    prompts = [smollm2.chat(f"Write one sentence about a person who feels {e}.")
               for e in ("afraid", "proud", "lonely")]
    local = extract.generated_activations(smollm2, prompts, max_new_tokens=8, do_sample=False, progress=False)
    assert all(len(row) == 8 for row in local.ids)
    _close(local.acts, _hf_generated_mean(smollm2, prompts, local.ids), rtol=1e-4)
    checked = extract.generated_activations(smollm2.with_remote("check"), prompts, max_new_tokens=8,
                                            do_sample=False, progress=False)
    # run as the server runs it (bfloat16 autocast): greedy ids may part where two logits are within rounding
    same = [i for i, (a, b) in enumerate(zip(checked.ids, local.ids)) if a == b]
    assert len(same) >= len(local.ids) // 2 and checked.acts.dtype == np.float32
    a, b = checked.acts[same], local.acts[same]
    assert ((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min() > 0.999
