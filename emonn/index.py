"""One browsable page over every study's results: `OUT/index.html` and a `report.html` beside each `report.md`.

A run folder is `OUT/<study>/<model[__model...]>/` (see `runs.py`) holding `report.md`, `config.json`,
`figures/*.html|png` and `results/*.parquet`. The index shows, per run, the study and models, the headline
lines of the report (the bullets under its "## Headline" heading, else its first paragraph), its figures as
PNG thumbnails linking to the interactive HTML, and a link to the report rendered from markdown (markdown-it,
tables on). Every page is self-contained: inline CSS, relative links only, no network, opens from disk.
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from markdown_it import MarkdownIt
from markdown_it.token import Token

from emonn import EmonnError
from emonn.runs import atomic_write

SKIP = frozenset({"cache", "vectors", "readme"})  # OUT/<name> folders that hold no study runs


@dataclass(frozen=True)
class RunFolder:
    """One study × model(s) folder: `OUT/<study>/<name>/`, `name` the model slugs joined by `__`."""

    folder: Path

    @property
    def study(self) -> str:
        return self.folder.parent.name

    @property
    def models(self) -> list[str]:
        return self.folder.name.split("__")

    @property
    def href(self) -> str:
        """The folder relative to OUT, as a URL path."""
        return quote(f"{self.study}/{self.folder.name}")

    def figures(self) -> list[tuple[str, Path | None, Path | None]]:
        """`(name, png, html)` per figure, in the order the report links them, then by name."""
        folder = self.folder / "figures"
        files = [p for p in folder.glob("*") if p.suffix in (".png", ".html") and not p.name.startswith(".")]
        names = {p.stem for p in files}
        report = self.folder / "report.md"
        linked = re.findall(r"figures/([^)/\s]+)\.(?:html|png)", report.read_text()) if report.exists() else []
        order = [n for n in dict.fromkeys(linked) if n in names] + sorted(names - set(linked))
        found = lambda name, ext: folder / f"{name}.{ext}" if (folder / f"{name}.{ext}").exists() else None
        return [(name, found(name, "png"), found(name, "html")) for name in order]

    def tables(self) -> list[Path]:
        return sorted(p for p in (self.folder / "results").glob("*.parquet") if not p.name.startswith("."))


def run_folders(out: Path) -> list[RunFolder]:
    """Every `OUT/<study>/<model>/` folder holding a `report.md` or a `config.json`, by study then name."""
    out = Path(out)
    found = []
    for study in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []:
        if study.name in SKIP or study.name.startswith("."):
            continue
        for folder in sorted(p for p in study.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (folder / "report.md").exists() or (folder / "config.json").exists():
                found.append(RunFolder(folder))
    return found


def build_index(out: Path) -> Path:
    """Write `out/index.html` and `report.html` in every run folder under `out`; return the index's path.

    Raises `EmonnError` when `out` holds no run folder."""
    out = Path(out)
    folders = run_folders(out)
    if not folders:
        raise EmonnError(f"{out} holds no study results (no {out}/<study>/<model>/report.md); run a study first, "
                         f"e.g. python studies/example.py --out {out}")
    md = _markdown()
    cards: dict[str, list[str]] = {}
    for run in folders:
        tokens = _tokens(md, run)
        if tokens is not None:
            atomic_write(run.folder / "report.html", _report_page(md, run, tokens))
        cards.setdefault(run.study, []).append(_card(md, run, tokens))
    return atomic_write(out / "index.html", _index_page(out, cards, n_runs=len(folders)))


# ---------------------------------------------------------------------------------------------- markdown

def _markdown() -> MarkdownIt:
    """CommonMark with tables; raw HTML in a report is shown as text (token strings may hold `<`)."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    # wide tables scroll inside their own box instead of widening the page
    md.add_render_rule("table_open", lambda self, tokens, i, options, env: '<div class="scroll"><table>\n')
    md.add_render_rule("table_close", lambda self, tokens, i, options, env: "</table></div>\n")
    md.add_render_rule("td_open", _cell)
    return md


def _cell(self, tokens: list[Token], i: int, options, env) -> str:
    """Numbers and intervals stay on one line; a cell of prose (more than a few words) may wrap."""
    if len(tokens[i + 1].content) > 32 and tokens[i + 1].content.count(" ") > 3:
        tokens[i].attrSet("class", "prose")
    return self.renderToken(tokens, i, options, env)


def _tokens(md: MarkdownIt, run: RunFolder) -> list[Token] | None:
    report = run.folder / "report.md"
    return md.parse(report.read_text(encoding="utf-8")) if report.exists() else None


def _title(tokens: list[Token] | None) -> str | None:
    """The text of the report's first `#` heading."""
    for i, token in enumerate(tokens or []):
        if token.type == "heading_open" and token.tag == "h1":
            return tokens[i + 1].content
    return None


