"""ML-MotEx's own file formats, written from the record, so its notebooks read our results.

ML-MotEx (Anker et al., npj Comput. Mater. 8, 213 (2022); github.com/AndySAnker/ML-MotEx)
passes two plain text files between its steps, both written with ``np.savetxt``
(numbers as ``%.18e``, one space between columns, no header):

- the *training data* of step 3 (``Training_Data/structure_<name>.txt``): one
  row per fitted motif, columns ID, Rwp, number of kept atoms, then one 0/1
  column per permutable atom in file order; its step 3 reads it with
  ``np.loadtxt`` and trains on columns 2 onwards. ``motex-db import-fits``
  reads the same format back.
- ``AtomContributionValues.txt`` of step 4: one value per permutable atom, file
  order, 0.5 * (mean SHAP value over the motifs keeping the atom - mean over
  those removing it). Our stored contribution is that difference without the
  0.5 (:func:`motex_db.explain.atom_contributions`), so the file holds half of it.

``%.18e`` carries every bit of a float64, so a round trip through these files
changes no value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlmodel import Session, select

from motex_db.catalogue import masks_from_text
from motex_db.errors import InputError
from motex_db.models import AtomContribution, FitResult, Motif, StartingModel, TrainedModel

__all__ = [
    "ATOM_CONTRIBUTION_FILE",
    "MLMOTEX_SCALE",
    "export_mlmotex_files",
    "trained_model_fits",
    "training_data_file_name",
    "write_atom_contribution_values",
    "write_training_data",
]

ATOM_CONTRIBUTION_FILE = "AtomContributionValues.txt"
#: ML-MotEx multiplies both means of a contribution by 0.5; we store the plain difference.
MLMOTEX_SCALE = 0.5
_FORMAT = "%.18e"  # np.savetxt's default, which ML-MotEx uses


def training_data_file_name(structure: str) -> str:
    """ML-MotEx's name for a structure's training data: ``structure_<name>.txt``."""
    return f"structure_{structure}.txt"


def write_training_data(path: str | Path, motif_ids, masks: np.ndarray, rwp: np.ndarray) -> Path:
    """Write fitted motifs as ML-MotEx's step-3 input: ID, Rwp, number of kept atoms, one 0/1 per atom.

    ``masks`` (n, N) bool in permutable-atom file order, ``rwp`` (n,), ``motif_ids`` (n,) the IDs.
    """
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    rwp = np.asarray(rwp, dtype=float).ravel()
    ids = np.asarray(motif_ids, dtype=float).ravel()
    if not (len(masks) == rwp.size == ids.size):
        raise InputError(f"{len(masks)} masks, {rwp.size} Rwp values and {ids.size} IDs do not match.")
    if not np.all(np.isfinite(rwp)):
        raise InputError("ML-MotEx's training data cannot hold a failed fit (Rwp missing or not finite).")
    table = np.column_stack([ids, rwp, masks.sum(axis=1), masks.astype(float)])
    path = Path(path)
    np.savetxt(path, table, fmt=_FORMAT)
    return path


def write_atom_contribution_values(path: str | Path, contribution: np.ndarray) -> Path:
    """Write our contributions (mean keep - mean remove, permutable atoms in file order) as ML-MotEx's file."""
    values = MLMOTEX_SCALE * np.asarray(contribution, dtype=float).ravel()
    path = Path(path)
    np.savetxt(path, values, fmt=_FORMAT)
    return path


def trained_model_fits(session: Session, trained: TrainedModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(motif ids, masks (n, N) bool, Rwp) of every motif a trained model learned from, in its order."""
    model = session.get(StartingModel, trained.starting_model_id)
    ids = [int(m) for m in (trained.motif_ids if trained.motif_ids is not None else [])]
    if not ids:
        raise InputError(f"trained model {trained.id} does not list its motifs; train it again to export it.")
    fitted = dict(
        (motif_id, (mask, rwp))
        for motif_id, mask, rwp in session.exec(
            select(Motif.id, Motif.mask, FitResult.rwp)
            .join(FitResult, FitResult.motif_id == Motif.id)
            .where(FitResult.dataset_id == trained.dataset_id)
            .where(FitResult.fit_config_id == trained.fit_config_id)
            .where(FitResult.status == "ok")
            .where(Motif.id.in_(ids))
        ).all()
    )
    missing = [m for m in ids if m not in fitted]
    if missing:
        raise InputError(f"trained model {trained.id} learned from motif {missing[0]}, whose fit is no longer stored.")
    masks = masks_from_text([fitted[m][0] for m in ids], model.n_permutable)
    rwp = np.array([fitted[m][1] for m in ids], dtype=float)
    return np.array(ids), masks, rwp


def export_mlmotex_files(engine, trained_model_id: int, folder: str | Path) -> dict[str, Path]:
    """Write a trained model's training data and contributions in ML-MotEx's formats into ``folder``.

    Returns ``{"mlmotex_training_data": path, "mlmotex_contributions": path}``;
    the contributions file only once ``explain`` has stored them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"cannot write ML-MotEx's files into {folder}: it is not a folder.")
    with Session(engine) as session:
        trained = session.get(TrainedModel, trained_model_id)
        if trained is None:
            raise InputError(f"no trained model {trained_model_id}.")
        structure = session.get(StartingModel, trained.starting_model_id).name
        ids, masks, rwp = trained_model_fits(session, trained)
        contributions = session.exec(
            select(AtomContribution.contribution)
            .where(AtomContribution.trained_model_id == trained.id)
            .order_by(AtomContribution.atom_index)
        ).all()
    files = {"mlmotex_training_data": write_training_data(folder / training_data_file_name(structure), ids, masks, rwp)}
    if contributions:
        files["mlmotex_contributions"] = write_atom_contribution_values(
            folder / ATOM_CONTRIBUTION_FILE, np.array(contributions, dtype=float)
        )
    return files
