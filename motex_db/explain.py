"""Step 4 of ML-MotEx: each permutable atom's contribution to the fit quality.

SHAP values of the surrogate (step 3) split its predicted Rwp of every motif
into one additive share per feature. For permutable atom a, comparing its
share over the motifs that keep it with its share over the motifs that remove
it says whether keeping it lowers Rwp (a negative contribution: the atom
belongs to the motif) or raises it (science.md section 5).

Pure functions on arrays; nothing here prints or touches a database.

References: Anker et al., npj Comput. Mater. 8, 213 (2022) (ML-MotEx);
Lundberg et al., Nat. Mach. Intell. 2, 56 (2020) (TreeSHAP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import shap

from motex_db.errors import InputError

__all__ = [
    "CONFIDENCE_CAP",
    "shap_values",
    "AtomContributions",
    "atom_contributions",
    "extracted_motif_mask",
]

# Confidences are capped here. It matters only when an atom's SHAP values do
# not vary (or vary by rounding only) within either group yet differ between
# them: |c| / 0 would be infinite, and the record stores finite floats. The cap
# reads as "no spread whatsoever", far above any confidence real data give
# (ML-MotEx's averaged about 1).
CONFIDENCE_CAP = 1e6


def shap_values(model, X: np.ndarray) -> np.ndarray:
    """TreeSHAP values of a tree model for every row of X: (n, N + 1) floats, Rwp units.

    Uses shap's ``TreeExplainer`` with ``feature_perturbation=
    "tree_path_dependent"``: exact Shapley values of the trees as trained,
    with the "missing feature" expectation taken over the training motifs
    that reached each node (the trees' own cover counts). It needs no
    background sample, costs O(trees x leaves x depth^2) per motif, and is
    what ML-MotEx used (shap's default without background data). The
    interventional alternative would need a background set of motifs and
    scale with its size. Row sums plus the explainer's expected value equal
    the model's predictions.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"Features must form an (n motifs, N + 1) array, not shape {X.shape}.")
    n_features = getattr(model, "n_features_in_", None)
    if n_features is not None and X.shape[1] != n_features:
        raise InputError(
            f"The model was trained on {n_features} features (N + 1) but the motifs have {X.shape[1]}."
        )
    explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
    return np.asarray(explainer.shap_values(X), dtype=np.float64)


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
