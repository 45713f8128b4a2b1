"""Step 4 in the record: ``motex-db explain`` and ``explain --series``.

The computation is :mod:`motex_db.contributions` (SHAP values, atom
contributions, the extracted motif, the convergence check: arrays in, arrays
out; its names are importable from here too). This module reads a trained
model and its training set from the record (:func:`motex_db.learning.load_training_set`),
stores the contributions under a claim (two identical commands: one works,
the other waits and reuses), adds and fits the extracted motif, and logs to
the model's MLflow run.

References: Anker et al., npj Comput. Mater. 8, 213 (2022) (ML-MotEx);
Lundberg et al., Nat. Mach. Intell. 2, 56 (2020) (TreeSHAP).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from motex_db.contributions import *  # noqa: F401,F403  (step 4's computation, importable from here)
from motex_db.contributions import (
    SHAP_MOTIFS,
    atom_contributions,
    explain_with_convergence,
    extracted_motif_mask,
    shap_rows,
    shap_values,
)
from motex_db.errors import InputError


# --------------------------------------------------------------------------
# Step 4 in the record: `motex-db explain`


@dataclass
class ExplainOutcome:
    """What ``explain`` did and found."""

    trained_model_id: int
    created: bool  # False: the contributions were already stored
    structure: str
    dataset: str
    fit_config_id: int
    elements: list  # of the permutable atoms, 1..N
    contributions: "pd.DataFrame"  # atom_index, element, contribution, uncertainty, confidence, contribution_half, contribution_three_quarters
    overall_confidence: float
    convergence: dict  # {"half"|"three_quarters": {"n_motifs", "sign_changes"}}
    extracted_mask: str
    extracted_motif_id: Optional[int]
    extracted_rwp: Optional[float]
    extracted_status: Optional[str]
    best_motif_id: Optional[int]
    best_rwp: Optional[float]
    mlflow_run_id: Optional[str]
    shap: Optional[np.ndarray] = None  # (m, N+1): SHAP values of the explained training motifs
    features: Optional[np.ndarray] = None  # their features (n_kept, then one 0/1 per atom)
    extracted_elements: Optional[list] = None
    extracted_positions: Optional[np.ndarray] = None
    starting_elements: Optional[list] = None  # every atom of the starting model
    starting_positions: Optional[np.ndarray] = None
    permutable: Optional[np.ndarray] = None  # (n_atoms,) bool
    bond_cutoff: Optional[float] = None  # Å
    n_training: Optional[int] = None  # training motifs in all (``features`` holds the explained subset)


def _latest_model(session, model_id: int, dataset_id: int, trained_model_id: Optional[int]):
    from sqlmodel import select

    from motex_db.models import TrainedModel

    if trained_model_id is not None:
        row = session.get(TrainedModel, trained_model_id)
        if row is None or row.starting_model_id != model_id or row.dataset_id != dataset_id:
            raise InputError(f"there is no trained model {trained_model_id} for this structure and dataset.")
        return row
    row = session.exec(
        select(TrainedModel)
        .where(TrainedModel.starting_model_id == model_id)
        .where(TrainedModel.dataset_id == dataset_id)
        .order_by(TrainedModel.id.desc())
    ).first()
    if row is None:
        raise InputError("no trained model for this structure and dataset yet: run motex-db train first.")
    return row


def _training_set(session, trained, n_permutable: int, features_cache: Optional[dict] = None):
    """The model's training set (:func:`motex_db.learning.load_training_set`), refusing one that is gone."""
    from motex_db.learning import load_training_set

    found = load_training_set(session, trained, n_permutable, features_cache)
    if found is None or not np.all(np.isfinite(found.rwp)):
        raise InputError(
            f"trained model {trained.id}'s motifs or fits are no longer all in the record: train again."
        )
    return found


