"""Step 4 of ML-MotEx: each permutable atom's contribution to the fit quality.

SHAP values of the surrogate (step 3) split its predicted Rwp of every motif
into one additive share per feature. For permutable atom a, comparing its
share over the motifs that keep it with its share over the motifs that remove
it says whether keeping it lowers Rwp (a negative contribution: the atom
belongs to the motif) or raises it (science.md section 5).

The numerics are pure functions on arrays; :func:`explain_model` at the end
runs step 4 on a trained model of the record and stores the contributions.

References: Anker et al., npj Comput. Mater. 8, 213 (2022) (ML-MotEx);
Lundberg et al., Nat. Mach. Intell. 2, 56 (2020) (TreeSHAP).
"""

from __future__ import annotations

import copy
import os
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
    # shap hands XGBoost models to XGBoost's own TreeSHAP (predict with pred_contribs), which
    # runs on the booster's thread count: the stored models say 1 (training is deterministic
    # with any count), so give the explanation every core, on a copy.
    model = copy.deepcopy(model)
    model.get_booster().set_param({"nthread": os.cpu_count() or 1})
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


CONVERGENCE_FRACTIONS = {"half": 0.5, "three_quarters": 0.75}


def contribution_convergence(
    masks: np.ndarray, rwp: np.ndarray, hyperparameters: dict, seed: int, contribution: np.ndarray
) -> dict[str, dict]:
    """Contributions from surrogates trained on the first half and three quarters of the fits.

    ``masks``/``rwp`` are the trained model's fits in motif order (the order
    they were sampled), ``hyperparameters`` its XGBoost parameters (no new
    search: the question is whether more data move the answer) and
    ``contribution`` its own contributions. For each fraction returns the
    number of motifs, the contributions and how many atoms changed sign: when
    signs still change, sampling more motifs will sharpen the answer.
    """
    from motex_db.learning import SearchSpace, features, split, train_final

    searched = {d.name for d in SearchSpace().dimensions()} - {"n_estimators"}
    params = {k: v for k, v in hyperparameters.items() if k in searched}
    found = {}
    for name, fraction in CONVERGENCE_FRACTIONS.items():
        n = int(len(rwp) * fraction)
        train_idx, _ = split(n, seed)
        X = features(masks[:n])[train_idx]
        model = train_final(X, rwp[:n][train_idx], params, seed).model
        part = atom_contributions(shap_values(model, X), X).contribution
        found[name] = {
            "n_motifs": n,
            "contribution": part,
            "sign_changes": int(np.sum(np.sign(part) != np.sign(contribution))),
        }
    return found


# --------------------------------------------------------------------------
# Step 4 in the record: `motex-db explain`


@dataclass
class ExplainOutcome:
    """What ``explain`` did and found."""

    trained_model_id: int
    created: bool  # False: the contributions were already stored
    structure: str
    dataset: str
    fit_config_id: int
    elements: list  # of the permutable atoms, 1..N
    contributions: "pd.DataFrame"  # atom_index, element, contribution, uncertainty, confidence, contribution_half, contribution_three_quarters
    overall_confidence: float
    convergence: dict  # {"half"|"three_quarters": {"n_motifs", "sign_changes"}}
    extracted_mask: str
    extracted_motif_id: Optional[int]
    extracted_rwp: Optional[float]
    extracted_status: Optional[str]
    best_motif_id: Optional[int]
    best_rwp: Optional[float]
    mlflow_run_id: Optional[str]
    shap: Optional[np.ndarray] = None  # (n_train, N+1): SHAP values of the training motifs
    features: Optional[np.ndarray] = None  # their features (n_kept, then one 0/1 per atom)
    extracted_elements: Optional[list] = None
    extracted_positions: Optional[np.ndarray] = None
    starting_elements: Optional[list] = None  # every atom of the starting model
    starting_positions: Optional[np.ndarray] = None
    permutable: Optional[np.ndarray] = None  # (n_atoms,) bool
    bond_cutoff: Optional[float] = None  # Å


def _latest_model(session, model_id: int, dataset_id: int, trained_model_id: Optional[int]):
    from sqlmodel import select

    from motex_db.models import TrainedModel

    if trained_model_id is not None:
        row = session.get(TrainedModel, trained_model_id)
        if row is None or row.starting_model_id != model_id or row.dataset_id != dataset_id:
            raise InputError(f"there is no trained model {trained_model_id} for this structure and dataset.")
        return row
    row = session.exec(
        select(TrainedModel)
        .where(TrainedModel.starting_model_id == model_id)
        .where(TrainedModel.dataset_id == dataset_id)
        .order_by(TrainedModel.id.desc())
    ).first()
    if row is None:
        raise InputError("no trained model for this structure and dataset yet: run motex-db train first.")
    return row


