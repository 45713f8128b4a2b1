"""One look for every figure of the report: layout, colours, atom labels."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

# Diverging scale for contributions: blue = negative (keeping the atom lowers
# Rwp: it belongs to the motif), red = positive, white = 0. The same in the
# bar chart, the 3D view and the series heatmap.
CONTRIBUTION_SCALE = "RdBu_r"
KEPT_COLOUR = "#1f77b4"
REMOVED_COLOUR = "#ff7f0e"
OBSERVED_COLOUR = "#1f77b4"
CALCULATED_COLOUR = "#d62728"
DIFFERENCE_COLOUR = "#2ca02c"
BEST_COLOUR = "#d62728"
EXTRACTED_COLOUR = "#111111"
# Colour-blind-safe qualitative palette for structures (comparisons, series).
STRUCTURE_COLOURS = px.colors.qualitative.Safe


def structure_colour(index: int) -> str:
    return STRUCTURE_COLOURS[index % len(STRUCTURE_COLOURS)]


def atom_labels(elements: Sequence[str]) -> list[str]:
    """Labels of the permutable atoms, 1-based in file order: ``["W1", "W2", ...]``."""
    return [f"{el}{i}" for i, el in enumerate(elements, start=1)]


def contribution_colours(values: np.ndarray, limit: float) -> list[str]:
    """Colour strings ("rgb(r, g, b)") of contributions on :data:`CONTRIBUTION_SCALE` over [-limit, limit].

    Bars are given these rather than numbers: plotly reads a bar's numeric
    colours once more as colour strings and warns "Invalid color specifier" for each.
    """
    values = np.clip(np.asarray(values, dtype=float), -limit, limit)
    return sample_colorscale(CONTRIBUTION_SCALE, ((values + limit) / (2.0 * limit)).tolist())


def symmetric_clipped_range(values: np.ndarray, low: float = 10, high: float = 90) -> float:
    """Half-width m of a colour range [-m, m] centred at 0 that clips at the 10th and 90th percentiles.

    A few extreme atoms would otherwise wash every other atom out to white.
    Returns a positive number (1e-12 for all-zero values).
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 1e-12
    lo, hi = np.percentile(values, [low, high])
    return float(max(abs(lo), abs(hi), 1e-12))


def base_layout(
    fig: go.Figure,
    title: str,
    xaxis: Optional[str] = None,
    yaxis: Optional[str] = None,
    legend_top: bool = True,
) -> go.Figure:
    """White template, a title that fits a half-width panel, legend above the plot area.

    No width or height: the page sets the height of each figure's div and
    plotly fills it (responsive), so figures follow the window's width.
    """
    # The title sits below the mode bar (top 28 px of the figure), the legend between title and plot.
    fig.update_layout(
        template="plotly_white",
        title=dict(text=title, x=0.01, xanchor="left", yref="container", y=1, yanchor="top", pad=dict(t=30),
                   font=dict(size=14)),
        margin=dict(l=60, r=20, t=86 if legend_top else 60, b=50),
        font=dict(size=12),
        hoverlabel=dict(font_size=12),
    )
    if legend_top:
        fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0))
    if xaxis is not None:
        fig.update_xaxes(title_text=xaxis)
    if yaxis is not None:
        fig.update_yaxes(title_text=yaxis)
    return fig