def _stored_contributions(engine, trained_model_id: int) -> Optional[list]:
    from sqlmodel import Session, select

    from motex_db.models import AtomContribution

    with Session(engine) as session:
        rows = session.exec(
            select(AtomContribution).where(AtomContribution.trained_model_id == trained_model_id)
            .order_by(AtomContribution.atom_index)
        ).all()
    return list(rows) or None


def explain_model(
    engine,
    structure: str,
    dataset: str,
    trained_model_id: Optional[int] = None,
    min_confidence: Optional[float] = None,
    shap_motifs: Optional[int] = SHAP_MOTIFS,
    on_wait=None,
    on_model=None,
) -> ExplainOutcome:
    """SHAP contributions of a trained model's training motifs, stored as ``atom_contribution`` rows.

    The model is explained on a seeded subset of at most ``shap_motifs`` of
    its training motifs (None or 0: all; :func:`motex_db.contributions.shap_rows`);
    the number is stored in the model's ``training_log`` as ``explained_motifs``.
    The convergence check (contributions from models on the first half and
    three quarters of the fits, with this model's hyper-parameters) is
    computed and stored with them. Two identical commands at once: one
    computes, the other waits and reads the stored rows.

    The extracted motif (atoms with negative contribution, and confidence at
    least ``min_confidence`` when given, plus their bonded atoms) is added to
    the catalogue, linked to the model (``trained_model.extracted_motif_id``)
    and fitted with the model's fit configuration. ``on_model(row)`` is
    called with the trained model's row once it is found, before the work.
    """
    import pandas as pd
    from sqlmodel import Session, select

    from motex_db.catalogue import _insert_motifs, mask_to_text
    from motex_db.datasets import get_dataset
    from motex_db.db import transaction
    from motex_db.fitting.imported import IMPORT_RECIPE
    from motex_db.fitting.refine import motif_atoms
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import FitJob, best_fit, fit_motifs_now, prepare_fit
    from motex_db.learning import EXTRACTED_SAMPLER_PREFIX, run_once
    from motex_db.models import AtomContribution, FitConfig, FitResult, Motif, TrainedModel
    from motex_db.structures import get_starting_model, permutable_flags

    with Session(engine) as session:
        model = get_starting_model(session, structure)
        data = get_dataset(session, dataset)
        trained = _latest_model(session, model.id, data.id, trained_model_id)
        config = session.get(FitConfig, trained.fit_config_id)
        training = _training_set(session, trained, model.n_permutable)
    if on_model is not None:
        on_model(trained)
    flags = permutable_flags(model.elements, model.permutable_elements)
    perm_elements = [e for e, f in zip(model.elements, flags) if f]
    X_train = training.X_train
    X_explained = X_train[shap_rows(len(X_train), trained.seed, shap_motifs)]
    computed: dict = {}

    def compute():
        shap_matrix, found, parts = explain_with_convergence(
            trained.model, X_explained, training.masks, training.rwp, trained.hyperparameters, trained.seed, shap_motifs)
        convergence = {name: {k: v for k, v in part.items() if k != "contribution"} for name, part in parts.items()}
        with transaction(engine) as session:
            session.add_all([
                AtomContribution(trained_model_id=trained.id, atom_index=int(i), element=e, contribution=float(c),
                                 uncertainty=float(u), confidence=float(k), contribution_half=float(h),
                                 contribution_three_quarters=float(t))
                for i, e, c, u, k, h, t in zip(found.atom_index, perm_elements, found.contribution, found.uncertainty,
                                               found.confidence, parts["half"]["contribution"],
                                               parts["three_quarters"]["contribution"])
            ])
            row = session.get(TrainedModel, trained.id)
            row.overall_confidence = float(found.overall_confidence)
            row.convergence = convergence
            row.training_log = {**(row.training_log or {}), "explained_motifs": len(X_explained)}
            session.add(row)
        computed.update(shap=shap_matrix)
        return _stored_contributions(engine, trained.id)

    stored, created = run_once(engine, f"explain:{trained.id}", lambda: _stored_contributions(engine, trained.id),
                               compute, on_wait)
    with Session(engine) as session:
        convergence = session.get(TrainedModel, trained.id).convergence or {}
    frame = pd.DataFrame({
        "atom_index": [c.atom_index for c in stored], "element": [c.element for c in stored],
        "contribution": [c.contribution for c in stored], "uncertainty": [c.uncertainty for c in stored],
        "confidence": [c.confidence for c in stored],
        "contribution_half": [c.contribution_half for c in stored],
        "contribution_three_quarters": [c.contribution_three_quarters for c in stored],
    })
    overall = float(np.mean(frame["confidence"]))
    # the SHAP values the files and plots show: computed now, or again for a model explained before
    shap_matrix = computed.get("shap")
    if shap_matrix is None:
        shap_matrix = shap_values(trained.model, X_explained)

    keep = frame["contribution"].to_numpy() < 0
    if min_confidence is not None:
        if not np.isfinite(min_confidence) or min_confidence < 0:
            raise InputError(f"The minimum confidence must be a number >= 0, not {min_confidence}.")
        keep &= frame["confidence"].to_numpy() >= min_confidence
    extracted = mask_to_text(keep)
    extracted_elements, extracted_positions = motif_atoms(model, extracted)
    extracted_id = extracted_rwp = extracted_status = None
    # scores imported from elsewhere cannot be computed here: the extracted motif is stored, not fitted
    computable = config.recipe != IMPORT_RECIPE
    prepared = prepare_fit(engine, structure, dataset, FitSettings.from_dict(config.settings)) if computable else None
    if keep.any():
        with transaction(engine) as session:
            row = session.get(type(model), model.id)
            _insert_motifs(session, row, [extracted], f"{EXTRACTED_SAMPLER_PREFIX} from trained model {trained.id}")
            extracted_id = session.exec(
                select(Motif.id).where(Motif.starting_model_id == model.id).where(Motif.mask == extracted)
            ).one()
            linked = session.get(TrainedModel, trained.id)
            linked.extracted_motif_id = extracted_id
            session.add(linked)

        def stored_fit():
            with Session(engine) as session:
                return session.exec(
                    select(FitResult).where(FitResult.motif_id == extracted_id)
                    .where(FitResult.dataset_id == data.id).where(FitResult.fit_config_id == config.id)
                ).first()

        result = stored_fit()
        if result is None and computable:
            fit_motifs_now(engine, prepared, [extracted_id])
            result = stored_fit()
        if result is not None:
            extracted_rwp, extracted_status = result.rwp, result.status
    best_rwp, best_id, _, _ = best_fit(engine, FitJob(model.id, (data.id,), config.id))
    return ExplainOutcome(
        trained_model_id=trained.id, created=created, structure=structure, dataset=dataset,
        fit_config_id=config.id, elements=perm_elements, contributions=frame, overall_confidence=overall,
        convergence=convergence,
        extracted_mask=extracted, extracted_motif_id=extracted_id, extracted_rwp=extracted_rwp,
        extracted_status=extracted_status, best_motif_id=best_id, best_rwp=best_rwp,
        mlflow_run_id=trained.mlflow_run_id, shap=shap_matrix, features=X_explained,
        starting_elements=list(model.elements), starting_positions=model.positions, permutable=flags,
        bond_cutoff=model.bond_cutoff,
        extracted_elements=extracted_elements, extracted_positions=extracted_positions,
        n_training=len(X_train),
    )


