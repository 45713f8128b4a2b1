"""Structure mining: which crystal structures of a library explain a measured PDF (MLstructureMining).

Two ways to rank a library's classes for a dataset (Kjær et al., Digital
Discovery 3, 908 (2024)):

- ``pcc``: the Pearson correlation of the data with each structure's simulated
  PDF, maximised over an isotropic lattice stretch (default +-6 %, ``MAX_STRETCH``),
  over the r range both cover (from 1 Å); a class scores its best member. A
  measured nanoparticle seldom has its catalogue entry's lattice (composition,
  temperature, strain and size move it by a few percent), and at 30 Å a 4 %
  mismatch moves a peak by 1.2 Å, ten peak widths: compared at the catalogue's
  lattice, the right structure type can correlate worse than an unrelated one.
  The stretched PDF G(r / (1 + s)) is interpolated from the stored one (cubic
  convolution, one sparse matrix per stretch for the whole library), on a grid
  of stretches whose step moves a peak at the end of the compared range by half
  a library peak width, then the best members' stretches are refined (bounded
  scalar search). The stretch is stored with each candidate.
- ``classifier``: an XGBoost classifier of the classes, trained per library on
  ``n_per_class`` (100) PDFs per class simulated from its representative with
  the lattice axes scaled by up to +-6 % (equal axes tied, keeping the
  symmetry; the paper uses +-4 %) and Uiso 0.005-0.025 Å^2, drawn by Latin
  hypercube (``scipy.stats.qmc``); split 80/10/10 per class into training,
  early-stopping validation and test PDFs, as in the paper. Its class
  probabilities rank the classes. Training is tracked in MLflow and stored as
  a ``library_classifier`` row; a library with the same classes reuses it.

Either can be followed by a quick refinement (``refine``) of every plausible
class: the pcc and classifier top-k and every class whose lattice-aware
correlation is within ``PLAUSIBLE_MARGIN`` (0.1) of the best, at most
``MAX_REFINED`` (12); the refined Rwp orders them. Refined are
scale, isotropic lattice expansion, Uiso and a spherical particle diameter,
least squares (scipy) on the data's own grid from 1.5 Å to the end of the data
or the library's rmax, after a grid search over lattice expansion (with the
ranking's stretch) and diameter (the fit has many local minima in the
lattice); Rwp as everywhere in
motex-db, sqrt(sum (G_obs - G_calc)^2 / sum G_obs^2).

Out of the catalogue: the paper reads nearly flat probabilities as "this PDF
is probably from none of these structures" (its tungsten oxide: top three
1.2, 1.1 and 1.1 %; its in-catalogue examples 42 % and more for the first).
We flag a ranking when the three most probable classes together hold less
than ``FLAT_TOP3`` (25 %) of the probability, or, whatever the method, when
no structure's PDF correlates with the data at Pearson r >= ``PCC_OUTSIDE``
(0.6) at any stretch. The second test is needed because trees extrapolate confidently: on
the generated library an amorphous PDF gets 97 % for one class, while its
best correlation is 0.18 (3 nm particles of library structures: 0.81-0.85).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from motex_db.errors import InputError
from motex_db.library import LibrarySettings, crystal_from_record, get_library, pearson
from motex_db.models import (
    Dataset, Library, LibraryClass, LibraryClassifier, LibraryStructure, MiningCandidate, MiningResult,
)
from motex_db.pdf.crystal import MARGIN, crystal_pairs, crystal_pdf, tied_axes

__all__ = [
    "METHODS", "FLAT_TOP3", "PCC_OUTSIDE", "Refinement", "MiningOutcome", "ClassifierOutcome",
    "measured_on_grid", "features", "rank_by_pcc", "refine_candidate", "training_set", "train_classifier",
    "flatness", "mine", "q_settings", "MAX_STRETCH", "stretch_grid", "stretch_matrix", "stretched_correlations",
    "plausible_classes",
]

METHODS = ("pcc", "classifier")
#: Probability of the three most probable classes below which the probabilities count as flat.
FLAT_TOP3 = 0.25
#: Best Pearson r below which a PDF is reported as outside the catalogue (pcc).
PCC_OUTSIDE = 0.6
#: Data below this r (Å) are not compared: below the shortest bonds a PDF holds only the baseline and noise.
MATCH_RMIN = 1.0
#: Default largest isotropic lattice stretch (relative) over which pcc maximises each structure's correlation.
MAX_STRETCH = 0.06
#: --refine refines every class whose lattice-aware correlation is within this of the best one ...
PLAUSIBLE_MARGIN = 0.1
#: ... besides the pcc (and classifier) top-k, at most this many classes in all.
MAX_REFINED = 12
#: The quick refinement fits from this r (Å).
REFINE_RMIN = 1.5
#: The training recipe: lattice axes +-6 % (the paper: +-4 %; here the range pcc's stretch scan covers,
#: since a sample 4-5 % off its catalogue entry is common), Uiso 0.005-0.025 Å^2, 100 PDFs per class.
LATTICE_RANGE = 0.06
UISO_RANGE = (0.005, 0.025)
N_PER_CLASS = 100
CLASSIFIER_VERSION = "motex-classifier 2"  # 2: lattice axes +-6 %
# Part of a ranking's identity: rankings made before the lattice-aware scan are not reused.
RANKING_VERSION = "lattice-aware pcc 1"
# Fixed, not searched (the paper tuned by Bayesian optimisation): on the generated 38-class library
# depth 3 with 32 histogram bins scores as well on the test PDFs as depth 6 with 256 (top-1 0.81,
# top-3 0.99) and trains nine times faster.
HYPERPARAMETERS = {
    "n_estimators": 400, "learning_rate": 0.3, "max_depth": 3, "subsample": 0.8, "colsample_bytree": 0.3,
    "max_bin": 32, "early_stopping_rounds": 20,
}


# ---------------------------------------------------------------- data on the library's grid


def measured_on_grid(r: np.ndarray, g: np.ndarray, settings: LibrarySettings) -> tuple[np.ndarray, np.ndarray]:
    """The data interpolated onto the library's r grid: (values, covered mask); uncovered points are 0."""
    grid = settings.r
    covered = (grid >= max(float(r[0]), MATCH_RMIN) - 1e-9) & (grid <= float(r[-1]) + 1e-9)
    values = np.where(covered, np.interp(grid, r, g), 0.0)
    return values, covered


