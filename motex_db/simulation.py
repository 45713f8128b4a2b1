"""`simulate`: a structure file's PDF written as a .gr file, no database involved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from motex_db import __version__
from motex_db.datasets import write_gr
from motex_db.errors import InputError
from motex_db.pdf import PDFParameters, cluster_pdf
from motex_db.structures import read_structure


def r_grid(rmin: float, rmax: float, rstep: float) -> np.ndarray:
    """A uniform r grid from rmin to rmax (inclusive where the step lands on it), Å."""
    if rstep <= 0 or rmax <= rmin or rmin < 0:
        raise InputError(f"the r grid needs 0 <= rmin < rmax and rstep > 0 (got {rmin}, {rmax}, {rstep}).")
    n = int(np.floor((rmax - rmin) / rstep + 1e-9)) + 1
    return rmin + rstep * np.arange(n)


def simulate_file(
    structure_file: str | Path,
    out: str | Path,
    *,
    rmin: float = 1.0,
    rmax: float = 30.0,
    rstep: float = 0.01,
    radius: Optional[float] = None,
    calc_rmax: Optional[float] = None,
    **parameters,
) -> tuple[Path, int]:
    """Compute G(r) of a structure file and write it with every parameter in the header.

    ``parameters`` are :class:`motex_db.pdf.PDFParameters` fields. ``calc_rmax``
    (Å) is srreal's rmax (default rmax + rstep/2, as srfit sets it): a curve
    calculated to that r and cut back; for the ``debye`` calculator it sets the
    Q grid and the longest pair kept. Returns the path written and the number of atoms.
    """
    params = PDFParameters(**parameters)
    structure = read_structure(structure_file, radius)
    r = r_grid(rmin, rmax, rstep)
    if calc_rmax is not None and not calc_rmax > r[-1]:
        raise InputError(f"--calc-rmax ({calc_rmax:g} Å) must be beyond the last r ({r[-1]:g} Å).")
    g = cluster_pdf(structure.elements, structure.positions, r, params, rmax_angstrom=calc_rmax)
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"cannot write {out}: the folder {out.parent} does not exist.")
    header = {**params.to_dict(), "rmin": rmin, "rmax": rmax, "rstep": rstep,
              "calc_rmax": calc_rmax if calc_rmax is not None else "rmax + rstep/2"}
    header["biso"] = json.dumps(header["biso"])
    header["zoom"] = json.dumps(header["zoom"])
    header.update(structure=structure.source_file, n_atoms=len(structure.elements), radius=radius or "none",
                  generator=f"motex-db {__version__} simulate")
    write_gr(out, r, g, header, f"G(r) of {structure.source_file} simulated by motex-db")
    return out, len(structure.elements)
