import json

import numpy as np
import polars as pl
import pytest

from emonn import corpus, extract, models, runs, stats
from conftest import tiny_model
from studies_util import assert_one_line_error, assert_remote_check, corpus_slice, invoke, neutral_slice, study

anisotropy = study("anisotropy")


@pytest.fixture
def tiny_models(monkeypatch):
    built = {"llama": tiny_model("llama"), "gemma3_text": tiny_model("gemma3_text", bos=True)}
    monkeypatch.setattr(models, "load", lambda name, remote=False, **kw: built[name].with_remote("check") if remote
                        else built[name])
    return built


def _files(tmp_path):
    # 6 stories for each of 3 emotions: at least 2 per emotion in each half of the topics
    return (corpus_slice(tmp_path / "slice.jsonl", emotions=3, per=6, langs=("en",)),
            neutral_slice(tmp_path / "neutral.jsonl", per=8, langs=("en",)))


def test_smoke_two_models(tmp_path, tiny_models, monkeypatch):
    stories, neutral = _files(tmp_path)
    out = tmp_path / "out"
    args = ["--model", "llama", "--model", "gemma3_text", "--langs", "en", "--corpus", str(stories), "--neutral",
            str(neutral), "--permutations", "50", "--random-directions", "20", "--bootstrap", "30", "--out", str(out)]
    result = invoke(anisotropy.main, args)
    assert result.exit_code == 0, result.output
    folder = out / "anisotropy" / "tiny-llama__tiny-gemma3_text"
    layers = pl.read_parquet(folder / "results" / "layers.parquet")
    assert layers.height == 2 * 2 * 4  # models x variants x layers
    assert layers["p_shuffle"].is_between(1 / 51, 1).all() and (layers["p_shuffle_fdr"] >= layers["p_shuffle"]).all()
    assert (layers["anisotropy_low"] <= layers["anisotropy"] + 1e-6).all()
    assert (layers["anisotropy"] <= layers["anisotropy_high"] + 1e-6).all()
    np.testing.assert_allclose(layers["relative"], layers["separation"] / (1 - layers["anisotropy"]))
    verdict = pl.read_parquet(folder / "results" / "verdict.parquet")
    assert verdict.height == 2 * 4
    assert (verdict["exceeds"] == ((verdict["p_shuffle_fdr"] < 0.05) & (verdict["p_random_fdr"] < 0.05))).all()
    directions = pl.read_parquet(folder / "results" / "random_direction.parquet")
    assert directions["p_random"].is_between(1 / 21, 1).all()
    for name in ("anisotropy_by_depth", "separation_vs_baselines"):
        assert (folder / "figures" / f"{name}.png").stat().st_size > 1000
    assert "0.997" in (folder / "report.md").read_text()
    config = json.loads((folder / "config.json").read_text())
    assert config["permutations"] == 50 and config["fdr"] == 0.05 and config["model"] == ["llama", "gemma3_text"]
    assert "Anisotropy" in result.output
    # a rerun reuses the cached activations: no extraction forward pass at all
    monkeypatch.setattr(extract, "forward_pooled", lambda *a, **k: pytest.fail("recomputed cached activations"))
    assert invoke(anisotropy.main, args).exit_code == 0


def test_anisotropy_and_separation_equal_the_statistics(tmp_path, tiny_models):
    """Raw anisotropy is the neutral texts' mean pairwise cosine; centered subtracts each set's own mean."""
    stories, neutral = _files(tmp_path)
    out = tmp_path / "out"
    assert invoke(anisotropy.main, ["--model", "llama", "--langs", "en", "--corpus", str(stories), "--neutral",
                                    str(neutral), "--permutations", "20", "--random-directions", "10",
                                    "--bootstrap", "10", "--out", str(out)]).exit_code == 0
    model, frame = tiny_models["llama"], corpus.load(stories)
    cache = runs.activation_cache(out, model, "mean", extract.START)
    acts = extract.activations(model, frame["text"].to_list(), cache=cache)
    neutral_acts = extract.activations(model, corpus.load(neutral, neutral=True)["text"].to_list(), cache=cache)
    table = pl.read_parquet(out / "anisotropy" / "tiny-llama" / "results" / "layers.parquet").sort("variant", "layer")
    for variant, x, nx in (("raw", acts, neutral_acts),
                           ("centered", acts - acts.mean(0), neutral_acts - neutral_acts.mean(0))):
        part = table.filter(pl.col("variant") == variant)
        np.testing.assert_allclose(part["anisotropy"], stats.mean_pairwise_cosine(nx), rtol=1e-5)
        expected = [stats.between_within_ratio(x[:, layer], frame["emotion"].to_numpy()).difference for layer in range(4)]
        np.testing.assert_allclose(part["separation"], expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--langs", "xx"], "unknown language 'xx'"),
    (["--permutations", "5"], "need at least 10 each"),
    (["--fdr", "1.5"], "--fdr in (0, 1)"),
    (["--layers", "7"], "layer 7 out of range"),
])
def test_bad_options_end_in_one_line(tmp_path, tiny_models, args, message):
    stories, neutral = _files(tmp_path)
    result = invoke(anisotropy.main, ["--model", "llama", "--langs", "en", "--corpus", str(stories), "--neutral",
                                      str(neutral), "--out", str(tmp_path), *args])
    assert_one_line_error(result, message)


def test_topics_too_few_for_the_direction_folds(tmp_path, tiny_models):
    stories = corpus_slice(tmp_path / "few.jsonl", emotions=3, per=3, langs=("en",))  # 3 topics: 1 in a half
    neutral = neutral_slice(tmp_path / "neutral.jsonl", per=8, langs=("en",))
    result = invoke(anisotropy.main, ["--model", "llama", "--langs", "en", "--corpus", str(stories), "--neutral",
                                      str(neutral), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "2 stories per emotion in each half of the topics" in result.output


def test_remote_run_passes_the_strict_offline_check(tmp_path, tiny_models):
    stories, neutral = _files(tmp_path)
    assert_remote_check(anisotropy.main, ["--model", "llama", "--langs", "en", "--corpus", str(stories), "--neutral",
                                          str(neutral), "--permutations", "20", "--random-directions", "10",
                                          "--bootstrap", "10", "--out", str(tmp_path / "out"), "--remote"])
