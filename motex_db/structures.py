"""Starting models: reading structure files and keeping them in the record.

A starting model is a discrete set of atoms. xyz and extxyz files are read as
they are; a crystal (CIF or any periodic format ``ase.io.read`` knows) gives the
atoms of one unit cell, symmetry expanded, or with ``radius`` a sphere of atoms
cut from a supercell around the cell centre (the cookie-cutter way, which keeps
the bonds a cell edge would cut). The permutable atoms are numbered 1..N in
file order everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from sqlalchemy import delete, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from motex_db.catalogue import membership_matrix, unbonded_atoms
from motex_db.db import get_named, transaction
from motex_db.environments import atom_environments, default_k, environment_rows
from motex_db.errors import InputError
from motex_db.models import (
    AtomContribution, AtomEnvironment, AtomTypeCheck, FitResult, Motif, StartingModel, TrainedModel,
)

DEFAULT_BOND_CUTOFF = 2.6


@dataclass(frozen=True)
class Structure:
    """Atoms read from a file: element symbols and Cartesian positions in Å."""

    elements: list[str]
    positions: np.ndarray
    source_file: str
    content_hash: str


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_structure(path: str | Path, radius: Optional[float] = None) -> Structure:
    """Read a structure file as a discrete set of atoms (see the module docstring)."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise InputError(f"structure file {path} does not exist.")
    if radius is not None and radius <= 0:
        raise InputError(f"--radius must be positive, not {radius}.")
    try:
        atoms = ase.io.read(str(path))
    except Exception as exc:  # ase raises many types for unreadable files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read structure file {path}: {reason}") from None
    if len(atoms) == 0:
        raise InputError(f"structure file {path} holds no atoms.")
    partial = sorted({
        ", ".join(f"{el} {float(v):g}" for el, v in sorted(site.items()))
        for site in (atoms.info.get("occupancy") or {}).values()
        if len(site) > 1 or any(float(v) < 1.0 - 1e-6 for v in site.values())
    })
    if partial:
        # ase would name each such site by its majority species only, silently dropping the others
        shown = "; ".join(partial[:3])
        raise InputError(
            f"structure file {path} has partially occupied sites ({shown}); a starting model needs one whole "
            "atom at each position: give an ordered structure."
        )
    periodic = bool(atoms.pbc.any()) and atoms.cell.rank == 3
    if radius is not None:
        if not periodic:
            raise InputError(
                f"--radius cuts a sphere from a crystal, but {path} has no unit cell."
            )
        positions, elements = _sphere_from_crystal(atoms, radius)
        if len(elements) == 0:
            raise InputError(f"a sphere of radius {radius} Å around the centre of {path} holds no atoms.")
    else:
        if periodic:
            atoms.wrap()
        positions, elements = atoms.get_positions(), atoms.get_chemical_symbols()
    return Structure(
        elements=list(elements),
        positions=np.asarray(positions, dtype=float),
        source_file=path.name,
        content_hash=file_hash(path),
    )


