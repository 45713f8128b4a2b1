"""Time-resolved series: how many components a series holds (PCA), what they are (NMF), how frames relate.

:func:`decompose_series` follows the PCA + NMF analysis of in situ PDF series in
the MLstructureMining paper (Kjær et al., Digital Discovery 2024; seed 004):
PCA proposes the number of components, NMF extracts them, and each NMF
component becomes a dataset that ``fit``, ``train`` and ``explain`` accept.

The frames
    The frames of the series in time order (:func:`motex_db.datasets.get_series_frames`),
    over one r range [rmin, rmax] (default: the whole range every frame covers).
    The grid is the first frame's r points within that range. A frame whose own
    points there are not the same (to 1e-9 Å) is linearly interpolated onto
    that grid (``numpy.interp``); the outcome names such frames. X is the
    frames x r matrix of G(r) (Å⁻²).

PCA
    The singular values s_i of X (``numpy.linalg.svd``) give each component's
    explained-variance ratio s_i² / Σ_j s_j², for every component (min(frames,
    points) of them), stored in ``series_decomposition.explained_variance``.
    X is *not* mean-centred: G(r) has a physical zero, and the NMF below
    reconstructs the frames themselves, not their deviations from the mean
    frame. Centring removes one component: a mixture of two phases whose
    fractions add up to one is, once centred, a single direction (the
    difference of the two PDFs), so centred PCA would count K - 1 phases,
    and with noise it spreads the remainder evenly over all components (a
    series of one phase would need almost every component to reach 99 %).
    ``components="auto"`` picks the smallest K whose cumulative ratio
    reaches 99 % (:data:`AUTO_EXPLAINED`), at least 1.

NMF
    G(r) goes negative, NMF needs X >= 0: it runs on X + shift with
    shift = max(0, -min X) over all frames and the whole grid, a single
    number (``series_decomposition.shift``), so X + shift >= 0. scikit-learn's
    ``NMF`` (``init="nndsvda"``, ``random_state=0``, coordinate descent, tol
    1e-5, up to 5000 iterations) gives X + shift ≈ W H with W (frames x K)
    and H (K x points) non-negative; ``nmf_relative_error`` is
    ||X + shift - W H||_F / ||X + shift||_F.

    NMF leaves each component's scale free (W_k a_k, H_k / a_k). We fix it so
    that the weights of every frame add up to about one: a >= 0 minimises
    Σ_f (Σ_k a_k W_fk - 1)² (``scipy.optimize.nnls``; a component that gets
    a_k = 0 is scaled so that its largest weight is 1 instead). The stored
    weights and component curves are then

        w_fk = a_k W_fk                   (``component_weight.weight``)
        C_k(r) = H_k(r) / a_k - shift     (the derived dataset's G(r))

    and, exactly, for the NMF model of every frame f:

        X_f(r) ≈ (W H)_f - shift = Σ_k w_fk C_k(r) + shift · (Σ_k w_fk - 1)

    For frames that are mixtures of K phases with fractions adding up to one
    (X_f = Σ_k c_fk P_k) the last term vanishes, w_fk estimates c_fk and C_k
    the phase's own G(r). :attr:`Decomposition.closure` reports
    max_f |Σ_k w_fk - 1|, the size of that term relative to the shift.
    Components are numbered by when they matter: component 1 is the one
    whose weight-weighted mean frame index comes first.

Correlation
    The Pearson correlation matrix of the frames over the grid
    (``numpy.corrcoef``), frames in time order.

What is stored, in one transaction: a ``series_decomposition`` row (unique by
the SHA-256 of the frames' content hashes in time order, the r range and the
components requested, so the identical decomposition again returns the
stored one), a ``dataset`` per NMF component (named ``{series}_nmf{K}_c{k}``,
``series`` empty, ``meta.derived_from`` naming series, decomposition and
component, and the first frame's qmin, qmax, qdamp... so fits resolve the same
Q window), a ``series_component`` row linking each to its dataset, and a
``component_weight`` row per component and frame.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from motex_db.datasets import MIN_POINTS, get_series_frames
from motex_db.db import lock_in_transaction, transaction
from motex_db.errors import InputError
from motex_db.models import ComponentWeight, Dataset, SeriesComponent, SeriesDecomposition

__all__ = [
    "AUTO_EXPLAINED", "Decomposition", "FrameMatrix", "decompose_series", "frame_matrix", "explained_variance_ratio",
    "components_for", "nmf_components", "latest_decomposition", "load_decomposition", "series_overview",
]

# `auto`: the smallest number of PCA components whose cumulative explained variance reaches this.
AUTO_EXPLAINED = 0.99
# Part of the inputs hash: a change of the method below must not find results of the old one.
METHOD_VERSION = "pca-uncentred+nmf-nndsvda-cd/1"
NMF_RANDOM_STATE = 0
NMF_MAX_ITER = 5000
NMF_TOL = 1e-5
# Header keys of the first frame that a derived dataset carries, so a fit resolves the same settings.
_HEADER_KEYS = ("qmin", "qmax", "qdamp", "qbroad", "radiation", "mode", "composition", "wavelength")
_GRID_TOLERANCE = 1e-9  # Å


@dataclass
class FrameMatrix:
    """The frames of a series on one r grid: ``g[f]`` is frame f's G(r) (Å⁻²) on ``r`` (Å)."""

    frames: list[Dataset]
    r: np.ndarray
    g: np.ndarray
    interpolated: list[str]  # names of the frames interpolated onto the first frame's grid


