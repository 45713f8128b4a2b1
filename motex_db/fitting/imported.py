"""Goodness-of-fit values computed elsewhere (``motex-db import-fits``).

Steps 3 and 4 do not care where fit quality came from (the interpretable-XANES
seed makes the same point for spectra): scores from another technique or
program are imported as fit results of the structure's motifs, against an
external "dataset" (a row with no r and G) and a fit configuration that
describes the file, and then trained on and explained like our own fits.

Formats:

- ML-MotEx's text output (``np.savetxt`` of step 2, numbers as ``%.18e``):
  whitespace-separated columns ID, Rwp, number of kept atoms, then one 0/1
  column per permutable atom (a header line is skipped). Its sampler draws
  masks without removing repeats, and may draw one with no atom kept: repeated
  masks are averaged (``fit_result.n_averaged`` keeps how many), empty ones
  skipped, and both counted in the outcome;
- CSV with a header: a ``mask`` column of '0'/'1' strings, or one 0/1 column
  per permutable atom, and a score column (``score``, ``rwp`` or the name given).

Lower scores are better unless ``higher_is_better``; then the negated score is
stored as ``rwp`` so that a negative contribution still means "belongs to the motif".
A mask repeated in a CSV file is averaged the same way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from sqlmodel import Session, select

from motex_db.catalogue import _insert_motifs, masks_to_text
from motex_db.db import transaction
from motex_db.errors import InputError
from motex_db.fitting.work import _insert
from motex_db.models import Dataset, FitConfig, FitResult, Motif, utcnow
from motex_db.structures import get_starting_model

IMPORT_RECIPE = "import"
_SCORE_NAMES = ("score", "rwp", "rw", "chi2", "goodness")


@dataclass(frozen=True)
class ImportedScores:
    masks: np.ndarray  # (n, N) bool
    scores: np.ndarray  # (n,) as in the file
    format: str
    score_column: str
    skipped_empty: int = 0  # ML-MotEx rows with no atom kept, left out


@dataclass(frozen=True)
class MergedScores:
    """One row per distinct mask: the mean of its scores and how many were averaged."""

    texts: list[str]
    scores: np.ndarray
    counts: np.ndarray

    @property
    def merged(self) -> int:
        """Rows that were folded into another row of the same mask."""
        return int(self.counts.sum()) - len(self.texts)

    @property
    def repeated_motifs(self) -> int:
        return int(np.count_nonzero(self.counts > 1))


def merge_repeats(masks: np.ndarray, scores: np.ndarray) -> MergedScores:
    """Average the scores of repeated masks, in order of first appearance."""
    texts = masks_to_text(masks)
    first: dict[str, int] = {}
    index = np.array([first.setdefault(t, len(first)) for t in texts], dtype=np.int64)
    counts = np.bincount(index, minlength=len(first))
    means = np.bincount(index, weights=np.asarray(scores, dtype=float), minlength=len(first)) / counts
    return MergedScores(list(first), means, counts)


def _binary_row(values: list[str], where: str, n_permutable: int) -> np.ndarray:
    if len(values) != n_permutable:
        raise InputError(f"{where}: {len(values)} atom columns, but the structure has {n_permutable} permutable atoms.")
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        numbers = [math.nan]
    if any(x not in (0.0, 1.0) for x in numbers):
        raise InputError(f"{where}: the atom columns must be 0 or 1.")
    return np.array(numbers) == 1.0


def _score(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: '{text}' is not a number.") from None
    if not np.isfinite(value):
        raise InputError(f"{where}: the score is NaN or infinite.")
    return value


def _read_mlmotex(path: Path, text: str, n_permutable: int) -> ImportedScores:
    masks, scores = [], []
    skipped = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{path}, line {number}"
        if not masks and not scores and not skipped:
            try:
                float(fields[1])
            except (ValueError, IndexError):
                continue  # a header line
        if len(fields) < 4:
            raise InputError(f"{where}: expected ID, Rwp, number of atoms and one 0/1 column per atom.")
        mask = _binary_row(fields[3:], where, n_permutable)
        if not mask.any():
            skipped += 1  # ML-MotEx's sampler may keep no atom; there is nothing to learn from
            continue
        scores.append(_score(fields[1], where))
        masks.append(mask)
    if not masks:
        raise InputError(f"{path} holds no fit rows.")
    return ImportedScores(np.array(masks), np.array(scores), "mlmotex", "Rwp", skipped)


def _read_csv(path: Path, text: str, n_permutable: int, score_column: Optional[str]) -> ImportedScores:
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    lower = [h.lower() for h in header]
    wanted = [score_column.lower()] if score_column else list(_SCORE_NAMES)
    score_at = next((lower.index(n) for n in wanted if n in lower), None)
    if score_at is None:
        raise InputError(f"{path} has no score column (looked for {', '.join(wanted)}).")
    mask_at = lower.index("mask") if "mask" in lower else None
    atom_columns = [i for i, h in enumerate(lower) if i not in (score_at, mask_at) and h not in ("id", "n_kept", "n_atoms", "atoms")]
    masks, scores = [], []
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}, line {number}"
        if len(row) != len(header):
            raise InputError(f"{where}: {len(row)} fields, the header has {len(header)}.")
        scores.append(_score(row[score_at], where))
        values = list(row[mask_at].strip()) if mask_at is not None else [row[i].strip() for i in atom_columns]
        masks.append(_binary_row(values, where, n_permutable))
    if not masks:
        raise InputError(f"{path} holds no fit rows.")
    return ImportedScores(np.array(masks), np.array(scores), "csv", header[score_at])


def read_scores(path: str | Path, n_permutable: int, score_column: Optional[str] = None) -> ImportedScores:
    """Read and validate an external scores file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"scores file {path} does not exist.")
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        return _read_csv(path, text, n_permutable, score_column)
    return _read_mlmotex(path, text, n_permutable)