def _training_set(session, trained, n_permutable: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masks, Rwp) of a trained model's motifs in its order, and the features of its training motifs."""
    from sqlmodel import select

    from motex_db.catalogue import masks_from_text
    from motex_db.learning import features, split
    from motex_db.models import FitResult, Motif

    fitted = {
        motif_id: (mask, rwp)
        for motif_id, mask, rwp in session.exec(
            select(Motif.id, Motif.mask, FitResult.rwp)
            .join(FitResult, FitResult.motif_id == Motif.id)
            .where(FitResult.dataset_id == trained.dataset_id)
            .where(FitResult.fit_config_id == trained.fit_config_id)
            .where(Motif.id.in_(trained.motif_ids.tolist()))
        ).all()
    }
    masks = masks_from_text([fitted[int(m)][0] for m in trained.motif_ids], n_permutable)
    rwp = np.array([fitted[int(m)][1] for m in trained.motif_ids], dtype=float)
    train_idx, _ = split(len(masks), trained.seed)
    return masks, rwp, features(masks)[train_idx]


def explain_model(
    engine,
    structure: str,
    dataset: str,
    trained_model_id: Optional[int] = None,
    min_confidence: Optional[float] = None,
) -> ExplainOutcome:
    """SHAP contributions of a trained model's training motifs, stored as ``atom_contribution`` rows.

    The extracted motif (atoms with negative contribution, and confidence at
    least ``min_confidence`` when given, plus their bonded atoms) is added to
    the catalogue and fitted with the model's fit configuration.
    """
    import pandas as pd
    from sqlmodel import Session, select

    from motex_db.catalogue import _insert_motifs, mask_to_text
    from motex_db.datasets import get_dataset
    from motex_db.db import transaction
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.refine import motif_atoms
    from motex_db.fitting.imported import IMPORT_RECIPE
    from motex_db.fitting.work import FitJob, best_fit, fit_motifs_now, prepare_fit
    from motex_db.learning import EXTRACTED_SAMPLER_PREFIX, model_from_json
    from motex_db.models import AtomContribution, FitConfig, FitResult, Motif, TrainedModel
    from motex_db.structures import get_starting_model, permutable_flags

    with Session(engine) as session:
        model = get_starting_model(session, structure)
        data = get_dataset(session, dataset)
        trained = _latest_model(session, model.id, data.id, trained_model_id)
        stored = session.exec(
            select(AtomContribution).where(AtomContribution.trained_model_id == trained.id).order_by(AtomContribution.atom_index)
        ).all()
        config = session.get(FitConfig, trained.fit_config_id)
        masks, rwp, X_train = _training_set(session, trained, model.n_permutable)
    flags = permutable_flags(model.elements, model.permutable_elements)
    perm_elements = [e for e, f in zip(model.elements, flags) if f]
    shap_matrix = shap_values(model_from_json(trained.model), X_train)
    found = atom_contributions(shap_matrix, X_train)
    frame = pd.DataFrame({
        "atom_index": found.atom_index, "element": perm_elements, "contribution": found.contribution,
        "uncertainty": found.uncertainty, "confidence": found.confidence,
    })
    overall = float(found.overall_confidence)
    if stored:
        frame["contribution_half"] = [c.contribution_half for c in stored]
        frame["contribution_three_quarters"] = [c.contribution_three_quarters for c in stored]
        convergence = trained.convergence or {}
    else:
        parts = contribution_convergence(masks, rwp, trained.hyperparameters, trained.seed, found.contribution)
        frame["contribution_half"] = parts["half"]["contribution"]
        frame["contribution_three_quarters"] = parts["three_quarters"]["contribution"]
        convergence = {name: {k: v for k, v in part.items() if k != "contribution"} for name, part in parts.items()}
        with transaction(engine) as session:
            session.add_all([
                AtomContribution(trained_model_id=trained.id, atom_index=int(r.atom_index), element=r.element,
                                 contribution=float(r.contribution), uncertainty=float(r.uncertainty),
                                 confidence=float(r.confidence), contribution_half=float(r.contribution_half),
                                 contribution_three_quarters=float(r.contribution_three_quarters))
                for r in frame.itertuples()
            ])
            row = session.get(TrainedModel, trained.id)
            row.overall_confidence = overall
            row.convergence = convergence
            session.add(row)

    keep = extracted_motif_mask(found, min_confidence)
    extracted = mask_to_text(keep)
    extracted_elements, extracted_positions = motif_atoms(model, extracted)
    extracted_id = extracted_rwp = extracted_status = None
    # scores imported from elsewhere cannot be computed here: the extracted motif is stored, not fitted
    computable = config.recipe != IMPORT_RECIPE
    prepared = prepare_fit(engine, structure, dataset, FitSettings.from_dict(config.settings)) if computable else None
    if keep.any():
        with transaction(engine) as session:
            row = session.get(type(model), model.id)
            _insert_motifs(session, row, [extracted], f"{EXTRACTED_SAMPLER_PREFIX} from trained model {trained.id}")
            extracted_id = session.exec(
                select(Motif.id).where(Motif.starting_model_id == model.id).where(Motif.mask == extracted)
            ).one()

        def stored_fit():
            with Session(engine) as session:
                return session.exec(
                    select(FitResult).where(FitResult.motif_id == extracted_id)
                    .where(FitResult.dataset_id == data.id).where(FitResult.fit_config_id == config.id)
                ).first()

        result = stored_fit()
        if result is None and computable:
            fit_motifs_now(engine, prepared, [extracted_id])
            result = stored_fit()
        if result is not None:
            extracted_rwp, extracted_status = result.rwp, result.status
    best_rwp, best_id, _, _ = best_fit(engine, FitJob(model.id, (data.id,), config.id))
    return ExplainOutcome(
        trained_model_id=trained.id, created=not stored, structure=structure, dataset=dataset,
        fit_config_id=config.id, elements=perm_elements, contributions=frame, overall_confidence=overall,
        convergence=convergence,
        extracted_mask=extracted, extracted_motif_id=extracted_id, extracted_rwp=extracted_rwp,
        extracted_status=extracted_status, best_motif_id=best_id, best_rwp=best_rwp,
        mlflow_run_id=trained.mlflow_run_id, shap=shap_matrix, features=X_train,
        starting_elements=list(model.elements), starting_positions=model.positions, permutable=flags,
        bond_cutoff=model.bond_cutoff,
        extracted_elements=extracted_elements, extracted_positions=extracted_positions,
    )


