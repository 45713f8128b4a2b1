"""Our PDF engine as a diffpy.srfit ProfileGenerator.

diffpy.srfit organises a fit as a FitRecipe of FitContributions, each a
Profile (the data) and ProfileGenerators (the calculators), with parameters
constrained and restrained by name. :class:`ClusterPDFGenerator` plugs
:func:`motex_db.pdf.cluster_pdf` into that machinery for one fixed cluster, so
any srfit recipe (other parameters, constraints, several contributions) can
use our engine; :func:`build_cluster_recipe` builds ML-MotEx's published
recipe on it (Anker et al., npj Comput. Mater. 8, 213 (2022)).

This is the flexible, one-fit-at-a-time path; the batched fitting module
computes the same thing much faster for thousands of motifs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
from diffpy.srfit.fitbase import FitContribution, FitRecipe, Profile, ProfileGenerator

from motex_db.errors import InputError
# The submodules, not the package: the package may import this module.
from motex_db.pdf.calculators import cluster_pdf
from motex_db.pdf.parameters import PDFParameters, bare_symbol

__all__ = ["ClusterPDFGenerator", "build_cluster_recipe", "ZOOM_MODES"]

ZOOM_MODES = ("iso", "xyz")
_ZOOM_NAMES = {"iso": ("zoom",), "xyz": ("zoomx", "zoomy", "zoomz")}


class ClusterPDFGenerator(ProfileGenerator):
    """G(r) of a fixed, non-periodic cluster computed by :func:`cluster_pdf`.

    The calculator, radiation, qmin, qmax (Å^-1), qdamp and qbroad are fixed
    at construction (taken from ``params``). The srfit Parameters, refinable
    in a FitRecipe, start from ``params`` too:

    - ``zoom`` (``zoom_mode="iso"``) or ``zoomx``, ``zoomy``, ``zoomz``
      (``zoom_mode="xyz"``): dimensionless factors multiplying the Cartesian
      coordinates, all together or along each axis;
    - ``delta2`` (Å^2): quadratic sharpening of the peaks;
    - ``biso_<El>`` (Å^2), one per element present, e.g. ``biso_W`` (ions
      share their element's: ``O2-`` uses ``biso_O``).

    The last computed G is kept, so repeated calls with unchanged parameters
    and r grid return it without recomputing.
    """

    def __init__(
        self,
        elements: Sequence[str],
        positions_angstrom: np.ndarray,
        params: PDFParameters,
        zoom_mode: str = "iso",
        name: str = "G",
    ):
        ProfileGenerator.__init__(self, name)
        self._elements = [str(e) for e in elements]
        self._positions = np.array(positions_angstrom, dtype=float)
        if self._positions.shape != (len(self._elements), 3):
            raise InputError(
                f"Cluster positions must be an ({len(self._elements)}, 3) array, not shape {self._positions.shape}."
            )
        if zoom_mode not in ZOOM_MODES:
            raise InputError(f"The zoom mode must be 'iso' or 'xyz', not {zoom_mode!r}.")
        self._settings = params
        self.zoom_mode = zoom_mode
        # One Biso per element: ions ("O2-") share their element's ("biso_O").
        self.element_symbols = list(dict.fromkeys(bare_symbol(e) for e in self._elements))
        self._add_parameters(params)
        self._cache_key: tuple | None = None
        self._cache_r: np.ndarray | None = None
        self._cache_g: np.ndarray | None = None

    def _add_parameters(self, params: PDFParameters) -> None:
        zoom_xyz = params.zoom_xyz
        if self.zoom_mode == "iso" and len(set(zoom_xyz)) > 1:
            raise InputError(f"An isotropic zoom needs one start value, not three different ones {zoom_xyz}.")
        for zoom_name, start in zip(self.zoom_names, zoom_xyz):
            self.newParameter(zoom_name, float(start))
        self.newParameter("delta2", float(params.delta2))
        for element in self.element_symbols:
            self.newParameter(f"biso_{element}", params.biso_of(element))

    @property
    def zoom_names(self) -> tuple[str, ...]:
        """Names of this generator's zoom Parameters."""
        return _ZOOM_NAMES[self.zoom_mode]

    def current_parameters(self) -> PDFParameters:
        """The engine settings for the current Parameter values."""
        zoom = tuple(self.get(name).getValue() for name in self.zoom_names)
        return replace(
            self._settings,
            delta2=self.get("delta2").getValue(),
            biso={el: self.get(f"biso_{el}").getValue() for el in self.element_symbols},
            zoom=zoom[0] if self.zoom_mode == "iso" else zoom,
        )

    def __call__(self, r: np.ndarray) -> np.ndarray:
        """G(r) in Å^-2 on the r grid ``r`` (Å) for the current Parameters."""
        r = np.asarray(r, dtype=float)
        key = tuple(p.getValue() for p in self._parameters.values())
        if key == self._cache_key and self._cache_r is not None and np.array_equal(r, self._cache_r):
            return self._cache_g
        g = np.asarray(cluster_pdf(self._elements, self._positions, r, self.current_parameters()))
        # Shared with later callers, so nobody may change it in place.
        g.setflags(write=False)
        self._cache_key, self._cache_r, self._cache_g = key, r.copy(), g
        return g


def build_cluster_recipe(
    elements: Sequence[str],
    positions_angstrom: np.ndarray,
    r_angstrom: np.ndarray,
    g_obs: np.ndarray,
    params: PDFParameters,
    zoom_mode: str = "iso",
    free: Iterable[str] = ("scale", "zoom"),
    zoom_bounds: tuple[float, float] = (0.99, 1.01),
    zoom_sigma: float = 0.001,
    scale: float = 1.0,
) -> FitRecipe:
    """ML-MotEx's published fit recipe on our engine, ready for ``leastsq``.

    One FitContribution ``"pdf"`` with equation ``"scale*G"``, the observed
    profile (r in Å, G in Å^-2, unit uncertainties so residuals are
    unweighted) on exactly the given grid, and a :class:`ClusterPDFGenerator`
    ``G`` started from ``params``. Recipe variables: ``scale`` (starting at
    ``scale``), the zoom(s) (``zoom`` or ``zoomx``/``zoomy``/``zoomz``, tag
    ``zoom``), ``delta2`` and ``biso_<El>`` (tag ``biso``). Every zoom is
    restrained as ML-MotEx did, ``recipe.restrain(zoom, lb=0.99, ub=1.01,
    sig=0.001)``: the residual gets max(0, lb - z, z - ub) / sig per zoom.

    ``free`` names what is refined: variable names or the tags ``zoom``,
    ``biso`` and ``all``; everything else is held at its start value. Refine with
    ``scipy.optimize.leastsq(recipe.residual, recipe.values)``.
    """
    generator = ClusterPDFGenerator(elements, positions_angstrom, params, zoom_mode=zoom_mode, name="G")
    contribution = FitContribution("pdf")
    contribution.setProfile(_profile(r_angstrom, g_obs), xname="r")
    contribution.addProfileGenerator(generator)
    contribution.setEquation("scale*G")

    recipe = FitRecipe()
    # srfit's default hook prints every residual call; library code is quiet.
    recipe.clearFitHooks()
    recipe.addContribution(contribution)
    recipe.addVar(contribution.scale, float(scale), name="scale")
    low, high = zoom_bounds
    for zoom_name in generator.zoom_names:
        recipe.addVar(generator.get(zoom_name), name=zoom_name, tag="zoom")
        recipe.restrain(zoom_name, lb=low, ub=high, sig=zoom_sigma)
    recipe.addVar(generator.get("delta2"), name="delta2")
    for element in generator.element_symbols:
        recipe.addVar(generator.get(f"biso_{element}"), name=f"biso_{element}", tag="biso")
    names = ["scale", *generator.zoom_names, "delta2", *(f"biso_{el}" for el in generator.element_symbols)]
    _free_only(recipe, free, known=set(names) | {"zoom", "biso", "all"})
    return recipe


def _profile(r_angstrom: np.ndarray, g_obs: np.ndarray) -> Profile:
    r = np.asarray(r_angstrom, dtype=float)
    g = np.asarray(g_obs, dtype=float)
    if r.ndim != 1 or r.shape != g.shape or len(r) < 2:
        raise InputError(f"r and G must be 1-D arrays of the same length (at least 2), not {r.shape} and {g.shape}.")
    profile = Profile()
    profile.setObservedProfile(r, g)
    return profile


def _free_only(recipe: FitRecipe, free: Iterable[str], known: set[str]) -> None:
    free = list(free)
    unknown = [name for name in free if name not in known]
    if unknown:
        raise InputError(f"Cannot refine {unknown[0]!r}: choose from {', '.join(sorted(known))}.")
    recipe.fix("all")
    if free:
        recipe.free(*free)
