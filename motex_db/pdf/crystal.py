"""G(r) of periodic crystals, vectorised over many lattice scalings and displacement parameters.

The crystal counterpart of srreal's real-space ``PDFCalculator`` with a periodic
structure (what DiffPy-CMI simulates for a CIF):

    G(r) = 1 / (N <f>^2) * sum_{i in cell} sum_{j != i} f_i f_j / d_ij * T(r - d_ij) - 4 pi rho0 r

with f the X-ray form factors at Q = 0 (or neutron lengths), N <f>^2 = (sum_cell
f)^2 / N_cell, T a unit-area Gaussian of variance U_i + U_j (one Uiso for every
atom, as MLstructureMining simulates), rho0 = N_cell / V_cell the number
density, then limited to the Q window [Qmin, Qmax] (termination ripples) and
damped by exp(-(qdamp r)^2 / 2). Each peak is divided by its pair distance, as
srreal 1.4 does (see :mod:`motex_db.pdf.kernels`).

How it is computed (all array operations, no loop over pairs):

1. :func:`crystal_pairs`: every unit-cell atom with every neighbour (all
   lattice translations) within reach, grouped by species pair and by the six
   terms of the squared distance in the cell's metric,
   d^2 = sum_kl s_k s_l G_kl df_k df_l, so that scaling the cell axes by
   s = (s_a, s_b, s_c) moves every distance exactly without enumerating pairs
   again (the distance lists are reused for every lattice scaling).
2. :func:`crystal_pdf`: per simulation, the pair amplitudes are binned onto a
   fine grid (linear interpolation, step 0.005 Å), sine transformed to
   F(Q) = sum_pairs a_p sin(Q d_p) by one matrix product for the whole batch,
   multiplied by the Gaussian's transform exp(-sigma^2 Q^2 / 2) and the exact
   transform of the baseline -4 pi rho0 r over the same range, cut to
   [Qmin, Qmax] and transformed back onto the output r grid:
   G(r) = (2 / pi) dQ sum_k F(Q_k) sin(Q_k r), exact for a function that
   vanishes beyond pi / dQ.

The pairs are kept up to ``reach`` = rmax + ``MARGIN`` (as srreal extends its
range for termination ripples); over the last ``TAPER`` Å both the peaks and the
baseline are brought smoothly to 0, so the end of the pair list makes no step
whose ringing the Q window would spread over the whole r range.

An optional spherical-particle envelope (diameter D) multiplies G for the
quick refinement of nanoparticle data (PDFgui's ``spdiameter``):
gamma(r) = 1 - 3r/(2D) + r^3/(2D^3) for r < D, else 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from motex_db.errors import InputError
from motex_db.pdf.scattering import scattering_factors

__all__ = ["CrystalPairs", "crystal_pairs", "crystal_pdf", "sphere_envelope", "taper", "tied_axes", "BIN_STEP", "MARGIN", "TAPER"]

#: Step (Å) of the fine grid the pair amplitudes are binned on before the sine transform.
BIN_STEP = 0.005
# Pairs per block while enumerating (bounds memory for large cells).
_BLOCK = 1 << 22
#: Width (Å) of the cosine taper that ends the pairs and the baseline smoothly at the reach.
TAPER = 1.5
#: How far (Å) beyond the last r the pairs must reach: the taper and 6 termination ripples at Qmax 25.
MARGIN = TAPER + 1.5
# Squared-distance terms are grouped after rounding to this (Å^2).
_TERM_ROUNDING = 1e-7


@dataclass(frozen=True)
class CrystalPairs:
    """A crystal's pairs within ``reach`` (Å), grouped for fast, exact lattice scaling.

    ``terms`` (n_groups, 6): coefficients of s_a^2, s_b^2, s_c^2, s_a s_b,
    s_a s_c, s_b s_c in d^2 (Å^2); ``weight`` (n_groups,): sum over the group's
    ordered pairs of f_i f_j occ_i occ_j / (N <f>^2) (per unit cell);
    ``n_atoms`` atoms per cell (occupancy-weighted), ``volume`` (Å^3) of the
    unscaled cell; ``min_scale``: the smallest axis scaling the pairs are
    complete for.
    """

    terms: np.ndarray
    weight: np.ndarray
    n_atoms: float
    volume: float
    reach: float
    min_scale: float

    @property
    def n_groups(self) -> int:
        return int(self.weight.size)

    def distances(self, scales: np.ndarray) -> np.ndarray:
        """Pair distances (n_sim, n_groups) for axis scalings ``scales`` (n_sim, 3)."""
        s = np.atleast_2d(np.asarray(scales, dtype=float))
        products = np.stack(
            [s[:, 0] ** 2, s[:, 1] ** 2, s[:, 2] ** 2, s[:, 0] * s[:, 1], s[:, 0] * s[:, 2], s[:, 1] * s[:, 2]], axis=1
        )
        return np.sqrt(np.maximum(products @ self.terms.T, 0.0))

    def binned(self, step: float = 0.002) -> "CrystalPairs":
        """Pairs merged into distance bins of ``step`` Å (isotropic scaling only; summed weights, mean distance).

        Moving a pair by at most step / 2 (0.001 Å) changes G far below any
        noise, while a low-symmetry crystal's 10^5 distinct distances become a
        few 10^4 bins: what makes a refinement's many evaluations cheap.
        """
        d = np.sqrt(np.maximum(self.terms.sum(axis=1), 0.0))
        key = np.rint(d / step).astype(np.int64)
        unique, inverse = np.unique(key, return_inverse=True)
        counts = np.bincount(inverse, minlength=unique.size)
        mean = np.bincount(inverse, weights=d, minlength=unique.size) / counts
        terms = np.zeros((unique.size, 6))
        terms[:, 0] = mean**2
        weight = np.bincount(inverse, weights=self.weight, minlength=unique.size)
        return CrystalPairs(terms, weight, self.n_atoms, self.volume, self.reach, self.min_scale)

    def isotropic(self) -> "CrystalPairs":
        """The same pairs grouped by distance alone (for isotropic scaling only): fewer groups."""
        terms = np.zeros_like(self.terms)
        terms[:, 0] = self.terms.sum(axis=1)  # s^2 d^2 when s_a = s_b = s_c = s
        grouped, weight = _group(terms, self.weight)
        return CrystalPairs(grouped, weight, self.n_atoms, self.volume, self.reach, self.min_scale)


def tied_axes(lengths: np.ndarray, tolerance: float = 1e-4) -> np.ndarray:
    """Index of the free scaling parameter of each axis: axes of equal length share one.

    Equal axes stay equal when the lattice is scaled, which keeps the space
    group's constraints (a = b in tetragonal and hexagonal cells, a = b = c in
    cubic and rhombohedral ones). Returns e.g. [0, 0, 1] for a tetragonal cell.
    """
    lengths = np.asarray(lengths, dtype=float)
    index = np.full(3, -1)
    n_free = 0
    for k in range(3):
        for m in range(k):
            if abs(lengths[k] - lengths[m]) <= tolerance * lengths[m]:
                index[k] = index[m]
                break
        if index[k] < 0:
            index[k] = n_free
            n_free += 1
    return index


def crystal_pairs(
    symbols: list[str],
    cell: np.ndarray,
    scaled_positions: np.ndarray,
    occupancies: np.ndarray | None = None,
    *,
    reach: float,
    min_scale: float = 0.9,
    radiation: str = "xray",
    group: str = "axes",
) -> CrystalPairs:
    """Gather the pairs of a crystal (``cell`` rows a, b, c in Å; fractional positions) within ``reach`` Å.

    Pairs are complete for every axis scaling down to ``min_scale`` (pairs up
    to reach / min_scale are kept; :func:`crystal_pdf` drops those beyond
    ``reach`` after scaling). Each unit-cell atom is paired with all others in
    all lattice translations, itself in other cells included. ``group``:
    ``"axes"`` groups pairs with equal squared-distance terms (exact for any
    scaling of a, b, c), ``"distance"`` by distance alone (exact for isotropic
    scaling, fewer groups), ``"none"`` keeps every pair (fastest to gather,
    for a single simulation).
    """
    if group not in ("axes", "distance", "none"):
        raise InputError(f"group must be axes, distance or none, not {group!r}.")
    cell = np.asarray(cell, dtype=float)
    frac = np.asarray(scaled_positions, dtype=float) % 1.0
    n = len(symbols)
    if n == 0:
        raise InputError("the crystal holds no atoms.")
    volume = abs(float(np.linalg.det(cell)))
    if not np.isfinite(volume) or volume < 1e-6:
        raise InputError("the crystal's unit cell has no volume.")
    occ = np.ones(n) if occupancies is None else np.asarray(occupancies, dtype=float)
    kinds = sorted(set(symbols))
    species = np.array([kinds.index(s) for s in symbols])
    f = scattering_factors(kinds, radiation)[:, 0][species] * occ
    norm = f.sum() ** 2 / occ.sum()
    if norm <= 0:
        raise InputError("the crystal's atoms scatter nothing (total scattering strength 0).")
    cut = reach / min_scale
    heights = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    span = np.ceil(cut / heights).astype(int) + 1
    grid = np.stack(np.meshgrid(*(np.arange(-m, m + 1) for m in span), indexing="ij"), axis=-1).reshape(-1, 3)
    # a translation can only matter if it is within cut + the cell's longest diagonal of the origin
    diagonal = max(np.linalg.norm(np.array(c) @ cell) for c in ((1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1)))
    grid = grid[np.linalg.norm(grid @ cell, axis=1) <= cut + diagonal].astype(float)
    metric = cell @ cell.T
    parts_terms, parts_weight = [], []
    rows_per_block = max(1, _BLOCK // max(1, n * len(grid)))
    for start in range(0, n, rows_per_block):
        i = np.arange(start, min(n, start + rows_per_block))
        # fractional vectors from atom i (cell 0) to atom j in every translation
        df = (frac[None, :, None, :] - frac[i][:, None, None, :]) + grid[None, None, :, :]
        cart = df @ cell
        d2 = np.einsum("...k,...k->...", cart, cart)
        keep = (d2 > 1e-8) & (d2 <= cut * cut)
        ii, jj, _ = np.nonzero(keep)
        weight = f[i][ii] * f[jj] / norm
        if group == "axes":
            v = df[keep]
            terms = np.stack(
                [v[:, 0] ** 2 * metric[0, 0], v[:, 1] ** 2 * metric[1, 1], v[:, 2] ** 2 * metric[2, 2],
                 2 * v[:, 0] * v[:, 1] * metric[0, 1], 2 * v[:, 0] * v[:, 2] * metric[0, 2],
                 2 * v[:, 1] * v[:, 2] * metric[1, 2]], axis=1,
            )
        else:
            terms = np.zeros((weight.size, 6))
            terms[:, 0] = d2[keep]
        parts_terms.append(terms)
        parts_weight.append(weight)
    terms = np.concatenate(parts_terms)
    weight = np.concatenate(parts_weight)
    if group == "axes" and weight.size:
        terms, weight = _group(terms, weight)
    elif group == "distance" and weight.size:
        unique, inverse = np.unique(np.round(terms[:, 0] / _TERM_ROUNDING).astype(np.int64), return_inverse=True)
        counts = np.bincount(inverse, minlength=unique.size)
        grouped = np.zeros((unique.size, 6))
        grouped[:, 0] = np.bincount(inverse, weights=terms[:, 0], minlength=unique.size) / counts
        terms, weight = grouped, np.bincount(inverse, weights=weight, minlength=unique.size)
    return CrystalPairs(terms, weight, float(occ.sum()), volume, float(reach), float(min_scale))


def _group(terms: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge pairs whose squared-distance terms are equal (after rounding): summed weights, mean terms."""
    key = np.round(terms / _TERM_ROUNDING).astype(np.int64)
    # one 64-bit key per row (a fixed odd-multiplier hash; a collision among 10^7 rows has
    # probability ~1e-5 and would only merge two pairs whose distances then come out averaged)
    multipliers = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                            0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53], dtype=np.uint64)
    with np.errstate(over="ignore"):
        packed = (key.astype(np.uint64) * multipliers).sum(axis=1, dtype=np.uint64)
    unique, inverse = np.unique(packed, return_inverse=True)
    inverse = inverse.ravel()
    counts = np.bincount(inverse, minlength=unique.size)
    grouped = np.stack([np.bincount(inverse, weights=terms[:, k], minlength=unique.size) for k in range(6)], axis=1)
    return grouped / counts[:, None], np.bincount(inverse, weights=weight, minlength=unique.size)


