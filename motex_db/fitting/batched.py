"""Fitting many motifs of one starting model to one dataset at once.

The objective is srfit's with scipy's ``leastsq`` (unit uncertainties): over
the fit range

    sum (s G_calc(r) - G_obs(r))^2 + sum_zooms (max(0, lb - z, z - ub) / sigma)^2

and Rwp = sqrt(sum (G_obs - s G_calc)^2 / sum G_obs^2), without the restraint.

Three ways to minimise it, chosen from the settings:

- **isotropic zoom** (the ``fast`` recipe; real-space calculator, scale and
  zoom refined). The best scale is linear, s = <G_obs, G> / <G, G>, so the
  fit is a search over one zoom. In the engine's orthonormal basis of every
  G it can produce (``projection_factors``, ~80 dimensions) the residual is
  |s a - b|^2 + |G_obs outside the basis|^2, with b the data's coefficients
  and a = counts @ K(zoom) the motif's. An isotropic zoom does not change the
  class counts, only the kernels K, and K(zoom) is smooth: a Chebyshev
  interpolant in the zoom on the whole search window (below) is exact to
  the engine's own peak-truncation noise (~2e-7 of a kernel). One matrix
  product gives every motif's Chebyshev coefficients; the objective on a fine
  zoom grid finds the global minimum's basin, and safeguarded Newton steps
  on the interpolant find the minimum, for all motifs at once.
  Only <a, b> depends on the data: for a time series (many frames on one r
  grid) the motifs' coefficients, their Gram matrices and |a|^2 on the grid
  are computed once per block of motifs and every frame costs a few small
  products (:meth:`MotifFitter.fit_frames`).
- **three zooms** (the ``mlmotex`` recipe): a batched Levenberg-Marquardt on
  (zx, zy, zz) with the scale eliminated (variable projection), a secant
  correction for the large residuals and the restraints modelled exactly,
  from two starts: the isotropic optimum and the start values (where
  DiffPy's ``leastsq`` starts); the better end wins. Each motif has its own
  zooms, so kernels are not shared: a motif's coefficients are
  sum_c n_c K(d_c), with the kernel of each element pair a smooth function
  of the pair distance d alone. We tabulate its Taylor coefficients in d on
  0.02 Å bins (from Chebyshev fits of the untruncated peaks) and sum moments
  of the classes' offsets from their bin centres: a few histograms and
  matrix products per step.
- **general** (free Biso or delta2, the Debye calculator, a fixed scale):
  one motif at a time, scipy's ``least_squares`` on exact evaluations (the
  motif's pairs classed once, G computed as :func:`cluster_pdf` does), the
  scale eliminated when free, started (real calculator) from the isotropic
  zoom search's optimum. A few fits per second on a 100-atom model.

Where the optimum can be: at any zoom inside the restraint window the
objective is at most sum G_obs^2 (take s = 0), so at the optimum each zoom's
penalty is below that, which puts every zoom within sigma * |G_obs| of the
window. The searches cover [lb - sigma |G_obs|, ub + sigma |G_obs|] (cut to
[lb / 1.5, 1.5 ub]). With one zoom the search is global: DiffPy's
``leastsq`` from zoom 1 can stop in a worse local minimum, we cannot. With
three it is local from two starts, one of them DiffPy's.

Reported values are those of the model at the reported parameters: the
interpolants agree with the exact engine to ~1e-7 relative, far below the
1e-6 in Rwp the tests demand (tests/test_fitting_numerics.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.polynomial import chebyshev
from numpy.typing import ArrayLike
from scipy import sparse
from scipy.optimize import least_squares

from motex_db.errors import InputError
from motex_db.fitting.settings import PAIR_GRID_ANGSTROM, FitSettings
from motex_db.pdf.calculators import ClusterModel
from motex_db.pdf.engine import MotifPDFEngine
from motex_db.pdf.kernels import RealSpaceTransform, gaussian_peak, jeong_fwhm
from motex_db.pdf.pairs import PairClasses, group_pairs, pair_code, species_index
from motex_db.pdf.parameters import PDFParameters, bare_symbol

__all__ = ["FitBatch", "MotifFitter"]

# Motifs per block in the batched paths: at most _BLOCK, and fewer when the
# dense class counts of a block (motifs x classes) would exceed _COUNTS_BUDGET
# numbers, so memory stays at a few tens of MB whatever the model.
_BLOCK = 1024
_COUNTS_BUDGET = 1 << 22
# Motifs per three-zoom LM block: their moment histograms stay in cache.
_LM_BLOCK = 128
# Zoom search: Chebyshev nodes per panel ~ omega * width / 2 + _CHEB_MARGIN,
# at most _CHEB_MAX per panel (omega = Qmax * longest active distance).
_CHEB_MARGIN = 16
_CHEB_MAX = 48
# Zoom grid spacing for finding the basin of the global minimum, in units of
# 1 / omega; minima of the objective lie ~5 / omega apart or more.
_GRID_STEP = 0.6
_NEWTON_STEPS = 30
# Three zooms: distance bins of the kernel tables (Å), and Taylor terms in the
# offset from a bin centre (|Q offset| <= 0.2 at Q = 20 / Å): for the kernels
# while iterating (relative error ~3e-6), for their slopes (the Jacobian), and
# for the final values (~1e-9, below the engine's own ~2e-7 peak-cut noise).
_BIN = 0.02
_TAYLOR_ITER = 4
_TAYLOR_SLOPE = 3
_TAYLOR_FINAL = 6
# The tables come from Chebyshev fits on panels of this many bins, with this many nodes.
_TABLE_PANEL_BINS = 25
_TABLE_NODES = 24
_LM_STEPS = 60
_LM_DAMPING = 1e-3
# LM stops when a step gains (or would gain) less than this fraction of the
# objective; Rwp then moves by less than ~1e-10. (MINPACK's ftol is 1.5e-8:
# looser, and DiffPy's fits stop there.)
_LM_TOLERANCE = 1e-10
# Further starts are first followed roughly (this tolerance, cheaper Taylor
# orders); only motifs where that already beats the first start are polished.
_LM_SCREEN = 1e-5
_SCREEN_ORDERS = (3, 2)
# r values within this of rmin or rmax count as inside the fit range (Å).
_RANGE_TOLERANCE = 1e-9
_MIN_POINTS = 3

# Grid classes' zoom-search kernel is used at its numerical rank: singular values
# below this fraction of the largest are dropped (a's relative error ~1e-7, far
# below the grid's own ~5e-6).
_GRID_RANK_TOLERANCE = 1e-7
_ZERO_PDF = "The motif's PDF is zero on the fit range (fewer than two atoms, or no pair close enough)."
_NOT_FINITE = "The fit produced non-finite values."


@dataclass
class FitBatch:
    """Results of fitting n motifs.

    - ``rwp``: (n,) Rwp over the fit range, NaN where the fit failed.
    - ``ok``: (n,) bool.
    - ``params``: refined values per motif, e.g. ``{"scale": .., "zoom": ..}`` or
      ``{"scale": .., "zoomx": .., "zoomy": .., "zoomz": ..}``, plus ``"biso_<El>"``
      (Å^2) and ``"delta2"`` (Å^2) when refined; None where the fit failed.
    - ``errors``: one sentence per failed motif, None for the others.
    - ``seconds``: (n,) time attributed to each fit (the batch's time shared equally).
    """

    rwp: np.ndarray
    ok: np.ndarray
    params: list[dict | None]
    errors: list[str | None]
    seconds: np.ndarray

    def __len__(self) -> int:
        return int(self.rwp.size)


# ============================================================================ small numerics


def _penalty(z: np.ndarray, low: float, high: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """srfit's restraint residual max(0, low - z, z - high) / sigma and its derivative in z."""
    below, above = low - z, z - high
    value = np.maximum(0.0, np.maximum(below, above)) / sigma
    slope = np.where(below > 0, -1.0 / sigma, np.where(above > 0, 1.0 / sigma, 0.0))
    return value, slope


def _chebyshev_nodes(n: int) -> np.ndarray:
    """First-kind Chebyshev points on [-1, 1] (decreasing)."""
    return np.cos(np.pi * (np.arange(n) + 0.5) / n)


def _values_to_coefficients(n: int) -> np.ndarray:
    """(n, n) map from values at :func:`_chebyshev_nodes` to Chebyshev coefficients (a DCT)."""
    x = _chebyshev_nodes(n)
    t = chebyshev.chebvander(x, n - 1)  # t[j, i] = T_i(x_j)
    out = (2.0 / n) * t.T
    out[0] *= 0.5
    return out


def _chebyshev_basis(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T_j(x), T_j'(x), T_j''(x) for j < n at each x: three (len(x), n) arrays."""
    x = np.asarray(x, dtype=float)
    t = np.zeros((x.size, n))
    d1 = np.zeros((x.size, n))
    d2 = np.zeros((x.size, n))
    t[:, 0] = 1.0
    if n > 1:
        t[:, 1] = x
        d1[:, 1] = 1.0
    for j in range(1, n - 1):
        t[:, j + 1] = 2.0 * x * t[:, j] - t[:, j - 1]
        d1[:, j + 1] = 2.0 * t[:, j] + 2.0 * x * d1[:, j] - d1[:, j - 1]
        d2[:, j + 1] = 4.0 * d1[:, j] + 2.0 * x * d2[:, j] - d2[:, j - 1]
    return t, d1, d2


def _explained(ab: np.ndarray, aa: np.ndarray) -> np.ndarray:
    """<a, b>^2 / |a|^2, 0 where a = 0: how much of |b|^2 the best scale of a explains."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(aa > 0, ab * ab / np.where(aa > 0, aa, 1.0), 0.0)


# ============================================================================ the data in the basis


@dataclass(frozen=True)
class _Data:
    """G_obs on the fit range, and in the engine's orthonormal basis."""

    r: np.ndarray
    y: np.ndarray
    b: np.ndarray  # coefficients of y in the basis, (k,)
    yy: float  # sum y^2
    outside: float  # |y|^2 - |b|^2: the part no model can fit

    @property
    def norm(self) -> float:
        return math.sqrt(self.yy)


# ============================================================================ isotropic zoom: global search


class _IsoZoomSearch:
    """Global minimisation over one isotropic zoom of |s a(z) - b|^2 + penalty, s eliminated, for many motifs and frames.

    At construction: each class's kernel (in the basis) at Chebyshev nodes of
    the zoom window, turned into Chebyshev coefficients (panels of the window
    when it is wide). Per block of motifs: counts @ those coefficients gives
    every motif's a(z) as a Chebyshev series; <a, b> and |a|^2 (through the
    series' Gram matrix) give the objective on a fine zoom grid, and Newton
    steps on the series polish the best grid point. With ``window`` None the
    zoom is fixed at the start value and a is evaluated there. Everything but
    <a, b> is the same for every frame (data) and computed once per block.
    """

    def __init__(self, engine: MotifPDFEngine, settings: FitSettings, window: tuple[float, float] | None):
        self.engine = engine
        self.low, self.high = settings.zoom_bounds
        self.sigma = settings.zoom_sigma
        left, _ = engine.projection_factors()
        self.k = left.shape[1]
        if window is None:
            z = settings.zoom_start
            self.fixed = z
            self.n_active = engine.n_active(z)
            self.kernel = engine.kernel_q(z)[: self.n_active] @ left
            return
        self.fixed = None
        zlo, zhi = window
        self.n_active = engine.n_active(zlo)  # classes leave the reach as the zoom grows
        distances = engine.classes(1.0).components[: self.n_active]
        q_max = float(engine.transform().q.max(initial=0.0))
        omega = max(q_max * float(distances.max(initial=0.0)) * zhi, 1.0)
        half_phase = omega * (zhi - zlo) / 2.0
        n_panels = max(1, math.ceil(half_phase / (_CHEB_MAX - _CHEB_MARGIN)))
        n_nodes = max(8, math.ceil(half_phase / n_panels) + _CHEB_MARGIN)
        edges = np.linspace(zlo, zhi, n_panels + 1)
        self.panels = []
        to_coefficients = _values_to_coefficients(n_nodes)
        x_nodes = _chebyshev_nodes(n_nodes)
        # per class: Chebyshev coefficients of its kernel in the zoom, panel by panel, (n_active, panels, nodes, k)
        kernel = np.empty((self.n_active, n_panels, n_nodes, self.k))
        for p, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
            for j, x in enumerate(x_nodes):
                kernel[:, p, j] = engine.kernel_q(mid + half * x)[: self.n_active] @ left
            for start in range(0, self.n_active, 4096):  # values -> coefficients, in place, in slices
                rows = kernel[start : start + 4096, p]
                rows[...] = np.einsum("ij,cjk->cik", to_coefficients, rows)
            n_grid = max(9, math.ceil((hi - lo) * omega / _GRID_STEP) + 1)
            x_grid = np.linspace(-1.0, 1.0, n_grid)
            self.panels.append((mid, half, x_grid, chebyshev.chebvander(x_grid, n_nodes - 1)))
        self.n_nodes = n_nodes
        self.coefficient_kernel = kernel.reshape(self.n_active, n_panels * n_nodes * self.k)
        self.compressed = None
        if engine.pair_grid is not None and self.n_active > 1:
            # grid classes are neighbouring distances, so their kernels are
            # nearly dependent: (counts @ u s) @ vt at the numerical rank costs
            # a third of counts @ kernel (rank ~190 of ~570 classes, 300-atom C60 case)
            # (through the eigenvectors of the Gram matrix: a fraction of an SVD's cost; the singular values
            # kept are above ~1e-7 of the largest, resolved well by eigenvalues above 1e-14 of the largest)
            eigenvalues, vectors = np.linalg.eigh(self.coefficient_kernel @ self.coefficient_kernel.T)
            top = float(eigenvalues[-1])
            rank = int(np.count_nonzero(eigenvalues > _GRID_RANK_TOLERANCE**2 * top)) if top > 0 else 0
            if rank * (self.n_active + self.coefficient_kernel.shape[1]) < self.coefficient_kernel.size:
                basis = np.ascontiguousarray(vectors[:, ::-1][:, :rank])  # orthonormal: CK ~ basis @ basis.T @ CK
                self.compressed = (basis, basis.T @ self.coefficient_kernel)

    def search(self, counts: np.ndarray, frames: Sequence[_Data]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per frame, (zoom, a, objective) per motif at the global optimum; a is (m, k), unnormalised."""
        m = counts.shape[0]
        if self.fixed is not None:
            a = counts @ self.kernel
            aa = (a * a).sum(1)
            zoom = np.full(m, self.fixed)
            pen, _ = _penalty(zoom, self.low, self.high, self.sigma)
            return [(zoom, a, data.yy - _explained(a @ data.b, aa) + pen**2) for data in frames]
        n, k = self.n_nodes, self.k
        if self.compressed is not None:
            coefficients = (counts @ self.compressed[0]) @ self.compressed[1]
        else:
            coefficients = counts @ self.coefficient_kernel
        coefficients = coefficients.reshape(m, len(self.panels), n, k)
        shared = []
        for p, (mid, half, x_grid, vander) in enumerate(self.panels):
            c = coefficients[:, p]
            gram = np.matmul(c, c.transpose(0, 2, 1))  # (m, n, n): of |a|^2
            aa = np.einsum("gi,mij,gj->mg", vander, gram, vander, optimize=True)
            pen, _ = _penalty(mid + half * x_grid, self.low, self.high, self.sigma)
            shared.append((gram, aa, pen**2))
        return [self._search_frame(coefficients, shared, data) for data in frames]

    def _search_frame(self, coefficients, shared, data: _Data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m, n, k = coefficients.shape[0], self.n_nodes, self.k
        best_f = np.full(m, np.inf)
        best_panel = np.zeros(m, dtype=np.int64)
        best_x = np.zeros(m)
        step = np.zeros(m)
        projections = []
        for p, ((mid, half, x_grid, vander), (_, aa, pen2)) in enumerate(zip(self.panels, shared)):
            proj = coefficients[:, p] @ data.b  # (m, n): coefficients of <a, b>
            projections.append(proj)
            ab = proj @ vander.T  # (m, g)
            f = data.yy - _explained(ab, aa) + pen2
            g = np.argmin(f, axis=1)
            f_g = f[np.arange(m), g]
            better = f_g < best_f
            best_f[better] = f_g[better]
            best_panel[better] = p
            best_x[better] = x_grid[g[better]]
            step[better] = x_grid[1] - x_grid[0]
        zoom = np.empty(m)
        f_out = np.empty(m)
        a = np.empty((m, k))
        for p, (mid, half, _, _) in enumerate(self.panels):
            rows = np.flatnonzero(best_panel == p)
            if rows.size == 0:
                continue
            gram = shared[p][0][rows]
            x, f = self._newton(best_x[rows], step[rows], best_f[rows], projections[p][rows], gram, mid, half, data)
            t, _, _ = _chebyshev_basis(x, n)
            zoom[rows] = mid + half * x
            f_out[rows] = f
            a[rows] = np.einsum("mj,mjk->mk", t, coefficients[rows, p])
        return zoom, a, f_out

    def _objective(self, x, proj, gram, mid, half, data: _Data, derivatives=True):
        """Objective at x in [-1, 1] of a panel, and (optionally) its first two derivatives in x."""
        t, d1, d2 = _chebyshev_basis(x, self.n_nodes)
        ab = (t * proj).sum(1)
        gt = np.einsum("mij,mj->mi", gram, t)
        aa = (t * gt).sum(1)
        pen, slope = _penalty(mid + half * x, self.low, self.high, self.sigma)
        f = data.yy - _explained(ab, aa) + pen**2
        if not derivatives:
            return f, None, None
        ab1, ab2 = (d1 * proj).sum(1), (d2 * proj).sum(1)
        gd1 = np.einsum("mij,mj->mi", gram, d1)
        aa1 = 2.0 * (d1 * gt).sum(1)
        aa2 = 2.0 * ((d2 * gt).sum(1) + (d1 * gd1).sum(1))
        good = aa > 0
        safe = np.where(good, aa, 1.0)
        # g = ab^2 / aa, the part of |b|^2 explained; f = yy - g + penalty^2
        g1 = 2.0 * ab * ab1 / safe - ab * ab * aa1 / safe**2
        g2 = (
            2.0 * (ab1 * ab1 + ab * ab2) / safe
            - 4.0 * ab * ab1 * aa1 / safe**2
            - ab * ab * aa2 / safe**2
            + 2.0 * ab * ab * aa1 * aa1 / safe**3
        )
        dz = slope * half  # d(penalty)/dx
        f1 = -np.where(good, g1, 0.0) + 2.0 * pen * dz
        f2 = -np.where(good, g2, 0.0) + 2.0 * dz * dz
        return f, f1, f2

    def _newton(self, x0, step, f0, proj, gram, mid, half, data: _Data):
        """Safeguarded Newton on the interpolant within [x0 - step, x0 + step].

        Returns the best point seen (never worse than x0) and its objective.
        """
        lo = np.maximum(x0 - step, -1.0)
        hi = np.minimum(x0 + step, 1.0)
        x = x0.copy()
        best_x, best_f = x0.copy(), f0.copy()
        active = np.ones(x.size, dtype=bool)
        for _ in range(_NEWTON_STEPS):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            xi = x[idx]
            f, f1, f2 = self._objective(xi, proj[idx], gram[idx], mid, half, data)
            better = f < best_f[idx]
            best_x[idx[better]], best_f[idx[better]] = xi[better], f[better]
            # the slope's sign says on which side of x the minimum lies: shrink the bracket
            rising = f1 > 0
            hi[idx] = np.where(rising, xi, hi[idx])
            lo[idx] = np.where(rising, lo[idx], xi)
            with np.errstate(divide="ignore", invalid="ignore"):
                newton = xi - f1 / f2
            inside = (f2 > 0) & (newton >= lo[idx]) & (newton <= hi[idx])
            new = np.where(f1 == 0, xi, np.where(inside, newton, 0.5 * (lo[idx] + hi[idx])))
            x[idx] = new
            active[idx] = (np.abs(new - xi) > 1e-14) & (hi[idx] - lo[idx] > 1e-14)
        f, _, _ = self._objective(x, proj, gram, mid, half, data, derivatives=False)
        better = f < best_f
        best_x[better], best_f[better] = x[better], f[better]
        return best_x, best_f


# ============================================================================ three zooms: batched LM


@dataclass
class _Entries:
    """The nonzero class counts of a block of motifs, one entry per (motif, class)."""

    n_motifs: int
    rows: np.ndarray  # motif of each entry (sorted)
    count: np.ndarray  # its pairs of that class
    u2: tuple[np.ndarray, np.ndarray, np.ndarray]  # the class's dx^2, dy^2, dz^2 at zoom 1 (Å^2)
    column: np.ndarray  # table column of distance 0 for the class's element pair (bin index added later)
    per_row: np.ndarray  # entries per motif

    def subset(self, keep: np.ndarray) -> _Entries:
        """The entries of the motifs where ``keep`` is True, renumbered."""
        selected = keep[self.rows]
        renumber = np.cumsum(keep) - 1
        return _Entries(
            int(keep.sum()),
            renumber[self.rows[selected]],
            self.count[selected],
            tuple(u[selected] for u in self.u2),
            self.column[selected],
            self.per_row[keep],
        )


class _AnisoZoomRefiner:
    """Three zooms (x, y, z) for many motifs, each its own, by Levenberg-Marquardt with the scale eliminated.

    The coefficients of a motif in the engine's basis are a = sum_c n_c K_e(c)(d_c(z)),
    d_c(z) = sqrt(sum_k z_k^2 u_ck^2), with K_e the kernel of element pair e as a
    function of the pair distance. Tables hold K_e^(p)(j h) / p! on bins of
    width h; a class at d = j h + delta adds n_c sum_p delta^p T_p[j]. Summing
    the moments n_c delta^p per (motif, bin) is a histogram (np.bincount),
    and a is then a few matrix products; the zoom derivatives (for the
    Jacobian) come the same way from the next orders, with
    d d_c / d z_k = z_k u_ck^2 / d_c.
    """

    def __init__(self, engine: MotifPDFEngine, params: PDFParameters, elements: Sequence[str], window):
        self.engine = engine
        self.zlo, self.zhi = window
        # any three different factors select the anisotropic classes; these are a
        # hair below the window so every class that can reach is counted
        self.probe = (self.zlo * (1 - 1e-9), self.zlo * (1 - 1e-9), self.zlo * (1 - 2e-9))
        self.n_active = engine.n_active(self.probe)
        classes = engine.classes(self.probe)
        comps = classes.components[: self.n_active]
        codes = classes.code[: self.n_active]
        self.u2 = comps**2
        left, _ = engine.projection_factors()
        transform = engine.transform()
        model = ClusterModel(elements, params)
        distance = np.sqrt(self.u2.sum(axis=1))
        tables, column = [], np.zeros(self.n_active, dtype=np.int64)
        offset = 0
        for code in np.unique(codes):
            members = codes == code
            j_lo = math.floor(distance[members].min() * self.zlo / _BIN) - 1
            j_hi = math.ceil(distance[members].max() * self.zhi / _BIN) + 1
            table = _taylor_table(model, params, transform, left, int(code), j_lo, j_hi, _TAYLOR_FINAL + 1)
            column[members] = offset - j_lo
            offset += table.shape[1]
            tables.append(table)
        self.column = column
        self.n_columns = offset
        self.k = left.shape[1]
        table = np.concatenate(tables, axis=1) if tables else np.zeros((_TAYLOR_FINAL + 1, 0, self.k))
        self.value_tables = [np.ascontiguousarray(table[p]) for p in range(table.shape[0])]
        # K'(j h + delta) = sum_p (p + 1) T_{p+1} delta^p
        self.slope_tables = [np.ascontiguousarray((p + 1) * table[p + 1]) for p in range(table.shape[0] - 1)]
        self.slope_tables32 = [t.astype(np.float32) for t in self.slope_tables]
        # aniso class -> isotropic class, so the isotropic counts need no second count of pairs
        iso = engine.classes(1.0)
        mapping = np.zeros(classes.n_classes, dtype=np.int64)
        mapping[classes.of_pair] = iso.of_pair
        self.to_iso = sparse.csr_matrix(
            (np.ones(self.n_active), (mapping[: self.n_active], np.arange(self.n_active))),
            shape=(iso.n_classes, self.n_active),
        )

    def entries(self, counts: np.ndarray) -> _Entries:
        rows, cls = np.nonzero(counts)
        return _Entries(
            counts.shape[0],
            rows,
            counts[rows, cls],
            (self.u2[cls, 0], self.u2[cls, 1], self.u2[cls, 2]),
            self.column[cls],
            np.bincount(rows, minlength=counts.shape[0]),
        )

    def iso_counts(self, counts: np.ndarray, n_iso: int) -> np.ndarray:
        """Isotropic class counts (first ``n_iso`` classes) from anisotropic ones."""
        return np.ascontiguousarray((self.to_iso[:n_iso] @ counts.T).T)

    def evaluate(self, entries: _Entries, zoom: np.ndarray, order: int, slope_order: int = 0):
        """a (m, k) and, when ``slope_order`` > 0, da/dz (m, 3, k) at per-motif zooms (m, 3).

        ``order`` and ``slope_order``: Taylor terms for the kernels and for their
        slopes. The slopes' products run in float32 (relative error ~1e-7, twice
        as fast): the Jacobian only steers the steps.
        """
        m = entries.n_motifs
        square = [np.repeat(zoom[:, axis] ** 2, entries.per_row) for axis in range(3)]
        distance = np.sqrt(square[0] * entries.u2[0] + square[1] * entries.u2[1] + square[2] * entries.u2[2])
        bins = np.rint(distance * (1.0 / _BIN))
        delta = distance - bins * _BIN
        flat = entries.rows * self.n_columns + (entries.column + bins.astype(np.int64))
        size = m * self.n_columns
        a = np.zeros((m, self.k))
        weight = entries.count
        for p in range(order):
            moments = np.bincount(flat, weights=weight, minlength=size).reshape(m, self.n_columns)
            a += moments @ self.value_tables[p]
            if p + 1 < order:
                weight = weight * delta
        if not slope_order:
            return a, None
        jac = np.zeros((m, 3, self.k))
        inverse = entries.count / distance
        for axis in range(3):
            weight = inverse * np.repeat(zoom[:, axis], entries.per_row) * entries.u2[axis]
            for p in range(slope_order):
                moments = np.bincount(flat, weights=weight, minlength=size).reshape(m, self.n_columns)
                jac[:, axis] += moments.astype(np.float32) @ self.slope_tables32[p]
                weight = weight * delta
        return a, jac

    def refine(self, entries: _Entries, starts: Sequence[np.ndarray], data: _Data, settings: FitSettings):
        """LM from each set of per-motif start zooms (m, 3); the best end per motif, (zoom (m, 3), a (m, k)).

        ``a`` is evaluated accurately at the returned zooms.
        """
        best_zoom, best_f = self._levenberg_marquardt(entries, starts[0], data, settings, _LM_TOLERANCE)
        for start in starts[1:]:
            # a rough descent first; only the motifs where it is heading somewhere better are polished
            zoom, f = self._levenberg_marquardt(entries, start, data, settings, _LM_SCREEN, _SCREEN_ORDERS)
            promising = f < best_f
            if promising.any():
                sub = entries.subset(promising)
                zoom_p, f_p = self._levenberg_marquardt(sub, zoom[promising], data, settings, _LM_TOLERANCE)
                zoom[promising], f[promising] = zoom_p, f_p
            better = promising & (f < best_f)
            best_zoom[better], best_f[better] = zoom[better], f[better]
        a, _ = self.evaluate(entries, best_zoom, _TAYLOR_FINAL)
        return best_zoom, a

    def _levenberg_marquardt(
        self,
        entries: _Entries,
        start: np.ndarray,
        data: _Data,
        settings: FitSettings,
        tolerance: float,
        orders: tuple[int, int] = (_TAYLOR_ITER, _TAYLOR_SLOPE),
    ):
        """LM from per-motif start zooms (m, 3); returns (zoom (m, 3), objective (m,)).

        The data part is modelled by Gauss-Newton plus a secant term: the
        residuals are large (Rwp ~0.5), where J^T J misses much of the
        curvature and the iteration crawls, so a structured secant term S
        (Dennis, Gay and Welsch's update, as in NL2SOL, ACM TOMS 7, 348 (1981))
        learns the rest from the gradients along the way. The restraints are
        modelled exactly (piecewise quadratic), so steps across a bound of
        the restraint window are not wasted.
        """
        bounds = settings.zoom_bounds
        sigma = settings.zoom_sigma
        m = entries.n_motifs
        zoom = np.clip(start, self.zlo, self.zhi)
        a, jac = self.evaluate(entries, zoom, *orders)
        f_data, gn, gradient = _data_model(a, jac, data)
        f = f_data + _penalty_sum(zoom, bounds, sigma)
        secant = np.zeros((m, 3, 3))
        damping = np.full(m, _LM_DAMPING)
        active = np.ones(m, dtype=bool)
        current, current_idx = entries, np.arange(m)  # the entries of the motifs still iterating
        for _ in range(_LM_STEPS):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            if idx.size < current_idx.size:
                current = current.subset(active[current_idx])
                current_idx = idx
            model = gn[idx] + secant[idx]
            diag = np.einsum("mii->mi", gn[idx])
            scale = np.maximum(diag, 1e-12 * diag.sum(axis=1, keepdims=True) + 1e-300)
            damped = model + damping[idx, None, None] * scale[:, :, None] * np.eye(3)
            step = _restrained_step(damped, gradient[idx], zoom[idx], bounds, sigma)
            trial = np.clip(zoom[idx] + step, self.zlo, self.zhi)
            taken = trial - zoom[idx]
            a_t, jac_t = self.evaluate(current, trial, *orders)
            f_data_t, gn_t, gradient_t = _data_model(a_t, jac_t, data)
            f_t = f_data_t + _penalty_sum(trial, bounds, sigma)
            gain = f[idx] - f_t
            # the model: f_data(z + d) ~ f_data + 2 g.d + d.H.d (g, H: half the gradient and Hessian), restraints exact
            predicted = f[idx] - (
                f_data[idx]
                + 2.0 * np.einsum("mi,mi->m", gradient[idx], taken)
                + np.einsum("mi,mij,mj->m", taken, model, taken)
                + _penalty_sum(trial, bounds, sigma)
            )
            accepted = gain > 0
            ok = idx[accepted]
            # secant update of S on accepted steps: S s ~ y - J'J s, from the data part's gradients
            s_ = taken[accepted]
            y_ = gradient_t[accepted] - gradient[ok]
            y_s = y_ - np.einsum("mij,mj->mi", gn_t[accepted], s_)
            secant[ok] = _dgw_update(secant[ok], s_, y_, y_s)
            zoom[ok], f[ok], f_data[ok] = trial[accepted], f_t[accepted], f_data_t[accepted]
            gn[ok], gradient[ok] = gn_t[accepted], gradient_t[accepted]
            ratio = np.where(predicted > 0, gain / np.where(predicted > 0, predicted, 1.0), -1.0)
            damping[idx] = np.where(
                ratio > 0.75,
                np.maximum(damping[idx] / 5.0, 1e-9),
                np.where(ratio < 0.25, damping[idx] * 8.0, damping[idx]),
            )
            # as MINPACK's ftol: the objective cannot drop by more than a tiny fraction any more
            done = (
                (accepted & (gain <= tolerance * f[idx]))
                | (np.abs(predicted) <= tolerance * f[idx])
                | (np.abs(taken).max(axis=1) < 1e-10)
                | (damping[idx] > 1e10)
            )
            active[idx[done]] = False
        return zoom, f


def _solve3(system: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Batched solve of (m, 3, 3) systems; a singular one gives a steepest-descent step."""
    try:
        return np.linalg.solve(system, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = rhs / np.maximum(np.einsum("mii->mi", system), 1e-300)
        good = np.abs(np.linalg.det(system)) > 0
        if good.any():
            out[good] = np.linalg.solve(system[good], rhs[good][..., None])[..., 0]
        return out


def _dgw_update(secant: np.ndarray, s: np.ndarray, y: np.ndarray, y_s: np.ndarray) -> np.ndarray:
    """Dennis-Gay-Welsch update of the residual-curvature term S (batched 3x3), with NL2SOL's sizing."""
    ys = np.einsum("mi,mi->m", y, s)
    sss = np.einsum("mi,mij,mj->m", s, secant, s)
    sy_s = np.abs(np.einsum("mi,mi->m", s, y_s))
    sizing = np.where(sss != 0, np.minimum(1.0, sy_s / np.where(sss != 0, np.abs(sss), 1.0)), 1.0)
    secant = secant * sizing[:, None, None]
    v = y_s - np.einsum("mij,mj->mi", secant, s)
    good = ys > 1e-14 * np.sqrt(np.einsum("mi,mi->m", y, y) * np.einsum("mi,mi->m", s, s))
    safe = np.where(good, ys, 1.0)[:, None, None]
    update = (v[:, :, None] * y[:, None, :] + y[:, :, None] * v[:, None, :]) / safe
    update -= np.einsum("mi,mi->m", v, s)[:, None, None] * y[:, :, None] * y[:, None, :] / safe**2
    return np.where(good[:, None, None], secant + update, 0.0)


def _data_model(a, jac, data: _Data):
    """(sum of squared data residuals, Gauss-Newton Hessian (m, 3, 3), gradient (m, 3)), the scale eliminated.

    The Hessian and gradient are half those of the sum (J^T J and J^T r).
    """
    ab = a @ data.b
    aa = (a * a).sum(1)
    good = aa > 0
    safe = np.where(good, aa, 1.0)
    s = np.where(good, ab / safe, 0.0)
    residual = s[:, None] * a - data.b
    f = (residual * residual).sum(1) + data.outside
    # variable projection: d(s a)/dz_k = s J_k + a ds/dz_k, ds/dz_k = (J_k.b - 2 s a.J_k) / |a|^2
    jb = jac @ data.b
    aj = np.einsum("mk,mjk->mj", a, jac)
    ds = np.where(good[:, None], (jb - 2.0 * s[:, None] * aj) / safe[:, None], 0.0)
    dres = s[:, None, None] * jac + ds[:, :, None] * a[:, None, :]
    hessian = np.matmul(dres, dres.transpose(0, 2, 1))
    gradient = np.einsum("mjk,mk->mj", dres, residual)
    return f, hessian, gradient


def _penalty_sum(zoom: np.ndarray, bounds: tuple[float, float], sigma: float) -> np.ndarray:
    """Sum over the zooms of the squared restraint residuals, (m,)."""
    pen, _ = _penalty(zoom, bounds[0], bounds[1], sigma)
    return (pen * pen).sum(axis=1)


def _restrained_step(system, gradient, zoom, bounds, sigma, passes: int = 3) -> np.ndarray:
    """Minimise 2 g.d + d.A.d + sum_k restraint_k(z_k + d_k)^2 over d, for (m, 3, 3) A.

    The restraints are quadratic on each side of the window: guess which
    zooms end up outside it, solve, and guess again from the step's end.
    """
    low, high = bounds
    inv = 1.0 / sigma**2
    outside = _penalty(zoom, low, high, sigma)[1] != 0  # start from the restraints active now
    step = np.zeros_like(zoom)
    for _ in range(passes):
        target = np.where(zoom + step < low, low, high)
        curvature = np.where(outside, inv, 0.0)
        rhs = -(gradient + curvature * (zoom - target))
        step = _solve3(system + curvature[:, :, None] * np.eye(3), rhs)
        end = zoom + step
        now_outside = (end < low) | (end > high)
        if np.array_equal(now_outside, outside):
            break
        outside = now_outside
    return step


def _taylor_table(model: ClusterModel, params: PDFParameters, transform, left, code, j_lo, j_hi, order):
    """T[p, j] = K^(p)(d_j) / p! for p < order, d_j = (j_lo + j) h: one element pair's kernel in the basis.

    K(d) is the engine's class kernel (srreal's peak sampled on its grid, sine
    transformed, in the reduced basis) without the cut of each peak at 3.3e-6
    of its height, which makes it smooth in d: Chebyshev fits on panels of
    ``_TABLE_PANEL_BINS`` bins then give its derivatives to ~1e-12.
    """
    if not isinstance(transform, RealSpaceTransform):
        raise InputError("Three-zoom batched fits need the real-space calculator.")
    lim = transform.limits
    r_ext = np.arange(lim.ext_lo, lim.ext_hi) * lim.rstep
    sines = (np.sin(np.outer(r_ext, transform.q)) * lim.rstep) @ left  # (n_ext, k)
    a, b = divmod(code, model.n_species)
    weight = 2.0 * float(model.code_weight(np.array([code]), transform)[0, 0])
    msd = model.uiso[a] + model.uiso[b]
    per, n = _TABLE_PANEL_BINS, _TABLE_NODES
    n_panels = math.ceil((j_hi - j_lo + 1) / per)
    width = per * _BIN
    centres = (j_lo + per * np.arange(n_panels) + 0.5 * (per - 1)) * _BIN
    nodes = (centres[:, None] + 0.5 * width * _chebyshev_nodes(n)).ravel()
    values = np.empty((nodes.size, left.shape[1]))
    for start in range(0, nodes.size, 256):
        d = nodes[start : start + 256]
        fwhm = jeong_fwhm(d, msd, params.delta2, params.qbroad)
        # whole Gaussians: far from its centre a peak underflows to 0
        peaks = gaussian_peak(r_ext[None, :] - d[:, None], fwhm[:, None]) / d[:, None]
        values[start : start + 256] = weight * (peaks @ sines)
    values = values.reshape(n_panels, n, -1)
    to_coefficients = _values_to_coefficients(n)
    x_bins = (2.0 * (np.arange(per) + 0.5) / per) - 1.0
    table = np.empty((order, n_panels * per, left.shape[1]))
    for p in range(order):
        derivative = chebyshev.chebder(np.eye(n), m=p, axis=0) if p else np.eye(n)
        at_bins = chebyshev.chebvander(x_bins, n - 1 - p) @ derivative  # (per, n) on coefficients
        operator = at_bins @ to_coefficients * ((2.0 / width) ** p / math.factorial(p))
        table[p] = np.einsum("tn,cnk->ctk", operator, values).reshape(n_panels * per, -1)
    return table


# ============================================================================ general: one motif at a time


class _ExactMotif:
    """G(r) of one fixed cluster for any zoom, Biso and delta2, computed as :func:`cluster_pdf` does.

    The pair classes (isotropic, or equal |dx|, |dy|, |dz| for three zooms) are
    found once, and the Q-space machinery is kept while what shapes it (the
    largest U, delta2; for Debye the longest pair) stays the same.
    """

    def __init__(self, elements: Sequence[str], positions: np.ndarray, r: np.ndarray, anisotropic: bool):
        self.elements = list(elements)
        self.r = r
        _, species = species_index(self.elements)
        n_species = int(species.max()) + 1
        i, j = np.triu_indices(len(self.elements), 1)
        diff = positions[j] - positions[i]
        code = pair_code(species[i], species[j], n_species)
        grouped = group_pairs(code, np.abs(diff) if anisotropic else np.sqrt((diff**2).sum(axis=1)))
        self.classes = PairClasses(grouped.code, grouped.components, grouped.size)
        self.species_counts = np.bincount(species, minlength=n_species)[None, :]
        self._transforms: dict[tuple, object] = {}

    def _transform(self, key: tuple, make):
        if key not in self._transforms:
            if len(self._transforms) >= 8:
                self._transforms.pop(next(iter(self._transforms)))
            self._transforms[key] = make()
        return self._transforms[key]

    def pdf(self, params: PDFParameters) -> np.ndarray:
        model = ClusterModel(self.elements, params)
        classes = self.classes
        distance = classes.distances(params.zoom_xyz)
        if params.calculator == "real":
            transform = self._transform(
                ("real", model.max_uiso, params.delta2), lambda: model.transform(self.r, 0.0)
            )
            keep = model.reach_test(transform)(distance)
        else:
            # the quadrature only has to resolve the longest pair: 10 % steps, as the engine does
            step = max(1, math.ceil(math.log(max(float(distance.max()), 1.0)) / math.log(1.1)))
            transform = self._transform(("debye", step), lambda: model.transform(self.r, 1.1**step))
            keep = np.ones(distance.size, dtype=bool)
        classes = PairClasses(classes.code[keep], classes.components[keep], classes.size[keep])
        distance = distance[keep]
        if distance.size == 0:
            return np.zeros(self.r.size)
        fwhm = model.class_fwhm(classes, distance)
        weight = model.code_weight(classes.code, transform)
        if weight.shape[1] == 1:
            # Q-independent strengths: one pass over every class
            total = transform.sum_q(distance, fwhm, 2.0 * classes.size * weight[:, 0])
        else:
            total = np.zeros(transform.n_q)
            for code in np.unique(classes.code):
                members = classes.code == code
                first = int(np.flatnonzero(members)[0])
                total += weight[first] * transform.sum_q(distance[members], fwhm[members], 2.0 * classes.size[members])
        norm = model.normalisation(self.species_counts, transform)
        return ((total[None, :] / norm) @ transform.projection)[0]


class _GeneralFit:
    """Per-motif ``scipy.optimize.least_squares`` on exact evaluations (:class:`_ExactMotif`, as :func:`cluster_pdf`).

    Variables: the zoom(s) (hard-bounded to the search window, restrained as
    srfit does), Biso per free element (``biso_bounds``), delta2
    (``delta2_bounds``); the scale, when free, is eliminated (best scale for
    each evaluation), which is the same minimum as refining it.
    """

    def __init__(self, settings: FitSettings, symbols: Sequence[str], window, data: _Data):
        self.settings = settings
        self.data = data
        self.params = settings.pdf_parameters()
        self.symbols = list(dict.fromkeys(symbols))
        free = set(settings.free)
        self.scale_free = "scale" in free
        self.zoom_names = (
            ("zoomx", "zoomy", "zoomz") if "zoom3" in free else ("zoom",) if "zoom" in free else ()
        )
        elements = list(dict.fromkeys(bare_symbol(s) for s in self.symbols))
        self.biso_elements = [e for e in elements if "biso" in free or f"biso_{e}" in free]
        self.delta2_free = "delta2" in free
        names, start, lower, upper, scale, steps = [], [], [], [], [], []
        for name in self.zoom_names:
            names.append(name)
            start.append(settings.zoom_start)
            lower.append(window[0])
            upper.append(window[1])
            scale.append(1e-3)
            steps.append(1e-6)
        for element in self.biso_elements:
            names.append(f"biso_{element}")
            start.append(self.params.biso_of(element))
            lower.append(settings.biso_bounds[0])
            upper.append(settings.biso_bounds[1])
            scale.append(0.1)
            steps.append(1e-4)
        if self.delta2_free:
            names.append("delta2")
            start.append(settings.delta2)
            lower.append(settings.delta2_bounds[0])
            upper.append(settings.delta2_bounds[1])
            scale.append(0.1)
            steps.append(1e-4)
        self.names = names
        self.start = np.array(start, dtype=float)
        self.lower = np.array(lower, dtype=float)
        self.upper = np.array(upper, dtype=float)
        self.x_scale = np.array(scale, dtype=float)
        self.steps = np.array(steps, dtype=float)
        self.n_zoom = len(self.zoom_names)

    def _parameters(self, theta: np.ndarray) -> PDFParameters:
        values = dict(zip(self.names, theta))
        biso = dict(self.params.biso)
        for element in self.biso_elements:
            value = float(values[f"biso_{element}"])
            biso[element] = value
            for symbol in self.symbols:
                if bare_symbol(symbol) == element:
                    biso[symbol] = value
        if self.n_zoom == 3:
            zoom = tuple(float(values[name]) for name in self.zoom_names)
        elif self.n_zoom == 1:
            zoom = float(values["zoom"])
        else:
            zoom = self.settings.zoom_start
        delta2 = float(values["delta2"]) if self.delta2_free else self.settings.delta2
        return replace(self.params, biso=biso, zoom=zoom, delta2=delta2)

    def _model(self, motif: _ExactMotif, theta) -> np.ndarray:
        return motif.pdf(self._parameters(theta))

    def _scale(self, g: np.ndarray) -> float:
        if not self.scale_free:
            return self.settings.scale_start
        gg = float(g @ g)
        return float(g @ self.data.y) / gg if gg > 0 else 0.0

    def _residual(self, theta, motif: _ExactMotif) -> np.ndarray:
        g = self._model(motif, theta)
        out = self._scale(g) * g - self.data.y
        if self.n_zoom:
            low, high = self.settings.zoom_bounds
            pen, _ = _penalty(theta[: self.n_zoom], low, high, self.settings.zoom_sigma)
            out = np.concatenate([out, pen])
        return out

    def fit(self, elements, positions, zoom_start: float | None) -> tuple[float, dict]:
        """(Rwp, refined values) of one motif; raises ValueError for a motif with nothing to fit."""
        theta = self.start.copy()
        if zoom_start is not None and self.n_zoom:
            theta[: self.n_zoom] = zoom_start
        theta = np.clip(theta, self.lower, self.upper)
        motif = _ExactMotif(elements, positions, self.data.r, self.n_zoom == 3)
        if not np.any(self._model(motif, theta)):
            raise ValueError(_ZERO_PDF)
        if theta.size:
            solution = least_squares(
                self._residual, theta, args=(motif,), bounds=(self.lower, self.upper),
                method="trf", x_scale=self.x_scale, diff_step=self.steps, xtol=1e-10, ftol=1e-10, gtol=1e-10,
                max_nfev=100 * (theta.size + 1),
            )
            theta = solution.x
        g = self._model(motif, theta)
        scale = self._scale(g)
        rwp = math.sqrt(float(((self.data.y - scale * g) ** 2).sum()) / self.data.yy)
        values = {"scale": scale}
        if self.n_zoom == 3:
            values.update(zip(self.zoom_names, (float(v) for v in theta[:3])))
        else:
            values["zoom"] = float(theta[0]) if self.n_zoom else self.settings.zoom_start
        values.update((name, float(v)) for name, v in zip(self.names[self.n_zoom :], theta[self.n_zoom :]))
        if not (math.isfinite(rwp) and all(math.isfinite(v) for v in values.values())):
            raise ValueError(_NOT_FINITE)
        return rwp, values


# ============================================================================ the public class


class MotifFitter:
    """Fits motifs (masks) of one starting model to one dataset, or to the frames of a series, with one set of (resolved) settings.

    - ``elements``, ``positions_angstrom``: the starting model's atoms (Å).
    - ``membership``: (n_atoms, N) bool, as from :func:`motex_db.catalogue.membership_matrix`.
    - ``r_obs`` (Å), ``g_obs`` (Å^-2): the data; only points with rmin <= r <= rmax are used.
      ``g_obs`` may be (n_frames, n_points): frames of a series on one r grid, fitted
      together by :meth:`fit_frames` (what does not depend on the data is computed once).
    - ``settings``: :class:`FitSettings` already resolved against the data.

    Building the fitter does the work shared by every motif (pair classes,
    kernels on the zoom search window); :meth:`fit` fits any number of masks.
    Which numerics run (isotropic search, three-zoom LM, or the general
    per-motif path) follows from the settings; see the module docstring.
    """

    def __init__(
        self,
        elements: Sequence[str],
        positions_angstrom: ArrayLike,
        membership: ArrayLike,
        r_obs: ArrayLike,
        g_obs: ArrayLike,
        settings: FitSettings,
    ):
        if not isinstance(settings, FitSettings):
            raise InputError(f"settings must be FitSettings, not {type(settings).__name__}.")
        if not settings.is_resolved:
            raise InputError("Resolve the fit settings against the dataset (FitSettings.resolved) before fitting.")
        self.settings = settings
        try:
            r = np.asarray(r_obs, dtype=float)
            g = np.asarray(g_obs, dtype=float)
        except (TypeError, ValueError):
            raise InputError("The data r and G must be numbers.") from None
        frames = g if g.ndim == 2 else g[None, :]
        if r.ndim != 1 or g.ndim not in (1, 2) or frames.shape[1:] != r.shape or frames.shape[0] == 0:
            raise InputError(f"The data r and G must be 1-D arrays of one length, not shapes {r.shape} and {g.shape}.")
        if not (np.all(np.isfinite(r)) and np.all(np.isfinite(g))):
            raise InputError("The data r and G must be finite numbers.")
        inside = (r >= settings.rmin - _RANGE_TOLERANCE) & (r <= settings.rmax + _RANGE_TOLERANCE)
        if inside.sum() < _MIN_POINTS:
            raise InputError(
                f"Only {int(inside.sum())} data points lie in the fit range {settings.rmin:g}-{settings.rmax:g} Å; "
                f"at least {_MIN_POINTS} are needed."
            )
        r_fit, ys = r[inside], frames[:, inside]
        if np.any(np.einsum("fr,fr->f", ys, ys) == 0):
            raise InputError(f"The data are zero everywhere in the fit range {settings.rmin:g}-{settings.rmax:g} Å.")
        if len(elements) < 2:
            raise InputError(f"A starting model needs at least two atoms to have a PDF, not {len(elements)}.")
        params = settings.pdf_parameters()
        # the isotropic search is linear in the class counts: a model without
        # repeated distances may put its pairs on a distance grid (engine.py)
        self.engine = MotifPDFEngine(
            elements, positions_angstrom, membership, r_fit, params, kernel_cache_size=2,
            pair_grid_angstrom=PAIR_GRID_ANGSTROM if settings.uses_pair_grid else None,
        )
        self.elements = [str(e).strip() for e in elements]
        self.positions = np.asarray(positions_angstrom, dtype=float)
        present = {bare_symbol(e) for e in self.elements}
        for name in settings.free:
            if name.startswith("biso_") and name[5:] not in present:
                raise InputError(f"{name} is refined but the starting model has no {name[5:]} atoms.")
        for element in sorted(present):
            if "biso" in settings.free or f"biso_{element}" in settings.free:
                low, high = settings.biso_bounds
                value = params.biso_of(element)
                if not low <= value <= high:
                    raise InputError(
                        f"The start Biso of {element} ({value:g} Å^2) lies outside biso_bounds ({low:g}, {high:g})."
                    )
        if "delta2" in settings.free and not settings.delta2_bounds[0] <= settings.delta2 <= settings.delta2_bounds[1]:
            raise InputError(
                f"The start delta2 ({settings.delta2:g} Å^2) lies outside delta2_bounds {settings.delta2_bounds}."
            )
        _, right = self.engine.projection_factors()
        self.frames = []
        for y in ys:
            b = right @ y
            yy = float(y @ y)
            self.frames.append(_Data(r_fit, y, b, yy, max(yy - float(b @ b), 0.0)))
        self.data = self.frames[0]

        free = set(settings.free)
        self.zoom_mode = settings.zoom_mode
        zoom_free = bool(free & {"zoom", "zoom3"})
        if zoom_free:
            # beyond sigma * |G_obs| outside the restraint window the penalty alone exceeds sum G_obs^2
            # (of every frame: one window serves them all)
            reach = settings.zoom_sigma * max(d.norm for d in self.frames) * (1.0 + 1e-6) + 1e-9
            low, high = settings.zoom_bounds
            self.window = (max(low - reach, low / 1.5), min(high + reach, 1.5 * high))
        else:
            self.window = None
        self.path = (
            "batched"
            if settings.calculator == "real" and "scale" in free and free <= {"scale", "zoom", "zoom3"}
            else "general"
        )
        self._iso = None
        if settings.calculator == "real" and (self.path == "batched" or zoom_free):
            self._iso = _IsoZoomSearch(self.engine, settings, self.window)
        self._aniso = None
        if self.path == "batched" and self.zoom_mode == "xyz":
            self._aniso = _AnisoZoomRefiner(self.engine, params, self.elements, self.window)
        self._general = None
        if self.path == "general":
            self._general = [_GeneralFit(settings, self.elements, self.window, data) for data in self.frames]
            # classes that can reach the fit range at the smallest zoom tried (real calculator)
            self._n_reach = self.engine.n_active(self.window[0] if self.window else settings.zoom_start)

    # ------------------------------------------------------------------ fitting

    def fit(self, masks: ArrayLike) -> FitBatch:
        """Fit every mask ((n, N) 0/1; a 1-D mask is one motif) to the one dataset; failures are per motif, never for the batch."""
        if len(self.frames) != 1:
            raise InputError(f"This fitter holds {len(self.frames)} frames: use fit_frames.")
        return self.fit_frames(masks)[0]

    def fit_frames(self, masks: ArrayLike, frames: Sequence[int] | None = None) -> list[FitBatch]:
        """Fit every mask to every frame (or to the frames of the given indices): one :class:`FitBatch` per frame, in order."""
        started = time.perf_counter()
        masks = self._check_masks(masks)
        chosen = list(range(len(self.frames))) if frames is None else [int(i) for i in frames]
        if any(not 0 <= i < len(self.frames) for i in chosen):
            raise InputError(f"Frame indices must lie in 0..{len(self.frames) - 1}, not {chosen}.")
        n, n_frames = masks.shape[0], len(chosen)
        rwp = np.full((n_frames, n), np.nan)
        params: list[list[dict | None]] = [[None] * n for _ in range(n_frames)]
        errors: list[list[str | None]] = [[None] * n for _ in range(n_frames)]
        n_classes = max(
            self._iso.n_active if self._iso is not None else 1, self._aniso.n_active if self._aniso is not None else 1
        )
        size = int(np.clip(_COUNTS_BUDGET // max(n_classes, 1), 16, _BLOCK))
        for start in range(0, n, size):
            block = masks[start : start + size]
            if self.path == "general":
                per_frame = self._fit_general(block, chosen)
            elif self._aniso is not None:
                per_frame = self._fit_xyz(block, [self.frames[i] for i in chosen])
            else:
                per_frame = self._fit_iso(block, [self.frames[i] for i in chosen])
            for f, results in enumerate(per_frame):
                for offset, (value, values, error) in enumerate(results):
                    rwp[f, start + offset] = value
                    params[f][start + offset] = values
                    errors[f][start + offset] = error
        seconds = (time.perf_counter() - started) / (n * n_frames) if n and n_frames else 0.0
        batches = []
        for f in range(n_frames):
            ok = np.array([e is None for e in errors[f]], dtype=bool)
            rwp[f, ~ok] = np.nan
            batches.append(FitBatch(rwp=rwp[f], ok=ok, params=params[f], errors=errors[f], seconds=np.full(n, seconds)))
        return batches

    def _check_masks(self, masks: ArrayLike) -> np.ndarray:
        masks = np.asarray(masks)
        if masks.ndim == 1:
            masks = masks[None, :]
        n_permutable = self.engine.n_permutable
        if masks.ndim != 2 or masks.shape[1] != n_permutable:
            raise InputError(f"Masks must be (n_motifs, {n_permutable}) arrays of 0/1, not shape {masks.shape}.")
        if masks.dtype != bool:
            if masks.size and not np.all((masks == 0) | (masks == 1)):
                raise InputError("Masks must hold only 0/1 (or True/False).")
            masks = masks.astype(bool)
        return masks

    def _finish(self, a: np.ndarray, norm: np.ndarray, zoom: np.ndarray, data: _Data) -> list[tuple]:
        """Best scale, Rwp and values from coefficients a (m, k) at the final zoom(s) (m,) or (m, 3).

        ``norm`` is the engine's normalisation N <f>^2 per motif: G = a / N in the basis.
        """
        ab = a @ data.b
        aa = (a * a).sum(1)
        good = (aa > 0) & np.isfinite(norm)
        s = np.where(good, ab / np.where(good, aa, 1.0), 0.0)
        residual = s[:, None] * a - data.b
        with np.errstate(invalid="ignore"):
            rwp = np.sqrt((np.einsum("mk,mk->m", residual, residual) + data.outside) / data.yy)
            scale = s * norm
        zoom = zoom.reshape(len(a), -1)
        finite = np.isfinite(rwp) & np.isfinite(scale) & np.all(np.isfinite(zoom), axis=1)
        names = ("zoomx", "zoomy", "zoomz") if zoom.shape[1] == 3 else ("zoom",)
        out = []
        for i in range(len(a)):
            if not good[i]:
                out.append((np.nan, None, _ZERO_PDF))
            elif not finite[i]:
                out.append((np.nan, None, _NOT_FINITE))
            else:
                values = {"scale": float(scale[i])}
                values.update(zip(names, map(float, zoom[i])))
                out.append((float(rwp[i]), values, None))
        return out

    # Each returns, per frame, one (rwp, values, error) per motif of the block.

    def _fit_iso(self, block: np.ndarray, frames: list[_Data]) -> list[list[tuple]]:
        iso = self._iso
        counts = self.engine.class_counts(block, 1.0, iso.n_active)
        norm = self.engine.normalisation(block)[:, 0]
        found = iso.search(counts, frames)
        return [self._finish(a, norm, zoom, data) for (zoom, a, _), data in zip(found, frames)]

    def _fit_xyz(self, block: np.ndarray, frames: list[_Data]) -> list[list[tuple]]:
        aniso, iso = self._aniso, self._iso
        counts = self.engine.class_counts(block, aniso.probe, aniso.n_active)
        norm = self.engine.normalisation(block)[:, 0]
        found = iso.search(aniso.iso_counts(counts, iso.n_active), frames)
        entries = [aniso.entries(counts[start : start + _LM_BLOCK]) for start in range(0, block.shape[0], _LM_BLOCK)]
        out = []
        for (z0, _, _), data in zip(found, frames):
            zoom = np.repeat(z0[:, None], 3, axis=1)
            a = np.empty((block.shape[0], data.b.size))
            for part_entries, start in zip(entries, range(0, block.shape[0], _LM_BLOCK)):
                part = slice(start, start + _LM_BLOCK)
                # from the isotropic optimum, and from the start values as DiffPy's leastsq goes
                starts = [zoom[part], np.full_like(zoom[part], self.settings.zoom_start)]
                zoom[part], a[part] = aniso.refine(part_entries, starts, data, self.settings)
            out.append(self._finish(a, norm, zoom, data))
        return out

    def _fit_general(self, block: np.ndarray, chosen: list[int]) -> list[list[tuple]]:
        presence = self.engine.presence(block)
        zoom_starts = [None] * len(chosen)
        reachable = np.ones(block.shape[0], dtype=bool)
        if self.settings.calculator == "real":
            # pairs whose peaks cannot reach the fit range at any zoom tried give G = 0 here
            counts = self.engine.class_counts(block, 1.0, self._n_reach)
            reachable = counts.any(axis=1)
            if self._iso is not None:
                frames = [self.frames[i] for i in chosen]
                zoom_starts = [z for z, _, _ in self._iso.search(counts[:, : self._iso.n_active], frames)]
        return [
            self._fit_general_frame(block, presence, reachable, general, zoom_start)
            for general, zoom_start in zip([self._general[i] for i in chosen], zoom_starts)
        ]

    def _fit_general_frame(self, block, presence, reachable, general: _GeneralFit, zoom_start) -> list[tuple]:
        out = []
        for i in range(block.shape[0]):
            atoms = np.flatnonzero(presence[i])
            if atoms.size < 2 or not reachable[i]:
                out.append((np.nan, None, _ZERO_PDF))
                continue
            elements = [self.elements[a] for a in atoms]
            try:
                rwp, values = general.fit(
                    elements, self.positions[atoms], None if zoom_start is None else float(zoom_start[i])
                )
            except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
                message = str(exc) if str(exc) in (_ZERO_PDF, _NOT_FINITE) else "The least-squares fit failed."
                out.append((np.nan, None, message))
                continue
            out.append((rwp, values, None))
        return out
