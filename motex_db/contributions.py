"""Step 4 of ML-MotEx, the pure part: each permutable atom's contribution to the fit quality.

SHAP values of the surrogate (step 3) split its predicted Rwp of every motif
into one additive share per feature. For permutable atom a, comparing its
share over the motifs that keep it with its share over the motifs that remove
it says whether keeping it lowers Rwp (a negative contribution: the atom
belongs to the motif) or raises it (science.md section 5).

Everything here takes arrays (and a model) and returns arrays;
:mod:`motex_db.explain` runs step 4 on a trained model of the record and
stores the contributions.

References: Anker et al., npj Comput. Mater. 8, 213 (2022) (ML-MotEx);
Lundberg et al., Nat. Mach. Intell. 2, 56 (2020) (TreeSHAP).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np

from motex_db.errors import InputError

__all__ = [
    "CONFIDENCE_CAP",
    "shap_values",
    "AtomContributions",
    "atom_contributions",
    "extracted_motif_mask",
    "CONVERGENCE_FRACTIONS",
    "SHAP_MOTIFS",
    "shap_rows",
    "contribution_convergence",
    "explain_with_convergence",
]

# Confidences are capped here. It matters only when an atom's SHAP values do
# not vary (or vary by rounding only) within either group yet differ between
# them: |c| / 0 would be infinite, and the record stores finite floats. The cap
# reads as "no spread whatsoever", far above any confidence real data give
# (ML-MotEx's averaged about 1).
CONFIDENCE_CAP = 1e6


def shap_values(model, X: np.ndarray, n_jobs: Optional[int] = None) -> np.ndarray:
    """TreeSHAP values of an XGBoost model for every row of X: (n, N + 1) floats, Rwp units.

    ``model`` is an XGBRegressor, a Booster, or a model's JSON text as the
    record stores it (then nothing is loaded into XGBoost unless the model is
    too deep for the polynomial form).

    Exact Shapley values of the trees as trained, "tree path dependent": the
    "missing feature" expectation is taken over the training motifs that
    reached each node (the trees' own cover counts). It needs no background
    sample and is what ML-MotEx used (shap's ``TreeExplainer`` without
    background data, which hands XGBoost models to XGBoost's own TreeSHAP).
    For ensembles of shallow trees (up to depth 4 at a few thousand trees,
    :data:`motex_db.treeshap.MAX_TERMS`) the values come from the model's
    polynomial form (:mod:`motex_db.treeshap`): the same values, summed in
    float64, 6x (depth 3) to 3x (depth 4) less work than XGBoost's walk
    (docs/learning.md). Deeper ensembles go to XGBoost's TreeSHAP on
    ``n_jobs`` threads (default: every core). Row sums plus the expected
    value equal the predictions (tested).
    """
    import xgboost as xgb

    from motex_db.surrogate import model_from_json, model_to_json
    from motex_db.treeshap import polynomial

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"Features must form an (n motifs, N + 1) array, not shape {X.shape}.")
    text = model if isinstance(model, str) else None
    booster = None if text is not None else model.get_booster() if hasattr(model, "get_booster") else model
    # A missing value would take the trees' default branch, which only XGBoost's walk follows
    # (and XGBoost refuses what float32 cannot hold).
    form = None
    if np.all(np.abs(X) <= np.finfo(np.float32).max):
        form = polynomial(text if text is not None else model_to_json(booster))
    if booster is None and form is None:
        booster = model_from_json(text).get_booster()
    n_features = form.n_features if form is not None else booster.num_features()
    if X.shape[1] != n_features:
        raise InputError(
            f"The model was trained on {n_features} features (N + 1) but the motifs have {X.shape[1]}."
        )
    if form is not None:
        return form.shap_values(X)
    # The stored models say one thread (training is deterministic with any
    # count); the explanation may use every core, and then gives the model
    # back as it was (a copy of a booster of thousands of trees costs more).
    saved = json.loads(booster.save_config())["learner"]["generic_param"]["nthread"]
    threads = int(n_jobs or os.cpu_count() or 1)
    booster.set_param({"nthread": threads})
    try:
        values = booster.predict(xgb.DMatrix(X, nthread=threads), pred_contribs=True, validate_features=False)
    finally:
        booster.set_param({"nthread": saved})
    return np.asarray(values[:, :-1], dtype=np.float64)


@dataclass(frozen=True)
class AtomContributions:
    """Per permutable atom (arrays of length N, in atom order 1..N).

    ``contribution`` = mean(keep) - mean(remove) of the atom's SHAP values
    (Rwp units; negative: keeping the atom lowers Rwp). ``uncertainty`` =
    sqrt((std(keep)^2 + std(remove)^2) / 2), population standard deviations.
    ``confidence`` = |contribution| / uncertainty, at most
    :data:`CONFIDENCE_CAP` (which it is when the uncertainty is 0 but the
    contribution is not). ``overall_confidence`` is the mean confidence over
    all N atoms.

    An atom kept in every motif, or in none, has nothing to compare
    (``informative`` False): its contribution, uncertainty and confidence are
    all 0.0, meaning "no evidence either way". It is never part of the
    extracted motif, and its 0 confidence lowers the overall confidence, as
    it should: the answer says nothing about that atom.
    """

    atom_index: np.ndarray  # 1..N
    contribution: np.ndarray
    uncertainty: np.ndarray
    confidence: np.ndarray
    mean_keep: np.ndarray  # NaN where no motif keeps the atom
    mean_remove: np.ndarray  # NaN where no motif removes it
    n_keep: np.ndarray  # motifs keeping the atom
    n_remove: np.ndarray  # motifs removing it
    informative: np.ndarray  # kept in some motifs and removed in others
    overall_confidence: float


def atom_contributions(shap_values: np.ndarray, X: np.ndarray) -> AtomContributions:
    """ML-MotEx's atom contribution values from SHAP values and the features they explain.

    ``shap_values`` and ``X`` are (n, N + 1): column 0 is n_kept, column a is
    atom a's 0/1 presence (see :func:`motex_db.learning.features`). For atom
    a, keep = SHAP_a over the motifs keeping a, remove = SHAP_a over those
    removing it; see :class:`AtomContributions` for the formulas and for
    atoms that are always or never kept. (ML-MotEx's code multiplies both
    means by 0.5, which only rescales; we do not.)
    """
    shap_values = np.asarray(shap_values, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if shap_values.ndim != 2 or shap_values.shape != X.shape or X.shape[1] < 2:
        raise InputError(
            f"SHAP values and features must both be (n motifs, N + 1) with N >= 1, "
            f"not {shap_values.shape} and {X.shape}."
        )
    presence = X[:, 1:]
    if not np.all((presence == 0) | (presence == 1)):
        raise InputError("Atom columns of the features must hold only 0/1 (removed/kept) values.")
    if not np.all(np.isfinite(shap_values)):
        raise InputError("SHAP values must all be finite.")
    kept = presence == 1
    values = shap_values[:, 1:]
    n_keep = kept.sum(axis=0)
    n_remove = len(X) - n_keep
    mean_keep, std_keep = _group_stats(values, kept, n_keep)
    mean_remove, std_remove = _group_stats(values, ~kept, n_remove)
    informative = (n_keep > 0) & (n_remove > 0)

    contribution = np.where(informative, mean_keep - mean_remove, 0.0)
    uncertainty = np.where(informative, np.sqrt((std_keep**2 + std_remove**2) / 2.0), 0.0)
    magnitude = np.abs(contribution)
    positive = uncertainty > 0
    confidence = np.where(
        positive,
        magnitude / np.where(positive, uncertainty, 1.0),
        np.where(magnitude > 0, CONFIDENCE_CAP, 0.0),
    )
    confidence = np.minimum(confidence, CONFIDENCE_CAP)
    return AtomContributions(
        atom_index=np.arange(1, X.shape[1]),
        contribution=contribution,
        uncertainty=uncertainty,
        confidence=confidence,
        mean_keep=mean_keep,
        mean_remove=mean_remove,
        n_keep=n_keep,
        n_remove=n_remove,
        informative=informative,
        overall_confidence=float(np.mean(confidence)),
    )


def _group_stats(values: np.ndarray, member: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population std over the rows where ``member``; NaN for an empty group."""
    safe = np.maximum(count, 1)
    mean = np.where(member, values, 0.0).sum(axis=0) / safe
    # Two passes (deviations from the mean), not E[x^2] - E[x]^2: SHAP values
    # of one atom are often nearly equal, where the shortcut cancels badly.
    spread = np.where(member, values - mean, 0.0)
    std = np.sqrt((spread**2).sum(axis=0) / safe)
    empty = count == 0
    return np.where(empty, np.nan, mean), np.where(empty, np.nan, std)


def extracted_motif_mask(contributions: AtomContributions, min_confidence: Optional[float] = None) -> np.ndarray:
    """The extracted motif as an (N,) bool mask over the permutable atoms.

    An atom is in the motif when its contribution is negative (keeping it
    lowers Rwp) and, if ``min_confidence`` is given, its confidence is at
    least that. The bonded non-permutable atoms follow from the mask
    (:mod:`motex_db.catalogue`).
    """
    mask = np.asarray(contributions.contribution) < 0
    if min_confidence is not None:
        if not np.isfinite(min_confidence) or min_confidence < 0:
            raise InputError(f"The minimum confidence must be a number >= 0, not {min_confidence}.")
        mask &= np.asarray(contributions.confidence) >= min_confidence
    return mask


CONVERGENCE_FRACTIONS = {"half": 0.5, "three_quarters": 0.75}
# TreeSHAP costs trees x leaves x depth per motif. A contribution is a
# difference of two means over the explained motifs; a seeded subset of m of
# them moves it by about 2 x uncertainty / sqrt(m) (4.5 % of the uncertainty
# for 2000) and leaves the uncertainty, a standard deviation, unbiased.
# Measured on the Keggin and 48-W catalogues in docs/learning.md.
SHAP_MOTIFS = 2000


def shap_rows(n: int, seed: int, shap_motifs: Optional[int] = SHAP_MOTIFS) -> np.ndarray:
    """Which of ``n`` training motifs are explained: all, or a seeded sorted subset of ``shap_motifs``.

    ``shap_motifs`` None or 0 means all. The subset depends only on ``n`` and
    ``seed``, so the same model always explains the same motifs (the stream
    is the one :mod:`motex_db.reports` uses for its SHAP plots).
    """
    if shap_motifs is not None and shap_motifs < 0:
        raise InputError(f"The number of explained motifs must be 0 (all) or more, not {shap_motifs}.")
    if not shap_motifs or n <= shap_motifs:
        return np.arange(n)
    return np.sort(np.random.default_rng([int(seed), 2]).choice(n, int(shap_motifs), replace=False))


def contribution_convergence(
    masks: np.ndarray, rwp: np.ndarray, hyperparameters: dict, seed: int, contribution: np.ndarray,
    shap_motifs: Optional[int] = SHAP_MOTIFS,
) -> dict[str, dict]:
    """Contributions from surrogates trained on the first half and three quarters of the fits.

    ``masks``/``rwp`` are the trained model's fits in motif order (the order
    they were sampled), ``hyperparameters`` its XGBoost parameters (no new
    search: the question is whether more data move the answer) and
    ``contribution`` its own contributions. Each part's model is explained
    on at most ``shap_motifs`` of its training motifs (:func:`shap_rows`).
    For each fraction returns the number of motifs, the contributions and how
    many atoms changed sign: when signs still change, sampling more motifs
    will sharpen the answer.
    """
    cores = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=min(len(CONVERGENCE_FRACTIONS), cores)) as pool:
        parts = _convergence_parts(pool, masks, rwp, hyperparameters, seed, shap_motifs, max(1, cores // 2))
        return _with_sign_changes({name: part.result() for name, part in parts.items()}, contribution)


def explain_with_convergence(
    model, X: np.ndarray, masks: np.ndarray, rwp: np.ndarray, hyperparameters: dict, seed: int,
    shap_motifs: Optional[int] = SHAP_MOTIFS,
) -> tuple[np.ndarray, AtomContributions, dict[str, dict]]:
    """Step 4's computation: the model's SHAP values on ``X``, its contributions, and the convergence check.

    The same as :func:`shap_values`, :func:`atom_contributions` and
    :func:`contribution_convergence` one after the other (the same numbers),
    but all three models' work runs side by side, every TreeSHAP on every
    core, so that no core waits while the longer convergence model finishes
    (48 W, 10^4 motifs: `explain` 12.6 s against 15.2 s, docs/learning.md).
    ``model`` as :func:`shap_values` takes it. Returns (SHAP values,
    contributions, convergence parts).
    """
    cores = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=len(CONVERGENCE_FRACTIONS) + 1) as pool:
        parts = _convergence_parts(pool, masks, rwp, hyperparameters, seed, shap_motifs, cores)
        values = shap_values(model, X)
        found = atom_contributions(values, X)
        return values, found, _with_sign_changes({name: part.result() for name, part in parts.items()},
                                                 found.contribution)


def _convergence_parts(pool, masks, rwp, hyperparameters: dict, seed: int, shap_motifs: Optional[int],
                       threads: int) -> dict:
    """Futures of each part's {"n_motifs", "contribution"}, computed on ``pool``."""
    from motex_db.surrogate import SearchSpace, features, fit_booster, split

    params = {k: v for k, v in hyperparameters.items() if k in SearchSpace().names()}

    def part(fraction: float) -> dict:
        n = int(len(rwp) * fraction)
        train_idx, _ = split(n, seed)
        X = features(masks[:n])[train_idx]
        model = fit_booster(X, rwp[:n][train_idx], params, seed)
        X = X[shap_rows(len(X), seed, shap_motifs)]
        return {"n_motifs": n, "contribution": atom_contributions(shap_values(model, X, threads), X).contribution}

    # Each model trains on one thread (its trees do not depend on the count);
    # its SHAP values may use ``threads``, for the longer part ends alone.
    return {name: pool.submit(part, fraction) for name, fraction in CONVERGENCE_FRACTIONS.items()}


def _with_sign_changes(parts: dict[str, dict], contribution: np.ndarray) -> dict[str, dict]:
    return {name: {**part, "sign_changes": int(np.sum(np.sign(part["contribution"]) != np.sign(contribution)))}
            for name, part in parts.items()}
