"""What a report shows but the record does not store, recomputed from what it does.

- fitted curves of a motif: the engine (:func:`motex_db.pdf.cluster_pdf`) on
  the motif's atoms with the fit configuration's settings and the refined
  values stored with the fit (scale, zoom or zoomx/y/z, Biso, delta2);
- the surrogate's test-set predictions: the stored model, the stored motif
  ids and seed give back the exact split (:func:`motex_db.learning.split`);
- SHAP values of the training motifs (:func:`motex_db.explain.shap_values`);
- the convergence of the contributions (from the first half and three
  quarters of the fits), read from the record where ``explain`` stored it,
  recomputed for models explained before it did.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from motex_db.explain import shap_values
from motex_db.fitting.refine import motif_atoms
from motex_db.fitting.settings import FitSettings
from motex_db.learning import model_from_json
from motex_db.pdf import PDFParameters, cluster_pdf
from motex_db.pdf.parameters import bare_symbol

from motex_db.reports.data import MotifFit, Run, composition

__all__ = [
    "FitCurve", "fit_curve", "pdf_parameters", "Surrogate", "load_surrogate", "HoldoutPredictions", "holdout_predictions",
    "TrainingShap", "training_shap", "ConvergenceLine", "contribution_convergence", "SHAP_ROW_CAP",
]

# SHAP of a deep ensemble costs ~1 ms per motif; beyond this many training
# motifs the report explains a seeded random subset (the distributions and
# means it shows change by far less than their spread).
SHAP_ROW_CAP = 20000
# r values within this of rmin or rmax count as inside the fit range (Å), as in the fitter.
_RANGE_TOLERANCE = 1e-9


# ---------------------------------------------------------------- fitted curves


@dataclass(frozen=True)
class FitCurve:
    """A motif's fit over the fit range: r (Å), observed and calculated G (Å^-2), and Rwp."""

    motif: MotifFit
    composition: str  # the motif's atoms with their bonded atoms, e.g. "W12O40"
    r: np.ndarray
    g_obs: np.ndarray
    g_calc: np.ndarray
    rwp: float  # recomputed; equals the stored motif.rwp to the engine's precision

    @property
    def difference(self) -> np.ndarray:
        return self.g_obs - self.g_calc


def pdf_parameters(settings: FitSettings, values: dict, symbols: list[str]) -> PDFParameters:
    """The engine settings at a fit's refined ``values`` (scale excluded: it multiplies G afterwards).

    ``symbols`` are the motif's atom symbols, so that a refined ``biso_O``
    also reaches atoms written ``O2-``, as in the fitter.
    """
    base = settings.pdf_parameters()
    if all(name in values for name in ("zoomx", "zoomy", "zoomz")):
        zoom = (values["zoomx"], values["zoomy"], values["zoomz"])
    else:
        zoom = values.get("zoom", settings.zoom_start)
    biso = dict(base.biso)
    for name, value in values.items():
        if name.startswith("biso_"):
            element = name[5:]
            biso[element] = value
            biso.update({symbol: value for symbol in set(symbols) if bare_symbol(symbol) == element})
    return replace(base, zoom=zoom, biso=biso, delta2=values.get("delta2", settings.delta2))


def fit_curve(run: Run, fit: MotifFit) -> FitCurve:
    """The observed and calculated G(r) of one fitted motif of ``run``, on the data's points in the fit range."""
    settings = FitSettings.from_dict(run.fit_config.settings).resolved(run.dataset.meta or {})
    r, g = np.asarray(run.dataset.r, dtype=float), np.asarray(run.dataset.g, dtype=float)
    inside = (r >= settings.rmin - _RANGE_TOLERANCE) & (r <= settings.rmax + _RANGE_TOLERANCE)
    elements, positions = motif_atoms(run.structure, fit.mask)
    params = pdf_parameters(settings, fit.params, elements)
    scale = fit.params.get("scale", settings.scale_start)
    g_calc = scale * cluster_pdf(elements, positions, r[inside], params)
    g_obs = g[inside]
    rwp = float(np.sqrt(np.sum((g_obs - g_calc) ** 2) / np.sum(g_obs**2)))
    return FitCurve(fit, composition(elements), r[inside], g_obs, g_calc, rwp)


# ---------------------------------------------------------------- the surrogate


@dataclass
class Surrogate:
    """A stored surrogate with the data it was trained on, rebuilt from the record.

    Rows follow ``trained_model.motif_ids`` (motif-id order); ``y`` is each
    motif's Rwp under the run's fit configuration (NaN if that fit is gone).
    """

    motif_ids: np.ndarray
    X: np.ndarray  # (n, N + 1) features: n_kept, then one 0/1 per atom
    y: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray
    model: object  # xgboost.XGBRegressor
    hyperparameters: dict
    seed: int


def load_surrogate(engine, run: Run) -> Optional[Surrogate]:
    """The run's latest model with its features and split; None without a model or its motif list.

    The training set comes from :func:`motex_db.learning.load_training_set`,
    the one loader ``explain`` uses too.
    """
    from sqlmodel import Session

    from motex_db.learning import load_training_set

    trained = run.model
    if trained is None:
        return None
    with Session(engine) as session:
        found = load_training_set(session, trained, run.structure.n_permutable)
    if found is None:
        return None  # no motif list, or motifs removed since training: the split cannot be rebuilt
    return Surrogate(found.motif_ids, found.X, found.rwp, found.train_idx, found.test_idx,
                     model_from_json(trained.model), dict(trained.hyperparameters or {}), int(trained.seed))


