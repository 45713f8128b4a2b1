"""Fitting a catalogue against a dataset: claimed, resumable, shared work in the record.

Any number of workers (processes, on one machine or many) fit the same
(structure, dataset, fit_config) by sharing one database, as Optuna's workers
share a study:

1. In one short transaction a worker picks motifs that have neither a result
   nor a live claim, and inserts a ``fit_claim`` row for each (on PostgreSQL the
   candidate rows are locked ``FOR UPDATE SKIP LOCKED``, so two workers never
   pick the same ones; the unique constraint on claims is the safety net on
   every backend, and SQLite serialises writers anyway).
2. It fits the batch outside any transaction.
3. In one transaction it inserts the results and deletes its claims.

A worker killed at any moment leaves at most its claims behind, never a half
written result.

A time series is fitted as one job over its frames (those that share an r grid
and resolved settings): a worker claims a motif for every frame with one claim
row on the first frame, fits it to the frames that lack a result at once (the
motif's calculated PDFs are shared, see :meth:`MotifFitter.fit_frames`) and
writes one result row per frame, in bulk. A motif counts as unfinished while
any frame lacks its result; frames that already have one keep it, so frames
added to a series later cost only their own fits. Claims expire after ``lease_seconds``; claims of a process on
this machine that no longer exists are released at once, so a run restarted after
kill -9 on the same machine goes on immediately (a worker is named by host, pid,
process start, boot id and pid namespace: see :mod:`motex_db.processes`).

What goes wrong is contained: a motif whose fit raises is stored as failed with
the error while its batch-mates are fitted (the batch is bisected); a lost
PostgreSQL connection is retried with backoff (every transaction here may be
repeated), and when it stays lost the worker stops with one sentence, its claims
left to expire.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from motex_db.catalogue import masks_from_text, membership_matrix
from motex_db.datasets import get_dataset, get_series_frames
from motex_db.db import analyze, is_sqlite, reconnecting, transaction
from motex_db.errors import InputError, MotexError
from motex_db.fitting.settings import ENGINE_VERSION, FitSettings
from motex_db.models import Dataset, FitClaim, FitConfig, FitResult, Motif, StartingModel, utcnow
from motex_db.processes import die_with_parent, process_gone, worker_identity
from motex_db.structures import get_starting_model, permutable_flags

DEFAULT_LEASE_SECONDS = 300.0
FIRST_BATCH = 256
MAX_BATCH = 8192
TARGET_BATCH_SECONDS = 1.0


def worker_id() -> str:
    """This process's name in claims: host, pid, process start, boot id, pid namespace and a random token."""
    return worker_identity()


def _insert(session: Session, table: sa.Table):
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


# ---------------------------------------------------------------- configuration


def get_or_create_fit_config(engine: Engine, settings: FitSettings) -> FitConfig:
    """The ``fit_config`` row of these (resolved) settings, created on first use."""
    content_hash = settings.content_hash(ENGINE_VERSION)
    with transaction(engine) as session:
        row = {
            "content_hash": content_hash,
            "recipe": settings.recipe,
            "calculator": settings.calculator,
            "rmin": settings.rmin,
            "rmax": settings.rmax,
            "qmin": settings.qmin,
            "qmax": settings.qmax,
            "qdamp": settings.qdamp,
            "qbroad": settings.qbroad,
            "settings": settings.to_dict(),
            "engine_version": ENGINE_VERSION,
            "created_at": utcnow(),
        }
        session.execute(
            _insert(session, FitConfig.__table__).values(**row).on_conflict_do_nothing(index_elements=["content_hash"])
        )
        return session.exec(select(FitConfig).where(FitConfig.content_hash == content_hash)).one()


# ---------------------------------------------------------------- progress and summary


@dataclass
class FitProgress:
    """Where a fit run stands; passed to ``on_progress`` after every batch."""

    total: int  # fits (motif x dataset) without a result when the run started
    done: int = 0  # results this process wrote (ok + failed)
    failed: int = 0
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class FitSummary:
    structure: str
    dataset: str
    fit_config_id: int
    recipe: str
    fitted: int
    failed: int
    seconds: float
    already_done: int
    best_rwp: Optional[float] = None
    best_motif_id: Optional[int] = None
    best_motif_size: Optional[int] = None
    retried: int = 0
    workers: int = 1
    peak_memory_mb: Optional[float] = None
    n_frames: Optional[int] = None  # a series fit: the frames fitted
    best_frame: Optional[str] = None  # a series fit: the frame of the best Rwp
    # results of the catalogue that copy an image's fit (fit_result.fitted_motif_id set)
    copied: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.fitted / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------- the work queue


@dataclass(frozen=True)
class FitJob:
    """What to fit: a starting model's catalogue against datasets with one configuration.

    ``dataset_ids`` is one dataset, or the frames of a series (one r grid, one
    configuration), in time order.
    """

    starting_model_id: int
    dataset_ids: tuple[int, ...]
    fit_config_id: int

    @property
    def dataset_id(self) -> int:
        """The dataset the job's claims are written against: its first frame."""
        return self.dataset_ids[0]


