"""Scattering strengths of atoms: X-ray form factors and neutron scattering lengths.

X-rays: the Waasmaier-Kirfel analytic form factors (D. Waasmaier, A. Kirfel,
Acta Cryst. A51, 416 (1995)), read from ``xraydb``. srreal's ``SFTXray`` table
uses the same formula and file (``f0_WaasKirf.dat``); its real-space
``PDFCalculator`` weights pairs with the value at Q = 0, i.e. ``c + sum(a_i)``,
which is close to but not exactly Z (W: 73.96). The Debye calculator uses the
full Q dependence.

Neutrons: coherent scattering lengths b_c (fm) from ``periodictable``;
srreal's ``SFTNeutron`` takes them from its own copy of the NIST table, which
is the same data for most elements (``periodictable`` 2.x carries some later
revisions, e.g. W 4.755 fm where the NIST table says 4.86 fm).

Ions: a symbol such as ``"O2-"`` uses its own Waasmaier-Kirfel entry when the
table has one (``xraydb.f0_ions()``), else the neutral element's. (srreal does
the same for charges of one and raises for other ions it does not know.)
Neutron lengths ignore the charge, as srreal does.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from motex_db.errors import InputError
from motex_db.pdf.parameters import bare_symbol

__all__ = ["xray_form_factor", "neutron_scattering_length", "scattering_factors"]


@lru_cache(maxsize=1)
def _xray_table_symbols() -> frozenset[str]:
    import xraydb

    return frozenset(xraydb.f0_ions())


@lru_cache(maxsize=None)
def _xray_table_symbol(symbol: str) -> str:
    known = _xray_table_symbols()
    for candidate in (symbol.strip(), bare_symbol(symbol)):
        if candidate in known:
            return candidate
    raise InputError(
        f"Unknown element {symbol!r}: the X-ray form factor table (Waasmaier-Kirfel) has no entry for it."
    )


def xray_form_factor(symbol: str, q_inv_angstrom: np.ndarray | float) -> np.ndarray:
    """Waasmaier-Kirfel X-ray form factor f0 (electrons) at Q = 4 pi sin(theta)/lambda (Å^-1)."""
    import xraydb

    q = np.atleast_1d(np.asarray(q_inv_angstrom, dtype=float))
    # xraydb takes sin(theta)/lambda = Q / (4 pi), as srreal's fxrayatq does.
    values = np.asarray(xraydb.f0(_xray_table_symbol(symbol), q / (4.0 * np.pi)), dtype=float)
    return values.reshape(q.shape)


@lru_cache(maxsize=None)
def _xray_at_zero(symbol: str) -> float:
    return float(xray_form_factor(symbol, 0.0)[0])


@lru_cache(maxsize=None)
def neutron_scattering_length(symbol: str) -> float:
    """Coherent neutron scattering length b_c (fm) of an element (charge ignored), from periodictable."""
    import periodictable

    name = bare_symbol(symbol)
    try:
        element = periodictable.elements.symbol(name)
    except ValueError:
        raise InputError(f"Unknown element {symbol!r}: periodictable does not know {name!r}.") from None
    b_c = element.neutron.b_c
    if b_c is None:
        raise InputError(f"Unknown element {symbol!r}: no neutron scattering length is tabulated for it.")
    return float(b_c)


def scattering_factors(
    symbols: Sequence[str], radiation: str, q_inv_angstrom: np.ndarray | None = None
) -> np.ndarray:
    """Scattering strength of each symbol, shape (n_symbols, n_q).

    With ``q_inv_angstrom`` None, the Q = 0 values as srreal's real-space
    calculator uses them (shape (n_symbols, 1)). Neutron lengths do not depend
    on Q, so every column is the same.
    """
    for symbol in symbols:
        if not isinstance(symbol, str):
            raise InputError(f"Element symbols must be strings, not {symbol!r}.")
    if q_inv_angstrom is None:
        q = np.zeros(1)
    else:
        q = np.asarray(q_inv_angstrom, dtype=float).ravel()
    out = np.empty((len(symbols), q.size))
    for i, symbol in enumerate(symbols):
        if radiation == "neutron":
            out[i] = neutron_scattering_length(symbol)
        elif radiation == "xray":
            out[i] = _xray_at_zero(symbol) if q_inv_angstrom is None else xray_form_factor(symbol, q)
        else:
            raise InputError(f"Unknown radiation {radiation!r}; choose xray or neutron.")
    return out
