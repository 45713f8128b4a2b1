"""The linear algebra of srreal's two PDF calculators, written as Q-space kernels.

Both calculators of DiffPy's srreal (libdiffpy 1.4) are, for fixed settings,
linear in the pair list. We write each as

    G(r) = sum_q P[q, r] * F(q),     F(q) = sum_c n_c K[c, q] / N(q)

where c runs over *pair classes* (element pair, distance), n_c is the number of
pairs in class c, K is the class kernel in Q space, N the normalisation
N <f>^2 and P the projection from Q to the output r grid (Q window, sine
transform and the qdamp envelope). The same K and P serve one cluster
(:func:`motex_db.pdf.cluster_pdf`) and 10^5 motifs (:class:`MotifPDFEngine`),
so the two agree to rounding.

Real-space calculator (srreal ``PDFCalculator``, ``PDFUtils``):

- each ordered pair (i != j) puts a Gaussian of unit area, FWHM from the Jeong
  model, at its distance d, scaled by f_i f_j / d ("normalised by pair
  distance, not by r"), sampled at the grid points k * rstep only, truncated
  where it falls below 3.33e-6 of its maximum (``DEFAULT_PEAKPRECISION``);
- only the grid points of the *extended* range [rmin - 6*2*pi/qmax,
  rmax + 6*2*pi/qmax) are kept (``cacheRlimitsData``, the "ripple" extension,
  shrunk when it and the peak tails exceed ``maxextension`` = 10 Å);
- that array, zero padded from r = 0 to a power of two, Npad, is sine
  transformed (``fftgtof``) to F(Q_k) = rstep * sum_i g_i sin(Q_k r_i),
  Q_k = k pi / (Npad rstep); F is zeroed below qmin and at and above qmax
  (qmax is capped at pi / rstep) and transformed back (``fftftog``):
  G(r) = (2/pi) qstep * sum_k F_k sin(Q_k r), then multiplied by
  exp(-(qdamp r)^2 / 2). No baseline: a non-periodic structure has number
  density 0, so srreal's linear baseline has slope 0.

We evaluate the last sum directly at the requested r values, which on
srreal's own grid (r = k * rstep) is srreal's result, and between grid points
is the band-limited curve through them (srfit interpolates linearly there).

Debye calculator (srreal ``DebyePDFCalculator``, ``BaseDebyeSum``):

- F(Q) = sum_{i != j} f_i(Q) f_j(Q) exp(-sigma_ij^2 Q^2 / 2) sin(Q d_ij) / d_ij
  / (N <f(Q)>^2), with sigma_ij = FWHM / (2 sqrt(2 ln 2)) from the same Jeong
  model, and Q-dependent form factors;
- G(r) = (2/pi) * integral_{qmin}^{qmax} F(Q) sin(Q r) dQ, times the qdamp
  envelope.

srreal does not integrate: it samples F on its own grid Q_k = k qstep,
qstep = pi / rcalchi, where rcalchi = rmax + extension rounded up to a
multiple of rstep (the extension is the real-space calculator's: 6
termination ripples plus the widest peak's tail, at most 10 Å), keeps only
pairs with rcalclo <= d <= rcalchi, stops a pair's sum at the first Q where
its amplitude falls to 1e-6 (``debyeprecision``), sine transforms the zero
padded F by FFT onto the grid r_i = i pi / (npad qstep) and interpolates
linearly to the output r (``DebyePDFCalculator::getPDFAtQmin``).
:class:`SrrealDebyeTransform` is that computation (calculator ``"debye"``);
:class:`DebyeTransform` is the integral it approximates, every pair kept,
by composite Gauss-Legendre quadrature fine enough for the largest pair
distance (error ~1e-12; calculator ``"debye-exact"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.polynomial.legendre import leggauss

__all__ = [
    "PEAK_PRECISION",
    "MAX_EXTENSION",
    "FWHM_PER_SIGMA",
    "jeong_fwhm",
    "gaussian_peak",
    "gaussian_half_width",
    "RealSpaceTransform",
    "DebyeTransform",
    "SrrealDebyeTransform",
    "binned_sine_sum",
]

#: srreal's DEFAULT_PEAKPRECISION: Gaussian peaks are cut where they fall below this fraction of their maximum.
PEAK_PRECISION = 3.33e-6
#: srreal's DEFAULT_PDFCALCULATOR_MAXEXTENSION (Å): the most the r range is extended for ripples and peak tails.
MAX_EXTENSION = 10.0
#: Number of termination ripples srreal keeps outside the r range (PDFCalculator::extFromTerminationRipples).
N_RIPPLES = 6
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# srreal's mathutils eps_eq / eps_lt / eps_gt tolerance, SQRT_DOUBLE_EPS.
_EPS = math.sqrt(np.finfo(float).eps)
# Half width of a Gaussian peak in units of its FWHM at PEAK_PRECISION (GaussianProfile::setPrecision).
_HALF_BOUND_REL = math.sqrt(-math.log(PEAK_PRECISION) / (4.0 * math.log(2.0)))
# Gauss-Legendre panels for the Debye integral: 16 nodes; a panel spans at most
# _PANEL_PHASE radians of the fastest oscillation (pair distance + r), which
# keeps the quadrature error near 1e-14 (checked against much finer rules).
_GL_NODES = 16
_PANEL_PHASE = 16.0
# Above this many classes of one width, Debye sums go through binned_sine_sum.
_BINNED_MIN_CLASSES = 2000


def jeong_fwhm(
    distance: np.ndarray, msd: np.ndarray, delta2: float, qbroad: float, delta1: float = 0.0
) -> np.ndarray:
    """Peak FWHM (Å) of srreal's ``JeongPeakWidth``.

    ``msd`` is the mean-square displacement of the pair along the bond,
    U_i + U_j for isotropic atoms (Å^2). FWHM = 2 sqrt(2 ln 2) sqrt(msd * corr)
    with corr = 1 - delta1/d - delta2/d^2 + (qbroad d)^2; zero where corr <= 0
    or msd <= 0 (I.-K. Jeong et al., Phys. Rev. B 67, 104301 (2003)).
    """
    d = np.asarray(distance, dtype=float)
    msd = np.broadcast_to(np.asarray(msd, dtype=float), d.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = 1.0 - delta1 / d - delta2 / d**2 + (qbroad * d) ** 2
    corr = np.where(d < np.finfo(float).eps, 0.0, corr)
    good = (corr > 0) & (msd > 0)
    return np.where(good, FWHM_PER_SIGMA * np.sqrt(np.where(good, msd * corr, 0.0)), 0.0)


def gaussian_peak(x: np.ndarray, fwhm: np.ndarray) -> np.ndarray:
    """Unit-area Gaussian (Å^-1) of the given FWHM at offset ``x``; 0 where FWHM <= 0 (srreal ``GaussianProfile``)."""
    x = np.asarray(x, dtype=float)
    fwhm = np.asarray(fwhm, dtype=float)
    safe = np.where(fwhm > 0, fwhm, 1.0)
    y = 2.0 * math.sqrt(math.log(2.0) / math.pi) / safe * np.exp(-4.0 * math.log(2.0) * (x / safe) ** 2)
    return np.where(fwhm > 0, y, 0.0)


def gaussian_half_width(fwhm: np.ndarray | float) -> np.ndarray:
    """Half width (Å) beyond which srreal does not draw a Gaussian peak (``GaussianProfile::xboundhi``)."""
    return np.maximum(np.asarray(fwhm, dtype=float), 0.0) * _HALF_BOUND_REL


def _rmin_steps(rmin: float, step: float) -> int:
    """srreal ``pdfutils_rminSteps``: index of the first grid point at or above rmin."""
    n = math.ceil(rmin / step)
    if abs(rmin - (n - 1) * step) <= _EPS:
        n -= 1
    return n


def _rmax_steps(rmax: float, step: float) -> int:
    """srreal ``pdfutils_rmaxSteps``: one past the last grid point below rmax."""
    return math.ceil(rmax / step)


def _envelope(r: np.ndarray, qdamp: float) -> np.ndarray:
    """srreal ``QResolutionEnvelope``: exp(-(qdamp r)^2 / 2)."""
    if qdamp <= 0:
        return np.ones_like(r)
    return np.exp(-0.5 * (qdamp * r) ** 2)


def max_peak_fwhm(rmin: float, rmax: float, delta2: float, qbroad: float, max_uiso: float) -> float:
    """srreal 1.4 ``JeongPeakWidth::maxWidth`` (Å): the widest peak of two atoms with the largest U (Å^2),
    widened where the Jeong correction exceeds 1 at either end of the range [rmin, rmax] (Å)."""
    corr = [1.0 - delta2 / x**2 + (qbroad * x) ** 2 if x > 0 else 0.0 for x in (rmin, rmax)]
    return FWHM_PER_SIGMA * math.sqrt(max(2.0 * max_uiso, 0.0)) * math.sqrt(max(1.0, *corr))


def grid_step(r: np.ndarray, qmax: float) -> tuple[float, bool]:
    """The calculation step (Å) for an output r grid, and whether srreal's own grid coincides with it.

    A uniform, increasing grid with step at most pi / qmax is treated as srfit's
    ``PDFGenerator`` treats it: rstep = (r_max - r_min) / (n - 1), rmin = r_min,
    rmax = r_max + rstep / 2. Any other grid (irregular, or so coarse that
    srreal would cut Qmax down to pi / rstep) is calculated with the mean step
    capped at 0.01 Å, and the band-limited result evaluated at its points.
    """
    if r.size < 2:
        return 0.01, False
    lo, hi = float(r.min()), float(r.max())
    if hi <= lo:
        return 0.01, False
    step = (hi - lo) / (r.size - 1)
    uniform = bool(np.all(np.abs(np.diff(r) - step) <= 1e-6 * step)) and step <= math.pi / qmax
    if not uniform:
        step = min(step, 0.01)
    return step, uniform


@dataclass(frozen=True)
class _RealLimits:
    rstep: float
    ext_lo: int  # first kept raw grid index (r = index * rstep)
    ext_hi: int  # one past the last
    npad: int  # FFT length: ext_hi rounded up to a power of two
    k_lo: int  # first kept Q index (Q = k * qstep)
    k_hi: int  # one past the last


class RealSpaceTransform:
    """Kernels and projection of srreal's real-space ``PDFCalculator`` for one r grid and settings.

    ``max_uiso`` (Å^2) is the largest U of the structure: srreal uses it for the
    peak-tail extension, which only matters when the extensions exceed 10 Å.
    ``rmax`` (Å) is srreal's rmax; default the last r plus half a step, as
    srfit's ``PDFGenerator`` sets it.
    """

    def __init__(
        self,
        r: np.ndarray,
        qmin: float,
        qmax: float,
        qdamp: float,
        delta2: float,
        qbroad: float,
        max_uiso: float,
        rmax: float | None = None,
    ):
        self.r = np.asarray(r, dtype=float)
        self.limits = self._limits(self.r, qmin, qmax, delta2, qbroad, max_uiso, rmax)
        lim = self.limits
        self.k = np.arange(lim.k_lo, lim.k_hi)
        self.qstep = math.pi / (lim.npad * lim.rstep)
        self.q = self.k * self.qstep
        envelope = _envelope(self.r, qdamp)
        # P[k, j] = env(r_j) (2/pi) qstep sin(Q_k r_j): srreal's fftftog at any r.
        self.projection = (2.0 / math.pi) * self.qstep * np.sin(np.outer(self.q, self.r)) * envelope
        # sin(pi m / npad) for integer m: exact argument reduction for on-grid sines.
        self._sin_table = np.sin(np.pi * np.arange(2 * lim.npad) / lim.npad)

    @staticmethod
    def _limits(r, qmin, qmax, delta2, qbroad, max_uiso, rmax_override) -> _RealLimits:
        rstep, _ = grid_step(r, qmax)
        if r.size == 0:
            return _RealLimits(rstep, 0, 0, 2, 0, 0)
        rmin = float(r.min())
        # srfit's PDFGenerator: rmax half a step past the last point
        rmax = float(r.max()) + 0.5 * rstep if rmax_override is None else float(rmax_override)
        nyquist = math.pi / rstep
        qmax_eff = min(qmax, nyquist)
        ext_ripples = N_RIPPLES * 2 * math.pi / qmax_eff if _EPS < qmax_eff < nyquist - _EPS else 0.0
        ext_tails = float(gaussian_half_width(max_peak_fwhm(rmin, rmax, delta2, qbroad, max_uiso)))
        if ext_ripples + ext_tails > MAX_EXTENSION:
            ext_ripples *= MAX_EXTENSION / (ext_ripples + ext_tails)
        ext_lo = max(0, _rmin_steps(rmin - ext_ripples, rstep))
        ext_hi = _rmax_steps(rmax + ext_ripples, rstep)
        npad = 1 << max(1, math.ceil(math.log2(max(ext_hi, 1))))
        qstep = math.pi / (npad * rstep)
        k_lo = min(_rmin_steps(qmin, qstep), npad)
        k_hi = min(math.ceil(qmax_eff / qstep), npad)
        return _RealLimits(rstep, ext_lo, ext_hi, npad, k_lo, max(k_hi, k_lo))

    @property
    def n_q(self) -> int:
        return self.q.size

    def _windows(self, distance: np.ndarray, fwhm: np.ndarray):
        """Grid indices and values y(r_i - d) / d of each class's peak on srreal's raw grid."""
        lim = self.limits
        half = gaussian_half_width(fwhm)
        first = np.floor((distance - half) / lim.rstep).astype(np.int64)
        last = np.floor((distance + half) / lim.rstep).astype(np.int64)
        width = int((last - first).max(initial=0)) + 1
        idx = first[:, None] + np.arange(width)
        keep = (idx <= last[:, None]) & (idx >= lim.ext_lo) & (idx < lim.ext_hi)
        x = idx * lim.rstep - distance[:, None]
        # srreal scales each point by (x/d + 1) and later divides by r = x + d: net 1/d.
        values = np.where(keep, gaussian_peak(x, fwhm[:, None]) / distance[:, None], 0.0)
        return first, values

    def kernel_q(self, distance: np.ndarray, fwhm: np.ndarray, weight: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Per-class F(Q) kernel, shape (n_classes, n_q).

        ``distance`` (Å) and ``fwhm`` (Å) per class; ``weight`` per class
        (n_classes,) or (n_classes, 1): f_a f_b summed over the class's ordered
        pairs. K[c, k] = weight_c * rstep * sum_i sin(Q_k r_i) y(r_i - d_c) / d_c,
        the sum over srreal's raw grid points r_i = i * rstep inside the
        extended range and the peak's window.
        """
        distance = np.asarray(distance, dtype=float)
        fwhm = np.asarray(fwhm, dtype=float)
        weight = np.broadcast_to(np.asarray(weight, dtype=float).reshape(-1, 1), (distance.size, 1))
        out = np.zeros((distance.size, self.n_q))
        if self.n_q == 0:
            return out
        for start in range(0, distance.size, chunk):
            sl = slice(start, start + chunk)
            out[sl] = self._kernel_block(distance[sl], fwhm[sl]) * (self.limits.rstep * weight[sl])
        return out

    def _kernel_block(self, distance: np.ndarray, fwhm: np.ndarray) -> np.ndarray:
        lim = self.limits
        first, values = self._windows(distance, fwhm)
        # sin(Q_k (first + w) rstep) = sin(Q_k first rstep) cos(Q_k w rstep)
        #                            + cos(Q_k first rstep) sin(Q_k w rstep):
        # two small matmuls instead of one sine per (class, point, Q); the angles
        # are pi m / npad for integers m, reduced exactly and read from a table.
        two_n = 2 * lim.npad
        quarter = lim.npad // 2  # cos(pi m / npad) = sin(pi (m + npad/2) / npad); npad >= 2 here
        kw = np.outer(np.arange(values.shape[1]), self.k) % two_n
        kf = (first % two_n)[:, None] * self.k % two_n
        sin_w, cos_w = self._sin_table[kw], self._sin_table[(kw + quarter) % two_n]
        sin_f, cos_f = self._sin_table[kf], self._sin_table[(kf + quarter) % two_n]
        return sin_f * (values @ cos_w) + cos_f * (values @ sin_w)

    def sum_q(self, distance: np.ndarray, fwhm: np.ndarray, scale: np.ndarray, chunk: int = 20000) -> np.ndarray:
        """sum_c scale_c * kernel_q[c] (weight 1), shape (n_q,), for any number of classes.

        The peaks are summed on srreal's raw grid first, then sine transformed
        once, which costs one pass over the peaks however many classes there are.
        """
        lim = self.limits
        raw = np.zeros(lim.ext_hi + 1)
        distance = np.asarray(distance, dtype=float)
        fwhm = np.asarray(fwhm, dtype=float)
        scale = np.asarray(scale, dtype=float).ravel()
        for start in range(0, distance.size, chunk):
            sl = slice(start, start + chunk)
            first, values = self._windows(distance[sl], fwhm[sl])
            idx = first[:, None] + np.arange(values.shape[1])
            values = values * scale[sl, None]
            ok = values != 0
            raw += np.bincount(idx[ok], weights=values[ok], minlength=raw.size)[: raw.size]
        i = np.arange(lim.ext_lo, lim.ext_hi)
        sines = self._sin_table[np.outer(self.k, i) % (2 * lim.npad)]
        return lim.rstep * (sines @ raw[lim.ext_lo : lim.ext_hi])