def _unfinished(job: FitJob):
    """Motifs of the job's starting model that lack a result for one of its datasets (with its configuration)."""
    results = (
        select(FitResult.id)
        .where(FitResult.motif_id == Motif.id)
        .where(FitResult.fit_config_id == job.fit_config_id)
    )
    motifs = select(Motif.id).where(Motif.starting_model_id == job.starting_model_id)
    if len(job.dataset_ids) == 1:
        return motifs.where(~results.where(FitResult.dataset_id == job.dataset_id).exists())
    n_results = (
        results.with_only_columns(sa.func.count(FitResult.id))
        .where(FitResult.dataset_id.in_(job.dataset_ids))
        .scalar_subquery()
    )
    return motifs.where(n_results < len(job.dataset_ids))


def count_missing_fits(engine: Engine, job: FitJob) -> int:
    """(motif, dataset) pairs of the job without a result."""
    with Session(engine) as session:
        n_motifs = session.exec(
            select(sa.func.count()).select_from(Motif).where(Motif.starting_model_id == job.starting_model_id)
        ).one()
        n_results = session.exec(
            select(sa.func.count())
            .select_from(FitResult)
            .join(Motif, Motif.id == FitResult.motif_id)
            .where(Motif.starting_model_id == job.starting_model_id)
            .where(FitResult.dataset_id.in_(job.dataset_ids))
            .where(FitResult.fit_config_id == job.fit_config_id)
        ).one()
    return n_motifs * len(job.dataset_ids) - n_results


def missing_frames(engine: Engine, job: FitJob, motif_ids: list[int]) -> tuple[list[int], int]:
    """Indices of the job's datasets where one of the motifs lacks a result, and how many (motif, dataset) pairs do."""
    if len(job.dataset_ids) == 1:
        return [0], len(motif_ids)
    with Session(engine) as session:
        # by motif (the leading column of the results' unique index), all datasets: the planner then
        # reads only these motifs' rows instead of every row of the job's datasets
        found = session.exec(
            select(FitResult.dataset_id, sa.func.count())
            .where(FitResult.motif_id.in_(motif_ids))
            .where(FitResult.fit_config_id == job.fit_config_id)
            .group_by(FitResult.dataset_id)
        ).all()
    have = dict(found)
    frames = [i for i, d in enumerate(job.dataset_ids) if have.get(d, 0) < len(motif_ids)]
    return frames, sum(len(motif_ids) - have.get(job.dataset_ids[i], 0) for i in frames)


def count_unfinished(engine: Engine, job: FitJob) -> int:
    with Session(engine) as session:
        return session.exec(select(sa.func.count()).select_from(_unfinished(job).subquery())).one()


def release_stale_claims(session: Session, job: FitJob) -> int:
    """Delete claims past their lease, and claims of processes on this machine that are gone."""
    now = utcnow()
    where = (FitClaim.dataset_id == job.dataset_id) & (FitClaim.fit_config_id == job.fit_config_id)
    expired = session.execute(sa.delete(FitClaim).where(where & (FitClaim.expires_at < now))).rowcount or 0
    workers = session.exec(select(FitClaim.worker).where(where).distinct()).all()
    gone = [w for w in workers if process_gone(w)]
    if gone:
        expired += session.execute(sa.delete(FitClaim).where(where & FitClaim.worker.in_(gone))).rowcount or 0
    return expired


def _unfinished_in_window(session: Session, job: FitJob, start: int, window: int) -> tuple[list[int], Optional[int]]:
    """Motifs among the next ``window`` of the job's catalogue after id ``start`` that have neither a claim nor every
    result, in id order, and the last id looked at (None past the end).

    Every lookup is a key range (the catalogue in id order, then the claims and
    results of that id range through their unique indexes, whose leading column
    is the motif), so the plan does not hang on the planner's statistics, and no
    statement carries thousands of bound values. Claims are read before results:
    a worker that stores its results drops its claims in the same transaction,
    so a motif finished meanwhile shows up in one of the two reads.
    """
    ids = list(
        session.exec(
            select(Motif.id)
            .where(Motif.starting_model_id == job.starting_model_id)
            .where(Motif.id > start)
            .order_by(Motif.id)
            .limit(window)
        ).all()
    )
    if not ids:
        return [], None
    claimed = set(
        session.exec(
            select(FitClaim.motif_id)
            .where(FitClaim.motif_id.between(ids[0], ids[-1]))
            .where(FitClaim.dataset_id == job.dataset_id)
            .where(FitClaim.fit_config_id == job.fit_config_id)
        ).all()
    )
    finished = set(
        session.exec(
            select(FitResult.motif_id)
            .where(FitResult.motif_id.between(ids[0], ids[-1]))
            .where(FitResult.dataset_id.in_(job.dataset_ids))
            .where(FitResult.fit_config_id == job.fit_config_id)
            .group_by(FitResult.motif_id)
            .having(sa.func.count() >= len(job.dataset_ids))
        ).all()
    )
    return [m for m in ids if m not in claimed and m not in finished], ids[-1]


