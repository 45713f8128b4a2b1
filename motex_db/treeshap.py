"""Exact TreeSHAP of a shallow XGBoost ensemble as a sparse polynomial in its splits.

Step 4 needs the tree-path-dependent SHAP values (Lundberg et al. 2020,
Algorithm 2) of the surrogate for a few thousand motifs. XGBoost computes
them motif by motif and tree by tree; for ML-MotEx's models (thousands of
depth-3 trees over 0/1 atom columns) that walk is most of step 4. The values
can be computed once per model in another form, and then for all motifs at
once with two matrix operations.

For one leaf of one tree, with value ``v`` and the set ``U`` (``d`` = |U|) of
features split on along its path, TreeSHAP's value of a coalition S is a
product over U: a feature in S follows the motif (``o_j`` = 1 when the motif
satisfies every split on j along the path, else 0), a feature not in S
follows the training motifs (``z_j``, the fraction of the trees' cover that
takes the path at those splits). The Shapley value of feature i in U for
such a product is a polynomial in the ``o`` with one term per subset Q of U::

    phi_i = sum over Q of  v * prod_{j in U \\ Q} z_j * (w(|Q| - 1) if i in Q else -w(|Q|)) * prod_{j in Q} o_j

with ``w(k) = k! (d - 1 - k)! / d!``. (Expand ``v (o_i - z_i) sum_{S in U\\{i}}
w(|S|) prod_S o_j prod_{U\\S\\{i}} z_j``.) Each ``o_j`` is a product of split
conditions ("column f below t" or "not below t"), so every term is a product
of conditions, a *monomial*. Summed over all leaves of all trees::

    phi(x) = M(x) @ C

where M(x) holds, for every distinct monomial of the model, 1 if motif x
satisfies all its conditions (else 0), and C (monomials x features) the summed
coefficients. A depth-3 ensemble of 2,600 trees has about 27,000 distinct
monomials and 110,000 coefficients; building C takes a tenth of a second, and
SHAP values of 2000 motifs some more (docs/learning.md). The number of terms
grows as 2^depth per leaf, so deeper ensembles are left to XGBoost
(:func:`polynomial` returns None).

The values are TreeSHAP's (tested against XGBoost's and shap's), summed in
float64 where XGBoost sums in float32.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import numpy as np
import scipy.sparse

__all__ = ["MAX_TERMS", "SplitPolynomial", "polynomial"]

# Above this many (leaf, subset of its path's features) pairs the polynomial
# is not built: its terms grow as leaves x 2^depth, while XGBoost's walk
# grows as leaves x depth^2. The bound admits ML-MotEx's depth-3 and depth-4
# models of a few thousand trees (about 3x10^5 and 8x10^5 pairs).
MAX_TERMS = 1_000_000
_ROOT = 2147483647  # XGBoost's parent id of a root node
_BLOCK_VALUES = 2**23  # entries of M(x) per block of motifs (64 MB as float64)


@dataclass(frozen=True)
class SplitPolynomial:
    """SHAP values of a tree ensemble as ``M(x) @ coefficients`` (see the module docstring).

    Condition c is (``columns[c]``, ``thresholds[c]``, ``below[c]``): a motif
    meets it when ``(x[column] < threshold) == below``, compared in float32 as
    XGBoost does. ``monomials`` (n monomials, depth) lists the conditions of
    each monomial (-1 pads; an empty row is the constant monomial).
    ``coefficients`` is (n monomials, n features), sparse.
    ``expected_value`` is the mean margin over the trees' cover, without the
    base margin (for objectives whose margin is the prediction, as step 3's
    squared error, TreeSHAP's bias column minus the base score).
    """

    n_features: int
    columns: np.ndarray
    thresholds: np.ndarray  # float32
    below: np.ndarray
    monomials: np.ndarray
    coefficients: scipy.sparse.csr_matrix
    expected_value: float

    def shap_values(self, X: np.ndarray) -> np.ndarray:
        """(n motifs, n features) SHAP values of the rows of ``X``, float64."""
        X = np.asarray(X, dtype=np.float32)
        values = np.empty((len(X), self.n_features))
        n_conditions = len(self.columns)
        # Motifs run along rows' second axis, so that gathering a condition
        # for every motif copies one contiguous row. The padding index points
        # at a row of ones (an always-true condition).
        terms = np.where(self.monomials < 0, n_conditions, self.monomials)
        by_feature = self.coefficients.T.tocsr()
        rows = int(np.clip(_BLOCK_VALUES // max(len(terms), 1), 16, 512))
        for start in range(0, len(X), rows):
            block = X[start:start + rows]
            met = np.ones((n_conditions + 1, len(block)), dtype=bool)
            met[:n_conditions] = ((block[:, self.columns] < self.thresholds) == self.below).T
            present = met[terms[:, 0]] if terms.shape[1] else np.ones((len(terms), len(block)), dtype=bool)
            for k in range(1, terms.shape[1]):
                present &= met[terms[:, k]]
            values[start:start + len(block)] = (by_feature @ present.astype(np.float64)).T
        return values


def polynomial(model_json: str, max_terms: int = MAX_TERMS) -> Optional[SplitPolynomial]:
    """The :class:`SplitPolynomial` of an XGBoost model (its JSON text), or None where it does not apply.

    None for text that is not an XGBoost model, for anything but a
    single-output ``gbtree`` with numerical splits, and for ensembles whose
    polynomial would exceed ``max_terms`` (leaf, subset) pairs: XGBoost's own
    TreeSHAP is the one to use then.
    """
    try:
        learner = json.loads(model_json)["learner"]
        booster = learner["gradient_booster"]
        params = learner["learner_model_param"]
        # One output: a multi-class or multi-target model's trees belong to different outputs.
        if booster.get("name") != "gbtree" or int(params.get("num_target", 1)) > 1 or int(params.get("num_class", 0)):
            return None
        model = booster["model"]
        if int(model["gbtree_model_param"].get("num_parallel_tree", 1)) != 1:
            return None
        trees = model["trees"]
        n_features = int(params["num_feature"])
        # Categorical splits, and nodes a pruner marked deleted but left in place, are XGBoost's to walk.
        if not trees or any(any(t["split_type"]) or int(t["tree_param"].get("num_deleted", 0)) for t in trees):
            return None
        paths = _leaf_paths(trees)
    except (ValueError, KeyError, TypeError):  # not an XGBoost model: the caller's loader says why
        return None
    if paths is None:
        return None
    value, column, threshold, left, ratio, valid = paths
    n_leaves, depth = column.shape
    if n_leaves * 2**depth > max_terms:
        return None
    return _build(n_features, value, column, threshold, left, ratio, valid)


def _leaf_paths(trees: list) -> Optional[tuple]:
    """Every leaf's value and path (leaf to root, padded): column, threshold, went left, cover ratio, valid."""
    def stacked(key, dtype):
        return np.concatenate([np.asarray(t[key], dtype=dtype) for t in trees])

    sizes = np.array([len(t["left_children"]) for t in trees])
    offset = np.repeat(np.cumsum(sizes) - sizes, sizes)
    left_child = stacked("left_children", np.int64)
    parent = stacked("parents", np.int64)
    column = stacked("split_indices", np.int64)
    condition = stacked("split_conditions", np.float32)  # a leaf's value, or a node's threshold
    cover = stacked("sum_hessian", np.float64)
    is_root = parent == _ROOT
    parent = np.where(is_root, -1, parent + offset)
    left_child = np.where(left_child < 0, -1, left_child + offset)
    leaves = np.flatnonzero(left_child < 0)
    levels = []
    node = leaves
    alive = ~is_root[node]
    while alive.any():
        if len(levels) > 64:  # not a tree
            return None
        up = np.where(alive, parent[node], 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(alive, cover[node] / cover[up], 1.0)
        levels.append((np.where(alive, column[up], 0), np.where(alive, condition[up], np.inf),
                       np.where(alive, left_child[up] == node, True), share, alive.copy()))
        node = np.where(alive, up, node)
        alive &= ~is_root[node]
    value = condition[leaves].astype(np.float64)
    if not levels:
        empty = np.zeros((len(leaves), 0))
        return value, empty.astype(np.int64), empty.astype(np.float32), empty.astype(bool), empty, empty.astype(bool)
    return (value, *(np.stack([level[k] for level in levels], axis=1) for k in range(5)))


def _build(n_features, value, column, threshold, left, ratio, valid) -> SplitPolynomial:
    n_leaves, depth = column.shape
    # Each path position belongs to the feature slot of its column's first
    # appearance on the path (a column split on twice is one feature).
    slot = np.tile(np.arange(depth), (n_leaves, 1))
    for k in range(depth):
        for j in range(k):
            same = valid[:, k] & valid[:, j] & (column[:, k] == column[:, j]) & (slot[:, k] == k)
            slot[:, k] = np.where(same, slot[:, j], slot[:, k])
    real = np.zeros((n_leaves, depth), dtype=bool)  # slot k holds a feature
    zero = np.ones((n_leaves, depth))  # the cover fraction z of each slot
    rows = np.arange(n_leaves)
    for k in range(depth):
        real[rows[valid[:, k]], slot[valid[:, k], k]] = True
        np.multiply.at(zero, (rows, slot[:, k]), np.where(valid[:, k], ratio[:, k], 1.0))
    slot_column = np.where(real, column, -1)  # a slot is numbered by its column's first position
    d = real.sum(axis=1)

    # Conditions, numbered; a path position's condition and each subset's monomial.
    # One integer per condition: column, the threshold's 32 bits, the side.
    bits = threshold[valid].astype(np.float32).view(np.uint32).astype(np.int64)
    key = (column[valid] << 33) | (bits << 1) | left[valid]
    codes, numbered = np.unique(key, return_inverse=True)
    condition_of = np.full((n_leaves, depth), -1)
    condition_of[valid] = numbered.ravel()

    subsets = np.arange(2**depth)
    member = ((subsets[:, None] >> np.arange(depth)) & 1).astype(bool)  # (subsets, slots)
    usable = ~np.any(member[None, :, :] & ~real[:, None, :], axis=2)  # (leaves, subsets): only real slots
    in_subset = member[:, slot].transpose(1, 0, 2)  # (leaves, subsets, path positions)
    terms = np.where(in_subset & valid[:, None, :], condition_of[:, None, :], np.iinfo(np.int64).max)
    terms.sort(axis=2)
    terms[terms == np.iinfo(np.int64).max] = -1
    # A condition met twice along a path counts once.
    terms[:, :, 1:][terms[:, :, 1:] == terms[:, :, :-1]] = -1
    terms.sort(axis=2)
    leaf_index, subset_index = np.nonzero(usable)
    monomials, monomial_of = _unique_rows(terms[leaf_index, subset_index])

    # The coefficient of each (leaf, subset Q, slot i):
    # v * prod_{real j not in Q} z_j * (w(|Q| - 1) if i in Q else -w(|Q|)).
    inside = member[subset_index]
    size = inside.sum(axis=1, keepdims=True)
    outside = np.where(inside | ~real[leaf_index], 1.0, zero[leaf_index]).prod(axis=1)
    weight = _shapley_weight(np.where(inside, size - 1, size), d[leaf_index, None])
    coefficient = value[leaf_index, None] * outside[:, None] * np.where(inside, weight, -weight)
    keep = real[leaf_index] & (coefficient != 0)
    matrix = scipy.sparse.coo_matrix(
        (coefficient[keep], (np.broadcast_to(monomial_of[:, None], keep.shape)[keep], slot_column[leaf_index][keep])),
        shape=(len(monomials), n_features),
    ).tocsr()
    expected = float(np.sum(value * np.where(real, zero, 1.0).prod(axis=1)))
    return SplitPolynomial(
        n_features=n_features,
        columns=codes >> 33,
        thresholds=((codes >> 1) & 0xFFFFFFFF).astype(np.uint32).view(np.float32),
        below=(codes & 1).astype(bool),
        monomials=monomials,
        coefficients=matrix,
        expected_value=expected,
    )


def _shapley_weight(k: np.ndarray, d: np.ndarray) -> np.ndarray:
    """k! (d - 1 - k)! / d!, the Shapley weight of a coalition of k among d players (0 outside 0 <= k < d)."""
    top = int(np.max(d, initial=0))
    table = np.zeros((top + 1, top + 1))
    for players in range(1, top + 1):
        for size in range(players):
            table[players, size] = float(Fraction(math.factorial(size) * math.factorial(players - 1 - size),
                                                  math.factorial(players)))
    ok = (k >= 0) & (k < d)
    return np.where(ok, table[np.where(ok, d, 0), np.where(ok, k, 0)], 0.0)


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(rows, axis=0, return_inverse=True), through one integer key per row where it fits."""
    if rows.shape[1] == 0:
        return rows[:1], np.zeros(len(rows), dtype=np.int64)
    top = int(rows.max(initial=-1)) + 2  # -1 -> 0
    bits = max(1, math.ceil(math.log2(top)))
    if bits * rows.shape[1] > 62:
        unique, inverse = np.unique(rows, axis=0, return_inverse=True)
        return unique, inverse.ravel()
    key = np.zeros(len(rows), dtype=np.int64)
    for k in range(rows.shape[1]):
        key = (key << bits) | (rows[:, k] + 1)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return rows[first], inverse.ravel()
