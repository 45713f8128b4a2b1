"""The HTML of the report: one self-contained page, plotly.js embedded once.

The page carries plotly.js in one ``<script>`` in its head and every figure
as a ``<div>`` with its own small script (``include_plotlyjs=False``), so it
opens from disk with no network and stays a few MB for any number of
figures. Figures fill the width of their grid cell (``responsive``) at a
fixed height, which reads well from a laptop (~1280 px: two figures side by
side) down to one column on a narrow window.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

__all__ = ["FigureBlock", "figure_html", "grid_html", "table_html", "facts_html", "page_html", "esc", "number"]

# No plotly logo and no "edit in Chart Studio" link: the page must not reach out.
# A short mode bar (PNG, zoom, pan, reset) that does not cover a half-width figure's title.
PLOT_CONFIG = {
    "responsive": True, "displaylogo": False, "scrollZoom": False,
    "toImageButtonOptions": {"format": "png", "scale": 2},
    "modeBarButtonsToRemove": [
        "select2d", "lasso2d", "autoScale2d", "zoomIn2d", "zoomOut2d", "toggleSpikelines", "hoverClosestCartesian",
        "hoverCompareCartesian", "hoverClosest3d", "resetCameraLastSave3d", "tableRotation",
    ],
}
# Figures are drawn while the page is parsed; once everything is laid out, size
# each one to its final cell (responsive mode only follows window resizes).
_RESIZE_ON_LOAD = (
    '<script type="text/javascript">window.addEventListener("load", function () {'
    ' document.querySelectorAll(".plotly-graph-div").forEach(function (div) { Plotly.Plots.resize(div); }); });'
    "</script>"
)

_CSS = """
:root { --ink: #1d2329; --muted: #5b6670; --line: #dde2e6; --panel: #f6f8fa; --accent: #2166ac; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: #fff; }
main { max-width: 1280px; margin: 0 auto; padding: 16px 20px 48px; }
h1 { font-size: 26px; margin: 8px 0 2px; }
h2 { font-size: 21px; margin: 40px 0 6px; padding-top: 10px; border-top: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 4px; color: var(--ink); }
p { margin: 6px 0; }
.subtitle { color: var(--muted); margin: 0 0 12px; }
.muted { color: var(--muted); }
nav { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; margin: 14px 0; }
nav a { color: var(--accent); text-decoration: none; margin-right: 18px; white-space: nowrap; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll { overflow-x: auto; }
/* Two fixed columns, not auto-fit: plotly sizes a figure when its script runs, before the
   later cells of the grid exist, and an auto-fit grid would still be one column then. */
.tables, .grid { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 18px 22px; }
.tables { gap: 0 24px; }
.tables h3 { margin-top: 10px; }
.wide { grid-column: 1 / -1; }
.grid3 { grid-template-columns: repeat(3, minmax(0, 1fr)); margin-top: 18px; }
@media (max-width: 1050px) { .tables, .grid, .grid3 { grid-template-columns: minmax(0, 1fr); } }
figure { margin: 0; min-width: 0; }
figure .plot { border: 1px solid var(--line); border-radius: 6px; overflow: hidden; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
.facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(270px, 1fr)); gap: 10px; margin: 10px 0 6px; }
.fact { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
.fact .label { font-size: 12px; text-transform: uppercase; letter-spacing: 0.04em; color: var(--muted); }
.fact .value { font-size: 18px; font-weight: 600; }
.fact .detail { font-size: 13px; color: var(--muted); }
footer { margin-top: 36px; padding-top: 10px; border-top: 1px solid var(--line); font-size: 13px; }
.note { background: #fff8e5; border: 1px solid #f0d78c; border-radius: 6px; padding: 6px 12px; font-size: 14px; }
"""


def esc(value) -> str:
    """Text escaped for HTML."""
    return html.escape(str(value), quote=True)


def number(value, spec: str = ".4f", empty: str = "—") -> str:
    """A number formatted with ``spec``; ``empty`` for None and NaN."""
    if value is None:
        return empty
    try:
        if isinstance(value, float) and not math.isfinite(value):
            return empty
        return format(value, spec)
    except (TypeError, ValueError):
        return esc(value)


@dataclass(frozen=True)
class FigureBlock:
    """A figure with the height of its div (px) and a caption saying how to read it."""

    figure: go.Figure
    height: int
    caption: str  # HTML
    div_id: str
    wide: bool = False  # spans the whole width instead of one grid column


def figure_html(block: FigureBlock) -> str:
    """The figure's div and script, without plotly.js (the page carries it once)."""
    div = pio.to_html(
        block.figure, config=PLOT_CONFIG, include_plotlyjs=False, full_html=False,
        default_width="100%", default_height=f"{block.height}px", div_id=block.div_id,
    )
    wide = ' class="wide"' if block.wide else ""
    return f'<figure{wide}><div class="plot">{div}</div><figcaption>{block.caption}</figcaption></figure>'


def grid_html(blocks: Iterable[FigureBlock], columns: int = 2) -> str:
    """Figures in a grid of two (or three) columns; wide figures take a whole row."""
    kind = "grid grid3" if columns == 3 else "grid"
    return f'<div class="{kind}">' + "".join(figure_html(b) for b in blocks) + "</div>"


def table_html(columns: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[bool] = ()) -> str:
    """A plain table; cells are escaped, numeric columns right-aligned."""
    numeric = list(numeric) + [False] * (len(columns) - len(numeric))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if n else ""}>{esc(v)}</td>' for v, n in zip(row, numeric)) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def facts_html(facts: Iterable[tuple[str, str, str]]) -> str:
    """Key numbers as cards: (label, value, detail), all plain text."""
    cards = "".join(
        f'<div class="fact"><div class="label">{esc(label)}</div><div class="value">{esc(value)}</div>'
        f'<div class="detail">{esc(detail)}</div></div>'
        for label, value, detail in facts
    )
    return f'<div class="facts">{cards}</div>'


def page_html(title: str, header: str, nav: Sequence[tuple[str, str]], sections: Sequence[str],
              footer: Optional[str] = None) -> str:
    """The whole document: head with CSS and plotly.js, header, navigation, sections."""
    links = "".join(f'<a href="#{esc(anchor)}">{esc(text)}</a>' for anchor, text in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n"
        # what plotly's own to_html sets before plotly.js: MathJax, if any, stays local
        '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>\n'
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        "</head>\n<body>\n<main>\n"
        f"{header}\n<nav>{links}</nav>\n" + "\n".join(sections)
        + (f'\n<footer class="muted">{footer}</footer>' if footer else "")
        + f"\n</main>\n{_RESIZE_ON_LOAD}\n</body>\n</html>\n"
    )