@dataclass
class Decomposition:
    """A stored decomposition of a series (see the module docstring for every quantity)."""

    decomposition_id: int
    series: str
    created: bool  # False: the identical decomposition was already stored and is returned as it was
    frame_ids: list[int]
    frame_names: list[str]
    frame_times: list[Optional[float]]  # s
    r_min: float  # Å
    r_max: float  # Å
    n_points: int
    explained_variance: np.ndarray  # ratio per PCA component
    components_requested: str  # "auto" or the number asked for
    n_components: int
    shift: float  # Å⁻², added to G before the NMF
    nmf_relative_error: float
    component_ids: list[int]  # series_component ids, component 1..K
    component_names: list[str]  # derived dataset names, component 1..K
    component_dataset_ids: list[int]
    weights: np.ndarray  # frames x K
    correlation: np.ndarray  # frames x frames
    interpolated: list[str] = field(default_factory=list)
    nmf_iterations: Optional[int] = None  # known when computed in this call
    created_at: Optional[object] = None

    @property
    def nmf_converged(self) -> Optional[bool]:
        """Whether NMF met its tolerance before NMF_MAX_ITER iterations (None for a stored decomposition)."""
        return None if self.nmf_iterations is None else self.nmf_iterations < NMF_MAX_ITER

    @property
    def cumulative_variance(self) -> np.ndarray:
        return np.cumsum(self.explained_variance)

    @property
    def closure(self) -> float:
        """max over frames of |Σ_k w_fk - 1|: how far the weights are from fractions adding up to one."""
        if self.weights.size == 0:
            return float("nan")
        return float(np.max(np.abs(self.weights.sum(axis=1) - 1.0)))

    def weights_frame(self) -> pd.DataFrame:
        """One row per frame: name, time (s), then the weight of each component (``c1``, ``c2``...)."""
        table = pd.DataFrame({"frame": self.frame_names, "time": self.frame_times})
        for k in range(self.weights.shape[1]):
            table[f"c{k + 1}"] = self.weights[:, k]
        return table


# ---------------------------------------------------------------- numerics (pure functions on arrays)