def log_explanation(tracker, outcome: ExplainOutcome, files: dict) -> Optional[str]:
    """Attach the explanation's files and its figures to the trained model's MLflow run.

    ``tracker``: an open :class:`motex_db.tracking.Tracker`, or a
    :class:`motex_db.tracker_process.TrackerProcess` sent ``open()`` (this
    waits until it has logged everything). Metrics: the overall confidence,
    the extracted motif's Rwp and size (kept permutable atoms) and the best
    sampled Rwp, so runs compare by them. Returns a sentence saying why
    nothing was logged when the store does not hold the model's run, else None.
    """
    if not outcome.mlflow_run_id:
        return None
    if not tracker.has_run(outcome.mlflow_run_id):
        return tracker.missing_run_note(outcome.mlflow_run_id, f"trained model {outcome.trained_model_id}")
    tracker.log_values(outcome.mlflow_run_id, metrics={
        "overall_confidence": outcome.overall_confidence,
        "extracted_rwp": outcome.extracted_rwp if outcome.extracted_rwp is not None else float("nan"),
        "extracted_size": outcome.extracted_mask.count("1"),
        "best_rwp": outcome.best_rwp if outcome.best_rwp is not None else float("nan"),
    })
    tracker.log_artifacts(outcome.mlflow_run_id, list(files.values()), "explain")
    tracker.flush()  # the files may be in a scratch folder
    return None


