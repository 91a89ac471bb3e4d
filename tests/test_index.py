"""`emonn report`: one index.html over every study × model folder; every link and image resolves on disk."""

import base64
import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import polars as pl
import pytest

from emonn import EmonnError, index
from emonn.cli import main as cli
from conftest import tiny_model
from studies_util import assert_one_line_error, invoke, run_example

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")

HEADLINED = """# Alpha study: {models}

Methods paragraph of alpha.

## Headline

- **m1 EN**: accuracy peaks at layer 3 (see [the chart](figures/acc.html)).
- Separation beats the shuffled null at 4/4 layers.

## Accuracy by layer

| layer | accuracy |
|---|---|
| 0 | 0.25 |
| 3 | 0.71 |

## Figures

- [acc](figures/acc.html) ([PNG](figures/acc.png))
- [heat](figures/heat.html)
"""

PLAIN = """# Beta study: m1

The first paragraph of beta, which stands in for a headline.

A second paragraph that the index leaves out.

| a | b |
|---|---|
| <x> | 2 |
"""


class Links(HTMLParser):
    """Every href / src in a page, and every id it defines."""

    def __init__(self):
        super().__init__()
        self.urls, self.ids, self.tags = [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.ids.add(attrs.get("id"))
        self.urls += [attrs[a] for a in ("href", "src") if attrs.get(a)]


def resolved(page: Path) -> list[str]:
    """The page's link targets, relative to its folder; fails on any that is remote or missing on disk."""
    parser = Links()
    parser.feed(page.read_text())
    assert "script" not in parser.tags and "link" not in parser.tags  # no external code or stylesheet
    targets = []
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{page.name}: remote link {url}"
        if not parts.path:
            assert parts.fragment in parser.ids, f"{page.name}: no id for {url}"
            continue
        target = (page.parent / unquote(parts.path)).resolve()
        assert target.exists(), f"{page.name}: {url} -> {target} does not exist"
        if parts.fragment and target.suffix == ".html":
            other = Links()
            other.feed(target.read_text())
            assert parts.fragment in other.ids, f"{page.name}: no id for {url}"
        targets.append(parts.path)
    return targets


@pytest.fixture
def out(tmp_path):
    out = tmp_path / "out"
    for study, name, text in [("alpha", "m1", HEADLINED), ("alpha", "m1__m2", HEADLINED), ("beta", "m1", PLAIN)]:
        folder = out / study / name
        (folder / "figures").mkdir(parents=True)
        (folder / "results").mkdir()
        (folder / "report.md").write_text(text.format(models=name.replace("__", ", ")))
        (folder / "config.json").write_text(json.dumps({"model": name.split("__"), "seed": 0}))
        (folder / "figures" / "acc.png").write_bytes(PNG)
        (folder / "figures" / "acc.html").write_text("<html><body>chart</body></html>")
        pl.DataFrame({"layer": [0, 3]}).write_parquet(folder / "results" / "accuracy.parquet")
        if study == "alpha":  # a figure with no PNG
            (folder / "figures" / "heat.html").write_text("<html><body>heat</body></html>")
    (out / "beta" / "m1" / "figures" / "per emotion#1.png").write_bytes(PNG)  # a name that must be quoted in a URL
    for skipped in ("cache/m1/mean-k20-float32", "vectors/m1-en", "readme/x"):  # not study folders
        (out / skipped).mkdir(parents=True)
        (out / skipped / "report.md").write_text("# not a study")
    return out


def test_index_links_headlines_and_tables(out):
    path = index.build_index(out)
    assert path == out / "index.html"
    page = path.read_text()
    targets = resolved(path)
    for run in ("alpha/m1", "alpha/m1__m2", "beta/m1"):
        assert f"{run}/report.html" in targets and f"{run}/figures/acc.png" in targets
        assert f"{run}/results/accuracy.parquet" in targets and f"{run}/config.json" in targets
    assert "alpha/m1/figures/heat.html" in targets  # a figure with no PNG is still linked
    assert "beta/m1/figures/per%20emotion%231.png" in targets
    assert "cache" not in {t.split("/")[0] for t in targets} and "not a study" not in page
    # headline bullets (their relative links rebased onto the run folder), else the first paragraph
    assert "<strong>m1 EN</strong>: accuracy peaks at layer 3" in page
    assert 'href="alpha/m1__m2/figures/acc.html">the chart</a>' in page
    assert "Separation beats the shuffled null at 4/4 layers." in page
    assert "The first paragraph of beta" in page and "A second paragraph" not in page
    assert "Methods paragraph of alpha" not in page and "<table" not in page

    for run in ("alpha/m1", "alpha/m1__m2", "beta/m1"):
        report = out / run / "report.html"
        text = report.read_text()
        assert "../../index.html" in resolved(report) and "figures/acc.html" in resolved(report)
        assert "<table>" in text and ("<th>layer</th>" in text or "<th>a</th>" in text)
    beta = (out / "beta" / "m1" / "report.html").read_text()
    assert "<td>&lt;x&gt;</td>" in beta  # raw HTML in a report is shown as text


def test_cli_report_and_one_line_error(out, tmp_path):
    result = invoke(cli, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 runs indexed" in result.output and (out / "index.html").as_uri() in result.output
    empty = tmp_path / "empty"
    (empty / "cache").mkdir(parents=True)
    assert_one_line_error(invoke(cli, ["report", str(empty)]), "holds no study results")
    with pytest.raises(EmonnError, match="holds no study results"):
        index.build_index(tmp_path / "missing")


def test_index_over_the_example_study(tmp_path, monkeypatch):
    run_example(tmp_path, monkeypatch, tiny_model())
    page = index.build_index(tmp_path / "out")
    targets = resolved(page)
    assert {"example/tiny-llama/report.html", "example/tiny-llama/figures/accuracy_by_depth.png",
            "example/tiny-llama/figures/accuracy_by_depth.html"} <= set(targets)
    assert "Leave-topics-out nearest-centroid accuracy peaks at layer" in page.read_text()
    report = tmp_path / "out" / "example" / "tiny-llama" / "report.html"
    assert "figures/accuracy_by_depth.html" in resolved(report)
    assert "<table>" in report.read_text() and "<th>accuracy</th>" in report.read_text()
