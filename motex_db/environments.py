"""Atom environments from k-nearest-neighbour distances.

Each atom is described by the increasingly ordered distances to its k nearest
neighbours, d_1 <= ... <= d_k (the k-NN distance vector of the seed "a
predictor for atom types in crystals based on their k-NN distances"), with the
neighbours' species kept beside the distances. Atoms of one element whose
vectors agree within a tolerance, and whose neighbours are of the same
species, are one environment class: in a symmetric starting model the images
of an atom under its symmetry operations fall into one class.

Neighbours are found with scipy's cKDTree for a discrete set of atoms and with
ase's neighbour list for a periodic crystal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from motex_db.errors import InputError

DEFAULT_K = 12
DEFAULT_TOLERANCE = 0.01  # Å: far below a PDF peak width, far above float noise


@dataclass(frozen=True)
class Environments:
    """k-NN environments of every atom, in file order.

    ``distances`` (n_atoms, k) in Å, increasing along each row;
    ``neighbours`` (n_atoms, k) the neighbours' element symbols, in the order of
    the distances, with neighbours at equal distance (within the tolerance)
    ordered by symbol so that symmetric images read alike;
    ``classes`` (n_atoms,) 1-based environment class, numbered in order of
    first appearance in the file.
    """

    k: int
    tolerance: float
    distances: np.ndarray
    neighbours: np.ndarray
    classes: np.ndarray


def check_k(k: int, n_atoms: int, what: str = "the structure") -> None:
    """Refuse a k that is not a positive integer or that needs more atoms than ``what`` holds."""
    if int(k) != k or k < 1:
        raise InputError(f"--k must be a positive whole number of neighbours, not {k}.")
    if n_atoms < k + 1:
        raise InputError(
            f"{what} has {n_atoms} atoms, so an atom has at most {n_atoms - 1} neighbours: "
            f"give --k {max(n_atoms - 1, 1)} or less."
        )


def knn_distances(positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances (Å) and indices of each atom's k nearest other atoms in a discrete set of atoms."""
    from scipy.spatial import cKDTree

    positions = np.asarray(positions, dtype=float)
    check_k(k, len(positions))
    distances, indices = cKDTree(positions).query(positions, k=k + 1)
    # column 0 is the atom itself (distance 0); duplicates at one position would also be 0, and stay
    return distances[:, 1:], indices[:, 1:]


def periodic_knn_distances(cell: np.ndarray, scaled_positions: np.ndarray, k: int) -> np.ndarray:
    """Distances (Å) from each atom of a crystal's unit cell to its k nearest neighbours, images included."""
    import ase
    from ase.neighborlist import neighbor_list

    if int(k) != k or k < 1:
        raise InputError(f"--k must be a positive whole number of neighbours, not {k}.")
    cell = np.asarray(cell, dtype=float)
    atoms = ase.Atoms(numbers=np.ones(len(scaled_positions), dtype=int), cell=cell,
                      scaled_positions=np.asarray(scaled_positions, dtype=float), pbc=True)
    # start from the radius that holds k neighbours at the mean density, grow until every atom has k
    cutoff = 1.3 * (3.0 * (k + 1) * abs(np.linalg.det(cell)) / (4.0 * np.pi * len(atoms))) ** (1.0 / 3.0)
    while True:
        i, d = neighbor_list("id", atoms, cutoff, self_interaction=False)
        if np.bincount(i, minlength=len(atoms)).min() >= k:
            break
        cutoff *= 1.3
    order = np.lexsort((d, i))
    i, d = i[order], d[order]
    starts = np.searchsorted(i, np.arange(len(atoms)))
    return d[starts[:, None] + np.arange(k)[None, :]]