def sphere_envelope(r: np.ndarray, diameter: np.ndarray | float | None) -> np.ndarray:
    """Spherical-particle envelope (n_sim, n_r) for diameters in Å; None or inf gives 1."""
    r = np.asarray(r, dtype=float)
    if diameter is None:
        return np.ones((1, r.size))
    d = np.atleast_1d(np.asarray(diameter, dtype=float))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = r[None, :] / d
        gamma = 1.0 - 1.5 * x + 0.5 * x**3
    return np.where(np.isfinite(d) & (x < 1.0), gamma, np.where(np.isfinite(d), 0.0, 1.0))


class _Transform:
    """The fixed parts of :func:`crystal_pdf` for one reach, Q window and r grid: sine tables."""

    def __init__(self, reach: float, r: np.ndarray, qmin: float, qmax: float, qdamp: float):
        self.n_bins = int(math.ceil(reach / BIN_STEP)) + 2
        self.length = self.n_bins * BIN_STEP
        # dQ = pi / (length of the support) makes the back transform exact
        self.qstep = math.pi / self.length
        k = np.arange(int(math.ceil(qmin / self.qstep)), int(math.floor(qmax / self.qstep)) + 1)
        self.q = k * self.qstep
        bins = np.arange(self.n_bins) * BIN_STEP
        # linear binning convolves with a triangle of width 2 * BIN_STEP: divide its transform out
        triangle = np.sinc(self.q * BIN_STEP / (2 * math.pi)) ** 2
        self.sine = np.sin(np.outer(bins, self.q)) / triangle
        envelope = np.exp(-0.5 * (qdamp * r) ** 2) if qdamp > 0 else np.ones_like(r)
        self.projection = (2.0 / math.pi) * self.qstep * np.sin(np.outer(self.q, r)) * envelope
        self.reach = reach
        # the baseline -4 pi r (unit density) times the taper, transformed by a fine quadrature (once)
        fine = np.arange(0.0, reach, BIN_STEP / 8)
        values = -4.0 * math.pi * fine * taper(fine, reach) * (BIN_STEP / 8)
        self.baseline = values @ np.sin(np.outer(fine, self.q)) if self.q.size else self.q


