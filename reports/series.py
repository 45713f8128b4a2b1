"""Figures of a time-resolved series: contributions per frame, best fits against time, its decomposition."""

from __future__ import annotations

from typing import Optional

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from motex_db.reports.data import Series
from motex_db.reports.style import CONTRIBUTION_SCALE, base_layout, structure_colour, symmetric_clipped_range

__all__ = ["contribution_heatmap", "best_against_time", "explained_variance_figure", "component_weights",
           "correlation_heatmap"]


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


def _decomposition_times(series: Series) -> np.ndarray:
    """Frame times (s) of the decomposition's frames; a frame without a time gets its index."""
    times = series.decomposition.frame_times
    return np.array([t if t is not None else float(i) for i, t in enumerate(times)], dtype=float)


def _decomposition_title(series: Series) -> str:
    d = series.decomposition
    how = "auto" if d.components_requested == "auto" else "asked for"
    return f"decomposition {d.decomposition_id}, r {d.r_min:g}-{d.r_max:g} Å, {d.n_components} components ({how})"


def explained_variance_figure(series: Series) -> Optional[go.Figure]:
    """PCA explained-variance ratio per component (bars) and cumulative (line), with the 99 % line; None without one."""
    d = series.decomposition
    if d is None or d.explained_variance.size == 0:
        return None
    shown = min(len(d.explained_variance), max(10, d.n_components + 3))
    x = np.arange(1, shown + 1)
    ratio, cumulative = d.explained_variance[:shown], d.cumulative_variance[:shown]
    fig = go.Figure()
    fig.add_bar(x=x, y=ratio, name="component", marker_color=structure_colour(0),
                hovertemplate="component %{x}: %{y:.4%}<extra></extra>")
    fig.add_scatter(x=x, y=cumulative, mode="lines+markers", name="cumulative", line=dict(color=structure_colour(1)),
                    hovertemplate="components 1-%{x}: %{y:.4%}<extra></extra>")
    fig.add_hline(y=0.99, line=dict(color="#888", dash="dot"), annotation_text="99 %", annotation_position="bottom right")
    fig.add_vline(x=d.n_components, line=dict(color="#444", dash="dash"))
    base_layout(fig, f"Series {series.name}: PCA explained variance ({_decomposition_title(series)})",
                "PCA component", "explained variance ratio")
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02])
    fig.update_xaxes(dtick=1)
    return fig


def component_weights(series: Series) -> Optional[go.Figure]:
    """The weight of each NMF component in each frame against frame time, one line per component; None without one."""
    d = series.decomposition
    if d is None or d.weights.size == 0:
        return None
    times = _decomposition_times(series)
    fig = go.Figure()
    for k, name in enumerate(d.component_names):
        fig.add_scatter(x=times, y=d.weights[:, k], mode="lines+markers", name=f"component {k + 1} ({name})",
                        text=d.frame_names, line=dict(color=structure_colour(k)),
                        hovertemplate=f"component {k + 1}, %{{text}}<br>t = %{{x:g}} s: weight %{{y:.4f}}<extra></extra>")
    total = d.weights.sum(axis=1)
    fig.add_scatter(x=times, y=total, mode="lines", name="sum", text=d.frame_names, line=dict(color="#888", dash="dot"),
                    hovertemplate="%{text}<br>t = %{x:g} s: sum of weights %{y:.4f}<extra></extra>")
    return base_layout(fig, f"Series {series.name}: NMF component weights ({_decomposition_title(series)})",
                       "frame time (s)", "weight")


def correlation_heatmap(series: Series) -> Optional[go.Figure]:
    """Pearson correlation of every pair of frames (both axes: frame time in s); None without a decomposition."""
    d = series.decomposition
    if d is None or d.correlation.size == 0:
        return None
    times = _decomposition_times(series)
    z = d.correlation
    names = np.array(d.frame_names, dtype=object)
    customdata = np.dstack([np.broadcast_to(names[:, None], z.shape), np.broadcast_to(names[None, :], z.shape)])
    off = z[~np.eye(len(z), dtype=bool)]
    low = float(np.nanmin(off)) if off.size and np.isfinite(off).any() else 0.0
    fig = go.Figure(go.Heatmap(
        x=times, y=times, z=z, customdata=customdata, colorscale="Viridis", zmin=min(low, 0.999), zmax=1.0,
        colorbar=dict(title=dict(text="Pearson r", side="right"), thickness=12, len=0.8),
        hovertemplate="%{customdata[0]} (t = %{y:g} s) and %{customdata[1]} (t = %{x:g} s)<br>r = %{z:.4f}<extra></extra>",
    ))
    fig = base_layout(fig, f"Series {series.name}: correlation of the frames (r {d.r_min:g}-{d.r_max:g} Å)",
                      "frame time (s)", "frame time (s)", legend_top=False)
    fig.update_yaxes(autorange="reversed")
    return fig
