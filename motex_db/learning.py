"""Step 3 of ML-MotEx: a surrogate model of Rwp from atom presence.

Each fitted motif becomes one row of features (the number of kept permutable
atoms, then one 0/1 column per permutable atom, science.md section 4) with its
Rwp as the target. A gradient-boosted tree regressor (XGBoost) learns Rwp from
them:

1. a seeded, shuffled 80/20 split into training and test motifs;
2. hyper-parameters by Bayesian optimisation (scikit-optimize, Gaussian
   process), each candidate scored by the mean absolute error of k-fold
   cross-validation on the training motifs;
3. a final fit on the training motifs with early stopping on a validation part
   split off the *training* motifs (ML-MotEx stopped on its test set, which
   leaks; here the test set only measures);
4. MAE, RMSE and R^2 on the test motifs.

Everything is a pure function of its arguments: hyper-parameters are explicit,
randomness comes from ``seed``, and the same inputs and seed give a
byte-identical model. Nothing here prints or touches a database.

References: Anker et al., npj Comput. Mater. 8, 213 (2022) (ML-MotEx);
Chen & Guestrin, KDD 2016 (XGBoost).
"""

from __future__ import annotations

import math
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
    "FinalModel",
    "train_final",
    "evaluate",
    "model_to_json",
    "model_from_json",
    "SurrogateResult",
    "train_surrogate",
]

# ML-MotEx's recipe (science.md section 4); every default below refers here.
N_ITER = 50  # Bayesian iterations after the random starts
N_INITIAL = 4  # random starts before the Gaussian process takes over
CV_FOLDS = 3
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.2  # of the training motifs, for early stopping
EARLY_STOPPING_ROUNDS = 50
# Upper bound on boosting rounds in the final fit, ML-MotEx's 5000 "epochs";
# early stopping ends it sooner (typically after a few hundred to ~1000).
MAX_ROUNDS = 5000
# Below this the 80/20 split, 3-fold CV and a validation part leave folds of a
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
    - n_estimators 50-500 (log scale): boosting rounds per cross-validation
      fit. A fixed count biases the search: on synthetic catalogues (10^4
      motifs, N = 24) a fixed 200 rounds underfits shallow trees, the search
      then scores them 30 % worse than they are and the final fit runs into
      its round cap. Searched, the best trial's CV MAE matches the final
      test MAE, for about the cost of a fixed 200. Capped at 500 to bound a
      trial's cost; the final fit picks its own number of rounds by early
      stopping.

    Column subsampling is left out on purpose: it would shift SHAP credit
    between an atom and the n_kept column, the very thing step 4 reads.
    Five dimensions stay well determined by 4 + 50 trials.
    """

    learning_rate: tuple[float, float] = (0.1, 0.8)
    max_depth: tuple[int, int] = (2, 10)
    min_child_weight: tuple[float, float] = (1.0, 20.0)
    subsample: tuple[float, float] = (0.5, 1.0)
    n_estimators: tuple[int, int] = (50, 500)

    def dimensions(self) -> list:
        """The scikit-optimize dimensions, named like XGBoost's parameters."""
        try:
            return [
                Real(*self.learning_rate, prior="log-uniform", name="learning_rate"),
                Integer(*self.max_depth, name="max_depth"),
                Real(*self.min_child_weight, prior="log-uniform", name="min_child_weight"),
                Real(*self.subsample, name="subsample"),
                Integer(*self.n_estimators, prior="log-uniform", name="n_estimators"),
            ]
        except ValueError as exc:
            raise InputError(f"The hyper-parameter search space is not valid: {exc}") from None


@dataclass(frozen=True)
class Trial:
    """One evaluated candidate: its parameters and its cross-validated MAE."""

    index: int  # 0-based, in the order evaluated; the first n_initial are random
    params: dict
    cv_mae: float  # mean over folds, in Rwp units
    fold_mae: tuple[float, ...]


