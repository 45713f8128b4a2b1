"""Generated crystal structures for structure mining: a small library of common oxide types, and "measured" PDFs.

Seven structure types (rocksalt, fluorite, spinel, perovskite, rutile,
wurtzite, corundum), each with six compositions at literature lattice
parameters (rounded), written as CIF files with ``ase.spacegroup.crystal``;
no downloaded data. :func:`nanoparticle_pdf` simulates what a measurement of
a small particle of one of them gives: a sphere cut from the crystal,
computed as a discrete cluster with the real-space calculator
(:func:`motex_db.pdf.cluster_pdf`, an engine independent of the crystal one
used for the library), plus the particle's number-density baseline
-4 pi rho0 r gamma0(r), and noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["STRUCTURE_TYPES", "example_crystals", "write_example_cifs", "variant_crystals", "nanoparticle_pdf",
           "amorphous_pdf"]

# type -> (spacegroup, setting, basis builder(cations), [(cations, cellpar)])
STRUCTURE_TYPES: dict[str, tuple] = {
    "rocksalt": (225, 1, lambda m: ([m[0], "O"], [(0, 0, 0), (0.5, 0.5, 0.5)]), [
        (("Mg",), 4.21), (("Ni",), 4.18), (("Co",), 4.26), (("Mn",), 4.44), (("Ca",), 4.81), (("Fe",), 4.33)]),
    "fluorite": (225, 1, lambda m: ([m[0], "O"], [(0, 0, 0), (0.25, 0.25, 0.25)]), [
        (("Ce",), 5.41), (("Zr",), 5.07), (("Th",), 5.60), (("U",), 5.47), (("Hf",), 5.08), (("Pr",), 5.39)]),
    "spinel": (227, 2, lambda m: ([m[0], m[1], "O"], [(0.125, 0.125, 0.125), (0.5, 0.5, 0.5), (0.2625, 0.2625, 0.2625)]), [
        (("Mg", "Al"), 8.08), (("Co", "Fe"), 8.39), (("Ni", "Fe"), 8.34), (("Zn", "Fe"), 8.44), (("Mn", "Fe"), 8.51),
        (("Zn", "Cr"), 8.33)]),
    "perovskite": (221, 1, lambda m: ([m[0], m[1], "O"], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)]), [
        (("Sr", "Ti"), 3.905), (("Ba", "Ti"), 4.00), (("Ca", "Ti"), 3.84), (("K", "Nb"), 4.02), (("La", "Al"), 3.79),
        (("Sr", "Zr"), 4.10)]),
    "rutile": (136, 1, lambda m: ([m[0], "O"], [(0, 0, 0), (0.305, 0.305, 0)]), [
        (("Ti",), (4.594, 2.959)), (("Sn",), (4.737, 3.186)), (("Mn",), (4.40, 2.87)), (("Ru",), (4.49, 3.11)),
        (("Ir",), (4.50, 3.15)), (("Ge",), (4.40, 2.86))]),
    "wurtzite": (186, 1, lambda m: ([m[0], "O"], [(1 / 3, 2 / 3, 0), (1 / 3, 2 / 3, 0.382)]), [
        (("Zn",), (3.25, 5.21)), (("Be",), (2.70, 4.38)), (("Mg",), (3.41, 5.27)), (("Co",), (3.24, 5.20)),
        (("Cd",), (3.66, 5.86)), (("Mn",), (3.35, 5.33))]),
    "corundum": (167, 1, lambda m: ([m[0], "O"], [(0, 0, 0.352), (0.306, 0, 0.25)]), [
        (("Al",), (4.76, 12.99)), (("Cr",), (4.96, 13.59)), (("Fe",), (5.04, 13.75)), (("V",), (4.95, 14.00)),
        (("Ti",), (5.16, 13.61)), (("Ga",), (4.98, 13.43))]),
}


def _cellpar(spacegroup: int, lengths) -> list[float]:
    if spacegroup in (186, 167):
        a, c = lengths
        return [a, a, c, 90, 90, 120]
    if spacegroup == 136:
        a, c = lengths
        return [a, a, c, 90, 90, 90]
    return [lengths] * 3 + [90, 90, 90]


def _formula(kind: str, cations: tuple) -> str:
    return {"rocksalt": "{0}O", "fluorite": "{0}O2", "spinel": "{0}{1}2O4", "perovskite": "{0}{1}O3",
            "rutile": "{0}O2", "wurtzite": "{0}O", "corundum": "{0}2O3"}[kind].format(*cations)


def _build(kind: str, cations: tuple, lengths, scale: float = 1.0):
    from ase.spacegroup import crystal

    spacegroup, setting, basis, _ = STRUCTURE_TYPES[kind]
    symbols, positions = basis(cations)
    cellpar = _cellpar(spacegroup, lengths)
    cellpar = [x * scale for x in cellpar[:3]] + cellpar[3:]
    return crystal(symbols, positions, spacegroup=spacegroup, setting=setting, cellpar=cellpar)


def example_crystals() -> list[tuple[str, object]]:
    """(file stem such as ``rocksalt_MgO``, ase Atoms) for the 42 generated crystals."""
    out = []
    for kind, (_, _, _, members) in STRUCTURE_TYPES.items():
        for cations, lengths in members:
            out.append((f"{kind}_{_formula(kind, cations)}", _build(kind, cations, lengths)))
    return out


def variant_crystals(n: int, seed: int = 0) -> list[tuple[str, object]]:
    """``n`` crystals for benchmarks: the 42 examples with lattices scaled by 0.85-1.15, cations as listed."""
    rng = np.random.default_rng(seed)
    kinds = list(STRUCTURE_TYPES)
    out = []
    for k in range(n):
        kind = kinds[k % len(kinds)]
        members = STRUCTURE_TYPES[kind][3]
        cations, lengths = members[rng.integers(len(members))]
        scale = float(rng.uniform(0.85, 1.15))
        out.append((f"{k:05d}_{kind}_{_formula(kind, cations)}_x{scale:.4f}", _build(kind, cations, lengths, scale)))
    return out


def write_example_cifs(folder: str | Path, crystals: Optional[list] = None) -> list[Path]:
    """Write crystals (default: :func:`example_crystals`) as CIF files into ``folder``; returns the paths."""
    import ase.io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, atoms in crystals if crystals is not None else example_crystals():
        path = folder / f"{stem}.cif"
        ase.io.write(str(path), atoms, format="cif")
        paths.append(path)
    return paths


def nanoparticle_pdf(
    atoms, r: np.ndarray, diameter: float = 30.0, qmin: float = 0.8, qmax: float = 20.0, qdamp: float = 0.03,
    biso: float = 0.6, noise: float = 0.02, seed: int = 0,
) -> np.ndarray:
    """G(r) of a spherical particle of ``diameter`` Å cut from the crystal, with Gaussian noise.

    Peaks from the discrete cluster (:func:`motex_db.pdf.cluster_pdf`), the
    baseline -4 pi rho0 r gamma0(r) of a sphere of the crystal's density;
    noise with standard deviation ``noise`` times max |G|.
    """
    from motex_db.pdf import PDFParameters, cluster_pdf
    from motex_db.pdf.crystal import sphere_envelope
    from motex_db.structures import _sphere_from_crystal

    positions, elements = _sphere_from_crystal(atoms, diameter / 2)
    # The cluster's peaks carry a small-angle hump (Q < ~2 pi / D) that the particle's
    # baseline cancels; a Q window applied to the peaks alone would keep the baseline and
    # lose the hump. So: peaks with the whole low-Q range plus the baseline, then the Qmin cut.
    params = PDFParameters(qmin=0.0, qmax=qmax, qdamp=qdamp, biso={"*": biso})
    peaks = cluster_pdf(elements, positions, r, params)
    rho0 = len(atoms) / atoms.get_volume()
    g = peaks - 4 * np.pi * rho0 * r * sphere_envelope(r, diameter)[0]
    g = _cut_below(r, g, qmin)
    rng = np.random.default_rng(seed)
    return g + rng.normal(0.0, noise * np.abs(g).max(), r.size)


def _cut_below(r: np.ndarray, g: np.ndarray, qmin: float) -> np.ndarray:
    """Remove the Q < qmin part of G(r) (sine transform on a fine grid from r = 0, back transform)."""
    if qmin <= 0:
        return g
    step = 0.005
    fine = np.arange(0.0, r[-1] + 10.0, step)
    values = np.interp(fine, r, g, left=0.0, right=0.0)
    values[fine < r[0]] = np.interp(fine[fine < r[0]], [0.0, r[0]], [0.0, g[0]])
    q = np.arange(0.0, qmin, 0.005) + 0.0025
    f = (np.sin(np.outer(q, fine)) @ values) * step
    return g - (2 / np.pi) * 0.005 * (np.sin(np.outer(r, q)) @ f)


def amorphous_pdf(r: np.ndarray, seed: int = 0, noise: float = 0.02) -> np.ndarray:
    """An amorphous-like PDF: a few broad, quickly damped shells (no long-range order), with noise."""
    rng = np.random.default_rng(seed)
    g = np.zeros_like(r)
    for centre, width, height in ((1.95, 0.12, 3.0), (3.1, 0.35, 1.2), (3.7, 0.4, 1.0), (5.6, 0.7, 0.5), (7.4, 0.9, 0.25)):
        g += height * np.exp(-0.5 * ((r - centre) / width) ** 2)
    g -= 0.35 * r * np.exp(-r / 6.0)
    return g + rng.normal(0.0, noise * np.abs(g).max(), r.size)