def explained_variance_ratio(x: np.ndarray) -> np.ndarray:
    """s_i² / Σ s_j² for the singular values of the (uncentred) frames x points matrix; zeros when x is 0."""
    singular = np.linalg.svd(np.asarray(x, dtype=float), compute_uv=False)
    power = singular**2
    total = power.sum()
    return power / total if total > 0 else np.zeros_like(power)


def components_for(ratio: np.ndarray, threshold: float = AUTO_EXPLAINED) -> int:
    """The smallest K with Σ_{i<=K} ratio_i >= threshold; at least 1 (also when nothing varies)."""
    cumulative = np.cumsum(ratio)
    if cumulative.size == 0 or cumulative[-1] <= 0:
        return 1
    # a hair below the threshold so that rounding in the sum cannot add a component
    return int(min(np.searchsorted(cumulative, threshold - 1e-12) + 1, cumulative.size))


def nmf_components(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float, float, int]:
    """NMF of frames x points ``x`` with ``k`` components, undone to G: ``(weights, curves, shift, error, iterations)``.

    weights w (frames x k) and curves C (k x points) are as in the module
    docstring: X ≈ w C + shift (Σ_k w_k - 1) exactly for the NMF model; error is
    ||X + shift - W H||_F / ||X + shift||_F.
    """
    from scipy.optimize import nnls
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    x = np.asarray(x, dtype=float)
    shift = float(max(0.0, -x.min()))
    shifted = x + shift
    model = NMF(n_components=k, init="nndsvda", solver="cd", random_state=NMF_RANDOM_STATE,
                max_iter=NMF_MAX_ITER, tol=NMF_TOL)
    with warnings.catch_warnings():
        # reported instead through the iteration count (Decomposition.nmf_converged): the late iterations
        # only rotate the factors, the relative error has long settled
        warnings.simplefilter("ignore", ConvergenceWarning)
        w_raw = model.fit_transform(shifted)
    h_raw = model.components_
    error = float(np.linalg.norm(shifted - w_raw @ h_raw) / np.linalg.norm(shifted))
    scale, _ = nnls(w_raw, np.ones(len(w_raw)))
    for j in range(k):
        if not scale[j] > 0:
            peak = w_raw[:, j].max()
            scale[j] = 1.0 / peak if peak > 0 else 1.0
    weights = w_raw * scale
    curves = h_raw / scale[:, None] - shift
    # component 1 is the one whose weight is centred earliest in the series
    index = np.arange(len(x), dtype=float)
    totals = weights.sum(axis=0)
    centres = np.where(totals > 0, (weights * index[:, None]).sum(axis=0) / np.where(totals > 0, totals, 1), np.inf)
    order = np.argsort(centres, kind="stable")
    return weights[:, order], curves[order], shift, error, int(model.n_iter_)


