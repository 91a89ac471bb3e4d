"""Every entry point that runs a trace, on a model in bfloat16 (what `--dtype auto` picks on a GPU and on CPUs
that multiply it natively): it runs, returns float32, and agrees with the same model in float32 to bfloat16
precision. Float32 tensors built outside the trace (weights, steering deltas, vectors) meet bfloat16 model
tensors inside it; each must take its partner's dtype (and device)."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from emonn import extract, models, probe, steer
from emonn.vectors import EmotionVectors
from conftest import SENTENCES, tiny_model


@pytest.fixture(scope="module")
def pair():
    model = tiny_model("llama")
    half = models.wrap(copy.deepcopy(model.hf).to(torch.bfloat16), model.tokenizer, name="tiny-llama-bf16")
    assert half.dtype == torch.bfloat16 and model.dtype == torch.float32
    return model, half


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def both(pair, fn):
    out = [fn(m) for m in pair]
    for x in out:
        x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        assert x.dtype == np.float32
    return [x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in out]


def test_activations_and_embeddings(pair):
    full, half = both(pair, lambda m: extract.activations(m, SENTENCES, start=2, progress=False))
    assert cosine(full, half).min() > 0.99
    full, half = both(pair, lambda m: extract.embeddings(m, SENTENCES, start=2, progress=False))
    assert cosine(full, half).min() > 0.99


def test_logit_lens(pair):
    x = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    full, half = both(pair, lambda m: extract.logit_lens(m, x))
    assert cosine(full, half).min() > 0.99


def test_norms_and_continuation_logprobs(pair):
    norms = [steer.mean_norms(m, SENTENCES[:3], [1, 3]) for m in pair]
    assert norms[1] == pytest.approx(norms[0], rel=0.02)
    ids = pair[0].tokenizer(SENTENCES[:2])["input_ids"]
    full, half = (np.concatenate(x) for x in (steer.continuation_logprobs(m, [i[:3] for i in ids], [i[3:] for i in ids])
                                              for m in pair))
    assert full.dtype == half.dtype == np.float32 and np.abs(full - half).max() < 0.1


def test_steered_next_token_logprobs_and_generation(pair):
    ids = pair[0].tokenizer(SENTENCES[:3])["input_ids"]
    deltas = steer.deltas(np.eye(32)[:2], np.array([0.0, 4.0]), 1.0)  # float32 deltas into a bfloat16 residual
    full, half = both(pair, lambda m: steer.next_token_logprobs_per_condition(m, ids, deltas, layer=1,
                                                                               share_prefix=False))
    assert np.abs(np.exp(full) - np.exp(half)).max() < 0.02
    runs = [steer.generate(m, SENTENCES[:2], layer=1, delta=deltas, max_new_tokens=3) for m in pair]
    assert all(r.ids.shape == (2, 3) for r in runs)


def test_generated_and_reread_activations(pair):
    full, half = (extract.generated_activations(m, SENTENCES[:2], max_new_tokens=3, do_sample=False, progress=False)
                  for m in pair)
    assert full.acts.dtype == half.acts.dtype == np.float32
    same = [i for i, (a, b) in enumerate(zip(full.ids, half.ids)) if list(a) == list(b)]  # greedy may differ
    assert not same or cosine(full.acts[same], half.acts[same]).min() > 0.99
    full, half = both(pair, lambda m: extract.reread(m, SENTENCES[:2], [[5, 6, 7]] * 2, progress=False))
    assert cosine(full, half).min() > 0.99


def test_probe_scores(pair):
    acts = extract.activations(pair[0], SENTENCES[:6], start=1, progress=False)
    vectors = EmotionVectors.from_arrays(acts, ["sad", "joyful", "calm"] * 2, layers=list(range(4)))
    ids = pair[0].tokenizer(SENTENCES[0])["input_ids"]
    full, half = both(pair, lambda m: probe.scores(m, vectors, ids, 2))
    assert np.abs(full - half).max() < 0.05


def test_a_model_in_bfloat16_has_its_own_cache_name(pair, tmp_path):
    from emonn import runs

    names = {runs.activation_cache(tmp_path, m, "mean", 20).folder.name for m in pair}
    assert len(names) == 2 and any("bfloat16" in name for name in names)
    assert dataclasses.replace(pair[1]).dtype == torch.bfloat16
