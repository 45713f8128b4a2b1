"""Figures of one refined motif: observed, calculated and difference curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go


def _offset(refinement) -> float:
    """Where the difference curve sits: below the lowest point of both curves."""
    low = min(refinement.g_obs.min(), refinement.g_calc.min())
    spread = np.abs(refinement.difference).max()
    return float(low - 1.2 * spread)


def _title(refinement) -> str:
    return (
        f"motif {refinement.motif_id} of {refinement.structure} against {refinement.dataset}: "
        f"Rwp = {refinement.rwp:.4f}"
    )


def refinement_figure(refinement) -> go.Figure:
    """An interactive plotly figure: G_obs, G_calc and the difference (offset below)."""
    offset = _offset(refinement)
    figure = go.Figure()
    figure.add_scatter(x=refinement.r, y=refinement.g_obs, mode="markers", name="observed", marker=dict(size=4, color="#1f77b4"))
    figure.add_scatter(x=refinement.r, y=refinement.g_calc, mode="lines", name="calculated", line=dict(color="#d62728"))
    figure.add_scatter(x=refinement.r, y=refinement.difference + offset, mode="lines", name="difference (offset)", line=dict(color="#2ca02c"))
    figure.add_hline(y=offset, line=dict(color="grey", width=1, dash="dot"))
    figure.update_layout(
        title=_title(refinement), xaxis_title="r (Å)", yaxis_title="G (Å⁻²)", template="plotly_white",
        legend=dict(orientation="h", y=-0.2), margin=dict(l=60, r=20, t=60, b=60),
    )
    return figure


def write_refinement_files(refinement, out_dir: str | Path) -> dict[str, Path]:
    """Write the PNG (matplotlib), the interactive HTML (plotly, self-contained) and the values as JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"refine_motif{refinement.motif_id}_{refinement.dataset}"
    offset = _offset(refinement)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ax.plot(refinement.r, refinement.g_obs, "o", ms=2.5, mfc="none", color="#1f77b4", label="observed")
    ax.plot(refinement.r, refinement.g_calc, "-", color="#d62728", label="calculated")
    ax.plot(refinement.r, refinement.difference + offset, "-", color="#2ca02c", label="difference (offset)")
    ax.axhline(offset, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("G (Å$^{-2}$)")
    ax.set_title(_title(refinement), fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    png = out_dir / f"{stem}.png"
    fig.savefig(png)
    plt.close(fig)
    html = out_dir / f"{stem}.html"
    refinement_figure(refinement).write_html(str(html), include_plotlyjs=True, full_html=True)
    values = out_dir / f"{stem}.json"
    values.write_text(json.dumps({
        "motif_id": refinement.motif_id, "mask": refinement.mask, "structure": refinement.structure,
        "dataset": refinement.dataset, "rwp": refinement.rwp, "values": refinement.values,
        "uncertainties": refinement.uncertainties, "settings": refinement.settings,
    }, indent=2))
    return {"png": png, "html": html, "json": values}