def claim_batch(
    engine: Engine, job: FitJob, worker: str, size: int, lease_seconds: float, after: int = 0
) -> list[tuple[int, str]]:
    """Claim up to ``size`` unfinished, unclaimed motifs; returns their (id, mask), by id.

    ``after``: look first at motifs with a larger id (where a worker that goes
    through the catalogue in id order finds its next batch without passing over
    every finished motif again), then at all of them.

    Claims that ``worker`` still holds are dropped first: a worker claims only
    with empty hands, so they are left from a claim whose commit was answered by
    a lost connection (and this call is its retry).
    """
    with transaction(engine) as session:
        release_stale_claims(session, job)
        session.execute(
            sa.delete(FitClaim)
            .where(FitClaim.worker == worker)
            .where(FitClaim.dataset_id == job.dataset_id)
            .where(FitClaim.fit_config_id == job.fit_config_id)
        )
        # a few batches' worth of ids per look (SQLite takes at most 32,766 bound values per statement)
        window = min(max(4 * size, 1024), 16384)
        candidates: list[int] = []
        for first in dict.fromkeys((after, 0)):
            start: Optional[int] = first
            while start is not None and len(candidates) < size:
                found, start = _unfinished_in_window(session, job, start, window)
                found = found[: size - len(candidates)]
                if found and not is_sqlite(engine):
                    # rows another worker is claiming right now are skipped, not waited for
                    found = list(
                        session.exec(
                            select(Motif.id).where(Motif.id == sa.any_(_id_array(found))).order_by(Motif.id)
                            .with_for_update(skip_locked=True)
                        ).all()
                    )
                candidates.extend(found)
            if candidates:
                break
        if not candidates:
            return []
        expires = utcnow() + timedelta(seconds=lease_seconds)
        table = FitClaim.__table__
        if is_sqlite(engine):
            rows = [
                {"motif_id": m, "dataset_id": job.dataset_id, "fit_config_id": job.fit_config_id, "worker": worker,
                 "expires_at": expires}
                for m in candidates
            ]
            statement = _insert(session, table).on_conflict_do_nothing(
                index_elements=["motif_id", "dataset_id", "fit_config_id"]
            ).returning(table.c.motif_id)
            won = set(session.execute(statement, rows).scalars().all())
        else:
            # one array instead of a bound value per row and column
            claims = sa.select(
                sa.func.unnest(_id_array(candidates)), sa.literal(job.dataset_id), sa.literal(job.fit_config_id),
                sa.literal(worker), sa.literal(expires, sa.DateTime(timezone=True)),
            )
            statement = (
                postgresql.insert(table)
                .from_select(["motif_id", "dataset_id", "fit_config_id", "worker", "expires_at"], claims)
                .on_conflict_do_nothing(index_elements=["motif_id", "dataset_id", "fit_config_id"])
                .returning(table.c.motif_id)
            )
            won = set(session.execute(statement).scalars().all())
        masks = dict(
            session.exec(
                select(Motif.id, Motif.mask)
                .where(Motif.starting_model_id == job.starting_model_id)
                .where(Motif.id.between(min(candidates), max(candidates)))
            ).all()
        )
        return [(m, masks[m]) for m in candidates if m in won]


def _id_array(ids: list[int]):
    """A PostgreSQL integer array of ``ids``: one bound value, where ``IN`` would bind one per id."""
    return sa.bindparam(None, value=list(ids), type_=postgresql.ARRAY(sa.Integer))


def write_results(
    engine: Engine, job: FitJob, worker: str, motif_ids: list[int], batches: Sequence, frames: Sequence[int] | None = None,
    fitted_from: Sequence[Optional[int]] | None = None, signatures: Sequence[str] | None = None,
) -> int:
    """Store fitted batches (one per dataset of the job, or per index in ``frames``) and drop their claims,
    in one transaction; returns the rows offered.

    Rows that exist already (another worker's, or a frame fitted before) are kept. ``fitted_from`` names, per
    motif, the image whose fit a result copies (None: fitted itself); ``signatures`` are stored on motifs that
    lack theirs, so that later batches find these fits by signature.
    """
    now = utcnow()
    rows = []
    dataset_ids = job.dataset_ids if frames is None else [job.dataset_ids[i] for i in frames]
    for dataset_id, batch in zip(dataset_ids, batches, strict=True):
        rows.extend(_result_rows(job, dataset_id, motif_ids, batch, now, fitted_from))
    with transaction(engine) as session:
        # a claim that expired may have been fitted by another worker meanwhile: keep theirs
        _store_results(session, rows)
        named = [{"motif_id": m, "new_signature": g} for m, g in zip(motif_ids, signatures or []) if g is not None]
        if named:
            session.execute(
                sa.update(Motif.__table__)
                .where(Motif.__table__.c.id == sa.bindparam("motif_id"))
                .where(Motif.__table__.c.signature.is_(None))
                .values(signature=sa.bindparam("new_signature")),
                named,
            )
        session.execute(
            sa.delete(FitClaim)
            .where(FitClaim.worker == worker)
            .where(FitClaim.dataset_id == job.dataset_id)
            .where(FitClaim.fit_config_id == job.fit_config_id)
            .where(FitClaim.motif_id.in_(motif_ids))
        )
    return len(rows)