@dataclass(frozen=True)
class SearchResult:
    """Every trial of a search, and the best one (lowest cross-validated MAE)."""

    trials: list[Trial]
    best_index: int
    best_params: dict
    best_cv_mae: float


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
) -> SearchResult:
    """Bayesian optimisation of XGBoost's hyper-parameters by k-fold CV MAE.

    scikit-optimize's ``Optimizer`` with a Gaussian-process surrogate proposes
    ``n_initial`` random points, then ``n_iter`` points chosen by its
    acquisition function (``n_initial + n_iter`` trials in all; ``--n-iter``
    counts the latter, as in ML-MotEx). Each trial fits ``cv`` XGBoost
    regressors on the same seeded, shuffled folds and is scored by the mean
    MAE on the held-out folds. ``on_trial(index, params, cv_mae)`` is called
    after each trial (index 0-based). ``n_jobs`` is XGBoost's thread count;
    one thread per fit is fastest for catalogue-sized data.

    A point proposed twice is not refitted (fits are deterministic): its
    score is reused, and it still counts as a trial.
    """
    X_train, y_train = _check_xy(X_train, y_train)
    seed = _check_seed(seed)
    if n_initial < 1:
        raise InputError(f"The search needs at least one random start, not {n_initial}.")
    if n_iter < 0:
        raise InputError(f"The number of Bayesian iterations must be zero or more, not {n_iter}.")
    if not 2 <= cv <= len(y_train):
        raise InputError(
            f"Cross-validation needs between 2 and {len(y_train)} folds (the training motifs), not {cv}."
        )
    dimensions = space.dimensions()
    names = [d.name for d in dimensions]
    folds = list(KFold(n_splits=cv, shuffle=True, random_state=seed).split(X_train))
    optimizer = Optimizer(dimensions, base_estimator="GP", n_initial_points=n_initial, random_state=seed)
    n_trials = n_initial + n_iter
    trials: list[Trial] = []
    seen: dict[tuple, tuple[float, ...]] = {}
    # The Gaussian process works on matrices of a few dozen rows: BLAS threads
    # only cost there (many-fold slower on a busy 2-core machine), so limit
    # them to one for the duration of the search.
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        # The GP's kernel fit may stop at a bound of its hyper-parameters; that
        # is expected with few points and changes nothing for the caller.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for index in range(n_trials):
            point = optimizer.ask()
            params = {name: _plain(value) for name, value in zip(names, point)}
            key = tuple(params.values())
            if key not in seen:
                seen[key] = _cv_maes(X_train, y_train, folds, params, seed, n_jobs)
            fold_mae = seen[key]
            cv_mae = float(np.mean(fold_mae))
            # The last tell need not refit the GP: nothing more is asked.
            optimizer.tell(point, cv_mae, fit=index + 1 < n_trials)
            trials.append(Trial(index=index, params=params, cv_mae=cv_mae, fold_mae=fold_mae))
            if on_trial is not None:
                on_trial(index, dict(params), cv_mae)
    best = min(trials, key=lambda t: (t.cv_mae, t.index))
    return SearchResult(
        trials=trials, best_index=best.index, best_params=dict(best.params), best_cv_mae=best.cv_mae
    )


def _cv_maes(X, y, folds, params, seed, n_jobs) -> tuple[float, ...]:
    maes = []
    for fit_rows, held_rows in folds:
        model = _regressor(params, seed=seed, n_jobs=n_jobs)
        model.fit(X[fit_rows], y[fit_rows])
        maes.append(float(mean_absolute_error(y[held_rows], model.predict(X[held_rows]))))
    return tuple(maes)


