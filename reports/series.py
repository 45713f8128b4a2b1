"""Figures of a time-resolved series: contributions per frame, best fits against time."""

from __future__ import annotations

from typing import Optional

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from motex_db.reports.data import Series
from motex_db.reports.style import CONTRIBUTION_SCALE, base_layout, structure_colour, symmetric_clipped_range

__all__ = ["contribution_heatmap", "best_against_time"]


def contribution_heatmap(series: Series, structure: str) -> Optional[go.Figure]:
    """Atom contribution (y: permutable atom, x: frame time in s) from each frame's latest model.

    Frames without an explained model are left empty. The diverging scale is
    centred at 0 and clipped at the 10th and 90th percentiles over all
    frames. None when no frame of this structure is explained.
    """
    frames = series.frames[structure]
    n = series.structures[structure].n_permutable
    z = np.full((n, len(frames)), np.nan)
    elements = [""] * n
    for column, frame in enumerate(frames):
        table = frame.contributions
        if table is None or len(table) != n:
            continue
        table = table.sort_values("atom_index")
        z[:, column] = table["contribution"].to_numpy(dtype=float)
        elements = list(table["element"])
    if np.isnan(z).all():
        return None
    limit = symmetric_clipped_range(z)
    labels = [f"{el}{i}" for i, el in enumerate(elements, start=1)]
    names = np.array([[frame.dataset.name for frame in frames]] * n)
    fig = go.Figure(go.Heatmap(
        x=series.times, y=labels, z=np.clip(z, -limit, limit), customdata=np.dstack([z, names]),
        colorscale=CONTRIBUTION_SCALE, zmin=-limit, zmax=limit, zmid=0,
        colorbar=dict(title=dict(text="contribution", side="right"), thickness=12, len=0.8),
        hovertemplate="%{y} at t = %{x:g} s (%{customdata[1]})<br>contribution %{customdata[0]:.4f}<extra></extra>",
    ))
    fig = base_layout(fig, f"{structure}: atom contributions per frame", "frame time (s)", "permutable atom", legend_top=False)
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def best_against_time(series: Series) -> go.Figure:
    """Best Rwp (top) and the size of the best motif (bottom) of each frame, one line per structure."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    times = series.times
    for k, (structure, frames) in enumerate(series.frames.items()):
        colour = structure_colour(k)
        rwp = np.array([f.best_rwp if f.best_rwp is not None else np.nan for f in frames], dtype=float)
        size = np.array([f.best_n_kept if f.best_n_kept is not None else np.nan for f in frames], dtype=float)
        names = [f.dataset.name for f in frames]
        fig.add_scatter(x=times, y=rwp, mode="lines+markers", name=structure, legendgroup=structure, text=names,
                        line=dict(color=colour), hovertemplate=f"{structure}, %{{text}}<br>t = %{{x:g}} s: best Rwp %{{y:.4f}}<extra></extra>",
                        row=1, col=1)
        fig.add_scatter(x=times, y=size, mode="lines+markers", name=structure, legendgroup=structure, showlegend=False,
                        text=names, line=dict(color=colour, dash="dot"),
                        hovertemplate=f"{structure}, %{{text}}<br>t = %{{x:g}} s: best motif %{{y}} kept atoms<extra></extra>",
                        row=2, col=1)
    base_layout(fig, f"Series {series.name}: best sampled motif of each frame")
    fig.update_yaxes(title_text="best Rwp", row=1, col=1)
    fig.update_yaxes(title_text="kept atoms", row=2, col=1)
    fig.update_xaxes(title_text="frame time (s)", row=2, col=1)
    return fig
