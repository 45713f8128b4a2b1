"""Generated crystal structures for structure mining: a small library of common oxide types, and "measured" PDFs.

Eight structure types (rocksalt, fluorite, spinel, inverse spinel,
perovskite, rutile, wurtzite, corundum), each with six compositions at
literature lattice parameters (rounded), written as CIF files with
``ase.spacegroup.crystal``; no downloaded data. :func:`nanoparticle_pdf`
simulates what a measurement of a small particle of one of them gives: a
sphere cut from the crystal, computed as a discrete cluster with the
real-space calculator (:func:`motex_db.pdf.cluster_pdf`, an engine independent
of the crystal one used for the library), plus the particle's number-density
baseline -4 pi rho0 r gamma0(r), and noise.

Spinels (Fd-3m, No. 227) are built in origin choice 2 (``setting=2``, origin
at the centre -3m), where the tetrahedral site 8a is (1/8, 1/8, 1/8), the
octahedral site 16d is (1/2, 1/2, 1/2) and oxygen 32e is (u, u, u) with
u = 0.2625 (normal) or 0.257 (inverse). These are origin-2 coordinates: with
``setting=1`` they would put 16 cations on 8a-like and 8 on 16d-like
positions at the right formula but the wrong structure
(``tests/test_mining.py`` checks the 4- and 6-fold coordination). A normal
spinel AB2O4 has A on 8a and B on 16d; an inverse one has B on 8a and a
random half-and-half mixture of A and B on 16d (a partially occupied site in
the CIF).

:func:`mining_catalogue` and :func:`mining_targets` are the test catalogue of
structure mining: two compositions per type, and "measured" particles of
other compositions of six of the types whose lattices are 2-5 % off every
catalogue entry of their type, 2-4 nm in diameter.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["STRUCTURE_TYPES", "MINING_CATALOGUE", "MINING_TARGETS", "example_crystals", "write_example_cifs",
           "variant_crystals", "mining_catalogue", "mining_targets", "nanoparticle_pdf", "amorphous_pdf"]

# type -> (spacegroup, setting, basis builder(cations), [(cations, cellpar)]); the builder returns
# (symbols, positions) or (symbols, positions, occupancies) for a partially occupied site
STRUCTURE_TYPES: dict[str, tuple] = {
    "rocksalt": (225, 1, lambda m: ([m[0], "O"], [(0, 0, 0), (0.5, 0.5, 0.5)]), [
        (("Mg",), 4.21), (("Ni",), 4.18), (("Co",), 4.26), (("Mn",), 4.44), (("Ca",), 4.81), (("Fe",), 4.33)]),
    "fluorite": (225, 1, lambda m: ([m[0], "O"], [(0, 0, 0), (0.25, 0.25, 0.25)]), [
        (("Ce",), 5.41), (("Zr",), 5.07), (("Th",), 5.60), (("U",), 5.47), (("Hf",), 5.08), (("Pr",), 5.39)]),
    "spinel": (227, 2, lambda m: ([m[0], m[1], "O"], [(0.125, 0.125, 0.125), (0.5, 0.5, 0.5), (0.2625, 0.2625, 0.2625)]), [
        (("Mg", "Al"), 8.08), (("Co", "Fe"), 8.39), (("Ni", "Fe"), 8.34), (("Zn", "Fe"), 8.44), (("Mn", "Fe"), 8.51),
        (("Zn", "Cr"), 8.33)]),
    "inverse_spinel": (227, 2, lambda m: (
        [m[1], m[0], m[1], "O"], [(0.125, 0.125, 0.125), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (0.257, 0.257, 0.257)],
        [1.0, 0.5, 0.5, 1.0]), [
        (("Ti", "Mg"), 8.44), (("Ti", "Co"), 8.46), (("Sn", "Zn"), 8.66), (("Sn", "Mg"), 8.60), (("Ni", "Fe"), 8.34),
        (("Mg", "Fe"), 8.38)]),
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
    return {"rocksalt": "{0}O", "fluorite": "{0}O2", "spinel": "{0}{1}2O4", "inverse_spinel": "{0}{1}2O4",
            "perovskite": "{0}{1}O3",
            "rutile": "{0}O2", "wurtzite": "{0}O", "corundum": "{0}2O3"}[kind].format(*cations)


def _build(kind: str, cations: tuple, lengths, scale: float = 1.0):
    from ase.spacegroup import crystal

    spacegroup, setting, basis, _ = STRUCTURE_TYPES[kind]
    symbols, positions, *occupancies = basis(cations)
    cellpar = _cellpar(spacegroup, lengths)
    cellpar = [x * scale for x in cellpar[:3]] + cellpar[3:]
    with warnings.catch_warnings():
        # two species on one site are, to ase, "equivalent" positions: that is the point
        warnings.simplefilter("ignore", UserWarning)
        return crystal(symbols, positions, occupancies=occupancies[0] if occupancies else None,
                       spacegroup=spacegroup, setting=setting, cellpar=cellpar)


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


#: The structure-mining test catalogue: two compositions per type at literature lattices (Å).
MINING_CATALOGUE: list[tuple[str, tuple, object]] = [
    ("rocksalt", ("Mg",), 4.21), ("rocksalt", ("Ni",), 4.18),
    ("fluorite", ("Ce",), 5.41), ("fluorite", ("Hf",), 5.08),
    ("spinel", ("Zn", "Al"), 8.09), ("spinel", ("Zn", "Cr"), 8.33),
    ("inverse_spinel", ("Ti", "Mg"), 8.44), ("inverse_spinel", ("Ti", "Co"), 8.46),
    ("perovskite", ("Sr", "Ti"), 3.905), ("perovskite", ("Ca", "Ti"), 3.84),
    ("rutile", ("Ti",), (4.594, 2.959)), ("rutile", ("Sn",), (4.737, 3.186)),
    ("wurtzite", ("Zn",), (3.25, 5.21)), ("wurtzite", ("Be",), (2.70, 4.38)),
    ("corundum", ("Al",), (4.76, 12.99)), ("corundum", ("Fe",), (5.04, 13.75)),
]
#: Its "measured" particles: (type, cations, lattice (Å), diameter (Å)), compositions the catalogue lacks,
#: lattices 2-5 % off every catalogue entry of their type (rutile MnO2: a -4.2 %, c -3.0 % from TiO2).
#: In X-rays a spinel's type shows only through the contrast between 8a and 16d: the normal ones here
#: have the heavier cation on 8a (Zn, Cd), the inverse ones the lighter (Mg, Co, Zn against Ti, Sn).
MINING_TARGETS: list[tuple[str, tuple, object, float]] = [
    ("rocksalt", ("Fe",), 4.33, 30.0),
    ("fluorite", ("Th",), 5.60, 40.0),
    ("spinel", ("Cd", "Fe"), 8.69, 30.0),
    ("inverse_spinel", ("Sn", "Zn"), 8.66, 35.0),
    ("perovskite", ("Ba", "Ti"), 4.00, 25.0),
    ("rutile", ("Mn",), (4.40, 2.87), 20.0),
]


def mining_catalogue() -> list[tuple[str, object]]:
    """(file stem such as ``spinel_MgAl2O4``, ase Atoms) for the 16 crystals of :data:`MINING_CATALOGUE`."""
    return [(f"{kind}_{_formula(kind, cations)}", _build(kind, cations, lengths))
            for kind, cations, lengths in MINING_CATALOGUE]


def mining_targets() -> list[tuple[str, str, object, float]]:
    """(stem such as ``np_spinel_ZnFe2O4``, type, ase Atoms, diameter Å) for :data:`MINING_TARGETS`."""
    return [(f"np_{kind}_{_formula(kind, cations)}", kind, _build(kind, cations, lengths), diameter)
            for kind, cations, lengths, diameter in MINING_TARGETS]


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
    noise with standard deviation ``noise`` times max |G|. A partially
    occupied site (``atoms.info["occupancy"]``, as ``ase.spacegroup.crystal``
    leaves it) gets one species per atom of the particle, drawn at random with
    the site's fractions: a random solid solution.
    """
    from motex_db.pdf import PDFParameters, cluster_pdf
    from motex_db.pdf.crystal import sphere_envelope

    rng = np.random.default_rng(seed)
    positions, elements = _sphere(atoms, diameter / 2, rng)
    # The cluster's peaks carry a small-angle hump (Q < ~2 pi / D) that the particle's
    # baseline cancels; a Q window applied to the peaks alone would keep the baseline and
    # lose the hump. So: peaks with the whole low-Q range plus the baseline, then the Qmin cut.
    params = PDFParameters(qmin=0.0, qmax=qmax, qdamp=qdamp, biso={"*": biso})
    peaks = cluster_pdf(elements, positions, r, params)
    rho0 = len(atoms) / atoms.get_volume()
    g = peaks - 4 * np.pi * rho0 * r * sphere_envelope(r, diameter)[0]
    g = _cut_below(r, g, qmin)
    return g + rng.normal(0.0, noise * np.abs(g).max(), r.size)