def _headline(tokens: list[Token]) -> tuple[list[Token], bool]:
    """The bullet lists under the "Headline" heading (its paragraphs if it has none), else the report's first
    paragraph; and whether a Headline section was found."""
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and tokens[i + 1].content.strip().lower().startswith("headline"):
            level, end = int(token.tag[1]), len(tokens)
            for j in range(i + 3, len(tokens)):
                if tokens[j].type == "heading_open" and int(tokens[j].tag[1]) <= level:
                    end = j
                    break
            section = tokens[i + 3:end]
            return (_blocks(section, "bullet_list") or _blocks(section, "paragraph")), True
    return _blocks(tokens, "paragraph")[:3], False  # paragraph_open, inline, paragraph_close


def _blocks(tokens: list[Token], kind: str) -> list[Token]:
    """The top-level `kind` blocks (`bullet_list`, `paragraph`) among `tokens`, opening to closing token."""
    kept, inside = [], False
    for token in tokens:
        if token.level == 0 and token.type == f"{kind}_open":
            inside = True
        if inside:
            kept.append(token)
        if token.level == 0 and token.type == f"{kind}_close":
            inside = False
    return kept


def _rebase(tokens: list[Token], prefix: str) -> list[Token]:
    """Copies of `tokens` whose relative link targets and image sources start with `prefix`, so a fragment of
    a report renders correctly from another folder (the index)."""
    rebased = []
    for token in tokens:
        token = token.copy(attrs=dict(token.attrs))
        if token.children:
            token.children = _rebase(token.children, prefix)
        for attr in ("href", "src"):
            value = token.attrs.get(attr)
            if isinstance(value, str) and _relative(value):
                token.attrs[attr] = prefix + value
        rebased.append(token)
    return rebased