_RESULT_COLUMNS = (
    "motif_id", "dataset_id", "fit_config_id", "status", "rwp", "params", "error", "seconds", "fitted_motif_id", "created_at",
)


def _store_results(session: Session, rows: list[dict]) -> None:
    """Insert result rows, keeping any that exist (same motif, dataset and configuration).

    On SQLite the rows go straight to the driver's executemany, each value
    converted by its column type's own bind processor (so the stored text is
    what SQLAlchemy would store): a series batch is hundreds of thousands of
    rows, and SQLAlchemy's per-row parameter handling would cost as much as the
    insert. On PostgreSQL the rows go as one array per column (``unnest``): ten
    bound values for the whole batch instead of ten per row.
    """
    if not rows:
        return
    table = FitResult.__table__
    dialect = session.get_bind().dialect
    if dialect.name != "sqlite":
        _store_results_postgresql(session, rows)
        return
    convert = {
        name: table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in ("params", "created_at")
    }
    stamps: dict[int, str] = {}

    def stamp(value) -> str:
        key = id(value)
        if key not in stamps:
            stamps[key] = convert["created_at"](value)
        return stamps[key]

    values = [
        (r["motif_id"], r["dataset_id"], r["fit_config_id"], r["status"], r["rwp"], convert["params"](r["params"]),
         r["error"], r["seconds"], r.get("fitted_motif_id"), stamp(r["created_at"]))
        for r in rows
    ]
    session.connection().exec_driver_sql(
        f"INSERT INTO fit_result ({', '.join(_RESULT_COLUMNS)}) VALUES ({', '.join('?' * len(_RESULT_COLUMNS))}) "
        "ON CONFLICT (motif_id, dataset_id, fit_config_id) DO NOTHING",
        values,
    )


_POSTGRESQL_ARRAY_TYPES = (
    "integer[]", "integer[]", "integer[]", "text[]", "double precision[]", "text[]", "text[]", "double precision[]",
    "integer[]", "timestamptz[]",
)


def _store_results_postgresql(session: Session, rows: list[dict]) -> None:
    import json

    columns = [[r.get(name) for r in rows] for name in _RESULT_COLUMNS]
    params = _RESULT_COLUMNS.index("params")
    # the text SQLAlchemy's JSON type would send (its serializer is json.dumps)
    columns[params] = [None if value is None else json.dumps(value) for value in columns[params]]
    names = [f"c{i}" for i in range(len(_RESULT_COLUMNS))]
    selected = [f"{n}::json" if i == params else n for i, n in enumerate(names)]
    arrays = ", ".join(f"%s::{t}" for t in _POSTGRESQL_ARRAY_TYPES)
    session.connection().exec_driver_sql(
        f"INSERT INTO fit_result ({', '.join(_RESULT_COLUMNS)}) SELECT {', '.join(selected)} "
        f"FROM unnest({arrays}) AS rows({', '.join(names)}) "
        "ON CONFLICT (motif_id, dataset_id, fit_config_id) DO NOTHING",
        tuple(columns),
    )


def _result_rows(
    job: FitJob, dataset_id: int, motif_ids: list[int], batch, now, fitted_from: Sequence[Optional[int]] | None = None
) -> list[dict]:
    rows = []
    for index, motif_id in enumerate(motif_ids):
        ok = bool(batch.ok[index])
        rows.append(
            {
                "motif_id": motif_id,
                "dataset_id": dataset_id,
                "fit_config_id": job.fit_config_id,
                "status": "ok" if ok else "failed",
                "rwp": float(batch.rwp[index]) if ok else None,
                "params": batch.params[index] if ok else None,
                "error": None if ok else (batch.errors[index] or "the fit failed"),
                "seconds": float(batch.seconds[index]),
                "fitted_motif_id": fitted_from[index] if fitted_from is not None else None,
                "created_at": now,
            }
        )
    return rows


def live_claims_of_others(engine: Engine, job: FitJob, worker: str) -> int:
    with Session(engine) as session:
        return session.exec(
            select(sa.func.count())
            .select_from(FitClaim)
            .where(FitClaim.dataset_id == job.dataset_id)
            .where(FitClaim.fit_config_id == job.fit_config_id)
            .where(FitClaim.worker != worker)
        ).one()


# ---------------------------------------------------------------- running a job