def _sphere_from_crystal(atoms, radius: float) -> tuple[np.ndarray, list[str]]:
    """Atoms within ``radius`` Å of the cell centre, from a supercell that holds the sphere."""
    cell = atoms.cell
    # distance between opposite faces of the cell, per axis
    heights = cell.volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    repeats = 2 * np.ceil(radius / heights).astype(int) + 1
    supercell = atoms.repeat(tuple(int(n) for n in repeats))
    centre = cell.cartesian_positions([0.5, 0.5, 0.5]) + ((repeats - 1) // 2) @ cell[:]
    inside = np.linalg.norm(supercell.get_positions() - centre, axis=1) <= radius
    symbols = np.array(supercell.get_chemical_symbols())
    return supercell.get_positions()[inside], list(symbols[inside])


def identity_hash(content_hash: str, permute: Sequence[str], bond_cutoff: float, radius: Optional[float]) -> str:
    """What makes two starting models the same: the file and every choice made on it."""
    key = json.dumps(
        [content_hash, sorted(set(permute)), round(float(bond_cutoff), 6), radius], sort_keys=True
    )
    return hashlib.sha256(key.encode()).hexdigest()


def permutable_flags(elements: Sequence[str], permute: Sequence[str]) -> np.ndarray:
    return np.isin(np.asarray(elements), list(permute))


@dataclass(frozen=True)
class StructureSummary:
    """What ``structure add`` reports: atoms per element, N, and atoms no motif can hold."""

    name: str
    id: int
    atoms_per_element: dict[str, int]
    n_permutable: int
    unbonded: list[int]  # 0-based atom indices in file order
    unbonded_elements: list[str]


def summarize(model: StartingModel) -> StructureSummary:
    flags = permutable_flags(model.elements, model.permutable_elements)
    membership = membership_matrix(model.positions, flags, model.bond_cutoff)
    unbonded = [int(i) for i in unbonded_atoms(membership, flags)]
    return StructureSummary(
        name=model.name,
        id=model.id,
        atoms_per_element=dict(Counter(model.elements)),
        n_permutable=model.n_permutable,
        unbonded=unbonded,
        unbonded_elements=[model.elements[i] for i in unbonded],
    )


def add_starting_model(
    engine: Engine,
    path: str | Path,
    name: Optional[str] = None,
    permute: Sequence[str] = (),
    bond_cutoff: float = DEFAULT_BOND_CUTOFF,
    radius: Optional[float] = None,
) -> tuple[StartingModel, bool]:
    """Add a starting model; returns (row, created). The same file and choices again give the existing row."""
    if not permute:
        raise InputError("name the permutable elements with --permute EL (for example --permute W).")
    if bond_cutoff <= 0:
        raise InputError(f"--bond-cutoff must be positive, not {bond_cutoff}.")
    structure = read_structure(path, radius)
    return _store_starting_model(engine, structure, name or Path(path).stem, permute, bond_cutoff, radius)


def add_starting_model_from_candidate(
    engine: Engine,
    candidate_id: int,
    name: str,
    permute: Sequence[str] = (),
    bond_cutoff: float = DEFAULT_BOND_CUTOFF,
    radius: Optional[float] = None,
) -> tuple[StartingModel, bool]:
    """A starting model cut from a mined candidate: a sphere of ``radius`` Å from a supercell of its crystal.

    ``candidate_id`` is a ``mining_candidate`` id. When the candidate was
    refined, its refined lattice expansion is applied to the cell first, so
    the model has the data's bond lengths. Returns (row, created) like
    :func:`add_starting_model`.
    A candidate with partially occupied sites (mixed species or vacancies) is
    refused: a starting model has one whole atom at each position.
    """
    import ase

    from motex_db.library import crystal_from_record
    from motex_db.models import LibraryStructure, MiningCandidate

    if not permute:
        raise InputError("name the permutable elements with --permute EL (for example --permute W).")
    if bond_cutoff <= 0:
        raise InputError(f"--bond-cutoff must be positive, not {bond_cutoff}.")
    if radius is None:
        raise InputError("--from-candidate cuts a sphere from the candidate's crystal: give its --radius R (Å).")
    if radius <= 0:
        raise InputError(f"--radius must be positive, not {radius}.")
    with Session(engine) as session:
        candidate = session.get(MiningCandidate, candidate_id)
        if candidate is None:
            raise InputError(
                f"there is no mined candidate with id {candidate_id} (see motex-db sql \"SELECT * FROM mined_candidate\")."
            )
        crystal = session.get(LibraryStructure, candidate.structure_id)
        lattice = float((candidate.params or {}).get("lattice") or 1.0)
        record, source = crystal.crystal, crystal.name
    symbols, cell, frac, occupancies = crystal_from_record(record)
    partial = sorted({f"{s} {o:g}" for s, o in zip(symbols, occupancies) if o < 1 - 1e-6})
    if partial:
        raise InputError(
            f"candidate {candidate_id} ({source}) has partially occupied sites ({', '.join(partial)}), and a "
            "starting model needs one whole atom at each position: cut it from an ordered CIF with structure add FILE --radius R."
        )
    atoms = ase.Atoms(symbols=symbols, scaled_positions=frac, cell=cell * lattice, pbc=True)
    positions, elements = _sphere_from_crystal(atoms, radius)
    if len(elements) == 0:
        raise InputError(f"a sphere of radius {radius} Å around the cell centre of {source} holds no atoms.")
    key = json.dumps([record, round(lattice, 8)], sort_keys=True)
    structure = Structure(
        elements=list(elements), positions=np.asarray(positions, dtype=float),
        source_file=f"{source} (mined candidate {candidate_id}, lattice x{lattice:.4f})",
        content_hash=hashlib.sha256(key.encode()).hexdigest(),
    )
    return _store_starting_model(engine, structure, name, permute, bond_cutoff, radius)


def _store_starting_model(
    engine: Engine, structure: Structure, name: str, permute: Sequence[str], bond_cutoff: float,
    radius: Optional[float],
) -> tuple[StartingModel, bool]:
    present = sorted(set(structure.elements))
    missing = [el for el in permute if el not in present]
    if missing:
        raise InputError(
            f"{structure.source_file} has no {', '.join(missing)} atoms to permute "
            f"(it has {', '.join(present)})."
        )
    identity = identity_hash(structure.content_hash, permute, bond_cutoff, radius)
    flags = permutable_flags(structure.elements, permute)
    with transaction(engine) as session:
        existing = session.exec(
            select(StartingModel).where(StartingModel.identity_hash == identity)
        ).first()
        if existing is not None:
            return existing, False
        if session.exec(select(StartingModel).where(StartingModel.name == name)).first():
            raise InputError(
                f"the name '{name}' is already used by another structure; choose another --name."
            )
        model = StartingModel(
            name=name,
            source_file=structure.source_file,
            content_hash=structure.content_hash,
            identity_hash=identity,
            n_atoms=len(structure.elements),
            elements=structure.elements,
            positions=structure.positions,
            permutable_elements=sorted(set(permute)),
            n_permutable=int(flags.sum()),
            bond_cutoff=float(bond_cutoff),
            radius=radius,
        )
        session.add(model)
        session.flush()
        if model.n_atoms > 1:
            session.add_all(environment_rows(
                model, atom_environments(structure.elements, structure.positions, default_k(model.n_atoms))
            ))
        return model, True


def get_starting_model(session: Session, name: str) -> StartingModel:
    """The starting model called ``name``, or a clear error listing the known ones."""
    return get_named(session, StartingModel, name, "structure", "structure add")


def rename_starting_model(engine: Engine, old: str, new: str) -> StartingModel:
    with transaction(engine) as session:
        model = get_starting_model(session, old)
        if old == new:
            return model
        if session.exec(select(StartingModel).where(StartingModel.name == new)).first():
            raise InputError(f"the name '{new}' is already used by another structure.")
        model.name = new
        session.add(model)
        return model


def dependent_counts(engine: Engine, name: str) -> dict[str, int]:
    """How many motifs, fits, trained models and contributions hang on a starting model."""
    with Session(engine) as session:
        model = get_starting_model(session, name)
        motif_ids = select(Motif.id).where(Motif.starting_model_id == model.id)
        model_ids = select(TrainedModel.id).where(TrainedModel.starting_model_id == model.id)
        count = lambda query: session.exec(select(func.count()).select_from(query.subquery())).one()
        return {
            "motifs": count(motif_ids),
            "fits": count(select(FitResult.id).where(FitResult.motif_id.in_(motif_ids))),
            "trained models": count(model_ids),
            "contributions": count(
                select(AtomContribution.id).where(AtomContribution.trained_model_id.in_(model_ids))
            ),
        }


def remove_starting_model(engine: Engine, name: str) -> None:
    """Remove a starting model with its motifs, fits, trained models and contributions, in one transaction."""
    with transaction(engine) as session:
        model = get_starting_model(session, name)
        motif_ids = select(Motif.id).where(Motif.starting_model_id == model.id)
        model_ids = select(TrainedModel.id).where(TrainedModel.starting_model_id == model.id)
        # explicit, children first: correct even where foreign keys are not enforced
        session.execute(delete(AtomContribution).where(AtomContribution.trained_model_id.in_(model_ids)))
        session.execute(delete(TrainedModel).where(TrainedModel.starting_model_id == model.id))
        session.execute(delete(FitResult).where(FitResult.motif_id.in_(motif_ids)))
        session.execute(delete(Motif).where(Motif.starting_model_id == model.id))
        session.execute(delete(AtomEnvironment).where(AtomEnvironment.starting_model_id == model.id))
        session.execute(delete(AtomTypeCheck).where(AtomTypeCheck.starting_model_id == model.id))
        session.delete(model)
