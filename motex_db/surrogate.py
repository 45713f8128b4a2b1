"""Step 3 of ML-MotEx, the pure part: a surrogate model of Rwp from atom presence.

Each fitted motif becomes one row of features (the number of kept permutable
atoms, then one 0/1 column per permutable atom, science.md section 4) with its
Rwp as the target. A gradient-boosted tree regressor (XGBoost) learns Rwp from
them:

1. a seeded, shuffled 80/20 split into training and test motifs;
2. hyper-parameters by Bayesian optimisation (scikit-optimize, Gaussian
   process), each candidate fitted with early stopping on a validation part
   split off the *training* motifs and scored by its mean absolute error
   there (or by k-fold cross-validation on request); the search ends when it
   stops improving, and the candidate cheapest to explain within a percent or
   two of the best is chosen;
3. the final model: the chosen candidate's fit (ML-MotEx stopped on its test
   set, which leaks; here the test set only measures);
4. MAE, RMSE and R^2 on the test motifs.

Everything here takes arrays and returns arrays or plain values:
hyper-parameters are explicit, randomness comes from ``seed``, and the same
inputs and seed give a byte-identical model. Nothing here prints or touches a
database or MLflow (that is :mod:`motex_db.learning`).

References: Anker et al., npj Comput. Mater. 8, 213 (2022) (ML-MotEx);
Chen & Guestrin, KDD 2016 (XGBoost).
"""

from __future__ import annotations

import collections
import functools
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import xgboost as xgb
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import KFold
from skopt import Optimizer
from skopt.space import Integer, Real
from threadpoolctl import threadpool_limits

from motex_db.errors import InputError

__all__ = [
    "N_ITER",
    "N_INITIAL",
    "CV_FOLDS",
    "TRIALS_PER_ASK",
    "PATIENCE",
    "MIN_IMPROVEMENT",
    "COST_TOLERANCE",
    "PRUNE_EVERY",
    "TEST_FRACTION",
    "VALIDATION_FRACTION",
    "EARLY_STOPPING_ROUNDS",
    "MAX_ROUNDS",
    "MIN_MOTIFS",
    "features",
    "feature_names",
    "split",
    "SearchSpace",
    "Trial",
    "SearchResult",
    "search_hyperparameters",
    "choose_trial",
    "FinalModel",
    "train_final",
    "fit_booster",
    "evaluate",
    "model_to_json",
    "model_from_json",
    "SurrogateResult",
    "train_surrogate",
    "check_targets",
]

# ML-MotEx's recipe (science.md section 4); every default below refers here.
N_ITER = 50  # at most this many Bayesian iterations after the random starts
N_INITIAL = 4  # random starts before the Gaussian process takes over
# How each trial is scored: 0 (the default) on the validation part that the
# final model's early stopping uses (so the chosen trial *is* the final
# model, and no fit is repeated); k >= 2 by k-fold cross-validation of the
# training motifs (k fits per trial, and a final fit after the search).
# Measured in docs/learning.md: on the Keggin and 48-W catalogues the
# models it picked had 0.99 and 1.00 times the test MAE of the 3-fold search
# motex-db ran before, at one fit per trial instead of three.
CV_FOLDS = 0
# Candidates proposed together (scikit-optimize's constant liar) and trained
# side by side, one thread each. Fixed, not the core count, so that the
# trials and the chosen model do not depend on the machine. Four rather than
# two: trials stop early after very different numbers of rounds, and with
# four fits shared between two cores one long fit leaves a core idle less
# (the 72-W search took 31 s instead of 40, docs/learning.md).
TRIALS_PER_ASK = 4
# The search stops after this many trials in a row that lower the best score
# by less than MIN_IMPROVEMENT (relative), counted after the random starts.
# Measured on the Keggin, 48-W and 72-W catalogues (docs/learning.md):
# patience 4 and 6 chose the same trial.
PATIENCE = 4
MIN_IMPROVEMENT = 0.005
# Among trials within this (relative) of the lowest score, the one whose
# model is cheapest to explain is chosen (see Trial.cost).
COST_TOLERANCE = 0.02
# A trial is stopped (pruned) once it cannot come within COST_TOLERANCE of
# the lowest score of the search's earlier steps: every PRUNE_EVERY rounds
# (from the second check on), its best validation MAE minus the gain per
# round of its latest half, drawn on as a straight line over every round
# left to it, still lies above that mark. Validation curves of boosting
# flatten as they go, so the straight line promises more than a fit can
# still gain. Measured on long searches of the Keggin and 48-W catalogues
# (docs/learning.md): no trial within the tolerance was ever pruned, and
# 30 % of all boosting rounds were saved.
PRUNE_EVERY = 100
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.2  # of the training motifs, for early stopping
EARLY_STOPPING_ROUNDS = 50
# Upper bound on boosting rounds of every fit (ML-MotEx allowed 5000
# "epochs"). Early stopping ends most fits sooner. Measured
# (docs/learning.md): the catalogues' best models are shallow (depth 3) and
# want 1,500-3,000 rounds; a bound of 1000 cost 5-7 % of test MAE.
MAX_ROUNDS = 3000
# Below this the 80/20 split, the folds and a validation part leave a
# handful of motifs: the numbers would mean nothing.
MIN_MOTIFS = 20

