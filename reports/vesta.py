"""A VESTA (.vesta) file of a cluster with atoms coloured by a per-atom value.

VESTA has no published specification; the sections written here follow its
plain-text format as VESTA 3 writes it (a P1 "crystal" whose cubic cell just
holds the cluster, one site per atom, per-site colours in SITET, bonds in
SBOND). Atoms without a value are drawn small and grey.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from plotly.colors import sample_colorscale

COLOUR_SCALE = "RdBu_r"  # negative (belongs to the motif) blue, positive red
MARGIN_ANGSTROM = 2.0


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(round(float(v))) for v in colour[colour.index("(") + 1 : -1].split(",")[:3])


def site_colours(values: np.ndarray) -> list[tuple[int, int, int]]:
    """RGB per value on a diverging scale centred at 0, clipped to the 10-90 % range of the values."""
    lo, hi = np.percentile(values, [10, 90])
    limit = max(abs(lo), abs(hi)) or 1.0
    positions = (np.clip(values, -limit, limit) + limit) / (2 * limit)
    return [_rgb(c) for c in sample_colorscale(COLOUR_SCALE, positions.tolist())]


def write_vesta(path: str | Path, title: str, elements: Sequence[str], positions: np.ndarray,
                values: np.ndarray, has_value: np.ndarray, bond_pairs: Sequence[tuple[str, str, float]]) -> Path:
    """Write the cluster to ``path``; ``values`` colour the atoms where ``has_value`` is True."""
    positions = np.asarray(positions, dtype=float)
    low = positions.min(axis=0) - MARGIN_ANGSTROM
    cell = float((positions.max(axis=0) - low).max() + MARGIN_ANGSTROM)
    fractional = (positions - low) / cell
    colours = site_colours(np.asarray(values)[has_value]) if has_value.any() else []
    colour_of = iter(colours)
    lines = [
        "#VESTA_FORMAT_VERSION 3.5.4", "", "CRYSTAL", "", "TITLE", title, "", "GROUP", "1 1 P 1", "SYMOP",
        " 0.000000  0.000000  0.000000  1  0  0   0  1  0   0  0  1   1",
        " -1.0 -1.0 -1.0  0 0 0  0 0 0  0 0 0",
        "TRANM 0", " 0.000000  0.000000  0.000000  1  0  0   0  1  0   0  0  1",
        "LTRANSL", " -1", " 0.000000  0.000000  0.000000  0.000000  0.000000  0.000000",
        "LORIENT", " -1   0   0   0   0", " 1.000000  0.000000  0.000000  1.000000  0.000000  0.000000",
        " 0.000000  0.000000  1.000000  0.000000  0.000000  1.000000",
        "LMATRIX", " 1.000000  0.000000  0.000000  0.000000", " 0.000000  1.000000  0.000000  0.000000",
        " 0.000000  0.000000  1.000000  0.000000", " 0.000000  0.000000  0.000000  1.000000",
        " 0.000000  0.000000  0.000000",
        "CELLP", f"  {cell:.6f}  {cell:.6f}  {cell:.6f}  90.000000  90.000000  90.000000",
        "  0.000000   0.000000   0.000000   0.000000   0.000000   0.000000",
        "STRUC",
    ]
    labels = [f"{el}{i}" for i, el in enumerate(elements, start=1)]
    for i, (el, label, (x, y, z)) in enumerate(zip(elements, labels, fractional), start=1):
        lines.append(f"  {i} {el} {label}  1.0000   {x:.6f}   {y:.6f}   {z:.6f}    1a       1")
        lines.append("                            0.000000   0.000000   0.000000  0.00")
    lines += ["  0 0 0 0 0 0 0", "THERI 0"]
    lines += [f"  {i} {label}  0.400000" for i, label in enumerate(labels, start=1)]
    lines += ["  0 0 0", "BOUND", "       0        1         0        1         0        1", "  0   0   0   0  0", "SBOND"]
    for i, (a, b, cutoff) in enumerate(bond_pairs, start=1):
        lines.append(f"  {i}     {a}     {b}    0.00000    {cutoff:.5f}  0  1  1  0  1  0.250  2.000 127 127 127")
    lines += ["  0 0 0 0", "SITET"]
    for i, (label, valued) in enumerate(zip(labels, has_value), start=1):
        if valued:
            r, g, b = next(colour_of)
            lines.append(f"  {i} {label}  1.3000 {r} {g} {b} {r} {g} {b} 204  0")
        else:
            lines.append(f"  {i} {label}  0.5000 180 180 180 180 180 180 204  0")
    lines += ["  0 0 0 0 0 0", ""]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path
