import dataclasses
import json

import numpy as np
import polars as pl
import pytest

from emonn import extract, models
from conftest import tiny_model
from studies_util import assert_one_line_error, assert_remote_check, corpus_slice, invoke, study

localization = study("localization")


@pytest.fixture
def tiny_models(monkeypatch):
    """Two tiny models: 'tiny-llama' reads English only, 'tiny-gemma3_text' English and Japanese."""
    built = {"llama": tiny_model("llama"),
             "gemma3_text": dataclasses.replace(tiny_model("gemma3_text", bos=True, byte_level=True), langs=("en", "ja"))}
    monkeypatch.setattr(models, "load", lambda name, remote=False, **kw: built[name].with_remote("check") if remote
                        else built[name])
    return built


def test_smoke_two_models_on_one_chart(tmp_path, tiny_models, monkeypatch):
    path = corpus_slice(tmp_path / "slice.jsonl", emotions=3, per=2)
    args = ["--model", "llama", "--model", "gemma3_text", "--corpus", str(path), "--bootstrap", "30",
            "--out", str(tmp_path / "out")]
    result = invoke(localization.main, args)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "localization" / "tiny-llama__tiny-gemma3_text"
    separation = pl.read_parquet(folder / "results" / "separation.parquet")
    # llama reads EN only, gemma EN and JA: 3 series x 5 scores x 4 layers
    assert set(separation["series"]) == {"tiny-llama EN", "tiny-gemma3_text EN", "tiny-gemma3_text JA"}
    assert separation.height == 3 * 5 * 4
    assert (separation["ci_low"] <= separation["ci_high"]).all()
    accuracy = separation.filter(pl.col("score") == "accuracy")["value"]
    assert accuracy.is_between(0, 1).all()
    peaks = pl.read_parquet(folder / "results" / "peaks.parquet")
    assert peaks.height == 3 * 3 and peaks["best_depth"].is_between(0, 1).all()
    assert (peaks["depth_low"] <= peaks["depth_high"]).all()
    assert (folder / "figures" / "separation_by_depth.png").stat().st_size > 1000
    assert (folder / "figures" / "peak_depth.html").exists()
    report = (folder / "report.md").read_text()
    assert "vertex" in report and "tiny-gemma3_text JA" in report
    config = json.loads((folder / "config.json").read_text())
    assert config["bootstrap"] == 30 and config["model"] == ["llama", "gemma3_text"]
    assert config["corpus_digest"] in report
    assert "Emotion separation peaks" in result.output
    # a rerun reuses the cached activations: no extraction forward pass at all
    monkeypatch.setattr(extract, "forward_pooled", lambda *a, **k: pytest.fail("recomputed cached activations"))
    assert invoke(localization.main, args).exit_code == 0


def test_scores_equal_the_per_layer_statistics(tmp_path, tiny_models):
    """The table's estimates are the stats functions applied to the centered activations layer by layer."""
    from emonn import corpus, runs, stats

    path = corpus_slice(tmp_path / "slice.jsonl", emotions=4, per=3, langs=("en",))
    out = tmp_path / "out"
    assert invoke(localization.main, ["--model", "llama", "--langs", "en", "--corpus", str(path), "--bootstrap", "10",
                                      "--out", str(out)]).exit_code == 0
    model = tiny_models["llama"]
    frame = corpus.load(path)
    readings = extract.read(model, frame, cache=runs.activation_cache(out, model, "mean", 20))
    centered = readings.acts - readings.acts.mean(0)
    table = pl.read_parquet(out / "localization" / "tiny-llama" / "results" / "separation.parquet")
    for layer in range(4):
        x, labels = centered[:, layer], frame["emotion"].to_numpy()
        row = {r["score"]: r["value"] for r in table.filter(pl.col("layer") == layer).iter_rows(named=True)}
        assert row["silhouette"] == pytest.approx(stats.silhouette(x, labels), abs=1e-5)
        assert row["accuracy"] == pytest.approx(stats.nearest_centroid_accuracy(x, labels, frame["topic"].to_numpy(),
                                                                                center=False))
        sep = stats.between_within_ratio(x, labels)
        assert row["within"] == pytest.approx(sep.within, abs=1e-5)
        assert np.isclose(row["distance_ratio"], (1 - sep.between) / (1 - sep.within), rtol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--langs", "fr"], "unknown language 'fr'"),
    (["--layers", "99"], "layer 99 out of range"),
    (["--bootstrap", "3"], "--bootstrap 3 is too few"),
    (["--model", "llama", "--langs", "ja"], "reads en, none of the languages ja"),
])
def test_bad_options_end_in_one_line(tmp_path, tiny_models, args, message):
    path = corpus_slice(tmp_path / "slice.jsonl", emotions=4, per=2)
    result = invoke(localization.main, ["--model", "llama", "--corpus", str(path), "--out", str(tmp_path), *args])
    assert_one_line_error(result, message)


def test_remote_run_passes_the_strict_offline_check(tmp_path, tiny_models):
    path = corpus_slice(tmp_path / "slice.jsonl", emotions=3, per=2)
    assert_remote_check(localization.main, ["--model", "llama", "--corpus", str(path), "--bootstrap", "10",
                                            "--out", str(tmp_path / "out"), "--remote"])