# Settings shared by every XGBoost fit, in one place. "hist" is exact here
# (binary features and n_kept have at most N + 1 distinct values, far fewer
# than the 256 bins) and is the fastest CPU method.
_FIXED_PARAMS = {"objective": "reg:squarederror", "tree_method": "hist"}
# Early stopping watches the last metric: MAE, the score of the search too.
_EVAL_METRICS = ["rmse", "mae"]


# --------------------------------------------------------------------------
# Features and split


def features(masks: np.ndarray) -> np.ndarray:
    """The feature matrix of motifs: (n, N) masks -> (n, N + 1) floats.

    Column 0 is the number of kept permutable atoms; column a (1..N) is 1.0
    when permutable atom a is kept and 0.0 when it is removed (science.md
    section 4, ML-MotEx's input format). ``masks`` may be bool or 0/1 integers.
    """
    masks = _as_masks(masks)
    out = np.empty((masks.shape[0], masks.shape[1] + 1), dtype=np.float64)
    out[:, 0] = masks.sum(axis=1)
    out[:, 1:] = masks
    return out


def feature_names(n_permutable: int) -> list[str]:
    """Names of the feature columns: ``["n_kept", "atom_1", ..., "atom_N"]``."""
    if n_permutable < 1:
        raise InputError(f"A structure needs at least one permutable atom, not {n_permutable}.")
    return ["n_kept"] + [f"atom_{a}" for a in range(1, n_permutable + 1)]


