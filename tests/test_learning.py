"""Step 3: the surrogate of Rwp from atom presence (motex_db.learning)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xgboost as xgb

from motex_db import learning
from motex_db.catalogue import masks_from_text, sample_uniform_masks
from motex_db.errors import InputError

N_ATOMS = 12
NOISE = 0.005


def synthetic_catalogue(n_motifs: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """ML-MotEx-sampled masks over 12 atoms; keeping atoms 1-6 lowers Rwp, keeping 7-12 raises it."""
    texts, _ = sample_uniform_masks(N_ATOMS, n_motifs, np.random.default_rng(seed))
    masks = masks_from_text(texts, N_ATOMS)
    noise = NOISE * np.random.default_rng(seed + 100).standard_normal(len(masks))
    rwp = 0.5 - 0.02 * masks[:, :6].sum(axis=1) + 0.015 * masks[:, 6:].sum(axis=1) + noise
    return masks, rwp


@pytest.fixture(scope="module")
def catalogue():
    return synthetic_catalogue(2000)


@pytest.fixture(scope="module")
def trained(catalogue):
    masks, rwp = catalogue
    return learning.train_surrogate(masks, rwp, seed=0, n_iter=3)


# --------------------------------------------------------------------------
# Features and split


def test_features_are_the_kept_count_then_one_column_per_atom():
    masks = np.array([[1, 0, 1, 1], [0, 0, 1, 0]], dtype=bool)
    X = learning.features(masks)
    assert X.dtype == np.float64
    np.testing.assert_array_equal(X, [[3, 1, 0, 1, 1], [1, 0, 0, 1, 0]])
    assert learning.feature_names(4) == ["n_kept", "atom_1", "atom_2", "atom_3", "atom_4"]
    np.testing.assert_array_equal(learning.features(masks.astype(int)), X)


def test_features_refuse_what_is_not_a_mask():
    with pytest.raises(InputError, match="0/1"):
        learning.features(np.array([[0, 2, 1]]))
    with pytest.raises(InputError, match="shape"):
        learning.features(np.array([1, 0, 1]))


def test_split_is_a_seeded_shuffled_80_20_partition():
    train, test = learning.split(1000, seed=3)
    assert (len(train), len(test)) == (800, 200)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1000))
    # shuffled, not the last 20 % as ML-MotEx did
    assert test.max() - test.min() > 500
    again = learning.split(1000, seed=3)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(learning.split(1000, seed=4)[1], test)
    with pytest.raises(InputError, match="seed"):
        learning.split(1000, seed=-1)


# --------------------------------------------------------------------------
# The search


def test_search_runs_the_random_starts_then_n_iter_bayesian_trials(catalogue):
    masks, rwp = catalogue
    X, y = learning.features(masks[:300]), rwp[:300]
    seen = []
    result = learning.search_hyperparameters(
        X, y, seed=0, n_iter=2, cv=3, on_trial=lambda i, p, s: seen.append((i, p, s))
    )
    assert [i for i, _, _ in seen] == [0, 1, 2, 3, 4, 5]
    assert [t.cv_mae for t in result.trials] == [s for _, _, s in seen]
    space = learning.SearchSpace()
    for _, params, score in seen:
        assert space.learning_rate[0] <= params["learning_rate"] <= space.learning_rate[1]
        assert space.max_depth[0] <= params["max_depth"] <= space.max_depth[1]
        assert isinstance(params["max_depth"], int)
        assert score > 0
    json.dumps(result.best_params)  # plain Python numbers, ready for MLflow and the record
    best = min(result.trials, key=lambda t: t.cv_mae)
    assert result.best_cv_mae == best.cv_mae
    assert {k: result.best_params[k] for k in best.params} == best.params
    assert all(len(t.fold_mae) == 3 for t in result.trials)


def test_search_refuses_impossible_settings(catalogue):
    masks, rwp = catalogue
    X, y = learning.features(masks[:50]), rwp[:50]
    with pytest.raises(InputError, match="folds"):
        learning.search_hyperparameters(X, y, seed=0, n_iter=1, cv=1)
    with pytest.raises(InputError, match="random start"):
        learning.search_hyperparameters(X, y, seed=0, n_iter=1, n_initial=0)


# --------------------------------------------------------------------------
# The whole of step 3


def test_the_surrogate_learns_a_synthetic_rwp(trained):
    # the noise alone gives MAE = 0.005 * sqrt(2 / pi) = 0.004
    assert trained.metrics["mae"] < 0.006
    assert trained.metrics["rmse"] < 0.0075
    assert trained.metrics["r2"] > 0.9
    assert set(trained.metrics) == {"mae", "rmse", "r2"}
    assert len(trained.trials) == 4 + 3
    assert trained.feature_names[0] == "n_kept" and len(trained.feature_names) == N_ATOMS + 1
    np.testing.assert_allclose(
        np.mean(np.abs(trained.y_test - trained.y_pred_test)), trained.metrics["mae"], rtol=1e-6
    )


def test_early_stopping_uses_a_validation_part_of_the_training_motifs(trained):
    train, test = trained.train_idx, trained.test_idx
    validation, fit = trained.validation_idx, trained.fit_idx
    assert np.intersect1d(train, test).size == 0
    assert np.isin(validation, train).all() and np.isin(fit, train).all()
    assert np.intersect1d(validation, test).size == 0 and np.intersect1d(fit, test).size == 0
    assert np.intersect1d(validation, fit).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([validation, fit])), train)
    assert abs(len(validation) - 0.2 * len(train)) <= 1


def test_the_model_is_cut_at_the_best_round_of_its_learning_curve(trained):
    curve = trained.learning_curve
    n_run = len(curve["validation"]["mae"])
    assert len(curve["train"]["mae"]) == len(curve["train"]["rmse"]) == n_run
    best = trained.best_iteration
    assert n_run == best + 1 + learning.EARLY_STOPPING_ROUNDS
    assert curve["validation"]["mae"][best] == min(curve["validation"]["mae"])
    assert trained.model.get_booster().num_boosted_rounds() == best + 1
    assert trained.hyperparameters["n_estimators"] == best + 1


def test_the_stored_hyperparameters_rebuild_the_model(trained, catalogue):
    masks, rwp = catalogue
    X = learning.features(masks)
    rebuilt = xgb.XGBRegressor(**trained.hyperparameters, n_jobs=1).fit(X[trained.fit_idx], rwp[trained.fit_idx])
    assert learning.model_to_json(rebuilt) == trained.model_json


def test_same_inputs_and_seed_give_the_same_model_and_another_seed_another_split(trained, catalogue):
    masks, rwp = catalogue
    again = learning.train_surrogate(masks, rwp, seed=0, n_iter=3)
    assert again.model_json == trained.model_json
    assert again.metrics == trained.metrics
    assert again.hyperparameters == trained.hyperparameters
    np.testing.assert_array_equal(again.test_idx, trained.test_idx)

    other = learning.train_surrogate(masks[:400], rwp[:400], seed=1, n_iter=1)
    first = learning.split(400, seed=0)[1]
    assert not np.array_equal(other.test_idx, first)


def test_the_final_fit_is_deterministic_with_row_subsampling(catalogue):
    masks, rwp = catalogue
    X, y = learning.features(masks[:500]), rwp[:500]
    params = {"learning_rate": 0.3, "max_depth": 4, "min_child_weight": 2.0, "subsample": 0.6}
    one = learning.train_final(X, y, params, seed=5)
    two = learning.train_final(X, y, params, seed=5)
    assert learning.model_to_json(one.model) == learning.model_to_json(two.model)
    three = learning.train_final(X, y, params, seed=6)
    assert learning.model_to_json(three.model) != learning.model_to_json(one.model)


def test_model_json_round_trips_to_identical_predictions(trained, catalogue):
    masks, _ = catalogue
    X = learning.features(masks)
    loaded = learning.model_from_json(trained.model_json)
    np.testing.assert_array_equal(loaded.predict(X), trained.model.predict(X))
    assert learning.model_to_json(loaded) == trained.model_json
    assert json.loads(trained.model_json)["learner"]["learner_model_param"]["num_feature"] == str(N_ATOMS + 1)
    with pytest.raises(InputError, match="XGBoost"):
        learning.model_from_json('{"not": "a model"}')
    # a fit predicts with its trees as fitted what its JSON, loaded, predicts
    params = {"learning_rate": 0.3, "max_depth": 4, "min_child_weight": 1.0, "subsample": 0.7}
    final = learning.train_final(X[:800], catalogue[1][:800], params, seed=2)
    np.testing.assert_array_equal(final.predict(X), learning.model_from_json(final.model_json).predict(X))
    assert learning.evaluate(final, X[800:], catalogue[1][800:]) == learning.evaluate(final.model, X[800:], catalogue[1][800:])


def test_evaluate_against_hand_computed_scores():
    X = learning.features(np.array([[1, 0], [0, 1], [1, 1], [1, 0]], dtype=bool))
    y = np.array([0.1, 0.3, 0.2, 0.4])
    model = learning.model_from_json(
        learning.model_to_json(
            xgb.XGBRegressor(n_estimators=1, max_depth=1, learning_rate=1.0, tree_method="hist",
                             min_child_weight=0.0, reg_lambda=0.0).fit(X, y)
        )
    )
    predicted = model.predict(X).astype(float)
    scores = learning.evaluate(model, X, y)
    assert scores["mae"] == pytest.approx(np.mean(np.abs(y - predicted)))
    assert scores["rmse"] == pytest.approx(np.sqrt(np.mean((y - predicted) ** 2)))
    assert scores["r2"] == pytest.approx(1 - np.sum((y - predicted) ** 2) / np.sum((y - y.mean()) ** 2))


def test_training_refuses_what_cannot_be_learned(catalogue):
    masks, rwp = catalogue
    with pytest.raises(InputError, match="at least 20"):
        learning.train_surrogate(masks[:19], rwp[:19], n_iter=1)
    with pytest.raises(InputError, match="same Rwp"):
        learning.train_surrogate(masks[:50], np.full(50, 0.3), n_iter=1)
    bad = rwp[:50].copy()
    bad[3] = np.nan
    with pytest.raises(InputError, match="not finite"):
        learning.train_surrogate(masks[:50], bad, n_iter=1)
    with pytest.raises(InputError, match="one Rwp per motif"):
        learning.train_surrogate(masks[:50], rwp[:49], n_iter=1)


# --------------------------------------------------------------------------
# The search's shortcuts: early stopping in the folds, stopping, the cheapest near-best trial


def test_every_fold_stops_early_and_records_its_tree_count(catalogue):
    masks, rwp = catalogue
    X, y = learning.features(masks[:400]), rwp[:400]
    result = learning.search_hyperparameters(X, y, seed=0, n_iter=1, cv=2, patience=None)
    for trial in result.trials:
        assert 1 <= trial.n_rounds <= learning.MAX_ROUNDS
        assert trial.started <= trial.finished
        depth = trial.params["max_depth"]
        assert trial.cost == trial.n_rounds * 2**depth * depth**2  # TreeSHAP's work: trees x leaves x depth^2
        assert "n_estimators" not in trial.params  # the tree count is not searched


def test_the_search_stops_once_it_stops_improving(catalogue):
    masks, rwp = catalogue
    X, y = learning.features(masks[:400]), rwp[:400]
    stopped = learning.search_hyperparameters(X, y, seed=0, n_iter=12, cv=2, patience=1)
    full = learning.search_hyperparameters(X, y, seed=0, n_iter=12, cv=2, patience=None)
    assert len(full.trials) == 4 + 12 and not full.stopped_early
    assert stopped.stopped_early and len(stopped.trials) < len(full.trials)
    # the trials it ran are the full search's first ones (same seed, same proposals)
    assert [t.params for t in stopped.trials] == [t.params for t in full.trials[: len(stopped.trials)]]
    # patience counts Bayesian trials after the last real improvement
    last = stopped.trials[-1]
    assert last.cv_mae >= min(t.cv_mae for t in stopped.trials[:-1]) * (1 - learning.MIN_IMPROVEMENT)


def test_scored_on_the_validation_part_the_chosen_trial_is_the_final_model(catalogue):
    masks, rwp = catalogue
    X, y = learning.features(masks[:400]), rwp[:400]
    search = learning.search_hyperparameters(X, y, seed=3, n_iter=2, cv=0, n_jobs=2)
    assert search.final is not None and len(search.trials) == 4 + 2
    refit = learning.train_final(X, y, search.best_params, seed=3)
    assert learning.model_to_json(search.final.model) == learning.model_to_json(refit.model)
    assert search.final.learning_curve == refit.learning_curve
    assert search.best_cv_mae == pytest.approx(refit.learning_curve["validation"]["mae"][refit.best_iteration])
    # trials are proposed two at a time and fitted on one thread each: the core count changes nothing
    alone = learning.search_hyperparameters(X, y, seed=3, n_iter=2, cv=0, n_jobs=1)
    assert [t.params for t in alone.trials] == [t.params for t in search.trials]
    assert [t.cv_mae for t in alone.trials] == [t.cv_mae for t in search.trials]
    # cross-validation scores k fits per trial and leaves the final fit to train_final
    assert learning.search_hyperparameters(X, y, seed=3, n_iter=0, cv=2).final is None
    with pytest.raises(InputError, match="validation part"):
        learning.search_hyperparameters(X, y, seed=3, n_iter=0, cv=1)


def _trial(index, cv_mae, rounds, depth):
    return learning.Trial(index=index, params={"max_depth": depth}, cv_mae=cv_mae, fold_mae=(cv_mae,), n_rounds=rounds)


def test_the_chosen_trial_is_the_cheapest_within_the_tolerance_of_the_lowest_cv_mae():
    trials = [_trial(0, 0.0100, 900, 6), _trial(1, 0.0101, 300, 4), _trial(2, 0.0105, 50, 2), _trial(3, 0.0200, 10, 2)]
    assert learning.choose_trial(trials, tolerance=0.02).index == 1  # 1 % worse, a tenth of the leaves
    assert learning.choose_trial(trials, tolerance=0.0).index == 0  # the lowest, as the exhaustive search takes
    assert learning.choose_trial(trials, tolerance=0.06).index == 2
    with pytest.raises(InputError):
        learning.choose_trial([])


def test_training_records_how_the_search_went(trained):
    assert trained.lowest_cv_mae <= trained.best_cv_mae <= trained.lowest_cv_mae * (1 + learning.COST_TOLERANCE)
    assert trained.best_iteration + 1 <= learning.MAX_ROUNDS
    assert all(json.dumps(t.as_dict()) for t in trained.trials)


def test_a_fit_without_its_training_side_curve_is_the_same_model(catalogue):
    masks, rwp = catalogue
    X, y = learning.features(masks[:400]), rwp[:400]
    params = {"learning_rate": 0.3, "max_depth": 3, "min_child_weight": 2.0, "subsample": 0.9}
    whole = learning.train_final(X, y, params, seed=1)
    lean = learning.train_final(X, y, params, seed=1, train_curve=False)
    assert learning.model_to_json(lean.model) == learning.model_to_json(whole.model)
    assert set(lean.learning_curve) == {"validation"} and set(whole.learning_curve) == {"train", "validation"}
    assert lean.learning_curve["validation"] == whole.learning_curve["validation"]


@pytest.mark.parametrize("params", [
    {"learning_rate": 0.3, "max_depth": 3, "min_child_weight": 2.0, "subsample": 0.9},
    {"learning_rate": 0.6, "max_depth": 6, "min_child_weight": 1.0, "subsample": 0.5},
])
def test_fits_taking_turns_on_threads_are_xgboosts_own_early_stopping(catalogue, params):
    """The search's fits advance a turn of rounds at a time, on whichever thread is free: every fit is still,
    tree for tree and value for value, what xgb.train with early stopping gives."""
    import xgboost as xgb

    from motex_db import surrogate

    assert surrogate._ROUNDS is not None  # rounds after the first call XGBoost's C functions directly
    masks, rwp = catalogue
    X, y = learning.features(masks[:600]), rwp[:600]
    fit_rows, held_rows = surrogate._validation_split(len(y), 4)
    parts = [surrogate._part(X, y, fit_rows, held_rows) for _ in range(3)]
    history: dict = {}
    reference = xgb.train(
        {**surrogate._FIXED_PARAMS, **params, "seed": 4, "nthread": 1, "eval_metric": surrogate._EVAL_METRICS},
        parts[0][0], num_boost_round=surrogate.MAX_ROUNDS, evals=[(parts[0][0], "train"), (parts[0][1], "validation")],
        evals_result=history, early_stopping_rounds=surrogate.EARLY_STOPPING_ROUNDS, verbose_eval=False)
    fittings = [surrogate._Boosting(part, params, 4, True, surrogate.EARLY_STOPPING_ROUNDS, surrogate.MAX_ROUNDS, 1,
                                    True) for part in parts]
    surrogate._boost_all(fittings, n_jobs=2)  # three fits, two threads: they change threads between turns
    for fitting in fittings:
        mae, n_trees, final = fitting.result()
        assert n_trees == reference.best_iteration + 1 and final.best_iteration == reference.best_iteration
        assert final.model_json == surrogate._booster_json(reference[: reference.best_iteration + 1])
        assert final.learning_curve == history and mae == history["validation"]["mae"][reference.best_iteration]


def test_a_fit_that_fails_while_others_take_turns_raises_its_error_and_nothing_hangs(catalogue):
    from motex_db import surrogate

    masks, rwp = catalogue
    X, y = learning.features(masks[:300]), rwp[:300]
    fit_rows, held_rows = surrogate._validation_split(len(y), 1)
    params = {"learning_rate": 0.3, "max_depth": 3, "min_child_weight": 2.0, "subsample": 0.9}
    fittings = [surrogate._Boosting(surrogate._part(X, y, fit_rows, held_rows), params, 1, True, 50, 3000, 1, True)
                for _ in range(3)]

    class Broken(RuntimeError):
        pass

    def broken(n_rounds):
        raise Broken("a fit that cannot go on")

    fittings[1].advance = broken
    with pytest.raises(Broken):
        surrogate._boost_all(fittings, n_jobs=2)


def _interacting_catalogue():
    """Rwp driven by three-atom interactions: shallow or slow candidates stay far behind the good ones."""
    texts, _ = sample_uniform_masks(N_ATOMS, 2000, np.random.default_rng(1))
    m = masks_from_text(texts, N_ATOMS)
    rwp = 0.5 - 0.04 * (m[:, 0] & m[:, 1] & m[:, 2]) - 0.04 * (m[:, 3] & m[:, 4] & ~m[:, 5]) \
        + 0.002 * (m.sum(axis=1) - 6) ** 2 + 0.003 * np.random.default_rng(5).standard_normal(len(m))
    return learning.features(m), rwp


def test_a_trial_that_cannot_come_near_the_best_is_pruned_and_the_choice_stays():
    X, y = _interacting_catalogue()
    # two steps: the second step's proposals come from the same first step either way
    pruned = learning.search_hyperparameters(X, y, seed=1, n_iter=4, n_jobs=2)
    whole = learning.search_hyperparameters(X, y, seed=1, n_iter=4, n_jobs=2, prune=False)
    assert [t.params for t in pruned.trials] == [t.params for t in whole.trials]
    stopped = [t.index for t in pruned.trials if t.pruned]
    assert stopped and not any(t.pruned for t in whole.trials)
    # only trials after the first step, against the best of the steps before them
    mark = min(t.cv_mae for t in whole.trials[:learning.TRIALS_PER_ASK]) * (1 + learning.COST_TOLERANCE)
    for mine, full in zip(pruned.trials, whole.trials):
        if mine.pruned:
            assert mine.index >= learning.TRIALS_PER_ASK
            assert mine.n_rounds < full.n_rounds and mine.cv_mae >= full.cv_mae > mark  # it could not have come near
        else:
            assert (mine.cv_mae, mine.n_rounds) == (full.cv_mae, full.n_rounds)
    assert pruned.best_index == whole.best_index and pruned.lowest_cv_mae == whole.lowest_cv_mae
    assert learning.model_to_json(pruned.final.model) == learning.model_to_json(whole.final.model)
    # the turns do not decide what is pruned
    alone = learning.search_hyperparameters(X, y, seed=1, n_iter=4, n_jobs=1)
    assert [t.as_dict() | {"started": 0, "finished": 0} for t in alone.trials] \
        == [t.as_dict() | {"started": 0, "finished": 0} for t in pruned.trials]
    # cross-validated trials are never pruned
    assert not any(t.pruned for t in learning.search_hyperparameters(X[:600], y[:600], seed=1, n_iter=4, cv=2).trials)


def test_a_pruned_fit_is_the_same_fit_stopped_at_a_check():
    from motex_db import surrogate

    X, y = _interacting_catalogue()
    fit_rows, held_rows = surrogate._validation_split(len(y), 1)
    params = {"learning_rate": 0.1, "max_depth": 2, "min_child_weight": 2.7, "subsample": 0.9}  # far behind depth 3

    def fitting(stop_above):
        return surrogate._Boosting(surrogate._part(X, y, fit_rows, held_rows), params, 1, True,
                                   surrogate.EARLY_STOPPING_ROUNDS, surrogate.MAX_ROUNDS, 1, True, stop_above)

    whole = fitting(None)
    whole.advance(surrogate.MAX_ROUNDS)
    cut = fitting(0.003)  # the good candidates' validation MAE is 0.0025
    cut.advance(surrogate.MAX_ROUNDS)
    assert cut.pruned and not whole.pruned
    assert cut.rounds % surrogate.PRUNE_EVERY == 0 and cut.rounds < whole.rounds
    n = cut.rounds
    assert cut.history["validation"]["mae"] == whole.history["validation"]["mae"][:n]
    assert min(whole.history["validation"]["mae"]) > cut.stop_above
