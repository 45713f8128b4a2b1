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


def run_demo(directory: Path, url: Optional[str] = None, on_step: Callable[[str], None] = lambda line: None) -> str:
    """Run the demo into ``directory``; returns the record's URL."""
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
    engine.dispose()
    return url