def _regressor(params: dict, *, seed: int, n_jobs: int, **extra) -> xgb.XGBRegressor:
    merged = {**_FIXED_PARAMS, **params, **extra, "random_state": int(seed), "n_jobs": int(n_jobs)}
    return xgb.XGBRegressor(**merged)


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
    value per boosting round actually run (Rwp units), including the
    ``early_stopping_rounds`` rounds after the best. ``fit_idx`` and
    ``validation_idx`` index rows of the ``X_train`` given to
    :func:`train_final`. ``hyperparameters`` are the XGBRegressor keyword
    arguments that rebuild ``model`` when fitted on ``X_train[fit_idx]``.
    """

    model: xgb.XGBRegressor
    best_iteration: int
    n_rounds_run: int
    learning_curve: dict
    fit_idx: np.ndarray
    validation_idx: np.ndarray
    hyperparameters: dict


def train_final(
    X_train: np.ndarray,
    y_train: np.ndarray,
    params: dict,
    seed: int,
    validation_fraction: float = VALIDATION_FRACTION,
    early_stopping_rounds: int = EARLY_STOPPING_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
    n_jobs: int = 1,
) -> FinalModel:
    """Fit the surrogate with early stopping on a validation part of the training motifs.

    A seeded ``validation_fraction`` of ``X_train`` is held out (never the
    test motifs: the caller passes only training motifs); the regressor
    boosts up to ``max_rounds`` rounds on the rest and stops once the
    validation MAE has not improved for ``early_stopping_rounds`` rounds.
    ``params`` are XGBoost parameters (a search's ``best_params``); an
    ``n_estimators`` among them is ignored, early stopping decides.
    Deterministic: the same inputs and seed give a byte-identical model.
    """
    X_train, y_train = _check_xy(X_train, y_train)
    seed = _check_seed(seed)
    if early_stopping_rounds < 1:
        raise InputError(f"Early stopping needs at least one round of patience, not {early_stopping_rounds}.")
    if max_rounds < 1:
        raise InputError(f"The final fit needs at least one boosting round, not {max_rounds}.")
    # A stream of its own, so the validation part does not mirror the test split.
    rng = np.random.default_rng([int(seed), 1])
    fit_idx, validation_idx = _shuffled_split(len(y_train), rng, validation_fraction, "validation")
    params = {k: v for k, v in params.items() if k != "n_estimators"}
    model = _regressor(
        params,
        n_estimators=int(max_rounds),
        seed=seed,
        n_jobs=n_jobs,
        early_stopping_rounds=int(early_stopping_rounds),
        eval_metric=_EVAL_METRICS,
    )
    X_fit, y_fit = X_train[fit_idx], y_train[fit_idx]
    model.fit(
        X_fit, y_fit, eval_set=[(X_fit, y_fit), (X_train[validation_idx], y_train[validation_idx])], verbose=False
    )
    history = model.evals_result()
    curve = {
        "train": {m: [float(v) for v in history["validation_0"][m]] for m in _EVAL_METRICS},
        "validation": {m: [float(v) for v in history["validation_1"][m]] for m in _EVAL_METRICS},
    }
    best_iteration = int(model.best_iteration)
    # Keep the best model only: its JSON, its predictions and its SHAP values
    # then all describe the same trees, whoever loads it.
    best = model_from_json(_booster_json(model.get_booster()[: best_iteration + 1]))
    hyperparameters = {
        **_FIXED_PARAMS,
        **params,
        "n_estimators": best_iteration + 1,
        "random_state": int(seed),
    }
    return FinalModel(
        model=best,
        best_iteration=best_iteration,
        n_rounds_run=len(curve["validation"]["mae"]),
        learning_curve=curve,
        fit_idx=fit_idx,
        validation_idx=validation_idx,
        hyperparameters=hyperparameters,
    )


def evaluate(model: xgb.XGBRegressor, X_test: np.ndarray, y_test: np.ndarray) -> dict:
    """Test-set scores of a surrogate: ``{"mae", "rmse", "r2"}`` (MAE and RMSE in Rwp units).

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


def model_to_json(model: xgb.XGBRegressor) -> str:
    """The model in XGBoost's own JSON format (trees and learner parameters)."""
    return _booster_json(model.get_booster())


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
    best_cv_mae: float
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
    n_jobs: int = 1,
) -> SurrogateResult:
    """Step 3 end to end: features, split, search, final fit, test scores.

    ``masks`` (n, N) are the fitted motifs and ``rwp`` (n,) their fit
    quality; every Rwp must be finite (leave failed fits out). Refuses fewer
    than :data:`MIN_MOTIFS` motifs and a constant Rwp (nothing to learn).
    ``on_trial`` is passed to :func:`search_hyperparameters`.
    """
    masks = _as_masks(masks)
    rwp = np.asarray(rwp, dtype=np.float64)
    if rwp.ndim != 1 or len(rwp) != len(masks):
        raise InputError(f"There must be one Rwp per motif: {len(masks)} motifs but Rwp of shape {rwp.shape}.")
    if not np.all(np.isfinite(rwp)):
        raise InputError(f"{int(np.sum(~np.isfinite(rwp)))} Rwp values are not finite; leave failed fits out.")
    if len(rwp) < MIN_MOTIFS:
        raise InputError(f"Training needs at least {MIN_MOTIFS} fitted motifs, not {len(rwp)}.")
    if np.ptp(rwp) == 0:
        raise InputError(f"Every motif has the same Rwp ({rwp[0]:g}): there is nothing to learn.")
    X = features(masks)
    train_idx, test_idx = split(len(rwp), seed)
    search = search_hyperparameters(
        X[train_idx], rwp[train_idx], seed, n_iter=n_iter, cv=cv, n_initial=n_initial,
        on_trial=on_trial, space=space, n_jobs=n_jobs,
    )
    final = train_final(X[train_idx], rwp[train_idx], search.best_params, seed, n_jobs=n_jobs)
    y_pred_test = final.model.predict(X[test_idx]).astype(np.float64)
    return SurrogateResult(
        model=final.model,
        model_json=model_to_json(final.model),
        hyperparameters=final.hyperparameters,
        trials=search.trials,
        best_cv_mae=search.best_cv_mae,
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


# --------------------------------------------------------------------------
# Step 3 in the record: `motex-db train`

LEARNING_VERSION = "motex-learning 1"  # bump when the same inputs would give another model


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


EXTRACTED_SAMPLER_PREFIX = "extracted"


def load_fits(session, model_id: int, dataset_id: int, fit_config_id: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(motif ids, masks, Rwp) of the successful fits of sampled motifs, ordered by motif id.

    Motifs that an explanation extracted are left out: they are answers, not
    samples, and leaving them out keeps a model reproducible from its catalogue.
    """
    from sqlmodel import select

    from motex_db.models import FitResult, Motif

    rows = session.exec(
        select(Motif.id, Motif.mask, FitResult.rwp)
        .join(FitResult, FitResult.motif_id == Motif.id)
        .where(Motif.starting_model_id == model_id)
        .where(FitResult.dataset_id == dataset_id)
        .where(FitResult.fit_config_id == fit_config_id)
        .where(FitResult.status == "ok")
        .where(~Motif.sampler.startswith(EXTRACTED_SAMPLER_PREFIX))
        .order_by(Motif.id)
    ).all()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    return ids, [r[1] for r in rows], np.array([r[2] for r in rows], dtype=np.float64)


def _inputs_hash(model_id, dataset_id, fit_config_id, ids, rwp, seed, n_iter, cv) -> str:
    import hashlib

    digest = hashlib.sha256()
    digest.update(repr((LEARNING_VERSION, model_id, dataset_id, fit_config_id, seed, n_iter, cv)).encode())
    digest.update(np.ascontiguousarray(ids).tobytes())
    digest.update(np.ascontiguousarray(rwp).tobytes())
    return digest.hexdigest()


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
) -> TrainOutcome:
    """Train the surrogate on every successful fit of (structure, dataset, fit config), store and track it.

    The same inputs and seed give the same model: training again on unchanged
    fits reuses the stored row. The MLflow run holds every search trial as a
    nested child run, the final parameters and test metrics, the model
    (``mlflow.xgboost``) and the loss curve.
    """
    import time

    from sqlmodel import Session, select

    from motex_db.catalogue import masks_from_text
    from motex_db.datasets import get_dataset
    from motex_db.db import transaction
    from motex_db.models import TrainedModel
    from motex_db.structures import get_starting_model
    from motex_db.tracking import open_tracker, tracking_location

    if n_iter < 0 or cv < 2:
        raise InputError(f"--n-iter must be >= 0 and --cv >= 2 (got {n_iter} and {cv}).")
    with Session(engine) as session:
        model = get_starting_model(session, structure)
        data = get_dataset(session, dataset)
        config_id = choose_fit_config(session, model.id, data.id, fit_config_id)
        ids, mask_texts, rwp = load_fits(session, model.id, data.id, config_id)
        inputs = _inputs_hash(model.id, data.id, config_id, ids, rwp, seed, n_iter, cv)
        existing = session.exec(select(TrainedModel).where(TrainedModel.inputs_hash == inputs)).first()
    url = engine.url.render_as_string(hide_password=False)
    location = tracking_location(url, mlflow_uri)
    if existing is not None:
        return TrainOutcome(
            existing.id, False, structure, dataset, config_id, existing.n_motifs, existing.metrics,
            existing.hyperparameters, existing.mlflow_run_id, location.ui_command,
        )
    started = time.perf_counter()
    masks = masks_from_text(mask_texts, model.n_permutable)
    result = train_surrogate(masks, rwp, seed=seed, n_iter=n_iter, cv=cv, on_trial=on_trial)
    seconds = time.perf_counter() - started
    tracker = open_tracker(url, mlflow_uri)
    run_id = _log_training(tracker, result, structure, dataset, config_id, n_iter, cv)
    with transaction(engine) as session:
        row = TrainedModel(
            starting_model_id=model.id, dataset_id=data.id, fit_config_id=config_id, inputs_hash=inputs,
            n_motifs=result.n_motifs, seed=seed, hyperparameters=result.hyperparameters,
            metrics={**result.metrics, "best_cv_mae": result.best_cv_mae, "best_iteration": result.best_iteration},
            model=result.model_json, mlflow_run_id=run_id, motif_ids=ids, n_iter=n_iter, cv=cv,
            training_log={
                "trials": [{"index": t.index, "params": t.params, "cv_mae": t.cv_mae} for t in result.trials],
                "learning_curve": result.learning_curve,
                "best_iteration": result.best_iteration,
            },
        )
        session.add(row)
        session.flush()
        row_id = row.id
    return TrainOutcome(
        row_id, True, structure, dataset, config_id, result.n_motifs, row.metrics, result.hyperparameters,
        run_id, tracker.location.ui_command, result, seconds,
    )


def run_tags(structure: str, dataset: str, fit_config_id: int, n_motifs: int, kind: str) -> dict[str, str]:
    """The tags every motex-db MLflow run carries, so runs compare side by side."""
    from motex_db import __version__

    return {
        "structure": structure, "dataset": dataset, "fit_config": str(fit_config_id),
        "n_motifs": str(n_motifs), "motex_db.kind": kind, "motex_db.version": __version__,
    }


def _log_training(tracker, result: SurrogateResult, structure, dataset, fit_config_id, n_iter, cv) -> str:
    """Log a finished training to MLflow (one parent run, a child run per trial); returns the run id."""
    import json
    import tempfile
    import time
    from pathlib import Path

    import mlflow
    import mlflow.xgboost
    from mlflow.entities import Metric, Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    client = tracker.client
    tags = run_tags(structure, dataset, fit_config_id, result.n_motifs, "train")
    now = int(time.time() * 1000)
    with tracker.logging():
        parent = client.create_run(tracker.experiment_id, run_name=f"train {structure} / {dataset}", tags=tags)
        run_id = parent.info.run_id
        params = {**{f"xgb_{k}": v for k, v in result.hyperparameters.items()}, "seed": result.seed, "n_iter": n_iter, "cv": cv}
        metrics = {**{f"test_{k}": v for k, v in result.metrics.items()}, "best_cv_mae": result.best_cv_mae,
                   "best_iteration": result.best_iteration}
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if np.isfinite(v)],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        for trial in result.trials:
            child = client.create_run(
                tracker.experiment_id, run_name=f"trial {trial.index}", tags={**tags, MLFLOW_PARENT_RUN_ID: run_id, "motex_db.kind": "trial"},
            )
            client.log_batch(
                child.info.run_id,
                metrics=[Metric("cv_mae", float(trial.cv_mae), now, 0)],
                params=[Param(k, str(v)) for k, v in trial.params.items()],
            )
            client.set_terminated(child.info.run_id)
        curve = [
            Metric(f"{part}_{name}", float(value), now, step)
            for part, series in result.learning_curve.items()
            for name, values in series.items()
            for step, value in enumerate(values)
        ]
        for start in range(0, len(curve), 900):
            client.log_batch(run_id, metrics=curve[start : start + 900])
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            (folder / "learning_curve.json").write_text(json.dumps(result.learning_curve))
            (folder / "trials.json").write_text(json.dumps([
                {"index": t.index, "params": t.params, "cv_mae": t.cv_mae} for t in result.trials
            ]))
            (folder / "test_predictions.json").write_text(json.dumps({
                "y_test": result.y_test.tolist(), "y_pred": result.y_pred_test.tolist(),
            }))
            for name in ("learning_curve.json", "trials.json", "test_predictions.json"):
                client.log_artifact(run_id, str(folder / name), artifact_path="training")
        mlflow.set_tracking_uri(tracker.uri)
        import xgboost

        with mlflow.start_run(run_id=run_id):
            mlflow.xgboost.log_model(
                result.model, name="model", pip_requirements=[f"xgboost=={xgboost.__version__}"],
            )
        client.set_terminated(run_id)
    return run_id


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


def _searched(hyperparameters: dict) -> dict:
    """The hyper-parameters the search chooses (``n_estimators`` comes from early stopping)."""
    names = {d.name for d in SearchSpace().dimensions()} - {"n_estimators"}
    return {k: v for k, v in hyperparameters.items() if k in names}


def _series_hash(frame_hash: str, reference_hash: str, series: str) -> str:
    import hashlib

    return hashlib.sha256(repr(("series", series, frame_hash, reference_hash)).encode()).hexdigest()


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
) -> SeriesTrainOutcome:
    """A surrogate per frame of a series, all with the hyper-parameters of one search.

    The search (as :func:`train_surrogate`: Bayesian optimisation of k-fold CV
    MAE) runs once, on the ``reference`` frame (default: the reference of the
    series' earlier models, else the last frame, where an in situ reaction has
    gone furthest); every frame's model is then
    trained with those hyper-parameters (early stopping per frame) on that
    frame's fits and scored on its own test motifs. The fit configuration is
    the one with the most successful fits on the reference frame. Rows are
    reused when the frame's fits, the reference's fits, the seed and the
    search settings are unchanged, so adding frames trains only the new ones.
    MLflow: one parent run for the series (search trials, parameters) and a
    child run per frame trained now (test metrics, the model as JSON).
    """
    import time

    import pandas as pd
    from sqlmodel import Session, select

    from motex_db.catalogue import masks_from_text
    from motex_db.datasets import get_series_frames
    from motex_db.db import transaction
    from motex_db.models import TrainedModel
    from motex_db.structures import get_starting_model
    from motex_db.tracking import open_tracker, tracking_location

    if n_iter < 0 or cv < 2:
        raise InputError(f"--n-iter must be >= 0 and --cv >= 2 (got {n_iter} and {cv}).")
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
        fits = {f.id: load_fits(session, model.id, f.id, config_id) for f in frames}
        for frame in frames:
            n = len(fits[frame.id][0])
            if n < MIN_MOTIFS:
                raise InputError(
                    f"frame '{frame.name}' has {n} successful fits with fit config {config_id}; training needs "
                    f"{MIN_MOTIFS}: run motex-db fit --structure {structure} --series {series}."
                )
        ref_hash = _inputs_hash(model.id, ref.id, config_id, *fits[ref.id][::2], seed, n_iter, cv)
        hashes = {
            f.id: _series_hash(_inputs_hash(model.id, f.id, config_id, *fits[f.id][::2], seed, n_iter, cv), ref_hash, series)
            for f in frames
        }
        stored = {
            row.inputs_hash: row
            for row in session.exec(select(TrainedModel).where(TrainedModel.inputs_hash.in_(list(hashes.values())))).all()
        }
    url = engine.url.render_as_string(hide_password=False)
    location = tracking_location(url, mlflow_uri)
    started = time.perf_counter()
    todo = [f for f in frames if hashes[f.id] not in stored]
    search: Optional[SearchResult] = None
    if hashes[ref.id] in stored:
        params = _searched(stored[hashes[ref.id]].hyperparameters)
        best_cv = (stored[hashes[ref.id]].metrics or {}).get("best_cv_mae")
    elif todo:
        ids, texts, rwp = fits[ref.id]
        X = features(masks_from_text(texts, model.n_permutable))
        train_idx, _ = split(len(rwp), seed)
        search = search_hyperparameters(X[train_idx], rwp[train_idx], seed, n_iter=n_iter, cv=cv, on_trial=on_trial)
        params, best_cv = _searched(search.best_params), search.best_cv_mae
    rows, created = [], {}
    parent_id = None
    tracker = open_tracker(url, mlflow_uri) if todo else None
    if tracker is not None:
        parent_id = _log_series_search(tracker, structure, series, ref.name, config_id, params, search, seed, n_iter, cv)
    jobs = [(features(masks_from_text(fits[f.id][1], model.n_permutable)), fits[f.id][2], params, seed) for f in todo]
    for done, (frame, trained) in enumerate(zip(todo, _train_frames(jobs)), start=1):
        ids, rwp = fits[frame.id][0], fits[frame.id][2]
        model_json, hyperparameters, metrics, curve = trained
        if best_cv is not None:
            metrics["best_cv_mae"] = best_cv
        run_id = _log_series_frame(tracker, parent_id, structure, series, frame, config_id, len(rwp), metrics, model_json)
        log = {"learning_curve": curve, "best_iteration": metrics["best_iteration"],
               "search": {"series": series, "reference_frame": ref.name, "parent_run_id": parent_id}}
        if frame.id == ref.id and search is not None:
            log["trials"] = [{"index": t.index, "params": t.params, "cv_mae": t.cv_mae} for t in search.trials]
        rows.append(TrainedModel(
            starting_model_id=model.id, dataset_id=frame.id, fit_config_id=config_id, inputs_hash=hashes[frame.id],
            n_motifs=len(rwp), seed=seed, hyperparameters=hyperparameters, metrics=metrics, model=model_json,
            mlflow_run_id=run_id, motif_ids=ids, n_iter=n_iter, cv=cv, training_log=log, series=series,
        ))
        on_frame(done, len(todo))
    if rows:
        with transaction(engine) as session:
            session.add_all(rows)
            session.flush()
            created = {row.dataset_id: (row.id, row.metrics) for row in rows}
    if tracker is not None:
        with tracker.logging():
            tracker.client.set_terminated(parent_id)
    table = []
    for frame in frames:
        if frame.id in created:
            row_id, metrics = created[frame.id]
        else:
            row = stored[hashes[frame.id]]
            row_id, metrics = row.id, row.metrics
        table.append({
            "frame": frame.name, "dataset_id": frame.id, "time": frame.time, "trained_model_id": row_id,
            "created": frame.id in created, "n_motifs": len(fits[frame.id][0]),
            "test_mae": metrics.get("mae"), "test_r2": metrics.get("r2"),
        })
    return SeriesTrainOutcome(
        structure, series, config_id, ref.name, params, best_cv, pd.DataFrame(table), parent_id,
        location.ui_command, time.perf_counter() - started,
    )


def _train_frame(X: np.ndarray, rwp: np.ndarray, params: dict, seed: int) -> tuple[str, dict, dict, dict]:
    """One frame's final model with given hyper-parameters: (model JSON, hyper-parameters, test metrics, loss curve)."""
    train_idx, test_idx = split(len(rwp), seed)
    final = train_final(X[train_idx], rwp[train_idx], params, seed)
    metrics = {**evaluate(final.model, X[test_idx], rwp[test_idx]), "best_iteration": final.best_iteration}
    return model_to_json(final.model), final.hyperparameters, metrics, final.learning_curve


def _train_frames(jobs: list[tuple]):
    """:func:`_train_frame` for every job, in order; on one process per core when there are several frames.

    Each model trains on one thread (deterministic whatever the count), so frames
    train side by side; the results are identical to training them one by one.
    """
    import os

    workers = min(os.cpu_count() or 1, len(jobs))
    if workers < 2 or len(jobs) < 4:
        yield from (_train_frame(*job) for job in jobs)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        yield from pool.map(_train_frame, *zip(*jobs))


def _log_series_search(tracker, structure, series, reference, fit_config_id, params, search, seed, n_iter, cv) -> str:
    """The series' parent run: the shared hyper-parameters and, when searched now, every trial's CV MAE by step."""
    import time

    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    tags = {**run_tags(structure, series, fit_config_id, 0, "train-series"), "series": series, "reference_frame": reference}
    with tracker.logging():
        run = tracker.client.create_run(tracker.experiment_id, run_name=f"train {structure} / series {series}", tags=tags)
        values = {**{f"xgb_{k}": v for k, v in params.items()}, "seed": seed, "n_iter": n_iter, "cv": cv,
                  "reference_frame": reference}
        metrics = []
        if search is not None:
            metrics = [Metric("trial_cv_mae", float(t.cv_mae), now, t.index) for t in search.trials]
            metrics.append(Metric("best_cv_mae", float(search.best_cv_mae), now, 0))
        tracker.client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in values.items()])
    return run.info.run_id


def _log_series_frame(tracker, parent_id, structure, series, frame, fit_config_id, n_motifs, metrics, model_json) -> str:
    """A frame's child run: its test metrics and its model (XGBoost JSON)."""
    import tempfile
    import time
    from pathlib import Path

    from mlflow.entities import Metric, Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    now = int(time.time() * 1000)
    tags = {**run_tags(structure, frame.name, fit_config_id, n_motifs, "train-frame"), "series": series,
            MLFLOW_PARENT_RUN_ID: parent_id}
    with tracker.logging():
        run = tracker.client.create_run(tracker.experiment_id, run_name=f"frame {frame.name}", tags=tags)
        run_id = run.info.run_id
        params = [Param("frame", frame.name), Param("time", str(frame.time))]
        tracker.client.log_batch(
            run_id, metrics=[Metric(f"test_{k}", float(v), now, 0) for k, v in metrics.items() if np.isfinite(v)],
            params=params,
        )
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.json"
            path.write_text(model_json)
            tracker.client.log_artifact(run_id, str(path), artifact_path="model")
        tracker.client.set_terminated(run_id)
    return run_id
