"""G(r) of one non-periodic cluster, as srreal's ``PDFCalculator`` and ``DebyePDFCalculator`` define it.

See :mod:`motex_db.pdf.kernels` for the formulas and where they come from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from motex_db.errors import InputError
from motex_db.pdf.kernels import (
    DebyeTransform,
    RealSpaceTransform,
    SrrealDebyeTransform,
    gaussian_half_width,
    jeong_fwhm,
)
from motex_db.pdf.pairs import PairClasses, cluster_pair_classes, species_index
from motex_db.pdf.parameters import PDFParameters
from motex_db.pdf.scattering import scattering_factors

__all__ = ["cluster_pdf"]

# U = B / (8 pi^2)
_B_TO_U = 1.0 / (8.0 * math.pi**2)


def cluster_pdf(
    elements: Sequence[str],
    positions_angstrom: ArrayLike,
    r_angstrom: ArrayLike,
    params: PDFParameters,
    *,
    rmax_angstrom: float | None = None,
) -> np.ndarray:
    """G(r) (Å^-2) of a non-periodic cluster on the grid ``r_angstrom`` (Å).

    ``params.calculator`` picks srreal's real-space ``PDFCalculator``
    (``"real"``), its ``DebyePDFCalculator`` as it computes (``"debye"``: its
    own Q grid and pair range, see :class:`SrrealDebyeTransform`), or the
    integral that calculator approximates, every pair kept
    (``"debye-exact"``); ``params.zoom`` multiplies the coordinates first. There is no number-density baseline (a finite cluster).
    G is normalised by N <f>^2 = (sum_i f_i)^2 / N over the cluster's atoms,
    as srreal does; a cluster with fewer than two atoms gives G = 0 (no pairs),
    as does total scattering strength 0 (srreal's guard against dividing by 0).

    The r grid may be anything. A uniform grid (step at most pi/qmax) is
    treated as srfit's ``PDFGenerator`` treats it: srreal computes on the
    points k * step from r_min to r_max + step/2, with step
    (r_max - r_min)/(n - 1); on a grid of such multiples (data files usually
    are) the result is srreal's. Between those points srfit interpolates
    linearly, where we evaluate srreal's band-limited sum exactly. An irregular
    (or coarser) grid is calculated with its mean step capped at 0.01 Å, and
    the band-limited result evaluated at each given r.

    ``rmax_angstrom`` sets srreal's rmax (exclusive end of its grid) instead of
    srfit's r_max + step/2; calling srreal's ``PDFCalculator`` or
    ``DebyePDFCalculator`` directly with rmin=r[0], rmax=R is reproduced by
    ``rmax_angstrom=R``. For the real-space calculator it only moves the end
    of the extended range (by at most a step); for ``"debye"`` it sets the Q
    grid (step pi / (R + extension)) and the longest pair kept, so a curve
    computed to a large rmax and cut back needs that rmax. ``"debye-exact"``
    ignores it.
    """
    elements, positions, r = check_cluster_input(elements, positions_angstrom, r_angstrom)
    setup = ClusterModel(elements, params)
    if r.size == 0:
        return np.zeros(0)
    positions = positions * np.asarray(params.zoom_xyz)
    keep = None
    if params.calculator == "real":
        transform = setup.transform(r, 0.0, rmax_angstrom=rmax_angstrom)
        keep = setup.reach_test(transform)
    elif params.calculator == "debye":
        transform = setup.transform(r, 0.0, rmax_angstrom=rmax_angstrom)
        keep = transform.in_pair_range
    classes = cluster_pair_classes(positions, setup.species, setup.n_species, keep)
    if classes.n_classes == 0:
        return np.zeros(r.size)
    distance = classes.components
    if params.calculator == "debye-exact":
        transform = setup.transform(r, float(distance.max()))
    fwhm = setup.class_fwhm(classes, distance)
    codes = np.unique(classes.code)
    f_total = np.zeros(transform.n_q)
    for code, code_weight in zip(codes, setup.code_weight(codes, transform)):
        members = classes.code == code
        # each unordered pair counts twice in srreal's sum over i != j
        extra = {"pair_weight": 2.0 * code_weight} if isinstance(transform, SrrealDebyeTransform) else {}
        f_total += code_weight * transform.sum_q(distance[members], fwhm[members], 2.0 * classes.size[members], **extra)
    norm = setup.normalisation(np.bincount(setup.species, minlength=setup.n_species)[None, :], transform)
    return ((f_total[None, :] / norm) @ transform.projection)[0]


def check_cluster_input(
    elements: Sequence[str], positions_angstrom: ArrayLike, r_angstrom: ArrayLike
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Validated (elements, positions (n, 3) float, r (n_r,) float)."""
    if isinstance(elements, str):
        raise InputError("elements must be a sequence of symbols, one per atom, not one string.")
    elements = list(elements)
    try:
        positions = np.asarray(positions_angstrom, dtype=float)
    except (TypeError, ValueError):
        raise InputError("Atom positions must be numbers, an (n, 3) array in Å.") from None
    if positions.size == 0 and not elements:
        positions = positions.reshape(0, 3)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InputError(f"Atom positions must be an (n, 3) array in Å, not shape {positions.shape}.")
    if positions.shape[0] != len(elements):
        raise InputError(f"{len(elements)} element symbols were given for {positions.shape[0]} atom positions.")
    if not np.all(np.isfinite(positions)):
        raise InputError("Atom positions must be finite numbers.")
    try:
        r = np.asarray(r_angstrom, dtype=float)
    except (TypeError, ValueError):
        raise InputError("The r grid must be numbers in Å.") from None
    if r.ndim != 1:
        raise InputError(f"The r grid must be one-dimensional, not shape {r.shape}.")
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise InputError("The r grid must hold finite, non-negative distances in Å.")
    return elements, positions, r


class ClusterModel:
    """Per-species data for a calculation: symbols, each atom's species, U, scattering strengths.

    Shared by :func:`cluster_pdf` and :class:`motex_db.pdf.MotifPDFEngine`.
    Raises :class:`InputError` for an element the scattering table lacks.
    """

    def __init__(self, elements: Sequence[str], params: PDFParameters):
        self.params = params
        self.symbols, self.species = species_index(elements)
        self.n_species = len(self.symbols)
        # Q = 0 strengths, also the early check that every element is known.
        self.f0 = scattering_factors(self.symbols, params.radiation)
        self.uiso = np.array([params.biso_of(s) * _B_TO_U for s in self.symbols])
        self.max_uiso = float(self.uiso[self.species].max(initial=0.0))
        self._factors: dict[int, tuple[DebyeTransform, np.ndarray]] = {}

    def transform(
        self, r: np.ndarray, max_distance: float, rmax_angstrom: float | None = None
    ) -> RealSpaceTransform | DebyeTransform:
        """The Q-space kernels and projection for this r grid.

        ``max_distance`` (Å): the longest pair, which sizes the exact Debye
        quadrature; ``rmax_angstrom``: srreal's rmax (real and ``"debye"``).
        """
        p = self.params
        if rmax_angstrom is not None and not (r.size == 0 or float(rmax_angstrom) > float(r.max())):
            raise InputError(f"rmax_angstrom ({rmax_angstrom}) must be larger than the largest r ({r.max()}).")
        if p.calculator == "real":
            return RealSpaceTransform(r, p.qmin, p.qmax, p.qdamp, p.delta2, p.qbroad, self.max_uiso, rmax_angstrom)
        if p.calculator == "debye":
            return SrrealDebyeTransform(r, p.qmin, p.qmax, p.qdamp, p.delta2, p.qbroad, self.max_uiso, rmax_angstrom)
        return DebyeTransform(r, p.qmin, p.qmax, p.qdamp, max_distance)

    def reach_test(self, transform: RealSpaceTransform) -> Callable[[np.ndarray], np.ndarray]:
        """A test ``distances -> bool``: False for pairs whose peak cannot reach srreal's extended range.

        Conservative: it assumes the widest pair (two atoms of the largest U).
        """
        lim = transform.limits
        far = (lim.ext_hi + 1) * lim.rstep
        max_msd = 2.0 * self.max_uiso
        qbroad = self.params.qbroad

        def keep(distance: np.ndarray) -> np.ndarray:
            # delta2 only narrows peaks, so leaving it out keeps the test conservative
            widest = jeong_fwhm(distance, max_msd, 0.0, qbroad)
            return distance - gaussian_half_width(widest) < far

        return keep

    def species_factors(self, transform: RealSpaceTransform | DebyeTransform) -> np.ndarray:
        """Scattering strength per species at the transform's Q points.

        Shape (n_species, n_q), or (n_species, 1) where it does not depend on Q.
        """
        if not (isinstance(transform, DebyeTransform) and self.params.radiation == "xray"):
            return self.f0
        cached = self._factors.get(id(transform))
        if cached is None or cached[0] is not transform:
            # keep the transform with its table so the id cannot be reused
            cached = self._factors[id(transform)] = (transform, scattering_factors(self.symbols, "xray", transform.q))
        return cached[1]

    def class_fwhm(self, classes: PairClasses, distance: np.ndarray) -> np.ndarray:
        """Peak FWHM (Å) of each class at the given class distances (Å)."""
        a, b = np.divmod(classes.code, self.n_species)
        p = self.params
        return jeong_fwhm(distance, self.uiso[a] + self.uiso[b], p.delta2, p.qbroad)

    def code_weight(self, code: np.ndarray, transform: RealSpaceTransform | DebyeTransform) -> np.ndarray:
        """f_a f_b of each species pair code, shape (n, n_q or 1)."""
        f = self.species_factors(transform)
        a, b = np.divmod(code, self.n_species)
        return f[a] * f[b]

    def normalisation(
        self, species_counts: np.ndarray, transform: RealSpaceTransform | DebyeTransform
    ) -> np.ndarray:
        """N <f>^2 = (sum_i f_i)^2 / N per structure, from atoms per species (n_structures, n_species).

        Shape (n_structures, n_q), or (n_structures, 1) when f does not depend on Q.
        Where srreal would divide by zero (no atoms, or sum f = 0) it returns
        infinity, so G = F / N is 0 there, as srreal's result is.
        """
        counts = np.asarray(species_counts, dtype=float)
        f_sum = counts @ self.species_factors(transform)
        n_atoms = counts.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            norm = f_sum**2 / n_atoms
        return np.where((n_atoms > 0) & (f_sum != 0), norm, np.inf)
