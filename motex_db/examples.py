"""Generated examples, built from geometry: no downloaded data.

The paper's C60 example comes first; a time-resolved series of two motifs of
one tungsten-oxide particle follows (:func:`two_motif_series`).

ML-MotEx's first example (Anker et al., npj Comput. Mater. 8, 213 (2022))
hides a buckyball in a larger carbon starting model and fits a PDF simulated
from the buckyball alone; the 60 buckyball atoms should come out with the most
negative contributions. This module builds all three pieces:

- :func:`c60_positions`: a C60 cage with its two real bond lengths;
- :func:`c60_starting_model`: the cage (atoms 0..59) plus distractor carbons
  grown outward from its surface;
- :func:`c60_measured_pdf` and :func:`c60_dataset_header`: the "measured" PDF
  of the cage alone, with realistic instrument settings and noise, and the
  header to store with it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from motex_db.errors import InputError
from motex_db.pdf import PDFParameters, cluster_pdf

__all__ = [
    "C60_ATOM_COUNT",
    "C60_SINGLE_BOND",
    "C60_DOUBLE_BOND",
    "C60_QMIN",
    "C60_QMAX",
    "C60_QDAMP",
    "C60_BISO",
    "C60_NOISE",
    "c60_positions",
    "c60_starting_model",
    "c60_measured_pdf",
    "c60_dataset_header",
    "TwoMotifSeries",
    "two_motif_series",
    "write_two_motif_series",
    "KEGGIN_UNIT_DISTANCE",
    "keggin_copies",
    "keggin_units",
    "LargeCase",
    "large_c60_case",
    "write_large_case",
]

C60_ATOM_COUNT = 60
# Bond lengths of C60 in Å (gas-phase electron diffraction, Hedberg et al.,
# Science 254, 410 (1991): 1.401 and 1.458 Å): the 6:6 bond shared by two
# hexagons is double, the 6:5 bond of a pentagon is single.
C60_DOUBLE_BOND = 1.40
C60_SINGLE_BOND = 1.45

# The simulated measurement: an X-ray synchrotron PDF of the kind ML-MotEx's
# paper simulated. Qmin and Qmax in Å^-1, qdamp in Å^-1, Biso in Å^2, noise as
# the standard deviation of Gaussian noise relative to max |G|.
C60_QMIN = 0.7
C60_QMAX = 24.0
C60_QDAMP = 0.035
C60_BISO = 0.4
C60_NOISE = 0.015

# Distractor carbons: distance to the atom they grow from (Å), closest
# allowed approach to any other atom (Å), the bonding range used to count
# neighbours (Å), and the most neighbours a carbon may have.
_DISTRACTOR_BOND = (1.38, 1.55)
_DISTRACTOR_MIN_DISTANCE = 1.35
_BONDED = 1.6
_MAX_NEIGHBOURS = 4
_MAX_TRIES_PER_ATOM = 10_000


def c60_positions() -> np.ndarray:
    """The 60 atoms of a C60 buckyball, centred at the origin; (60, 3) in Å.

    A truncated icosahedron: each of the 30 edges of an icosahedron (vertices
    the cyclic permutations of (0, ±1, ±φ)) is cut at a fraction t from both
    ends, giving one atom per edge end. Pentagon edges (6:5 bonds) then have
    length t·a and the remaining middle of each icosahedron edge (6:6 bonds)
    (1 − 2t)·a, for icosahedron edge a; t = 1/3 would make them equal, and
    solving t·a = 1.45 Å, (1 − 2t)·a = 1.40 Å gives the real cage (radius
    about 3.55 Å).
    """
    vertices = _icosahedron_vertices()
    edge = 2.0  # of the (0, ±1, ±φ) icosahedron
    ratio = C60_SINGLE_BOND / C60_DOUBLE_BOND
    t = ratio / (1.0 + 2.0 * ratio)
    scale = C60_SINGLE_BOND / (t * edge)
    distances = np.linalg.norm(vertices[:, None] - vertices[None], axis=2)
    ends = [(i, j) for i in range(12) for j in range(12) if i != j and np.isclose(distances[i, j], edge)]
    return np.array([vertices[i] + t * (vertices[j] - vertices[i]) for i, j in ends]) * scale


def _icosahedron_vertices() -> np.ndarray:
    phi = (1.0 + np.sqrt(5.0)) / 2.0
    base = [np.array([0.0, s1, s2 * phi]) for s1 in (-1.0, 1.0) for s2 in (-1.0, 1.0)]
    return np.array([np.roll(v, shift) for v in base for shift in range(3)])


def c60_starting_model(n_distractors: int = 70, seed: int = 0) -> Atoms:
    """A carbon cluster hiding a buckyball: atoms 0..59 are the C60 cage.

    ``n_distractors`` more carbons (atoms 60 onwards) are grown outward from
    the cage's surface one by one: each sits 1.38-1.55 Å from an existing atom
    with fewer than four neighbours, outside the cage, no closer than 1.35 Å
    to any atom, and with at most four neighbours within 1.6 Å, so the whole
    is a plausible larger carbon cluster. Deterministic for a given ``seed``.
    Positions in Å, no cell, not periodic.
    """
    if n_distractors < 0:
        raise InputError(f"The number of distractor atoms must be zero or more, not {n_distractors}.")
    rng = np.random.default_rng(seed)
    positions = c60_positions()
    cage_radius = float(np.linalg.norm(positions, axis=1).max())
    for _ in range(n_distractors):
        positions = np.vstack([positions, _grow_one(positions, cage_radius, rng)])
    return Atoms("C" * len(positions), positions=positions, pbc=False)


def _grow_one(positions: np.ndarray, cage_radius: float, rng: np.random.Generator) -> np.ndarray:
    """One new distractor position bonded to the existing cluster."""
    neighbours = _neighbour_counts(positions)
    parents = np.flatnonzero(neighbours < _MAX_NEIGHBOURS)
    for _ in range(_MAX_TRIES_PER_ATOM):
        parent = positions[rng.choice(parents)]
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        candidate = parent + rng.uniform(*_DISTRACTOR_BOND) * direction
        # Staying well outside the cage keeps the buckyball itself intact.
        if np.linalg.norm(candidate) < cage_radius + 1.0:
            continue
        distances = np.linalg.norm(positions - candidate, axis=1)
        if distances.min() < _DISTRACTOR_MIN_DISTANCE:
            continue
        bonded = distances <= _BONDED
        if bonded.sum() <= _MAX_NEIGHBOURS - 1 and np.all(neighbours[bonded] < _MAX_NEIGHBOURS):
            return candidate
    raise InputError("Could not place another distractor atom; ask for fewer distractors.")


def _neighbour_counts(positions: np.ndarray) -> np.ndarray:
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=2)
    return (distances <= _BONDED).sum(axis=1) - 1


def c60_measured_pdf(
    r_angstrom: np.ndarray,
    seed: int = 0,
    qmin: float = C60_QMIN,
    qmax: float = C60_QMAX,
    qdamp: float = C60_QDAMP,
    biso: float = C60_BISO,
    noise: float = C60_NOISE,
) -> np.ndarray:
    """A "measured" X-ray PDF G(r) (Å^-2) of the C60 cage alone, on ``r_angstrom``.

    Simulated with the engine's real-space calculator (qmin, qmax and qdamp
    in Å^-1, the same Biso in Å^2 for every atom, no qbroad or delta2), plus
    Gaussian noise with standard deviation ``noise`` × max |G|, drawn from
    ``numpy.random.default_rng(seed)``.
    """
    r = np.asarray(r_angstrom, dtype=float)
    params = PDFParameters(
        calculator="real",
        radiation="xray",
        qmin=qmin,
        qmax=qmax,
        qdamp=qdamp,
        qbroad=0.0,
        delta2=0.0,
        biso={"*": biso},
        zoom=1.0,
    )
    g = cluster_pdf(["C"] * C60_ATOM_COUNT, c60_positions(), r, params)
    rng = np.random.default_rng(seed)
    return g + rng.normal(scale=noise * np.abs(g).max(), size=g.shape)


def c60_dataset_header(
    seed: int = 0,
    qmin: float = C60_QMIN,
    qmax: float = C60_QMAX,
    qdamp: float = C60_QDAMP,
    biso: float = C60_BISO,
    noise: float = C60_NOISE,
) -> dict:
    """The metadata of :func:`c60_measured_pdf` with the same arguments.

    Shaped like a measured file's header (qmin, qmax, qdamp, composition...)
    so the simulated data can be stored and fitted like real data.
    """
    return {
        "qmin": qmin,
        "qmax": qmax,
        "qdamp": qdamp,
        "qbroad": 0.0,
        "radiation": "xray",
        "composition": "C60",
        "biso": biso,
        "noise": noise,
        "seed": seed,
        "simulated": True,
        "note": (
            "Simulated with motex_db.examples.c60_measured_pdf: the real-space PDF of a C60 "
            "buckyball alone plus Gaussian noise (standard deviation noise x max |G|)."
        ),
    }


# ---------------------------------------------------------------- an in situ series of two motifs

# A ReO3-type tungsten oxide particle: W on a 3 x 3 x 3 cubic grid (a in Å),
# one bridging O between each pair of neighbouring W (W-O = a / 2).
WO3_LATTICE = 3.75
WO3_BOND_CUTOFF = 2.6  # Å: W-O bonds of the catalogue (O-O is a / sqrt(2) = 2.65 Å)
SERIES_QMIN, SERIES_QMAX, SERIES_QDAMP = 0.7, 20.0, 0.04
SERIES_BISO = {"W": 0.3, "O": 0.8}
SERIES_NOISE = 0.01


@dataclass(frozen=True)
class TwoMotifSeries:
    """Frames mixing two motifs of one starting model, with the truth kept alongside.

    - ``elements``/``positions``: the starting model (27 W then 54 O, Å);
    - ``motif_a``/``motif_b``: (27,) bool over the W atoms (the permutable atoms,
      file order): A is the 2 x 2 x 2 cube of W at one corner (8 W), B the 3 x 3
      layer of W on the opposite face (9 W); they share no atom;
    - ``r`` (Å), ``g`` (n_frames, n_points) in Å^-2, ``times`` (s);
    - ``fraction_a``: the share of motif A in each frame (B has the rest).
    """

    elements: list
    positions: np.ndarray
    motif_a: np.ndarray
    motif_b: np.ndarray
    r: np.ndarray
    g: np.ndarray
    times: np.ndarray
    fraction_a: np.ndarray
    header: dict


def _wo3_grid() -> tuple[list[str], np.ndarray, np.ndarray]:
    """27 W on a 3 x 3 x 3 grid, the 54 O bridging neighbours; the W grid indices (27, 3)."""
    index = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    metal = index * WO3_LATTICE
    oxygen = [
        (metal[i] + metal[j]) / 2
        for i in range(len(metal))
        for j in range(i + 1, len(metal))
        if np.abs(index[i] - index[j]).sum() == 1
    ]
    positions = np.concatenate([metal, np.array(oxygen)])
    return ["W"] * len(metal) + ["O"] * len(oxygen), positions, index


def _motif_atoms(positions: np.ndarray, n_metal: int, kept_metal: np.ndarray) -> np.ndarray:
    """Atoms of a motif as the catalogue defines it: the kept W and every O bonded to one of them."""
    keep = np.zeros(len(positions), dtype=bool)
    keep[:n_metal] = kept_metal
    distance = np.linalg.norm(positions[n_metal:, None] - positions[None, :n_metal][:, kept_metal], axis=-1)
    keep[n_metal:] = (distance < WO3_BOND_CUTOFF).any(axis=1)
    return keep


def two_motif_series(
    n_frames: int = 20,
    seed: int = 0,
    noise: float = SERIES_NOISE,
    r_step: float = 0.01,
    r_max: float = 12.0,
    interval: float = 30.0,
) -> TwoMotifSeries:
    """An in situ series in which motif A grows at the expense of motif B.

    Frame i (time ``i * interval`` s) is f_i G_A + (1 - f_i) G_B plus Gaussian
    noise of standard deviation ``noise`` x max |G|, with f_i rising along a
    logistic curve from about 0.05 to 0.95 (half way at the middle frame) and
    G_A, G_B the real-space X-ray PDFs of the two motifs (Qmin 0.7, Qmax 20,
    qdamp 0.04 Å^-1; Biso W 0.3, O 0.8 Å^2) on r from 1 Å to ``r_max``.
    """
    if n_frames < 2:
        raise InputError(f"a series needs at least 2 frames, not {n_frames}.")
    elements, positions, index = _wo3_grid()
    n_metal = len(index)
    motif_a = np.all(index <= 1, axis=1)
    motif_b = index[:, 2] == 2
    r = 1.0 + r_step * np.arange(int(round((r_max - 1.0) / r_step)) + 1)
    params = PDFParameters(
        calculator="real", radiation="xray", qmin=SERIES_QMIN, qmax=SERIES_QMAX, qdamp=SERIES_QDAMP,
        qbroad=0.0, delta2=0.0, biso=dict(SERIES_BISO), zoom=1.0,
    )
    curves = []
    for kept in (motif_a, motif_b):
        atoms = _motif_atoms(positions, n_metal, kept)
        curves.append(cluster_pdf([e for e, k in zip(elements, atoms) if k], positions[atoms], r, params))
    g_a, g_b = curves
    times = interval * np.arange(n_frames, dtype=float)
    middle = times[-1] / 2
    fraction_a = 0.05 + 0.9 / (1.0 + np.exp(-(times - middle) / max(times[-1] / 10, 1e-9)))
    rng = np.random.default_rng(seed)
    g = fraction_a[:, None] * g_a + (1.0 - fraction_a[:, None]) * g_b
    g = g + rng.normal(size=g.shape) * noise * np.abs(g).max(axis=1, keepdims=True)
    header = {
        "qmin": SERIES_QMIN, "qmax": SERIES_QMAX, "qdamp": SERIES_QDAMP, "qbroad": 0.0, "radiation": "xray",
        "composition": "WO3", "noise": noise, "seed": seed, "simulated": True,
        "note": "Simulated with motex_db.examples.two_motif_series: a mixture of two motifs of a WO3 particle.",
    }
    return TwoMotifSeries(elements, positions, motif_a, motif_b, r, g, times, fraction_a, header)


def write_two_motif_series(folder: str | Path, series: TwoMotifSeries) -> tuple[Path, list[Path], Path]:
    """Write the starting model (.xyz), one .gr file per frame and a times file (file,time); returns their paths."""
    import ase.io

    from motex_db.datasets import write_gr

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "wo3_particle.xyz"
    ase.io.write(str(model), Atoms(series.elements, positions=series.positions), format="xyz")
    frames = []
    for i, (g, t, f) in enumerate(zip(series.g, series.times, series.fraction_a)):
        header = {**series.header, "time": t, "fraction_a": round(float(f), 6)}
        frames.append(write_gr(folder / f"frame_{i:04d}.gr", series.r, g, header, f"frame {i} of a two-motif series"))
    times = folder / "times.csv"
    with times.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "time"])
        writer.writerows((path.name, t) for path, t in zip(frames, series.times))
    return model, frames, times


# ---------------------------------------------------------------- Keggin-bearing models with known answers

#: W-W distances within one Keggin unit are shorter than this (Å): 3.37-3.68 Å
#: in 109725.xyz, and the next W of another unit is farther.
KEGGIN_UNIT_DISTANCE = 3.9
# Closest approach (Å) of two atoms of different copies, or of an extra W to any atom.
_COPY_CLEARANCE = 2.5
_COPY_DIRECTION = np.array([1.0, 0.3, 0.2]) / np.linalg.norm([1.0, 0.3, 0.2])
_COPY_STEP = 0.25


def keggin_copies(
    elements: list[str], positions: np.ndarray, n_copies: int, n_extra: int = 0, seed: int = 0, metal: str = "W"
) -> tuple[list[str], np.ndarray]:
    """A larger Keggin-bearing starting model: ``n_copies`` copies of a model plus ``n_extra`` lone metal atoms.

    Each copy is the model shifted along a fixed direction by the smallest
    multiple of 0.25 Å that keeps every atom 2.5 Å from the earlier copies and
    every metal atom :data:`KEGGIN_UNIT_DISTANCE` from their metal atoms, so
    copies never merge into one unit. The extra metal atoms are placed at
    seeded random points of the bounding box, 2.5 Å from every atom and
    :data:`KEGGIN_UNIT_DISTANCE` from every metal atom. File order: the copies
    in turn, then the extra atoms. Positions in Å.
    """
    from scipy.spatial.distance import cdist

    elements = [str(e) for e in elements]
    positions = np.asarray(positions, dtype=float)
    if n_copies < 1 or n_extra < 0:
        raise InputError(f"need at least one copy and no negative extra atoms, not {n_copies} and {n_extra}.")
    is_metal = np.array([e == metal for e in elements])
    all_positions, all_metal = [positions], [is_metal]
    for _ in range(1, n_copies):
        placed, placed_metal = np.concatenate(all_positions), np.concatenate(all_metal)
        shift = 0.0
        while True:
            moved = positions + _COPY_DIRECTION * shift
            distances = cdist(moved, placed)
            if distances.min() >= _COPY_CLEARANCE and distances[np.ix_(is_metal, placed_metal)].min() >= KEGGIN_UNIT_DISTANCE:
                break
            shift += _COPY_STEP
        all_positions.append(moved)
        all_metal.append(is_metal)
    out_positions = np.concatenate(all_positions)
    out_elements = elements * n_copies
    rng = np.random.default_rng(seed)
    low, high = out_positions.min(axis=0), out_positions.max(axis=0)
    metal_positions = out_positions[np.concatenate(all_metal)]
    extra: list[np.ndarray] = []
    tries = 0
    while len(extra) < n_extra:
        tries += 1
        if tries > _MAX_TRIES_PER_ATOM * max(n_extra, 1):
            raise InputError(f"could not place {n_extra} extra {metal} atoms with the required clearances.")
        point = low + (high - low) * rng.random(3)
        others = np.concatenate([metal_positions, np.array(extra).reshape(-1, 3)])
        if (np.linalg.norm(out_positions - point, axis=1).min() >= _COPY_CLEARANCE
                and np.linalg.norm(others - point, axis=1).min() >= KEGGIN_UNIT_DISTANCE):
            extra.append(point)
    if extra:
        out_positions = np.concatenate([out_positions, np.array(extra)])
        out_elements = out_elements + [metal] * n_extra
    return out_elements, out_positions


def keggin_units(elements: list[str], positions: np.ndarray, metal: str = "W") -> list[np.ndarray]:
    """The complete Keggin units of a model, known by geometry: groups of 12 metal atoms linked by
    distances under :data:`KEGGIN_UNIT_DISTANCE`. Each unit as 1-based indices among the metal atoms."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import cdist

    metal_positions = np.asarray(positions, dtype=float)[[str(e) == metal for e in elements]]
    distances = cdist(metal_positions, metal_positions)
    _, labels = connected_components(csr_matrix((distances < KEGGIN_UNIT_DISTANCE) & (distances > 0)))
    groups = [np.flatnonzero(labels == label) + 1 for label in np.unique(labels)]
    return [g for g in groups if len(g) == 12]


