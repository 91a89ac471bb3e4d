"""The offline remote check: requests built exactly as remote=True, refused where NDIF lacks a module."""

import os

import numpy as np
import pytest
import torch

from emonn import EmonnError, models
from emonn.extract import activations
from emonn.reducers import pool
from emonn.remote import StrictServerBackend
from conftest import SENTENCES


def _encode(model):
    return dict(model.tokenizer(SENTENCES[:2], return_tensors="pt", padding=True))


def _cosine(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_extraction_request_passes_and_matches_local(tiny):
    local = activations(tiny, SENTENCES, start=1, progress=False)
    checked = activations(tiny.with_remote("check"), SENTENCES, start=1, progress=False)
    # the check runs as the server does, under bfloat16 autocast: float32 out, equal to bfloat16 precision
    assert checked.dtype == np.float32 and _cosine(local, checked).min() > 0.999
    assert 0 < StrictServerBackend.last_payload_bytes < 200_000


def test_the_check_runs_under_the_servers_bfloat16_autocast(tiny):
    enc, block, w = _encode(tiny), tiny.layer(1), torch.ones(2, 32)
    weights = torch.ones(2, enc["input_ids"].shape[1])
    with torch.no_grad(), tiny.with_remote("check").trace(enc):
        product = (block.output @ w.T).save()  # a matmul inside the trace: bfloat16 on the server
        pooled = pool(block.output, weights).save()  # emonn's reductions turn autocast off
    assert product.dtype == torch.bfloat16  # so `.numpy()` on it would fail there
    assert pooled.dtype == torch.float32 and torch.get_default_dtype() == torch.float32  # restored after


def test_os_in_a_trace_is_refused(tiny):
    import os

    enc, block = _encode(tiny), tiny.layer(0)
    with pytest.raises(EmonnError, match="module 'os'"):
        with torch.no_grad(), tiny.with_remote("check").trace(enc):
            out = (block.output.sum() + os.getpid()).save()


def test_functools_in_a_trace_is_refused(tiny):
    import functools
    import operator

    enc, block = _encode(tiny), tiny.layer(0)
    with pytest.raises(EmonnError, match="module 'functools'"):
        with torch.no_grad(), tiny.with_remote("check").trace(enc):
            out = (block.output.sum() + functools.reduce(operator.add, [1, 2])).save()


def test_json_in_a_trace_is_refused(tiny):
    enc, block = _encode(tiny), tiny.layer(0)
    with pytest.raises(EmonnError, match="module 'json'"):
        with torch.no_grad(), tiny.with_remote("check").trace(enc):
            import json

            out = (block.output.sum() + len(json.dumps([1]))).save()


def test_import_of_an_allowed_module_passes_and_a_stripped_builtin_is_refused(tiny):
    enc, block = _encode(tiny), tiny.layer(0)
    with torch.no_grad(), tiny.with_remote("check").trace(enc):
        import math

        out = (block.output.sum() * math.pi).save()
    assert out.dtype == torch.float32
    with pytest.raises(EmonnError, match="builtin 'open'"):
        with torch.no_grad(), tiny.with_remote("check").trace(enc):
            handle = open
            out = block.output.save()


def test_polars_in_trace_is_refused_though_nnsight_local_passes_it(tiny):
    import polars as pl

    enc, block = _encode(tiny), tiny.layer(0)
    with torch.no_grad(), tiny.lm.trace(enc, remote="local"):  # nnsight's own dry run: too weak
        size = (block.output.shape[0] + pl.Series([1, 2]).sum()).save()
    assert size == 5
    with pytest.raises(EmonnError, match="needs module 'polars'"):
        with torch.no_grad(), tiny.with_remote("check").trace(enc):
            size = (block.output.shape[0] + pl.Series([1, 2]).sum()).save()


def test_function_by_reference_from_a_missing_module_is_refused(tiny):
    from scipy.special import expit

    block = tiny.layer(0)
    with pytest.raises(EmonnError, match="needs module 'scipy"):
        with torch.no_grad(), tiny.with_remote("check").trace(_encode(tiny)):
            out = expit(block.output).save()


def test_import_statement_in_trace_is_refused(tiny):
    block = tiny.layer(0)
    with pytest.raises(EmonnError, match="needs module 'statsmodels'"):
        with torch.no_grad(), tiny.with_remote("check").trace(_encode(tiny)):
            import statsmodels  # noqa: F401

            out = block.output.save()


def test_referencing_the_emonn_model_in_a_trace_is_refused(tiny):
    with pytest.raises(EmonnError, match="module 'emonn.models'"):
        with torch.no_grad(), tiny.with_remote("check").trace(_encode(tiny)):
            out = tiny.layer(0).output.save()


@pytest.fixture(scope="module")
def hosted():
    if not os.environ.get("NDIF_API_KEY"):
        pytest.skip("live NDIF test: set NDIF_API_KEY to run it")
    return models.load("meta-llama/Llama-3.1-8B", remote=True)


LIVE = ["The storm tore the roof away from the old house.", "She opened the letter and read it twice."]


def every_request_type(model, layer: int) -> None:
    """One request of each type emonn sends: each returns float32 of the right shape."""
    from emonn import extract, probe, steer
    from emonn.vectors import EmotionVectors

    d = model.d_model
    acts = activations(model, LIVE, start=1, layers=[0, layer], progress=False)
    assert acts.shape == (2, 2, d) and acts.dtype == np.float32 and np.isfinite(acts).all()
    assert extract.embeddings(model, LIVE, start=1, progress=False).shape == (2, d)
    assert extract.logit_lens(model, acts[:, 1]).dtype == np.float32
    assert set(steer.mean_norms(model, LIVE, [layer])) == {layer}
    ids = model.tokenizer(LIVE)["input_ids"]
    got = steer.continuation_logprobs(model, [i[:3] for i in ids], [i[3:] for i in ids])
    assert [len(x) for x in got] == [len(i) - 3 for i in ids] and got[0].dtype == np.float32
    deltas = steer.deltas(np.eye(d)[:2], np.array([0.0, 4.0]), 1.0)
    assert steer.next_token_logprobs_per_condition(model, ids, deltas, layer=layer).shape[:2] == (2, 2)
    assert steer.generate(model, LIVE, layer=layer, delta=deltas, max_new_tokens=3).ids.shape[0] == 2
    generated = extract.generated_activations(model, LIVE, max_new_tokens=3, do_sample=False, layers=[layer],
                                              progress=False)
    assert generated.acts.shape == (2, 1, d) and generated.acts.dtype == np.float32
    assert extract.reread(model, LIVE, generated.ids, layers=[layer], progress=False).shape == (2, 1, d)
    vectors = EmotionVectors.from_arrays(np.concatenate([acts, acts]), ["sad", "calm"] * 2, layers=[0, layer])
    assert probe.scores(model, vectors, ids[0], layer).shape == (len(ids[0]), 2)


def test_every_request_type_passes_the_check(tiny):
    every_request_type(tiny.with_remote("check"), 2)


@pytest.mark.ndif
def test_live_ndif_every_request_type(hosted):
    every_request_type(hosted, 16)


class _Env:
    def __init__(self, local_python, remote_python, local_nnsight, remote_nnsight):
        self.local_python, self.remote_python = local_python, remote_python
        self.packages = {"nnsight": {"local": local_nnsight, "remote": remote_nnsight,
                                     "match": local_nnsight == remote_nnsight, "critical": True}}


@pytest.mark.parametrize("env, message", [
    (_Env("3.11.9", "3.12.3", "0.8.1", "0.8.1"), "NDIF runs Python 3.12, this environment Python 3.11"),
    (_Env("3.12.1", "3.12.3", "0.8.2", "0.8.1"), "pip install 'nnsight==0.8.1'"),
    (_Env("3.12.1", "3.12.3", "0.7.0", "0.8.1"), "pip install 'nnsight==0.8.1'"),
])
def test_version_preflight_stops_in_one_line_with_what_to_install(monkeypatch, env, message):
    from nnsight import ndif

    from emonn import remote

    remote.preflight.cache_clear()
    monkeypatch.setattr(ndif, "compare", lambda: env)
    with pytest.raises(EmonnError, match=message.replace("(", r"\(").replace(".", r"\.")):
        remote.preflight()
    remote.preflight.cache_clear()
    monkeypatch.setattr(ndif, "compare", lambda: _Env("3.12.1", "3.12.3", "0.8.1", "0.8.1"))
    remote.preflight()  # same major.minor Python and the same nnsight: nothing to say
    remote.preflight.cache_clear()

    def offline():
        raise ConnectionError("Max retries exceeded with url: /env\nmore")

    monkeypatch.setattr(ndif, "compare", offline)
    with pytest.raises(EmonnError, match="cannot reach NDIF to compare versions before sending: Max retries"):
        remote.preflight()
    remote.preflight.cache_clear()


def test_a_steering_request_carries_a_row_delta_and_a_mask_not_a_token_by_width_tensor(tiny):
    """What the request uploads grows with the prompt by its ids and mask, not by tokens x d_model floats."""
    from emonn import steer

    checked, deltas = tiny.with_remote("check"), torch.ones(2, tiny.d_model)
    sizes = []
    for n in (8, 40):
        enc = {"input_ids": torch.full((2, n), 5), "attention_mask": torch.ones(2, n, dtype=torch.long)}
        steer.next_token_logprobs(checked, enc, layer=1, delta=deltas)
        sizes.append(StrictServerBackend.last_payload_bytes)
    assert sizes[1] - sizes[0] < 2 * 32 * tiny.d_model * 4 / 2  # a (rows, tokens, d) float32 would add 8 KB


def test_a_remote_extraction_is_split_so_that_each_result_fits_the_byte_cap(tiny, monkeypatch):
    from emonn import extract

    rows = []
    forward = extract.forward_pooled
    monkeypatch.setattr(extract, "forward_pooled", lambda m, ids, **k: rows.append(len(ids)) or forward(m, ids, **k))
    monkeypatch.setattr(extract, "RESULT_BYTES", 2 * tiny.n_layers * tiny.d_model * 4)  # two texts' results
    checked = activations(tiny.with_remote("check"), SENTENCES, start=1, progress=False)
    assert max(rows) == 2 and sum(rows) == len(SENTENCES)
    rows.clear()
    local = activations(tiny, SENTENCES, start=1, progress=False)  # locally only the token budget counts
    assert max(rows) > 2 and _cosine(local, checked).min() > 0.999
