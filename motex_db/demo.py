"""The generated example, end to end: the paper's C60 case with no downloaded data.

A buckyball hidden in a ~130-atom carbon starting model, and a "measured" PDF
simulated from the buckyball alone (:mod:`motex_db.examples`). The demo runs
each step into its own SQLite record and reports what it did through
``on_step`` (the command line prints those lines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import ase.io

from motex_db.datasets import add_datasets, write_gr
from motex_db.db import open_engine, safe_url
from motex_db.errors import InputError
from motex_db.examples import C60_ATOM_COUNT, c60_dataset_header, c60_measured_pdf, c60_starting_model
from motex_db.simulation import r_grid
from motex_db.structures import add_starting_model

STRUCTURE_NAME = "c60-in-carbon"
DATASET_NAME = "c60-simulated"


def write_demo_files(directory: Path) -> tuple[Path, Path]:
    """Write the starting model (xyz) and the simulated measurement (.gr) into ``directory``."""
    structure_path = directory / "c60_starting_model.xyz"
    ase.io.write(str(structure_path), c60_starting_model(), format="xyz")
    r = r_grid(0.5, 20.0, 0.01)
    data_path = write_gr(
        directory / "c60_simulated.gr", r, c60_measured_pdf(r), c60_dataset_header(), "C60 PDF simulated by motex-db demo"
    )
    return structure_path, data_path


DEMO_STEPS = ("data", "sample", "fit", "train", "explain")
DEMO_MOTIFS = 10_000
DEMO_SEARCH_ITERATIONS = 15


def run_demo(
    directory: Path,
    url: Optional[str] = None,
    on_step: Callable[[str], None] = lambda line: None,
    through: str = "explain",
) -> str:
    """Run the demo into ``directory`` up to and including the step ``through``; returns the record's URL.

    Every step is incremental, so running the demo again adds nothing.
    """
    if through not in DEMO_STEPS:
        raise InputError(f"the demo's steps are {', '.join(DEMO_STEPS)}, not '{through}'.")
    steps = DEMO_STEPS[: DEMO_STEPS.index(through) + 1]
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory} exists and is not a folder.")
    directory.mkdir(parents=True, exist_ok=True)
    url = url or f"sqlite:///{directory / 'motex.db'}"
    engine = open_engine(url)
    on_step(f"record: {safe_url(url)}")

    structure_path, data_path = write_demo_files(directory)
    model, created = add_starting_model(engine, structure_path, STRUCTURE_NAME, ["C"], bond_cutoff=1.6)
    on_step(
        f"{'added' if created else 'kept'} starting model '{model.name}': {model.n_atoms} carbon atoms, "
        f"the first {C60_ATOM_COUNT} a buckyball ({structure_path})"
    )
    (dataset, created), = add_datasets(engine, [data_path], DATASET_NAME)
    on_step(
        f"{'added' if created else 'kept'} dataset '{dataset.name}': the buckyball's PDF with noise, "
        f"{dataset.n_points} points ({data_path})"
    )
    if "sample" in steps:
        from motex_db.catalogue import sample_motifs

        missing = DEMO_MOTIFS - _motif_count(engine, model.id)
        if missing > 0:
            outcome = sample_motifs(engine, STRUCTURE_NAME, missing, seed=1)
            on_step(f"sampled {outcome.added} motifs ({outcome.sampler})")
    if "fit" in steps:
        from motex_db.fitting.settings import FitSettings
        from motex_db.fitting.work import fit_catalogue

        summary = fit_catalogue(engine, STRUCTURE_NAME, DATASET_NAME, FitSettings())
        on_step(
            f"fitted {summary.fitted} motifs ({summary.rate:,.0f} fits/s, {summary.failed} failed): "
            f"best Rwp {summary.best_rwp:.4f}, motif {summary.best_motif_id} with {summary.best_motif_size} atoms"
        )
    if "train" in steps:
        from motex_db.learning import train_model

        trained = train_model(engine, STRUCTURE_NAME, DATASET_NAME, n_iter=DEMO_SEARCH_ITERATIONS, seed=0)
        on_step(
            f"trained model {trained.trained_model_id} on {trained.n_motifs} fits: test MAE {trained.metrics['mae']:.4f} "
            f"in Rwp; MLflow run {trained.mlflow_run_id}"
        )
    if "explain" in steps:
        from motex_db.explain import explain_model

        explained = explain_model(engine, STRUCTURE_NAME, DATASET_NAME)
        kept = [i for i, c in enumerate(explained.extracted_mask, start=1) if c == "1"]
        in_cage = sum(1 for i in kept if i <= C60_ATOM_COUNT)
        on_step(
            f"explained: {len(kept)} atoms have negative contributions, {in_cage} of them in the buckyball "
            f"(atoms 1-{C60_ATOM_COUNT}); overall confidence {explained.overall_confidence:.2f}; "
            f"the extracted motif fits with Rwp {explained.extracted_rwp:.4f}"
        )
    engine.dispose()
    return url


def _motif_count(engine, model_id: int) -> int:
    import sqlalchemy as sa
    from sqlmodel import Session, select

    from motex_db.models import Motif

    with Session(engine) as session:
        return session.exec(select(sa.func.count()).select_from(Motif).where(Motif.starting_model_id == model_id)).one()