def split(n: int, seed: int, test_fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """A seeded shuffled split of ``n`` rows: (train indices, test indices), each sorted.

    The test part holds round(test_fraction * n) rows (at least one), the
    training part the rest (at least one). The same ``n`` and ``seed`` give
    the same split.
    """
    return _shuffled_split(n, np.random.default_rng(_check_seed(seed)), test_fraction, "test")


def _shuffled_split(
    n: int, rng: np.random.Generator, fraction: float, what: str
) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < fraction < 1.0:
        raise InputError(f"The {what} fraction must lie strictly between 0 and 1, not {fraction}.")
    if n < 2:
        raise InputError(f"Splitting off a {what} part needs at least 2 motifs, not {n}.")
    n_held = min(max(int(round(fraction * n)), 1), n - 1)
    order = rng.permutation(n)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


# --------------------------------------------------------------------------
# Hyper-parameter search


@dataclass(frozen=True)
class SearchSpace:
    """The hyper-parameters searched, as (low, high) bounds, both included.

    - learning_rate 0.1-0.8 and max_depth 2-10: ML-MotEx's space. The learning
      rate is searched on a log scale, where equal steps change the shrinkage
      per round by equal factors.
    - min_child_weight 1-20 (log scale): for squared error, the fewest motifs
      per leaf. Fit results carry noise (local minima of the refinement), and
      this is the direct guard against leaves that fit a handful of motifs.
    - subsample 0.5-1.0: row subsampling per tree, the other cheap guard
      against fitting noise; 1.0 recovers ML-MotEx's boosting on all rows.

    The number of trees is not searched: every fit stops early on its
    held-out part (:data:`EARLY_STOPPING_ROUNDS`), so each candidate is
    scored with the tree count that suits it. (Searched, as
    ML-MotEx and motex-db before did, a capped count biased the search
    against slow learning rates and cost a dimension.)

    Column subsampling is left out on purpose: it would shift SHAP credit
    between an atom and the n_kept column, the very thing step 4 reads.
    """

    learning_rate: tuple[float, float] = (0.1, 0.8)
    max_depth: tuple[int, int] = (2, 10)
    min_child_weight: tuple[float, float] = (1.0, 20.0)
    subsample: tuple[float, float] = (0.5, 1.0)
    # The first point tried, before the random starts (None: random starts
    # only): shallow trees at a moderate learning rate, the region where the
    # searches on the Keggin, 48-W and 72-W catalogues found their best models
    # (docs/learning.md). It is one of the n_initial starts.
    start: Optional[tuple] = (0.2, 3, 5.0, 0.8)

    def dimensions(self) -> list:
        """The scikit-optimize dimensions, named like XGBoost's parameters."""
        try:
            return [
                Real(*self.learning_rate, prior="log-uniform", name="learning_rate"),
                Integer(*self.max_depth, name="max_depth"),
                Real(*self.min_child_weight, prior="log-uniform", name="min_child_weight"),
                Real(*self.subsample, name="subsample"),
            ]
        except ValueError as exc:
            raise InputError(f"The hyper-parameter search space is not valid: {exc}") from None

    def names(self) -> list[str]:
        return [d.name for d in self.dimensions()]

    def start_point(self) -> Optional[list]:
        """``start`` as a point of :meth:`dimensions`, checked to lie inside them."""
        if self.start is None:
            return None
        dimensions = self.dimensions()
        if len(self.start) != len(dimensions) or not all(v in d for v, d in zip(self.start, dimensions)):
            raise InputError(f"The search's start point {self.start} does not lie in its space.")
        return list(self.start)


@dataclass(frozen=True)
class Trial:
    """One evaluated candidate: its parameters, its score and its size.

    ``cv_mae`` is the mean held-out MAE over the scoring parts (the
    validation part, or the cross-validation folds); ``n_rounds`` is the mean
    number of trees early stopping kept. ``cost`` = n_rounds x 2^max_depth x
    max_depth^2 is proportional to TreeSHAP's work per explained motif
    (trees x leaves x depth^2), the price of step 4. ``started``/``finished``
    are Unix times in seconds (for tracking). A ``pruned`` trial was stopped
    before its early stopping because it could not come within the tolerance
    of the search's best (:data:`PRUNE_EVERY`): its score and tree count are
    those it had reached.
    """

    index: int  # 0-based, in the order evaluated; the first n_initial are random
    params: dict
    cv_mae: float  # mean over the scoring parts, in Rwp units
    fold_mae: tuple[float, ...]
    n_rounds: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    pruned: bool = False  # stopped once it could not come near the best (see PRUNE_EVERY)

    @property
    def cost(self) -> float:
        depth = int(self.params.get("max_depth", 0))
        return float(self.n_rounds) * 2.0**depth * depth**2

    def as_dict(self) -> dict:
        """The trial as plain JSON values (the record's training log)."""
        return {"index": self.index, "params": dict(self.params), "cv_mae": self.cv_mae,
                "n_rounds": self.n_rounds, "started": self.started, "finished": self.finished,
                "pruned": self.pruned}


@dataclass(frozen=True)
class SearchResult:
    """Every trial of a search and the chosen one.

    ``best_*`` describe the chosen trial: the cheapest (:attr:`Trial.cost`)
    among those whose score is within ``tolerance`` of the lowest, which is
    ``lowest_cv_mae``. ``stopped_early`` is True when the search ended before
    its ``n_initial + n_iter`` trials because it stopped improving.
    ``final`` is the chosen trial's model when trials were scored on the
    validation part (``cv=0``): the model :func:`train_final` would fit with
    ``best_params``, already fitted. None after cross-validation.
    """

    trials: list[Trial]
    best_index: int
    best_params: dict
    best_cv_mae: float
    lowest_cv_mae: float = math.nan
    stopped_early: bool = False
    final: Optional["FinalModel"] = None


def search_hyperparameters(
    X_train: np.ndarray,
    y_train: np.ndarray,
    seed: int,
    n_iter: int = N_ITER,
    cv: int = CV_FOLDS,
    n_initial: int = N_INITIAL,
    on_trial: Optional[Callable[[int, dict, float], None]] = None,
    space: SearchSpace = SearchSpace(),
    n_jobs: int = 1,
    patience: Optional[int] = PATIENCE,
    tolerance: float = COST_TOLERANCE,
    on_trial_done: Optional[Callable[[Trial], None]] = None,
    prune: bool = True,
) -> SearchResult:
    """Bayesian optimisation of XGBoost's hyper-parameters by held-out MAE.

    scikit-optimize's ``Optimizer`` with a Gaussian-process surrogate proposes
    ``n_initial`` random points, then up to ``n_iter`` points chosen by its
    acquisition function (``--n-iter`` counts the latter, as in ML-MotEx),
    :data:`TRIALS_PER_ASK` at a time. Every fit of a trial stops early on its
    held-out part. With ``cv=0`` a trial is one fit, scored on the validation
    part of :func:`train_final` (same split, same stopping): its model is the
    final model if chosen. With ``cv=k`` (k >= 2) a trial is k fits on the
    same seeded, shuffled folds, scored by the mean held-out MAE.

    The search stops before ``n_iter`` when ``patience`` trials in a row after
    the random starts have not lowered the best score by more than
    :data:`MIN_IMPROVEMENT` (relative); ``patience=None`` runs every trial
    (the exhaustive search). The chosen trial is the cheapest to explain
    (:attr:`Trial.cost`) within ``tolerance`` (relative) of the lowest score
    (``tolerance=0``: the lowest): differences of a percent are within the
    held-out parts' own spread, and a model of a third of the trees explains
    three times faster in step 4.

    With ``prune`` (and ``cv=0``), a trial that cannot come within
    ``tolerance`` of the lowest score of the earlier steps is stopped
    (:data:`PRUNE_EVERY`). As long as its validation curve flattens as
    boosting curves do (no trial on the catalogues measured in
    docs/learning.md did otherwise), such a trial could be neither the lowest
    nor the chosen one and could not lower the best score, so the choice and
    the stopping rule see the same numbers; the Gaussian process is told the
    score the trial had reached, which can steer its later proposals
    differently. ``learning.train_model`` turns it off for the exhaustive
    search.

    ``on_trial(index, params, cv_mae)`` and ``on_trial_done(trial)`` are
    called after each trial (index 0-based). ``n_jobs`` is how many fits run
    side by side, each on one thread; the result does not depend on it. A
    point proposed twice is not refitted (fits are deterministic).
    """
    X_train, y_train = _check_xy(X_train, y_train)
    seed = _check_seed(seed)
    if n_initial < 1:
        raise InputError(f"The search needs at least one random start, not {n_initial}.")
    if n_iter < 0:
        raise InputError(f"The number of Bayesian iterations must be zero or more, not {n_iter}.")
    if patience is not None and patience < 1:
        raise InputError(f"The search's patience must be at least one trial, not {patience}.")
    if not 0.0 <= tolerance < 1.0:
        raise InputError(f"The score tolerance must lie in [0, 1), not {tolerance}.")
    if cv != 0 and not 2 <= cv <= len(y_train):
        raise InputError(
            f"Cross-validation needs between 2 and {len(y_train)} folds (the training motifs), or 0 to score "
            f"on the validation part, not {cv}."
        )
    dimensions = space.dimensions()
    names = [d.name for d in dimensions]
    # One set of matrices per slot of a batch: XGBoost builds its histogram
    # index on a matrix lazily, and two fits sharing one at once race there.
    split_rows = _scoring_parts(X_train, y_train, cv, seed)
    parts = [[_part(X_train, y_train, fit, held) for fit, held in split_rows] for _ in range(TRIALS_PER_ASK)]
    # "sampling" scores the acquisition function on random points instead of
    # polishing it with L-BFGS from several starts: the same proposals to
    # within the GP's own uncertainty, at a fraction of the cost per ask.
    optimizer = Optimizer(dimensions, base_estimator="GP", n_initial_points=n_initial, random_state=seed,
                          acq_optimizer="sampling")
    n_trials = n_initial + n_iter
    trials: list[Trial] = []
    kept: dict[int, FinalModel] = {}  # validation-part models of trials that may yet be chosen
    seen: dict[tuple, tuple] = {}
    best, since_best, stopped = math.inf, 0, False
    # The Gaussian process works on matrices of a few dozen rows: BLAS threads
    # only cost there (many-fold slower on a busy 2-core machine), so limit
    # them to one for the duration of the search.
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        # The GP's kernel fit may stop at a bound of its hyper-parameters; that
        # is expected with few points and changes nothing for the caller.
        warnings.simplefilter("ignore", ConvergenceWarning)
        while len(trials) < n_trials and not stopped:
            started = time.time()
            size = min(TRIALS_PER_ASK, n_trials - len(trials))
            first = [space.start_point()] if not trials and space.start is not None else []
            size -= len(first)
            points = first + (optimizer.ask(n_points=size) if size > 1 else [optimizer.ask()] if size else [])
            batch = [{name: _plain(value) for name, value in zip(names, point)} for point in points]
            fresh = list(dict.fromkeys(tuple(p.values()) for p in batch if tuple(p.values()) not in seen))
            jobs = [(key, part) for slot, key in enumerate(fresh) for part in parts[slot]]
            # Only marks from earlier steps: the trials do not depend on how the turns fell.
            mark = best * (1.0 + tolerance) if prune and cv == 0 and trials else None
            fittings = [_Boosting(part, dict(zip(names, key)), seed, cv == 0, EARLY_STOPPING_ROUNDS, MAX_ROUNDS,
                                  1, True, stop_above=mark) for key, part in jobs]
            _boost_all(fittings, n_jobs)
            fitted = [(*fitting.result(), fitting.pruned) for fitting in fittings]
            models = {}
            for key in fresh:
                mine = [f for (k, _), f in zip(jobs, fitted) if k == key]
                seen[key] = (tuple(m for m, _, _, _ in mine), float(np.mean([r for _, r, _, _ in mine])),
                             any(p for _, _, _, p in mine))
                models[key] = mine[0][2]
            finished = time.time()
            scores = []
            for params in batch:
                fold_mae, n_rounds, pruned = seen[tuple(params.values())]
                model = models.pop(tuple(params.values()), None)
                index = len(trials)
                trial = Trial(index=index, params=params, cv_mae=float(np.mean(fold_mae)), fold_mae=fold_mae,
                              n_rounds=n_rounds, started=started, finished=finished, pruned=pruned)
                trials.append(trial)
                scores.append(trial.cv_mae)
                if trial.cv_mae < best * (1.0 - MIN_IMPROVEMENT):
                    since_best = 0
                elif index >= n_initial:
                    since_best += 1
                best = min(best, trial.cv_mae)
                if model is not None:
                    kept[index] = model
                if on_trial is not None:
                    on_trial(index, dict(params), trial.cv_mae)
                if on_trial_done is not None:
                    on_trial_done(trial)
            kept = {i: m for i, m in kept.items() if trials[i].cv_mae <= best * (1.0 + tolerance)}
            stopped = patience is not None and since_best >= patience and len(trials) < n_trials
            # The last tell need not refit the GP: nothing more is asked.
            optimizer.tell([list(p) for p in points], scores, fit=len(trials) < n_trials and not stopped)
    chosen = choose_trial(trials, tolerance)
    return SearchResult(
        trials=trials, best_index=chosen.index, best_params=dict(chosen.params), best_cv_mae=chosen.cv_mae,
        lowest_cv_mae=min(t.cv_mae for t in trials), stopped_early=stopped, final=kept.get(chosen.index),
    )


def choose_trial(trials: list[Trial], tolerance: float = COST_TOLERANCE) -> Trial:
    """The cheapest trial whose score is within ``tolerance`` (relative) of the lowest; ties by index."""
    if not trials:
        raise InputError("A search without trials has nothing to choose from.")
    lowest = min(t.cv_mae for t in trials)
    near = [t for t in trials if t.cv_mae <= lowest * (1.0 + tolerance)]
    return min(near, key=lambda t: (t.cost, t.cv_mae, t.index))


def _scoring_parts(X, y, cv, seed) -> list[tuple]:
    """(fit rows, held-out rows) index pairs of ``X``: the validation split (cv=0) or k folds."""
    if cv == 0:
        return [_validation_split(len(y), seed)]
    return [(fit, held) for fit, held in KFold(n_splits=cv, shuffle=True, random_state=seed).split(X)]


def _validation_split(n: int, seed: int, fraction: float = VALIDATION_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    # A stream of its own, so the validation part does not mirror the test split.
    return _shuffled_split(n, np.random.default_rng([int(seed), 1]), fraction, "validation")


def _plain(value):
    """numpy scalars from scikit-optimize as plain Python numbers (JSON, MLflow)."""
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    return float(value)


# --------------------------------------------------------------------------
# Final fit, evaluation, serialisation


@dataclass(frozen=True)
class FinalModel:
    """The surrogate after early stopping, with how it got there.

    ``model`` holds exactly ``best_iteration + 1`` trees (the rounds after the
    best one are cut off). ``learning_curve`` is
    ``{"train": {"rmse": [...], "mae": [...]}, "validation": {...}}`` with one
    value per boosting round actually run (Rwp units; "train" absent when the
    fit was made with ``train_curve=False``), including the
    ``early_stopping_rounds`` rounds after the best. ``fit_idx`` and
    ``validation_idx`` index rows of the ``X_train`` given to
    :func:`train_final`. ``hyperparameters`` are the XGBRegressor keyword
    arguments that rebuild ``model`` when fitted on ``X_train[fit_idx]``;
    ``model_json`` is the text ``model`` is loaded from (:func:`model_to_json`),
    on first use. ``booster`` holds the same trees as fitted, and
    :meth:`predict` predicts with them: the same values to the bit (the
    JSON keeps every float exactly, tested), without parsing the JSON back
    (a tenth of a second for 3000 trees, for each of a series' frames).
    """

    booster: xgb.Booster
    model_json: str
    best_iteration: int
    n_rounds_run: int
    learning_curve: dict
    fit_idx: np.ndarray
    validation_idx: np.ndarray
    hyperparameters: dict

    @functools.cached_property
    def model(self) -> xgb.XGBRegressor:
        return model_from_json(self.model_json)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted Rwp of the rows of ``X`` (float32, as ``model.predict``)."""
        return self.booster.predict(xgb.DMatrix(np.asarray(X, dtype=np.float64)), validate_features=False)


def train_final(
    X_train: np.ndarray,
    y_train: np.ndarray,
    params: dict,
    seed: int,
    validation_fraction: float = VALIDATION_FRACTION,
    early_stopping_rounds: int = EARLY_STOPPING_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
    n_jobs: int = 1,
    train_curve: bool = True,
) -> FinalModel:
    """Fit the surrogate with early stopping on a validation part of the training motifs.

    A seeded ``validation_fraction`` of ``X_train`` is held out (never the
    test motifs: the caller passes only training motifs); the regressor
    boosts up to ``max_rounds`` rounds on the rest and stops once the
    validation MAE has not improved for ``early_stopping_rounds`` rounds.
    ``params`` are XGBoost parameters (a search's ``best_params``); an
    ``n_estimators`` among them is ignored, early stopping decides.
    Deterministic: the same inputs and seed give a byte-identical model, the
    one a search with ``cv=0`` fitted for these parameters. With
    ``train_curve=False`` the learning curve holds the validation side only:
    scoring the fitted motifs every round costs about a sixth of the fit, and
    the model is the same.
    """
    X_train, y_train = _check_xy(X_train, y_train)
    seed = _check_seed(seed)
    if early_stopping_rounds < 1:
        raise InputError(f"Early stopping needs at least one round of patience, not {early_stopping_rounds}.")
    if max_rounds < 1:
        raise InputError(f"The final fit needs at least one boosting round, not {max_rounds}.")
    fit_idx, validation_idx = _validation_split(len(y_train), seed, validation_fraction)
    part = _part(X_train, y_train, fit_idx, validation_idx, n_jobs)
    params = {k: v for k, v in params.items() if k != "n_estimators"}
    return _fit(part, params, seed, curve=True, early_stopping_rounds=early_stopping_rounds,
                max_rounds=max_rounds, n_jobs=n_jobs, train_curve=train_curve)[2]


def fit_booster(X_train: np.ndarray, y_train: np.ndarray, params: dict, seed: int) -> xgb.Booster:
    """The trees :func:`train_final` keeps for these inputs, as a bare booster, and nothing else.

    The same split, stopping and trees (byte for byte), without the learning
    curve, the second metric or the JSON round trip: for models that are
    only explained (the convergence check's), where those cost a fifth of
    the fit.
    """
    X_train, y_train = _check_xy(X_train, y_train)
    seed = _check_seed(seed)
    fit_idx, validation_idx = _validation_split(len(y_train), seed)
    part = _part(X_train, y_train, fit_idx, validation_idx)
    params = {k: v for k, v in params.items() if k != "n_estimators"}
    return _fit(part, params, seed, curve=False, keep=True)[2]


def _part(X, y, fit_rows, held_rows, n_jobs: int = 1) -> tuple:
    """(fit DMatrix, held-out DMatrix, fit rows, held-out rows): one scoring part, built once per search."""
    return (xgb.DMatrix(X[fit_rows], label=y[fit_rows], nthread=n_jobs),
            xgb.DMatrix(X[held_rows], label=y[held_rows], nthread=n_jobs), fit_rows, held_rows)


def _fit(part, params: dict, seed: int, curve: bool, early_stopping_rounds: int = EARLY_STOPPING_ROUNDS,
         max_rounds: int = MAX_ROUNDS, n_jobs: int = 1, train_curve: bool = True, keep: bool = False,
         ) -> tuple[float, int, Optional["FinalModel"]]:
    """One boosted fit of a part, stopping early on its held-out rows: (held-out MAE, trees kept, model).

    With ``curve`` the learning curve on both sides is recorded and the model
    is returned as a :class:`FinalModel`; without, only the held-out MAE is
    evaluated (cross-validation folds) and the model is None, or with
    ``keep`` the booster cut to its best round.
    """
    fitting = _Boosting(part, params, seed, curve, early_stopping_rounds, max_rounds, n_jobs, train_curve)
    fitting.advance(max_rounds)
    return fitting.result(keep)


class _Boosting:
    """One boosted fit of a scoring part with early stopping, advanced a number of rounds at a time.

    Round for round what ``xgb.train`` does with ``evals`` and
    ``early_stopping_rounds`` (and nothing else): the same update, the same
    evaluation after it, the same rule (the best round is the first with the
    lowest value of the last metric on the last evaluation set; training
    stops ``early_stopping_rounds`` rounds after it), hence the same trees
    and curves (tested against ``xgb.train``). Written out so that a thread
    can take turns between the fits of a batch (:func:`_boost_all`).
    """

    def __init__(self, part, params: dict, seed: int, curve: bool, early_stopping_rounds: int,
                 max_rounds: int, n_jobs: int, train_curve: bool, stop_above: Optional[float] = None):
        fit, held, self.fit_rows, self.held_rows = part
        self.curve = curve
        self.fit_data = fit
        self.evals = [(fit, "train"), (held, "validation")] if curve and train_curve else [(held, "validation")]
        self.params = params
        self.seed = seed
        self.booster = xgb.Booster(
            {**_FIXED_PARAMS, **params, "seed": int(seed), "nthread": int(n_jobs),
             "eval_metric": _EVAL_METRICS if curve else "mae"},
            [fit] + [data for data, _ in self.evals],
        )
        self.patience = int(early_stopping_rounds)
        self.max_rounds = int(max_rounds)
        self.history: dict = {}
        self.rounds = 0
        self.best_iteration = -1
        self.best_score = math.inf
        self.done = False
        self.stop_above = stop_above
        self.pruned = False
        self._round: Optional[Callable[[int], str]] = None  # the later rounds (:func:`_direct_round`)

    def advance(self, n_rounds: int) -> bool:
        """Boost up to ``n_rounds`` more rounds; True once the fit has stopped."""
        for _ in range(n_rounds):
            if self.done:
                break
            iteration = self.rounds
            if self._round is None:  # the first round, through the methods that check the matrices' features
                self.booster.update(self.fit_data, iteration)
                evaluated = self.booster.eval_set(self.evals, iteration)
                self._round = _ROUNDS(self.booster, self.fit_data, self.evals) if _ROUNDS is not None else None
            else:
                evaluated = self._round(iteration)
            score = math.nan
            for item in evaluated.split()[1:]:
                name, value = item.split(":")
                data, metric = name.split("-", 1)
                score = float(value)
                self.history.setdefault(data, {}).setdefault(metric, []).append(score)
            self.rounds += 1
            if self.best_iteration < 0 or score < self.best_score:
                self.best_iteration, self.best_score = iteration, score
            self.done = iteration - self.best_iteration >= self.patience or self.rounds >= self.max_rounds
            if not self.done and self.stop_above is not None and self.rounds % PRUNE_EVERY == 0:
                self.pruned = self.done = self._hopeless()
        return self.done

    def _hopeless(self) -> bool:
        """Whether the fit, gaining for all its remaining rounds what it gained per round lately, stays above the mark."""
        if self.rounds < 2 * PRUNE_EVERY:
            return False
        curve = self.history["validation"]["mae"]
        half = self.rounds // 2
        gain = (min(curve[:half]) - self.best_score) / (self.rounds - half)
        return self.best_score - gain * (self.max_rounds - self.rounds) > self.stop_above

    def result(self, keep: bool = False) -> tuple[float, int, object]:
        """(held-out MAE, trees kept, model) of the stopped fit; see :func:`_fit`."""
        best = self.best_iteration
        mae = float(self.history["validation"]["mae"][best])
        if self.pruned:  # it cannot be chosen: no model to keep
            return mae, best + 1, None
        if not self.curve:
            return mae, best + 1, self.booster[: best + 1] if keep else None
        # Keep the best model only: its JSON, its predictions and its SHAP values
        # then all describe the same trees, whoever loads it.
        kept = self.booster[: best + 1]
        self.booster = self._round = None  # the training caches go with it
        final = FinalModel(
            booster=kept,
            model_json=_booster_json(kept),
            best_iteration=best,
            n_rounds_run=len(self.history["validation"]["mae"]),
            learning_curve={side: {m: [float(v) for v in self.history[side][m]] for m in _EVAL_METRICS}
                            for side in self.history},
            fit_idx=self.fit_rows,
            validation_idx=self.held_rows,
            hyperparameters={**_FIXED_PARAMS, **self.params, "n_estimators": best + 1,
                             "random_state": int(self.seed)},
        )
        return mae, best + 1, final


def _direct_round():
    """One boosting round and its evaluation as ``Booster.update`` and ``Booster.eval_set`` make them, less their checks.

    Both methods check on every call that the matrices' feature names match
    the booster's, and build the evaluation's arrays anew: at depth 3 on 10^4
    motifs that is a fifth of a round (0.26 of 1.4 s for 3000 rounds). After
    the first round, through those methods, the checks cannot fail (the same
    matrices every round), so later rounds call the same two functions of
    XGBoost's C API that the methods call, with the same arguments. None when
    this XGBoost does not expose them as expected: the methods are used.
    """
    import ctypes

    try:
        from xgboost.core import _LIB, _check_call, c_array, c_bst_ulong, c_str
        update, evaluate = _LIB.XGBoosterUpdateOneIter, _LIB.XGBoosterEvalOneIter
    except (ImportError, AttributeError):
        return None
    def rounds_of(booster: xgb.Booster, data: xgb.DMatrix, evals: list) -> Callable[[int], str]:
        """Round ``iteration`` of ``booster`` on ``data``, evaluated on ``evals``: the evaluation's text."""
        matrices = c_array(ctypes.c_void_p, [d.handle for d, _ in evals])
        texts = [c_str(name) for _, name in evals]
        names = c_array(ctypes.c_char_p, texts)

        def round_(iteration: int) -> str:
            _check_call(update(booster.handle, ctypes.c_int(iteration), data.handle))
            message = ctypes.c_char_p()
            _check_call(evaluate(booster.handle, ctypes.c_int(iteration), matrices, names, c_bst_ulong(len(evals)),
                                 ctypes.byref(message)))
            return message.value.decode()

        round_.arguments = (matrices, texts, names)  # alive as long as the function that passes them
        return round_

    return rounds_of


_ROUNDS = _direct_round()

# Rounds a fit of a batch boosts before it gives its core to the next fit.
ROUNDS_PER_TURN = 100


def _boost_all(fittings: list[_Boosting], n_jobs: int) -> None:
    """Run every fit to its stop, ``n_jobs`` at a time, taking turns of :data:`ROUNDS_PER_TURN` rounds.

    Fits of a batch stop after very different numbers of rounds. Given a core
    each until done, two long fits at the end of a batch ran on one core
    while the other waited (72 W: a third of the search); taking turns, every
    core works while at least as many fits are left as cores. Each fit runs
    on a thread of its own, start to end (XGBoost draws its row subsamples
    from a generator per thread, seeded when the fit starts), and the turns
    only decide when it runs, so its trees do not depend on them.
    """
    if len(fittings) <= 1 or n_jobs <= 1:
        for fitting in fittings:
            fitting.advance(fitting.max_rounds)
        return
    turns = threading.Condition()
    queue: collections.deque = collections.deque()  # fits waiting for a core, in the order they asked
    running = [0]
    failed: list[BaseException] = []

    def work(fitting: _Boosting) -> None:
        try:
            while not failed:
                with turns:
                    queue.append(fitting)
                    turns.wait_for(lambda: failed or (running[0] < n_jobs and queue[0] is fitting))
                    if failed:
                        return
                    queue.popleft()
                    running[0] += 1
                    turns.notify_all()
                try:
                    if fitting.advance(ROUNDS_PER_TURN):
                        return
                finally:
                    with turns:
                        running[0] -= 1
                        turns.notify_all()
        except BaseException as exc:
            with turns:
                failed.append(exc)
                turns.notify_all()

    threads = [threading.Thread(target=work, args=(fitting,), name=f"fit {i}", daemon=True)
               for i, fitting in enumerate(fittings)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]


def evaluate(model, X_test: np.ndarray, y_test: np.ndarray) -> dict:
    """Test-set scores of a surrogate (an XGBRegressor or a :class:`FinalModel`): ``{"mae", "rmse", "r2"}`` (Rwp units).

    R^2 is NaN for fewer than two test motifs or a constant test target.
    """
    X_test, y_test = _check_xy(X_test, y_test, min_rows=1)
    predicted = model.predict(X_test)
    r2 = float(r2_score(y_test, predicted)) if len(y_test) >= 2 and np.ptp(y_test) > 0 else math.nan
    return {
        "mae": float(mean_absolute_error(y_test, predicted)),
        "rmse": float(math.sqrt(mean_squared_error(y_test, predicted))),
        "r2": r2,
    }


def model_to_json(model) -> str:
    """The model (an XGBRegressor or a Booster) in XGBoost's own JSON format (trees and learner parameters)."""
    return _booster_json(model.get_booster() if hasattr(model, "get_booster") else model)


def model_from_json(text: str) -> xgb.XGBRegressor:
    """A regressor from :func:`model_to_json`'s text; predicts exactly as the original."""
    model = xgb.XGBRegressor()
    try:
        model.load_model(bytearray(text.encode("utf-8")))
    except xgb.core.XGBoostError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise InputError(f"The stored surrogate model is not a readable XGBoost model: {first}") from None
    return model


def _booster_json(booster: xgb.Booster) -> str:
    return bytes(booster.save_raw("json")).decode("utf-8")


# --------------------------------------------------------------------------
# The whole of step 3


@dataclass(frozen=True)
class SurrogateResult:
    """Everything step 3 produces for one catalogue of fits.

    Index arrays refer to rows of the ``masks``/``rwp`` given to
    :func:`train_surrogate`: ``train_idx`` and ``test_idx`` partition them;
    ``validation_idx`` (early stopping) and ``fit_idx`` (the trees' data)
    partition ``train_idx``. Step 4 explains the training motifs:
    ``features(masks)[train_idx]``.
    """

    model: xgb.XGBRegressor
    model_json: str
    hyperparameters: dict
    trials: list[Trial]
    best_cv_mae: float  # of the chosen trial
    lowest_cv_mae: float  # of any trial
    stopped_early: bool  # the search ended before n_initial + n_iter trials
    metrics: dict
    learning_curve: dict
    best_iteration: int
    train_idx: np.ndarray
    test_idx: np.ndarray
    validation_idx: np.ndarray
    fit_idx: np.ndarray
    y_test: np.ndarray
    y_pred_test: np.ndarray
    feature_names: list[str]
    seed: int
    n_motifs: int


def train_surrogate(
    masks: np.ndarray,
    rwp: np.ndarray,
    seed: int = 0,
    n_iter: int = N_ITER,
    cv: int = CV_FOLDS,
    on_trial: Optional[Callable[[int, dict, float], None]] = None,
    n_initial: int = N_INITIAL,
    space: SearchSpace = SearchSpace(),
    n_jobs: Optional[int] = None,
    patience: Optional[int] = PATIENCE,
    tolerance: float = COST_TOLERANCE,
    on_trial_done: Optional[Callable[[Trial], None]] = None,
    prune: bool = True,
) -> SurrogateResult:
    """Step 3 end to end: features, split, search, final fit, test scores.

    ``masks`` (n, N) are the fitted motifs and ``rwp`` (n,) their fit
    quality; every Rwp must be finite (leave failed fits out). Refuses fewer
    than :data:`MIN_MOTIFS` motifs and a constant Rwp (nothing to learn).
    ``on_trial``, ``on_trial_done``, ``patience``, ``tolerance`` and ``prune``
    are passed to :func:`search_hyperparameters`; ``n_jobs`` fits run side by side
    there (default: one per core; the model does not depend on it). Every
    fit trains on one thread, which keeps it byte-identical; after a search
    scored on the validation part the chosen trial's fit is the final model.
    """
    masks = _as_masks(masks)
    rwp = np.asarray(rwp, dtype=np.float64)
    if rwp.ndim != 1 or len(rwp) != len(masks):
        raise InputError(f"There must be one Rwp per motif: {len(masks)} motifs but Rwp of shape {rwp.shape}.")
    check_targets(rwp)
    X = features(masks)
    train_idx, test_idx = split(len(rwp), seed)
    search = search_hyperparameters(
        X[train_idx], rwp[train_idx], seed, n_iter=n_iter, cv=cv, n_initial=n_initial,
        on_trial=on_trial, space=space, n_jobs=n_jobs or os.cpu_count() or 1, patience=patience,
        tolerance=tolerance, on_trial_done=on_trial_done, prune=prune,
    )
    final = search.final or train_final(X[train_idx], rwp[train_idx], search.best_params, seed)
    y_pred_test = final.model.predict(X[test_idx]).astype(np.float64)
    return SurrogateResult(
        model=final.model,
        model_json=final.model_json,
        hyperparameters=final.hyperparameters,
        trials=search.trials,
        best_cv_mae=search.best_cv_mae,
        lowest_cv_mae=search.lowest_cv_mae,
        stopped_early=search.stopped_early,
        metrics=evaluate(final.model, X[test_idx], rwp[test_idx]),
        learning_curve=final.learning_curve,
        best_iteration=final.best_iteration,
        train_idx=train_idx,
        test_idx=test_idx,
        validation_idx=train_idx[final.validation_idx],
        fit_idx=train_idx[final.fit_idx],
        y_test=rwp[test_idx],
        y_pred_test=y_pred_test,
        feature_names=feature_names(masks.shape[1]),
        seed=int(seed),
        n_motifs=len(rwp),
    )


# --------------------------------------------------------------------------
# Input checks


def check_targets(rwp) -> None:
    """Refuse targets nothing can be learnt from: non-finite, fewer than :data:`MIN_MOTIFS`, or constant."""
    rwp = np.asarray(rwp, dtype=np.float64)
    if not np.all(np.isfinite(rwp)):
        raise InputError(f"{int(np.sum(~np.isfinite(rwp)))} Rwp values are not finite; leave failed fits out.")
    if len(rwp) < MIN_MOTIFS:
        raise InputError(f"Training needs at least {MIN_MOTIFS} fitted motifs, not {len(rwp)}.")
    if np.ptp(rwp) == 0:
        raise InputError(f"Every motif has the same Rwp ({rwp[0]:g}): there is nothing to learn.")


def _as_masks(masks) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 2 or masks.shape[1] < 1:
        raise InputError(f"Motif masks must form an (n motifs, N atoms) array, not shape {masks.shape}.")
    if masks.dtype != bool:
        if not np.all((masks == 0) | (masks == 1)):
            raise InputError("Motif masks must hold only 0/1 (removed/kept) values.")
        masks = masks.astype(bool)
    return masks


def _check_seed(seed) -> int:
    # numpy, scikit-learn and XGBoost all take seeds in [0, 2**32).
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise InputError(f"The seed must be an integer from 0 to {2**32 - 1}, not {seed!r}.")
    return int(seed)


def _check_xy(X, y, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise InputError(f"Features (n, N + 1) and targets (n,) do not match: shapes {X.shape} and {y.shape}.")
    if len(y) < min_rows:
        raise InputError(f"At least {min_rows} motifs are needed here, not {len(y)}.")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise InputError("Features and Rwp values must all be finite.")
    return X, y