def taper(r: np.ndarray, reach: float) -> np.ndarray:
    """1 up to reach - TAPER, then a cosine down to 0 at ``reach``: no step where the pairs end.

    A sharp end of the pair list and the baseline would be a step of 4 pi rho0 reach
    (about 20 Å^-2), whose ringing the Q window would spread over the whole range.
    """
    x = np.clip((np.asarray(r, dtype=float) - (reach - TAPER)) / TAPER, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(math.pi * x))


_TRANSFORMS: dict[tuple, _Transform] = {}


def _transform(reach: float, r: np.ndarray, qmin: float, qmax: float, qdamp: float) -> _Transform:
    key = (round(reach, 9), r.size, float(r[0]) if r.size else 0.0, float(r[-1]) if r.size else 0.0,
           hash(r.tobytes()), qmin, qmax, qdamp)
    found = _TRANSFORMS.get(key)
    if found is None:
        if len(_TRANSFORMS) > 16:
            _TRANSFORMS.clear()
        found = _TRANSFORMS[key] = _Transform(reach, r, qmin, qmax, qdamp)
    return found


def crystal_pdf(
    pairs: CrystalPairs,
    r_angstrom: np.ndarray,
    *,
    qmin: float,
    qmax: float,
    qdamp: float,
    uiso: np.ndarray | float,
    scales: np.ndarray | float = 1.0,
    diameter: np.ndarray | float | None = None,
    chunk: int = 128,
) -> np.ndarray:
    """G(r) (Å^-2) of the crystal for each simulation, shape (n_sim, n_r).

    ``scales``: one factor, or (n_sim,) isotropic factors, or (n_sim, 3) factors
    of the a, b, c axes; ``uiso`` (Å^2): one value or (n_sim,), the same for
    every atom; ``diameter`` (Å): a spherical-particle envelope, None for the
    bulk crystal. ``r_angstrom`` must end below ``pairs.reach``.
    """
    r = np.asarray(r_angstrom, dtype=float)
    if qmax <= qmin or qmin < 0:
        raise InputError(f"the Q window needs 0 <= qmin < qmax (got {qmin} and {qmax}).")
    if r.size and r.max() > pairs.reach - MARGIN + 1e-9:
        raise InputError(
            f"r reaches {r.max():g} Å; the pairs were gathered for r up to {pairs.reach - MARGIN:g} Å."
        )
    scales = np.asarray(scales, dtype=float)
    uiso = np.atleast_1d(np.asarray(uiso, dtype=float))
    n_sim = max(scales.shape[0] if scales.ndim >= 1 else 1, uiso.size,
                np.atleast_1d(diameter).size if diameter is not None else 1)
    if scales.ndim == 0:
        scales = np.full((n_sim, 3), float(scales))
    elif scales.ndim == 1:
        scales = np.repeat(scales[:, None], 3, axis=1)
    scales = np.broadcast_to(scales, (n_sim, 3))
    if scales.min() < pairs.min_scale - 1e-12:
        raise InputError(f"lattice scaling {scales.min():g} is below the {pairs.min_scale:g} the pairs were gathered for.")
    uiso = np.broadcast_to(uiso, (n_sim,))
    envelope = np.broadcast_to(sphere_envelope(r, diameter), (n_sim, r.size))
    t = _transform(pairs.reach, r, qmin, qmax, qdamp)
    out = np.empty((n_sim, r.size))
    for start in range(0, n_sim, chunk):
        sl = slice(start, min(n_sim, start + chunk))
        m = sl.stop - sl.start
        d = pairs.distances(scales[sl])
        inside = d < pairs.reach
        amplitude = np.where(inside, pairs.weight * taper(d, pairs.reach) / np.where(d > 0, d, 1.0), 0.0)
        x = np.where(inside, d, 0.0) / BIN_STEP
        low = np.floor(x).astype(np.int64)
        frac = x - low
        offset = (np.arange(m) * t.n_bins)[:, None]
        hist = np.bincount((low + offset).ravel(), weights=(amplitude * (1 - frac)).ravel(), minlength=m * t.n_bins)
        hist += np.bincount((low + 1 + offset).ravel(), weights=(amplitude * frac).ravel(), minlength=m * t.n_bins + 1)[: m * t.n_bins]
        f_q = hist.reshape(m, t.n_bins) @ t.sine
        f_q *= np.exp(-np.outer(uiso[sl], t.q**2))  # sigma^2 = U_i + U_j = 2 Uiso: exp(-sigma^2 Q^2 / 2)
        density = pairs.n_atoms / (pairs.volume * np.prod(scales[sl], axis=1))
        f_q += density[:, None] * t.baseline[None, :]
        out[sl] = (f_q @ t.projection) * envelope[sl]
    return out
