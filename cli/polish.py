"""Step 5 on the command line: polish (the best-fitting motif from an answer) and extract (the whole loop)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from motex_db.cli.app import MLFLOW_HELP, app, engine_of
from motex_db.cli import output
from motex_db.cli.output import console
from motex_db.polish import DEFAULT_BUDGET, DEFAULT_MIN_GAIN, DEFAULT_PATIENCE, DEFAULT_TENURE

DEFAULT_TOLERANCE = 0.002


def _atoms(elements, indices) -> str:
    from motex_db.reports.sections import index_ranges

    if not indices:
        return "none"
    symbols = sorted({elements[i - 1] for i in indices})
    return f"{'/'.join(symbols)} {index_ranges(indices)}"


def print_polish_outcome(outcome, tolerance: float, files: Optional[dict]) -> None:
    """The SHAP (start) answer and the polished motif side by side, the path, and the compact answer."""
    where = f"'{outcome.structure}' / '{outcome.dataset}' (fit config {outcome.fit_config_id})"
    if outcome.created:
        console.print(
            f"polish {outcome.run_id} of {where}: {outcome.strategy} search, {outcome.n_evaluated} motifs evaluated "
            f"({outcome.n_fitted} fitted by the polish, {outcome.n_evaluated - outcome.n_fitted} found in the record) "
            f"in {outcome.seconds:.1f} s; "
            + ("the budget was spent." if outcome.stopped == "budget" else "no move improved Rwp by "
               f"{outcome.options['min_gain']:g} any more.")
        )
    else:
        console.print(f"polish {outcome.run_id} of {where} was done before with these settings: showing it.")
    start_kept = [i + 1 for i, c in enumerate(outcome.start_mask) if c == "1"]
    best_kept = [i + 1 for i, c in enumerate(outcome.best_mask) if c == "1"]
    rwp = lambda value: "failed" if value is None else f"{value:.4f}"
    output.print_rows(
        ["", f"start: {outcome.start_label}", "polished"],
        [
            ("motif id", outcome.start_motif_id, outcome.best_motif_id),
            ("kept permutable atoms", len(start_kept), len(best_kept)),
            ("atoms with bonded ones", outcome.start_n_atoms, outcome.best_n_atoms),
            ("Rwp", rwp(outcome.start_rwp), rwp(outcome.best_rwp)),
            ("atoms", _atoms(outcome.elements, start_kept), _atoms(outcome.elements, best_kept)),
        ],
        title="the two answers",
    )
    console.print(f"added by the polish: {_atoms(outcome.elements, outcome.added)}")
    console.print(f"removed by the polish: {_atoms(outcome.elements, outcome.removed)}")
    output.print_rows(
        ["kept atoms", "best Rwp", "motif id"],
        [(p["n_kept"], rwp(p["rwp"]), p["motif_id"]) for p in outcome.path],
        title="best Rwp at each motif size (every motif the search evaluated)",
    )
    compact = outcome.compact(tolerance)
    if compact is not None:
        kept = [i + 1 for i, c in enumerate(compact["mask"]) if c == "1"]
        console.print(
            f"compact answer (the smallest motif within {tolerance:g} of the best Rwp): motif {compact['motif_id']}, "
            f"{compact['n_kept']} atoms ({_atoms(outcome.elements, kept)}), Rwp {compact['rwp']:.4f}"
        )
    console.print(f"refine it: motex-db refine --motif {outcome.best_motif_id} --data {outcome.dataset}")
    for kind, path in (files or {}).items():
        console.print(f"{kind}: {path}")


@app.command()
def polish(
    ctx: typer.Context,
    structure: str = typer.Option(..., "--structure", help="Starting model."),
    data: str = typer.Option(..., "--data", help="Dataset."),
    start: str = typer.Option("extracted", "--from", help="Start motif: 'extracted' (the latest explanation's) or a motif id."),
    budget: int = typer.Option(DEFAULT_BUDGET, "--budget", help="Most motifs the search evaluates (fits; stored ones cost nothing)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the proposal order's tie-breaks."),
    strategy: str = typer.Option("tabu", "--strategy", help="tabu (escapes local minima) or greedy (stops at the first)."),
    min_gain: float = typer.Option(DEFAULT_MIN_GAIN, "--min-gain", help="Rwp a move must gain to count as an improvement."),
    patience: int = typer.Option(DEFAULT_PATIENCE, "--patience", help="Tabu: steps in a row without a new best before stopping."),
    tenure: int = typer.Option(DEFAULT_TENURE, "--tenure", help="Tabu: steps an atom stays fixed after it changed."),
    tolerance: float = typer.Option(DEFAULT_TOLERANCE, "--tolerance", help="The compact answer: the smallest motif within this Rwp of the best."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the polished motif (xyz, extxyz, VESTA), its fit plot and the path."),
) -> None:
    """Step 5: search from the SHAP answer (or any motif) for the best-fitting motif, with real fits; resumable."""
    from motex_db.errors import InputError
    from motex_db.polish import compact_answer, polish_motif

    compact_answer([], 0.0, tolerance)  # checks --tolerance before any work
    if out is not None and out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder.")
    engine = engine_of(ctx)
    with output.stage_progress("fits") as update:
        outcome = polish_motif(
            engine, structure, data, start, budget, seed, strategy, min_gain, patience, tenure,
            on_progress=lambda evaluated, total, best: update("polishing", evaluated, total),
            on_wait=console.print,
        )
    files = None
    if out is not None:
        from motex_db.reports.polish import write_polish_files

        files = write_polish_files(engine, outcome, out, tolerance)
    print_polish_outcome(outcome, tolerance, files)


@app.command()
def extract(
    ctx: typer.Context,
    structure: str = typer.Option(..., "--structure", help="Starting model."),
    data: str = typer.Option(..., "--data", help="Dataset."),
    budget: int = typer.Option(10000, "--budget", help="Fits to spend in all: sampling rounds, then the polish."),
    round_size: Optional[int] = typer.Option(None, "--round", help="Motifs per sampling round (default: a fifth of the budget left after the polish's share)."),
    recipe: str = typer.Option("fast", "--recipe", help="fast (scale and one zoom) or mlmotex (three zooms)."),
    n_iter: int = typer.Option(10, "--n-iter", help="Bayesian iterations of each round's training."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampling, training and polish."),
    tolerance: float = typer.Option(DEFAULT_TOLERANCE, "--tolerance", help="The compact answer: the smallest motif within this Rwp of the best."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the polished motif's files."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help=MLFLOW_HELP),
) -> None:
    """Sample, fit, train, explain in rounds (uniform, then guided) until the contributions converge or the budget is spent; then polish. Resumable."""
    from motex_db.fitting.settings import FitSettings
    from motex_db.polish import compact_answer, extract_motif

    compact_answer([], 0.0, tolerance)
    settings = FitSettings.for_recipe(recipe)
    engine = engine_of(ctx)
    with output.stage_progress("fits") as update:
        outcome = extract_motif(
            engine, structure, data, budget, round_size, seed, n_iter, settings, mlflow_uri=mlflow_uri,
            on_stage=console.print,
            on_fit_progress=lambda p: update("fitting", p.done, p.total),
            on_polish_progress=lambda evaluated, total, best: update("polishing", evaluated, total),
        )
    output.print_rows(
        ["round", "sampling", "sampled motifs", "trained model", "extracted atoms", "extracted Rwp", "sign changes (3/4 of the fits)"],
        [(r.index, r.strategy, r.n_sampled, r.trained_model_id, r.extracted_mask.count("1"),
          None if r.extracted_rwp is None else round(r.extracted_rwp, 4), r.sign_changes) for r in outcome.rounds],
        title="rounds",
    )
    console.print(
        f"{'the contributions converged' if outcome.converged else 'the budget for sampling was spent before the contributions converged'}"
        f" after {len(outcome.rounds)} rounds ({outcome.fits} fits)."
    )
    if outcome.polish is None:
        console.print("no atom has a negative contribution: nothing to polish.")
        return
    files = None
    if out is not None:
        from motex_db.reports.polish import write_polish_files

        files = write_polish_files(engine, outcome.polish, out, tolerance)
    print_polish_outcome(outcome.polish, tolerance, files)
