"""The ML-MotEx steps on the command line: simulate, sample, fit, demo."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

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


def _parse_biso(values: list[str]) -> dict[str, float]:
    biso: dict[str, float] = {}
    for item in values:
        element, sep, number = item.partition("=")
        try:
            if not sep or not element.strip():
                raise ValueError
            biso[element.strip()] = float(number)
        except ValueError:
            raise InputError(f"--biso takes EL=VALUE (for example W=0.3 or *=0.4), not '{item}'.") from None
    return biso or {"*": 0.4}


def _parse_zoom(text: str) -> float | tuple[float, float, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        return values[0]
    if len(values) == 3:
        return tuple(values)
    raise InputError(f"--zoom takes one factor or three (x,y,z) separated by commas, not '{text}'.")


@app.command()
def simulate(
    structure_file: Path = typer.Argument(..., help="Structure file (any format ase.io.read knows)."),
    out: Path = typer.Option(..., "--out", help="Where to write the .gr file."),
    calculator: str = typer.Option("real", "--calculator", help="real (srreal's PDFCalculator) or debye (DebyePDFCalculator)."),
    radiation: str = typer.Option("xray", "--radiation", help="xray or neutron."),
    qmin: float = typer.Option(0.7, "--qmin", help="Qmin, Å^-1."),
    qmax: float = typer.Option(20.0, "--qmax", help="Qmax, Å^-1."),
    qdamp: float = typer.Option(0.05, "--qdamp", help="Q resolution damping, Å^-1."),
    qbroad: float = typer.Option(0.0, "--qbroad", help="Q resolution peak broadening, Å^-1."),
    delta2: float = typer.Option(0.0, "--delta2", help="Correlated-motion sharpening, Å^2."),
    zoom: str = typer.Option("1.0", "--zoom", help="Multiplies the coordinates: one factor, or x,y,z."),
    biso: List[str] = typer.Option([], "--biso", help="EL=VALUE in Å^2, repeatable; *=VALUE for every element (default *=0.4)."),
    rmin: float = typer.Option(1.0, "--rmin", help="First r, Å."),
    rmax: float = typer.Option(30.0, "--rmax", help="Last r, Å."),
    rstep: float = typer.Option(0.01, "--rstep", help="r step, Å."),
    radius: Optional[float] = typer.Option(None, "--radius", help="For a crystal: a sphere of this radius (Å) cut from a supercell."),
) -> None:
    """Write the PDF of a structure (as a non-periodic cluster) to a .gr file. Needs no database."""
    from motex_db.simulation import simulate_file

    written, n_atoms = simulate_file(
        structure_file, out, calculator=calculator, radiation=radiation, qmin=qmin, qmax=qmax,
        qdamp=qdamp, qbroad=qbroad, delta2=delta2, zoom=_parse_zoom(zoom), biso=_parse_biso(biso),
        rmin=rmin, rmax=rmax, rstep=rstep, radius=radius,
    )
    console.print(f"wrote {written} ({n_atoms} atoms, {calculator} calculator, r {rmin:g}-{rmax:g} Å).")


@app.command()
def demo(
    ctx: typer.Context,
    directory: Path = typer.Option(Path("motex-demo"), "--dir", help="Folder for the demo's record and files."),
) -> None:
    """Run the generated C60 example end to end in a fresh folder (its own SQLite record)."""
    from motex_db.demo import run_demo

    url = run_demo(directory, url=ctx.obj["db"], on_step=console.print)
    console.print(f"done: look at it with  motex-db --db {url} status")
