"""Structure libraries: candidate crystal structures with their simulated PDFs, bundled into classes.

The first half of MLstructureMining (Kjær et al., Digital Discovery 3, 908
(2024)): every crystal file (CIF or any periodic format ``ase.io.read`` knows)
is read, its PDF simulated as a crystal (periodic, 0 to rmax Å in steps of
0.1 Å, with :mod:`motex_db.pdf.crystal`), and structures whose PDFs correlate
with Pearson r >= ``bundle_pcc`` (0.95 in the paper) are bundled into one
class.

Bundling is incremental "leader" clustering: structures are taken in the
order they are added; each joins the class whose representative (its first
member) correlates best with it, if that correlation reaches the threshold,
else it founds a new class. Classes therefore never change when more files
are added later, only gain members, so rankings and classifiers stay
comparable; only the new files are simulated.

Simulation defaults (:class:`LibrarySettings`): X-rays, Qmin 0.8, Qmax 25 Å^-1
(the paper's training Qmax), qdamp 0.04 Å^-1, Uiso 0.01 Å^2 on every atom
(inside the paper's 0.005-0.025 range), r 0-30 Å, step 0.1 Å.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from motex_db.db import get_named, lock_in_transaction, transaction, work_lock
from motex_db.errors import InputError
from motex_db.models import Library, LibraryClass, LibraryStructure
from motex_db.pdf.crystal import MARGIN, crystal_pairs, crystal_pdf
from motex_db.pdf.parameters import RADIATIONS

__all__ = [
    "LibrarySettings", "CrystalEntry", "AddOutcome", "add_to_library", "collect_crystal_files", "read_crystal",
    "crystal_from_record", "formula_with_occupancies", "simulate_entry", "pearson", "get_library", "library_overview",
]

#: File name endings taken from a folder (files named explicitly are read whatever their ending).
CRYSTAL_SUFFIXES = (".cif", ".mcif", ".vasp", ".poscar", ".res", ".cell", ".xsf", ".gen", ".pdb")
CRYSTAL_NAMES = ("POSCAR", "CONTCAR")
# Structures simulated and written per transaction: an interrupted add keeps what was committed.
_BATCH = 200


@dataclass(frozen=True)
class LibrarySettings:
    """How a library's PDFs are simulated and bundled (units: Å, Å^-1, Å^2).

    Fixed when the library is made; adding more files uses the same settings.
    """

    rmax: float = 30.0
    rstep: float = 0.1
    qmin: float = 0.8
    qmax: float = 25.0
    qdamp: float = 0.04
    uiso: float = 0.01
    bundle_pcc: float = 0.95
    radiation: str = "xray"

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "radiation":
                continue
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"--{f.name.replace('_', '-')} must be a number, not {value!r}.")
        if not 2.0 <= self.rmax <= 100.0:
            raise InputError(f"--rmax must be between 2 and 100 Å, not {self.rmax:g}.")
        if not 0.001 <= self.rstep <= 0.5 or self.rstep >= self.rmax / 10:
            raise InputError(f"--rstep must be between 0.001 and 0.5 Å and well below rmax, not {self.rstep:g}.")
        if self.qmin < 0 or self.qmax <= self.qmin:
            raise InputError(f"--qmax ({self.qmax:g}) must be larger than --qmin ({self.qmin:g}) >= 0.")
        if self.qmax > math.pi / self.rstep * 2:
            raise InputError(f"--qmax {self.qmax:g} Å^-1 is too high for the r step {self.rstep:g} Å.")
        if self.qdamp < 0:
            raise InputError(f"--qdamp must not be negative, not {self.qdamp:g}.")
        if not 0 < self.uiso <= 0.2:
            raise InputError(f"--uiso must be between 0 and 0.2 Å², not {self.uiso:g}.")
        if not 0 < self.bundle_pcc <= 1:
            raise InputError(f"--bundle-pcc must be in (0, 1], not {self.bundle_pcc:g}.")
        if self.radiation not in RADIATIONS:
            raise InputError(f"--radiation must be one of {', '.join(RADIATIONS)}, not {self.radiation!r}.")

    @property
    def r(self) -> np.ndarray:
        """The library's r grid (Å): 0 in steps of rstep up to the last step not beyond rmax.

        Where rstep does not divide rmax the grid ends short of it (rmax 30, rstep 0.07: at 29.96),
        never past it: the pairs are gathered for rmax.
        """
        return self.rstep * np.arange(int(math.floor(self.rmax / self.rstep + 1e-9)) + 1)

    @property
    def reach(self) -> float:
        return self.rmax + MARGIN

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LibrarySettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class CrystalEntry:
    """A crystal read from a file, ready to be simulated and stored."""

    name: str
    source_path: str
    content_hash: str
    formula: str
    spacegroup: Optional[str]
    cell: list  # a, b, c, alpha, beta, gamma
    crystal: dict  # symbols, cell, scaled_positions, occupancies
    g: Optional[np.ndarray] = None

    @property
    def n_atoms(self) -> int:
        """Atom positions in the cell (a mixed site counts once)."""
        positions = np.asarray(self.crystal["scaled_positions"], dtype=float).reshape(-1, 3)
        return len(np.unique(positions.round(6), axis=0))


def collect_crystal_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The files to read: named files as they are, folders searched (recursively) for crystal files.

    A path that does not exist, or a folder without crystal files, is refused.
    """
    if not inputs:
        raise InputError("name at least one crystal file or folder.")
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and (p.suffix.lower() in CRYSTAL_SUFFIXES or p.name in CRYSTAL_NAMES)
            )
            if not found:
                raise InputError(
                    f"the folder {path} holds no crystal files ({', '.join(CRYSTAL_SUFFIXES)}, POSCAR)."
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path} does not exist.")
    return list(dict.fromkeys(files))