@dataclass(frozen=True)
class HoldoutPredictions:
    """Rwp of the test motifs, fitted and as the surrogate predicts it."""

    motif_ids: np.ndarray
    n_kept: np.ndarray
    rwp: np.ndarray
    predicted: np.ndarray

    @property
    def mae(self) -> float:
        return float(np.mean(np.abs(self.predicted - self.rwp))) if len(self.rwp) else float("nan")


def holdout_predictions(surrogate: Surrogate) -> HoldoutPredictions:
    """Predictions on the test part of the split (motifs whose fit is gone left out)."""
    rows = surrogate.test_idx[np.isfinite(surrogate.y[surrogate.test_idx])]
    predicted = surrogate.model.predict(surrogate.X[rows]).astype(float)
    return HoldoutPredictions(surrogate.motif_ids[rows], surrogate.X[rows, 0].astype(int), surrogate.y[rows], predicted)


def _capped_rows(n: int, seed: int) -> np.ndarray:
    if n <= SHAP_ROW_CAP:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 2]).choice(n, SHAP_ROW_CAP, replace=False))


@dataclass(frozen=True)
class TrainingShap:
    """SHAP values (Rwp units) of (a capped subset of) the training motifs, with their features."""

    values: np.ndarray  # (m, N + 1)
    X: np.ndarray  # (m, N + 1)
    n_training: int  # training motifs in all (m < n_training when capped)


def training_shap(surrogate: Surrogate) -> TrainingShap:
    """TreeSHAP of the training motifs, as ``explain`` computes them (at most :data:`SHAP_ROW_CAP`)."""
    X_train = surrogate.X[surrogate.train_idx]
    rows = _capped_rows(len(X_train), surrogate.seed)
    return TrainingShap(shap_values(surrogate.model, X_train[rows]), X_train[rows], len(X_train))


@dataclass(frozen=True)
class ConvergenceLine:
    """Contributions (Rwp units, atoms 1..N) learnt from the first ``n_motifs`` fits, in motif-id order."""

    label: str
    fraction: float
    n_motifs: int
    contribution: np.ndarray
    sign_changes: int  # atoms whose contribution has another sign than with all the fits
    correlation: float  # Pearson r with the contributions from all the fits


# explain's names for the parts (motex_db.explain.contribution_convergence), with their fractions
_PARTS = (("half", 0.5, "contribution_half"), ("three_quarters", 0.75, "contribution_three_quarters"))


def contribution_convergence(run: Run, surrogate: Optional[Surrogate]) -> Optional[list[ConvergenceLine]]:
    """Contributions from the first half and three quarters of the model's fits, and from all of them.

    ``explain`` stores them (``atom_contribution.contribution_half`` and
    ``contribution_three_quarters``, counts in ``trained_model.convergence``);
    for a model explained before it did, they are recomputed here with the
    same function (:func:`motex_db.explain.contribution_convergence`: the
    surrogate retrained with the model's hyper-parameters, no search, on the
    first fits in motif-id order). None when the run has no contributions,
    or nothing to recompute them from.
    """
    table = run.contributions
    if table is None:
        return None
    table = table.sort_values("atom_index")
    reference = table["contribution"].to_numpy(dtype=float)
    stored = run.model.convergence if run.model is not None else None
    parts = []
    if stored and all(column in table and table[column].notna().all() for _, _, column in _PARTS):
        for name, fraction, column in _PARTS:
            info = stored.get(name) or {}
            parts.append((name, fraction, int(info.get("n_motifs", round(fraction * run.model.n_motifs))),
                          table[column].to_numpy(dtype=float), info.get("sign_changes")))
    elif surrogate is not None:
        from motex_db.explain import contribution_convergence as explain_convergence

        known = np.isfinite(surrogate.y)
        found = explain_convergence(surrogate.X[known][:, 1:].astype(bool), surrogate.y[known],
                                    surrogate.hyperparameters, surrogate.seed, reference)
        for name, fraction, _ in _PARTS:
            part = found[name]
            parts.append((name, fraction, int(part["n_motifs"]), np.asarray(part["contribution"], dtype=float),
                          part["sign_changes"]))
    else:
        return None
    n_all = run.model.n_motifs if run.model is not None else len(run.fits)
    lines = [_line(f"first {fraction:.0%}", fraction, n, values, reference, changes) for _, fraction, n, values, changes in parts]
    lines.append(_line("all", 1.0, n_all, reference, reference, 0))
    return lines


def _line(label, fraction, n, contribution, reference, sign_changes) -> ConvergenceLine:
    if sign_changes is None:
        sign_changes = int(np.sum(np.sign(contribution) != np.sign(reference)))
    spread = np.std(contribution) * np.std(reference)
    correlation = float(np.corrcoef(contribution, reference)[0, 1]) if spread > 0 else float("nan")
    return ConvergenceLine(label, fraction, int(n), np.asarray(contribution, dtype=float), int(sign_changes), correlation)