# ---------------------------------------------------------------- a starting model of hundreds of atoms

LARGE_SHELL = 300
# Every atom of the large case is displaced by this much (Å, standard deviation
# per coordinate), so that no pair distance repeats, the cage's included.
LARGE_JITTER = 0.02


@dataclass(frozen=True)
class LargeCase:
    """A C60 hidden in an amorphous carbon shell, and the cage's "measured" PDF.

    - ``elements``/``positions`` (Å): the starting model, every atom carbon and
      permutable; atoms 0..59 are the cage (``motif`` marks them);
    - ``r`` (Å), ``g`` (Å^-2): the cage's X-ray PDF plus noise; ``header``: its metadata.
    """

    elements: list
    positions: np.ndarray
    motif: np.ndarray
    r: np.ndarray
    g: np.ndarray
    header: dict


def large_c60_case(
    n_shell: int = LARGE_SHELL,
    seed: int = 0,
    jitter: float = LARGE_JITTER,
    noise: float = C60_NOISE,
    r_step: float = 0.01,
    r_max: float = 20.0,
) -> LargeCase:
    """A starting model of 60 + ``n_shell`` carbons without symmetry, hiding a C60, and the C60's PDF.

    The shell grows outward from the cage as in :func:`c60_starting_model`
    (each carbon bonded to one before it, outside the cage, no closer than
    1.35 Å to any other); then every atom, cage included, moves by a Gaussian
    of ``jitter`` Å per coordinate, so no two pair distances are equal (the
    case every pair makes its own class). The data are the displaced cage's
    real-space X-ray PDF (the C60 example's Q window, qdamp and Biso) on r
    from 0.5 Å to ``r_max`` plus Gaussian noise of ``noise`` x max |G|.
    Deterministic for a given ``seed``; nothing is downloaded.
    """
    if n_shell < 0:
        raise InputError(f"The shell needs zero or more atoms, not {n_shell}.")
    if not (jitter >= 0 and np.isfinite(jitter)):
        raise InputError(f"The displacement must be zero or more Å, not {jitter}.")
    model = c60_starting_model(n_shell, seed=seed)
    rng = np.random.default_rng([seed, 1])
    positions = model.get_positions() + rng.normal(scale=jitter, size=(len(model), 3))
    r = 0.5 + r_step * np.arange(int(round((r_max - 0.5) / r_step)) + 1)
    params = PDFParameters(
        calculator="real", radiation="xray", qmin=C60_QMIN, qmax=C60_QMAX, qdamp=C60_QDAMP,
        qbroad=0.0, delta2=0.0, biso={"*": C60_BISO}, zoom=1.0,
    )
    g = cluster_pdf(["C"] * C60_ATOM_COUNT, positions[:C60_ATOM_COUNT], r, params)
    g = g + rng.normal(scale=noise * np.abs(g).max(), size=g.shape)
    motif = np.zeros(len(positions), dtype=bool)
    motif[:C60_ATOM_COUNT] = True
    header = {
        **c60_dataset_header(seed=seed, noise=noise),
        "jitter": jitter,
        "n_shell": n_shell,
        "note": (
            "Simulated with motex_db.examples.large_c60_case: the real-space PDF of the C60 cage "
            f"(atoms 1-60 of a {len(positions)}-atom carbon model, every atom displaced) plus Gaussian noise."
        ),
    }
    return LargeCase(["C"] * len(positions), positions, motif, r, g, header)


def write_large_case(folder: str | Path, case: LargeCase) -> tuple[Path, Path]:
    """Write the starting model (.xyz) and the data (.gr) into ``folder``; returns their paths."""
    import ase.io

    from motex_db.datasets import write_gr

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(case.elements)
    model = folder / f"c60_in_{n}_carbons.xyz"
    ase.io.write(str(model), Atoms(case.elements, positions=case.positions), format="xyz")
    data = write_gr(folder / f"c60_in_{n}_carbons.gr", case.r, case.g, case.header, f"C60 in {n} carbons, simulated")
    return model, data
