"""Step 5 (ours, beyond ML-MotEx): from an answer to the best-fitting motif, by direct search with real fits.

The SHAP signs are a statistical answer; on starting models much larger than
the motif they over-include (science.md, section 5b). Each fit costs well under
a millisecond here, so the product goes on from the extracted motif with a local
search in motif space, every candidate fitted for real:

- **moves**: add or remove one permutable atom (a flip), and swap a kept atom
  for a removed one;
- **proposal order**: the SHAP contributions. Flips are tried in order of the
  gain the contributions promise (removing the most positive kept atoms, adding
  the most negative removed ones first), a chunk at a time: the first chunk
  holding an improving move ends the step, so a good guide saves fits. Swaps
  pair the best-scoring removals with the best-scoring additions;
- **improvement**: every atom changed must pay for itself. A move improves
  when it lowers Rwp by at least ``min_gain`` (default 0.001) per atom it
  changes (one for a flip, two for a swap), and a motif found later replaces
  the best one only when its Rwp is lower by ``min_gain`` per atom in which
  the two differ. Smaller gains are within what noise in the data gives, so
  the search never trades a motif for one that fits only marginally better;
- **the ranking scan** (with contributions): before the local search, the
  motifs made of the k most negative atoms, k = 1..N, are fitted (N fits),
  and the best of them replaces the start when it fits better by ``min_gain``
  per atom changed. On starting models much larger than the motif the SHAP
  signs over-include but their order is right: the extracted motif of a C60
  hidden in 360 carbons carried 62 extra atoms, while its 57 most negative
  atoms were all cage atoms and fitted at Rwp 0.071 against 0.175. One flip
  at a time, the local search would need a step per extra atom;
- **escaping local minima** (``strategy='tabu'``, the default): where no move
  improves, the search takes the best move that does not undo a recent one
  (tabu search: an atom changed stays fixed for ``tenure`` steps unless changing
  it gives a new best) and goes on, until ``patience`` steps in a row find no
  new best or the budget of fits is spent. ``strategy='greedy'`` stops at the
  first local minimum (the plain add/remove search it is measured against,
  ``benchmarks/bench_polish.py``).

The search is a pure function of an evaluator (masks -> Rwp):
:func:`search_motifs`. :func:`polish_motif` runs it on the record: every motif
it evaluates is a ``motif`` row (sampler 'polish') with its ``fit_result``, fits
already stored are never computed again, and a run killed at any moment is
replayed from the stored fits (deterministically, the same moves) and goes on
where it stopped. A ``polish_run`` row holds the run's inputs, lease and
result; the same command twice at once waits for the first.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Optional

import numpy as np

from motex_db.catalogue import POLISH_SAMPLER, mask_to_text, masks_from_text, masks_to_text
from motex_db.errors import InputError

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_MIN_GAIN",
    "DEFAULT_PATIENCE",
    "DEFAULT_TENURE",
    "STRATEGIES",
    "SearchResult",
    "search_motifs",
    "compact_answer",
    "PolishOutcome",
    "polish_motif",
    "latest_polish",
    "ExtractRound",
    "ExtractOutcome",
    "extract_motif",
]

#: Fits a polish may spend unless told otherwise.
DEFAULT_BUDGET = 5000
#: Rwp a move must gain to count as an improvement.
DEFAULT_MIN_GAIN = 0.001
#: Steps in a row without a new best before the tabu search stops.
DEFAULT_PATIENCE = 30
#: Steps an atom stays fixed after it changed (tabu tenure).
DEFAULT_TENURE = 7
#: Removals and additions paired into swaps (their product is evaluated).
DEFAULT_SWAP_CANDIDATES = 6
STRATEGIES = ("tabu", "greedy")
#: Bump when the same inputs would take other moves: a stored run is then not reused.
POLISH_VERSION = "polish 2"
_LEASE_SECONDS = 120.0
_POLL_SECONDS = 1.0


# ============================================================================ the search (pure)


@dataclass
class SearchResult:
    """What :func:`search_motifs` found.

    ``path`` maps a motif size (kept permutable atoms) to the best (Rwp, mask)
    among every motif the search evaluated with that size.
    """

    start_mask: np.ndarray
    start_rwp: float
    best_mask: np.ndarray
    best_rwp: float
    n_evaluated: int
    stopped: str  # 'budget' or 'converged'
    steps: int
    path: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)


class _Evaluations:
    """The search's memory of evaluated masks: each distinct mask costs one evaluation, once."""

    def __init__(self, evaluate: Callable[[np.ndarray], np.ndarray], budget: int):
        self.evaluate = evaluate
        self.budget = budget
        self.values: dict[bytes, float] = {}
        self.path: dict[int, tuple[float, np.ndarray]] = {}

    @property
    def left(self) -> int:
        return self.budget - len(self.values)

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        """Rwp of each mask (inf for a failed fit, NaN for a mask the budget did not reach)."""
        keys = [m.tobytes() for m in masks]
        new = list(dict.fromkeys(k for k in keys if k not in self.values))[: max(self.left, 0)]
        if new:
            rows = np.array([np.frombuffer(k, dtype=bool) for k in new])
            found = np.asarray(self.evaluate(rows), dtype=float)
            for key, row, value in zip(new, rows, found):
                value = float(value) if np.isfinite(value) else np.inf
                self.values[key] = value
                size = int(row.sum())
                if size not in self.path or value < self.path[size][0]:
                    self.path[size] = (value, row.copy())
        return np.array([self.values.get(k, np.nan) for k in keys])