@dataclass(frozen=True)
class ImportOutcome:
    structure: str
    source: str
    fit_config_id: int
    imported: int
    new_motifs: int
    already: int
    merged: int = 0  # file rows averaged into another row of the same mask
    repeated_motifs: int = 0  # motifs whose score is such an average
    skipped_empty: int = 0  # rows with no atom kept, left out


def import_fits(
    engine, path: str | Path, structure: str, source: str, higher_is_better: bool = False,
    score_column: Optional[str] = None,
) -> ImportOutcome:
    """Import external scores as fit results of ``structure``'s motifs against the external dataset ``source``."""
    path = Path(path)
    with Session(engine) as session:
        model = get_starting_model(session, structure)
    scores = read_scores(path, model.n_permutable, score_column)
    if not scores.masks.any(axis=1).all():
        raise InputError(f"{path} holds an empty motif (no atom kept).")
    merged = merge_repeats(scores.masks, scores.scores)
    texts = merged.texts
    file_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    settings = {"source_file": path.name, "format": scores.format, "score_column": scores.score_column,
                "higher_is_better": higher_is_better, "stored_as": "-score" if higher_is_better else "score"}
    config_hash = hashlib.sha256(json.dumps([IMPORT_RECIPE, source, file_hash, settings], sort_keys=True).encode()).hexdigest()
    with transaction(engine) as session:
        dataset = session.exec(select(Dataset).where(Dataset.name == source)).first()
        if dataset is None:
            dataset = Dataset(
                name=source, source_file=path.name, content_hash=f"external:{source}", n_points=0, r_min=0.0,
                r_max=0.0, r=np.zeros(0), g=np.zeros(0), dg=None,
                meta={"external": True, "note": "scores computed elsewhere, imported with motex-db import-fits"},
            )
            session.add(dataset)
            session.flush()
        elif not (dataset.meta or {}).get("external"):
            raise InputError(f"'{source}' is a measured dataset; name the external source of the scores differently.")
        session.execute(
            _insert(session, FitConfig.__table__).values(
                content_hash=config_hash, recipe=IMPORT_RECIPE, calculator="external", rmin=0.0, rmax=0.0, qmin=0.0,
                qmax=0.0, qdamp=0.0, qbroad=0.0, settings=settings, engine_version="external", created_at=utcnow(),
            ).on_conflict_do_nothing(index_elements=["content_hash"])
        )
        config = session.exec(select(FitConfig).where(FitConfig.content_hash == config_hash)).one()
        stored = set(session.exec(select(Motif.mask).where(Motif.starting_model_id == model.id)).all())
        new = _insert_motifs(session, model, [t for t in texts if t not in stored], f"import {source}")
        ids = dict(session.exec(select(Motif.mask, Motif.id).where(Motif.starting_model_id == model.id).where(Motif.mask.in_(texts))).all())
        now = utcnow()
        values = -merged.scores if higher_is_better else merged.scores
        rows = [
            {"motif_id": ids[t], "dataset_id": dataset.id, "fit_config_id": config.id, "status": "ok", "rwp": float(v),
             "params": {"score": float(raw)}, "error": None, "seconds": 0.0, "n_averaged": int(n), "created_at": now}
            for t, v, raw, n in zip(texts, values, merged.scores, merged.counts)
        ]
        before = session.exec(select(FitResult.id).where(FitResult.fit_config_id == config.id)).all()
        session.execute(
            _insert(session, FitResult.__table__).on_conflict_do_nothing(index_elements=["motif_id", "dataset_id", "fit_config_id"]),
            rows,
        )
        imported = len(session.exec(select(FitResult.id).where(FitResult.fit_config_id == config.id)).all()) - len(before)
        return ImportOutcome(
            structure, source, config.id, imported, new, len(rows) - imported,
            merged.merged, merged.repeated_motifs, scores.skipped_empty,
        )
