"""Charts: a polars frame in, an altair chart out (no statistics here), and `save` to HTML + PNG offline."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import altair as alt
import polars as pl


@functools.cache
def _fonts() -> None:
    """Register a CJK font with vl-convert so Japanese labels render (the IPAex font that the PyPI
    package japanize-matplotlib ships; no apt needed). Without it Japanese shows as boxes."""
    import vl_convert

    spec = importlib.util.find_spec("japanize_matplotlib")
    if spec and spec.submodule_search_locations:
        vl_convert.register_font_directory(str(Path(list(spec.submodule_search_locations)[0]) / "fonts"))


def save(chart: alt.TopLevelMixin, path: Path) -> Path:
    """Write `path.html` (self-contained, works offline) and `path.png`; returns the PNG path."""
    _fonts()
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(str(path.with_suffix(".html")), inline=True)
    chart.save(str(path.with_suffix(".png")), scale_factor=2)
    return path.with_suffix(".png")


def heatmap(frame: pl.DataFrame, *, x: str, y: str, color: str, title: str, domain: tuple[float, float] | None
            = None, sort_x: list | None = None, sort_y: list | None = None, scheme: str = "redblue",
            size: int = 360) -> alt.Chart:
    """A rect heatmap of `color` over `x` × `y` (ordinal axes, optionally in a given order)."""
    scale = alt.Scale(scheme=scheme, reverse=scheme == "redblue", domain=list(domain) if domain else alt.Undefined)
    return alt.Chart(frame, title=title).mark_rect().encode(
        x=alt.X(f"{x}:O", sort=sort_x or "ascending"),
        y=alt.Y(f"{y}:O", sort=sort_y or "ascending"),
        color=alt.Color(f"{color}:Q", scale=scale),
        tooltip=[x, y, alt.Tooltip(f"{color}:Q", format=".3f")],
    ).properties(width=size, height=size)


def lines(frame: pl.DataFrame, *, x: str, y: str, color: str | None = None, title: str, band: tuple[str, str]
          | None = None, y_title: str | None = None, zero: bool = True) -> alt.LayerChart | alt.Chart:
    """Lines of `y` against `x` (one per `color`), with an optional shaded band between two columns;
    `zero=False` lets the y axis start near the data (e.g. a ratio around 1)."""
    data = frame
    base = alt.Chart(data, title=title)
    encode = {"x": alt.X(f"{x}:Q"), "y": alt.Y(f"{y}:Q", title=y_title or y, scale=alt.Scale(zero=zero))}
    if color:
        encode["color"] = alt.Color(f"{color}:N")
    chart = base.mark_line(point=True).encode(**encode).properties(width=420, height=260)
    if band:
        area = base.mark_area(opacity=0.2).encode(x=f"{x}:Q", y=f"{band[0]}:Q", y2=f"{band[1]}:Q",
                                                  **({"color": f"{color}:N"} if color else {}))
        return area + chart
    return chart


def band(frame: pl.DataFrame, *, x: str, low: str, high: str, label: str, color: str = "#f58518") -> alt.Chart:
    """A shaded band between two columns (e.g. a permutation null's 95% range), labelled in a legend."""
    return alt.Chart(frame.with_columns(band=pl.lit(label))).mark_area(opacity=0.25).encode(
        x=f"{x}:Q", y=alt.Y(f"{low}:Q", title=None), y2=f"{high}:Q",
        fill=alt.Fill("band:N", scale=alt.Scale(range=[color]), title=None))


def scatter(frame: pl.DataFrame, *, x: str, y: str, color: str, label: str, title: str) -> alt.LayerChart:
    """Labelled points coloured by a quantity (e.g. PCA of emotion vectors coloured by valence)."""
    base = alt.Chart(frame, title=title).encode(x=f"{x}:Q", y=f"{y}:Q")
    points = base.mark_circle(size=80).encode(color=alt.Color(f"{color}:Q", scale=alt.Scale(scheme="redblue")),
                                              tooltip=[label, color])
    return (points + base.mark_text(dx=6, align="left", fontSize=9).encode(text=f"{label}:N")).properties(
        width=380, height=320)


def bars(frame: pl.DataFrame, *, x: str, y: str, color: str | None = None, title: str,
         error: tuple[str, str] | None = None, offset: str | None = None) -> alt.LayerChart | alt.Chart:
    """Bars of `y` per `x`, with optional error bars between two columns; `offset` sets bars of one `x` side by
    side (grouped) instead of stacked."""
    side = {"xOffset": f"{offset}:N"} if offset else {}
    base = alt.Chart(frame, title=title)
    chart = base.mark_bar().encode(x=f"{x}:N", y=f"{y}:Q", **side, **({"color": f"{color}:N"} if color else {}))
    if error:
        chart = chart + base.mark_errorbar().encode(x=f"{x}:N", y=alt.Y(f"{error[0]}:Q", title=y), y2=f"{error[1]}:Q",
                                                      **side)
    return chart.properties(width=420, height=260)


def tiles(frame: pl.DataFrame, *, x: str, y: str, category: str, text: str, title: str,
          categories: list[str] | None = None, colors: list[str] | None = None, sort_x: list | None = None,
          sort_y: list | None = None, size: int = 90) -> alt.LayerChart:
    """A map of categories over `x` × `y` (e.g. the steering regime per layer × alpha): each tile coloured
    by `category` (in the order `categories`, optionally with one colour each) and labelled with the string
    column `text` (newlines break lines)."""
    base = alt.Chart(frame, title=title).encode(
        x=alt.X(f"{x}:O", sort=sort_x or "ascending", axis=alt.Axis(labelAngle=0)),
        y=alt.Y(f"{y}:O", sort=sort_y or "ascending"))
    scale = alt.Scale(domain=categories or alt.Undefined, range=colors or alt.Undefined)
    rects = base.mark_rect(stroke="white").encode(color=alt.Color(f"{category}:N", scale=scale),
                                                  tooltip=[x, y, category, text])
    labels = base.mark_text(fontSize=10, lineBreak="\n").encode(text=f"{text}:N")
    return (rects + labels).properties(width=size * frame[x].n_unique(), height=size * frame[y].n_unique())