def features(g: np.ndarray, settings: LibrarySettings) -> np.ndarray:
    """Classifier features of PDFs on the library's grid (n, n_r): G from 1 Å, divided by its largest |G|."""
    g = np.atleast_2d(np.asarray(g, dtype=float))
    part = g[:, settings.r >= MATCH_RMIN - 1e-9]
    peak = np.abs(part).max(axis=1, keepdims=True)
    return part / np.where(peak > 0, peak, 1.0)


# ---------------------------------------------------------------- ranking by correlation


def stretch_window(covered: np.ndarray, settings: LibrarySettings, max_stretch: float) -> np.ndarray:
    """The library-grid points compared at every stretch: covered by the data, from 1 Å, and short enough
    that r / (1 - max_stretch) stays inside the stored PDFs (with the two points cubic interpolation needs)."""
    grid = settings.r
    end = (grid.size - 3) * settings.rstep * (1.0 - max_stretch)
    return covered & (grid <= end + 1e-9)


def stretch_grid(settings: LibrarySettings, max_stretch: float) -> np.ndarray:
    """Lattice stretches from -max to +max (relative): a step moves a peak at the library's rmax (30 Å) by half
    the width sqrt(2 Uiso) of the library's peaks (0.07 Å), so the correlation's maximum falls between two steps."""
    if max_stretch <= 0:
        return np.zeros(1)
    step = math.sqrt(2 * settings.uiso) / 2 / float(settings.r[-1])
    return np.linspace(-max_stretch, max_stretch, int(math.ceil(2 * max_stretch / step)) + 1)


def stretch_matrix(points: np.ndarray, settings: LibrarySettings, stretch: float):
    """Sparse (n_points, n_grid) matrix M with M @ g = g(r / (1 + stretch)) for g on the library grid.

    A crystal whose lattice is stretched by 1 + s has every pair distance
    stretched by it, so its G(r) is G(r / (1 + s)) / (1 + s)^2 (peak widths
    and termination ripples stretch too: a few 0.01 of correlation at most,
    measured against the crystal engine in ``tests/test_mining.py``); the
    factor does not change a correlation. Cubic convolution interpolation
    (Keys, IEEE Trans. ASSP 29, 1153 (1981), a = -0.5) on the stored 0.1 Å grid.
    """
    import scipy.sparse

    x = points / ((1.0 + stretch) * settings.rstep)
    base = np.floor(x).astype(np.int64)
    t = (x - base)[:, None] + np.array([1.0, 0.0, -1.0, -2.0])[None, :]  # distances to the 4 neighbours
    d = np.abs(t)
    a = -0.5
    weights = np.where(d <= 1, (a + 2) * d**3 - (a + 3) * d**2 + 1,
                       np.where(d < 2, a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a, 0.0))
    columns = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, settings.r.size - 1)
    rows = np.repeat(np.arange(points.size), 4)
    return scipy.sparse.csr_matrix((weights.ravel(), (rows, columns.ravel())), shape=(points.size, settings.r.size))


def stretched_correlations(
    g_library: np.ndarray, measured: np.ndarray, window: np.ndarray, settings: LibrarySettings, stretches: np.ndarray
) -> np.ndarray:
    """Pearson r (n_structures, n_stretches) of each library PDF, stretched, with the data on ``window``.

    Without forming the stretched PDFs y = M g: with the data centred (m),
    sum y m = g . (M^T m), sum y = g . (M^T 1) and sum y^2 = g^T (M^T M) g,
    where M^T M has 7 diagonals (4-point interpolation): three matrix
    products for the whole library and every stretch.
    """
    points, target = settings.r[window], measured[window]
    centred = target - target.mean()
    n, n_grid = points.size, settings.r.size
    lags = range(4)
    cross = np.empty((n_grid, len(stretches)))
    total = np.empty((n_grid, len(stretches)))
    diagonals = np.empty((sum(n_grid - d for d in lags), len(stretches)))
    for k, stretch in enumerate(stretches):
        m = stretch_matrix(points, settings, float(stretch))
        cross[:, k] = m.T @ centred
        total[:, k] = m.T @ np.ones(n)
        square = (m.T @ m).tocsr()
        diagonals[:, k] = np.concatenate([square.diagonal(d) * (1 if d == 0 else 2) for d in lags])
    g = np.asarray(g_library, dtype=float)
    lagged = np.concatenate([g[:, : n_grid - d] * g[:, d:] for d in lags], axis=1)
    sum_y = g @ total
    variance = lagged @ diagonals - sum_y**2 / n
    covariance = g @ cross
    denominator = np.sqrt(np.maximum(variance, 0.0) * float(centred @ centred))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = covariance / denominator
    return np.where(denominator > 0, r, 0.0)


