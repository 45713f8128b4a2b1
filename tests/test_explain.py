"""Step 4: atom contributions from SHAP values (motex_db.explain)."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from motex_db import explain, learning
from motex_db.catalogue import masks_from_text, sample_uniform_masks
from motex_db.errors import InputError

N_ATOMS = 12
GOOD = np.arange(6)  # atoms 1..6: keeping them lowers Rwp
BAD = np.arange(6, 12)  # atoms 7..12: keeping them raises Rwp


@pytest.fixture(scope="module")
def explained():
    """A surrogate of a synthetic Rwp trained on 2000 sampled motifs, and its contributions."""
    texts, _ = sample_uniform_masks(N_ATOMS, 2000, np.random.default_rng(7))
    masks = masks_from_text(texts, N_ATOMS)
    noise = 0.005 * np.random.default_rng(8).standard_normal(len(masks))
    rwp = 0.5 - 0.02 * masks[:, GOOD].sum(axis=1) + 0.015 * masks[:, BAD].sum(axis=1) + noise
    result = learning.train_surrogate(masks, rwp, seed=0, n_iter=3)
    X_train = learning.features(masks)[result.train_idx]
    values = explain.shap_values(result.model, X_train)
    return result, X_train, values, explain.atom_contributions(values, X_train)


def test_shap_values_are_treeshap_and_add_up_to_the_prediction(explained):
    result, X, values, _ = explained
    assert values.shape == X.shape
    # shap's own explainer (which hands XGBoost models to XGBoost's TreeSHAP) gives the same values
    import shap

    np.testing.assert_allclose(
        values, shap.TreeExplainer(result.model, feature_perturbation="tree_path_dependent").shap_values(X), atol=1e-7)
    contribs = result.model.get_booster().predict(xgb.DMatrix(X), pred_contribs=True)  # the last column: the bias
    np.testing.assert_allclose(values.sum(axis=1) + contribs[:, -1], result.model.predict(X), atol=1e-5)
    # the stored model explains the same
    loaded = learning.model_from_json(result.model_json)
    np.testing.assert_array_equal(explain.shap_values(loaded, X[:50]), values[:50])


def test_atoms_that_lower_rwp_come_out_negative_and_form_the_motif(explained):
    _, _, _, atoms = explained
    np.testing.assert_array_equal(atoms.atom_index, np.arange(1, N_ATOMS + 1))
    assert (atoms.contribution[GOOD] < 0).all()
    assert (atoms.contribution[BAD] > 0).all()
    # for an additive Rwp the contribution is the effect of keeping the atom
    np.testing.assert_allclose(atoms.contribution[GOOD], -0.02, atol=0.004)
    np.testing.assert_allclose(atoms.contribution[BAD], 0.015, atol=0.004)
    assert np.mean(atoms.confidence > 1) >= 0.75
    assert atoms.overall_confidence > 1
    assert atoms.informative.all()
    np.testing.assert_array_equal(explain.extracted_motif_mask(atoms), np.arange(N_ATOMS) < 6)


def test_contributions_against_a_hand_computation():
    # 4 motifs, N = 2 (column 0 is n_kept, whose SHAP values are ignored)
    X = np.array([[1, 1, 0], [2, 1, 1], [1, 0, 1], [0, 0, 0]], dtype=float)
    S = np.array(
        [[9.0, -0.3, 0.2], [9.0, -0.1, -0.4], [9.0, 0.2, 0.0], [9.0, 0.4, 0.6]]
    )
    atoms = explain.atom_contributions(S, X)
    # atom 1: keep {-0.3, -0.1} mean -0.2 std 0.1; remove {0.2, 0.4} mean 0.3 std 0.1
    # atom 2: keep {-0.4, 0.0} mean -0.2 std 0.2; remove {0.2, 0.6} mean 0.4 std 0.2
    np.testing.assert_allclose(atoms.mean_keep, [-0.2, -0.2])
    np.testing.assert_allclose(atoms.mean_remove, [0.3, 0.4])
    np.testing.assert_allclose(atoms.contribution, [-0.5, -0.6])
    np.testing.assert_allclose(atoms.uncertainty, [0.1, 0.2])
    np.testing.assert_allclose(atoms.confidence, [5.0, 3.0])
    assert atoms.overall_confidence == pytest.approx(4.0)
    np.testing.assert_array_equal(atoms.n_keep, [2, 2])
    np.testing.assert_array_equal(explain.extracted_motif_mask(atoms), [True, True])
    np.testing.assert_array_equal(explain.extracted_motif_mask(atoms, min_confidence=4.0), [True, False])


def test_an_atom_always_or_never_kept_carries_no_evidence_and_the_rest_still_works():
    # atom 1 kept everywhere, atom 2 nowhere, atom 3 both
    X = np.array([[2, 1, 0, 1], [1, 1, 0, 0], [2, 1, 0, 1], [1, 1, 0, 0]], dtype=float)
    S = np.array([[0, 0.05, 0.0, -0.2], [0, 0.01, 0.0, 0.1], [0, 0.03, 0.0, -0.4], [0, 0.02, 0.0, 0.3]])
    atoms = explain.atom_contributions(S, X)
    np.testing.assert_array_equal(atoms.informative, [False, False, True])
    assert np.isfinite(atoms.contribution).all() and np.isfinite(atoms.uncertainty).all()
    np.testing.assert_array_equal(atoms.contribution[:2], [0.0, 0.0])
    np.testing.assert_array_equal(atoms.uncertainty[:2], [0.0, 0.0])
    np.testing.assert_array_equal(atoms.confidence[:2], [0.0, 0.0])
    assert np.isnan(atoms.mean_remove[0]) and np.isnan(atoms.mean_keep[1])
    assert atoms.contribution[2] == pytest.approx(-0.3 - 0.2)
    assert atoms.uncertainty[2] == pytest.approx(0.1)
    assert atoms.confidence[2] == pytest.approx(5.0)
    # the uninformative atoms count as zero confidence in the overall mean
    assert atoms.overall_confidence == pytest.approx(5.0 / 3)
    np.testing.assert_array_equal(explain.extracted_motif_mask(atoms), [False, False, True])


def test_no_spread_at_all_gives_the_capped_confidence():
    X = np.array([[1, 1], [0, 0], [1, 1], [0, 0]], dtype=float)
    S = np.array([[0, -0.1], [0, 0.1], [0, -0.1], [0, 0.1]])
    atoms = explain.atom_contributions(S, X)
    assert atoms.uncertainty[0] == 0.0
    assert atoms.confidence[0] == explain.CONFIDENCE_CAP
    # a model that never uses the atom: nothing either way
    flat = explain.atom_contributions(np.zeros_like(S), X)
    assert (flat.contribution[0], flat.confidence[0]) == (0.0, 0.0)


def test_explain_refuses_mismatched_or_non_binary_input(explained):
    result, X, values, _ = explained
    with pytest.raises(InputError, match="N \\+ 1"):
        explain.atom_contributions(values[:, :-1], X)
    bad = X.copy()
    bad[0, 1] = 0.5
    with pytest.raises(InputError, match="0/1"):
        explain.atom_contributions(values, bad)
    with pytest.raises(InputError, match="features"):
        explain.shap_values(result.model, X[:, :-1])
    with pytest.raises(InputError, match="confidence"):
        explain.extracted_motif_mask(explain.atom_contributions(values, X), min_confidence=-1)


def test_shap_rows_are_a_seeded_subset_of_the_training_motifs():
    from motex_db.explain import shap_rows

    rows = shap_rows(5000, seed=3, shap_motifs=2000)
    assert len(rows) == 2000 == len(np.unique(rows)) and np.all(np.diff(rows) > 0) and rows.max() < 5000
    np.testing.assert_array_equal(rows, shap_rows(5000, seed=3, shap_motifs=2000))
    assert not np.array_equal(rows, shap_rows(5000, seed=4, shap_motifs=2000))
    np.testing.assert_array_equal(shap_rows(800, seed=3, shap_motifs=2000), np.arange(800))  # fewer: all
    np.testing.assert_array_equal(shap_rows(800, seed=3, shap_motifs=0), np.arange(800))  # 0: all


def test_the_side_by_side_explanation_gives_the_numbers_of_the_steps_one_after_another():
    from motex_db.contributions import contribution_convergence, explain_with_convergence

    texts, _ = sample_uniform_masks(N_ATOMS, 600, np.random.default_rng(9))
    masks = masks_from_text(texts, N_ATOMS)
    rwp = 0.5 - 0.02 * masks[:, GOOD].sum(axis=1) + 0.015 * masks[:, BAD].sum(axis=1) \
        + 0.005 * np.random.default_rng(10).standard_normal(len(masks))
    result = learning.train_surrogate(masks, rwp, seed=2, n_iter=1)
    X = learning.features(masks)[result.train_idx][:300]
    values, found, parts = explain_with_convergence(result.model, X, masks, rwp, result.hyperparameters, 2, 200)
    np.testing.assert_array_equal(values, explain.shap_values(result.model, X))
    np.testing.assert_array_equal(found.contribution, explain.atom_contributions(values, X).contribution)
    alone = contribution_convergence(masks, rwp, result.hyperparameters, 2, found.contribution, 200)
    assert set(parts) == set(alone) == {"half", "three_quarters"}
    for name, part in parts.items():
        assert part["n_motifs"] == alone[name]["n_motifs"] == int(len(rwp) * explain.CONVERGENCE_FRACTIONS[name])
        np.testing.assert_array_equal(part["contribution"], alone[name]["contribution"])
        assert part["sign_changes"] == alone[name]["sign_changes"] \
            == int(np.sum(np.sign(part["contribution"]) != np.sign(found.contribution)))
    # the convergence models are the trees the full final fit keeps, without its curve
    n = parts["half"]["n_motifs"]
    train_idx, _ = learning.split(n, 2)
    X_half, y_half = learning.features(masks[:n])[train_idx], rwp[:n][train_idx]
    params = {k: result.hyperparameters[k] for k in learning.SearchSpace().names()}
    final = learning.train_final(X_half, y_half, params, 2)
    bare = learning.fit_booster(X_half, y_half, params, 2)
    assert bare.num_boosted_rounds() == final.best_iteration + 1
    np.testing.assert_array_equal(explain.shap_values(bare, X_half), explain.shap_values(final.model, X_half))
