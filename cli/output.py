"""Terminal output for the command line: tables, summaries, errors."""

from __future__ import annotations

import csv
import json
import sys
from contextlib import contextmanager
from datetime import datetime
from typing import Optional, Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table

# Piped output (files, CI logs, tests) gets a wide page instead of rich's 80 columns.
_WIDTH = None if sys.stdout.isatty() else 200
console = Console(highlight=False, soft_wrap=True, width=_WIDTH)
error_console = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 400)


def error(message: str) -> None:
    """One line on stderr."""
    error_console.print(f"error: {message}", markup=False)


def note(message: Optional[str]) -> None:
    """One line on stderr about something the command left undone, when there is one."""
    if message:
        error_console.print(f"note: {message}", markup=False)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, (bytes, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    return str(value)


def print_rows(columns: Sequence[str], rows: Sequence[Sequence], title: str | None = None) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(str(column), overflow="fold")
    for row in rows:
        table.add_row(*(_cell(value) for value in row), end_section=False)
    console.print(table)
    console.print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}")


def print_frame(frame: pd.DataFrame, title: str | None = None, empty: str | None = None) -> None:
    if frame.empty and empty:
        console.print(empty)
        return
    rows = [[None if _missing(v) else v for v in row] for row in frame.itertuples(index=False)]
    print_rows(list(frame.columns), rows, title)


def write_csv(columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(value) for value in row])


def print_structure_summary(summary, created: bool) -> None:
    verb = "added" if created else "existing"
    per_element = ", ".join(f"{n} {el}" for el, n in summary.atoms_per_element.items())
    console.print(f"{verb} structure '{summary.name}' (id {summary.id}): {per_element}; N = {summary.n_permutable} permutable atoms.")
    if summary.unbonded:
        listed = ", ".join(f"{el}{i + 1}" for i, el in zip(summary.unbonded, summary.unbonded_elements))
        console.print(
            f"{len(summary.unbonded)} non-permutable atoms are bonded to no permutable atom and will never be in a motif: {listed}"
        )
    else:
        console.print("every non-permutable atom is bonded to at least one permutable atom.")


def print_dataset_added(row, created: bool) -> None:
    where = f", series '{row.series}' at t = {row.time:g} s" if row.series else ""
    keys = ", ".join(f"{k}={row.meta[k]}" for k in ("qmin", "qmax", "composition", "mode") if k in row.meta)
    if created:
        console.print(
            f"added dataset '{row.name}' (id {row.id}): {row.n_points} points, r {row.r_min:g}-{row.r_max:g} Å{where}"
            + (f"; {keys}" if keys else "")
        )
    else:
        console.print(f"{row.source_file} is already stored as dataset '{row.name}' (id {row.id}); nothing added.")


def _missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


