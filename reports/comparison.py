"""Several starting structures fitted to one dataset, side by side (the paper's four Keggin starting models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import plotly.graph_objects as go

from motex_db.reports.data import Run, extracted_composition
from motex_db.reports.style import base_layout, structure_colour

__all__ = ["StructureRow", "structure_rows", "best_rwp_by_size", "contribution_distributions"]


@dataclass(frozen=True)
class StructureRow:
    """One line of the comparison table (Rwp, MAE: Rwp units)."""

    structure: str
    n_permutable: int
    n_fits: int
    best_rwp: Optional[float]
    best_size: Optional[int]
    test_mae: Optional[float]
    overall_confidence: Optional[float]
    extracted_composition: Optional[str]
    extracted_rwp: Optional[float]


def structure_rows(runs: Sequence[Run]) -> list[StructureRow]:
    """The comparison table's rows, in the order of ``runs``."""
    rows = []
    for run in runs:
        model = run.model
        rows.append(StructureRow(
            structure=run.structure.name,
            n_permutable=run.structure.n_permutable,
            n_fits=len(run.fits),
            best_rwp=run.best.rwp if run.best else None,
            best_size=run.best.n_kept if run.best else None,
            test_mae=(model.metrics or {}).get("mae") if model is not None else None,
            overall_confidence=model.overall_confidence if model is not None else None,
            extracted_composition=extracted_composition(run),
            extracted_rwp=run.extracted.rwp if run.extracted else None,
        ))
    return rows


def best_rwp_by_size(runs: Sequence[Run]) -> go.Figure:
    """The lowest Rwp at each motif size, one line per structure; markers for the extracted motifs."""
    fig = go.Figure()
    for k, run in enumerate(runs):
        sampled = run.fits[~run.fits["extracted"]]
        lowest = sampled.groupby("n_kept")["rwp"].min()
        colour = structure_colour(k)
        fig.add_scatter(x=lowest.index, y=lowest.values, mode="lines+markers", name=run.structure.name,
                        legendgroup=run.structure.name, line=dict(color=colour, width=1.8), marker=dict(size=4),
                        hovertemplate=f"{run.structure.name}<br>%{{x}} kept atoms: lowest Rwp %{{y:.4f}}<extra></extra>")
        if run.extracted is not None and run.extracted.rwp is not None:
            fig.add_scatter(x=[run.extracted.n_kept], y=[run.extracted.rwp], mode="markers", showlegend=False,
                            legendgroup=run.structure.name,
                            marker=dict(symbol="diamond", size=13, color=colour, line=dict(color="#111", width=1.5)),
                            hovertemplate=f"{run.structure.name}: extracted motif<br>%{{x}} kept atoms, Rwp %{{y:.4f}}<extra></extra>")
    return base_layout(fig, "Lowest Rwp per motif size (◆ extracted motif)", "kept permutable atoms", "lowest Rwp")


def contribution_distributions(runs: Sequence[Run]) -> go.Figure:
    """Each structure's atom contributions as a violin with every atom as a point."""
    fig = go.Figure()
    for k, run in enumerate(runs):
        if run.contributions is None:
            continue
        table = run.contributions
        labels = [f"{el}{i}" for el, i in zip(table["element"], table["atom_index"])]
        fig.add_trace(go.Violin(
            x=[run.structure.name] * len(table), y=table["contribution"], name=run.structure.name,
            legendgroup=run.structure.name, line_color=structure_colour(k), points="all", pointpos=0, jitter=0.4,
            box_visible=True, meanline_visible=True, spanmode="hard", text=labels, marker=dict(size=4),
            hovertemplate=f"{run.structure.name}<br>%{{text}}: %{{y:.4f}}<extra></extra>",
        ))
    fig.add_hline(y=0, line=dict(color="#444", width=1))
    fig = base_layout(fig, "Atom contributions per structure (below 0: in the extracted motif)", None, "contribution (Rwp)")
    fig.update_layout(showlegend=False)
    return fig