@dataclass
class PreparedFit:
    """Everything a worker needs: the job and a fitter built once for it."""

    job: FitJob
    settings: FitSettings
    structure: str
    model: StartingModel
    frames: list[Dataset]  # one dataset, or the frames of a series sharing an r grid and settings

    @property
    def dataset(self) -> str:
        return self.frames[0].name

    def fitter(self):
        from motex_db.fitting.batched import MotifFitter

        flags = permutable_flags(self.model.elements, self.model.permutable_elements)
        membership = membership_matrix(self.model.positions, flags, self.model.bond_cutoff)
        g = np.stack([frame.g for frame in self.frames]) if len(self.frames) > 1 else self.frames[0].g
        return MotifFitter(self.model.elements, self.model.positions, membership, self.frames[0].r, g, self.settings)


def _check_range(settings: FitSettings, data: Dataset) -> None:
    if settings.rmax <= data.r_min or settings.rmin >= data.r_max:
        raise InputError(
            f"the fit range {settings.rmin:g}-{settings.rmax:g} Å lies outside dataset '{data.name}' "
            f"(r {data.r_min:g}-{data.r_max:g} Å)."
        )


def _prepare(engine: Engine, structure: str, frames: list[Dataset], settings: FitSettings) -> list[PreparedFit]:
    """Resolve the settings per frame; frames with equal settings and r grids become one job each."""
    with Session(engine) as session:
        model = get_starting_model(session, structure)
        n_motifs = session.exec(
            select(sa.func.count()).select_from(Motif).where(Motif.starting_model_id == model.id)
        ).one()
    if n_motifs == 0:
        raise InputError(f"structure '{structure}' has no motifs yet: run motex-db sample first.")
    groups: dict[tuple, tuple[FitSettings, list[Dataset]]] = {}
    for data in frames:
        resolved = settings.resolved(data.meta or {})
        _check_range(resolved, data)
        key = (resolved.content_hash(), data.r.size, data.r.tobytes())
        groups.setdefault(key, (resolved, []))[1].append(data)
    prepared = []
    for resolved, members in groups.values():
        config = get_or_create_fit_config(engine, resolved)
        job = FitJob(model.id, tuple(d.id for d in members), config.id)
        prepared.append(PreparedFit(job, resolved, structure, model, members))
    return prepared


def prepare_fit(engine: Engine, structure: str, dataset: str, settings: FitSettings) -> PreparedFit:
    """Look up the structure and dataset, resolve the settings against the data, get the config row."""
    with Session(engine) as session:
        data = get_dataset(session, dataset)
    return _prepare(engine, structure, [data], settings)[0]


def prepare_series_fit(engine: Engine, structure: str, series: str, settings: FitSettings) -> list[PreparedFit]:
    """The jobs that fit a structure's catalogue to every frame of a series (usually one)."""
    with Session(engine) as session:
        frames = get_series_frames(session, series)
    return _prepare(engine, structure, frames, settings)


def delete_failed(engine: Engine, job: FitJob) -> int:
    """Forget failed results so that they are fitted again (``--retry-failed``)."""
    with transaction(engine) as session:
        motifs = select(Motif.id).where(Motif.starting_model_id == job.starting_model_id)
        return session.execute(
            sa.delete(FitResult)
            .where(FitResult.dataset_id.in_(job.dataset_ids))
            .where(FitResult.fit_config_id == job.fit_config_id)
            .where(FitResult.status == "failed")
            .where(FitResult.motif_id.in_(motifs))
        ).rowcount or 0


def fit_isolating_failures(fitter, masks: np.ndarray, frames: Sequence[int]) -> list:
    """``fitter.fit_frames(masks, frames)``, except that a motif whose fit raises becomes a failed result carrying the
    error, and the other motifs of the batch are fitted: a batch that raises is cut in halves until the motifs that
    raise stand alone.

    A project error (bad settings or masks) is the whole batch's, and is raised.
    """
    try:
        return fitter.fit_frames(masks, frames)
    except MotexError:
        raise
    except Exception as exc:  # any bug or numerical surprise in one motif's fit must not take its batch-mates down
        if len(masks) == 1:
            from motex_db.fitting.batched import FitBatch

            error = f"the fit raised {type(exc).__name__}: {str(exc).strip() or 'no message'}"
            return [
                FitBatch(rwp=np.full(1, np.nan), ok=np.zeros(1, dtype=bool), params=[None], errors=[error], seconds=np.zeros(1))
                for _ in frames
            ]
    half = len(masks) // 2
    first = fit_isolating_failures(fitter, masks[:half], frames)
    second = fit_isolating_failures(fitter, masks[half:], frames)
    return [_joined(a, b) for a, b in zip(first, second, strict=True)]


def _joined(first, second):
    from motex_db.fitting.batched import FitBatch

    return FitBatch(
        rwp=np.concatenate([first.rwp, second.rwp]),
        ok=np.concatenate([first.ok, second.ok]),
        params=list(first.params) + list(second.params),
        errors=list(first.errors) + list(second.errors),
        seconds=np.concatenate([first.seconds, second.seconds]),
    )


