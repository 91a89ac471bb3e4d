"""The study harness: shared options, config.json, one-line errors, cached units, templated reports."""

import json
import textwrap

import polars as pl
import pytest

from emonn import corpus, extract, models, stats, study
from conftest import tiny_model
from studies_util import STUDIES, assert_one_line_error, corpus_slice, invoke, run_example

SCRIPT = '''
import click
import polars as pl
from emonn import EmonnError, study


@study.command("toy", many=True, langs="en")
@click.option("--fail", is_flag=True)
def main(run, fail):
    if fail:
        raise EmonnError("the toy study was told to fail")
    calls = []
    frame = run.unit({"what": "count"}, lambda: calls.append(1) or pl.DataFrame({"n": [len(run.stories("en"))]}),
                     name="count")
    run.note(calls=len(calls), layers=[0, 1])  # a fact under an option's name (as resolved layers are)
    run.table("count", frame)
    run.report(n=frame["n"][0], frame=frame, share=0.25, missing=float("nan"))
    run.done(f"n={frame['n'][0]}")
'''

TEMPLATE = """# Toy on {{ models[0].name }}

{{ n }} stories ({{ share | pct }}, {{ missing | f }}, seed {{ options.seed }}).

{{ frame | table }}
"""


@pytest.fixture
def toy(tmp_path, monkeypatch):
    model = tiny_model()
    monkeypatch.setattr(models, "load", lambda name, remote=False, **kw: model)
    (tmp_path / "toy.py").write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "toy.md").write_text(TEMPLATE)
    import importlib.util

    spec = importlib.util.spec_from_file_location("toy_study", tmp_path / "toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main, corpus_slice(tmp_path / "slice.jsonl", langs=("en",))


def test_shared_options_config_units_and_report(tmp_path, toy):
    main, path = toy
    args = ["--corpus", str(path), "--out", str(tmp_path / "out"), "--seed", "3"]
    result = invoke(main, args)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "toy" / "tiny-llama"
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == ["smollm2-135m"] and config["seed"] == 3 and config["calls"] == 1
    assert config["model_dtypes"] == {"tiny-llama": "float32"} and config["langs"] == "en"
    report = (folder / "report.md").read_text()
    assert "12 stories (25%, n/a, seed 3)" in report and "| n |\n|---|\n| 12 |" in report
    assert pl.read_parquet(folder / "results" / "count.parquet")["n"].to_list() == [12]
    assert "n=12" in result.output and str(folder) in result.output
    # a rerun takes the unit from its cache; a damaged unit is set aside and computed again
    assert invoke(main, args).exit_code == 0 and json.loads((folder / "config.json").read_text())["calls"] == 0
    (unit,) = (folder / "units").glob("count-*.parquet")
    unit.write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match="damaged cache file"):
        assert invoke(main, args).exit_code == 0
    assert json.loads((folder / "config.json").read_text())["calls"] == 1
    assert unit.with_name(unit.name + ".broken").exists() and pl.read_parquet(unit)["n"].to_list() == [12]


def test_a_rerun_with_other_options_clears_the_previous_outputs(tmp_path, toy):
    main, path = toy
    args = ["--corpus", str(path), "--out", str(tmp_path / "out")]
    assert invoke(main, [*args, "--seed", "3"]).exit_code == 0
    folder = tmp_path / "out" / "toy" / "tiny-llama"
    (folder / "figures").mkdir(exist_ok=True)
    (folder / "figures" / "left-over.png").write_bytes(b"x")  # what an earlier option set drew
    again = invoke(main, [*args, "--seed", "3"])  # the same options: nothing removed
    assert again.exit_code == 0 and "other options" not in again.output
    assert (folder / "figures" / "left-over.png").exists()
    result = invoke(main, [*args, "--seed", "4"])
    assert result.exit_code == 0 and "held a run with other options" in result.output
    assert not (folder / "figures" / "left-over.png").exists() and list((folder / "units").glob("*.parquet"))
    assert json.loads((folder / "config.json").read_text())["seed"] == 4 and (folder / "report.md").exists()


@pytest.mark.parametrize("args, message", [
    (["--fail"], "the toy study was told to fail"),
    (["--layers", "x"], "--layers 'x' is not a list"),
    (["--langs", "fr"], "unknown language 'fr'"),
])
def test_errors_are_one_line(tmp_path, toy, args, message):
    main, path = toy
    assert_one_line_error(invoke(main, ["--corpus", str(path), "--out", str(tmp_path), *args]), message)


def test_markdown_table_and_number_filters():
    frame = pl.DataFrame({"a": [1, 2], "b": [0.12345, None], "c": ["x|y", "z"]})
    assert study.markdown_table(frame, digits=2) == "| a | b | c |\n|---|---|---|\n| 1 | 0.12 | x\\|y |\n| 2 |  | z |"
    text = "{{ 0.5 | f(1) }} {{ 0.000123 | g }} {{ 0.256 | pct(1) }}"
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "t.md").write_text(text)
        assert study.render(Path(folder) / "t.md") == "0.5 0.00012 25.6%"


def test_the_example_study_runs_on_a_tiny_model(tmp_path, monkeypatch):
    model = tiny_model()
    path = run_example(tmp_path, monkeypatch, model)
    folder = tmp_path / "out" / "example" / "tiny-llama"
    accuracy = pl.read_parquet(folder / "results" / "accuracy.parquet")
    assert accuracy["layer"].to_list() == [0, 1, 2, 3]
    readings = extract.read(model, corpus.load(path), progress=False)  # the same numbers, straight from the core
    expected = [stats.nearest_centroid_accuracy(readings.at(i), readings.emotion, readings.topic) for i in range(4)]
    assert accuracy["accuracy"].to_list() == pytest.approx(expected)
    report = (folder / "report.md").read_text()
    assert "[accuracy_by_depth](figures/accuracy_by_depth.html)" in report
    assert (folder / "figures" / "accuracy_by_depth.html").exists()
    assert len((STUDIES / "example.py").read_text().splitlines()) < 60
