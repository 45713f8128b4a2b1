"""``motex-db report``: one self-contained HTML file of what the record holds."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from motex_db.cli.app import MLFLOW_HELP, app, engine_of
from motex_db.cli.output import console, error_console

@app.command()
def report(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="The HTML file to write (opens from disk, no network needed)."),
    structure: Optional[List[str]] = typer.Option(None, "--structure", help="Only this starting structure (repeat for several)."),
    data: Optional[List[str]] = typer.Option(
        None, "--data", help="Per-run sections for this dataset (repeat for several; default: every dataset outside a series)."
    ),
    series: Optional[str] = typer.Option(None, "--series", help="The time-resolved series to show (default: every series)."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help=MLFLOW_HELP),
) -> None:
    """Plotly report: per run (structure x dataset) the fits, the surrogate and the atom contributions; structures
    compared on shared data; series against time. Also logged as an MLflow artefact of the runs it covers."""
    from motex_db.reports.report import write_report

    written = write_report(
        engine_of(ctx), out, structures=structure or None, datasets=data or None,
        series=[series] if series else None, mlflow_uri=mlflow_uri,
        on_section=lambda title: error_console.print(f"drawing {title} ...", markup=False),
    )
    covered = [f"{written.n_runs} run{'s' if written.n_runs != 1 else ''}"]
    if written.n_comparisons:
        covered.append(f"{written.n_comparisons} comparison{'s' if written.n_comparisons != 1 else ''} of structures")
    if written.n_series:
        covered.append(f"{written.n_series} series")
    if written.n_minings:
        covered.append(f"{written.n_minings} structure mining result{'s' if written.n_minings != 1 else ''}")
    console.print(
        f"wrote {written.path} ({written.size_bytes / 1e6:.1f} MB, {written.n_figures} figures: {', '.join(covered)})."
    )
    if written.mlflow_run_ids:
        tagged = f"; {len(written.mlflow_tagged_run_ids)} series runs link to it" if written.mlflow_tagged_run_ids else ""
        console.print(f"logged as an MLflow artefact (report/{written.path.name}) of run{'s' if len(written.mlflow_run_ids) > 1 else ''} "
                      f"{', '.join(written.mlflow_run_ids)}{tagged}.")
    if written.mlflow_missing_run_ids:
        console.print(f"not logged to {len(written.mlflow_missing_run_ids)} recorded MLflow runs that the tracking store "
                      f"does not hold: {', '.join(written.mlflow_missing_run_ids)}")
    console.print(f"open it with a browser: file://{written.path.resolve()}")