# Signatures are computed for motifs of the sizes k with at most this many distinct motifs, C(N, k):
# there sampled motifs meet their images. In the vast spaces between, a sampled motif's image is
# almost never sampled too, and a signature would cost about as much as the fit it might save.
MAX_IMAGE_SPACE = 10**6


@dataclass(frozen=True)
class ImageFinder:
    """Isometry signatures of a starting model's motifs (:func:`motex_db.environments.motif_signatures`)."""

    elements: list
    positions: np.ndarray
    membership: np.ndarray

    def signatures(self, masks: np.ndarray) -> list[Optional[str]]:
        """One signature per motif of a size with few distinct motifs (see MAX_IMAGE_SPACE), None for the others."""
        import math

        from motex_db.environments import motif_signatures

        n = masks.shape[1]
        small = np.array([math.comb(n, int(k)) <= MAX_IMAGE_SPACE for k in masks.sum(axis=1)], dtype=bool)
        out: list[Optional[str]] = [None] * len(masks)
        if small.any():
            found = motif_signatures(masks[small], self.membership, self.elements, self.positions)
            for index, signature in zip(np.flatnonzero(small), found):
                out[index] = signature
        return out


def image_finder(model: StartingModel) -> Optional[ImageFinder]:
    """Signatures for a model whose permutable atoms share environments; None when every one's is its own.

    Two motifs can be images of each other only under a symmetry of the model,
    which maps atoms onto atoms of the same environment class: where all
    classes are single atoms, signatures would be computed for nothing.
    """
    from motex_db.environments import atom_environments, default_k

    flags = permutable_flags(model.elements, model.permutable_elements)
    if model.n_atoms < 2:
        return None
    classes = atom_environments(model.elements, model.positions, default_k(model.n_atoms)).classes[flags]
    if len(np.unique(classes)) == classes.size:
        return None
    return ImageFinder(list(model.elements), model.positions, membership_matrix(model.positions, flags, model.bond_cutoff))


def fits_by_signature(engine: Engine, job: FitJob, signatures: Sequence[str]) -> dict[str, tuple]:
    """Stored results of the job's (single) dataset for motifs with these signatures.

    signature -> (the motif actually fitted, status, rwp, params, error).
    """
    found: dict[str, tuple] = {}
    wanted = sorted({signature for signature in signatures if signature is not None})
    with Session(engine) as session:
        for start in range(0, len(wanted), 5000):
            rows = session.execute(
                sa.select(Motif.signature, FitResult.motif_id, FitResult.fitted_motif_id, FitResult.status,
                          FitResult.rwp, FitResult.params, FitResult.error)
                .join(Motif, Motif.id == FitResult.motif_id)
                .where(Motif.starting_model_id == job.starting_model_id)
                .where(Motif.signature.in_(wanted[start:start + 5000]))
                .where(FitResult.dataset_id == job.dataset_id)
                .where(FitResult.fit_config_id == job.fit_config_id)
            ).all()
            for signature, motif_id, fitted_id, status, rwp, params, error in rows:
                found.setdefault(signature, (fitted_id or motif_id, status, rwp, params, error))
    return found


def fit_one_per_signature(fitter, masks: np.ndarray, motif_ids: Sequence[int], signatures: Sequence[str],
                          known: dict[str, tuple]):
    """Fit one motif per signature not in ``known`` and give every motif its signature's result.

    A motif without a signature (None) is fitted itself. Returns (one FitBatch for all motifs, the motif each
    result was fitted on: None where fitted itself).
    """
    from motex_db.fitting.batched import FitBatch

    signatures = [signature if signature is not None else ("", index) for index, signature in enumerate(signatures)]
    first: dict = {}
    for index, signature in enumerate(signatures):
        if signature not in known and signature not in first:
            first[signature] = index
    fitted_rows = list(first.values())
    fitted = fit_isolating_failures(fitter, masks[fitted_rows], [0])[0] if fitted_rows else None
    position = {row: n for n, row in enumerate(fitted_rows)}
    n = len(signatures)
    rwp, ok, seconds = np.full(n, np.nan), np.zeros(n, dtype=bool), np.zeros(n)
    params: list = [None] * n
    errors: list = [None] * n
    fitted_from: list[Optional[int]] = [None] * n
    for index, signature in enumerate(signatures):
        if signature in known:
            source, status, value, stored_params, error = known[signature]
            ok[index] = status == "ok"
            rwp[index] = value if ok[index] else np.nan
            params[index], errors[index], fitted_from[index] = stored_params, error, source
            continue
        representative = first[signature]
        j = position[representative]
        rwp[index], ok[index] = fitted.rwp[j], fitted.ok[j]
        params[index], errors[index] = fitted.params[j], fitted.errors[j]
        if index == representative:
            seconds[index] = fitted.seconds[j]
        else:
            fitted_from[index] = motif_ids[representative]
    return FitBatch(rwp=rwp, ok=ok, params=params, errors=errors, seconds=seconds), fitted_from


