"""The paper's C60 example, generated from geometry: no downloaded data.

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
