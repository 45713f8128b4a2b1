"""PDF engine: G(r) of non-periodic clusters as DiffPy's srreal computes it, one at a time or in batches.

- :class:`PDFParameters`: the settings (calculator, radiation, Q window, widths, zoom).
- :func:`cluster_pdf`: G(r) of one cluster (srreal ``PDFCalculator`` or ``DebyePDFCalculator``).
- :class:`MotifPDFEngine`: G(r) of many motifs (subsets) of one starting model.
"""

from motex_db.pdf.calculators import cluster_pdf
from motex_db.pdf.engine import MotifPDFEngine
from motex_db.pdf.pairs import DISTANCE_TOLERANCE, PairClasses
from motex_db.pdf.parameters import PDFParameters, zoom_factors
from motex_db.pdf.scattering import neutron_scattering_length, xray_form_factor

__all__ = [
    "DISTANCE_TOLERANCE",
    "MotifPDFEngine",
    "PDFParameters",
    "PairClasses",
    "cluster_pdf",
    "neutron_scattering_length",
    "xray_form_factor",
    "zoom_factors",
]