def run_worker(
    engine: Engine,
    prepared: PreparedFit,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    on_batch: Callable[[int, int], None] = lambda done, failed: None,
    batch_size: Optional[int] = None,
    poll_seconds: float = 1.0,
) -> tuple[int, int]:
    """Claim, fit and store batches until no motif is left without a result; returns (fits, failed).

    A fit is one motif against one dataset (a series job: against each frame).
    When the only motifs left are claimed by other live workers, it waits for
    them (their results, or their leases running out) instead of leaving work
    behind a worker that may have died. Each step with the database is retried
    while a PostgreSQL connection is lost (:func:`motex_db.db.reconnecting`).
    """
    worker = worker_id()
    fitter = prepared.fitter()
    n_frames = len(prepared.job.dataset_ids)
    # a symmetric model: one fit per isometry signature, the others copy it (single datasets)
    images = image_finder(prepared.model) if n_frames == 1 else None
    size = batch_size or max(16, FIRST_BATCH // n_frames)
    done = failed = 0
    after = 0
    while True:
        claimed = reconnecting(engine, claim_batch, engine, prepared.job, worker, size, lease_seconds, after)
        if not claimed:
            # a count of results (a join on keys), not of unfinished motifs (an anti-join whose plan follows the statistics)
            if reconnecting(engine, count_missing_fits, engine, prepared.job) == 0:
                return done, failed
            time.sleep(poll_seconds)
            continue
        ids = [m for m, _ in claimed]
        after = max(ids)
        masks = masks_from_text([mask for _, mask in claimed], prepared.model.n_permutable)
        frames, n_new = reconnecting(engine, missing_frames, engine, prepared.job, ids)
        started = time.perf_counter()
        fitted_from = signatures = None
        if images is not None and frames:
            signatures = images.signatures(masks)
            known = reconnecting(engine, fits_by_signature, engine, prepared.job, signatures)
            batch, fitted_from = fit_one_per_signature(fitter, masks, ids, signatures, known)
            batches = [batch]
        else:
            batches = fit_isolating_failures(fitter, masks, frames)
        spent = time.perf_counter() - started
        reconnecting(engine, write_results, engine, prepared.job, worker, ids, batches, frames, fitted_from, signatures)
        n_failed = sum(int((~np.asarray(batch.ok)).sum()) for batch in batches)
        done += n_new
        failed += n_failed
        on_batch(n_new, n_failed)
        if batch_size is None and spent > 0:
            # aim at about a second of fitting per batch: few transactions, fresh progress
            size = int(np.clip(len(ids) * TARGET_BATCH_SECONDS / spent, 16, MAX_BATCH))
            size = min(size, max(16, int(lease_seconds / 10 * len(ids) / spent)))


def best_fit(engine: Engine, job: FitJob) -> tuple[Optional[float], Optional[int], Optional[int], Optional[int]]:
    """(Rwp, motif id, kept atoms, dataset id) of the best 'ok' fit of the job so far."""
    with Session(engine) as session:
        row = session.exec(
            select(FitResult.rwp, Motif.id, Motif.n_kept, FitResult.dataset_id)
            .join(Motif, Motif.id == FitResult.motif_id)
            .where(Motif.starting_model_id == job.starting_model_id)
            .where(FitResult.dataset_id.in_(job.dataset_ids))
            .where(FitResult.fit_config_id == job.fit_config_id)
            .where(FitResult.status == "ok")
            .order_by(FitResult.rwp, Motif.id)
            .limit(1)
        ).first()
    return tuple(row) if row else (None, None, None, None)


def _worker_process(url: str, prepared: PreparedFit, lease_seconds: float, queue, parent_pid: int) -> None:
    """A local worker process of ``fit --workers W``: one BLAS thread, its own engine, ends with its parent.

    A project error (a lost database, a full disk) goes to the parent as its
    sentence, and the process exits with code 2.
    """
    die_with_parent(parent_pid)
    from threadpoolctl import threadpool_limits

    from motex_db.db import open_engine

    try:
        engine = open_engine(url)
        with threadpool_limits(1):
            run_worker(engine, prepared, lease_seconds, on_batch=lambda d, f: queue.put((d, f)))
        engine.dispose()
    except MotexError as exc:
        queue.put(("error", str(exc)))
        queue.close()
        queue.join_thread()
        os._exit(2)


def fit_catalogue(
    engine: Engine,
    structure: str,
    dataset: Optional[str],
    settings: FitSettings,
    workers: int = 1,
    retry_failed: bool = False,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    on_progress: Callable[[FitProgress], None] = lambda progress: None,
    batch_size: Optional[int] = None,
    series: Optional[str] = None,
) -> FitSummary:
    """Fit every motif of ``structure`` that has no result for (``dataset``, settings), or for a frame of ``series``.

    ``workers`` > 1 runs that many local processes; more processes anywhere may
    join by running the same command against the same database.
    """
    if workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}.")
    if lease_seconds <= 0:
        raise InputError(f"the lease must be positive, not {lease_seconds} s.")
    if (dataset is None) == (series is None):
        raise InputError("give a dataset (--data) or a series (--series), not both or neither.")
    jobs = (
        prepare_series_fit(engine, structure, series, settings)
        if series is not None
        else [prepare_fit(engine, structure, dataset, settings)]
    )
    retried = sum(delete_failed(engine, p.job) for p in jobs) if retry_failed else 0
    # catalogues and results arrive in bulk (sample, earlier fits): fresh statistics keep the planner's counts right
    analyze(engine, "motif", "fit_result", "fit_claim")
    # fits to do: per job, the (motif, dataset) pairs without a result
    todo = [reconnecting(engine, count_missing_fits, engine, p.job) for p in jobs]
    n_frames = sum(len(p.job.dataset_ids) for p in jobs)
    with Session(engine) as session:
        n_motifs = session.exec(
            select(sa.func.count()).select_from(Motif).where(Motif.starting_model_id == jobs[0].job.starting_model_id)
        ).one()
    first = jobs[0]
    summary = FitSummary(
        structure, series if series is not None else first.dataset, first.job.fit_config_id, first.settings.recipe,
        0, 0, 0.0, already_done=n_motifs * n_frames - sum(todo), retried=retried, workers=workers,
        n_frames=n_frames if series is not None else None,
    )
    progress = FitProgress(total=sum(todo))
    started = time.perf_counter()

    def advance(done: int, failed: int) -> None:
        progress.done += done
        progress.failed += failed
        progress.elapsed = time.perf_counter() - started
        on_progress(progress)

    for prepared, count in zip(jobs, todo):
        if count == 0:
            continue
        if workers == 1:
            run_worker(engine, prepared, lease_seconds, on_batch=advance, batch_size=batch_size)
        else:
            _run_local_workers(engine, prepared, workers, lease_seconds, advance)
    summary.seconds = time.perf_counter() - started
    summary.fitted, summary.failed = progress.done, progress.failed
    best = min((reconnecting(engine, best_fit, engine, p.job) for p in jobs), key=lambda b: (b[0] is None, b[0] or 0.0))
    summary.best_rwp, summary.best_motif_id, summary.best_motif_size, best_dataset = best
    if series is not None and best_dataset is not None:
        summary.best_frame = next(d.name for p in jobs for d in p.frames if d.id == best_dataset)
    summary.copied = sum(reconnecting(engine, count_copied, engine, p.job) for p in jobs)
    return summary


