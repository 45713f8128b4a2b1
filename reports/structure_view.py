"""A rotatable 3D view of a starting model, its permutable atoms coloured by contribution."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from scipy.spatial import cKDTree

from motex_db.structures import permutable_flags

from motex_db.reports.style import CONTRIBUTION_SCALE, base_layout, symmetric_clipped_range

__all__ = ["bond_segments", "motif_view", "structure_figure"]

_OTHER_COLOUR = "#b0b0b0"
_UNEXPLAINED_COLOUR = "#6a51a3"
# Atoms outside the motif (contribution >= 0) are drawn faded, so the motif reads at any angle.
_OUTSIDE_OPACITY = 0.3
# Distance of the default camera from the scene's centre, in plotly's scene units (its default is ~2.2).
_EYE_DISTANCE = 1.6
# The orthographic view's zoom: the scene box's size (equal on the three axes: true proportions).
_ZOOM = 1.6
_DEFAULT_EYE = np.array([1.05, 1.05, 0.8])
_N_DIRECTIONS = 400


def motif_view(positions: np.ndarray, in_motif: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A camera (eye direction, up direction; unit vectors) from which no other atom hides in the motif.

    ``positions`` (n, 3) of the permutable atoms, Å, centred on the scene;
    ``in_motif`` (n,) bool. The view is orthographic, so an atom is seen at
    its distance from the line of sight through the motif's centre. Of 400
    directions spread evenly over the sphere, the chosen one has the fewest
    atoms outside the motif seen within the motif's outline (the largest such
    distance of a motif atom, plus 1 Å), nearest the usual oblique view among
    equals; up is the z axis as seen from there. Without a motif (or with
    every atom in it) the usual view is kept.
    """
    positions = np.asarray(positions, dtype=float)
    in_motif = np.asarray(in_motif, dtype=bool)
    usual = _DEFAULT_EYE / np.linalg.norm(_DEFAULT_EYE)
    if not in_motif.any() or in_motif.all():
        return usual, _up_vector(usual)
    # a Fibonacci lattice: near-uniform directions, the same every time
    k = np.arange(_N_DIRECTIONS) + 0.5
    polar = np.arccos(1.0 - 2.0 * k / _N_DIRECTIONS)
    azimuth = np.pi * (1.0 + 5.0**0.5) * k
    directions = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)
    relative = positions - positions[in_motif].mean(axis=0)
    along = relative @ directions.T  # (n_atoms, n_directions)
    sideways = np.sqrt(np.maximum((relative**2).sum(axis=1)[:, None] - along**2, 0.0))
    outline = sideways[in_motif].max(axis=0) + 1.0
    hidden = (sideways[~in_motif] < outline).sum(axis=0)
    best = np.lexsort((-(directions @ usual), hidden))[0]
    return directions[best], _up_vector(directions[best])


def _up_vector(eye: np.ndarray) -> np.ndarray:
    """The z axis as seen looking along ``-eye`` (the y axis when looking straight down z)."""
    for axis in (np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])):
        up = axis - (axis @ eye) * eye
        if np.linalg.norm(up) > 0.2:
            return up / np.linalg.norm(up)
    raise AssertionError("unreachable: z and y cannot both be parallel to one direction")


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
    contributions. Atoms with contribution >= 0 are faded, and the default
    camera (:func:`motif_view`) looks from where none of them hides in the
    motif. Hover shows
    the atom's index (1-based among the permutable atoms), element and value.
    ``structure`` is a ``starting_model`` row.
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
    in_motif = np.zeros(perm_atoms.size, dtype=bool)
    if contributions is not None and len(contributions) == perm_atoms.size:
        table = contributions.sort_values("atom_index")
        value = table["contribution"].to_numpy(dtype=float)
        in_motif = value < 0
        limit = symmetric_clipped_range(value)
        text = np.array([
            f"{elements[a]}{k}: permutable atom {k} ({elements[a]})<br>contribution {c:.4f} ± {u:.4f}<br>confidence {f:.2f}"
            for a, k, c, u, f in zip(perm_atoms, index, value, table["uncertainty"], table["confidence"])
        ])
        # one trace per side of 0, on one colour scale; the colour bar once
        for chosen, name, size, opacity, colourbar in (
            (in_motif, "in the motif (contribution < 0)", 9, 1.0, True),
            (~in_motif, "outside (contribution ≥ 0), faded", 7, _OUTSIDE_OPACITY, False),
        ):
            if not chosen.any():
                continue
            marker = dict(size=size, color=np.clip(value[chosen], -limit, limit), colorscale=CONTRIBUTION_SCALE,
                          cmin=-limit, cmax=limit, opacity=opacity, line=dict(color="#333", width=1))
            if colourbar:
                marker["colorbar"] = dict(title=dict(text="contribution", side="right"), thickness=12, len=0.7)
            atoms = perm_atoms[chosen]
            fig.add_scatter3d(
                x=positions[atoms, 0], y=positions[atoms, 1], z=positions[atoms, 2], mode="markers",
                name=name, marker=marker, text=text[chosen], hovertemplate="%{text}<extra></extra>",
            )
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
    eye, up = motif_view(positions[perm_atoms] - centre, in_motif)
    base_layout(fig, title or f"{structure.name}: {perm_atoms.size} permutable atoms coloured by contribution")
    fig.update_layout(
        # closer than plotly's default camera, which leaves the cluster small
        scene=dict(**axes, aspectmode="manual", aspectratio=dict(x=_ZOOM, y=_ZOOM, z=_ZOOM), camera=dict(
            eye=dict(zip("xyz", (_EYE_DISTANCE * eye).tolist())), up=dict(zip("xyz", up.tolist())),
            projection=dict(type="orthographic"),
        )),
        margin=dict(l=0, r=0, t=86, b=0),
        uirevision="structure",
    )
    return fig