def frame_correlation(x: np.ndarray) -> np.ndarray:
    """Pearson correlation of every pair of frames (rows of x); NaN where a frame is constant."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.atleast_2d(np.corrcoef(np.asarray(x, dtype=float)))


# ---------------------------------------------------------------- frames


def frame_matrix(frames: Sequence[Dataset], rmin: Optional[float] = None, rmax: Optional[float] = None,
                 series: str = "") -> FrameMatrix:
    """The frames' G(r) on the first frame's grid within [rmin, rmax] (Å; default: the range all frames cover)."""
    if len(frames) < 2:
        raise InputError(f"series '{series}' has {len(frames)} frame; a decomposition needs at least 2 frames.")
    for frame in frames:
        if frame.r is None or len(frame.r) < 2:
            raise InputError(f"frame '{frame.name}' of series '{series}' holds no r and G data to decompose.")
    low = max(float(f.r[0]) for f in frames)
    high = min(float(f.r[-1]) for f in frames)
    if low >= high:
        raise InputError(f"the frames of series '{series}' share no r range (the largest start, {low:g} Å, "
                         f"is not below the smallest end, {high:g} Å).")
    start = low if rmin is None else float(rmin)
    stop = high if rmax is None else float(rmax)
    if not (np.isfinite(start) and np.isfinite(stop)) or start >= stop:
        raise InputError(f"rmin ({start:g} Å) must be smaller than rmax ({stop:g} Å).")
    if start < low - _GRID_TOLERANCE or stop > high + _GRID_TOLERANCE:
        raise InputError(f"r range {start:g}-{stop:g} Å is outside the range every frame of series '{series}' "
                         f"covers ({low:g}-{high:g} Å).")
    first = np.asarray(frames[0].r, dtype=float)
    inside = (first >= start - _GRID_TOLERANCE) & (first <= stop + _GRID_TOLERANCE)
    grid = first[inside]
    if len(grid) < MIN_POINTS:
        raise InputError(f"r range {start:g}-{stop:g} Å holds {len(grid)} points of the first frame; "
                         f"at least {MIN_POINTS} are needed.")
    rows, interpolated = [], []
    for frame in frames:
        r = np.asarray(frame.r, dtype=float)
        g = np.asarray(frame.g, dtype=float)
        mask = (r >= start - _GRID_TOLERANCE) & (r <= stop + _GRID_TOLERANCE)
        if mask.sum() == len(grid) and np.allclose(r[mask], grid, rtol=0, atol=_GRID_TOLERANCE):
            rows.append(g[mask])
        else:
            rows.append(np.interp(grid, r, g))
            interpolated.append(frame.name)
    return FrameMatrix(frames=list(frames), r=grid, g=np.vstack(rows), interpolated=interpolated)


def _requested(components, n_frames: int) -> tuple[str, Optional[int]]:
    """``("auto", None)`` or ``(str(K), K)`` for a valid K in 1..n_frames."""
    if isinstance(components, str):
        text = components.strip().lower()
        if text == "auto":
            return "auto", None
        try:
            value = int(text)
        except ValueError:
            raise InputError(f"components must be a whole number or auto, not '{components}'.") from None
    elif isinstance(components, (int, np.integer)) and not isinstance(components, bool):
        value = int(components)
    else:
        raise InputError(f"components must be a whole number or auto, not {components!r}.")
    if not 1 <= value <= n_frames:
        raise InputError(f"components must be between 1 and the number of frames ({n_frames}), not {value}.")
    return str(value), value


def _inputs_hash(frames: Sequence[Dataset], r_min: float, r_max: float, requested: str) -> str:
    key = json.dumps({"frames": [f.content_hash for f in frames], "r_min": r_min, "r_max": r_max,
                      "components": requested, "method": METHOD_VERSION}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


# ---------------------------------------------------------------- the record


def decompose_series(engine: Engine, series: str, components="auto", rmin: Optional[float] = None,
                     rmax: Optional[float] = None) -> Decomposition:
    """PCA, NMF and frame correlations of series ``series`` over [rmin, rmax] (Å), stored in one transaction.

    ``components`` is ``"auto"`` (the smallest number of PCA components
    explaining 99 % of the variance, at least 1) or a number of NMF components
    from 1 to the number of frames. The identical decomposition (same frames,
    range and request) returns the stored one without writing anything. Bad
    input raises :class:`InputError` and writes nothing. See the module
    docstring for what is computed and stored.
    """
    with Session(engine) as session:
        frames = get_series_frames(session, series)
    matrix = frame_matrix(frames, rmin, rmax, series)
    requested, k_requested = _requested(components, len(frames))
    r_min, r_max = float(matrix.r[0]), float(matrix.r[-1])
    inputs_hash = _inputs_hash(frames, r_min, r_max, requested)
    with Session(engine) as session:
        stored = session.exec(select(SeriesDecomposition).where(SeriesDecomposition.inputs_hash == inputs_hash)).first()
        if stored is not None:
            return load_decomposition(session, stored, interpolated=matrix.interpolated)

    x = matrix.g
    if not np.any(x):
        raise InputError(f"the frames of series '{series}' are zero everywhere in {r_min:g}-{r_max:g} Å; nothing to decompose.")
    ratio = explained_variance_ratio(x)
    k = k_requested if k_requested is not None else components_for(ratio)
    if k > len(matrix.r):
        raise InputError(f"{k} components need at least {k} r points; the range {r_min:g}-{r_max:g} Å holds {len(matrix.r)}.")
    weights, curves, shift, error, iterations = nmf_components(x, k)
    correlation = frame_correlation(x)
    frame_ids = np.array([f.id for f in frames], dtype=np.int64)
    first_meta = frames[0].meta or {}
    header = {key: first_meta[key] for key in _HEADER_KEYS if key in first_meta}

    try:
        with transaction(engine) as session:
            # component datasets are named after what is free: two decompositions storing at once take
            # turns (PostgreSQL; SQLite's write lock does it already), so the second sees the first's names
            lock_in_transaction(session, "series decomposition")
            if session.exec(select(SeriesDecomposition.id).where(SeriesDecomposition.inputs_hash == inputs_hash)).first():
                raise _AlreadyStored()
            row = SeriesDecomposition(
                series=series, inputs_hash=inputs_hash, r_min=r_min, r_max=r_max, n_frames=len(frames),
                frame_ids=frame_ids, components_requested=requested, n_components=k,
                explained_variance=ratio, correlation=correlation, shift=shift, nmf_relative_error=error,
            )
            session.add(row)
            session.flush()
            component_rows = []
            for j in range(k):
                provenance = {"series": series, "decomposition_id": row.id, "component": j + 1, "n_components": k,
                              "r_min": r_min, "r_max": r_max, "shift": shift, "inputs_hash": inputs_hash}
                name = _free_name(session, f"{series}_nmf{k}_c{j + 1}", f"{series}_nmf{k}_d{row.id}_c{j + 1}")
                digest = hashlib.sha256()
                for part in (matrix.r, curves[j]):
                    digest.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
                digest.update(json.dumps(provenance, sort_keys=True).encode())
                dataset = Dataset(
                    name=name, source_file=f"NMF component {j + 1} of {k}, series {series}",
                    content_hash=digest.hexdigest(), n_points=len(matrix.r), r_min=r_min, r_max=r_max,
                    r=matrix.r.copy(), g=curves[j].copy(), dg=None,
                    meta={**header, "derived_from": provenance}, series=None, time=None,
                )
                session.add(dataset)
                session.flush()
                component = SeriesComponent(decomposition_id=row.id, component=j + 1, dataset_id=dataset.id)
                session.add(component)
                session.flush()
                component_rows.append(component)
            session.execute(sa.insert(ComponentWeight.__table__), [
                {"series_component_id": c.id, "frame_dataset_id": int(frame_ids[f]), "weight": float(weights[f, j])}
                for j, c in enumerate(component_rows) for f in range(len(frames))
            ])
            outcome = load_decomposition(session, row, interpolated=matrix.interpolated, created=True)
    except (_AlreadyStored, sa.exc.IntegrityError):
        # another process stored the identical decomposition first
        with Session(engine) as session:
            stored = session.exec(select(SeriesDecomposition).where(SeriesDecomposition.inputs_hash == inputs_hash)).first()
            if stored is None:
                raise
            return load_decomposition(session, stored, interpolated=matrix.interpolated)
    outcome.nmf_iterations = iterations
    return outcome


class _AlreadyStored(Exception):
    pass


def _free_name(session: Session, preferred: str, fallback: str) -> str:
    for candidate in [preferred, fallback] + [f"{fallback}_{n}" for n in range(2, 100)]:
        if session.exec(select(Dataset.id).where(Dataset.name == candidate)).first() is None:
            return candidate
    raise InputError(f"no free dataset name for '{preferred}': rename the datasets called {fallback}_*.")


def load_decomposition(session: Session, row: SeriesDecomposition, interpolated: Sequence[str] = (),
                       created: bool = False) -> Decomposition:
    """The stored decomposition ``row`` with its components, their datasets and weights."""
    frame_ids = [int(i) for i in row.frame_ids]
    frames = {d.id: d for d in session.exec(select(Dataset).where(Dataset.id.in_(frame_ids))).all()}
    components = session.exec(
        select(SeriesComponent, Dataset.name).join(Dataset, Dataset.id == SeriesComponent.dataset_id)
        .where(SeriesComponent.decomposition_id == row.id).order_by(SeriesComponent.component)
    ).all()
    position = {fid: f for f, fid in enumerate(frame_ids)}
    column = {c.id: j for j, (c, _) in enumerate(components)}
    weights = np.full((len(frame_ids), len(components)), np.nan)
    if components:
        for component_id, frame_id, weight in session.exec(
            select(ComponentWeight.series_component_id, ComponentWeight.frame_dataset_id, ComponentWeight.weight)
            .where(ComponentWeight.series_component_id.in_(list(column)))
        ).all():
            weights[position[frame_id], column[component_id]] = weight
    return Decomposition(
        decomposition_id=row.id, series=row.series, created=created, frame_ids=frame_ids,
        frame_names=[frames[i].name if i in frames else f"dataset {i} (removed)" for i in frame_ids],
        frame_times=[frames[i].time if i in frames else None for i in frame_ids],
        r_min=row.r_min, r_max=row.r_max,
        n_points=int(session.exec(select(Dataset.n_points).where(Dataset.id == components[0][0].dataset_id)).one())
        if components else 0,
        explained_variance=np.asarray(row.explained_variance, dtype=float), components_requested=row.components_requested,
        n_components=row.n_components, shift=row.shift, nmf_relative_error=row.nmf_relative_error,
        component_ids=[c.id for c, _ in components], component_names=[name for _, name in components],
        component_dataset_ids=[c.dataset_id for c, _ in components], weights=weights,
        correlation=np.asarray(row.correlation, dtype=float), interpolated=list(interpolated), created_at=row.created_at,
    )


def latest_decomposition(session: Session, series: str) -> Optional[Decomposition]:
    """The most recently stored decomposition of ``series``, or None."""
    row = session.exec(
        select(SeriesDecomposition).where(SeriesDecomposition.series == series)
        .order_by(SeriesDecomposition.created_at.desc(), SeriesDecomposition.id.desc())
    ).first()
    return load_decomposition(session, row) if row is not None else None


def series_overview(engine: Engine) -> pd.DataFrame:
    """One row per series: frames, first and last frame time (s), r range shared, decompositions, latest K."""
    with Session(engine) as session:
        frames = session.exec(
            select(Dataset.series, sa.func.count(), sa.func.min(Dataset.time), sa.func.max(Dataset.time),
                   sa.func.max(Dataset.r_min), sa.func.min(Dataset.r_max))
            .where(Dataset.series.is_not(None)).group_by(Dataset.series).order_by(Dataset.series)
        ).all()
        decompositions = dict(session.exec(
            select(SeriesDecomposition.series, sa.func.count()).group_by(SeriesDecomposition.series)
        ).all())
        latest = {}
        for name, k, requested in session.exec(
            select(SeriesDecomposition.series, SeriesDecomposition.n_components, SeriesDecomposition.components_requested)
            .order_by(SeriesDecomposition.created_at, SeriesDecomposition.id)
        ).all():
            latest[name] = f"{k} ({requested})"
    return pd.DataFrame(
        [(name, n, t0, t1, f"{lo:g}-{hi:g}" if lo < hi else "none", decompositions.get(name, 0), latest.get(name))
         for name, n, t0, t1, lo, hi in frames],
        columns=["series", "frames", "first_time_s", "last_time_s", "common_r_angstrom", "decompositions",
                 "latest_components"],
    )