def log_explanation(record_url: str, outcome: ExplainOutcome, files: dict, mlflow_uri: Optional[str] = None) -> None:
    """Attach the explanation's files and overall confidence to the trained model's MLflow run."""
    import time

    from mlflow.entities import Metric

    from motex_db.tracking import open_tracker

    if not outcome.mlflow_run_id:
        return
    tracker = open_tracker(record_url, mlflow_uri)
    with tracker.logging():
        tracker.client.log_batch(
            outcome.mlflow_run_id, metrics=[Metric("overall_confidence", outcome.overall_confidence, int(time.time() * 1000), 0)]
        )
        for path in files.values():
            tracker.client.log_artifact(outcome.mlflow_run_id, str(path), artifact_path="explain")


# --------------------------------------------------------------------------
# Step 4 for a time-resolved series: `motex-db explain --series`


@dataclass(frozen=True)
class _StoredContributions:
    """A frame's contributions read back from its ``atom_contribution`` rows."""

    atom_index: np.ndarray
    contribution: np.ndarray
    uncertainty: np.ndarray
    confidence: np.ndarray
    overall_confidence: float


@dataclass
class SeriesExplainOutcome:
    """Contributions of every frame's model of a series, and each frame's extracted motif."""

    structure: str
    series: str
    fit_config_id: int
    elements: list  # of the permutable atoms, 1..N
    # frame, dataset_id, time, trained_model_id, created, overall_confidence, extracted_mask,
    # extracted_motif_id, extracted_rwp, best_rwp
    frames: "pd.DataFrame"
    # one row per frame and atom: frame, time, atom_index, element, contribution, uncertainty, confidence
    contributions: "pd.DataFrame"
    parent_run_id: Optional[str]

    @property
    def n_created(self) -> int:
        return int(self.frames["created"].sum())


SERIES_SHAP_MOTIFS = 500


