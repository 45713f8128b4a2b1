"""Structure mining on the command line: ``library add | list | train`` and ``mine``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from motex_db.cli import output
from motex_db.cli.app import MLFLOW_HELP, app, engine_of
from motex_db.cli.output import console, error_console
from motex_db.cli.ui import runs_hint

library_app = typer.Typer(help="Libraries of candidate crystal structures: add, list, train.", no_args_is_help=True)
app.add_typer(library_app, name="library")

@library_app.command("add")
def library_add(
    ctx: typer.Context,
    inputs: List[Path] = typer.Argument(..., help="Crystal files (CIF or any format ase.io.read knows) or folders of them."),
    name: str = typer.Option(..., "--name", help="Library name (created on first use)."),
    rmax: Optional[float] = typer.Option(None, "--rmax", help="Simulate PDFs from 0 to this r, Å (default 30)."),
    rstep: Optional[float] = typer.Option(None, "--rstep", help="r step, Å (default 0.1)."),
    qmin: Optional[float] = typer.Option(None, "--qmin", help="Qmin, Å^-1 (default 0.8)."),
    qmax: Optional[float] = typer.Option(None, "--qmax", help="Qmax, Å^-1 (default 25)."),
    qdamp: Optional[float] = typer.Option(None, "--qdamp", help="Q resolution damping, Å^-1 (default 0.04)."),
    uiso: Optional[float] = typer.Option(None, "--uiso", help="Uiso of every atom, Å^2 (default 0.01)."),
    bundle_pcc: Optional[float] = typer.Option(None, "--bundle-pcc", help="Bundle structures whose PDFs correlate at least this much (Pearson r, default 0.95)."),
) -> None:
    """Add crystal structures to a library: simulate each one's PDF as a crystal and bundle similar ones into classes.

    Only files the library does not hold yet are simulated; unreadable files are named and skipped.
    Settings are fixed when the library is made.
    """
    from motex_db.library import add_to_library

    engine = engine_of(ctx)
    with output.stage_progress("files") as progress:
        outcome = add_to_library(
            engine, name, inputs, on_progress=lambda done, total: progress("simulating", done, total),
            rmax=rmax, rstep=rstep, qmin=qmin, qmax=qmax, qdamp=qdamp, uiso=uiso, bundle_pcc=bundle_pcc,
        )
    for reason in outcome.skipped:
        error_console.print(f"skipped {reason}", markup=False)
    s = outcome.settings
    verb = "created library" if outcome.created else "library"
    console.print(
        f"{verb} '{outcome.library}': added {len(outcome.added)} structures in {outcome.seconds:.1f} s"
        f" ({len(outcome.added) / max(outcome.seconds, 1e-9):,.1f}/s), {outcome.new_classes} new classes"
        + (f"; {outcome.already_stored} already stored" if outcome.already_stored else "")
        + (f"; {len(outcome.skipped)} unreadable skipped" if outcome.skipped else "")
        + f". It holds {outcome.n_structures} structures in {outcome.n_classes} classes"
        f" (PDFs 0-{s.rmax:g} Å, Q {s.qmin:g}-{s.qmax:g} Å⁻¹, qdamp {s.qdamp:g}, Uiso {s.uiso:g} Å², bundled at r >= {s.bundle_pcc:g})."
    )


@library_app.command("list")
def library_list(ctx: typer.Context) -> None:
    """List the libraries with their structures, classes and simulation settings."""
    from motex_db.library import library_overview

    output.print_frame(library_overview(engine_of(ctx)), title="libraries", empty="no libraries yet: use library add.")


def _print_classifier(outcome, ui: Optional[str]) -> None:
    m = outcome.metrics
    verb = "trained" if outcome.created else "reusing"
    console.print(
        f"{verb} classifier {outcome.classifier_id} of {outcome.n_classes} classes"
        + (f" in {outcome.seconds:.1f} s" if outcome.created else "")
        + f": test accuracy {m['accuracy']:.3f}, top-3 {m['top3_accuracy']:.3f} (simulated PDFs it never saw)."
    )
    if outcome.mlflow_run_id:
        console.print(f"MLflow run {outcome.mlflow_run_id}; open the UI with:\n  {ui}")


@library_app.command("train")
def library_train(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Library name."),
    per_class: int = typer.Option(100, "--per-class", help="Simulated PDFs per class (Latin hypercube over lattice +-6 % and Uiso)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the Latin hypercube and the split."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help=MLFLOW_HELP),
) -> None:
    """Train the library's XGBoost classifier (mine --method classifier does it when needed); tracked in MLflow."""
    from motex_db.mining import train_classifier

    with output.stage_progress("steps") as progress:
        outcome = train_classifier(engine_of(ctx), name, per_class, seed, mlflow_uri, on_progress=progress)
    _print_classifier(outcome, runs_hint(ctx, mlflow_uri, outcome.ui_command))


