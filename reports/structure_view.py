"""A rotatable 3D view of a starting model, its permutable atoms coloured by contribution."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from scipy.spatial import cKDTree

from motex_db.structures import permutable_flags

from motex_db.reports.style import CONTRIBUTION_SCALE, base_layout, symmetric_clipped_range

__all__ = ["bond_segments", "structure_figure"]

_OTHER_COLOUR = "#b0b0b0"
_UNEXPLAINED_COLOUR = "#6a51a3"


def bond_segments(positions: np.ndarray, permutable: np.ndarray, cutoff: float) -> tuple[list, list, list]:
    """x, y, z of line segments (``None`` between them) for every pair closer than ``cutoff`` (Å)
    that involves at least one permutable atom.

    These are the bonds that decide a motif's atoms (science.md section 2: a
    non-permutable atom comes with any kept permutable atom this close).
    Pairs of two permutable atoms are drawn too: where every atom is
    permutable (the C60 example) they are the only bonds there are.
    """
    pairs = np.array(sorted(cKDTree(positions).query_pairs(float(cutoff))), dtype=int).reshape(-1, 2)
    pairs = pairs[permutable[pairs[:, 0]] | permutable[pairs[:, 1]]]
    xs, ys, zs = [], [], []
    for i, j in pairs:
        for axis, out in enumerate((xs, ys, zs)):
            out.extend((float(positions[i, axis]), float(positions[j, axis]), None))
    return xs, ys, zs


def structure_figure(structure, contributions: Optional[pd.DataFrame], title: Optional[str] = None) -> go.Figure:
    """The starting model in 3D: permutable atoms coloured by contribution, other atoms small and grey, bonds drawn.

    The colour scale is diverging and centred at 0 (blue: negative, the atom
    belongs to the motif), clipped at the 10th and 90th percentiles of the
    contributions. Hover shows the atom's index (1-based among the permutable
    atoms), element and value. ``structure`` is a ``starting_model`` row.
    """
    positions = np.asarray(structure.positions, dtype=float)
    elements = list(structure.elements)
    permutable = permutable_flags(elements, structure.permutable_elements)
    perm_atoms = np.flatnonzero(permutable)
    others = np.flatnonzero(~permutable)
    fig = go.Figure()

    xs, ys, zs = bond_segments(positions, permutable, structure.bond_cutoff)
    if xs:
        fig.add_scatter3d(x=xs, y=ys, z=zs, mode="lines", name=f"bonds (< {structure.bond_cutoff:g} Å)",
                          line=dict(color="#9a9a9a", width=3), hoverinfo="skip")
    if others.size:
        fig.add_scatter3d(
            x=positions[others, 0], y=positions[others, 1], z=positions[others, 2], mode="markers",
            name="other atoms", marker=dict(size=3, color=_OTHER_COLOUR),
            text=[f"{elements[i]} (file atom {i + 1}), not permutable" for i in others],
            hovertemplate="%{text}<extra></extra>",
        )
    index = np.arange(1, perm_atoms.size + 1)
    if contributions is not None and len(contributions) == perm_atoms.size:
        table = contributions.sort_values("atom_index")
        value = table["contribution"].to_numpy(dtype=float)
        limit = symmetric_clipped_range(value)
        marker = dict(size=8, color=np.clip(value, -limit, limit), colorscale=CONTRIBUTION_SCALE, cmin=-limit, cmax=limit,
                      line=dict(color="#333", width=1),
                      colorbar=dict(title=dict(text="contribution", side="right"), thickness=12, len=0.7))
        text = [
            f"{elements[a]}{k}: permutable atom {k} ({elements[a]})<br>contribution {c:.4f} ± {u:.4f}<br>confidence {f:.2f}"
            for a, k, c, u, f in zip(perm_atoms, index, value, table["uncertainty"], table["confidence"])
        ]
    else:
        marker = dict(size=8, color=_UNEXPLAINED_COLOUR, line=dict(color="#333", width=1))
        text = [f"{elements[a]}{k}: permutable atom {k} ({elements[a]}), not explained yet" for a, k in zip(perm_atoms, index)]
    fig.add_scatter3d(
        x=positions[perm_atoms, 0], y=positions[perm_atoms, 1], z=positions[perm_atoms, 2], mode="markers",
        name="permutable atoms", marker=marker, text=text, hovertemplate="%{text}<extra></extra>",
    )
    # Equal ranges on the three axes (a cube around the cluster): true proportions, also for a
    # flat or straight cluster, where plotly's aspectmode "data" has a zero-length axis to scale.
    centre = 0.5 * (positions.min(axis=0) + positions.max(axis=0))
    half = 0.5 * float(np.ptp(positions, axis=0).max()) + 1.5
    axes = {name: dict(visible=False, showbackground=False, range=[centre[k] - half, centre[k] + half])
            for k, name in enumerate(("xaxis", "yaxis", "zaxis"))}
    base_layout(fig, title or f"{structure.name}: {perm_atoms.size} permutable atoms coloured by contribution")
    fig.update_layout(
        # a little closer than plotly's default camera, which leaves the cluster small
        scene=dict(**axes, aspectmode="cube", camera=dict(eye=dict(x=1.05, y=1.05, z=0.8))),
        margin=dict(l=0, r=0, t=86, b=0),
        uirevision="structure",
    )
    return fig