def explain_series(
    engine,
    structure: str,
    series: str,
    min_confidence: Optional[float] = None,
    on_frame=lambda done, total: None,
    shap_motifs: Optional[int] = SERIES_SHAP_MOTIFS,
) -> SeriesExplainOutcome:
    """SHAP contributions for the latest model of every frame of a series (from ``train --series``).

    Per frame as :func:`explain_model`, without the convergence models (run
    ``explain --data FRAME`` for one frame's convergence): contributions,
    uncertainty and confidence rows, and the extracted motif. The extracted
    motifs of all frames are added to the catalogue and fitted to every frame
    at once (one series fit, the motifs' PDFs shared across frames).

    TreeSHAP costs trees x leaves x depth^2 per motif, and a frame's model
    often holds a thousand trees or more, so by default each frame is
    explained on a seeded random subset of ``shap_motifs`` of its training
    motifs (``None`` or 0: all of them). The frames of a series share their
    catalogue and split, so every frame is explained on the same motifs. The
    contribution is a difference of two means over about ``shap_motifs``/2
    motifs each; the subset moves it by about 2 x uncertainty / sqrt(shap_motifs)
    (9 % of the uncertainty for 500), and leaves the uncertainty (a standard
    deviation) unbiased. The number used is stored in the model's
    ``training_log`` as ``explained_motifs``.
    """
    import pandas as pd
    import sqlalchemy as sa
    from sqlmodel import Session, select

    from motex_db.catalogue import _insert_motifs, mask_to_text
    from motex_db.datasets import get_series_frames
    from motex_db.db import transaction
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import fit_motifs_now, prepare_series_fit
    from motex_db.learning import EXTRACTED_SAMPLER_PREFIX, model_from_json
    from motex_db.models import AtomContribution, FitConfig, FitResult, Motif, TrainedModel
    from motex_db.structures import get_starting_model, permutable_flags

    with Session(engine) as session:
        model = get_starting_model(session, structure)
        frames = get_series_frames(session, series)
        trained = {}
        for frame in frames:
            row = session.exec(
                select(TrainedModel)
                .where(TrainedModel.starting_model_id == model.id)
                .where(TrainedModel.dataset_id == frame.id)
                .where(TrainedModel.series == series)
                .order_by(TrainedModel.id.desc())
            ).first()
            if row is None:
                raise InputError(
                    f"frame '{frame.name}' has no model of series '{series}': "
                    f"run motex-db train --structure {structure} --series {series} first."
                )
            trained[frame.id] = row
        config_ids = {row.fit_config_id for row in trained.values()}
        if len(config_ids) > 1:
            raise InputError(
                f"the frames' latest models of series '{series}' come from different fit configs "
                f"({', '.join(map(str, sorted(config_ids)))}): run motex-db train --series {series} again."
            )
        config = session.get(FitConfig, config_ids.pop())
        stored: dict[int, list] = {}
        for row in session.exec(
            select(AtomContribution)
            .where(AtomContribution.trained_model_id.in_([t.id for t in trained.values()]))
            .order_by(AtomContribution.trained_model_id, AtomContribution.atom_index)
        ).all():
            stored.setdefault(row.trained_model_id, []).append(row)
    flags = permutable_flags(model.elements, model.permutable_elements)
    perm_elements = [e for e, f in zip(model.elements, flags) if f]
    found_by_frame, created = {}, set()
    for done, frame in enumerate(frames, start=1):
        row = trained[frame.id]
        if row.id in stored:
            # explained before: the stored rows are the answer (no SHAP again)
            rows = stored[row.id]
            found_by_frame[frame.id] = _StoredContributions(
                np.array([c.atom_index for c in rows]), np.array([c.contribution for c in rows]),
                np.array([c.uncertainty for c in rows]), np.array([c.confidence for c in rows]),
                float(row.overall_confidence),
            )
            on_frame(done, len(frames))
            continue
        with Session(engine) as session:
            _, _, X_train = _training_set(session, row, model.n_permutable)
        if shap_motifs and shap_motifs < len(X_train):
            rows = np.sort(np.random.default_rng([row.seed, 2]).choice(len(X_train), shap_motifs, replace=False))
            X_train = X_train[rows]
        found = atom_contributions(shap_values(model_from_json(row.model), X_train), X_train)
        with transaction(engine) as session:
            session.add_all([
                AtomContribution(trained_model_id=row.id, atom_index=int(i), element=e, contribution=float(c),
                                 uncertainty=float(u), confidence=float(k))
                for i, e, c, u, k in zip(found.atom_index, perm_elements, found.contribution,
                                         found.uncertainty, found.confidence)
            ])
            stored_row = session.get(TrainedModel, row.id)
            stored_row.overall_confidence = float(found.overall_confidence)
            stored_row.training_log = {**(stored_row.training_log or {}), "explained_motifs": len(X_train)}
            session.add(stored_row)
        created.add(frame.id)
        found_by_frame[frame.id] = found
        on_frame(done, len(frames))

    # the extracted motifs, fitted to every frame in one go
    extracted = {f.id: mask_to_text(extracted_motif_mask(found_by_frame[f.id], min_confidence)) for f in frames}
    wanted = sorted({m for m in extracted.values() if "1" in m})
    with transaction(engine) as session:
        row = session.get(type(model), model.id)
        for frame in frames:
            if "1" in extracted[frame.id]:
                _insert_motifs(session, row, [extracted[frame.id]],
                               f"{EXTRACTED_SAMPLER_PREFIX} from trained model {trained[frame.id].id}")
    with Session(engine) as session:
        ids = dict(session.exec(
            select(Motif.mask, Motif.id).where(Motif.starting_model_id == model.id).where(Motif.mask.in_(wanted))
        ).all()) if wanted else {}
    if ids:
        for prepared in prepare_series_fit(engine, structure, series, FitSettings.from_dict(config.settings)):
            fit_motifs_now(engine, prepared, sorted(ids.values()))
    frame_ids = [f.id for f in frames]
    with Session(engine) as session:
        rwp_of = {
            (m, d): (rwp, status)
            for m, d, rwp, status in session.exec(
                select(FitResult.motif_id, FitResult.dataset_id, FitResult.rwp, FitResult.status)
                .where(FitResult.motif_id.in_(list(ids.values())))
                .where(FitResult.dataset_id.in_(frame_ids))
                .where(FitResult.fit_config_id == config.id)
            ).all()
        } if ids else {}
        best = dict(session.exec(
            select(FitResult.dataset_id, sa.func.min(FitResult.rwp))
            .join(Motif, Motif.id == FitResult.motif_id)
            .where(Motif.starting_model_id == model.id)
            .where(FitResult.dataset_id.in_(frame_ids))
            .where(FitResult.fit_config_id == config.id)
            .where(FitResult.status == "ok")
            .group_by(FitResult.dataset_id)
        ).all())
    table, long = [], []
    for frame in frames:
        found = found_by_frame[frame.id]
        mask = extracted[frame.id]
        motif_id = ids.get(mask)
        rwp, _ = rwp_of.get((motif_id, frame.id), (None, None))
        table.append({
            "frame": frame.name, "dataset_id": frame.id, "time": frame.time,
            "trained_model_id": trained[frame.id].id, "created": frame.id in created,
            "overall_confidence": float(found.overall_confidence), "extracted_mask": mask,
            "extracted_motif_id": motif_id, "extracted_rwp": rwp, "best_rwp": best.get(frame.id),
        })
        long.append(pd.DataFrame({
            "frame": frame.name, "time": frame.time, "atom_index": found.atom_index, "element": perm_elements,
            "contribution": found.contribution, "uncertainty": found.uncertainty, "confidence": found.confidence,
        }))
    parent = (trained[frames[-1].id].training_log or {}).get("search", {}).get("parent_run_id")
    return SeriesExplainOutcome(
        structure, series, config.id, perm_elements, pd.DataFrame(table), pd.concat(long, ignore_index=True), parent,
    )


def log_series_explanation(record_url: str, outcome: SeriesExplainOutcome, files: dict, mlflow_uri: Optional[str] = None) -> None:
    """Attach the series' contribution tables to its parent MLflow run, and each frame's confidence to its child run."""
    import time

    from mlflow.entities import Metric
    from sqlmodel import Session

    from motex_db.db import open_engine
    from motex_db.models import TrainedModel
    from motex_db.tracking import open_tracker

    if not outcome.parent_run_id:
        return
    engine = open_engine(record_url)
    with Session(engine) as session:
        runs = {
            r.trained_model_id: session.get(TrainedModel, int(r.trained_model_id)).mlflow_run_id
            for r in outcome.frames.itertuples()
        }
    engine.dispose()
    tracker = open_tracker(record_url, mlflow_uri)
    now = int(time.time() * 1000)
    with tracker.logging():
        for r in outcome.frames.itertuples():
            if runs.get(r.trained_model_id):
                tracker.client.log_batch(runs[r.trained_model_id],
                                         metrics=[Metric("overall_confidence", float(r.overall_confidence), now, 0)])
        for path in files.values():
            tracker.client.log_artifact(outcome.parent_run_id, str(path), artifact_path="explain")