@app.command()
def mine(
    ctx: typer.Context,
    data: str = typer.Argument(..., help="Dataset name (see data list)."),
    library: str = typer.Option(..., "--library", help="Library to rank (see library list)."),
    top: int = typer.Option(5, "--top", help="How many candidates to keep."),
    method: str = typer.Option("pcc", "--method", help="pcc (correlation with each structure's PDF) or classifier (XGBoost)."),
    refine: bool = typer.Option(False, "--refine", help="Refine every plausible class (the top-k and all within 0.1 of the best correlation): scale, lattice expansion, Uiso, particle diameter; the refined Rwp orders them."),
    stretch: float = typer.Option(0.06, "--stretch", help="Largest isotropic lattice stretch (relative, 0.06 = ±6 %) over which each structure's correlation is maximised; 0 compares at the catalogue's lattice."),
    per_class: int = typer.Option(100, "--per-class", help="classifier: simulated PDFs per class when it must be trained."),
    seed: int = typer.Option(0, "--seed", help="classifier: random seed of its training."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help=MLFLOW_HELP),
) -> None:
    """Rank a library's structure classes for a measured PDF; the candidates are stored (table mined_candidate)."""
    from motex_db.mining import mine as mine_dataset

    with output.stage_progress("steps") as progress:
        outcome = mine_dataset(engine_of(ctx), data, library, method, top, refine, seed, per_class, mlflow_uri, progress,
                               max_stretch=stretch)
    if outcome.classifier is not None:
        _print_classifier(outcome.classifier, runs_hint(ctx, mlflow_uri, outcome.classifier.ui_command))
    what = "correlation" if outcome.method == "pcc" else "probability"
    head = (f"mined '{outcome.dataset}' against library '{outcome.library}' ({outcome.method}) in {outcome.seconds:.2f} s"
            if outcome.created else
            f"'{outcome.dataset}' was already mined against '{outcome.library}' this way (result {outcome.mining_result_id}); stored candidates:")
    console.print(head)
    rows = []
    for c in outcome.candidates:
        refined = c.refinement or {}
        rows.append((
            c.rank, c.candidate_id, c.structure, c.formula, c.spacegroup or "", f"{c.class_index} ({c.n_members})",
            c.score, "" if c.stretch is None else f"{100 * c.stretch:+.1f} %", c.rwp, refined.get("lattice"),
            refined.get("uiso"), refined.get("diameter"),
        ))
    output.print_rows(
        ["rank", "candidate", "structure", "formula", "space group", "class (members)", what, "stretch", "Rwp",
         "lattice", "Uiso", "diameter Å"], rows,
    )
    c = outcome.confidence
    numbers = f"best Pearson r {c['best_pcc']:.3f}" + (
        f" at a lattice stretch of {100 * c['best_stretch']:+.1f} %" if c.get("best_stretch") else "") + (
        f", top-3 probability {c['top3_probability']:.3f}" if "top3_probability" in c else "")
    if outcome.created and c.get("refined_classes"):
        console.print(f"refined {c['refined_classes']} plausible classes; ordered by their refined Rwp.")
    if outcome.out_of_catalogue:
        console.print(f"warning: this PDF is probably outside the catalogue ({numbers}); the candidates are unlikely to fit.")
    else:
        console.print(f"confidence: {numbers}.")
    if outcome.candidates:
        best = outcome.candidates[0]
        console.print(
            f"make the best one an ML-MotEx starting model with:\n  motex-db structure add --from-candidate "
            f"{best.candidate_id} --name {Path(best.structure).stem} --permute EL --radius 10"
        )
