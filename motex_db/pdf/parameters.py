"""Settings of a PDF calculation: one frozen dataclass, one source of defaults.

The defaults are ML-MotEx's published recipe (Anker et al., npj Comput. Mater.
8, 213 (2022)): srreal's real-space calculator, X-rays, Q window 0.7-20 Å^-1,
qdamp 0.05 Å^-1, Biso 0.4 Å^2 on every atom, no sharpening or broadening.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from motex_db.errors import InputError

__all__ = ["CALCULATORS", "RADIATIONS", "PDFParameters", "Zoom", "bare_symbol", "zoom_factors"]

CALCULATORS = ("real", "debye", "debye-exact")
RADIATIONS = ("xray", "neutron")

Zoom = float | tuple[float, float, float]


def bare_symbol(symbol: str) -> str:
    """The element part of an atom or ion symbol: ``"O2-"`` -> ``"O"``, ``"Fe3+"`` -> ``"Fe"``."""
    return symbol.strip().rstrip("+-0123456789")


class _FrozenMapping(Mapping[str, float]):
    """A read-only, hashable ``{str: float}`` mapping (keeps the dataclass hashable)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, float]):
        self._data = dict(data)

    def __getitem__(self, key: str) -> float:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items())))

    def __repr__(self) -> str:
        return repr(self._data)


def _finite(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, not {value!r}.") from None
    if not math.isfinite(number):
        raise InputError(f"{name} must be a finite number, not {value!r}.")
    return number


def _normalised_zoom(zoom: Any) -> Zoom:
    if isinstance(zoom, str):
        raise InputError(f"zoom must be a number or three numbers, not {zoom!r}.")
    if np.ndim(zoom) == 1:
        values = tuple(_finite("zoom", z) for z in zoom)
        if len(values) != 3:
            raise InputError(f"zoom must be one number or three (x, y, z), not {len(values)}.")
        if min(values) <= 0:
            raise InputError(f"zoom factors must be positive, not {values}.")
        return values
    value = _finite("zoom", zoom)
    if value <= 0:
        raise InputError(f"zoom must be positive, not {value}.")
    return value


@dataclass(frozen=True)
class PDFParameters:
    """How to compute G(r) of a cluster, as DiffPy's srreal defines it.

    Fields (units):

    - ``calculator``: ``"real"`` (srreal ``PDFCalculator``: Gaussian peaks in
      real space, then the Q window applied by FFT), ``"debye"`` (srreal
      ``DebyePDFCalculator``: Debye sum on its Q grid, then sine transform)
      or ``"debye-exact"`` (the integral that sum approximates, every pair kept).
    - ``radiation``: ``"xray"`` (Waasmaier-Kirfel form factors) or ``"neutron"``
      (coherent scattering lengths).
    - ``qmin``, ``qmax``: the Q window, Å^-1.
    - ``qdamp``: Q resolution damping, envelope exp(-(qdamp r)^2 / 2), Å^-1.
    - ``qbroad``: Q-dependent peak broadening, Å^-1 (srreal's Jeong model).
    - ``delta2``: low-r peak sharpening, Å^2 (srreal's Jeong model).
    - ``biso``: isotropic displacement parameter B (Å^2) per element symbol;
      ``"*"`` covers every element not named. U = B / (8 pi^2). Note that
      srreal's real-space calculator draws no peak at all for a pair whose
      width is zero, so Biso 0 on both atoms makes that pair vanish there.
    - ``zoom``: multiplies the coordinates; one number (isotropic) or three
      (x, y, z), as ML-MotEx's lattice parameters a, b, c of the cluster.
    """

    calculator: str = "real"
    radiation: str = "xray"
    qmin: float = 0.7
    qmax: float = 20.0
    qdamp: float = 0.05
    qbroad: float = 0.0
    delta2: float = 0.0
    biso: Mapping[str, float] = field(default_factory=lambda: {"*": 0.4})
    zoom: Zoom = 1.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.calculator not in CALCULATORS:
            raise InputError(
                f"Unknown PDF calculator {self.calculator!r}; choose one of {', '.join(CALCULATORS)}."
            )
        if self.radiation not in RADIATIONS:
            raise InputError(
                f"Unknown radiation {self.radiation!r}; choose one of {', '.join(RADIATIONS)}."
            )
        for name in ("qmin", "qmax", "qdamp", "qbroad", "delta2"):
            set_(self, name, _finite(name, getattr(self, name)))
        if self.qmin < 0:
            raise InputError(f"qmin must not be negative, not {self.qmin}.")
        if self.qmax <= self.qmin:
            raise InputError(f"qmax ({self.qmax}) must be larger than qmin ({self.qmin}).")
        if self.qdamp < 0:
            raise InputError(f"qdamp must not be negative, not {self.qdamp}.")
        if self.qbroad < 0:
            raise InputError(f"qbroad must not be negative, not {self.qbroad}.")
        if not isinstance(self.biso, Mapping):
            raise InputError(f"biso must map element symbols to Biso values, not {self.biso!r}.")
        biso = {}
        for key, value in self.biso.items():
            if not isinstance(key, str) or not key.strip():
                raise InputError(f"biso keys must be element symbols or '*', not {key!r}.")
            number = _finite(f"Biso of {key}", value)
            if number < 0:
                raise InputError(f"Biso of {key} must not be negative, not {number}.")
            biso[key.strip()] = number
        set_(self, "biso", _FrozenMapping(biso))
        set_(self, "zoom", _normalised_zoom(self.zoom))

    def biso_of(self, element: str) -> float:
        """Biso (Å^2) of an atom: its own symbol, else its element (``"O2-"`` -> ``"O"``), else ``"*"``."""
        symbol = element.strip()
        for key in (symbol, bare_symbol(symbol), "*"):
            if key in self.biso:
                return self.biso[key]
        raise InputError(f"No Biso given for element {symbol}; give one for it or for '*'.")

    @property
    def zoom_xyz(self) -> tuple[float, float, float]:
        """The zoom as three factors (x, y, z)."""
        return zoom_factors(self.zoom)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict; :meth:`from_dict` reads it back to an equal object."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["biso"] = dict(self.biso)
        out["zoom"] = list(self.zoom) if isinstance(self.zoom, tuple) else self.zoom
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PDFParameters:
        """Parameters from a dict as written by :meth:`to_dict`; missing keys take the defaults."""
        if not isinstance(data, Mapping):
            raise InputError(f"PDF parameters must be a mapping, not {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(
                f"Unknown PDF parameter(s) {', '.join(map(repr, unknown))}; known are {', '.join(sorted(known))}."
            )
        kwargs = dict(data)
        if isinstance(kwargs.get("zoom"), list):
            kwargs["zoom"] = tuple(kwargs["zoom"])
        return cls(**kwargs)


def zoom_factors(zoom: Any) -> tuple[float, float, float]:
    """A zoom (one positive number or three) as validated (x, y, z) factors."""
    zoom = _normalised_zoom(zoom)
    if isinstance(zoom, tuple):
        return zoom
    return (zoom, zoom, zoom)
