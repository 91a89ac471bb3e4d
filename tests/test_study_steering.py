import json

import polars as pl
import pytest

from emonn import models, steer, textmetrics
from conftest import tiny_model
from studies_util import assert_one_line_error, assert_remote_check, corpus_slice, invoke, study

steering = study("steering")
ARGS = ["--emotions", "afraid,angry,calm", "--layers", "1,2", "--alphas", "0.5,4", "--n-prompts", "2",
        "--new-tokens", "6", "--random-directions", "1"]


@pytest.fixture
def tiny_llama(monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setattr(models, "load", lambda name, remote=False, **kw: model.with_remote("check") if remote else model)
    return model


def test_smoke_on_tiny_model(tmp_path, tiny_llama, monkeypatch):
    path = corpus_slice(tmp_path / "slice.jsonl", per=3, langs=("en",))
    args = [*ARGS, "--corpus", str(path), "--out", str(tmp_path / "out")]
    result = invoke(steering.main, args)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "steering" / "tiny-llama"
    generations = pl.read_parquet(folder / "results" / "generations.parquet")
    rows_per_call = 1 + 3 * 2 * 2 + 1 * 2 * 2  # baseline + emotions x layers x alphas + random x layers x alphas
    assert generations.height == 2 * 2 * rows_per_call  # decodings x prompts
    assert set(generations["regime"]) <= set(textmetrics.REGIMES)
    assert {"ppl", "ppl_ratio", "distinct1", "distinct2", "repeat", "compression", "foreign_tokens", "p_afraid",
            "shift"} <= set(generations.columns)
    baseline = generations.filter(pl.col("condition") == "baseline")
    assert baseline.height == 4 and (baseline["ppl_ratio"].drop_nans() == 1).all()
    shifts = pl.read_parquet(folder / "results" / "shifts.parquet")
    assert shifts.height == 2 * 2 * 2 * 3 * 2 * 3  # decodings x layers x alphas x emotions x prompts x conditions
    summary = pl.read_parquet(folder / "results" / "shift_summary.parquet")
    assert (summary["n"] == 6).all() and (summary["ci_low"] <= summary["ci_high"]).all()
    for name in ("regime_map", "classifier_shift"):
        assert (folder / "figures" / f"{name}.png").stat().st_size > 1000
    report = (folder / "report.md").read_text()
    assert "Accuracy on the corpus" in report and "Best cell" in report and "leakage" in report
    assert "## afraid" in (folder / "examples.md").read_text()
    assert json.loads((folder / "config.json").read_text())["layers"] == [1, 2]
    # a rerun resumes from the cached units: no generation at all
    monkeypatch.setattr(steer, "generate", lambda *a, **k: pytest.fail("regenerated a cached unit"))
    assert invoke(steering.main, args).exit_code == 0
    assert pl.read_parquet(folder / "results" / "generations.parquet").equals(generations)


@pytest.mark.parametrize("args, message", [
    (["--emotions", "afraid"], "--emotions needs at least two different emotions"),
    (["--emotions", "afraid,glee"], "emotion 'glee' has no English stories"),
    (["--decoding", "beam"], "--decoding 'beam'"),
    (["--alphas", "x"], "--alphas 'x' is not a list of numbers"),
    (["--layers", "7"], "layer 7 out of range"),
    (["--chat"], "has no chat template"),
])
def test_bad_options_end_in_one_line(tmp_path, tiny_llama, args, message):
    path = corpus_slice(tmp_path / "slice.jsonl", per=3, langs=("en",))
    result = invoke(steering.main, [*ARGS, "--corpus", str(path), "--out", str(tmp_path), *args])
    assert_one_line_error(result, message)


def test_chat_prompts_are_the_models_chat_rendering(tmp_path, monkeypatch):
    model = tiny_model("llama", bos=True)
    model.tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
                                     "{% endfor %}")  # the template's BOS would double the tokenizer's
    monkeypatch.setattr(models, "load", lambda name, remote=False, **kw: model)
    seen, generate = [], steer.generate
    monkeypatch.setattr(steer, "generate",
                        lambda m, prompts, **kw: seen.append(prompts[0]) or generate(m, prompts, **kw))
    path = corpus_slice(tmp_path / "slice.jsonl", per=3, langs=("en",))
    args = [*ARGS, "--n-prompts", "1", "--decoding", "greedy", "--alphas", "1", "--layers", "1"]
    assert invoke(steering.main, [*args, "--corpus", str(path), "--out", str(tmp_path)]).exit_code == 0
    assert seen == [model.chat(steering.PROMPTS[0])] == ["<user>" + steering.PROMPTS[0]]
    config = json.loads((tmp_path / "steering" / "tiny-llama" / "config.json").read_text())
    assert config["chat"] is True and config["model"] == [models.DEFAULT_MODEL]


def test_remote_run_passes_the_strict_offline_check(tmp_path, tiny_llama):
    path = corpus_slice(tmp_path / "slice.jsonl", per=3, langs=("en",))
    assert_remote_check(steering.main, [*ARGS, "--corpus", str(path), "--out", str(tmp_path / "out"), "--remote"])
