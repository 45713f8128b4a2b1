"""Step 3 in the record: ``motex-db train`` and ``train --series``.

The computation is :mod:`motex_db.surrogate`: arrays in, arrays out (its
names are importable from here too, as before the split). This module is the
thin layer around it:

- which fits a model learns from (:func:`load_fits`) and, for a stored model,
  its training set again (:func:`load_training_set`, the one loader that
  ``explain`` and the reports use);
- claims (:func:`run_once`): a lease per unit of work in ``learning_claim``,
  so that two identical commands, or many processes on many machines, neither
  duplicate nor lose work: one does it, the others wait and reuse it;
- the record's rows, each committed as soon as its work is done, before its
  MLflow artefacts;
- MLflow runs, opened when the work starts and logged as it goes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Optional

import numpy as np

from motex_db.catalogue import POLISH_SAMPLER
from motex_db.errors import InputError
from motex_db.surrogate import *  # noqa: F401,F403  (step 3's computation, importable from here)
from motex_db.surrogate import (
    COST_TOLERANCE,
    CV_FOLDS,
    MIN_MOTIFS,
    N_INITIAL,
    N_ITER,
    PATIENCE,
    SearchSpace,
    SurrogateResult,
    Trial,
    _check_seed,
    check_targets,
    evaluate,
    features,
    model_to_json,
    split,
    train_final,
    train_surrogate,
)

# bump when the same inputs would give another model
LEARNING_VERSION = "motex-learning 3"  # 2: early stopping in the CV folds, search stopping, tree budget;
# 3: trials scored on the validation part, four at a time, 3000-round budget
EXTRACTED_SAMPLER_PREFIX = "extracted"
# A claim's lease: its holder renews it every third of this while it works, so
# only a holder that died (or lost the database) lets it run out. A holder on
# this machine that is gone is seen at once (fit claims do the same).
LEASE_SECONDS = 60.0
POLL_SECONDS = 0.5


# --------------------------------------------------------------------------
# Claims: one process does a unit of work, the others wait for it


def _insert_ignoring_conflict(session, table, rows: list[dict], key: str):
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).on_conflict_do_nothing(index_elements=[key]).returning(table.c.id)
    return session.execute(statement, rows).scalars().all()


def claim(engine, key: str, worker: str, lease_seconds: float = LEASE_SECONDS) -> bool:
    """Take the lease on ``key`` for ``worker``; False while another live worker holds it."""
    import sqlalchemy as sa
    from sqlmodel import select

    from motex_db.db import transaction
    from motex_db.models import LearningClaim, utcnow
    from motex_db.processes import process_gone

    with transaction(engine) as session:
        now = utcnow()
        # Claims of holders that are gone (killed after storing their result, say) are swept
        # here, whatever their key: there are only ever as many claims as live workers.
        stale = [row.id for row in session.exec(select(LearningClaim)).all()
                 if row.worker != worker and (_aware(row.expires_at, now) < now or process_gone(row.worker))]
        if stale:
            session.execute(sa.delete(LearningClaim).where(LearningClaim.id.in_(stale)))
        holder = session.exec(select(LearningClaim).where(LearningClaim.key == key)).first()
        if holder is not None:
            if holder.worker != worker:
                return False
            holder.expires_at = now + timedelta(seconds=lease_seconds)
            session.add(holder)
            return True
        row = {"key": key, "worker": worker, "expires_at": now + timedelta(seconds=lease_seconds)}
        return bool(_insert_ignoring_conflict(session, LearningClaim.__table__, [row], "key"))


def _aware(moment, now):
    """SQLite hands back naive datetimes (stored as UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=now.tzinfo)


def release(engine, key: str, worker: str) -> None:
    """Drop ``worker``'s lease on ``key`` (nothing if it has none)."""
    import sqlalchemy as sa

    from motex_db.db import transaction
    from motex_db.models import LearningClaim

    with transaction(engine) as session:
        session.execute(sa.delete(LearningClaim).where(LearningClaim.key == key).where(LearningClaim.worker == worker))


def _renew(engine, key: str, worker: str, lease_seconds: float) -> None:
    import sqlalchemy as sa

    from motex_db.db import transaction
    from motex_db.models import LearningClaim, utcnow

    with transaction(engine) as session:
        session.execute(
            sa.update(LearningClaim).where(LearningClaim.key == key).where(LearningClaim.worker == worker)
            .values(expires_at=utcnow() + timedelta(seconds=lease_seconds))
        )