def count_copied(engine: Engine, job: FitJob) -> int:
    """How many of the job's results copy the fit of an image (same isometry signature)."""
    with Session(engine) as session:
        return session.exec(
            select(sa.func.count()).select_from(FitResult)
            .where(FitResult.dataset_id.in_(job.dataset_ids))
            .where(FitResult.fit_config_id == job.fit_config_id)
            .where(FitResult.fitted_motif_id.is_not(None))
        ).one()


def _run_local_workers(engine: Engine, prepared: PreparedFit, workers: int, lease_seconds: float, advance) -> None:
    import multiprocessing as mp
    import queue as queue_module

    context = mp.get_context("spawn")
    queue = context.Queue()
    url = engine.url.render_as_string(hide_password=False)
    processes = [
        context.Process(target=_worker_process, args=(url, prepared, lease_seconds, queue, os.getpid()), daemon=True)
        for _ in range(workers)
    ]
    # Started while Ctrl-C is ignored, the workers ignore it from their first instruction (Python keeps
    # an ignored SIGINT ignored): the terminal's Ctrl-C reaches the whole group, and the parent ends them.
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        for process in processes:
            process.start()
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, handler)
    errors: list[str] = []
    try:
        while any(p.is_alive() for p in processes) or not queue.empty():
            try:
                message = queue.get(timeout=0.2)
            except queue_module.Empty:
                continue
            if message[0] == "error":
                errors.append(message[1])
            else:
                advance(*message)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    if errors:
        raise MotexError(errors[0])
    failures = [p.exitcode for p in processes if p.exitcode != 0]
    if failures:
        raise RuntimeError(f"{len(failures)} of {workers} fit worker processes failed (exit codes {failures}).")


def fit_motifs_now(engine: Engine, prepared: PreparedFit, motif_ids: list[int]) -> list:
    """Fit the given motifs at once (no claims: for a handful, such as an extracted motif) to the job's datasets where
    one lacks a result; stores and returns the batches (one per dataset fitted; none when nothing was missing)."""
    with Session(engine) as session:
        masks = dict(session.exec(select(Motif.id, Motif.mask).where(Motif.id.in_(motif_ids))).all())
    frames, _ = missing_frames(engine, prepared.job, list(motif_ids))
    if not frames:
        return []
    batches = prepared.fitter().fit_frames(
        masks_from_text([masks[m] for m in motif_ids], prepared.model.n_permutable), frames
    )
    write_results(engine, prepared.job, worker_id(), list(motif_ids), batches, frames)
    return batches