def best_stretch(
    g: np.ndarray, measured: np.ndarray, window: np.ndarray, settings: LibrarySettings, around: float, step: float,
    max_stretch: float,
) -> tuple[float, float]:
    """The stretch maximising one PDF's correlation within a grid step of ``around``: (stretch, Pearson r)."""
    from scipy.optimize import minimize_scalar

    points, target = settings.r[window], measured[window]

    def negative(stretch: float) -> float:
        return -float(pearson(stretch_matrix(points, settings, stretch) @ g, target)[0])

    lower, upper = max(-max_stretch, around - step), min(max_stretch, around + step)
    start = negative(around)
    if upper - lower < 1e-9:
        return around, -start
    found = minimize_scalar(negative, bounds=(lower, upper), method="bounded", options={"xatol": 1e-5})
    return (float(found.x), -float(found.fun)) if found.fun < start else (around, -start)


def rank_by_pcc(
    g_library: np.ndarray, class_ids: np.ndarray, measured: np.ndarray, covered: np.ndarray,
    settings: LibrarySettings, max_stretch: float = MAX_STRETCH, n_refined: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classes ranked by their best member's Pearson r with the data, maximised over an isotropic lattice stretch.

    ``g_library`` (n_structures, n_r) on the library grid, ``class_ids``
    (n_structures,). Every structure is compared at every stretch of
    :func:`stretch_grid`; the best member of the first ``n_refined`` classes
    then gets its stretch refined (bounded scalar search within one step).
    Returns (class ids best first, their r, the row index of each class's best
    member, its stretch).
    """
    window = stretch_window(covered, settings, max_stretch)
    stretches = stretch_grid(settings, max_stretch)
    table = stretched_correlations(g_library, measured, window, settings, stretches)
    best_column = np.argmax(table, axis=1)
    r = table[np.arange(table.shape[0]), best_column]
    stretch = stretches[best_column]

    def classes_by_best(r: np.ndarray):
        order = np.argsort(-r, kind="stable")
        classes, first = np.unique(class_ids[order], return_index=True)
        best_rows = order[first]
        ranking = np.argsort(-r[best_rows], kind="stable")
        return classes[ranking], best_rows[ranking]

    classes, best_rows = classes_by_best(r)
    if stretches.size > 1:
        step = float(stretches[1] - stretches[0])
        for row in best_rows[:n_refined]:
            stretch[row], r[row] = best_stretch(g_library[row], measured, window, settings, float(stretch[row]), step,
                                                max_stretch)
        classes, best_rows = classes_by_best(r)
    return classes, r[best_rows], best_rows, stretch[best_rows]


# ---------------------------------------------------------------- quick refinement


@dataclass
class Refinement:
    """A quick refinement of one crystal against data: parameters, Rwp and the curves."""

    scale: float
    lattice: float  # isotropic expansion factor of the cell
    uiso: float  # Å^2
    diameter: Optional[float]  # Å; None for the bulk crystal
    rwp: float
    r: np.ndarray
    g_obs: np.ndarray
    g_calc: np.ndarray

    def params(self) -> dict:
        return {"scale": self.scale, "lattice": self.lattice, "uiso": self.uiso, "diameter": self.diameter}


def refine_window(r: np.ndarray, settings: LibrarySettings) -> np.ndarray:
    """The data points the quick refinement fits: from 1.5 Å to the library's rmax."""
    return (r >= REFINE_RMIN) & (r <= settings.rmax + 1e-9)


def refine_candidate(
    crystal: dict,
    settings: LibrarySettings,
    r: np.ndarray,
    g: np.ndarray,
    qmin: Optional[float] = None,
    qmax: Optional[float] = None,
    qdamp: Optional[float] = None,
    start: Optional[dict] = None,
    stretch: Optional[float] = None,
) -> Refinement:
    """Refine scale, lattice expansion (0.9-1.1), Uiso (0.001-0.05 Å^2) and particle diameter (>= 10 Å).

    ``qmin``, ``qmax``, ``qdamp`` default to the library's (the data header's
    values are better: :func:`mine` passes them). With ``start`` (a previous
    result's parameters) the curve is only recomputed, not refitted.
    ``stretch`` (relative, from the lattice-aware ranking) joins the grid
    search's lattice expansions.
    """
    from scipy.optimize import least_squares

    window = refine_window(r, settings)
    if window.sum() < 10:
        raise InputError(f"the data have fewer than 10 points between {REFINE_RMIN} and {settings.rmax:g} Å to refine against.")
    r_all, g_all = r[window], g[window]
    # fit on points at least 0.02 Å apart (finer data repeat themselves at this resolution);
    # Rwp is reported on every point of the window
    every = max(1, int(0.02 / max(float(np.median(np.diff(r_all))), 1e-6)))
    rf, gf = r_all[::every], g_all[::every]
    qmin = settings.qmin if qmin is None else qmin
    qmax = settings.qmax if qmax is None else qmax
    qdamp = settings.qdamp if qdamp is None else qdamp
    symbols, cell, frac, occupancies = crystal_from_record(crystal)
    # gathered for the whole window: the fit uses every few points, the final curve all of them
    pairs = crystal_pairs(symbols, cell, frac, occupancies, reach=float(r_all.max()) + MARGIN, min_scale=0.9,
                          radiation=settings.radiation, group="distance").binned(0.002)

    def curves(lattice, uiso, inv_diameter) -> np.ndarray:
        diameter = np.where(np.asarray(inv_diameter) > 1e-9, 1.0 / np.maximum(inv_diameter, 1e-9), np.inf)
        return crystal_pdf(pairs, rf, qmin=qmin, qmax=qmax, qdamp=qdamp, uiso=uiso, scales=lattice, diameter=diameter)

    def best_scale(calc: np.ndarray) -> np.ndarray:
        denominator = np.einsum("ij,ij->i", calc, calc)
        return np.maximum(calc @ gf / np.where(denominator > 0, denominator, 1.0), 0.0)

    def final(scale, lattice, uiso, inv_diameter) -> Refinement:
        diameter = np.inf if inv_diameter <= 1e-9 else 1.0 / inv_diameter
        calc = crystal_pdf(pairs, r_all, qmin=qmin, qmax=qmax, qdamp=qdamp, uiso=uiso, scales=lattice,
                           diameter=diameter)[0]
        return _refinement(scale, lattice, uiso, inv_diameter, r_all, g_all, scale * calc)

    if start is not None:
        inv = 0.0 if not start.get("diameter") else 1.0 / start["diameter"]
        return final(start["scale"], start["lattice"], start["uiso"], inv)

    # grid search: lattice 0.94-1.06 by 0.4 % and the ranking's stretch, diameter bulk / 60 / 30 / 15 Å,
    # Uiso the library's
    lattices = np.arange(0.94, 1.06 + 1e-9, 0.004)
    if stretch is not None and 0.9 <= 1.0 + stretch <= 1.1:
        lattices = np.append(lattices, 1.0 + stretch)
    inverse = np.array([0.0, 1 / 60, 1 / 30, 1 / 15])
    L, D = np.meshgrid(lattices, inverse, indexing="ij")
    calc = curves(L.ravel(), np.full(L.size, settings.uiso), D.ravel())
    scale = best_scale(calc)
    cost = ((gf[None, :] - scale[:, None] * calc) ** 2).sum(axis=1)
    k = int(np.argmin(cost))
    x0 = np.array([L.ravel()[k], settings.uiso, D.ravel()[k]])
    lower, upper = np.array([0.9, 0.001, 0.0]), np.array([1.1, 0.05, 0.1])

    def residual(x: np.ndarray) -> np.ndarray:
        c = curves(np.array([x[0]]), np.array([x[1]]), np.array([x[2]]))
        return gf - best_scale(c)[0] * c[0]

    fit = least_squares(residual, np.clip(x0, lower, upper), bounds=(lower, upper),
                        x_scale=np.array([0.01, 0.005, 0.01]), diff_step=1e-4, max_nfev=200)
    c = curves(np.array([fit.x[0]]), np.array([fit.x[1]]), np.array([fit.x[2]]))
    return final(float(best_scale(c)[0]), float(fit.x[0]), float(fit.x[1]), float(fit.x[2]))


def _refinement(scale, lattice, uiso, inv_diameter, r, g_obs, g_calc) -> Refinement:
    denominator = float((g_obs**2).sum())
    rwp = math.sqrt(float(((g_obs - g_calc) ** 2).sum()) / denominator) if denominator > 0 else float("nan")
    diameter = None if inv_diameter <= 1e-9 else round(1.0 / inv_diameter, 6)
    return Refinement(float(scale), float(lattice), float(uiso), diameter, rwp, r, g_obs, g_calc)


# ---------------------------------------------------------------- the classifier


def lattice_and_uiso_samples(cell: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Latin hypercube over the free lattice axes (+-``LATTICE_RANGE``) and Uiso: (scales (n, 3), uiso (n,))."""
    from scipy.stats import qmc

    tie = tied_axes(np.linalg.norm(cell, axis=1))
    n_free = int(tie.max()) + 1
    unit = qmc.LatinHypercube(d=n_free + 1, seed=seed).random(n)
    free = 1.0 - LATTICE_RANGE + 2 * LATTICE_RANGE * unit[:, :n_free]
    uiso = UISO_RANGE[0] + (UISO_RANGE[1] - UISO_RANGE[0]) * unit[:, n_free]
    return free[:, tie], uiso


def training_set(
    crystals: list[dict], settings: LibrarySettings, n_per_class: int, seed: int,
    on_progress: Optional[Callable[[int, int], None]] = None,
) -> np.ndarray:
    """Simulated PDFs (n_classes * n_per_class, n_r) on the library grid: class k's rows are k*n .. (k+1)*n - 1."""
    out = np.empty((len(crystals) * n_per_class, settings.r.size))
    for k, crystal in enumerate(crystals):
        symbols, cell, frac, occupancies = crystal_from_record(crystal)
        pairs = crystal_pairs(symbols, cell, frac, occupancies, reach=settings.reach,
                              min_scale=1.0 - LATTICE_RANGE - 1e-6, radiation=settings.radiation, group="axes")
        scales, uiso = lattice_and_uiso_samples(cell, n_per_class, seed + k)
        out[k * n_per_class : (k + 1) * n_per_class] = crystal_pdf(
            pairs, settings.r, qmin=settings.qmin, qmax=settings.qmax, qdamp=settings.qdamp, uiso=uiso, scales=scales
        )
        if on_progress:
            on_progress(k + 1, len(crystals))
    return out


def _split(n_classes: int, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class 80 % training, 10 % validation, 10 % test rows (the paper's split)."""
    rng = np.random.default_rng(seed)
    n_val = max(1, round(0.1 * n_per_class))
    n_test = max(1, round(0.1 * n_per_class))
    train, val, test = [], [], []
    for k in range(n_classes):
        rows = k * n_per_class + rng.permutation(n_per_class)
        test.append(rows[:n_test])
        val.append(rows[n_test : n_test + n_val])
        train.append(rows[n_test + n_val :])
    return np.concatenate(train), np.concatenate(val), np.concatenate(test)


@dataclass
class ClassifierOutcome:
    classifier_id: int
    created: bool
    n_classes: int
    metrics: dict
    mlflow_run_id: Optional[str]
    ui_command: Optional[str]
    seconds: float = 0.0


def _library_state(session: Session, library: Library) -> tuple[list[int], list[int], str]:
    """The library's class ids (by index), their representatives' ids, and a hash of both with the settings."""
    rows = session.exec(
        select(LibraryClass.id, LibraryStructure.id)
        .join(LibraryStructure, LibraryStructure.class_id == LibraryClass.id)
        .where(LibraryClass.library_id == library.id)
        .where(LibraryStructure.representative)
        .order_by(LibraryClass.class_index)
    ).all()
    digest = hashlib.sha256(json.dumps([library.id, library.settings, [[r[0], r[1]] for r in rows]], sort_keys=True).encode())
    return [r[0] for r in rows], [r[1] for r in rows], digest.hexdigest()


def _members_state(session: Session, library: Library) -> list[list]:
    """Every class id of the library with the ids of all its member structures (what a ranking depends on)."""
    rows = session.exec(
        select(LibraryStructure.class_id, LibraryStructure.id)
        .where(LibraryStructure.library_id == library.id)
        .order_by(LibraryStructure.class_id, LibraryStructure.id)
    ).all()
    members: dict[int, list[int]] = {}
    for class_id, structure_id in rows:
        members.setdefault(int(class_id), []).append(int(structure_id))
    return [[class_id, ids] for class_id, ids in members.items()]


def train_classifier(
    engine: Engine,
    library_name: str,
    n_per_class: int = N_PER_CLASS,
    seed: int = 0,
    mlflow_uri: Optional[str] = None,
    on_progress: Optional[Callable[[str, int, int], None]] = None,
) -> ClassifierOutcome:
    """Train (or reuse) the library's classifier; stored as a ``library_classifier`` row and an MLflow run.

    Trainings of one library take turns (:func:`motex_db.db.work_lock`): a
    second ``library train`` or ``mine --method classifier`` started meanwhile
    waits, then reuses the classifier the first one stored.
    """
    from motex_db.db import work_lock

    if n_per_class < 10:
        raise InputError(f"--per-class must be at least 10 (80/10/10 split), not {n_per_class}.")
    with work_lock(engine, f"library classifier {library_name}"):
        return _train_classifier(engine, library_name, n_per_class, seed, mlflow_uri, on_progress)


def _train_classifier(engine, library_name, n_per_class, seed, mlflow_uri, on_progress) -> ClassifierOutcome:
    import xgboost as xgb

    from motex_db.db import transaction
    from motex_db.learning import model_to_json
    from motex_db.tracking import open_tracker, tracking_location

    with Session(engine) as session:
        library = get_library(session, library_name)
        class_ids, representatives, state = _library_state(session, library)
        settings = LibrarySettings.from_dict(library.settings)
        inputs = hashlib.sha256(json.dumps(
            [CLASSIFIER_VERSION, state, n_per_class, seed, HYPERPARAMETERS], sort_keys=True).encode()).hexdigest()
        existing = session.exec(
            select(LibraryClassifier).where(LibraryClassifier.inputs_hash == inputs)
            .where(LibraryClassifier.library_id == library.id)
        ).first()
    url = engine.url.render_as_string(hide_password=False)
    location = tracking_location(url, mlflow_uri)
    if existing is not None:
        return ClassifierOutcome(existing.id, False, existing.n_classes, existing.metrics, existing.mlflow_run_id,
                                 location.ui_command)
    if len(class_ids) < 2:
        raise InputError(f"library '{library_name}' has {len(class_ids)} class; a classifier needs at least 2.")
    started = time.perf_counter()
    with Session(engine) as session:
        crystal_of = dict(session.exec(
            select(LibraryStructure.id, LibraryStructure.crystal).where(LibraryStructure.id.in_(representatives))
        ).all())
    crystals = [crystal_of[i] for i in representatives]
    simulated = training_set(crystals, settings, n_per_class, seed,
                             on_progress=(lambda d, t: on_progress("simulating", d, t)) if on_progress else None)
    X = features(simulated, settings)
    y = np.repeat(np.arange(len(class_ids)), n_per_class)
    train, val, test = _split(len(class_ids), n_per_class, seed)
    params = {k: v for k, v in HYPERPARAMETERS.items() if k != "early_stopping_rounds"}
    total_rounds = params["n_estimators"]

    class _Progress(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            if on_progress:
                on_progress("training", epoch + 1, total_rounds)
            return False

    model = xgb.XGBClassifier(
        objective="multi:softprob", tree_method="hist", eval_metric="mlogloss", random_state=seed,
        n_jobs=os.cpu_count() or 1, early_stopping_rounds=HYPERPARAMETERS["early_stopping_rounds"],
        callbacks=[_Progress()], **params,
    )
    model.fit(X[train], y[train], eval_set=[(X[val], y[val])], verbose=False)
    probabilities = model.predict_proba(X[test])
    top = np.argsort(-probabilities, axis=1)
    metrics = {
        "accuracy": float(np.mean(top[:, 0] == y[test])),
        "top3_accuracy": float(np.mean((top[:, :3] == y[test][:, None]).any(axis=1))),
        "log_loss": float(-np.mean(np.log(np.clip(probabilities[np.arange(len(test)), y[test]], 1e-15, 1)))),
        "best_iteration": int(model.best_iteration) if getattr(model, "best_iteration", None) is not None else total_rounds,
        "n_train": int(train.size), "n_validation": int(val.size), "n_test": int(test.size),
    }
    seconds = time.perf_counter() - started
    metrics["seconds"] = seconds
    model.set_params(callbacks=None)
    model_json = model_to_json(model)
    tracker = open_tracker(url, mlflow_uri)
    run_id = _log_classifier(tracker, model, library_name, len(class_ids), n_per_class, seed, metrics)
    with transaction(engine) as session:
        row = LibraryClassifier(
            library_id=library.id, inputs_hash=inputs, n_classes=len(class_ids), n_per_class=n_per_class, seed=seed,
            class_ids=np.asarray(class_ids, dtype=np.int64), hyperparameters=HYPERPARAMETERS, metrics=metrics,
            model=model_json, mlflow_run_id=run_id,
        )
        session.add(row)
        session.flush()
        row_id = row.id
    return ClassifierOutcome(row_id, True, len(class_ids), metrics, run_id, tracker.location.ui_command, seconds)


def _load_booster(text: str):
    """The booster of a stored classifier (:func:`motex_db.learning.model_to_json`'s text), one thread per prediction."""
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(text.encode()))
    booster.set_param({"nthread": 1})
    return booster


def _log_classifier(tracker, model, library: str, n_classes: int, n_per_class: int, seed: int, metrics: dict) -> str:
    """Log a trained classifier to MLflow (parameters, test metrics, the model); returns the run id."""
    import mlflow
    import mlflow.xgboost
    import xgboost
    from mlflow.entities import Metric, Param

    from motex_db import __version__

    tags = {"library": library, "n_classes": str(n_classes), "motex_db.kind": "classifier",
            "motex_db.version": __version__}
    now = int(time.time() * 1000)
    with tracker.logging():
        run = tracker.client.create_run(tracker.experiment_id, run_name=f"classifier {library}", tags=tags)
        run_id = run.info.run_id
        params = {**{f"xgb_{k}": v for k, v in HYPERPARAMETERS.items()}, "n_per_class": n_per_class, "seed": seed,
                  "lattice_range": LATTICE_RANGE, "uiso_range": f"{UISO_RANGE[0]}-{UISO_RANGE[1]}"}
        tracker.client.log_batch(
            run_id,
            metrics=[Metric(f"test_{k}" if k in ("accuracy", "top3_accuracy", "log_loss") else k, float(v), now, 0)
                     for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        mlflow.set_tracking_uri(tracker.uri)
        with mlflow.start_run(run_id=run_id):
            mlflow.xgboost.log_model(model, name="model", pip_requirements=[f"xgboost=={xgboost.__version__}"])
        tracker.client.set_terminated(run_id)
    return run_id


def flatness(probabilities: np.ndarray) -> dict:
    """How evenly the class probabilities are spread: top probability, normalised entropy, uniform level."""
    p = np.clip(np.asarray(probabilities, dtype=float), 1e-300, 1.0)
    k = p.size
    entropy = float(-(p * np.log(p)).sum() / math.log(k)) if k > 1 else 0.0
    top3 = float(np.sort(p)[::-1][:3].sum())
    return {"top_probability": float(p.max()), "top3_probability": top3, "normalized_entropy": entropy,
            "uniform_probability": 1.0 / k}


# ---------------------------------------------------------------- mine


@dataclass
class Candidate:
    rank: int
    candidate_id: int
    class_id: int
    class_index: int
    n_members: int
    structure_id: int
    structure: str
    formula: str
    spacegroup: Optional[str]
    score: float
    refinement: Optional[dict] = None
    rwp: Optional[float] = None
    stretch: Optional[float] = None  # relative isotropic lattice stretch of the best correlation


@dataclass
class MiningOutcome:
    mining_result_id: int
    created: bool
    dataset: str
    library: str
    method: str
    out_of_catalogue: bool
    confidence: dict
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0
    classifier: Optional[ClassifierOutcome] = None


def plausible_classes(
    ranked_classes: np.ndarray, class_r: np.ndarray, top: int, classifier_top: Sequence[int] = (),
) -> list[int]:
    """The classes ``--refine`` refines: the pcc top-k, the classifier's top-k, and every class whose
    lattice-aware correlation is within ``PLAUSIBLE_MARGIN`` of the best; at most ``max(top, MAX_REFINED)``,
    the top-k lists first, then by correlation."""
    chosen = [int(c) for c in ranked_classes[:top]] + [int(c) for c in classifier_top]
    chosen += [int(c) for c, r in zip(ranked_classes, class_r) if r >= class_r[0] - PLAUSIBLE_MARGIN]
    return list(dict.fromkeys(chosen))[: max(top, MAX_REFINED)]


def q_settings(dataset: Dataset, settings: LibrarySettings) -> tuple[float, float, float]:
    """Qmin, Qmax, qdamp of the data: the file header's where it gives them, else the library's."""
    meta = dataset.meta or {}

    def number(key, default):
        try:
            value = float(meta[key])
            return value if math.isfinite(value) else default
        except (KeyError, TypeError, ValueError):
            return default

    qmin = number("qmin", settings.qmin)
    qmax = number("qmax", settings.qmax)
    qdamp = number("qdamp", settings.qdamp)
    if not 0 <= qmin < qmax:
        qmin, qmax = settings.qmin, settings.qmax
    return qmin, qmax, qdamp


def mine(
    engine: Engine,
    dataset_name: str,
    library_name: str,
    method: str = "pcc",
    top: int = 5,
    refine: bool = False,
    seed: int = 0,
    n_per_class: int = N_PER_CLASS,
    mlflow_uri: Optional[str] = None,
    on_progress: Optional[Callable[[str, int, int], None]] = None,
    max_stretch: float = MAX_STRETCH,
) -> MiningOutcome:
    """Rank the library's classes for the dataset, store the ranking as rows; the same again reuses them.

    pcc compares each structure at every isotropic lattice stretch up to
    ``max_stretch`` (relative; 0: at the catalogue's lattice). With
    ``refine``, every plausible class is refined (:func:`plausible_classes`)
    and the refined Rwp decides the order of the ``top`` kept.
    """
    from motex_db.datasets import get_dataset
    from motex_db.db import transaction, work_lock

    if method not in METHODS:
        raise InputError(f"--method must be pcc or classifier, not '{method}'.")
    if top < 1:
        raise InputError(f"--top must be at least 1, not {top}.")
    if not (isinstance(max_stretch, (int, float)) and 0 <= max_stretch <= 0.1):
        raise InputError(f"--stretch must be between 0 and 0.1 (10 %), not {max_stretch}.")
    with Session(engine) as session:
        dataset = get_dataset(session, dataset_name)
        library = get_library(session, library_name)
        if dataset.r is None or dataset.g is None:
            raise InputError(f"dataset '{dataset_name}' holds no PDF (imported scores) to mine with.")
        settings = LibrarySettings.from_dict(library.settings)
        # a new file joining a class changes neither the classes nor their representatives (the
        # classifier's state) but can change the best member and the scores: the ranking hashes every member
        members = _members_state(session, library)
    measured, covered = measured_on_grid(dataset.r, dataset.g, settings)
    if covered.sum() < 10:
        raise InputError(
            f"dataset '{dataset_name}' (r {dataset.r_min:g}-{dataset.r_max:g} Å) overlaps the library's "
            f"r range 0-{settings.rmax:g} Å in fewer than 10 points."
        )
    classifier = None
    if method == "classifier":
        classifier = train_classifier(engine, library_name, n_per_class, seed, mlflow_uri, on_progress)
    inputs = hashlib.sha256(json.dumps(
        [dataset.id, dataset.content_hash, library.id, library.settings, members, method, top, refine,
         classifier.classifier_id if classifier else None, RANKING_VERSION, max_stretch],
        sort_keys=True).encode()).hexdigest()
    # the same ranking asked twice at once: the second waits, then finds the first one's rows
    with work_lock(engine, f"mine {inputs}"):
        with Session(engine) as session:
            existing = session.exec(select(MiningResult).where(MiningResult.inputs_hash == inputs)).first()
            if existing is not None:
                outcome = _outcome(session, existing, dataset_name, library_name, created=False)
                outcome.classifier = classifier
                return outcome
        started = time.perf_counter()
        with Session(engine) as session:
            rows = session.exec(
                select(LibraryStructure.id, LibraryStructure.class_id, LibraryStructure.g)
                .where(LibraryStructure.library_id == library.id).order_by(LibraryStructure.id)
            ).all()
        ids = np.array([r[0] for r in rows])
        class_of = np.array([r[1] for r in rows])
        g_library = np.stack([r[2] for r in rows])
        ranked_classes, class_r, best_rows, class_stretch = rank_by_pcc(
            g_library, class_of, measured, covered, settings, max_stretch, n_refined=max(2 * top, 10))
        best_member = dict(zip(ranked_classes.tolist(), ids[best_rows].tolist()))
        stretch_of = dict(zip(ranked_classes.tolist(), class_stretch.tolist()))
        r_of = dict(zip(ranked_classes.tolist(), class_r.tolist()))
        confidence = {"best_pcc": float(class_r[0]), "best_stretch": float(class_stretch[0]), "max_stretch": max_stretch}
        outside = bool(class_r[0] < PCC_OUTSIDE)
        probability_of: dict[int, float] = {}
        classifier_top: list[int] = []
        if method == "pcc":
            chosen = [int(c) for c in ranked_classes[:top]]
        else:
            with Session(engine) as session:
                stored = session.get(LibraryClassifier, classifier.classifier_id)
                model_text, model_classes = stored.model, np.asarray(stored.class_ids)
            import xgboost as xgb

            booster = _load_booster(model_text)
            probabilities = booster.predict(xgb.DMatrix(features(measured, settings)))[0]
            order = np.argsort(-probabilities, kind="stable")
            probability_of = {int(c): float(p) for c, p in zip(model_classes, probabilities)}
            classifier_top = [int(c) for c in model_classes[order[:top]]]
            chosen = classifier_top
            confidence.update(flatness(probabilities))
            outside = outside or bool(confidence["top3_probability"] < FLAT_TOP3)

        def score_of(cid: int) -> float:
            return r_of[cid] if method == "pcc" else probability_of.get(cid, 0.0)

        refinements: dict[int, dict] = {}
        if refine:
            chosen = plausible_classes(ranked_classes, class_r, top, classifier_top)
            qmin, qmax, qdamp = q_settings(dataset, settings)
            with Session(engine) as session:
                crystals = {cid: session.get(LibraryStructure, best_member[cid]).crystal for cid in chosen}
            for k, cid in enumerate(chosen):
                if on_progress:
                    on_progress("refining", k, len(chosen))
                result = refine_candidate(crystals[cid], settings, dataset.r, dataset.g, qmin, qmax, qdamp,
                                          stretch=stretch_of[cid])
                refinements[cid] = {**result.params(), "rwp": result.rwp, "qmin": qmin, "qmax": qmax, "qdamp": qdamp}
            if on_progress:
                on_progress("refining", len(chosen), len(chosen))
            # the refined fit decides: best Rwp first, the top kept
            chosen = sorted(chosen, key=lambda cid: (refinements[cid]["rwp"], -score_of(cid)))[:top]
            confidence["refined_classes"] = len(refinements)
        scores = [score_of(cid) for cid in chosen]
        seconds = time.perf_counter() - started
        with transaction(engine) as session:
            result = MiningResult(
                dataset_id=dataset.id, library_id=library.id, method=method,
                classifier_id=classifier.classifier_id if classifier else None, inputs_hash=inputs,
                settings={"top": top, "refine": refine, "match_rmin": MATCH_RMIN, "n_per_class": n_per_class if classifier else None,
                          "seed": seed if classifier else None, "max_stretch": max_stretch},
                out_of_catalogue=outside, confidence=confidence, seconds=seconds,
            )
            session.add(result)
            session.flush()
            for rank, (cid, score) in enumerate(zip(chosen, scores), start=1):
                refined = refinements.get(int(cid))
                session.add(MiningCandidate(
                    mining_result_id=result.id, rank=rank, class_id=int(cid), structure_id=int(best_member[int(cid)]),
                    score=float(score), params=({k: v for k, v in refined.items() if k != "rwp"} if refined else None),
                    rwp=refined["rwp"] if refined else None, stretch=float(stretch_of[int(cid)]),
                ))
            session.flush()
            outcome = _outcome(session, result, dataset_name, library_name, created=True)
        outcome.classifier = classifier
        return outcome


def _outcome(session: Session, result: MiningResult, dataset: str, library: str, created: bool) -> MiningOutcome:
    rows = session.exec(
        select(MiningCandidate, LibraryStructure, LibraryClass)
        .join(LibraryStructure, LibraryStructure.id == MiningCandidate.structure_id)
        .join(LibraryClass, LibraryClass.id == MiningCandidate.class_id)
        .where(MiningCandidate.mining_result_id == result.id)
        .order_by(MiningCandidate.rank)
    ).all()
    candidates = [
        Candidate(c.rank, c.id, k.id, k.class_index, k.n_members, s.id, s.name, s.formula, s.spacegroup, c.score,
                  c.params, c.rwp, c.stretch)
        for c, s, k in rows
    ]
    return MiningOutcome(result.id, created, dataset, library, result.method, result.out_of_catalogue,
                         result.confidence, candidates, result.seconds)
