"""The offline remote check: requests built exactly as remote=True, refused where NDIF lacks a module."""

import os

import numpy as np
import pytest
import torch

from emonn import EmonnError, models
from emonn.extract import activations
from emonn.remote import StrictServerBackend
from conftest import SENTENCES


def _encode(model):
    return dict(model.tokenizer(SENTENCES[:2], return_tensors="pt", padding=True))


def test_extraction_request_passes_and_matches_local(tiny):
    local = activations(tiny, SENTENCES, start=1, progress=False)
    checked = activations(tiny.with_remote("check"), SENTENCES, start=1, progress=False)
    np.testing.assert_array_equal(local, checked)
    assert 0 < StrictServerBackend.last_payload_bytes < 200_000


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


@pytest.mark.ndif
@pytest.mark.skipif(not os.environ.get("NDIF_API_KEY"), reason="live NDIF test: set NDIF_API_KEY to run it")
def test_live_ndif_extraction():
    model = models.load("meta-llama/Llama-3.1-8B", remote=True)
    acts = activations(model, ["The storm tore the roof away.", "She opened the letter."], start=1,
                       layers=[0, 16], progress=False)
    assert acts.shape == (2, 2, 4096) and np.isfinite(acts).all()
