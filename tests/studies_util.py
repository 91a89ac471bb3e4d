"""Helpers for the study smoke tests: import a study script and run it on a tiny model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
from click.testing import CliRunner

from emonn import corpus

STUDIES = Path(__file__).parent.parent / "studies"


def study(name: str):
    spec = importlib.util.spec_from_file_location(f"study_{name}", STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corpus_slice(path: Path, *, emotions: int = 6, per: int = 2, langs=("en", "ja")) -> Path:
    """A small valid corpus file: the first `per` stories of the first `emotions` emotions per language, each on
    a topic of its own."""
    names = corpus.emotion_names()[:emotions]
    frame = corpus.load(langs=list(langs), emotions=names).unique(["lang", "emotion", "topic"], maintain_order=True)
    frame = frame.group_by("lang", "emotion", maintain_order=True).head(per)
    frame.write_ndjson(path)
    return path


def neutral_slice(path: Path, *, per: int = 6, langs=("en", "ja")) -> Path:
    """A small neutral-texts file: the first `per` texts per language."""
    corpus.load(neutral=True, langs=list(langs)).group_by("lang", maintain_order=True).head(per).write_ndjson(path)
    return path


def invoke(command, args: list[str]):
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    return result


def assert_one_line_error(result, message: str) -> None:
    """The study stopped with exit code 1 and one line of output that contains `message`."""
    assert result.exit_code == 1, result.output
    assert message in result.output and result.output.count("\n") == 1, result.output


def run_example(tmp_path: Path, monkeypatch, model):
    """Run studies/example.py on `model` (in place of every model it loads) over an English corpus slice, writing
    `tmp_path/out/example/<model slug>/`; return the corpus slice's path."""
    from emonn import models

    monkeypatch.setattr(models, "load", lambda name, remote=False, **kw: model)
    path = corpus_slice(tmp_path / "slice.jsonl", langs=("en",))
    result = invoke(study("example").main, ["--corpus", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    return path


def assert_remote_check(command, args: list[str]) -> None:
    """The study runs end to end with `--remote` on a model whose every request goes through the strict
    offline check (the fixtures load `model.with_remote("check")` for `remote=True`)."""
    from emonn.remote import StrictServerBackend

    calls = []
    check = StrictServerBackend.__call__
    StrictServerBackend.__call__ = lambda self, tracer: calls.append(1) or check(self, tracer)
    try:
        result = invoke(command, args)
    finally:
        StrictServerBackend.__call__ = check
    assert result.exit_code == 0, result.output
    assert calls, "no request went through the check"
