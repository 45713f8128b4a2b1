"""The ML-MotEx steps on the command line: sample (step 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from motex_db.cli.app import app, engine_of
from motex_db.cli.output import console
from motex_db.errors import InputError


@app.command()
def sample(
    ctx: typer.Context,
    structure: str = typer.Option(..., "--structure", help="Starting model to sample motifs from."),
    n: Optional[int] = typer.Option(None, "--n", help="How many new distinct motifs to add."),
    min_atoms: int = typer.Option(1, "--min-atoms", help="Fewest kept permutable atoms (uniform)."),
    max_atoms: Optional[int] = typer.Option(None, "--max-atoms", help="Most kept permutable atoms (uniform; default N)."),
    strategy: str = typer.Option("uniform", "--strategy", help="uniform (ML-MotEx's sampler) or sphere (cookie cutter)."),
    radius_min: float = typer.Option(3.0, "--radius-min", help="Smallest sphere radius in Å (sphere)."),
    radius_max: float = typer.Option(10.0, "--radius-max", help="Largest sphere radius in Å (sphere)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (drawn and recorded when not given)."),
    from_file: Optional[Path] = typer.Option(None, "--from-file", help="Add hand-picked motifs: one '0'/'1' string per line."),
) -> None:
    """Add new distinct motifs to a starting model's catalogue (never a mask twice)."""
    from motex_db.catalogue import add_mask_file, sample_motifs

    engine = engine_of(ctx)
    if (n is None) == (from_file is None):
        raise InputError("give either --n N or --from-file MASKS.txt.")
    if from_file is not None:
        outcome = add_mask_file(engine, structure, from_file)
        console.print(
            f"added {outcome.added} motifs from {from_file.name} to '{structure}'"
            + (f" ({outcome.already_stored} were already in the catalogue)" if outcome.already_stored else "")
            + f"; the catalogue holds {outcome.total}."
        )
        return
    outcome = sample_motifs(engine, structure, n, strategy, seed, min_atoms, max_atoms, radius_min, radius_max)
    console.print(f"added {outcome.added} new motifs to '{structure}' ({outcome.sampler}); the catalogue holds {outcome.total}.")
    if outcome.exhausted and outcome.added < n:
        console.print(f"the space of distinct motifs ran out: {outcome.added} of the {n} asked for were left.")
