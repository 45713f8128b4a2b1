"""Step 2 of ML-MotEx: fitting every motif of a catalogue to a measured PDF.

- :class:`FitSettings`, :data:`RECIPES`: what is fitted and how (recipes ``fast`` and ``mlmotex``).
- :class:`MotifFitter`: fits many motifs of one starting model to one dataset at once.
"""

from motex_db.fitting.batched import FitBatch, MotifFitter
from motex_db.fitting.settings import ENGINE_VERSION, RECIPES, FitSettings

__all__ = ["ENGINE_VERSION", "FitBatch", "FitSettings", "MotifFitter", "RECIPES"]
