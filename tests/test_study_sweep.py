import json

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from emonn import extract, models, probe
from emonn.vectors import EmotionVectors
from conftest import tiny_model
from studies_util import assert_one_line_error, assert_remote_check, corpus_slice, invoke, neutral_slice, study

sweep = study("sweep")


@pytest.fixture
def tiny_bytes(monkeypatch):
    model = tiny_model(byte_level=True)  # reads digits, so every X is a different prompt
    monkeypatch.setattr(models, "load", lambda name, remote=False, **kw: model.with_remote("check") if remote else model)
    return model


def args_for(tmp_path):
    return ["--corpus", str(corpus_slice(tmp_path / "slice.jsonl", langs=("en",))), "--neutral",
            str(neutral_slice(tmp_path / "neutral.jsonl", langs=("en",))), "--emotions", "afraid,calm",
            "--shuffles", "10", "--out", str(tmp_path / "out")]


def test_smoke_on_tiny_model(tmp_path, tiny_bytes, monkeypatch):
    args = args_for(tmp_path)
    result = invoke(sweep.main, args)
    assert result.exit_code == 0, result.output
    assert "'afraid' at the final token, layer " in result.output and "(n = 60)" in result.output
    folder = tmp_path / "out" / "sweep" / "tiny-llama"
    scores = pl.read_parquet(folder / "results" / "scores.parquet")
    assert scores.height == 11 * 6 * 5 * 8
    assert scores.filter(pl.col("vectors") == "emotion")["seed"].unique().to_list() == [-1]
    curve = pl.read_parquet(folder / "results" / "curve.parquet")
    assert curve.height == 6 * 8 and ((curve["low"] <= curve["score"]) & (curve["score"] <= curve["high"])).all()
    trend = pl.read_parquet(folder / "results" / "trend.parquet")
    assert trend.height == 6 and trend["p"].is_between(1 / 61, 1).all()
    assert (folder / "figures" / "scores_vs_x.png").stat().st_size > 1000
    config = json.loads((folder / "config.json").read_text())
    assert config["chat"] is False and config["n_prompts"] == 40 and config["shuffles"] == 10
    report = (folder / "report.md").read_text()
    assert "## Headline" in report and "- **afraid** at the final token" in report and "| calm |" in report
    vectors = EmotionVectors.load(folder / "vectors" / "en")
    assert probe.default_layer(vectors) == config["layer"] == vectors.meta["best_layer"]
    # a rerun reuses the cached activations (stories, neutral texts and the sweep's final tokens)
    monkeypatch.setattr(extract, "forward_pooled", lambda *a, **k: pytest.fail("recomputed cached activations"))
    assert invoke(sweep.main, args).exit_code == 0


def test_chat_template_renders_a_user_turn(tmp_path, tiny_bytes):
    tiny_bytes.tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<a>"
    result = invoke(sweep.main, args_for(tmp_path) + ["--values", "1,10,100"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "sweep" / "tiny-llama" / "config.json").read_text())["chat"] is True


@pytest.mark.parametrize("args, message", [
    (["--template", "I took some Tylenol.", "--template", "x {X}"], "--template 'I took some Tylenol.' has no {X}"),
    (["--template", "I took {X} mg."], "pass at least 2 --template paraphrases"),
    (["--values", "1,2,lots"], "--values '1,2,lots' is not a list of numbers"),
    (["--values", "1,1,2"], "--values needs at least 3 distinct numbers"),
    (["--shuffles", "3"], "--shuffles 3 is too few"),
    (["--emotions", "afraid,zen"], "unknown emotion 'zen' in --emotions"),
])
def test_bad_options_end_in_one_line(tmp_path, tiny_bytes, args, message):
    assert_one_line_error(invoke(sweep.main, args_for(tmp_path) + args), message)


def test_spearman_and_t_interval_match_scipy():
    rng = np.random.default_rng(0)
    x, y = np.array([0, 1, 2, 4, 8.0]), rng.normal(size=(3, 5))
    y[0, 1] = y[0, 2]  # a tie
    np.testing.assert_allclose(sweep.spearman(x, y), [sps.spearmanr(x, row).statistic for row in y])
    mean, low, high = sweep.t_interval(y)
    expected = [sps.t.interval(0.95, 4, loc=row.mean(), scale=sps.sem(row)) for row in y]
    np.testing.assert_allclose(np.stack([low, high], 1), expected)


def test_t_interval_covers_the_mean_at_five_paraphrases():
    rng = np.random.default_rng(1)
    mean, low, high = sweep.t_interval(rng.normal(0.3, 1.0, size=(400, 5)))
    assert 0.93 <= np.mean((low <= 0.3) & (0.3 <= high)) <= 0.97


def simulated(rng, *, effect: float) -> np.ndarray:
    """Sweep scores `(1 + 20 shuffles, 6 emotions, 4 paraphrases, 6 x)` from random stories whose 'e0'
    stories lean along a direction that the sweep's states move along as X grows (by `effect`)."""
    labels, d = np.repeat([f"e{i}" for i in range(6)], 10), 16
    direction = rng.normal(size=d)
    acts = rng.normal(size=(60, 1, d)) + effect * (labels == "e0")[:, None, None] * direction
    states = rng.normal(size=(4, 6, 1, d)) + np.arange(6)[None, :, None, None] * direction * 0.5
    states = states.reshape(24, 1, d)
    fits = [labels] + [rng.permutation(labels) for _ in range(20)]
    return np.stack([EmotionVectors.from_arrays(acts, f, layers=[0]).scores(states)[:, 0].reshape(4, 6, 6)
                     .transpose(2, 0, 1) for f in fits])


def test_trend_test_holds_its_level_under_the_null_and_finds_a_real_trend():
    rng, x = np.random.default_rng(2), np.arange(6.0)
    names = [f"e{i}" for i in range(6)]
    null_p = np.concatenate([sweep.trends(simulated(rng, effect=0.0), x, names)[0]["p"].to_numpy()
                             for _ in range(100)])
    assert np.mean(null_p <= 0.05) <= 0.06
    found = [sweep.trends(simulated(rng, effect=1.0), x, names)[0].filter(pl.col("emotion") == "e0").row(0, named=True)
             for _ in range(20)]
    assert np.mean([r["p"] <= 0.05 and r["rho"] > 0 for r in found]) >= 0.8


def test_remote_run_passes_the_strict_offline_check(tmp_path, tiny_bytes):
    assert_remote_check(sweep.main, args_for(tmp_path) + ["--remote"])
