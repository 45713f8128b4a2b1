"""How a motif is fitted to a dataset: one frozen dataclass, the recipes' defaults in one place.

Two named recipes (science.md, section 3), both on srreal's real-space
calculator, X-rays, the Q window of the data header (else 0.7-20 Å^-1),
qdamp 0.05 Å^-1, Biso 0.4 Å^2 and delta2 0 fixed, fit range 1.6-10 Å,
unweighted residuals:

- ``fast`` (the default): a scale and one isotropic zoom;
- ``mlmotex``: ML-MotEx's published recipe (Anker et al., npj Comput. Mater.
  8, 213 (2022)), a scale and three zooms multiplying x, y and z.

Every zoom is restrained as srfit's ``FitRecipe.restrain(lb, ub, sig)`` does:
the residual vector gets max(0, lb - z, z - ub) / sig per zoom. Changing what
is refined (``free``) makes a ``custom`` recipe.

The resolved settings (Q window filled from the data header) plus
:data:`ENGINE_VERSION` identify a fit configuration: :meth:`FitSettings.content_hash`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from motex_db.errors import InputError
from motex_db.pdf.parameters import CALCULATORS, RADIATIONS, PDFParameters

__all__ = ["ENGINE_VERSION", "FitSettings", "RECIPES", "RECIPE_NAMES", "FREE_NAMES"]

#: Version of the fitting numerics; bump it whenever results for the same settings would change.
ENGINE_VERSION = "motex-pdf 1"
#: Calculators whose numerics changed after ENGINE_VERSION was set: their configurations also hash this
#: revision, so results computed under an older meaning are never reused, while the other calculators'
#: results stay valid. "debye" became srreal's own Q-grid sum (the exact integral is now "debye-exact").
CALCULATOR_REVISIONS = {"debye": "srreal Q grid"}
#: Distance grid step (Å) on which the batched fast path puts the pairs of starting models without
#: repeated distances (motex_db.pdf.engine; G within ~5e-6 of max |G| of the exact classes). The
#: configurations that path serves (real calculator, scale refined, at most one zoom) hash it too, so
#: results from before the grid are never taken for results with it.
PAIR_GRID_ANGSTROM = 0.02

RECIPE_NAMES = ("fast", "mlmotex", "custom")
#: Names that ``free`` may hold, besides ``biso_<El>`` (one element's Biso).
FREE_NAMES = ("scale", "zoom", "zoom3", "biso", "delta2")

# Used when the data header gives no Q window (ML-MotEx's values).
_DEFAULT_QMIN = 0.7
_DEFAULT_QMAX = 20.0
_BISO_ELEMENT = re.compile(r"^biso_([A-Z][a-z]{0,2})$")
# Canonical order of free names (then biso_<El> alphabetically before delta2).
_FREE_ORDER = {"scale": 0, "zoom": 1, "zoom3": 1, "biso": 2, "delta2": 4}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InputError(f"{name} must be a number, not {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, not {value!r}.") from None
    if not math.isfinite(number):
        raise InputError(f"{name} must be a finite number, not {value!r}.")
    return number + 0.0  # -0.0 -> 0.0, so equal settings serialise alike


def _bounds(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise InputError(f"{name} must be two numbers (low, high), not {value!r}.")
    low, high = (_number(name, v) for v in value)
    if not low < high:
        raise InputError(f"{name} must be ordered low < high, not ({low:g}, {high:g}).")
    return low, high


def _free_key(name: str) -> tuple[int, str]:
    return (_FREE_ORDER.get(name, 3), name)


def _canonical_free(free: Any) -> tuple[str, ...]:
    if isinstance(free, str):
        free = (free,)
    try:
        names = [str(name).strip() for name in free]
    except TypeError:
        raise InputError(f"free must be a list of parameter names, not {free!r}.") from None
    for name in names:
        if name not in FREE_NAMES and not _BISO_ELEMENT.match(name):
            raise InputError(
                f"Cannot refine {name!r}: choose from scale, zoom, zoom3, biso, biso_<El> (such as biso_W) and delta2."
            )
    unique = set(names)
    if {"zoom", "zoom3"} <= unique:
        raise InputError("Refine either one isotropic zoom ('zoom') or three ('zoom3'), not both.")
    if "biso" in unique:
        # 'biso' already frees every element's Biso
        unique = {name for name in unique if not name.startswith("biso_")}
    return tuple(sorted(unique, key=_free_key))


@dataclass(frozen=True)
class FitSettings:
    """Everything that decides the result of fitting one motif to one dataset.

    Fields (units):

    - ``recipe``: ``"fast"`` (scale, one zoom), ``"mlmotex"`` (scale, three
      zooms) or ``"custom"`` (any other choice of ``free``).
    - ``calculator``: ``"real"`` (srreal ``PDFCalculator``), ``"debye"`` (srreal
      ``DebyePDFCalculator`` on its Q grid) or ``"debye-exact"`` (the integral it approximates).
    - ``radiation``: ``"xray"`` or ``"neutron"``.
    - ``rmin``, ``rmax``: fit range, Å; the data points with rmin <= r <= rmax.
    - ``qmin``, ``qmax``: Q window, Å^-1; ``None`` until :meth:`resolved`
      fills them from the data header (else 0.7 and 20).
    - ``qdamp``, ``qbroad``: Å^-1.
    - ``biso``: start (or fixed) Biso per element, Å^2; ``"*"`` for every
      element not named.
    - ``delta2``: start (or fixed) delta2, Å^2.
    - ``free``: what is refined: ``"scale"``, ``"zoom"`` (isotropic) or
      ``"zoom3"`` (x, y, z), ``"biso"`` (one per element) or ``"biso_<El>"``,
      ``"delta2"``. Kept in a canonical order.
    - ``scale_start``, ``zoom_start``: start values (every zoom starts at ``zoom_start``).
    - ``zoom_bounds``, ``zoom_sigma``: the restraint of each zoom, srfit's
      residual entry max(0, lb - z, z - ub) / sigma.
    - ``biso_bounds`` (Å^2), ``delta2_bounds`` (Å^2): hard bounds for the refined values.
    """

    recipe: str = "fast"
    calculator: str = "real"
    radiation: str = "xray"
    rmin: float = 1.6
    rmax: float = 10.0
    qmin: float | None = None
    qmax: float | None = None
    qdamp: float = 0.05
    qbroad: float = 0.0
    biso: Mapping[str, float] = field(default_factory=lambda: {"*": 0.4})
    delta2: float = 0.0
    free: tuple[str, ...] = ("scale", "zoom")
    scale_start: float = 1.0
    zoom_start: float = 1.0
    zoom_bounds: tuple[float, float] = (0.99, 1.01)
    zoom_sigma: float = 0.001
    biso_bounds: tuple[float, float] = (0.0, 5.0)
    delta2_bounds: tuple[float, float] = (0.0, 10.0)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.recipe not in RECIPE_NAMES:
            raise InputError(f"Unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPE_NAMES)}.")
        if self.calculator not in CALCULATORS:
            raise InputError(f"Unknown PDF calculator {self.calculator!r}; choose one of {', '.join(CALCULATORS)}.")
        if self.radiation not in RADIATIONS:
            raise InputError(f"Unknown radiation {self.radiation!r}; choose one of {', '.join(RADIATIONS)}.")
        for name in ("rmin", "rmax", "qdamp", "qbroad", "delta2", "scale_start", "zoom_start", "zoom_sigma"):
            set_(self, name, _number(name, getattr(self, name)))
        for name in ("qmin", "qmax"):
            if getattr(self, name) is not None:
                set_(self, name, _number(name, getattr(self, name)))
        for name in ("zoom_bounds", "biso_bounds", "delta2_bounds"):
            set_(self, name, _bounds(name, getattr(self, name)))
        set_(self, "free", _canonical_free(self.free))
        if self.rmin < 0:
            raise InputError(f"rmin must not be negative, not {self.rmin:g} Å.")
        if not self.rmin < self.rmax:
            raise InputError(f"The fit range must have rmin < rmax, not {self.rmin:g}-{self.rmax:g} Å.")
        if self.zoom_sigma <= 0:
            raise InputError(f"zoom_sigma must be positive, not {self.zoom_sigma:g}.")
        if self.zoom_start <= 0:
            raise InputError(f"zoom_start must be positive, not {self.zoom_start:g}.")
        if self.zoom_bounds[0] <= 0:
            raise InputError(f"zoom_bounds must be positive, not {self.zoom_bounds}.")
        if self.qmin is not None and self.qmax is not None and not self.qmin < self.qmax:
            raise InputError(f"qmax ({self.qmax:g}) must be larger than qmin ({self.qmin:g}).")
        if self.recipe != "custom" and set(self.free) != set(_RECIPE_FREE[self.recipe]):
            raise InputError(
                f"The {self.recipe} recipe refines {' and '.join(_RECIPE_FREE[self.recipe])}; "
                f"use recipe 'custom' to refine {', '.join(self.free) or 'nothing'}."
            )
        # PDFParameters validates calculator-level values (qdamp, qbroad, biso) in one place.
        probe = PDFParameters(
            calculator=self.calculator, radiation=self.radiation, qdamp=self.qdamp, qbroad=self.qbroad,
            delta2=self.delta2, biso=self.biso,
        )
        set_(self, "biso", probe.biso)

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_recipe(cls, name: str, **overrides: Any) -> FitSettings:
        """The named recipe's settings with some fields changed.

        Changing ``free`` to anything but the recipe's own choice makes the
        recipe ``"custom"``; ``name="custom"`` starts from the fast recipe's values.
        """
        if name not in RECIPE_NAMES:
            raise InputError(f"Unknown recipe {name!r}; choose one of {', '.join(RECIPE_NAMES)}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(f"Unknown fit setting {unknown[0]!r}; known are {', '.join(sorted(known))}.")
        base = RECIPES["fast" if name == "custom" else name]
        recipe = overrides.pop("recipe", name)
        if "free" in overrides and recipe != "custom":
            if set(_canonical_free(overrides["free"])) != set(_RECIPE_FREE[recipe]):
                recipe = "custom"
        return replace(base, recipe=recipe, **overrides)

    def resolved(self, dataset_meta: Mapping[str, Any] | None) -> FitSettings:
        """These settings with qmin/qmax taken from the data header where not given (else 0.7 and 20 Å^-1)."""
        meta = dict(dataset_meta or {})
        values = {}
        for name, default in (("qmin", _DEFAULT_QMIN), ("qmax", _DEFAULT_QMAX)):
            value = getattr(self, name)
            if value is None:
                header = meta.get(name)
                if header is not None and header != "":
                    try:
                        value = _number(name, header)
                    except InputError:
                        raise InputError(f"The data header's {name} ({header!r}) is not a number.") from None
                else:
                    value = default
            values[name] = value
        if values["qmin"] < 0:
            raise InputError(f"qmin must not be negative, not {values['qmin']:g}.")
        if not values["qmin"] < values["qmax"]:
            raise InputError(f"qmax ({values['qmax']:g}) must be larger than qmin ({values['qmin']:g}).")
        return replace(self, **values)

    @property
    def is_resolved(self) -> bool:
        """True when the Q window is known (see :meth:`resolved`)."""
        return self.qmin is not None and self.qmax is not None

    def _require_resolved(self, what: str) -> None:
        if not self.is_resolved:
            raise InputError(f"Resolve the fit settings against the dataset (FitSettings.resolved) before {what}.")

    # ------------------------------------------------------------------ views

    @property
    def zoom_mode(self) -> str:
        """``"xyz"`` when three zooms are refined, else ``"iso"``."""
        return "xyz" if "zoom3" in self.free else "iso"

    @property
    def uses_pair_grid(self) -> bool:
        """True when the batched fast path (real calculator, scale and at most one zoom refined) may use
        :data:`PAIR_GRID_ANGSTROM` for a starting model without repeated distances."""
        return self.calculator == "real" and "scale" in self.free and set(self.free) <= {"scale", "zoom"}

    def pdf_parameters(self) -> PDFParameters:
        """The engine settings at the start values (zoom ``zoom_start``)."""
        self._require_resolved("computing a PDF")
        return PDFParameters(
            calculator=self.calculator, radiation=self.radiation, qmin=self.qmin, qmax=self.qmax,
            qdamp=self.qdamp, qbroad=self.qbroad, delta2=self.delta2, biso=dict(self.biso), zoom=self.zoom_start,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict with every field, keys sorted; :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {}
        for f in sorted(fields(self), key=lambda f: f.name):
            value = getattr(self, f.name)
            if f.name == "biso":
                value = {key: float(value[key]) for key in sorted(value)}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitSettings:
        """Settings from a dict as written by :meth:`to_dict`; missing keys take the defaults."""
        if not isinstance(data, Mapping):
            raise InputError(f"Fit settings must be a mapping, not {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"Unknown fit setting {unknown[0]!r}; known are {', '.join(sorted(known))}.")
        kwargs = dict(data)
        for name in ("free", "zoom_bounds", "biso_bounds", "delta2_bounds"):
            if isinstance(kwargs.get(name), list):
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)

    def content_hash(self, engine_version: str = ENGINE_VERSION) -> str:
        """SHA-256 (hex) of the resolved settings and the engine version: the identity of a fit configuration."""
        self._require_resolved("hashing them")
        identity = {"engine_version": str(engine_version), "settings": self.to_dict()}
        if self.calculator in CALCULATOR_REVISIONS:
            identity["calculator_revision"] = CALCULATOR_REVISIONS[self.calculator]
        if self.uses_pair_grid:
            identity["pair_grid_angstrom"] = PAIR_GRID_ANGSTROM
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


# What each named recipe refines: fast's is the class default, mlmotex's is stated here once.
_RECIPE_FREE = {"fast": FitSettings.__dataclass_fields__["free"].default, "mlmotex": ("scale", "zoom3")}

#: The named recipes; the defaults live in :class:`FitSettings` (``fast``) and here.
RECIPES: dict[str, FitSettings] = {
    "fast": FitSettings(),
    "mlmotex": FitSettings(recipe="mlmotex", free=_RECIPE_FREE["mlmotex"]),
}