# --------------------------------------------------------------------------
# Step 4 for a time-resolved series: `motex-db explain --series`


@dataclass(frozen=True)
class _StoredContributions:
    """A frame's contributions read back from its ``atom_contribution`` rows."""

    atom_index: np.ndarray
    contribution: np.ndarray
    uncertainty: np.ndarray
    confidence: np.ndarray
    overall_confidence: float


@dataclass
class SeriesExplainOutcome:
    """Contributions of every frame's model of a series, and each frame's extracted motif."""

    structure: str
    series: str
    fit_config_id: int
    elements: list  # of the permutable atoms, 1..N
    # frame, dataset_id, time, trained_model_id, created, overall_confidence, extracted_mask,
    # extracted_motif_id, extracted_rwp, best_rwp
    frames: "pd.DataFrame"
    # one row per frame and atom: frame, time, atom_index, element, contribution, uncertainty, confidence
    contributions: "pd.DataFrame"
    parent_run_id: Optional[str]

    @property
    def n_created(self) -> int:
        return int(self.frames["created"].sum())


SERIES_SHAP_MOTIFS = 500


def explain_series(
    engine,
    structure: str,
    series: str,
    min_confidence: Optional[float] = None,
    on_frame=lambda done, total: None,
    shap_motifs: Optional[int] = SERIES_SHAP_MOTIFS,
    workers: Optional[int] = None,
) -> SeriesExplainOutcome:
    """SHAP contributions for the latest model of every frame of a series (from ``train --series``).

    Per frame as :func:`explain_model`, without the convergence models (run
    ``explain --data FRAME`` for one frame's convergence): contributions,
    uncertainty and confidence rows, and the extracted motif. The extracted
    motifs of all frames are added to the catalogue and fitted to every frame
    at once (one series fit, the motifs' PDFs shared across frames).

    TreeSHAP costs trees x leaves x depth^2 per motif, and a frame's model
    often holds a thousand trees or more, so by default each frame is
    explained on a seeded random subset of ``shap_motifs`` of its training
    motifs (``None`` or 0: all of them). The frames of a series share their
    catalogue and split, so every frame is explained on the same motifs. The
    contribution is a difference of two means over about ``shap_motifs``/2
    motifs each; the subset moves it by about 2 x uncertainty / sqrt(shap_motifs)
    (9 % of the uncertainty for 500), and leaves the uncertainty (a standard
    deviation) unbiased. The number used is stored in the model's
    ``training_log`` as ``explained_motifs``.
    """
    import pandas as pd
    import sqlalchemy as sa
    from sqlmodel import Session, select

    from motex_db.catalogue import _insert_motifs, mask_to_text
    from motex_db.db import transaction
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import fit_motifs_now, prepare_series_fit
    from motex_db.learning import EXTRACTED_SAMPLER_PREFIX
    from motex_db.models import FitResult, Motif, TrainedModel
    from motex_db.processes import helper_processes, local_workers
    from motex_db.structures import permutable_flags

    model, frames, trained, config, stored = _series_models(engine, structure, series)
    flags = permutable_flags(model.elements, model.permutable_elements)
    perm_elements = [e for e, f in zip(model.elements, flags) if f]
    left = sum(trained[f.id].id not in stored for f in frames)
    cores = os.cpu_count() or 1
    n_workers = local_workers(workers, left)
    shap_threads = max(1, cores // max(1, n_workers))
    url = engine.url.render_as_string(hide_password=False)
    with helper_processes(_explain_frames_worker, [(url, structure, series, shap_motifs, k, shap_threads, os.getpid())
                                                   for k in range(1, n_workers)]):
        created = _explain_frames(engine, frames, trained, stored, model.n_permutable, perm_elements, shap_motifs,
                                  on_frame, 0, shap_threads)
    found_by_frame = {}
    for frame in frames:
        rows = stored[trained[frame.id].id]
        confidence = np.array([c.confidence for c in rows])
        found_by_frame[frame.id] = _StoredContributions(
            np.array([c.atom_index for c in rows]), np.array([c.contribution for c in rows]),
            np.array([c.uncertainty for c in rows]), confidence, float(np.mean(confidence)),
        )

    # the extracted motifs, fitted to every frame in one go
    extracted = {f.id: mask_to_text(extracted_motif_mask(found_by_frame[f.id], min_confidence)) for f in frames}
    wanted = sorted({m for m in extracted.values() if "1" in m})
    with transaction(engine) as session:
        row = session.get(type(model), model.id)
        for frame in frames:
            if "1" in extracted[frame.id]:
                _insert_motifs(session, row, [extracted[frame.id]],
                               f"{EXTRACTED_SAMPLER_PREFIX} from trained model {trained[frame.id].id}")
    with Session(engine) as session:
        ids = dict(session.exec(
            select(Motif.mask, Motif.id).where(Motif.starting_model_id == model.id).where(Motif.mask.in_(wanted))
        ).all()) if wanted else {}
    links = [{"row": trained[f.id].id, "motif": ids[extracted[f.id]]} for f in frames if extracted[f.id] in ids]
    if links:
        with transaction(engine) as session:  # without loading each row's model
            session.connection().execute(
                sa.update(TrainedModel.__table__).where(TrainedModel.__table__.c.id == sa.bindparam("row"))
                .values(extracted_motif_id=sa.bindparam("motif")), links)
    if ids:
        for prepared in prepare_series_fit(engine, structure, series, FitSettings.from_dict(config.settings)):
            fit_motifs_now(engine, prepared, sorted(ids.values()))
    frame_ids = [f.id for f in frames]
    with Session(engine) as session:
        rwp_of = {
            (m, d): (rwp, status)
            for m, d, rwp, status in session.exec(
                select(FitResult.motif_id, FitResult.dataset_id, FitResult.rwp, FitResult.status)
                .where(FitResult.motif_id.in_(list(ids.values())))
                .where(FitResult.dataset_id.in_(frame_ids))
                .where(FitResult.fit_config_id == config.id)
            ).all()
        } if ids else {}
        best = dict(session.exec(
            select(FitResult.dataset_id, sa.func.min(FitResult.rwp))
            .join(Motif, Motif.id == FitResult.motif_id)
            .where(Motif.starting_model_id == model.id)
            .where(FitResult.dataset_id.in_(frame_ids))
            .where(FitResult.fit_config_id == config.id)
            .where(FitResult.status == "ok")
            .group_by(FitResult.dataset_id)
        ).all())
    table, long = [], []
    for frame in frames:
        found = found_by_frame[frame.id]
        mask = extracted[frame.id]
        motif_id = ids.get(mask)
        rwp, _ = rwp_of.get((motif_id, frame.id), (None, None))
        table.append({
            "frame": frame.name, "dataset_id": frame.id, "time": frame.time,
            "trained_model_id": trained[frame.id].id, "created": frame.id in created,
            "overall_confidence": float(found.overall_confidence), "extracted_mask": mask,
            "extracted_motif_id": motif_id, "extracted_rwp": rwp, "best_rwp": best.get(frame.id),
        })
        long.append(pd.DataFrame({
            "frame": frame.name, "time": frame.time, "atom_index": found.atom_index, "element": perm_elements,
            "contribution": found.contribution, "uncertainty": found.uncertainty, "confidence": found.confidence,
        }))
    parent = (trained[frames[-1].id].training_log or {}).get("search", {}).get("parent_run_id")
    return SeriesExplainOutcome(
        structure, series, config.id, perm_elements, pd.DataFrame(table), pd.concat(long, ignore_index=True), parent,
    )


def _series_models(engine, structure: str, series: str) -> tuple:
    """(starting model, frames, latest model per frame id, fit config, stored contributions per model id)."""
    from sqlmodel import Session, select

    from motex_db.datasets import get_series_frames
    from motex_db.models import AtomContribution, FitConfig, TrainedModel
    from motex_db.structures import get_starting_model

    with Session(engine) as session:
        model = get_starting_model(session, structure)
        frames = get_series_frames(session, series)
        trained = {}
        for frame in frames:
            row = session.exec(
                select(TrainedModel)
                .where(TrainedModel.starting_model_id == model.id)
                .where(TrainedModel.dataset_id == frame.id)
                .where(TrainedModel.series == series)
                .order_by(TrainedModel.id.desc())
            ).first()
            if row is None:
                raise InputError(
                    f"frame '{frame.name}' has no model of series '{series}': "
                    f"run motex-db train --structure {structure} --series {series} first."
                )
            trained[frame.id] = row
        config_ids = {row.fit_config_id for row in trained.values()}
        if len(config_ids) > 1:
            raise InputError(
                f"the frames' latest models of series '{series}' come from different fit configs "
                f"({', '.join(map(str, sorted(config_ids)))}): run motex-db train --series {series} again."
            )
        config = session.get(FitConfig, config_ids.pop())
        stored: dict[int, list] = {}
        for row in session.exec(
            select(AtomContribution)
            .where(AtomContribution.trained_model_id.in_([t.id for t in trained.values()]))
            .order_by(AtomContribution.trained_model_id, AtomContribution.atom_index)
        ).all():
            stored.setdefault(row.trained_model_id, []).append(row)
    return model, frames, trained, config, stored


def _explain_frames(engine, frames, trained: dict, stored: dict, n_permutable: int, perm_elements: list,
                    shap_motifs: Optional[int], on_frame, offset: int = 0, shap_threads: Optional[int] = None) -> set:
    """Explain every frame not stored yet, each under its claim, until all are stored; the frame ids done here.

    ``stored`` (contributions per model id) is filled in as frames are
    stored, here or by other processes. ``offset`` rotates where this
    process starts, so that processes started together take different frames.
    """
    from motex_db.learning import POLL_SECONDS, claim, holding
    from motex_db.processes import worker_identity

    worker = worker_identity()
    created: set = set()
    features_cache: dict = {}  # the frames' models share their training motifs
    # Each frame is explained under its claim and committed alone: processes on one record
    # (on one machine or many) split the frames, and a killed one loses only its current frame.
    while True:
        left = [f for f in frames if trained[f.id].id not in stored]
        on_frame(len(frames) - len(left), len(frames))
        if not left:
            break
        progressed = False
        for frame in left[offset % len(left):] + left[:offset % len(left)]:
            row = trained[frame.id]
            key = f"explain:{row.id}"
            if not claim(engine, key, worker):
                continue
            with holding(engine, key, worker):
                if _stored_contributions(engine, row.id) is None:
                    _explain_frame(engine, row, n_permutable, perm_elements, shap_motifs, shap_threads,
                                   features_cache)
                    created.add(frame.id)
            stored[row.id] = _stored_contributions(engine, row.id)
            progressed = True
            on_frame(len(frames) - len(left) + 1, len(frames))
        if not progressed:
            time.sleep(POLL_SECONDS)
            for frame in left:  # stored by another process meanwhile
                found = _stored_contributions(engine, trained[frame.id].id)
                if found is not None:
                    stored[trained[frame.id].id] = found
    return created


def _explain_frames_worker(url: str, structure: str, series: str, shap_motifs: Optional[int], offset: int,
                           shap_threads: int, parent_pid: int) -> None:
    """A helper process of :func:`explain_series`: explains frames by their claims until all are stored."""
    from motex_db.db import open_engine
    from motex_db.processes import die_with_parent
    from motex_db.structures import permutable_flags

    die_with_parent(parent_pid)
    engine = open_engine(url)
    try:
        model, frames, trained, _, stored = _series_models(engine, structure, series)
        flags = permutable_flags(model.elements, model.permutable_elements)
        perm_elements = [e for e, f in zip(model.elements, flags) if f]
        _explain_frames(engine, frames, trained, stored, model.n_permutable, perm_elements, shap_motifs,
                        lambda done, total: None, offset, shap_threads)
    finally:
        engine.dispose()


def _explain_frame(engine, row, n_permutable: int, perm_elements: list, shap_motifs: Optional[int],
                   shap_threads: Optional[int] = None, features_cache: Optional[dict] = None) -> None:
    """One frame's contributions (no convergence models), committed in one transaction."""
    import sqlalchemy as sa
    from sqlmodel import Session, select

    from motex_db.db import transaction
    from motex_db.models import AtomContribution, TrainedModel

    with Session(engine) as session:
        X_train = _training_set(session, row, n_permutable, features_cache).X_train
    X_train = X_train[shap_rows(len(X_train), row.seed, shap_motifs)]
    found = atom_contributions(shap_values(row.model, X_train, n_jobs=shap_threads), X_train)
    with transaction(engine) as session:
        session.add_all([
            AtomContribution(trained_model_id=row.id, atom_index=int(i), element=e, contribution=float(c),
                             uncertainty=float(u), confidence=float(k))
            for i, e, c, u, k in zip(found.atom_index, perm_elements, found.contribution,
                                     found.uncertainty, found.confidence)
        ])
        # the row's training log and confidence, without loading its model
        log = session.exec(select(TrainedModel.training_log).where(TrainedModel.id == row.id)).one()
        session.connection().execute(
            sa.update(TrainedModel.__table__).where(TrainedModel.__table__.c.id == row.id).values(
                overall_confidence=float(found.overall_confidence),
                training_log={**(log or {}), "explained_motifs": len(X_train)}))


def log_series_explanation(record_url: str, outcome: SeriesExplainOutcome, files: dict,
                           mlflow_uri: Optional[str] = None) -> Optional[str]:
    """Attach the series' contribution tables to its parent MLflow run, and each frame's confidence to its child run.

    Returns a sentence saying why nothing was logged when the store does not
    hold the parent run, else None; frames whose runs it does not hold are left out.
    """
    import time

    from mlflow.entities import Metric
    from sqlmodel import Session, select

    from motex_db.db import open_engine
    from motex_db.models import TrainedModel
    from motex_db.tracking import open_tracker

    if not outcome.parent_run_id:
        return None
    engine = open_engine(record_url)
    with Session(engine) as session:
        runs = dict(session.exec(select(TrainedModel.id, TrainedModel.mlflow_run_id).where(
            TrainedModel.id.in_([int(i) for i in outcome.frames["trained_model_id"]]))).all())
    engine.dispose()
    tracker = open_tracker(record_url, mlflow_uri)
    if not tracker.has_run(outcome.parent_run_id):
        return tracker.missing_run_note(outcome.parent_run_id, f"series '{outcome.series}'")
    now = int(time.time() * 1000)
    with tracker.logging():
        for r in outcome.frames.itertuples():
            if tracker.has_run(runs.get(r.trained_model_id)):
                tracker.client.log_batch(runs[r.trained_model_id],
                                         metrics=[Metric("overall_confidence", float(r.overall_confidence), now, 0)])
        for path in files.values():
            tracker.client.log_artifact(outcome.parent_run_id, str(path), artifact_path="explain")
    return None