@contextmanager
def fit_progress():
    """A progress bar with fits per second and ETA; yields the ``on_progress`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("fitting"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:,.0f} fits/s"), TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    progress = Progress(*columns, console=error_console, transient=False)
    task = None

    def update(state) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task("fit", total=state.total, rate=0.0, failed=0)
        progress.update(task, completed=state.done, rate=state.rate, failed=state.failed)

    with progress:
        yield update


def print_fit_summary(summary) -> None:
    if summary.retried:
        console.print(f"{summary.retried} failed fits were cleared to be tried again.")
    if summary.fitted == 0 and summary.n_frames is not None:
        console.print(
            f"nothing to fit: all {summary.already_done} motif-frame pairs of '{summary.structure}' already have a "
            f"result for series '{summary.dataset}' ({summary.n_frames} frames, {summary.recipe})."
        )
    elif summary.fitted == 0:
        console.print(
            f"nothing to fit: all {summary.already_done} motifs of '{summary.structure}' already have a result "
            f"for '{summary.dataset}' with fit config {summary.fit_config_id} ({summary.recipe})."
        )
    elif summary.n_frames is not None:
        console.print(
            f"fitted {summary.fitted} motif-frame pairs of '{summary.structure}' to series '{summary.dataset}' "
            f"({summary.n_frames} frames, fit config {summary.fit_config_id}, {summary.recipe}) in {summary.seconds:.1f} s "
            f"({summary.rate:,.0f} fits/s, {summary.workers} worker{'s' if summary.workers > 1 else ''}); "
            f"{summary.failed} failed."
        )
    else:
        console.print(
            f"fitted {summary.fitted} motifs of '{summary.structure}' to '{summary.dataset}' "
            f"(fit config {summary.fit_config_id}, {summary.recipe}) in {summary.seconds:.1f} s "
            f"({summary.rate:,.0f} fits/s, {summary.workers} worker{'s' if summary.workers > 1 else ''}); "
            f"{summary.failed} failed."
        )
    if summary.copied:
        console.print(
            f"{summary.copied} of the catalogue's results copy the fit of an image (a motif with the same pair "
            "distances, so the same PDF): fitted once, stored for each."
        )
    if summary.best_rwp is not None:
        where = f" (frame '{summary.best_frame}')" if summary.best_frame else ""
        console.print(
            f"best Rwp {summary.best_rwp:.4f}{where}: motif {summary.best_motif_id} with {summary.best_motif_size} kept atoms."
        )


@contextmanager
def trial_progress(total: int):
    """A progress bar over hyper-parameter trials; yields the ``on_trial`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("search"), BarColumn(), MofNCompleteColumn(), TextColumn("best search MAE {task.fields[best]:.4f}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=error_console,
    )
    task = progress.add_task("search", total=total, best=float("nan"))
    best = [float("inf")]
    done = [0]

    def update(index: int, params: dict, cv_mae: float) -> None:
        best[0] = min(best[0], cv_mae)
        done[0] = index + 1
        progress.update(task, completed=index + 1, best=best[0])

    with progress:
        yield update
        if done[0]:  # a search that stopped when it stopped improving is complete, not cut short
            progress.update(task, total=done[0], completed=done[0])


@contextmanager
def stage_progress(unit: str):
    """A progress bar per stage (reading, simulating, training...) with rate and ETA; yields ``update(stage, done, total)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:,.1f} {task.fields[unit]}/s"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=error_console, transient=False,
    )
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int, stage_unit: str | None = None) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=max(total, 1), rate=0.0, unit=stage_unit or unit)
        elapsed = progress.tasks[tasks[stage]].elapsed or 0.0
        progress.update(tasks[stage], completed=done, total=max(total, 1), rate=done / elapsed if elapsed > 0 else 0.0)

    with progress:
        yield update


@contextmanager
def series_progress(label: str, n_trials: int | None = None):
    """Progress of a series command: the search's trials (when there is one), then the frames.

    Yields ``(on_trial, on_frame)`` callbacks.
    """
    with stage_progress("frames") as update:
        yield (
            lambda index, params, cv_mae: update("search", index + 1, n_trials or index + 1, "trials"),
            lambda done, total: update(label, done, total),
        )


def print_series_train_outcome(outcome, ui: str | None) -> None:
    frames = outcome.frames
    created = outcome.n_created
    where = f"'{outcome.structure}' / series '{outcome.series}' (fit config {outcome.fit_config_id}, {len(frames)} frames)"
    if created:
        console.print(f"trained {created} frame models on {where} in {outcome.seconds:.1f} s; {len(frames) - created} reused.")
    else:
        console.print(f"the fits have not changed since the frame models of {where}: reusing them.")
    hyper = outcome.hyperparameters
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in hyper.items())
    cv = f"; best search MAE {outcome.best_cv_mae:.4f}" if outcome.best_cv_mae is not None else ""
    console.print(f"one search on frame '{outcome.reference}': {shown}{cv}")
    print_frame(frames[["frame", "time", "trained_model_id", "n_motifs", "test_mae", "test_r2"]], title="models per frame")
    if outcome.mlflow_run_id:
        console.print(f"MLflow parent run {outcome.mlflow_run_id} (a child run per frame); open the UI with:\n  {ui}")


def print_series_explain_outcome(outcome, files) -> None:
    frames = outcome.frames
    console.print(
        f"explained {outcome.n_created} new frame models of '{outcome.structure}' / series '{outcome.series}' "
        f"({len(frames)} frames, fit config {outcome.fit_config_id})."
    )
    shown = frames.assign(
        kept=[m.count("1") for m in frames["extracted_mask"]],
    )[["frame", "time", "overall_confidence", "kept", "extracted_motif_id", "extracted_rwp", "best_rwp"]]
    print_frame(shown, title="per frame: the extracted motif (atoms with negative contribution) and its fit")
    table = outcome.contributions.pivot(index="atom_index", columns="frame", values="contribution")
    first, last = frames["frame"].iloc[0], frames["frame"].iloc[-1]
    change = (table[last] - table[first]).sort_values()
    print_rows(
        ["atom", "element", f"contribution at {first}", f"at {last}", "change"],
        [(i, outcome.elements[i - 1], table.loc[i, first], table.loc[i, last], change[i]) for i in change.index[:10]],
        title="atoms whose contribution fell most over the series (growing in importance)",
    )
    for kind, path in (files or {}).items():
        console.print(f"{kind}: {path}")


def print_train_outcome(outcome, ui: str | None) -> None:
    metrics = outcome.metrics
    where = f"'{outcome.structure}' / '{outcome.dataset}' (fit config {outcome.fit_config_id}, {outcome.n_motifs} motifs)"
    if outcome.created:
        console.print(f"trained model {outcome.trained_model_id} on {where} in {outcome.seconds:.1f} s.")
    else:
        console.print(f"the fits have not changed since model {outcome.trained_model_id} on {where}: reusing it.")
    console.print(
        f"test set: MAE {metrics['mae']:.4f}, RMSE {metrics['rmse']:.4f}, R² {metrics['r2']:.3f} (Rwp units); "
        f"best search MAE {metrics.get('best_cv_mae', float('nan')):.4f}"
    )
    if outcome.result is not None:
        trials = outcome.result.trials
        how = "it stopped once it stopped improving" if outcome.result.stopped_early else "all that were asked for"
        console.print(f"search: {len(trials)} trials ({how}), {sum(t.pruned for t in trials)} of them pruned once "
                      f"they could not come near the best.")
    hyper = outcome.hyperparameters
    shown = ", ".join(f"{k}={hyper[k]:.3g}" if isinstance(hyper[k], float) else f"{k}={hyper[k]}"
                      for k in ("learning_rate", "max_depth", "n_estimators", "min_child_weight", "subsample") if k in hyper)
    console.print(f"hyper-parameters: {shown}")
    if outcome.mlflow_run_id:
        console.print(f"MLflow run {outcome.mlflow_run_id}; open the UI with:\n  {ui}")


def print_environment_contributions(rows: list[dict]) -> None:
    """The contributions per environment class (motex_db.environments.contributions_per_environment)."""
    if all(row["n_atoms"] == 1 for row in rows):
        console.print("every permutable atom has an environment of its own: no class to average over.")
        return
    print_rows(
        ["class", "element", "atoms", "mean contribution", "spread (std)", "lowest", "highest"],
        [(row["class"], row["element"], ", ".join(map(str, row["atoms"])), row["mean"], row["std"], row["min"], row["max"])
         for row in rows],
        title="contributions per environment class (atoms whose k-NN distances agree: images under the model's symmetry)",
    )


def print_explain_outcome(outcome, files) -> None:
    table = outcome.contributions.sort_values("contribution")
    verb = "explained" if outcome.created else "contributions already stored for"
    console.print(f"{verb} trained model {outcome.trained_model_id} ('{outcome.structure}' / '{outcome.dataset}', fit config {outcome.fit_config_id}):")
    print_rows(
        ["rank", "atom", "element", "contribution", "uncertainty", "confidence"],
        [(rank, r.atom_index, r.element, r.contribution, r.uncertainty, r.confidence)
         for rank, r in enumerate(table.itertuples(), start=1)],
    )
    console.print(f"overall confidence {outcome.overall_confidence:.3g} (mean |contribution| / uncertainty over atoms)")
    for name, label in (("half", "half"), ("three_quarters", "three quarters")):
        part = outcome.convergence.get(name)
        if part:
            console.print(
                f"convergence: from {label} of the fits ({part['n_motifs']} motifs), {part['sign_changes']} of "
                f"{len(outcome.elements)} atoms change sign" + ("" if part["sign_changes"] == 0 else ": sampling more motifs will sharpen the answer")
            )
    kept = [i + 1 for i, c in enumerate(outcome.extracted_mask) if c == "1"]
    if kept:
        rwp = (f"Rwp {outcome.extracted_rwp:.4f}" if outcome.extracted_rwp is not None
               else f"fit {outcome.extracted_status}" if outcome.extracted_status else "not fitted (imported scores)")
        console.print(
            f"extracted motif {outcome.extracted_motif_id}: {len(kept)} atoms with negative contribution "
            f"({', '.join(map(str, kept))}); {rwp}"
            + (f"; best sampled motif {outcome.best_motif_id}: Rwp {outcome.best_rwp:.4f}" if outcome.best_rwp is not None else "")
        )
    else:
        console.print("no atom has a negative contribution: nothing to extract.")
    for kind, path in (files or {}).items():
        console.print(f"{kind}: {path}")
