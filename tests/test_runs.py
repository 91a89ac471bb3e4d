import json

import click
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from emonn import EmonnError
from emonn.runs import ActivationCache, Command, Run, atomic_write, parse_layers


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write(tmp_path / "a" / "b.txt", "hello")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"]


def test_activation_cache_round_trip(tmp_path):
    cache = ActivationCache(tmp_path / "c")
    assert cache.lookup(["x"]) == {}
    rows = {"x": np.ones((2, 3), np.float32), "y": np.zeros((2, 3), np.float32)}
    cache.store(rows)
    cache.store({"z": np.full((2, 3), 2, np.float32)})
    found = cache.lookup(["x", "z", "missing"])
    assert set(found) == {"x", "z"} and np.array_equal(found["z"], rows["x"] * 2)


def test_run_folder_layout(tmp_path):
    run = Run.create(tmp_path, "study", "model", {"seed": 0})
    assert json.loads((run.folder / "config.json").read_text()) == {"seed": 0}
    run.table("scores", pl.DataFrame({"layer": [0, 1]}))
    assert pl.read_parquet(run.folder / "results" / "scores.parquet")["layer"].to_list() == [0, 1]
    run.report("# hi")
    assert (run.folder / "report.md").read_text() == "# hi"


def test_parse_layers():
    assert parse_layers("3,5,-1") == [3, 5, -1]
    assert parse_layers("2-4") == [2, 3, 4]
    assert parse_layers("") is None
    with pytest.raises(EmonnError, match="--layers 'x'"):
        parse_layers("x")


def test_command_prints_emonn_errors_on_one_line():
    @click.command(cls=Command)
    def fails():
        raise EmonnError("emotion 'glee' not in corpus")

    result = CliRunner().invoke(fails)
    assert result.exit_code == 1
    assert result.output == "Error: emotion 'glee' not in corpus\n"


def test_a_damaged_chunk_is_set_aside_and_its_texts_recomputed(tmp_path, monkeypatch):
    from emonn import extract
    from conftest import SENTENCES, tiny_model

    model, cache = tiny_model("llama"), ActivationCache(tmp_path / "c")
    first = extract.activations(model, SENTENCES[:3], cache=cache, progress=False)
    extract.activations(model, SENTENCES[3:6], cache=cache, progress=False)  # a second chunk
    chunk = next(p for p in cache.folder.glob("*.npz") if set(np.load(p)["keys"]) >= {extract.text_key(SENTENCES[0])})
    chunk.write_bytes(chunk.read_bytes()[:100])  # a copy cut short
    read = []
    forward = extract.forward_pooled
    monkeypatch.setattr(extract, "forward_pooled", lambda m, ids, **k: read.append(len(ids)) or forward(m, ids, **k))
    with pytest.warns(UserWarning, match="damaged cache file .* set aside"):
        again = extract.activations(model, SENTENCES[:6], cache=cache, progress=False)
    assert sum(read) == 3 and np.allclose(again[:3], first, atol=1e-5)  # only the lost chunk's texts
    assert chunk.with_name(chunk.name + ".broken").exists() and not chunk.exists()
    read.clear()
    extract.activations(model, SENTENCES[:6], cache=cache, progress=False)
    assert read == []  # recomputed texts were stored again


def test_the_default_token_budget_follows_the_device_kind():
    from types import SimpleNamespace

    import torch

    from emonn import runs

    def model(device, remote=False):
        return SimpleNamespace(device=torch.device(device), remote=remote)

    assert runs.batch_tokens_for(model("cpu")) == 2048 and runs.batch_tokens_for(model("cuda:1")) == 16384
    assert runs.batch_tokens_for(model("meta", remote=True)) == 2048