def _sphere(atoms, radius: float, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Atoms within ``radius`` Å of the cell centre (from a supercell), mixed sites drawn per atom."""
    from motex_db.structures import _sphere_from_crystal

    occupancy = atoms.info.get("occupancy")
    if not occupancy or all(len(site) == 1 for site in occupancy.values()):
        return _sphere_from_crystal(atoms, radius)
    # which site each atom of the sphere sits on: the site index travels as the atoms' mass
    labelled = atoms.copy()
    kinds = np.asarray(atoms.arrays["spacegroup_kinds"])
    labelled.set_chemical_symbols(["H"] * len(atoms))
    labelled.set_masses(kinds.astype(float) + 1.0)
    cell = atoms.cell
    heights = cell.volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    repeats = 2 * np.ceil(radius / heights).astype(int) + 1
    supercell = labelled.repeat(tuple(int(n) for n in repeats))
    centre = cell.cartesian_positions([0.5, 0.5, 0.5]) + ((repeats - 1) // 2) @ cell[:]
    inside = np.linalg.norm(supercell.get_positions() - centre, axis=1) <= radius
    elements = []
    for kind in np.rint(supercell.get_masses()[inside] - 1.0).astype(int):
        site = occupancy[str(kind)]
        species, fractions = list(site), np.array([float(v) for v in site.values()])
        if fractions.sum() < 1.0 - 1e-6:  # vacancies: the rest of the site is empty
            species.append("")
            fractions = np.append(fractions, 1.0 - fractions.sum())
        elements.append(species[rng.choice(len(species), p=fractions / fractions.sum())])
    keep = np.array([e != "" for e in elements])
    return supercell.get_positions()[inside][keep], [e for e in elements if e]


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