def _flips(mask: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    out = np.repeat(mask[None], len(atoms), axis=0)
    out[np.arange(len(atoms)), atoms] ^= True
    return out


def _ranking_scan(memory: _Evaluations, guide: np.ndarray, tie: np.ndarray, start: np.ndarray, start_rwp: float,
                  min_gain: float) -> tuple[np.ndarray, float]:
    """The ranking scan: the best-fitting motif made of the k most negative atoms (k = 1..N), if it beats ``start``.

    One fit per size; the prefix of lowest Rwp (the smallest on ties) replaces
    ``start`` only when its Rwp is lower by ``min_gain`` per atom in which the
    two differ (the search's own rule).
    """
    n = guide.size
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((tie, guide))] = np.arange(n)  # most negative first
    prefixes = rank[None, :] <= np.arange(n)[:, None]  # row k: the k + 1 most negative atoms
    values = memory(prefixes)
    values = np.where(np.isfinite(values), values, np.inf)
    pick = int(np.argmin(values))
    if values[pick] < start_rwp - min_gain * int((prefixes[pick] != start).sum()):
        return prefixes[pick].copy(), float(values[pick])
    return start, start_rwp


def search_motifs(
    evaluate: Callable[[np.ndarray], np.ndarray],
    start: np.ndarray,
    contributions: Optional[np.ndarray] = None,
    budget: int = DEFAULT_BUDGET,
    strategy: str = "tabu",
    seed: int = 0,
    min_gain: float = DEFAULT_MIN_GAIN,
    patience: int = DEFAULT_PATIENCE,
    tenure: int = DEFAULT_TENURE,
    swap_candidates: int = DEFAULT_SWAP_CANDIDATES,
    on_step: Callable[[int, float], None] = lambda evaluated, best_rwp: None,
    ranking_scan: bool = True,
) -> SearchResult:
    """Local search in motif space from ``start`` ((N,) bool) for the mask of lowest Rwp.

    ``evaluate`` maps an (m, N) bool array to m Rwp values (NaN or inf for a
    failed fit); it is called only with masks not evaluated before, at most
    ``budget`` masks in all. ``contributions`` ((N,), Rwp units, negative:
    the atom belongs) order the proposals; without them the order is a seeded
    random one, and ``ranking_scan`` starts the search from the best motif of the
    k most negative atoms where that fits better. Deterministic for given inputs
    and evaluator values. See the module docstring for the moves, the tabu rule
    and the stopping rules.
    """
    start = np.asarray(start, dtype=bool)
    n = start.size
    if start.ndim != 1 or n == 0 or not start.any():
        raise InputError("the start motif must keep at least one atom.")
    if strategy not in STRATEGIES:
        raise InputError(f"unknown search strategy '{strategy}' (use {' or '.join(STRATEGIES)}).")
    if budget < 1:
        raise InputError(f"the budget must be at least 1 fit, not {budget}.")
    if not (np.isfinite(min_gain) and min_gain >= 0):
        raise InputError(f"the minimum gain must be a number >= 0, not {min_gain}.")
    rng = np.random.default_rng(seed)
    guide = np.zeros(n) if contributions is None else np.asarray(contributions, dtype=float)
    if guide.shape != (n,):
        raise InputError(f"contributions must give one value per permutable atom ({n}), not shape {guide.shape}.")
    # ties broken by a seeded random order, so the search explores alike without a guide
    tie = rng.permutation(n)
    chunk = max(8, n // 4)
    memory = _Evaluations(evaluate, budget)
    current = start.copy()
    current_rwp = float(memory(current[None])[0])
    if contributions is not None and ranking_scan:
        current, current_rwp = _ranking_scan(memory, guide, tie, current, current_rwp, min_gain)
    best_rwp, best = current_rwp, current.copy()
    tabu_until = np.zeros(n, dtype=np.int64)
    step = since_best = 0
    stopped = "converged"
    while True:
        if memory.left <= 0:
            stopped = "budget"
            break
        if strategy == "tabu" and since_best >= patience:
            break
        step += 1
        # removing a kept atom promises +c, adding a removed one -c
        promise = np.where(current, guide, -guide)
        order = np.lexsort((tie, -promise))
        order = order[~(current[order] & (current.sum() == 1))]  # never the empty motif
        moves, values, changed = [], [], []

        def best_allowed(improving: bool) -> Optional[int]:
            """The best move not undoing a recent one (a new best is always allowed), or None."""
            found = np.array(values, dtype=float)
            found = np.where(np.isnan(found), np.inf, found)
            allowed = np.array([all(tabu_until[a] < step for a in c) for c in changed], dtype=bool)
            # every atom changed must pay for itself: min_gain per atom in which two motifs differ
            n_changed = np.array([len(c) for c in changed])
            from_best = np.array([int((m != best).sum()) for m in moves])
            allowed |= found < best_rwp - min_gain * from_best
            if improving:
                allowed &= found < current_rwp - min_gain * n_changed
            allowed &= np.isfinite(found)
            if not allowed.any():
                return None
            candidates = np.flatnonzero(allowed)
            return int(candidates[np.argmin(found[candidates])])

        accepted = None
        for lo in range(0, len(order), chunk):
            atoms = order[lo : lo + chunk]
            masks = _flips(current, atoms)
            moves.extend(masks)
            values.extend(memory(masks))
            changed.extend((int(a),) for a in atoms)
            accepted = best_allowed(improving=True)
            if accepted is not None or memory.left <= 0:
                break
        flip_values = dict(zip((c[0] for c in changed), values))
        if accepted is None and memory.left > 0 and swap_candidates > 0:
            kept, out = np.flatnonzero(current), np.flatnonzero(~current)

            def ranked(atoms):
                return sorted(atoms, key=lambda a: (np.nan_to_num(flip_values.get(int(a), np.inf), nan=np.inf), -promise[a], tie[a]))

            for a in ranked(kept)[:swap_candidates]:
                for b in ranked(out)[:swap_candidates]:
                    mask = current.copy()
                    mask[a], mask[b] = False, True
                    moves.append(mask)
                    changed.append((int(a), int(b)))
            if len(moves) > len(values):
                values.extend(memory(np.array(moves[len(values):])))
            accepted = best_allowed(improving=True)
        if accepted is None:
            if strategy == "greedy":
                break
            accepted = best_allowed(improving=False)
            if accepted is None:
                break
        values_array = np.where(np.isnan(np.array(values, dtype=float)), np.inf, np.array(values, dtype=float))
        current, current_rwp = moves[accepted].copy(), float(values_array[accepted])
        if strategy == "tabu":
            for a in changed[accepted]:
                tabu_until[a] = step + tenure
        if current_rwp < best_rwp - min_gain * int((current != best).sum()):
            best_rwp, best, since_best = current_rwp, current.copy(), 0
        else:
            since_best += 1
        on_step(len(memory.values), best_rwp)
    return SearchResult(start.copy(), float(memory.values[start.tobytes()]), best, best_rwp, len(memory.values),
                        stopped, step, dict(sorted(memory.path.items())))


def compact_answer(path: list[dict], best_rwp: float, tolerance: float) -> Optional[dict]:
    """The smallest motif on the path whose Rwp is within ``tolerance`` of the best: a path entry, or None."""
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise InputError(f"--tolerance must be a number >= 0, not {tolerance}.")
    within = [p for p in path if p["rwp"] is not None and p["rwp"] <= best_rwp + tolerance]
    return min(within, key=lambda p: (p["n_kept"], p["rwp"])) if within else None


# ============================================================================ the search in the record


@dataclass
class PolishOutcome:
    """What ``polish`` did and found. Atom indices are 1-based among the permutable atoms."""

    run_id: int
    created: bool  # False: the same run was finished before, nothing done now
    structure: str
    dataset: str
    fit_config_id: int
    elements: list  # of the permutable atoms, 1..N
    start_motif_id: int
    start_mask: str
    start_rwp: Optional[float]
    start_label: str  # 'extracted (trained model 3)' or 'motif 17'
    best_motif_id: int
    best_mask: str
    best_rwp: float
    path: list  # [{"n_kept", "rwp", "motif_id", "mask"}], by size
    n_evaluated: int
    n_fitted: int
    seconds: float
    stopped: str
    strategy: str
    budget: int
    seed: int
    options: dict
    best_n_atoms: Optional[int] = None
    start_n_atoms: Optional[int] = None

    @property
    def added(self) -> list[int]:
        return [i + 1 for i, (a, b) in enumerate(zip(self.start_mask, self.best_mask)) if a == "0" and b == "1"]

    @property
    def removed(self) -> list[int]:
        return [i + 1 for i, (a, b) in enumerate(zip(self.start_mask, self.best_mask)) if a == "1" and b == "0"]

    def compact(self, tolerance: float) -> Optional[dict]:
        return compact_answer(self.path, self.best_rwp, tolerance)


def _latest_explained(session, model_id: int, dataset_id: int, fit_config_id: Optional[int] = None):
    """The latest trained model of (structure, dataset[, fit config]) with stored contributions, or None."""
    from sqlmodel import select

    from motex_db.models import AtomContribution, TrainedModel

    query = (
        select(TrainedModel)
        .where(TrainedModel.starting_model_id == model_id)
        .where(TrainedModel.dataset_id == dataset_id)
        .where(TrainedModel.series.is_(None))
        .where(select(AtomContribution.id).where(AtomContribution.trained_model_id == TrainedModel.id).exists())
        .order_by(TrainedModel.id.desc())
    )
    if fit_config_id is not None:
        query = query.where(TrainedModel.fit_config_id == fit_config_id)
    return session.exec(query).first()


def contributions_of(session, trained_model_id: int, n_permutable: int) -> np.ndarray:
    """The stored contributions of a trained model, (N,) in atom order."""
    from sqlmodel import select

    from motex_db.models import AtomContribution

    rows = session.exec(
        select(AtomContribution.atom_index, AtomContribution.contribution)
        .where(AtomContribution.trained_model_id == trained_model_id)
    ).all()
    values = np.zeros(n_permutable)
    for index, contribution in rows:
        values[index - 1] = contribution
    return values


def _start(session, model, data, start: str):
    """(start motif row, label, fit config id, contributions or None) for ``--from``."""
    from sqlmodel import select

    from motex_db.models import Motif

    if start == "extracted":
        trained = _latest_explained(session, model.id, data.id)
        if trained is None:
            raise InputError(
                f"structure '{model.name}' has no explained model for dataset '{data.name}' yet: run motex-db explain "
                "first, or start from a motif with --from MOTIF_ID."
            )
        contributions = contributions_of(session, trained.id, model.n_permutable)
        mask = mask_to_text(contributions < 0)
        if "1" not in mask:
            raise InputError(
                f"the explanation of trained model {trained.id} extracted no atom (no negative contribution): "
                "start from a motif with --from MOTIF_ID."
            )
        motif = session.exec(select(Motif).where(Motif.starting_model_id == model.id).where(Motif.mask == mask)).first()
        if motif is None:
            raise InputError(f"the extracted motif of trained model {trained.id} is not stored: run motex-db explain again.")
        return motif, f"extracted (trained model {trained.id})", trained.fit_config_id, contributions
    try:
        motif_id = int(start)
    except ValueError:
        raise InputError(f"--from takes 'extracted' or a motif id, not '{start}'.") from None
    motif = session.get(Motif, motif_id)
    if motif is None or motif.starting_model_id != model.id:
        raise InputError(f"there is no motif {motif_id} of structure '{model.name}'.")
    trained = _latest_explained(session, model.id, data.id)
    if trained is not None:
        return motif, f"motif {motif_id}", trained.fit_config_id, contributions_of(session, trained.id, model.n_permutable)
    from motex_db.learning import choose_fit_config

    try:
        config_id = choose_fit_config(session, model.id, data.id, None)
    except InputError:
        config_id = None
    return motif, f"motif {motif_id}", config_id, None


def _inputs_hash(model_id, dataset_id, config_id, start_id, strategy, budget, seed, options) -> str:
    text = json.dumps([POLISH_VERSION, model_id, dataset_id, config_id, start_id, strategy, budget, seed, options], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _claim_run(engine, row: dict, worker: str, lease_seconds: float, poll_seconds: float,
               on_wait: Callable[[str], None]):
    """Insert or find the run; take it unless another live process runs it (then wait for it). Returns the row."""
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlmodel import select

    from motex_db.db import is_sqlite, transaction
    from motex_db.processes import process_gone
    from motex_db.models import PolishRun, utcnow

    waited = False
    while True:
        with transaction(engine) as session:
            dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
            session.execute(
                dialect.insert(PolishRun.__table__).values(**row, created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["inputs_hash"])
            )
            query = select(PolishRun).where(PolishRun.inputs_hash == row["inputs_hash"])
            if not is_sqlite(engine):
                query = query.with_for_update()
            run = session.exec(query).one()
            now = utcnow()
            expires = run.expires_at
            if expires is not None and expires.tzinfo is None:
                from datetime import timezone

                expires = expires.replace(tzinfo=timezone.utc)
            busy = (
                run.status == "running" and run.worker not in (None, worker)
                and expires is not None and expires > now and not process_gone(run.worker)
            )
            if run.status == "done" or not busy:
                if run.status == "running":
                    session.execute(
                        sa.update(PolishRun).where(PolishRun.id == run.id)
                        .values(worker=worker, expires_at=now + timedelta(seconds=lease_seconds))
                    )
                session.expunge(run)
                return run
        if not waited:
            on_wait(f"the same polish is running in another process ({run.worker}); waiting for it")
            waited = True
        time.sleep(poll_seconds)


def _outcome(engine, run, structure: str, dataset: str, created: bool, start_label: str) -> PolishOutcome:
    from sqlmodel import Session, select

    from motex_db.models import Motif, StartingModel
    from motex_db.structures import permutable_flags

    with Session(engine) as session:
        model = session.get(StartingModel, run.starting_model_id)
        ids = [run.start_motif_id, run.best_motif_id] + [p["motif_id"] for p in run.path or []]
        rows = {m.id: m for m in session.exec(select(Motif).where(Motif.id.in_(ids))).all()}
    flags = permutable_flags(model.elements, model.permutable_elements)
    path = [{**p, "mask": rows[p["motif_id"]].mask} for p in run.path or []]
    return PolishOutcome(
        run_id=run.id, created=created, structure=structure, dataset=dataset, fit_config_id=run.fit_config_id,
        elements=[e for e, f in zip(model.elements, flags) if f],
        start_motif_id=run.start_motif_id, start_mask=rows[run.start_motif_id].mask, start_rwp=run.start_rwp,
        start_label=start_label, best_motif_id=run.best_motif_id, best_mask=rows[run.best_motif_id].mask,
        best_rwp=run.best_rwp, path=path, n_evaluated=run.n_evaluated, n_fitted=run.n_fitted, seconds=run.seconds,
        stopped=run.stopped, strategy=run.strategy, budget=run.budget, seed=run.seed, options=run.options,
        best_n_atoms=rows[run.best_motif_id].n_atoms, start_n_atoms=rows[run.start_motif_id].n_atoms,
    )


def polish_motif(
    engine,
    structure: str,
    dataset: str,
    start: str = "extracted",
    budget: int = DEFAULT_BUDGET,
    seed: int = 0,
    strategy: str = "tabu",
    min_gain: float = DEFAULT_MIN_GAIN,
    patience: int = DEFAULT_PATIENCE,
    tenure: int = DEFAULT_TENURE,
    swap_candidates: int = DEFAULT_SWAP_CANDIDATES,
    ranking_scan: bool = True,
    on_progress: Callable[[int, int, float], None] = lambda evaluated, budget, best_rwp: None,
    on_wait: Callable[[str], None] = lambda message: None,
    lease_seconds: float = _LEASE_SECONDS,
) -> PolishOutcome:
    """Search from a start motif (``'extracted'``: the latest explanation's; or a motif id) for the best-fitting motif.

    Fits with the fit configuration of the explanation (else the one with the
    most fits, else the fast recipe), stores every evaluated motif and fit,
    and records the run in ``polish_run``. The same inputs again return the
    stored run; an interrupted run is replayed from its stored fits and goes on.
    """
    import sqlalchemy as sa
    from sqlmodel import Session, select

    from motex_db.catalogue import _insert_motifs
    from motex_db.datasets import get_dataset
    from motex_db.db import transaction
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import (
        _result_rows, _store_results, get_or_create_fit_config, prepare_fit, worker_id,
    )
    from motex_db.models import FitConfig, FitResult, Motif, PolishRun, StartingModel, utcnow
    from motex_db.structures import get_starting_model

    if budget < 1:
        raise InputError(f"--budget must be at least 1 fit, not {budget}.")
    if strategy not in STRATEGIES:
        raise InputError(f"unknown search strategy '{strategy}' (use {' or '.join(STRATEGIES)}).")
    if not (np.isfinite(min_gain) and min_gain >= 0):
        raise InputError(f"--min-gain must be a number >= 0, not {min_gain}.")
    if patience < 1 or tenure < 0 or swap_candidates < 0:
        raise InputError("patience must be at least 1, tenure and swap candidates at least 0.")
    with Session(engine) as session:
        model = get_starting_model(session, structure)
        data = get_dataset(session, dataset)
        motif, label, config_id, contributions = _start(session, model, data, start)
        config = session.get(FitConfig, config_id) if config_id is not None else None
    if config is not None and config.recipe == "imported":
        raise InputError(f"the fits of '{structure}' against '{dataset}' were imported: polish needs fits it can compute.")
    settings = FitSettings.from_dict(config.settings) if config is not None else FitSettings.for_recipe("fast")
    prepared = prepare_fit(engine, structure, dataset, settings)
    if config is None:
        config = get_or_create_fit_config(engine, prepared.settings)
    job = prepared.job
    options = {"min_gain": min_gain, "patience": patience, "tenure": tenure, "swap_candidates": swap_candidates,
               "ranking_scan": ranking_scan}
    worker = worker_id()
    inputs = _inputs_hash(model.id, data.id, job.fit_config_id, motif.id, strategy, budget, seed, options)
    row = {
        "starting_model_id": model.id, "dataset_id": data.id, "fit_config_id": job.fit_config_id,
        "start_motif_id": motif.id, "inputs_hash": inputs, "strategy": strategy, "budget": budget, "seed": seed,
        "options": options, "status": "running", "n_evaluated": 0, "n_fitted": 0, "seconds": 0.0,
        "worker": worker, "expires_at": utcnow() + timedelta(seconds=lease_seconds),
    }
    run = _claim_run(engine, row, worker, lease_seconds, _POLL_SECONDS, on_wait)
    if run.status == "done":
        return _outcome(engine, run, structure, dataset, False, label)

    # every stored fit of this structure, dataset and configuration: the search's cache
    with Session(engine) as session:
        stored = session.exec(
            select(Motif.mask, FitResult.rwp, FitResult.status)
            .join(FitResult, FitResult.motif_id == Motif.id)
            .where(Motif.starting_model_id == model.id)
            .where(FitResult.dataset_id == data.id)
            .where(FitResult.fit_config_id == job.fit_config_id)
        ).all()
    cache = {m: (r if s == "ok" else np.nan) for m, r, s in stored}
    fitter = prepared.fitter()
    started = time.perf_counter()
    fitted = 0

    def evaluate(masks: np.ndarray) -> np.ndarray:
        nonlocal fitted
        texts = masks_to_text(masks)
        missing = [i for i, t in enumerate(texts) if t not in cache]
        if missing:
            batch = fitter.fit(masks[missing])
            new = [texts[i] for i in missing]
            with transaction(engine) as session:
                # motifs and their fits in one transaction: a kill leaves both or neither
                _insert_motifs(session, session.get(StartingModel, model.id), new, f"{POLISH_SAMPLER} run {run.id}")
                ids = dict(session.exec(
                    select(Motif.mask, Motif.id).where(Motif.starting_model_id == model.id).where(Motif.mask.in_(new))
                ).all())
                _store_results(session, _result_rows(job, data.id, [ids[t] for t in new], batch, utcnow()))
                session.execute(
                    sa.update(PolishRun).where(PolishRun.id == run.id)
                    .values(expires_at=utcnow() + timedelta(seconds=lease_seconds),
                            n_fitted=PolishRun.n_fitted + len(missing))
                )
            for t, ok, value in zip(new, batch.ok, batch.rwp):
                cache[t] = float(value) if ok else np.nan
            fitted += len(missing)
        return np.array([cache[t] for t in texts], dtype=float)

    start_mask = masks_from_text([motif.mask], model.n_permutable)[0]
    result = search_motifs(
        evaluate, start_mask, contributions, budget, strategy, seed, min_gain, patience, tenure, swap_candidates,
        on_step=lambda evaluated, best_rwp: on_progress(evaluated, budget, best_rwp), ranking_scan=ranking_scan,
    )
    seconds = time.perf_counter() - started
    texts = [mask_to_text(result.best_mask)] + [mask_to_text(m) for _, m in result.path.values()]
    with transaction(engine) as session:
        ids = dict(session.exec(
            select(Motif.mask, Motif.id).where(Motif.starting_model_id == model.id).where(Motif.mask.in_(texts))
        ).all())
        path = [
            {"n_kept": size, "rwp": float(rwp) if np.isfinite(rwp) else None, "motif_id": ids[mask_to_text(mask)]}
            for size, (rwp, mask) in result.path.items()
        ]
        current = session.get(PolishRun, run.id)
        if current.status != "done":
            current.status = "done"
            current.start_rwp = result.start_rwp if np.isfinite(result.start_rwp) else None
            current.best_motif_id = ids[texts[0]]
            current.best_rwp = result.best_rwp
            current.n_evaluated = result.n_evaluated
            current.seconds = run.seconds + seconds
            current.stopped = result.stopped
            current.path = path
            current.worker = None
            current.expires_at = None
            current.finished_at = utcnow()
            session.add(current)
        session.flush()
        session.refresh(current)
        session.expunge(current)
    return _outcome(engine, current, structure, dataset, True, label)


def latest_polish(engine, structure: str, dataset: str) -> Optional[PolishOutcome]:
    """The latest finished polish of (structure, dataset), or None."""
    from sqlmodel import Session, select

    from motex_db.datasets import get_dataset
    from motex_db.models import PolishRun
    from motex_db.structures import get_starting_model

    with Session(engine) as session:
        model = get_starting_model(session, structure)
        data = get_dataset(session, dataset)
        run = session.exec(
            select(PolishRun).where(PolishRun.starting_model_id == model.id).where(PolishRun.dataset_id == data.id)
            .where(PolishRun.status == "done").order_by(PolishRun.id.desc())
        ).first()
    return None if run is None else _outcome(engine, run, structure, dataset, False, f"motif {run.start_motif_id}")


# ============================================================================ the whole loop: `motex-db extract`


#: Share of an extract's budget kept for the polish at the end.
EXTRACT_POLISH_SHARE = 0.2
#: Fewest motifs in a sampling round of extract.
EXTRACT_MIN_ROUND = 200


@dataclass
class ExtractRound:
    """One round of extract: motifs sampled so far, the model and what its explanation said."""

    index: int
    strategy: str  # 'uniform' (the first round) or 'guided'
    n_sampled: int  # sampled motifs in the catalogue after the round
    trained_model_id: int
    extracted_mask: str
    extracted_rwp: Optional[float]
    sign_changes: Optional[int]  # atoms whose sign differs from the three-quarters model's


@dataclass
class ExtractOutcome:
    """What ``extract`` did: its rounds, why it stopped sampling, and the polish of the last answer."""

    structure: str
    dataset: str
    budget: int
    rounds: list
    converged: bool
    fits: int  # fits of sampled and extracted motifs for the explanation's configuration
    polish: Optional[PolishOutcome]
    explanation: object = None  # the last round's ExplainOutcome


def _sampled_count(engine, model_id: int) -> int:
    import sqlalchemy as sa
    from sqlmodel import Session, select

    from motex_db.learning import EXTRACTED_SAMPLER_PREFIX
    from motex_db.models import Motif

    with Session(engine) as session:
        return session.exec(
            select(sa.func.count()).select_from(Motif).where(Motif.starting_model_id == model_id)
            .where(~Motif.sampler.startswith(EXTRACTED_SAMPLER_PREFIX)).where(~Motif.sampler.startswith(POLISH_SAMPLER))
        ).one()


def _fits_outside_polish(engine, model_id: int, dataset_id: int, fit_config_id: int) -> int:
    import sqlalchemy as sa
    from sqlmodel import Session, select

    from motex_db.models import FitResult, Motif

    with Session(engine) as session:
        return session.exec(
            select(sa.func.count()).select_from(FitResult).join(Motif, Motif.id == FitResult.motif_id)
            .where(Motif.starting_model_id == model_id).where(FitResult.dataset_id == dataset_id)
            .where(FitResult.fit_config_id == fit_config_id).where(~Motif.sampler.startswith(POLISH_SAMPLER))
        ).one()


def extract_motif(
    engine,
    structure: str,
    dataset: str,
    budget: int,
    round_size: Optional[int] = None,
    seed: int = 0,
    n_iter: int = 10,
    settings=None,
    polish_budget: Optional[int] = None,
    mlflow_uri: Optional[str] = None,
    on_stage: Callable[[str], None] = lambda message: None,
    on_fit_progress=lambda progress: None,
    on_polish_progress: Callable[[int, int, float], None] = lambda evaluated, budget, best_rwp: None,
) -> ExtractOutcome:
    """Sample, fit, train and explain in rounds until the contributions converge or the budget is spent, then polish.

    ``budget`` counts fits. The first round samples uniformly (ML-MotEx's
    sampler), later rounds around the current answer (guided); every round
    has ``round_size`` motifs (default: a fifth of what the budget leaves after
    the polish's share, at least 200). The contributions have converged when
    the model trained on three quarters of the fits gives every atom the same
    sign. What is left of the budget (at least its polish share) goes to the
    polish of the last extracted motif.

    Every step is one of the resumable commands: a rerun finds the sampled
    rounds (the catalogue holds round x round_size sampled motifs), the fits,
    the trained models and contributions, and the polish run in the record,
    and goes on from the first unfinished step.
    """
    from motex_db.catalogue import sample_motifs
    from motex_db.datasets import get_dataset
    from motex_db.explain import explain_model
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import fit_catalogue, get_or_create_fit_config
    from motex_db.learning import train_model
    from motex_db.structures import get_starting_model
    from sqlmodel import Session

    if budget < 2 * EXTRACT_MIN_ROUND:
        raise InputError(f"--budget must be at least {2 * EXTRACT_MIN_ROUND} fits, not {budget}.")
    settings = settings or FitSettings.for_recipe("fast")
    with Session(engine) as session:
        model = get_starting_model(session, structure)
        data = get_dataset(session, dataset)
    config = get_or_create_fit_config(engine, settings.resolved(data.meta or {}))
    reserve = int(budget * EXTRACT_POLISH_SHARE) if polish_budget is None else int(polish_budget)
    if not 1 <= reserve < budget:
        raise InputError(f"the polish budget must be at least 1 and below --budget ({budget}), not {reserve}.")
    if round_size is None:
        round_size = max(EXTRACT_MIN_ROUND, (budget - reserve) // 5)
    if round_size < 1:
        raise InputError(f"--round must be at least 1 motif, not {round_size}.")
    rounds: list[ExtractRound] = []
    converged = False
    explanation = None
    index = 0
    while True:
        target = (index + 1) * round_size
        # from the round's number, not from the fits in the record, so that a rerun walks the same rounds:
        # each round fits round_size motifs and its extracted motif
        if index > 0 and target + index + 1 > budget - reserve:
            break
        strategy = "uniform" if index == 0 else "guided"
        have = _sampled_count(engine, model.id)
        if have < target:
            on_stage(f"round {index + 1}: sampling {target - have} motifs ({strategy})")
            sample_motifs(engine, structure, target - have, strategy, seed + index, data=dataset if index else None)
        on_stage(f"round {index + 1}: fitting")
        fit_catalogue(engine, structure, dataset, settings, on_progress=on_fit_progress)
        on_stage(f"round {index + 1}: training")
        trained = train_model(engine, structure, dataset, config.id, n_iter=n_iter, seed=seed, mlflow_uri=mlflow_uri)
        on_stage(f"round {index + 1}: explaining")
        explanation = explain_model(engine, structure, dataset, trained.trained_model_id)
        changes = (explanation.convergence or {}).get("three_quarters", {}).get("sign_changes")
        rounds.append(ExtractRound(index + 1, strategy, _sampled_count(engine, model.id), trained.trained_model_id,
                                   explanation.extracted_mask, explanation.extracted_rwp, changes))
        index += 1
        if changes == 0:
            converged = True
            break
    spent = _fits_outside_polish(engine, model.id, data.id, config.id)
    polish = None
    if explanation is not None and "1" in explanation.extracted_mask:
        left = max(budget - spent, reserve)
        on_stage(f"polishing the extracted motif ({left} fits at most)")
        polish = polish_motif(engine, structure, dataset, "extracted", left, seed, on_progress=on_polish_progress)
    return ExtractOutcome(structure, dataset, budget, rounds, converged, spent, polish, explanation)