def _relative(url: str) -> bool:
    return not re.match(r"^([a-z][a-z0-9+.-]*:|/|#)", url, re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- pages

def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _chips(models: list[str]) -> str:
    return "".join(f'<span class="chip">{_e(m)}</span>' for m in models)


def _when(run: RunFolder) -> str:
    stamp = max((p.stat().st_mtime for p in (run.folder / "report.md", run.folder / "config.json") if p.exists()))
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def _thumbnails(run: RunFolder, prefix: str) -> str:
    items = []
    for name, png, page in run.figures():
        target = f"{prefix}figures/{quote((page or png).name)}"
        inner = (f'<img src="{_e(prefix)}figures/{_e(quote(png.name))}" alt="{_e(name)}" loading="lazy">' if png
                 else '<span class="noimg">interactive only</span>')
        items.append(f'<a class="thumb" href="{_e(target)}" title="{_e(name)}: open the interactive chart">'
                     f'{inner}<span class="caption">{_e(name)}</span></a>')
    return f'<div class="thumbs">{"".join(items)}</div>' if items else ""


def _card(md: MarkdownIt, run: RunFolder, tokens: list[Token] | None) -> str:
    prefix = run.href + "/"
    title = _title(tokens) or f"{run.study}: {', '.join(run.models)}"
    if tokens is None:
        headline = '<p class="muted">No report.md yet: the run has not finished (config.json only).</p>'
        report_link = ""
    else:
        lines, found = _headline(tokens)
        body = md.renderer.render(_rebase(lines, prefix), md.options, {})
        headline = (f'<div class="headline">{body}</div>' if found
                    else f'<div class="headline first"><span class="label">No Headline section; the report opens:</span>'
                         f'{body}</div>')
        report_link = f'<a class="button" href="{_e(prefix)}report.html">Full report</a>'
    tables = " · ".join(f'<a href="{_e(prefix)}results/{_e(quote(p.name))}">{_e(p.stem)}</a>' for p in run.tables())
    config = (f' · <a href="{_e(prefix)}config.json">config.json</a>' if (run.folder / "config.json").exists()
              else "")
    return f"""
<article class="card" id="{_e(run.href)}">
  <header>
    <h3><a href="{_e(prefix)}{'report.html' if tokens is not None else 'config.json'}">{_e(title)}</a></h3>
    <div class="meta">{_chips(run.models)}<span class="when">{_e(_when(run))}</span>{report_link}</div>
  </header>
  {headline}
  {_thumbnails(run, prefix)}
  <p class="files">Tables (parquet): {tables or 'none'}{config}</p>
</article>"""


def _index_page(out: Path, cards: dict[str, list[str]], *, n_runs: int) -> str:
    toc = "".join(f'<a href="#{_e(study)}">{_e(study)} <span class="count">{len(items)}</span></a>'
                  for study, items in cards.items())
    sections = "".join(f'<section id="{_e(study)}"><h2>{_e(study)}</h2>{"".join(items)}</section>'
                       for study, items in cards.items())
    return _page(f"emonn results: {out.resolve().name}", f"""
<header class="top">
  <h1>emonn results</h1>
  <p class="muted">{len(cards)} stud{'y' if len(cards) == 1 else 'ies'}, {n_runs} run{'' if n_runs == 1 else 's'}
    in <code>{_e(out)}</code>; built {_e(time.strftime('%Y-%m-%d %H:%M'))} by <code>emonn report</code>.
    Click a thumbnail for the interactive chart, a title for the full report.</p>
  <nav class="toc">{toc}</nav>
</header>
{sections}""")


def _report_page(md: MarkdownIt, run: RunFolder, tokens: list[Token]) -> str:
    config = run.folder / "config.json"
    details = ""
    if config.exists():
        try:
            text = json.dumps(json.loads(config.read_text(encoding="utf-8")), indent=2, ensure_ascii=False)
        except ValueError:
            text = config.read_text(encoding="utf-8", errors="replace")
        details = f'<details><summary>config.json</summary><pre>{_e(text)}</pre></details>'
    thumbs = _thumbnails(run, "")
    return _page(_title(tokens) or run.href, f"""
<nav class="crumbs"><a href="../../index.html">All results</a> › <a href="../../index.html#{_e(run.study)}">{_e(run.study)}</a>
  › {_chips(run.models)}</nav>
<main class="report">
{md.renderer.render(tokens, md.options, {})}
{f'<h2>Figure previews</h2>{thumbs}' if thumbs else ''}
{details}
</main>""")


def _page(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style></head>
<body>{body}
</body></html>
"""


CSS = """
:root { --ink:#1d2330; --muted:#5d6677; --line:#dde1e8; --bg:#f5f6f8; --card:#fff; --accent:#2f5fb3; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1280px; padding: 24px 32px 64px; background: var(--bg); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK JP", sans-serif; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
h1 { font-size: 28px; margin: 0 0 4px; } h2 { font-size: 21px; margin: 28px 0 12px; }
h3 { font-size: 17px; margin: 0; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #eceef2; padding: 1px 4px;
  border-radius: 3px; }
.muted, .when { color: var(--muted); }
.top { border-bottom: 1px solid var(--line); padding-bottom: 12px; margin-bottom: 8px; }
.toc { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 10px; }
.toc a { background: var(--card); border: 1px solid var(--line); border-radius: 16px; padding: 3px 12px; }
.count { color: var(--muted); font-size: 12px; }
section > h2 { text-transform: capitalize; border-left: 4px solid var(--accent); padding-left: 10px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px;
  margin: 0 0 16px; box-shadow: 0 1px 2px rgba(0,0,0,.04); }
.card header { display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between; gap: 8px; }
.meta { display: flex; align-items: center; gap: 8px; font-size: 13px; }
.chip { background: #e8eefb; color: #24427a; border-radius: 10px; padding: 1px 9px; font-size: 12.5px;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.button { border: 1px solid var(--accent); border-radius: 5px; padding: 2px 10px; }
.headline { margin: 10px 0; font-size: 14.5px; }
.headline ul { margin: 0; padding-left: 20px; } .headline li { margin: 3px 0; } .headline p { margin: 4px 0; }
.label { font-size: 12px; color: var(--muted); font-style: italic; }
.headline.first p { color: var(--muted); display: -webkit-box; -webkit-line-clamp: 4; -webkit-box-orient: vertical;
  overflow: hidden; }
.thumbs { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0 4px; }
.thumb { display: flex; flex-direction: column; width: 282px; border: 1px solid var(--line); border-radius: 6px;
  padding: 6px; background: #fff; }
.thumb:hover { border-color: var(--accent); text-decoration: none; }
.thumb img { width: 100%; height: 176px; object-fit: contain; }
.noimg { height: 176px; display: flex; align-items: center; justify-content: center; color: var(--muted);
  background: var(--bg); }
.caption { font-size: 12.5px; color: var(--ink); margin-top: 4px; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.files { font-size: 12.5px; color: var(--muted); margin: 8px 0 0; }
.crumbs { font-size: 14px; margin-bottom: 12px; display: flex; gap: 6px; align-items: center; flex-wrap: wrap; }
.report { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 32px 24px; }
.report h1 { margin-top: 16px; } .report h2 { border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.scroll { overflow-x: auto; margin: 12px 0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; white-space: nowrap; }
td.prose { white-space: normal; min-width: 16em; }
th { background: #eef1f6; position: sticky; top: 0; } tr:nth-child(even) td { background: #fafbfc; }
details { margin-top: 20px; } pre { background: var(--bg); padding: 12px; overflow-x: auto; font-size: 12.5px; }
"""