def _occupancies(atoms) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Symbols, fractional positions and occupancies, one entry per species on each site.

    ase keeps a CIF's site occupancies in ``atoms.info['occupancy']``, keyed
    by the asymmetric-unit site of each atom (``atoms.arrays['spacegroup_kinds']``;
    older ase: the atom's tag), and names each atom by the site's majority
    species only. Every species of a site is kept here, each with its
    fraction, at the same position: :func:`crystal_pairs` never pairs two
    entries at one position and weights each pair by both occupancies (the
    average structure of a random mixture).
    """
    symbols = atoms.get_chemical_symbols()
    frac = atoms.get_scaled_positions(wrap=True)
    info = atoms.info.get("occupancy")
    if not info:
        return symbols, frac, np.ones(len(symbols))
    if "spacegroup_kinds" in atoms.arrays:
        keys = atoms.arrays["spacegroup_kinds"]
    else:
        keys = atoms.get_tags()
    sites = [info.get(str(key)) for key in keys]
    if any(site is None for site in sites) or (len(info) > 1 and len(set(keys.tolist())) == 1):
        if all(len(site) == 1 and math.isclose(float(v), 1.0) for site in info.values() for v in site.values()):
            return symbols, frac, np.ones(len(symbols))  # every site full: nothing to match
        raise InputError("its site occupancies cannot be matched to its atoms")
    out_symbols, out_frac, out_occ = [], [], []
    for k, site in enumerate(sites):
        if sum(float(v) for v in site.values()) > 1.0 + 1e-3:
            raise InputError(f"a site holds {_site_text(site)}, more than 1 in all")
        for element, occupancy in site.items():
            if float(occupancy) > 0:
                out_symbols.append(element)
                out_frac.append(frac[k])
                out_occ.append(float(occupancy))
    return out_symbols, np.array(out_frac).reshape(-1, 3), np.array(out_occ)


def _site_text(site: dict) -> str:
    return ", ".join(f"{element} {float(value):g}" for element, value in site.items())


def formula_with_occupancies(symbols: Sequence[str], occupancies: Sequence[float]) -> str:
    """Hill formula of a cell's contents counting each atom by its occupancy (Co2Fe2O4, Ni3.6O4)."""
    counts: dict[str, float] = {}
    for symbol, occupancy in zip(symbols, occupancies):
        counts[symbol] = counts.get(symbol, 0.0) + float(occupancy)
    order = (["C", "H"] if "C" in counts else []) + sorted(e for e in counts if not ("C" in counts and e in ("C", "H")))
    parts = []
    for element in order:
        n = round(counts[element], 4)
        parts.append(element + ("" if n == 1 else f"{n:g}"))
    return "".join(parts)


def read_crystal(path: str | Path) -> CrystalEntry:
    """Read one crystal file; raises :class:`InputError` saying why a file cannot be used."""
    import ase.io

    from motex_db.pdf.scattering import scattering_factors
    from motex_db.structures import file_hash

    path = Path(path)
    try:
        atoms = ase.io.read(str(path))
    except Exception as exc:  # ase raises many types for unreadable files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"{path.name}: not readable as a crystal" + (f" ({reason[:120]})" if reason else "")) from None
    if len(atoms) == 0:
        raise InputError(f"{path.name}: holds no atoms")
    if not atoms.pbc.all() or atoms.cell.rank != 3 or atoms.cell.volume < 1e-3:
        raise InputError(f"{path.name}: has no 3D unit cell (not a crystal)")
    try:
        symbols, frac, occupancies = _occupancies(atoms)
    except InputError as exc:
        raise InputError(f"{path.name}: {exc}") from None
    if not symbols:
        raise InputError(f"{path.name}: holds no atoms (every site's occupancy is 0)")
    try:
        scattering_factors(sorted(set(symbols)), "xray")
    except InputError as exc:
        raise InputError(f"{path.name}: {exc}") from None
    spacegroup = atoms.info.get("spacegroup")
    spacegroup_text = f"{spacegroup.symbol} ({spacegroup.no})" if spacegroup is not None else None
    return CrystalEntry(
        name=path.name,
        source_path=str(path.resolve()),
        content_hash=file_hash(path),
        formula=formula_with_occupancies(symbols, occupancies),
        spacegroup=spacegroup_text,
        cell=[round(float(x), 6) for x in atoms.cell.cellpar()],
        crystal={
            "symbols": list(symbols),
            "cell": np.asarray(atoms.cell[:], dtype=float).round(8).tolist(),
            "scaled_positions": np.asarray(frac, dtype=float).round(8).tolist(),
            "occupancies": np.asarray(occupancies, dtype=float).round(6).tolist(),
        },
    )


def crystal_from_record(crystal: dict):
    """(symbols, cell (3, 3) Å, fractional positions (n, 3), occupancies (n,)) of a stored crystal."""
    return (
        list(crystal["symbols"]),
        np.asarray(crystal["cell"], dtype=float),
        np.asarray(crystal["scaled_positions"], dtype=float).reshape(-1, 3),
        np.asarray(crystal.get("occupancies") or [1.0] * len(crystal["symbols"]), dtype=float),
    )


def entry_pairs(crystal: dict, settings: LibrarySettings, group: str = "none", min_scale: float = 0.9):
    """The grouped pairs of a stored crystal for the library's reach (see :func:`crystal_pairs`)."""
    symbols, cell, frac, occupancies = crystal_from_record(crystal)
    return crystal_pairs(
        symbols, cell, frac, occupancies, reach=settings.reach, min_scale=min_scale,
        radiation=settings.radiation, group=group,
    )


def simulate_entry(crystal: dict, settings: LibrarySettings) -> np.ndarray:
    """G(r) (Å^-2) of a stored crystal on the library's grid, with the library's settings."""
    pairs = entry_pairs(crystal, settings, group="none", min_scale=1.0)
    return crystal_pdf(
        pairs, settings.r, qmin=settings.qmin, qmax=settings.qmax, qdamp=settings.qdamp, uiso=settings.uiso
    )[0]


def pearson(rows: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``rows`` (n, m) with ``target`` (m,); 0 for a constant row."""
    rows = np.atleast_2d(np.asarray(rows, dtype=float))
    target = np.asarray(target, dtype=float)
    a = rows - rows.mean(axis=1, keepdims=True)
    b = target - target.mean()
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a @ b) / denominator
    return np.where(denominator > 0, r, 0.0)


@dataclass
class AddOutcome:
    """What ``library add`` did."""

    library: str
    created: bool
    added: list[str]  # names of the structures added
    already_stored: int
    skipped: list[str]  # "file: reason" for files that could not be read
    new_classes: int
    n_structures: int
    n_classes: int
    seconds: float
    settings: LibrarySettings


def get_library(session: Session, name: str) -> Library:
    """The library called ``name``, or a clear error listing the known ones."""
    return get_named(session, Library, name, "library", "library add")


def _settings_for(existing: Optional[Library], overrides: dict) -> LibrarySettings:
    given = {k: v for k, v in overrides.items() if v is not None}
    if existing is None:
        return LibrarySettings(**given)
    stored = LibrarySettings.from_dict(existing.settings)
    for key, value in given.items():
        same = (getattr(stored, key) == value if key == "radiation"
                else math.isclose(float(getattr(stored, key)), float(value), rel_tol=1e-9))
        if not same:
            raise InputError(
                f"library '{existing.name}' was made with {key.replace('_', '-')} {getattr(stored, key)}; "
                f"its PDFs cannot mix with {value}: leave the option out or add to a new library."
            )
    return stored


def add_to_library(
    engine: Engine,
    name: str,
    inputs: Sequence[str | Path],
    on_progress: Optional[Callable[[int, int], None]] = None,
    **overrides,
) -> AddOutcome:
    """Add crystal files (and folders of them) to the library ``name``, creating it if needed.

    ``overrides`` are :class:`LibrarySettings` fields (None: the library's or
    the default). Only files whose content the library does not hold yet are
    read and simulated; unreadable ones are skipped and reported. Structures
    are written in batches of 200 (an interrupted add keeps whole batches).
    """
    import time

    started = time.perf_counter()
    if not name or not name.strip():
        raise InputError("give the library a name with --name NAME.")
    files = collect_crystal_files(inputs)
    # two adds to one library take turns: the second then finds the first one's files stored (and
    # its settings fixed) instead of simulating them again and colliding on the new library's name
    with work_lock(engine, f"library add {name}"):
        return _add_files(engine, name, files, on_progress, overrides, started)


def _add_files(engine: Engine, name: str, files: list[Path], on_progress, overrides: dict, started: float) -> "AddOutcome":
    import time

    with Session(engine) as session:
        existing = session.exec(select(Library).where(Library.name == name)).first()
        settings = _settings_for(existing, overrides)
        stored_hashes = set()
        if existing is not None:
            stored_hashes = set(session.exec(
                select(LibraryStructure.content_hash).where(LibraryStructure.library_id == existing.id)
            ).all())
    from motex_db.structures import file_hash

    todo, seen, already = [], set(), 0
    for path in files:
        digest = file_hash(path)
        if digest in stored_hashes or digest in seen:
            already += 1
            continue
        seen.add(digest)
        todo.append(path)

    added: list[str] = []
    skipped: list[str] = []
    new_classes = 0
    library_id = existing.id if existing is not None else None
    created = existing is None
    if on_progress:
        on_progress(0, len(todo))
    done = 0
    for start in range(0, len(todo), _BATCH):
        entries = []
        for path in todo[start : start + _BATCH]:
            try:
                entry = read_crystal(path)  # its errors name the file
                try:
                    entry.g = simulate_entry(entry.crystal, settings)
                except InputError as exc:
                    raise InputError(f"{path.name}: {exc}") from None
                entries.append(entry)
            except InputError as exc:
                skipped.append(str(exc))
            done += 1
            if on_progress:
                on_progress(done, len(todo))
        if not entries:
            continue
        library_id, n_new, stored_names = _store_batch(engine, name, settings, library_id, entries)
        new_classes += n_new
        added.extend(stored_names)
        already += len(entries) - len(stored_names)
    if not added and skipped:
        # nothing readable: refuse, and (batches hold no entry) nothing was written
        raise InputError(
            "none of the files could be read as a crystal: " + "; ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        )
    with Session(engine) as session:
        n_structures = len(session.exec(select(LibraryStructure.id).where(LibraryStructure.library_id == library_id)).all())
        n_classes = len(session.exec(select(LibraryClass.id).where(LibraryClass.library_id == library_id)).all())
    return AddOutcome(
        library=name, created=created, added=added, already_stored=already, skipped=skipped,
        new_classes=new_classes, n_structures=n_structures, n_classes=n_classes,
        seconds=time.perf_counter() - started, settings=settings,
    )


def _store_batch(
    engine: Engine, name: str, settings: LibrarySettings, library_id: Optional[int], entries: list[CrystalEntry]
) -> tuple[int, int, list[str]]:
    """Bundle a batch of simulated entries into the library's classes and write them.

    Returns (library id, new classes, names of the entries written: those the library did not hold yet).
    """
    with transaction(engine) as session:
        # bundling reads the classes and then adds to them: one writer at a time per library
        lock_in_transaction(session, f"library {name}")
        if library_id is None:
            library = session.exec(select(Library).where(Library.name == name)).first()
            if library is None:
                library = Library(name=name, settings=settings.to_dict())
                session.add(library)
                session.flush()
            elif LibrarySettings.from_dict(library.settings) != settings:
                raise InputError(f"library '{name}' was made meanwhile with other settings; add to it again "
                                 "without the options, or to a new library.")
            library_id = library.id
        stored = set(session.exec(
            select(LibraryStructure.content_hash).where(LibraryStructure.library_id == library_id)
        ).all())
        entries = [e for e in entries if e.content_hash not in stored]
        reps = session.exec(
            select(LibraryStructure.class_id, LibraryStructure.g)
            .where(LibraryStructure.library_id == library_id)
            .where(LibraryStructure.representative)
        ).all()
        classes = {c.id: c for c in session.exec(select(LibraryClass).where(LibraryClass.library_id == library_id)).all()}
        rep_ids = [row[0] for row in reps]
        rep_g = [row[1] for row in reps]
        next_index = max((c.class_index for c in classes.values()), default=-1) + 1
        new_classes = 0
        for entry in entries:
            best, best_r = None, -np.inf
            if rep_g:
                r = pearson(np.asarray(rep_g), entry.g)
                k = int(np.argmax(r))
                best, best_r = rep_ids[k], float(r[k])
            if best is not None and best_r >= settings.bundle_pcc:
                klass = classes[best]
                klass.n_members += 1
                session.add(klass)
                representative = False
            else:
                klass = LibraryClass(library_id=library_id, class_index=next_index, n_members=1)
                session.add(klass)
                session.flush()
                classes[klass.id] = klass
                rep_ids.append(klass.id)
                rep_g.append(entry.g)
                next_index += 1
                new_classes += 1
                representative = True
            session.add(LibraryStructure(
                library_id=library_id, name=entry.name, source_path=entry.source_path,
                content_hash=entry.content_hash, formula=entry.formula, spacegroup=entry.spacegroup,
                cell=entry.cell, n_atoms=entry.n_atoms, crystal=entry.crystal, g=entry.g,
                class_id=klass.id, representative=representative,
            ))
    return library_id, new_classes, [e.name for e in entries]


def library_overview(engine: Engine):
    """One row per library: structures, classes, settings (a DataFrame)."""
    import pandas as pd
    import sqlalchemy as sa

    with Session(engine) as session:
        libraries = session.exec(select(Library).order_by(Library.id)).all()
        rows = []
        for library in libraries:
            n_structures = session.exec(
                select(sa.func.count()).select_from(LibraryStructure).where(LibraryStructure.library_id == library.id)
            ).one()
            n_classes = session.exec(
                select(sa.func.count()).select_from(LibraryClass).where(LibraryClass.library_id == library.id)
            ).one()
            s = library.settings
            rows.append({
                "id": library.id, "name": library.name, "structures": n_structures, "classes": n_classes,
                "r": f"0-{s['rmax']:g} Å step {s['rstep']:g}", "Q": f"{s['qmin']:g}-{s['qmax']:g} Å⁻¹",
                "qdamp": s["qdamp"], "uiso": s["uiso"], "bundle_pcc": s["bundle_pcc"], "created_at": library.created_at,
            })
    return pd.DataFrame(rows)