@contextlib.contextmanager
def holding(engine, key: str, worker: str, lease_seconds: float = LEASE_SECONDS):
    """Keep ``worker``'s lease on ``key`` alive while the block runs; release it afterwards."""
    stop = threading.Event()

    def heartbeat():
        while not stop.wait(lease_seconds / 3):
            try:
                _renew(engine, key, worker, lease_seconds)
            except Exception:  # a missed renewal only shortens the lease; the work goes on
                pass

    thread = threading.Thread(target=heartbeat, name=f"lease {key[:16]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        release(engine, key, worker)


def run_once(
    engine,
    key: str,
    find: Callable[[], Any],
    work: Callable[[], Any],
    on_wait: Optional[Callable[[], None]] = None,
    lease_seconds: float = LEASE_SECONDS,
    worker: Optional[str] = None,
) -> tuple[Any, bool]:
    """``find()`` when it finds the stored result, else ``work()`` under the claim on ``key``.

    Returns (result, done here). While another live process holds the claim,
    waits (calling ``on_wait`` each poll) until its result is stored, or its
    lease runs out and the work is taken over. ``find`` returns None for
    "not stored yet".
    """
    from motex_db.processes import worker_identity

    worker = worker or worker_identity()
    while True:
        found = find()
        if found is not None:
            return found, False
        if claim(engine, key, worker, lease_seconds):
            with holding(engine, key, worker, lease_seconds):
                found = find()  # stored between our look and our claim
                if found is not None:
                    return found, False
                return work(), True
        if on_wait is not None:
            on_wait()
        time.sleep(POLL_SECONDS)


# --------------------------------------------------------------------------
# Which fits, and a stored model's training set


def choose_fit_config(session, model_id: int, dataset_id: int, fit_config_id: Optional[int]) -> int:
    """The fit configuration to learn from: the one given, else the one with the most 'ok' fits."""
    import sqlalchemy as sa
    from sqlmodel import select

    from motex_db.models import FitConfig, FitResult, Motif

    counts = session.exec(
        select(FitResult.fit_config_id, sa.func.count())
        .join(Motif, Motif.id == FitResult.motif_id)
        .where(Motif.starting_model_id == model_id)
        .where(FitResult.dataset_id == dataset_id)
        .where(FitResult.status == "ok")
        .group_by(FitResult.fit_config_id)
    ).all()
    if fit_config_id is not None:
        if session.get(FitConfig, fit_config_id) is None:
            raise InputError(f"there is no fit config with id {fit_config_id}.")
        return fit_config_id
    if not counts:
        raise InputError("no successful fits for this structure and dataset yet: run motex-db fit first.")
    return max(counts, key=lambda row: (row[1], row[0]))[0]


def _fit_rows(session, dataset_id: int, fit_config_id: int, model_id: int, masks: bool = True):
    """(motif id, mask, Rwp) of the 'ok' fits of a starting model's sampled motifs, by motif id
    (without ``masks``: (motif id, Rwp))."""
    from sqlmodel import select

    from motex_db.models import FitResult, Motif

    columns = (Motif.id, Motif.mask, FitResult.rwp) if masks else (Motif.id, FitResult.rwp)
    return session.exec(
        select(*columns)
        .join(FitResult, FitResult.motif_id == Motif.id)
        .where(FitResult.dataset_id == dataset_id)
        .where(FitResult.fit_config_id == fit_config_id)
        .where(Motif.starting_model_id == model_id).where(FitResult.status == "ok")
        .where(~Motif.sampler.startswith(EXTRACTED_SAMPLER_PREFIX))
        .where(~Motif.sampler.startswith(POLISH_SAMPLER))
        .order_by(Motif.id)
    ).all()


def load_fits(session, model_id: int, dataset_id: int, fit_config_id: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(motif ids, masks, Rwp) of the successful fits of sampled motifs, ordered by motif id.

    Motifs that an explanation extracted, and those a polish evaluated, are left
    out: they are answers, not samples, and leaving them out keeps a model
    reproducible from its catalogue.
    """
    rows = _fit_rows(session, dataset_id, fit_config_id, model_id=model_id)
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    return ids, [r[1] for r in rows], np.array([r[2] for r in rows], dtype=np.float64)


def load_fit_values(session, model_id: int, dataset_id: int, fit_config_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(motif ids, Rwp) of :func:`load_fits`, without reading the masks (a series' frames share them)."""
    rows = _fit_rows(session, dataset_id, fit_config_id, model_id=model_id, masks=False)
    return np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float64)


def _motif_features(session, ids: np.ndarray, n_permutable: int, cache: Optional[dict] = None,
                    ) -> Optional[np.ndarray]:
    """The features of motifs ``ids`` in that order (None when some are gone from the catalogue), read
    once per list of ids when ``cache`` (a dict the caller keeps) is given: a series' frames share theirs."""
    from sqlmodel import select

    from motex_db.catalogue import masks_from_text
    from motex_db.models import Motif

    key = (n_permutable, hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest())
    if cache is not None and key in cache:
        return cache[key]
    texts = dict(session.exec(select(Motif.id, Motif.mask).where(Motif.id.in_([int(i) for i in ids]))).all())
    if len(texts) != len(ids):
        return None
    X = features(masks_from_text([texts[int(i)] for i in ids], n_permutable))
    if cache is not None:
        cache[key] = X
    return X


@dataclass(frozen=True)
class TrainingSet:
    """A stored model's motifs in its order, with their Rwp, features and split.

    Rows follow ``trained_model.motif_ids``; ``rwp`` is NaN for a motif whose
    fit is gone since. ``X_train`` = ``X[train_idx]``: the motifs step 4 explains.
    """

    motif_ids: np.ndarray
    masks: np.ndarray  # (n, N) bool
    rwp: np.ndarray
    X: np.ndarray  # (n, N + 1)
    train_idx: np.ndarray
    test_idx: np.ndarray

    @property
    def X_train(self) -> np.ndarray:
        return self.X[self.train_idx]


def load_training_set(session, trained, n_permutable: int, features_cache: Optional[dict] = None,
                      ) -> Optional[TrainingSet]:
    """The training set of a stored model, rebuilt from the record; None when it cannot be.

    The stored motif ids and seed give back the exact split (``split`` is a
    function of the count and the seed). None when the model has no motif
    list or some of its motifs are gone from the catalogue. ``features_cache``
    (a dict the caller keeps, see :func:`_motif_features`) holds the features
    of motif lists already read: the frames of a series share theirs, and
    only their Rwp differ.
    """
    from sqlmodel import select

    from motex_db.models import FitResult

    if trained.motif_ids is None or len(trained.motif_ids) < 2:
        return None
    ids = np.asarray(trained.motif_ids, dtype=np.int64)
    X = _motif_features(session, ids, n_permutable, features_cache)
    if X is None:
        return None
    masks = X[:, 1:].astype(bool)
    # every fit of the dataset and config, matched here: a list of 10^4 ids bound as query parameters
    # cost more than the rows the query then reads in excess
    fitted = dict(session.connection().execute(
        select(FitResult.motif_id, FitResult.rwp).where(FitResult.dataset_id == trained.dataset_id)
        .where(FitResult.fit_config_id == trained.fit_config_id)
    ).all())
    rwp = np.array([fitted.get(int(i), np.nan) for i in ids], dtype=np.float64)  # NaN: a fit gone (or without Rwp)
    train_idx, test_idx = split(len(ids), int(trained.seed))
    return TrainingSet(ids, masks, rwp, X, train_idx, test_idx)


def _inputs_hash(model_id, dataset_id, fit_config_id, ids, rwp, seed, n_iter, cv, full_search=False) -> str:
    digest = hashlib.sha256()
    digest.update(repr((LEARNING_VERSION, model_id, dataset_id, fit_config_id, seed, n_iter, cv)).encode())
    if full_search:
        digest.update(b"full search")
    digest.update(np.ascontiguousarray(ids).tobytes())
    digest.update(np.ascontiguousarray(rwp).tobytes())
    return digest.hexdigest()


def _stored_model(engine, inputs_hash: str):
    from sqlmodel import Session, select

    from motex_db.models import TrainedModel

    with Session(engine) as session:
        return session.exec(select(TrainedModel).where(TrainedModel.inputs_hash == inputs_hash)).first()


def _store_model(engine, row):
    """Commit a new trained_model row; the stored one when an identical row got there first."""
    import sqlalchemy as sa

    from motex_db.db import transaction

    try:
        with transaction(engine) as session:
            session.add(row)
            session.flush()
            return row, True
    except sa.exc.IntegrityError:
        stored = _stored_model(engine, row.inputs_hash)
        if stored is None:
            raise
        return stored, False


# --------------------------------------------------------------------------
# MLflow: what a training run carries


def run_tags(structure: str, dataset: str, fit_config_id: int, n_motifs: int, kind: str) -> dict[str, str]:
    """The tags every motex-db MLflow run carries, so runs compare side by side."""
    from motex_db import __version__

    return {
        "structure": structure, "dataset": dataset, "fit_config": str(fit_config_id),
        "n_motifs": str(n_motifs), "motex_db.kind": kind, "motex_db.version": __version__,
    }


def run_params(config, structure: str, dataset: str, n_motifs: int, n_permutable: int, seed: int, **extra) -> dict:
    """A training run's params: the structure, the data, the fit recipe and its settings, the sizes and seed.

    These are what the MLflow UI compares runs by (issue 14): calculator, r
    and Q ranges, Q damping and the zoom mode of the fit configuration.
    """
    free = (config.settings or {}).get("free") or ()
    zoom = "zoom3" if "zoom3" in free else "zoom" if "zoom" in free else "fixed"
    return {
        "structure": structure, "dataset": dataset, "recipe": config.recipe, "fit_config": config.id,
        "calculator": config.calculator, "rmin": config.rmin, "rmax": config.rmax, "qmin": config.qmin,
        "qmax": config.qmax, "qdamp": config.qdamp, "zoom_mode": zoom, "n_motifs": n_motifs,
        "n_permutable": n_permutable, "seed": seed, **extra,
    }


def _trial_logger(tracker, run_id: str, structure: str, dataset: str, fit_config_id: int, n_motifs: int):
    """on_trial_done for the search: each trial a finished child run with its real start and end."""
    tags = run_tags(structure, dataset, fit_config_id, n_motifs, "trial")

    def log(trial: Trial) -> None:
        tracker.log_child(run_id, f"trial {trial.index}", tags, trial.params,
                          {"cv_mae": trial.cv_mae, "n_rounds": trial.n_rounds, "pruned": float(trial.pruned)},
                          trial.started, trial.finished)
        tracker.check()  # a store that cannot be used stops the search now, not at its end

    return log


def _log_result(tracker, run_id: str, result: SurrogateResult, row_id: int) -> None:
    """After the row is committed: the run's metrics, the loss curve, the files and the model; then FINISHED."""
    import json

    tracker.log_values(
        run_id,
        metrics={**{f"test_{k}": v for k, v in result.metrics.items()}, "best_cv_mae": result.best_cv_mae,
                 "lowest_cv_mae": result.lowest_cv_mae, "best_iteration": result.best_iteration,
                 "n_trials": len(result.trials)},
        params={f"xgb_{k}": v for k, v in result.hyperparameters.items()},
        tags={"trained_model_id": row_id},
    )
    tracker.log_series(run_id, {f"{part}_{name}": values for part, series in result.learning_curve.items()
                                for name, values in series.items()})
    tracker.log_files(run_id, {
        "learning_curve.json": json.dumps(result.learning_curve),
        "trials.json": json.dumps([t.as_dict() for t in result.trials]),
        "test_predictions.json": json.dumps({"y_test": result.y_test.tolist(), "y_pred": result.y_pred_test.tolist()}),
    }, "training")
    tracker.log_files(run_id, {"model.json": result.model_json}, "model")
    tracker.finish_run(run_id)


# --------------------------------------------------------------------------
# `motex-db train`


@dataclass
class TrainOutcome:
    """What ``train`` did: the stored row (new or reused) and, when trained now, the result."""

    trained_model_id: int
    created: bool
    structure: str
    dataset: str
    fit_config_id: int
    n_motifs: int
    metrics: dict
    hyperparameters: dict
    mlflow_run_id: Optional[str]
    ui_command: Optional[str]
    result: Optional[SurrogateResult] = None
    seconds: float = 0.0


def train_model(
    engine,
    structure: str,
    dataset: str,
    fit_config_id: Optional[int] = None,
    n_iter: int = N_ITER,
    cv: int = CV_FOLDS,
    seed: int = 0,
    mlflow_uri: Optional[str] = None,
    on_trial: Optional[Callable[[int, dict, float], None]] = None,
    full_search: bool = False,
    on_wait: Optional[Callable[[], None]] = None,
    tracker=None,
) -> TrainOutcome:
    """Train the surrogate on every successful fit of (structure, dataset, fit config), store and track it.

    The same inputs and seed give the same model: training again on unchanged
    fits reuses the stored row, and a second identical command started while
    the first trains waits for it and reuses its row. ``full_search`` runs all
    ``n_iter`` Bayesian iterations and takes the lowest CV MAE (ML-MotEx's
    exhaustive search); by default the search stops when it stops improving
    and the cheapest near-best candidate is taken (:mod:`motex_db.surrogate`).

    The MLflow run opens when the training starts; each search trial is a
    child run logged when it finishes. The row is committed before the run's
    artefacts (loss curve, trials, test predictions, the model as XGBoost
    JSON) are logged, and the run is then tagged with the row's id. The
    logging runs in a helper process beside the search (``tracker``, a
    :class:`motex_db.tracker_process.TrackerProcess` on this record's store
    that the caller may have started early; else one is started here), and
    is over when this returns.
    """
    from sqlmodel import Session

    from motex_db.catalogue import masks_from_text
    from motex_db.datasets import get_dataset
    from motex_db.models import FitConfig, TrainedModel
    from motex_db.structures import get_starting_model
    from motex_db.tracker_process import TrackerProcess

    check_search_options(n_iter, cv)
    seed = _check_seed(seed)
    if tracker is None:
        with TrackerProcess(engine.url.render_as_string(hide_password=False), mlflow_uri) as tracker:
            return train_model(engine, structure, dataset, fit_config_id, n_iter, cv, seed, mlflow_uri, on_trial,
                               full_search, on_wait, tracker)
    with Session(engine) as session:
        model = get_starting_model(session, structure)
        data = get_dataset(session, dataset)
        config_id = choose_fit_config(session, model.id, data.id, fit_config_id)
        config = session.get(FitConfig, config_id)
        ids, mask_texts, rwp = load_fits(session, model.id, data.id, config_id)
    inputs = _inputs_hash(model.id, data.id, config_id, ids, rwp, seed, n_iter, cv, full_search)
    if _stored_model(engine, inputs) is None:
        check_targets(rwp)  # before a run is opened for nothing
    started = time.perf_counter()
    trained: dict = {}

    def work():
        masks = masks_from_text(mask_texts, model.n_permutable)
        tracker.open()
        params = run_params(config, structure, dataset, len(rwp), model.n_permutable, seed,
                            n_iter=n_iter, cv=cv, search="full" if full_search else "until it stops improving")
        run_id = tracker.start_run(f"train {structure} / {dataset}",
                                   run_tags(structure, dataset, config_id, len(rwp), "train"), params)
        try:
            result = train_surrogate(
                masks, rwp, seed=seed, n_iter=n_iter, cv=cv, on_trial=on_trial,
                patience=None if full_search else PATIENCE, tolerance=0.0 if full_search else COST_TOLERANCE,
                prune=not full_search,
                on_trial_done=_trial_logger(tracker, run_id, structure, dataset, config_id, len(rwp)),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                tracker.terminate(run_id, "FAILED")
            raise
        run_id = tracker.value(run_id)  # opened by now, a search ago
        row, created = _store_model(engine, TrainedModel(
            starting_model_id=model.id, dataset_id=data.id, fit_config_id=config_id, inputs_hash=inputs,
            n_motifs=result.n_motifs, seed=seed, hyperparameters=result.hyperparameters,
            metrics={**result.metrics, "best_cv_mae": result.best_cv_mae, "lowest_cv_mae": result.lowest_cv_mae,
                     "best_iteration": result.best_iteration},
            model=result.model_json, mlflow_run_id=run_id, motif_ids=ids, n_iter=n_iter, cv=cv,
            training_log={
                "trials": [t.as_dict() for t in result.trials],
                "learning_curve": result.learning_curve,
                "best_iteration": result.best_iteration,
                "search": {"stopped_early": result.stopped_early, "full": bool(full_search)},
            },
        ))
        if created:
            _log_result(tracker, run_id, result, row.id)
            trained.update(result=result)
        else:
            tracker.terminate(run_id, "KILLED")
        tracker.flush()
        return row

    row, created = run_once(engine, inputs, lambda: _stored_model(engine, inputs), work, on_wait)
    created = created and "result" in trained
    return TrainOutcome(
        row.id, created, structure, dataset, config_id, row.n_motifs, row.metrics, row.hyperparameters,
        row.mlflow_run_id, tracker.location.ui_command, trained.get("result"),
        time.perf_counter() - started if created else 0.0,
    )


# --------------------------------------------------------------------------
# Step 3 for a time-resolved series: `motex-db train --series`


@dataclass
class SeriesTrainOutcome:
    """What ``train --series`` did: one row per frame (new or reused) and the shared search."""

    structure: str
    series: str
    fit_config_id: int
    reference: str  # the frame the hyper-parameters were searched on
    hyperparameters: dict  # the searched values every frame's model uses
    best_cv_mae: Optional[float]
    frames: "pd.DataFrame"  # frame, dataset_id, time, trained_model_id, created, n_motifs, test_mae, test_r2
    mlflow_run_id: Optional[str]  # the series' parent run (None when nothing was trained now)
    ui_command: Optional[str]
    seconds: float = 0.0

    @property
    def n_created(self) -> int:
        return int(self.frames["created"].sum())


def check_search_options(n_iter: int, cv: int) -> None:
    """Refuse a negative ``n_iter`` and a ``cv`` other than 0 (the validation part) or 2 folds or more."""
    if n_iter < 0 or cv == 1 or cv < 0:
        raise InputError(f"--n-iter must be >= 0 and --cv 0 (the validation part) or >= 2 (got {n_iter} and {cv}).")


def _searched(hyperparameters: dict) -> dict:
    """The hyper-parameters the search chooses (the tree count comes from early stopping)."""
    names = set(SearchSpace().names())
    return {k: v for k, v in hyperparameters.items() if k in names}


def _series_hash(frame_hash: str, reference_hash: str, series: str) -> str:
    return hashlib.sha256(repr(("series", series, frame_hash, reference_hash)).encode()).hexdigest()


def train_frame(X: np.ndarray, rwp: np.ndarray, params: dict, seed: int) -> tuple[str, dict, dict, dict]:
    """One frame's final model with given hyper-parameters: (model JSON, hyper-parameters, test metrics, loss curve).

    The loss curve holds the validation side only (a series trains hundreds of
    frame models; scoring the fitted motifs every round would cost a sixth more).
    """
    train_idx, test_idx = split(len(rwp), seed)
    final = train_final(X[train_idx], rwp[train_idx], params, seed, train_curve=False)
    metrics = {**evaluate(final, X[test_idx], rwp[test_idx]), "best_iteration": final.best_iteration}
    return final.model_json, final.hyperparameters, metrics, final.learning_curve


@dataclass(frozen=True)
class _SeriesJob:
    """What any process needs to train the frames of one series (picklable, for worker processes)."""

    url: str
    mlflow_uri: Optional[str]
    structure: str
    series: str
    model_id: int
    n_permutable: int
    config_id: int
    seed: int
    n_iter: int
    cv: int
    reference: str
    params: dict
    best_cv_mae: Optional[float]
    parent_run_id: Optional[str]
    frames: tuple  # (dataset id, frame name, time, inputs hash), in series order
    lease_seconds: float = LEASE_SECONDS


def _train_one_frame(engine, job: _SeriesJob, frame: tuple, tracker, features_cache: Optional[dict] = None) -> None:
    """Train, store (committed alone) and track one frame's model.

    ``features_cache`` (a dict the caller keeps) holds the features of motif
    lists already read: the frames of a series mostly share theirs.
    """
    from sqlmodel import Session

    from motex_db.models import TrainedModel

    dataset_id, name, frame_time, key = frame
    with Session(engine) as session:
        ids, rwp = load_fit_values(session, job.model_id, dataset_id, job.config_id)
        X = _motif_features(session, ids, job.n_permutable, features_cache)
    model_json, hyperparameters, metrics, curve = train_frame(X, rwp, job.params, job.seed)
    if job.best_cv_mae is not None:
        metrics["best_cv_mae"] = job.best_cv_mae
    row, created = _store_model(engine, TrainedModel(
        starting_model_id=job.model_id, dataset_id=dataset_id, fit_config_id=job.config_id, inputs_hash=key,
        n_motifs=len(rwp), seed=job.seed, hyperparameters=hyperparameters, metrics=metrics, model=model_json,
        motif_ids=ids, n_iter=job.n_iter, cv=job.cv, series=job.series,
        training_log={"learning_curve": curve, "best_iteration": metrics["best_iteration"],
                      "search": {"series": job.series, "reference_frame": job.reference,
                                 "parent_run_id": job.parent_run_id}},
    ))
    if created and tracker is not None and job.parent_run_id:
        _log_frame_run(engine, tracker, job, row, name, frame_time)


def _log_frame_run(engine, tracker, job: _SeriesJob, row, name: str, frame_time) -> None:
    """A frame's child run (test metrics, the model as XGBoost JSON), linked to the row afterwards."""
    import sqlalchemy as sa

    from motex_db.db import transaction
    from motex_db.models import TrainedModel

    now = time.time()
    tags = {**run_tags(job.structure, name, job.config_id, row.n_motifs, "train-frame"), "series": job.series}
    run_id = tracker.log_child(job.parent_run_id, f"frame {name}", tags,
                               {"frame": name, "time": frame_time, "series": job.series},
                               {f"test_{k}": v for k, v in row.metrics.items()}, now, now)
    tracker.log_files(run_id, {"model.json": row.model}, "model")
    with transaction(engine) as session:  # without loading the row's model back
        session.connection().execute(
            sa.update(TrainedModel.__table__).where(TrainedModel.__table__.c.id == row.id).values(mlflow_run_id=run_id))


def _frames_stored(engine, keys: list[str]) -> set[str]:
    from sqlmodel import Session, select

    from motex_db.models import TrainedModel

    with Session(engine) as session:
        return set(session.exec(select(TrainedModel.inputs_hash).where(TrainedModel.inputs_hash.in_(keys))).all())


def _work_frames(job: _SeriesJob, offset: int = 0, on_stored: Optional[Callable[[], None]] = None,
                 engine=None) -> None:
    """Train every frame of ``job`` not stored yet, taking each by its claim; until all are stored.

    Any number of processes, on any number of machines, run this on one
    record: each frame is trained by the one that claims it, and frames
    whose claim holder died are taken over when its lease runs out.
    """
    from motex_db.db import open_engine
    from motex_db.processes import worker_identity
    from motex_db.tracking import open_tracker

    own = engine is None
    engine = engine or open_engine(job.url)
    worker = worker_identity()
    tracker = None
    features_cache: dict = {}
    keys = [f[3] for f in job.frames]
    try:
        while True:
            stored = _frames_stored(engine, keys)
            left = [f for f in job.frames if f[3] not in stored]
            if not left:
                return
            progressed = False
            for frame in left[offset % len(left):] + left[:offset % len(left)]:
                if not claim(engine, frame[3], worker, job.lease_seconds):
                    continue
                with holding(engine, frame[3], worker, job.lease_seconds):
                    if frame[3] in _frames_stored(engine, [frame[3]]):
                        continue
                    if tracker is None and job.parent_run_id:
                        tracker = open_tracker(job.url, job.mlflow_uri)
                    _train_one_frame(engine, job, frame, tracker, features_cache)
                progressed = True
                if on_stored is not None:
                    on_stored()
            if not progressed:
                if on_stored is not None:
                    on_stored()
                time.sleep(POLL_SECONDS)
    finally:
        if own:
            engine.dispose()


def _frame_worker(job: _SeriesJob, offset: int, parent_pid: int) -> None:
    from motex_db.processes import die_with_parent

    die_with_parent(parent_pid)
    _work_frames(job, offset)


def train_series(
    engine,
    structure: str,
    series: str,
    reference: Optional[str] = None,
    fit_config_id: Optional[int] = None,
    n_iter: int = N_ITER,
    cv: int = CV_FOLDS,
    seed: int = 0,
    mlflow_uri: Optional[str] = None,
    on_trial: Optional[Callable[[int, dict, float], None]] = None,
    on_frame: Callable[[int, int], None] = lambda done, total: None,
    workers: Optional[int] = None,
    lease_seconds: float = LEASE_SECONDS,
) -> SeriesTrainOutcome:
    """A surrogate per frame of a series, all with the hyper-parameters of one search.

    The search (as :func:`train_model`) runs once, on the ``reference`` frame
    (default: the reference of the series' earlier models, else the last
    frame, where an in situ reaction has gone furthest), and its model is
    stored first; every other frame's model is then trained with those
    hyper-parameters (early stopping per frame) on that frame's fits and
    scored on its own test motifs. The fit configuration is the one with the
    most successful fits on the reference frame. Rows are reused when the
    frame's fits, the reference's fits, the seed and the search settings are
    unchanged, so adding frames trains only the new ones.

    Each frame is committed as it finishes, under a claim: any number of
    ``train --series`` processes on one record (on one machine or many) split
    the frames, and a killed one loses only the frames it was training.
    ``workers`` local processes (default: one per core when there are 4
    frames or more) train side by side and die with this process.
    MLflow: one parent run for the series (its search trials as child runs)
    and a child run per frame trained.
    """
    import pandas as pd
    from sqlmodel import Session, select

    from motex_db.datasets import get_series_frames
    from motex_db.models import TrainedModel
    from motex_db.processes import helper_processes, local_workers
    from motex_db.structures import get_starting_model
    from motex_db.tracking import open_tracker, tracking_location

    check_search_options(n_iter, cv)
    seed = _check_seed(seed)
    with Session(engine) as session:
        model = get_starting_model(session, structure)
        frames = get_series_frames(session, series)
        names = [f.name for f in frames]
        if reference is not None and reference not in names:
            raise InputError(f"'{reference}' is not a frame of series '{series}' (frames: {names[0]} ... {names[-1]}).")
        if reference is None:
            # the reference of the series' latest models, while it is a frame; else the last frame
            latest = session.exec(
                select(TrainedModel.training_log)
                .where(TrainedModel.starting_model_id == model.id)
                .where(TrainedModel.series == series)
                .order_by(TrainedModel.id.desc())
            ).first()
            before = ((latest or {}).get("search") or {}).get("reference_frame")
            reference = before if before in names else names[-1]
        ref = frames[names.index(reference)]
        try:
            config_id = choose_fit_config(session, model.id, ref.id, fit_config_id)
        except InputError:
            raise InputError(
                f"frame '{ref.name}' of series '{series}' has no successful fits of '{structure}': "
                f"run motex-db fit --structure {structure} --series {series} first."
            ) from None
        from motex_db.models import FitConfig

        config = session.get(FitConfig, config_id)
        fits = {f.id: load_fit_values(session, model.id, f.id, config_id) for f in frames}
        X_reference = _motif_features(session, fits[ref.id][0], model.n_permutable) if fits[ref.id][0].size else None
    for frame in frames:
        n = len(fits[frame.id][0])
        if n < MIN_MOTIFS:
            raise InputError(
                f"frame '{frame.name}' has {n} successful fits with fit config {config_id}; training needs "
                f"{MIN_MOTIFS}: run motex-db fit --structure {structure} --series {series}."
            )
    ref_hash = _inputs_hash(model.id, ref.id, config_id, *fits[ref.id], seed, n_iter, cv)
    hashes = {
        f.id: _series_hash(_inputs_hash(model.id, f.id, config_id, *fits[f.id], seed, n_iter, cv), ref_hash, series)
        for f in frames
    }
    url = engine.url.render_as_string(hide_password=False)
    location = tracking_location(url, mlflow_uri)
    started = time.perf_counter()
    stored_before = _frames_stored(engine, list(hashes.values()))
    todo = [f for f in frames if hashes[f.id] not in stored_before]
    tracker = open_tracker(url, mlflow_uri) if todo else None
    search_info: dict = {}

    def search_reference():
        """The search on the reference frame, then its model, committed first (the others need its values)."""
        parent = tracker.start_run(
            f"train {structure} / series {series}",
            {**run_tags(structure, series, config_id, 0, "train-series"), "series": series, "reference_frame": ref.name},
            run_params(config, structure, ref.name, len(fits[ref.id][1]), model.n_permutable, seed, series=series,
                       reference_frame=ref.name, n_iter=n_iter, cv=cv),
        )
        ids, rwp = fits[ref.id]
        X = X_reference
        train_idx, _ = split(len(rwp), seed)
        from motex_db.surrogate import search_hyperparameters

        search = search_hyperparameters(
            X[train_idx], rwp[train_idx], seed, n_iter=n_iter, cv=cv, on_trial=on_trial, n_jobs=os.cpu_count() or 1,
            on_trial_done=_trial_logger(tracker, parent, structure, ref.name, config_id, len(rwp)),
        )
        params = _searched(search.best_params)
        tracker.log_values(parent, metrics={"best_cv_mae": search.best_cv_mae, "n_trials": len(search.trials)},
                           params={f"xgb_{k}": v for k, v in params.items()})
        job = _job(params, search.best_cv_mae, parent)
        search_info.update(trials=[t.as_dict() for t in search.trials])
        _train_one_frame(engine, job, _frame_tuple(ref), tracker)
        stored = _stored_model(engine, hashes[ref.id])
        stored_log = dict(stored.training_log or {})
        if "trials" not in stored_log:
            from motex_db.db import transaction

            with transaction(engine) as session:
                row = session.get(TrainedModel, stored.id)
                row.training_log = {**stored_log, "trials": search_info["trials"]}
                session.add(row)
        return stored

    def _frame_tuple(frame):
        return (frame.id, frame.name, frame.time, hashes[frame.id])

    def _job(params, best_cv, parent):
        return _SeriesJob(url, mlflow_uri, structure, series, model.id, model.n_permutable, config_id, seed, n_iter,
                          cv, ref.name, params, best_cv, parent, tuple(_frame_tuple(f) for f in frames),
                          lease_seconds)

    parent_id = None
    if todo:
        ref_row, _ = run_once(engine, hashes[ref.id], lambda: _stored_model(engine, hashes[ref.id]),
                              search_reference, lease_seconds=lease_seconds)
        params = _searched(ref_row.hyperparameters)
        best_cv = (ref_row.metrics or {}).get("best_cv_mae")
        parent_id = ((ref_row.training_log or {}).get("search") or {}).get("parent_run_id")
        job = _job(params, best_cv, parent_id)
        keys = list(hashes.values())

        def progress():
            on_frame(len(_frames_stored(engine, keys) - stored_before), len(todo))

        n_workers = local_workers(workers, len(todo))
        with helper_processes(_frame_worker, [(job, k, os.getpid()) for k in range(1, n_workers)]):
            _work_frames(job, 0, progress, engine)
        progress()
        if parent_id:
            with contextlib.suppress(Exception):
                tracker.finish_run(parent_id)
    else:
        with Session(engine) as session:
            ref_row = session.exec(select(TrainedModel).where(TrainedModel.inputs_hash == hashes[ref.id])).first()
        params = _searched(ref_row.hyperparameters) if ref_row is not None else {}
        best_cv = (ref_row.metrics or {}).get("best_cv_mae") if ref_row is not None else None
    with Session(engine) as session:  # not the models themselves
        rows = {key: (row_id, metrics or {}) for key, row_id, metrics in session.exec(
            select(TrainedModel.inputs_hash, TrainedModel.id, TrainedModel.metrics)
            .where(TrainedModel.inputs_hash.in_(list(hashes.values())))).all()}
    table = []
    for frame in frames:
        row_id, metrics = rows[hashes[frame.id]]
        table.append({
            "frame": frame.name, "dataset_id": frame.id, "time": frame.time, "trained_model_id": row_id,
            "created": hashes[frame.id] not in stored_before, "n_motifs": len(fits[frame.id][0]),
            "test_mae": metrics.get("mae"), "test_r2": metrics.get("r2"),
        })
    return SeriesTrainOutcome(
        structure, series, config_id, ref.name, params, best_cv, pd.DataFrame(table), parent_id,
        location.ui_command, time.perf_counter() - started,
    )
