import copy
import json

import polars as pl
import pytest
import torch

from emonn import extract, models
from conftest import tiny_model
from studies_util import assert_one_line_error, assert_remote_check, corpus_slice, invoke, study

methods = study("methods")

SMALL = ["--per-emotion", "3", "--grid-per-emotion", "2", "--new-tokens", "4", "--grid-lengths", "2",
         "--grid-temperatures", "0", "--grid-templates", "diary", "--permutations", "50", "--batch-size", "5"]


@pytest.fixture
def tiny_llama(monkeypatch):
    model = tiny_model("llama", byte_level=True)
    low = models.wrap(copy.deepcopy(model.hf).to(torch.bfloat16), model.tokenizer, name=model.name)
    monkeypatch.setattr(models, "load", lambda name, remote=False, dtype=torch.float32, **kw: model.with_remote(
        "check") if remote else low if dtype == torch.bfloat16 else model)
    return model


def test_smoke_on_tiny_model(tmp_path, tiny_llama, monkeypatch):
    path = corpus_slice(tmp_path / "slice.jsonl", emotions=4, per=3, langs=("en",))
    args = ["--corpus", str(path), *SMALL, "--out", str(tmp_path / "out")]
    result = invoke(methods.main, args)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "methods" / "tiny-llama"
    results = {p.stem: pl.read_parquet(p) for p in (folder / "results").glob("*.parquet")}
    assert set(results) == {"separation", "method_tests", "rsa", "sensitivity", "sensitivity_tests", "generations",
                            "precision", "precision_tests"}
    assert results["separation"].height == 2 * 3 * 4  # methods x scores x layers
    tests = results["method_tests"]
    assert tests["score"].to_list() == ["distance_ratio", "accuracy", "silhouette"]
    assert tests["mw_p"].is_between(0, 1).all() and (tests["d_low"] <= tests["d"]).all()
    assert results["rsa"]["p"].is_between(1 / 51, 1).all()
    sens = results["sensitivity_tests"]
    assert set(zip(sens["parameter"], sens["setting"])) == {("base", "base"), ("temperature", "0.0"),
                                                            ("length", "2"), ("template", "diary"), ("seed", "1")}
    assert sens.filter(pl.col("parameter") == "base")["rsa_with_base"].to_list() == pytest.approx([1.0] * 3)
    generations = results["generations"]
    assert generations.filter(pl.col("new_tokens") == 4, pl.col("template") == "story",
                              pl.col("temperature") == 0.7, pl.col("seed") == 0).height == 12
    assert generations["prompt"][0].startswith("Here is a short story about")  # no chat template: opening line
    precision = results["precision_tests"]
    assert set(precision["precision"]) == {"float32", "bfloat16"}  # not an embedded GGUF: no quantized variant
    cosine = precision.filter(pl.col("precision") == "float32")["cosine_generation"]
    assert cosine.to_numpy() == pytest.approx(1.0, abs=1e-5)  # reread equals the in-trace reduction
    assert 0.9 < precision.filter(pl.col("precision") == "bfloat16")["cosine_comprehension"].min() < 1.0
    for figure in ("separation_by_depth", "rsa_by_depth", "sensitivity", "precision"):
        assert (folder / "figures" / f"{figure}.png").stat().st_size > 1000
    report = (folder / "report.md").read_text()
    assert "Mann-Whitney" in report and "| tiny-llama | accuracy |" in report
    config = json.loads((folder / "config.json").read_text())
    assert config["new_tokens"] == 4 and config["model"] == [models.DEFAULT_MODEL] and config["corpus_digest"]
    assert {p.name.rsplit("-", 1)[0] for p in (tmp_path / "out" / "cache" / "tiny-llama").iterdir()} == {
        "mean-k20-float32", "mean-k20-bfloat16", "reread-float32", "reread-bfloat16", "generated-float32"}
    # a rerun generates and extracts nothing: every unit and story is cached
    monkeypatch.setattr(extract, "generate_pooled", lambda *a, **k: pytest.fail("regenerated a cached unit"))
    monkeypatch.setattr(extract, "forward_pooled", lambda *a, **k: pytest.fail("recomputed cached activations"))
    again = invoke(methods.main, [*args, "--no-precision"])
    assert again.exit_code == 0, again.output
    assert pl.read_parquet(folder / "results" / "method_tests.parquet").equals(tests)


def test_two_models_add_an_across_model_test(tmp_path, monkeypatch):
    tiny = {"a": tiny_model("llama", byte_level=True), "b": tiny_model("qwen2", byte_level=True)}
    monkeypatch.setattr(models, "load", lambda name, remote=False, dtype=torch.float32, **kw: tiny[name])
    path = corpus_slice(tmp_path / "slice.jsonl", emotions=4, per=3, langs=("en",))
    args = ["--model", "a", "--model", "b", "--corpus", str(path), *SMALL, "--grid-lengths", "", "--grid-templates",
            "", "--grid-temperatures", "", "--grid-seeds", "", "--no-precision", "--out", str(tmp_path)]
    result = invoke(methods.main, args)
    assert result.exit_code == 0, result.output
    tests = pl.read_parquet(tmp_path / "methods" / "tiny-llama__tiny-qwen2" / "results" / "method_tests.parquet")
    pooled = tests.filter(pl.col("model") == "all models")
    assert pooled.height == 3 and (pooled["n"] == 8).all()  # 4 layers x 2 models per method


@pytest.mark.parametrize("args, message", [
    (["--grid-templates", "poem"], "unknown template 'poem'"),
    (["--grid-per-emotion", "5"], "--grid-per-emotion (5) <= --per-emotion (3)"),
    (["--layers", "2"], "at least 2 layers"),
    (["--grid-lengths", "a"], "--grid-lengths 'a' must be"),
    (["--langs", "ja"], "English stories only"),
])
def test_bad_options_end_in_one_line(tmp_path, tiny_llama, args, message):
    path = corpus_slice(tmp_path / "slice.jsonl", emotions=4, per=3, langs=("en",))
    result = invoke(methods.main, ["--corpus", str(path), *SMALL, "--out", str(tmp_path), *args])
    assert_one_line_error(result, message)


def test_remote_run_passes_the_strict_offline_check(tmp_path, tiny_llama):
    path = corpus_slice(tmp_path / "slice.jsonl", emotions=4, per=3, langs=("en",))
    assert_remote_check(methods.main, ["--corpus", str(path), *SMALL, "--out", str(tmp_path / "out"), "--remote"])
