"""The k-NN atom-type check: is each atom of a starting model the element its label says?

An XGBoost classifier learns an atom's element from its k-nearest-neighbour
distance vector (the descriptor of the seed "a predictor for atom types in
crystals based on their k-NN distances", where a network did the same on the
CSD). Trained on the crystals of a structure library, or on the starting
models in the record, it flags the atoms of a starting model whose labelled
element it finds unlikely: an O written as W in a hand-edited file, a wrong
element on import, or the neighbours of a missing or extra atom, whose
distance vectors no longer look like their element's.

Predictions for the checked structure's own atoms never come from a model
that saw them: with the record as the source they are out-of-fold.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from motex_db.environments import DEFAULT_K, check_k, inner_atoms, knn_distances, periodic_knn_distances
from motex_db.errors import InputError

CHECK_VERSION = 1
K_SWEEP = tuple(range(1, 11))
N_FOLDS = 5
DEFAULT_THRESHOLD = 0.05
HYPERPARAMETERS = {"n_estimators": 100, "max_depth": 4, "learning_rate": 0.3, "subsample": 0.9}


@dataclass(frozen=True)
class LabelledAtoms:
    """k-NN distance vectors (n, k) in Å, element labels (n,) and the structure each atom belongs to (n,)."""

    distances: np.ndarray
    elements: np.ndarray
    groups: np.ndarray


def labelled_atoms(
    structures: Sequence[tuple[Sequence[str], np.ndarray, int]], k: int, only: Optional[Sequence[str]] = None
) -> LabelledAtoms:
    """Pool the k-NN vectors of several structures.

    Each structure is (elements, distance matrix with >= k columns, group): the
    group names the source it came from (atoms of one group are held out
    together). With ``only``, just the atoms of those elements are kept.
    """
    if not structures:
        return LabelledAtoms(np.zeros((0, k)), np.zeros(0, dtype=str), np.zeros(0, dtype=int))
    distances = np.concatenate([np.asarray(d)[:, :k] for _, d, _ in structures])
    elements = np.concatenate([np.asarray(e, dtype=str) for e, _, _ in structures])
    groups = np.concatenate([np.full(len(e), g) for e, _, g in structures])
    keep = np.isin(elements, list(only)) if only is not None else np.ones(len(elements), dtype=bool)
    return LabelledAtoms(distances[keep], elements[keep], groups[keep])


def _balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Weights that give every element the same total weight (rare elements are not drowned)."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return (len(labels) / (len(counts) * counts))[inverse]


def fit_classifier(X: np.ndarray, labels: np.ndarray, seed: int):
    """An XGBoost classifier of element from k-NN vectors; returns (model, its element classes in output order)."""
    import xgboost as xgb

    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise InputError(
            f"the training structures hold only {', '.join(classes) or 'no'} atoms; "
            "telling elements apart needs at least two elements."
        )
    model = xgb.XGBClassifier(
        tree_method="hist", random_state=seed, n_jobs=1, **HYPERPARAMETERS
    )
    model.fit(X, y, sample_weight=_balanced_weights(y))
    return model, classes


def class_probabilities(model, classes: np.ndarray, X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted element, its probability, the labelled element's probability; 0 for an element never trained on)."""
    p = model.predict_proba(X)
    best = np.argmax(p, axis=1)
    column = {str(c): i for i, c in enumerate(classes)}
    label_p = np.array([p[i, column[str(l)]] if str(l) in column else 0.0 for i, l in enumerate(labels)])
    return classes[best].astype(str), p[np.arange(len(best)), best], label_p


