"""TreeSHAP as a polynomial in the splits (motex_db.treeshap) against Shapley's definition and XGBoost."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import xgboost as xgb

from motex_db import contributions, treeshap
from motex_db.errors import InputError


def _motifs(n: int, n_atoms: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features as step 3 builds them (n_kept, then 0/1 per atom) and an Rwp with interactions."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, n_atoms)) < rng.random((n, 1))
    X = np.column_stack([masks.sum(axis=1), masks]).astype(np.float64)
    rwp = 0.4 - 0.03 * masks[:, :3].sum(axis=1) + 0.02 * (masks[:, 3] & ~masks[:, 4]) \
        + 0.002 * (X[:, 0] - n_atoms / 2) ** 2 + 0.01 * rng.standard_normal(n)
    return X, rwp


def _booster(X, y, depth: int, rounds: int, **params) -> xgb.Booster:
    return xgb.train({"tree_method": "hist", "max_depth": depth, "learning_rate": 0.3, "subsample": 0.8,
                      "seed": 1, "nthread": 1, **params}, xgb.DMatrix(X, label=y), rounds)


def _text(booster: xgb.Booster) -> str:
    return bytes(booster.save_raw("json")).decode()


def _shapley_by_definition(text: str, x: np.ndarray) -> np.ndarray:
    """Shapley values of every feature, summed over the trees, straight from the definition (slow).

    The value of a coalition S for one tree: walk from the root, follow the
    motif at splits on a feature in S, and average the two children by their
    cover at the others (tree path dependent, Lundberg et al. 2020).
    """
    trees = json.loads(text)["learner"]["gradient_booster"]["model"]["trees"]
    n = len(x)
    phi = np.zeros(n)

    def value(tree, node, coalition):
        left, right = tree["left_children"][node], tree["right_children"][node]
        if left == -1:
            return float(np.float32(tree["split_conditions"][node]))  # XGBoost's leaf values are float32
        feature = tree["split_indices"][node]
        if feature in coalition:
            goes_left = np.float32(x[feature]) < np.float32(tree["split_conditions"][node])
            return value(tree, left if goes_left else right, coalition)
        cover = tree["sum_hessian"]
        return (cover[left] * value(tree, left, coalition) + cover[right] * value(tree, right, coalition)) / cover[node]

    for tree in trees:
        used = sorted(set(tree["split_indices"][k] for k in range(len(tree["left_children"]))
                          if tree["left_children"][k] != -1))
        d = len(used)  # features the tree never splits on have no share in it
        for i in used:
            others = [j for j in used if j != i]
            for size in range(d):
                weight = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
                for coalition in itertools.combinations(others, size):
                    phi[i] += weight * (value(tree, 0, set(coalition) | {i}) - value(tree, 0, set(coalition)))
    return phi


def test_the_polynomial_gives_shapley_values_by_their_definition():
    # depth 3 over n_kept and 5 atoms: paths split twice on one column (n_kept), and trees share monomials
    X, y = _motifs(400, 5, seed=0)
    booster = _booster(X, y, depth=3, rounds=12)
    text = _text(booster)
    form = treeshap.polynomial(text)
    assert form is not None
    paths = json.loads(text)["learner"]["gradient_booster"]["model"]["trees"]
    assert any(sum(1 for k in range(len(t["split_indices"])) if t["left_children"][k] != -1 and t["split_indices"][k] == 0) >= 2
               for t in paths), "the case of a column split on twice along a path is not exercised"
    values = form.shap_values(X[:25])
    for row in range(25):
        np.testing.assert_allclose(values[row], _shapley_by_definition(text, X[row]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("depth,rounds", [(1, 50), (2, 300), (3, 400), (4, 200)])
def test_the_polynomial_gives_xgboost_treeshap_and_adds_up_to_the_prediction(depth, rounds):
    X, y = _motifs(3000, 20, seed=depth)
    booster = _booster(X, y, depth=depth, rounds=rounds)
    form = treeshap.polynomial(_text(booster))
    assert form is not None
    values = form.shap_values(X[:700])  # more motifs than one block holds
    reference = booster.predict(xgb.DMatrix(X[:700]), pred_contribs=True)
    scale = np.abs(reference).max()
    # XGBoost sums in float32: agreement to its precision
    np.testing.assert_allclose(values, reference[:, :-1], rtol=0, atol=2e-6 * scale)
    margin = booster.predict(xgb.DMatrix(X[:700]), output_margin=True).astype(np.float64)
    base = float(json.loads(_text(booster))["learner"]["learner_model_param"]["base_score"].strip("[]"))
    np.testing.assert_allclose(values.sum(axis=1) + form.expected_value + base, margin, rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(form.expected_value + base, reference[:, -1], rtol=1e-5)


def test_shap_values_use_the_polynomial_and_leave_deep_or_other_models_to_xgboost():
    X, y = _motifs(2000, 16, seed=5)
    shallow = _booster(X, y, depth=3, rounds=100)
    np.testing.assert_array_equal(contributions.shap_values(shallow, X[:50]),
                                  treeshap.polynomial(_text(shallow)).shap_values(X[:50]))
    # the record's JSON text explains the same, without loading the model into XGBoost
    np.testing.assert_array_equal(contributions.shap_values(_text(shallow), X[:50]),
                                  contributions.shap_values(shallow, X[:50]))
    with pytest.raises(InputError, match="XGBoost"):
        contributions.shap_values('{"not": "a model"}', X[:5])
    with pytest.raises(InputError, match="17 features"):
        contributions.shap_values(_text(shallow), X[:5, :-1])
    # too many terms: XGBoost's TreeSHAP, the same values
    deep = _booster(X, y, depth=8, rounds=300)
    assert treeshap.polynomial(_text(deep)) is None
    np.testing.assert_array_equal(contributions.shap_values(deep, X[:50]),
                                  deep.predict(xgb.DMatrix(X[:50]), pred_contribs=True)[:, :-1])
    np.testing.assert_array_equal(contributions.shap_values(_text(deep), X[:50]),
                                  contributions.shap_values(deep, X[:50]))
    # not a plain tree ensemble
    linear = xgb.train({"booster": "gblinear"}, xgb.DMatrix(X, label=y), 5)
    assert treeshap.polynomial(_text(linear)) is None
    dart = _booster(X, y, depth=3, rounds=10, booster="dart", rate_drop=0.1)
    assert treeshap.polynomial(_text(dart)) is None
    classes = _booster(X, np.digitize(y, np.quantile(y, [0.33, 0.66])), depth=3, rounds=5,
                       objective="multi:softprob", num_class=3)
    assert treeshap.polynomial(_text(classes)) is None  # trees of three outputs
    forest = _booster(X, y, depth=3, rounds=2, num_parallel_tree=4)
    assert treeshap.polynomial(_text(forest)) is None
    # a missing value takes a tree's default branch, which only XGBoost's walk follows
    gappy = X[:20].copy()
    gappy[3, 2] = np.nan
    np.testing.assert_array_equal(contributions.shap_values(shallow, gappy),
                                  shallow.predict(xgb.DMatrix(gappy), pred_contribs=True)[:, :-1])
    # and a value float32 cannot hold is XGBoost's to refuse
    huge = X[:5].copy()
    huge[0, 1] = 1e39
    with pytest.raises(xgb.core.XGBoostError):
        contributions.shap_values(shallow, huge)


def test_a_model_of_single_leaves_has_no_shares():
    X = np.ones((50, 4))
    y = np.linspace(0, 1, 50)
    booster = _booster(X, y, depth=3, rounds=5)  # nothing to split on
    form = treeshap.polynomial(_text(booster))
    np.testing.assert_array_equal(form.shap_values(X[:5]), np.zeros((5, 4)))
