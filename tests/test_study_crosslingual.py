import json

import numpy as np
import polars as pl
import pytest

from emonn import extract, models, stats
from emonn.vectors import EmotionVectors
from conftest import tiny_model
from studies_util import assert_one_line_error, assert_remote_check, corpus_slice, invoke, neutral_slice, study

crosslingual = study("crosslingual")


@pytest.fixture
def tiny_gemma(monkeypatch):
    model = tiny_model("gemma3_text", bos=True, byte_level=True)
    monkeypatch.setattr(models, "load", lambda name, remote=False, **kw: model.with_remote("check") if remote else model)
    return model


def test_smoke_on_tiny_model(tmp_path, tiny_gemma, monkeypatch):
    path = corpus_slice(tmp_path / "slice.jsonl")
    neutral = neutral_slice(tmp_path / "neutral.jsonl")
    args = ["--corpus", str(path), "--neutral", str(neutral), "--permutations", "200", "--bootstrap", "20",
            "--out", str(tmp_path / "out")]
    result = invoke(crosslingual.main, args)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "crosslingual" / "tiny-gemma3_text"
    rsa = pl.read_parquet(folder / "results" / "rsa.parquet")
    assert rsa.height == 2 * 4
    spearman = rsa.filter(pl.col("method") == "spearman")
    # the emotion-bootstrap interval contains its estimate; the per-layer RSA is scipy's Spearman of the matrices
    assert ((spearman["ci_low"] <= spearman["r"]) & (spearman["r"] <= spearman["ci_high"])).all()
    assert set(pl.read_parquet(folder / "results" / "emotion_cosine.parquet")["variant"]) == {"raw", "centered",
                                                                                             "denoised"}
    assert (folder / "figures" / "rsa_by_depth.png").stat().st_size > 1000
    config = json.loads((folder / "config.json").read_text())
    assert config["permutations"] == 200 and config["denoise"] is True
    assert config["model"] == [models.MULTILINGUAL_MODEL]
    report = (folder / "report.md").read_text()
    assert "**RSA** of the EN and JA" in report and "**Partial RSA**" in report and "## Logit lens (layer" in report
    assert "script mismatch with the language: EN" in report
    lens = pl.read_parquet(folder / "results" / "logit_lens.parquet")
    assert lens.height == 2 * 6 * 20 and lens["mismatch"].dtype == pl.Boolean
    vectors = EmotionVectors.load(folder / "vectors" / "ja")
    assert vectors.vectors.shape == (6, 4, 32) and vectors.meta["langs"] == ["ja"]
    en = EmotionVectors.load(folder / "vectors" / "en")
    want = [stats.rsa(stats.cosine_matrix(en.vectors[:, j]), stats.cosine_matrix(vectors.vectors[:, j])) for j in range(4)]
    assert spearman.sort("layer")["r"].to_list() == pytest.approx(want)
    # a rerun reuses the cached activations: no extraction forward pass at all
    monkeypatch.setattr(extract, "forward_pooled", lambda *a, **k: pytest.fail("recomputed cached activations"))
    assert invoke(crosslingual.main, args).exit_code == 0


def test_without_denoising(tmp_path, tiny_gemma):
    path = corpus_slice(tmp_path / "slice.jsonl")
    result = invoke(crosslingual.main, ["--corpus", str(path), "--no-denoise", "--layers", "0-1", "--pca-layer", "1",
                                        "--permutations", "10", "--bootstrap", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "crosslingual" / "tiny-gemma3_text"
    assert set(pl.read_parquet(folder / "results" / "emotion_cosine.parquet")["variant"]) == {"raw", "centered"}
    assert "vectors centered;" in (folder / "report.md").read_text()
    assert EmotionVectors.load(folder / "vectors" / "en").pcs == ()


@pytest.mark.parametrize("args, message", [
    (["--langs", "en"], "--langs needs two different languages"),
    (["--langs", "en,fr"], "unknown language 'fr'"),
    (["--layers", "99"], "layer 99 out of range"),
    (["--layers", "0-1", "--pca-layer", "3"], "--pca-layer 3 is not among the analysed --layers"),
])
def test_bad_options_end_in_one_line(tmp_path, tiny_gemma, args, message):
    path = corpus_slice(tmp_path / "slice.jsonl")
    result = invoke(crosslingual.main, ["--corpus", str(path), "--out", str(tmp_path), *args])
    assert_one_line_error(result, message)


def test_corpus_without_the_language(tmp_path, tiny_gemma):
    path = corpus_slice(tmp_path / "en_only.jsonl", langs=("en",))
    result = invoke(crosslingual.main, ["--corpus", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "lang 'ja' not in corpus" in result.output


def test_remote_run_passes_the_strict_offline_check(tmp_path, tiny_gemma):
    args = ["--corpus", str(corpus_slice(tmp_path / "slice.jsonl")), "--neutral",
            str(neutral_slice(tmp_path / "neutral.jsonl")), "--permutations", "20", "--bootstrap", "10",
            "--out", str(tmp_path / "out"), "--remote"]
    assert_remote_check(crosslingual.main, args)