def held_out_split(groups: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Train and test indices: whole structures held out when there are at least three, else a quarter of the atoms."""
    rng = np.random.default_rng(seed)
    structures = np.unique(groups)
    if len(structures) >= 3:
        held = rng.permutation(structures)[: max(1, round(0.25 * len(structures)))]
        test = np.isin(groups, held)
        return np.flatnonzero(~test), np.flatnonzero(test), f"{len(held)} of {len(structures)} structures held out"
    order = rng.permutation(len(labels))
    n_test = max(1, round(0.25 * len(labels)))
    return np.sort(order[n_test:]), np.sort(order[:n_test]), f"{n_test} of {len(labels)} atoms held out"


def evaluate(atoms: LabelledAtoms, k: int, seed: int, ks: Sequence[int] = K_SWEEP,
             on_model: Optional[Callable[[int, int], None]] = None) -> dict:
    """Held-out accuracy and the per-element confusion matrix at ``k``, and accuracy for each k in ``ks``.

    ``atoms.distances`` must have at least max(k, *ks) columns. Confusion rows are
    labelled elements, columns predicted elements. ``on_model(done, total)`` follows the models trained.
    """
    train, test, held_out = held_out_split(atoms.groups, atoms.elements, seed)
    total = 1 + sum(kk != k for kk in ks)
    trained = []

    def accuracy_at(kk: int):
        model, classes = fit_classifier(atoms.distances[train, :kk], atoms.elements[train], seed)
        predicted = class_probabilities(model, classes, atoms.distances[test, :kk], atoms.elements[test])[0]
        trained.append(kk)
        if on_model:
            on_model(len(trained), total)
        return float(np.mean(predicted == atoms.elements[test])), predicted

    accuracy, predicted = accuracy_at(k)
    elements = sorted(set(atoms.elements.tolist()))
    index = {e: i for i, e in enumerate(elements)}
    confusion = np.zeros((len(elements), len(elements)), dtype=int)
    for labelled, guess in zip(atoms.elements[test], predicted):
        confusion[index[labelled], index[guess]] += 1
    return {
        "k": k, "accuracy": accuracy, "held_out": held_out, "n_train": int(train.size), "n_test": int(test.size),
        "elements": elements, "confusion": confusion.tolist(),
        "accuracy_by_k": {str(kk): (accuracy if kk == k else accuracy_at(kk)[0]) for kk in ks},
    }


def out_of_fold(
    training: LabelledAtoms, checked_distances: np.ndarray, checked_elements: np.ndarray, seed: int,
    on_fold: Optional[Callable[[int, int], None]] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions for the checked atoms, each from a model trained on the other structures and the other folds."""
    n = len(checked_elements)
    folds = np.random.default_rng(seed).permutation(n) % min(N_FOLDS, n)
    predicted = np.empty(n, dtype=object)
    probability = np.zeros(n)
    label_probability = np.zeros(n)
    for done, fold in enumerate(np.unique(folds), start=1):
        out = folds == fold
        X = np.concatenate([training.distances, checked_distances[~out]])
        labels = np.concatenate([training.elements, checked_elements[~out]])
        model, classes = fit_classifier(X, labels, seed)
        predicted[out], probability[out], label_probability[out] = class_probabilities(
            model, classes, checked_distances[out], checked_elements[out])
        if on_fold:
            on_fold(done, len(np.unique(folds)))
    return predicted.astype(str), probability, label_probability


def flagged_atoms(elements: Sequence[str], predicted: Sequence[str], label_probability: np.ndarray,
                  threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """0-based indices of atoms whose labelled element has probability below ``threshold`` and is not the prediction.

    An atom not judged (probability NaN) is never flagged.
    """
    elements, predicted = np.asarray(elements, dtype=str), np.asarray(predicted, dtype=str)
    return np.flatnonzero((np.asarray(label_probability) < threshold) & (predicted != elements))


# --------------------------------------------------------------------------
# Orchestration: training sources from the record, reuse, MLflow, the stored row.


@dataclass(frozen=True)
class CheckOutcome:
    """A stored check: the row id, whether it was computed now, its verdict and metrics."""

    check_id: int
    created: bool
    structure: str
    source: str
    elements: list
    predicted: list
    probability: np.ndarray
    label_probability: np.ndarray
    metrics: dict
    mlflow_run_id: Optional[str]
    seconds: float

    def flagged(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        return flagged_atoms(self.elements, self.predicted, self.label_probability, threshold)


def _library_sources(session, library_name: str, k: int) -> tuple[list, list, int]:
    """(structures, state for the hash, library id) from a library's ordered crystals.

    Each structure is (elements, k-NN distances of the unit cell's atoms with
    their periodic images, crystal number).
    """
    from sqlmodel import select

    from motex_db.library import crystal_from_record, get_library
    from motex_db.models import LibraryStructure

    library = get_library(session, library_name)
    rows = session.exec(
        select(LibraryStructure.id, LibraryStructure.content_hash, LibraryStructure.crystal)
        .where(LibraryStructure.library_id == library.id).order_by(LibraryStructure.id)
    ).all()
    structures, state = [], []
    for number, (structure_id, content_hash, record) in enumerate(rows):
        symbols, cell, frac, occupancies = crystal_from_record(record)
        if np.any(np.asarray(occupancies) < 1 - 1e-6):
            continue  # a partially occupied site has no single element to learn
        structures.append((list(symbols), periodic_knn_distances(cell, frac, k), number))
        state.append([structure_id, content_hash])
    if not structures:
        raise InputError(f"library '{library_name}' holds no ordered crystal to train the atom-type check on.")
    return structures, state, library.id


def _record_sources(session, checked_id: int, k: int, k_max: int) -> tuple[list, list]:
    """The record's other starting models of at least k+1 atoms as (elements, k-NN distances up to k_max), and their state."""
    from sqlmodel import select

    from motex_db.models import StartingModel

    structures, state = [], []
    for model in session.exec(select(StartingModel).order_by(StartingModel.id)).all():
        if model.id == checked_id or model.n_atoms < k + 1:
            continue
        structures.append((list(model.elements), knn_distances(model.positions, min(k_max, model.n_atoms - 1))[0], model.id))
        state.append([model.id, model.identity_hash])
    return structures, state


def check_structure(
    engine,
    name: str,
    library_name: Optional[str] = None,
    k: int = DEFAULT_K,
    seed: int = 0,
    mlflow_uri: Optional[str] = None,
    on_progress: Optional[Callable[[str, int, int], None]] = None,
) -> CheckOutcome:
    """Check every atom of the structure ``name``; trained on ``library_name``'s crystals, else the record's models.

    The same structure, sources, k and seed again reuse the stored
    ``atom_type_check`` row. Tracked in MLflow like every training.
    """
    from sqlalchemy.exc import IntegrityError
    from sqlmodel import Session, select

    from motex_db.db import transaction
    from motex_db.models import AtomTypeCheck
    from motex_db.structures import get_starting_model

    say = on_progress or (lambda stage, done, total: None)
    if int(seed) != seed or seed < 0:
        raise InputError(f"--seed must be a non-negative whole number, not {seed}.")
    with Session(engine) as session:
        model = get_starting_model(session, name)
        check_k(k, model.n_atoms, f"structure '{name}'")
        # vectors long enough for the k sweep, where a structure has that many atoms
        k_max = max(k, max(K_SWEEP))
        if library_name is not None:
            structures, state, library_id = _library_sources(session, library_name, k_max)
            source = "library"
        else:
            structures, state = _record_sources(session, model.id, k, k_max)
            library_id, source = None, "record"
        inputs = hashlib.sha256(json.dumps(
            [CHECK_VERSION, source, library_id, state, model.identity_hash, k, seed, HYPERPARAMETERS],
            sort_keys=True).encode()).hexdigest()
        existing = session.exec(select(AtomTypeCheck).where(AtomTypeCheck.inputs_hash == inputs)).first()
        elements, positions = list(model.elements), model.positions
    if existing is not None:
        return _outcome(existing, False, name, elements)
    structures = [entry for entry in structures if entry[1].shape[1] >= k]
    composition = sorted(set(elements))
    if len(composition) < 2:
        raise InputError(f"structure '{name}' holds only {composition[0]} atoms: there is no other element to tell them from.")
    if source == "library":
        learned = set(labelled_atoms(structures, 1, composition).elements.tolist())
        missing = [e for e in composition if e not in learned]
        if missing:
            raise InputError(
                f"library '{library_name}' holds no {', '.join(missing)} atoms in an ordered crystal, so the check "
                f"cannot learn what {'they look' if len(missing) > 1 else 'it looks'} like: add such crystals, or check "
                "against the record's starting models (leave out --library)."
            )
    started = time.perf_counter()
    checked = knn_distances(positions, min(k_max, len(elements) - 1))[0]
    # the held-out evaluation pools every training atom (and, with the record as source, the checked ones)
    pool = structures + ([(elements, checked, model.id)] if source == "record" else [])
    pool = [entry for entry in pool if entry[1].shape[1] >= k]
    longest = min(max(K_SWEEP), min(d.shape[1] for _, d, _ in pool))
    metrics = evaluate(labelled_atoms(pool, max(k, longest), composition), k, seed, tuple(range(1, longest + 1)),
                       on_model=lambda done, total: say("held-out evaluation", done, total))
    training = labelled_atoms(structures, k, composition)
    labels = np.asarray(elements, dtype=str)
    if source == "library":
        classifier, classes = fit_classifier(training.distances, training.elements, seed)
        predicted, probability, label_probability = class_probabilities(classifier, classes, checked[:, :k], labels)
        # bulk crystals say nothing about an outer atom, whose neighbours the model's edge cut away
        outer = ~inner_atoms(positions, checked[:, :k])
        predicted[outer], probability[outer], label_probability[outer] = "", np.nan, np.nan
    else:
        predicted, probability, label_probability = out_of_fold(
            training, checked[:, :k], labels, seed, on_fold=lambda done, total: say("checking atoms", done, total))
        classifier, classes = fit_classifier(
            np.concatenate([training.distances, checked[:, :k]]), np.concatenate([training.elements, labels]), seed)
    metrics.update({"n_structures": len(state) + (source == "record"), "n_training_atoms": int(len(training.elements)),
                    "n_judged": int(np.isfinite(label_probability).sum()),
                    "n_flagged": int(flagged_atoms(elements, predicted, label_probability).size)})
    seconds = time.perf_counter() - started
    metrics["seconds"] = seconds
    url = engine.url.render_as_string(hide_password=False)
    run_id = _log_check(url, mlflow_uri, classifier, name, source, library_name, k, seed, metrics)
    from motex_db.learning import model_to_json

    row = AtomTypeCheck(
        starting_model_id=model.id, library_id=library_id, source=source, k=k, seed=seed, inputs_hash=inputs,
        classes=[str(c) for c in classes], predicted=[str(p) for p in predicted], probability=probability,
        label_probability=label_probability, metrics=metrics, model=model_to_json(classifier),
        mlflow_run_id=run_id, seconds=seconds,
    )
    try:
        with transaction(engine) as session:
            session.add(row)
    except IntegrityError:
        # an identical check finished first: keep its row, ours adds nothing
        with Session(engine) as session:
            existing = session.exec(select(AtomTypeCheck).where(AtomTypeCheck.inputs_hash == inputs)).one()
            return _outcome(existing, False, name, elements)
    return _outcome(row, True, name, elements)


def _outcome(row, created: bool, name: str, elements: list) -> CheckOutcome:
    return CheckOutcome(
        check_id=row.id, created=created, structure=name, source=row.source, elements=elements,
        predicted=list(row.predicted), probability=np.asarray(row.probability),
        label_probability=np.asarray(row.label_probability), metrics=row.metrics,
        mlflow_run_id=row.mlflow_run_id, seconds=row.seconds,
    )


def _log_check(url, mlflow_uri, classifier, structure, source, library, k, seed, metrics) -> str:
    """One MLflow run for a check: parameters, held-out metrics, accuracy against k, the classifier."""
    import mlflow
    import mlflow.xgboost
    import xgboost
    from mlflow.entities import Metric, Param

    from motex_db import __version__
    from motex_db.tracking import open_tracker

    tracker = open_tracker(url, mlflow_uri)
    now = int(time.time() * 1000)
    values = [Metric("test_accuracy", metrics["accuracy"], now, 0)]
    values += [Metric("accuracy_by_k", acc, now, int(kk)) for kk, acc in metrics["accuracy_by_k"].items()]
    values += [Metric(key, float(metrics[key]), now, 0) for key in ("n_train", "n_test", "n_flagged", "seconds")
               if isinstance(metrics.get(key), (int, float)) and math.isfinite(metrics[key])]
    params = {**{f"xgb_{key}": value for key, value in HYPERPARAMETERS.items()}, "structure": structure,
              "source": source, "library": library or "", "k": k, "seed": seed, "held_out": metrics["held_out"]}
    tags = {"structure": structure, "motex_db.kind": "atom-type check", "motex_db.version": __version__}
    with tracker.logging():
        run_id = tracker.client.create_run(
            tracker.experiment_id, run_name=f"atom-type check {structure}", tags=tags).info.run_id
        tracker.client.log_batch(run_id, metrics=values, params=[Param(key, str(v)) for key, v in params.items()])
        tracker.client.log_dict(run_id, {"elements": metrics["elements"], "confusion": metrics["confusion"]},
                                "confusion.json")
        mlflow.set_tracking_uri(tracker.uri)
        with mlflow.start_run(run_id=run_id):
            mlflow.xgboost.log_model(classifier, name="model", pip_requirements=[f"xgboost=={xgboost.__version__}"])
        tracker.client.set_terminated(run_id)
    return run_id