class DebyeTransform:
    """Kernels and projection of the Debye-sum PDF (srreal ``DebyePDFCalculator``, all pairs kept).

    ``max_distance`` (Å) is the longest pair distance the kernels will see; the
    quadrature is fine enough for it and for the largest r.
    """

    def __init__(self, r: np.ndarray, qmin: float, qmax: float, qdamp: float, max_distance: float):
        self.r = np.asarray(r, dtype=float)
        rmax = float(self.r.max(initial=0.0))
        self.max_distance = float(max_distance)
        fastest = max(self.max_distance + rmax, 1.0)
        n_panels = max(1, math.ceil((qmax - qmin) * fastest / _PANEL_PHASE))
        nodes, weights = leggauss(_GL_NODES)
        edges = np.linspace(qmin, qmax, n_panels + 1)
        mid = 0.5 * (edges[1:] + edges[:-1])
        half = 0.5 * (edges[1:] - edges[:-1])
        self.q = (mid[:, None] + half[:, None] * nodes).ravel()
        self.q_weights = (half[:, None] * weights).ravel()
        envelope = _envelope(self.r, qdamp)
        self.projection = (2.0 / math.pi) * self.q_weights[:, None] * np.sin(np.outer(self.q, self.r)) * envelope

    @property
    def n_q(self) -> int:
        return self.q.size

    def kernel_q(self, distance: np.ndarray, fwhm: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Per-class F(Q) kernel (n_classes, n_q): weight_c(Q) exp(-sigma_c^2 Q^2 / 2) sin(Q d_c) / d_c.

        ``weight`` is (n_classes, n_q) (f_a(Q) f_b(Q) summed over the class's
        ordered pairs) or (n_classes,) / (n_classes, 1) for Q-independent lengths.
        """
        distance = np.asarray(distance, dtype=float)
        sigma = np.asarray(fwhm, dtype=float) / FWHM_PER_SIGMA
        weight = np.asarray(weight, dtype=float)
        if weight.ndim == 1:
            weight = weight[:, None]
        out = np.sin(np.outer(distance, self.q))
        out *= np.exp(-0.5 * np.outer(sigma**2, self.q**2))
        out *= weight / distance[:, None]
        return out

    def sum_q(self, distance: np.ndarray, fwhm: np.ndarray, scale: np.ndarray, chunk: int = 4000) -> np.ndarray:
        """sum_c scale_c * kernel_q[c] (weight 1), shape (n_q,), for any number of classes.

        Many classes of one peak width (the usual case: delta2 = qbroad = 0 and
        one element pair) go through :func:`binned_sine_sum`, whose cost does
        not grow with the number of classes; otherwise the sum is direct.
        """
        distance = np.asarray(distance, dtype=float)
        fwhm = np.asarray(fwhm, dtype=float)
        scale = np.asarray(scale, dtype=float).ravel()
        if distance.size > _BINNED_MIN_CLASSES and np.all(fwhm == fwhm[0]):
            sigma = fwhm[0] / FWHM_PER_SIGMA
            return np.exp(-0.5 * (sigma * self.q) ** 2) * binned_sine_sum(distance, scale / distance, self.q)
        total = np.zeros(self.n_q)
        for start in range(0, distance.size, chunk):
            sl = slice(start, start + chunk)
            total += scale[sl] @ self.kernel_q(distance[sl], fwhm[sl], np.ones(1))
        return total


#: srreal's DEFAULT_DEBYE_PRECISION: a pair's Debye sum stops at the first Q where its amplitude is this small.
DEBYE_PRECISION = 1e-6


class SrrealDebyeTransform(DebyeTransform):
    """Kernels and projection of srreal's ``DebyePDFCalculator`` as it computes (libdiffpy 1.4).

    ``r`` is the output grid (Å), treated like :class:`RealSpaceTransform`'s:
    srreal's rstep and rmin from it (:func:`grid_step`), its rmax the last r
    plus half a step (srfit's ``PDFGenerator``) unless ``rmax`` (Å) is given.
    ``max_uiso`` (Å^2), ``delta2`` and ``qbroad`` set the peak-tail part of the
    extension. Then:

    - pairs are kept where ``pair_range[0] <= d <= pair_range[1]`` (srreal's
      rcalclo and rcalchi: rmin and rmax extended by 6 ripples 2 pi / qmax plus
      the widest peak's tail, together at most 10 Å, on multiples of rstep);
    - Q runs over k qstep, qstep = pi / rcalchi (at least 4 steps to qmax),
      from the first k at or above qmin to the last below qmax;
    - a pair's terms stop at the first Q where
      |2 f_i f_j exp(-sigma^2 Q^2 / 2) / d| <= 1e-6 (where its strength is known);
    - G on the FFT grid r_i = i drpad, drpad = pi / (npad qstep) with npad the
      power of two at or above max(n_q, pi / (rstep qstep)), is
      (2/pi) qstep sum_k F_k sin(Q_k r_i), interpolated linearly to each r and
      damped by exp(-(qdamp r)^2 / 2).
    """

    def __init__(
        self,
        r: np.ndarray,
        qmin: float,
        qmax: float,
        qdamp: float,
        delta2: float,
        qbroad: float,
        max_uiso: float,
        rmax: float | None = None,
    ):
        self.r = np.asarray(r, dtype=float)
        rstep, _ = grid_step(self.r, qmax)
        rmin = float(self.r.min(initial=0.0))
        rmax = float(self.r.max(initial=0.0)) + 0.5 * rstep if rmax is None else float(rmax)
        ripples = N_RIPPLES * 2 * math.pi / qmax if qmax > 0 else 0.0
        tails = float(gaussian_half_width(max_peak_fwhm(rmin, rmax, delta2, qbroad, max_uiso)))
        extension = min(MAX_EXTENSION, ripples + tails)
        rcalclo = max(0, _rmin_steps(rmin - extension, rstep)) * rstep
        rcalchi = _rmax_steps(rmax + extension, rstep) * rstep
        self.pair_range = (rcalclo, rcalchi)
        self.max_distance = rcalchi
        # DebyePDFCalculator::updateQstep: at least 4 steps to qmax
        self.qstep = math.pi / rcalchi if qmax * rcalchi / math.pi > 4 else qmax / 4
        n_q = math.ceil(qmax / self.qstep)
        self.k = np.arange(min(_rmin_steps(qmin, self.qstep), n_q), n_q)
        self.q = self.k * self.qstep
        self.q_weights = np.full(self.q.size, self.qstep)
        n_fft = max(n_q, math.ceil(math.pi / rstep / self.qstep))
        self.npad = 1 << max(0, math.ceil(math.log2(n_fft)))
        drpad = math.pi / (self.npad * self.qstep)
        x = self.r / drpad
        lower = np.floor(x).astype(np.int64)
        upper_weight = x - lower
        # sin(Q_k i drpad) = sin(pi k i / npad), reduced exactly over integers
        def sines(i: np.ndarray) -> np.ndarray:
            return np.sin(np.pi * (np.outer(self.k, i) % (2 * self.npad)) / self.npad)

        interpolated = sines(lower) * (1.0 - upper_weight) + sines(lower + 1) * upper_weight
        self.projection = (2.0 / math.pi) * self.qstep * interpolated * _envelope(self.r, qdamp)

    def in_pair_range(self, distance: np.ndarray) -> np.ndarray:
        """True for the pair distances (Å) srreal's bond generator visits."""
        distance = np.asarray(distance, dtype=float)
        return (distance >= self.pair_range[0]) & (distance <= self.pair_range[1])

    def _alive(self, distance: np.ndarray, fwhm: np.ndarray, pair_weight: np.ndarray) -> np.ndarray:
        """(n, n_q) 1/0: srreal's per-pair loop over Q still running (it breaks at the first small term)."""
        sigma = np.asarray(fwhm, dtype=float) / FWHM_PER_SIGMA
        amplitude = np.abs(np.broadcast_to(pair_weight, (distance.size, self.n_q)))
        amplitude = amplitude * np.exp(-0.5 * np.outer(sigma**2, self.q**2)) / distance[:, None]
        return ~np.logical_or.accumulate(amplitude <= DEBYE_PRECISION, axis=1)

    def kernel_q(self, distance: np.ndarray, fwhm: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """As :meth:`DebyeTransform.kernel_q` on srreal's Q grid, zero for pairs out of range.

        ``weight`` is one pair's strength counted both ways (2 f_a f_b), so the
        precision cut-off applies here.
        """
        distance = np.asarray(distance, dtype=float)
        fwhm = np.asarray(fwhm, dtype=float)
        weight = np.asarray(weight, dtype=float)
        if weight.ndim == 1:
            weight = weight[:, None]
        out = super().kernel_q(distance, fwhm, weight)
        out *= self._alive(distance, fwhm, weight)
        out[~self.in_pair_range(distance)] = 0.0
        return out

    def sum_q(
        self, distance: np.ndarray, fwhm: np.ndarray, scale: np.ndarray, pair_weight=None, chunk: int = 4000
    ) -> np.ndarray:
        """sum_c scale_c * kernel_q[c] (weight 1) over the classes in range, shape (n_q,).

        ``pair_weight`` (one pair's 2 f_a f_b, a number or (n_q,)) applies the
        precision cut-off; without it every term is kept (the cut-off removes
        terms of at most 1e-6 each).
        """
        distance = np.asarray(distance, dtype=float)
        keep = self.in_pair_range(distance)
        distance = distance[keep]
        fwhm = np.asarray(fwhm, dtype=float)[keep]
        scale = np.asarray(scale, dtype=float).ravel()[keep]
        if distance.size == 0:
            return np.zeros(self.n_q)
        if pair_weight is not None:
            pair_weight = np.broadcast_to(np.asarray(pair_weight, dtype=float).ravel(), (self.n_q,))
            # the weakest possible term: the widest peak at the longest distance, at the last Q
            widest = fwhm.max() / FWHM_PER_SIGMA * self.q.max(initial=0.0)
            weakest = np.abs(pair_weight).min() * math.exp(-0.5 * widest**2) / distance.max()
            if weakest <= DEBYE_PRECISION:
                total = np.zeros(self.n_q)
                for start in range(0, distance.size, chunk):
                    sl = slice(start, start + chunk)
                    alive = self._alive(distance[sl], fwhm[sl], pair_weight[None, :])
                    total += scale[sl] @ (DebyeTransform.kernel_q(self, distance[sl], fwhm[sl], np.ones(1)) * alive)
                return total
        return super().sum_q(distance, fwhm, scale)


def binned_sine_sum(distance: np.ndarray, amplitude: np.ndarray, q: np.ndarray, order: int = 7) -> np.ndarray:
    """sum_c amplitude_c sin(q d_c) for many d_c at once, shape (n_q,).

    Distances are put in bins of width h around b_k and
    sin(q (b + delta)) = sum_p (q delta)^p / p! sin(q b + p pi/2) is summed to
    ``order``; with h = min(0.01, 0.2 / q_max) Å, |q delta| <= 0.1 and the
    truncation error is below 0.1^8 / 8! = 2.5e-13 of each term. Cost: one
    pass over the pairs plus (order + 1) products with a (bins x Q) sine table.
    """
    q = np.asarray(q, dtype=float)
    if distance.size == 0:
        return np.zeros(q.size)
    h = min(0.01, 0.2 / max(float(np.abs(q).max(initial=0.0)), 1e-12))
    k = np.rint(distance / h).astype(np.int64)
    delta = distance - k * h
    k -= k.min()
    moments = np.empty((order + 1, int(k.max()) + 1))
    term = np.asarray(amplitude, dtype=float).copy()
    for p in range(order + 1):
        moments[p] = np.bincount(k, weights=term, minlength=moments.shape[1])
        term = term * delta / (p + 1)  # next: amplitude delta^(p+1) / (p+1)!
    used = np.flatnonzero(np.bincount(k, minlength=moments.shape[1]))
    moments = moments[:, used]
    phase = np.outer((used + np.rint(distance.min() / h)) * h, q)
    sines, cosines = moments @ np.sin(phase), moments @ np.cos(phase)
    total = np.zeros(q.size)
    for p in range(order + 1):
        # d^p/d delta^p sin(q b + q delta) at 0 = q^p sin(q b + p pi / 2)
        trig = (sines, cosines, -sines, -cosines)[p % 4][p]
        total += q**p * trig
    return total