def inner_atoms(positions: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Whether each atom's k-NN sphere lies inside the model's bounding sphere (about its centroid).

    Such an atom of a model cut from a crystal has every neighbour the crystal
    would give it within that reach; an outer atom misses some.
    """
    positions = np.asarray(positions, dtype=float)
    offset = np.linalg.norm(positions - positions.mean(axis=0), axis=1)
    return offset + np.asarray(distances)[:, -1] <= offset.max() + 1e-9


def _tie_sorted_species(distances: np.ndarray, species: np.ndarray, tolerance: float) -> np.ndarray:
    """Species along each row, sorted by symbol within runs of distances equal to within ``tolerance``."""
    out = species.copy()
    for row in range(distances.shape[0]):
        d = distances[row]
        breaks = np.flatnonzero(np.diff(d) > tolerance) + 1
        for run in np.split(np.arange(d.size), breaks):
            if run.size > 1:
                out[row, run] = np.sort(species[row, run])
    return out


def environment_classes(
    elements: Sequence[str], distances: np.ndarray, neighbours: np.ndarray, tolerance: float = DEFAULT_TOLERANCE
) -> np.ndarray:
    """1-based class of each atom: same element, same neighbour species, distances equal within ``tolerance``.

    Each atom joins the first class (in file order) whose founding atom it
    matches, else founds a new one; deterministic for a given file.
    """
    if tolerance < 0:
        raise InputError(f"--tolerance must not be negative, not {tolerance}.")
    elements = np.asarray(elements)
    distances = np.asarray(distances, dtype=float)
    # element and neighbour species as one key per atom, so that a comparison is one array operation
    keys = np.array(["|".join([str(e), *map(str, row)]) for e, row in zip(elements, neighbours)])
    classes = np.zeros(len(elements), dtype=np.int64)
    founders: list[int] = []
    for atom in range(len(elements)):
        if founders:
            f = np.asarray(founders)
            match = (keys[f] == keys[atom]) & (np.abs(distances[f] - distances[atom]).max(axis=1) <= tolerance)
            if match.any():
                classes[atom] = int(np.argmax(match)) + 1
                continue
        founders.append(atom)
        classes[atom] = len(founders)
    return classes


def atom_environments(
    elements: Sequence[str], positions: np.ndarray, k: int = DEFAULT_K, tolerance: float = DEFAULT_TOLERANCE
) -> Environments:
    """The k-NN environments and classes of a discrete set of atoms (see the module docstring)."""
    distances, indices = knn_distances(positions, k)
    species = _tie_sorted_species(distances, np.asarray(elements, dtype=object)[indices], tolerance)
    return Environments(
        k=int(k), tolerance=float(tolerance), distances=distances, neighbours=species.astype(str),
        classes=environment_classes(elements, distances, species, tolerance),
    )


def default_k(n_atoms: int) -> int:
    """The k stored when a structure is added: DEFAULT_K, or fewer for a structure of few atoms."""
    return max(1, min(DEFAULT_K, n_atoms - 1))


def class_summary(
    elements: Sequence[str], environments: Environments, members: Optional[np.ndarray] = None
) -> list[dict]:
    """One dict per class among the atoms ``members`` (0-based indices; all atoms by default).

    Keys: ``class``, ``element``, ``atoms`` (0-based indices), ``distances`` (the
    founding atom's vector, Å), ``neighbours`` (its neighbours' species) and
    ``spread`` (the largest deviation of a member's vector from the founder's, Å).
    """
    members = np.arange(len(elements)) if members is None else np.asarray(members)
    summary = []
    for number in dict.fromkeys(environments.classes[members].tolist()):
        atoms = members[environments.classes[members] == number]
        founder = int(np.flatnonzero(environments.classes == number)[0])
        summary.append({
            "class": int(number),
            "element": str(elements[founder]),
            "atoms": atoms.tolist(),
            "distances": environments.distances[founder].tolist(),
            "neighbours": environments.neighbours[founder].tolist(),
            "spread": float(np.max(np.abs(environments.distances[atoms] - environments.distances[founder]))),
        })
    return summary


def contributions_by_class(classes: np.ndarray, contributions: np.ndarray) -> list[dict]:
    """Mean contribution per environment class with its spread (standard deviation) and member count.

    ``classes`` and ``contributions`` are aligned per permutable atom.
    """
    classes = np.asarray(classes)
    contributions = np.asarray(contributions, dtype=float)
    rows = []
    for number in dict.fromkeys(classes.tolist()):
        values = contributions[classes == number]
        rows.append({"class": int(number), "n_atoms": int(values.size), "mean": float(values.mean()),
                     "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                     "min": float(values.min()), "max": float(values.max())})
    return rows


# --------------------------------------------------------------------------
# In the record: one atom_environment row per atom of a starting model.


def environment_rows(model, environments: Environments) -> list:
    """``atom_environment`` rows of a starting model (not yet added to a session)."""
    from motex_db.models import AtomEnvironment

    permutable = np.isin(np.asarray(model.elements), list(model.permutable_elements))
    permutable_index = np.cumsum(permutable)
    return [
        AtomEnvironment(
            starting_model_id=model.id, atom_number=atom + 1,
            permutable_index=int(permutable_index[atom]) if permutable[atom] else None,
            element=str(model.elements[atom]), k=environments.k, tolerance=environments.tolerance,
            distances=environments.distances[atom], neighbours=environments.neighbours[atom].tolist(),
            environment_class=int(environments.classes[atom]),
        )
        for atom in range(len(model.elements))
    ]


def stored_environments(session, model) -> Optional[Environments]:
    """The environments stored with a starting model, or None (a model added before they were stored)."""
    from sqlmodel import select

    from motex_db.models import AtomEnvironment

    rows = session.exec(
        select(AtomEnvironment).where(AtomEnvironment.starting_model_id == model.id)
        .order_by(AtomEnvironment.atom_number)
    ).all()
    if len(rows) != len(model.elements):
        return None
    return Environments(
        k=rows[0].k, tolerance=rows[0].tolerance, distances=np.stack([r.distances for r in rows]),
        neighbours=np.array([r.neighbours for r in rows], dtype=str),
        classes=np.array([r.environment_class for r in rows], dtype=np.int64),
    )


def model_environments(engine, name: str, k: Optional[int] = None, tolerance: Optional[float] = None):
    """(starting model, environments) of the structure ``name``.

    The stored environments when ``k`` and ``tolerance`` are not given or equal
    the stored ones; computed for the asked values otherwise. A model added
    before environments were stored gets them computed and stored now.
    """
    from sqlmodel import Session

    from motex_db.db import transaction
    from motex_db.structures import get_starting_model

    with Session(engine) as session:
        model = get_starting_model(session, name)
        stored = stored_environments(session, model)
    if k is not None:
        check_k(k, model.n_atoms, f"structure '{name}'")
    if tolerance is not None and tolerance < 0:
        raise InputError(f"--tolerance must not be negative, not {tolerance}.")
    wanted_k = k if k is not None else (stored.k if stored else default_k(model.n_atoms))
    wanted_tolerance = tolerance if tolerance is not None else (stored.tolerance if stored else DEFAULT_TOLERANCE)
    if stored is not None and (stored.k, stored.tolerance) == (wanted_k, wanted_tolerance):
        return model, stored
    environments = atom_environments(model.elements, model.positions, wanted_k, wanted_tolerance)
    if stored is None and (wanted_k, wanted_tolerance) == (default_k(model.n_atoms), DEFAULT_TOLERANCE):
        from sqlalchemy.exc import IntegrityError

        try:
            with transaction(engine) as session:
                session.add_all(environment_rows(model, environments))
        except IntegrityError:
            pass  # another process stored the same rows first
    return model, environments


# --------------------------------------------------------------------------
# Isometry signatures: motifs that are images of each other have equal PDFs.

SIGNATURE_DECIMALS = 4  # distances rounded to 1e-4 Å, far below any PDF peak width


def pair_classes(elements: Sequence[str], positions: np.ndarray, decimals: int = SIGNATURE_DECIMALS):
    """Every atom pair i < j and its class: same two species, same distance rounded to ``decimals`` Å.

    Returns (i, j, class index per pair, number of classes).
    """
    positions = np.asarray(positions, dtype=float)
    i, j = np.triu_indices(len(positions), k=1)
    distance = np.round(np.linalg.norm(positions[i] - positions[j], axis=1), decimals)
    species, code = np.unique(np.asarray(elements), return_inverse=True)
    low, high = np.minimum(code[i], code[j]), np.maximum(code[i], code[j])
    keys = np.stack([low, high, np.round(distance * 10**decimals).astype(np.int64)], axis=1)
    _, classes = np.unique(keys, axis=0, return_inverse=True)
    return i, j, classes.ravel(), int(classes.max()) + 1 if classes.size else 0


def motif_signatures(
    masks: np.ndarray, membership: np.ndarray, elements: Sequence[str], positions: np.ndarray,
    decimals: int = SIGNATURE_DECIMALS,
) -> list[str]:
    """An isometry-invariant signature per motif: a hash of its species counts and its pair-class counts.

    Two motifs with equal signatures hold the same multiset of species-resolved
    pair distances (to ``decimals`` Å), so their computed PDFs are equal and so
    are their fits. ``masks`` (n_motifs, N) bool; ``membership`` (n_atoms, N)
    from :func:`motex_db.catalogue.membership_matrix`.
    """
    import hashlib

    from scipy import sparse

    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    membership = np.asarray(membership, dtype=bool)
    i, j, classes, n_classes = pair_classes(elements, positions, decimals)
    one_hot = sparse.csr_matrix((np.ones(classes.size, dtype=np.float32), (np.arange(classes.size), classes)),
                                shape=(classes.size, max(n_classes, 1)))
    _, species = np.unique(np.asarray(elements), return_inverse=True)
    species_hot = np.eye(species.max() + 1, dtype=np.float32)[species]
    signatures: list[str] = []
    # chunks bound the (motifs x pairs) presence matrix to ~64 MB
    chunk = max(1, 16_000_000 // max(classes.size, 1))
    for start in range(0, len(masks), chunk):
        present = (masks[start:start + chunk].astype(np.float32) @ membership.T.astype(np.float32)) > 0.5
        pairs = (present[:, i] & present[:, j]).astype(np.float32)
        counts = np.rint(np.asarray(one_hot.T @ pairs.T).T).astype(np.int64)
        atoms = np.rint(present.astype(np.float32) @ species_hot).astype(np.int64)
        for row_atoms, row_counts in zip(atoms, counts):
            digest = hashlib.sha256(row_atoms.tobytes() + b"|" + row_counts.tobytes())
            signatures.append(digest.hexdigest()[:32])
    return signatures


def contributions_per_environment(engine, structure: str, atom_index: Sequence[int], contributions: Sequence[float]) -> list[dict]:
    """The contributions of a structure's permutable atoms, grouped by their environment class.

    ``atom_index`` 1-based among the permutable atoms (as in ``atom_contribution``).
    One dict per class (see :func:`contributions_by_class`), plus its ``element``
    and ``atoms`` (1-based permutable indices), ordered by mean contribution.
    """
    model, environments = model_environments(engine, structure)
    permutable = np.flatnonzero(np.isin(np.asarray(model.elements), list(model.permutable_elements)))
    classes = environments.classes[permutable][np.asarray(atom_index, dtype=int) - 1]
    rows = contributions_by_class(classes, np.asarray(contributions, dtype=float))
    for row in rows:
        members = np.asarray(atom_index)[classes == row["class"]]
        row["atoms"] = sorted(int(a) for a in members)
        row["element"] = str(model.elements[permutable[row["atoms"][0] - 1]])
    return sorted(rows, key=lambda row: row["mean"])
