"""``motex-db report``: gather, draw, write one HTML file, attach it to the MLflow runs it covers.

    >>> from motex_db.db import open_engine
    >>> from motex_db.reports.report import write_report
    >>> written = write_report(open_engine("sqlite:///motex.db"), "report.html")
    >>> written.path, written.mlflow_run_ids
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from sqlalchemy.engine import Engine

from motex_db.errors import InputError

from motex_db.reports.data import ReportData, gather_report
from motex_db.reports.html import page_html
from motex_db.reports.sections import comparison_section, header_section, run_section, series_section

__all__ = ["WrittenReport", "render_report", "write_report", "ARTIFACT_PATH"]

#: Folder of the report among an MLflow run's artefacts.
ARTIFACT_PATH = "report"


@dataclass(frozen=True)
class WrittenReport:
    """What :func:`write_report` wrote: the file, what it covers, where it was logged."""

    path: Path
    n_runs: int  # per-run sections
    n_comparisons: int
    n_series: int
    n_figures: int
    size_bytes: int
    mlflow_run_ids: list[str] = field(default_factory=list)  # runs holding the file as an artefact
    mlflow_tagged_run_ids: list[str] = field(default_factory=list)  # series runs tagged with a link to it
    mlflow_missing_run_ids: list[str] = field(default_factory=list)  # recorded runs the tracking store does not have
    n_minings: int = 0  # structure-mining sections


def render_report(engine: Engine, data: ReportData, on_section: Callable[[str], None] = lambda title: None,
                  minings: Sequence = ()) -> str:
    """The report's HTML for gathered ``data`` (recomputes fits, test predictions, SHAP, convergence)
    and structure-mining results (:func:`motex_db.reports.mining.gather_mining`)."""
    from motex_db.reports.mining import mining_section

    sections, nav = [], []
    for run in data.runs:
        on_section(run.title)
        sections.append(run_section(engine, run))
        nav.append((run.key, run.title))
    for k, (dataset, runs) in enumerate(data.comparisons.items()):
        anchor = f"compare-{k}"
        on_section(f"structures compared on {dataset}")
        sections.append(comparison_section(dataset, runs, anchor))
        nav.append((anchor, f"structures on {dataset}"))
    for k, series in enumerate(data.series):
        anchor = f"series-{k}"
        on_section(f"series {series.name}")
        sections.append(series_section(series, anchor))
        nav.append((anchor, f"series {series.name}"))
    for k, view in enumerate(minings):
        anchor = f"mining-{k}"
        on_section(f"structure mining: {view.title}")
        sections.append(mining_section(view, anchor))
        nav.append((anchor, f"mining {view.dataset.name} ({view.result.method})"))
    footer = ("Figures are interactive: hover for values, drag to zoom (double-click to reset), click legend entries "
              "to hide them; the camera icon saves a PNG. Query the same numbers with <code>motex-db sql</code>.")
    return page_html("motex-db report", header_section(data), nav, sections, footer)


def write_report(
    engine: Engine,
    out_path: str | Path,
    structures: Optional[Sequence[str]] = None,
    datasets: Optional[Sequence[str]] = None,
    series: Optional[Sequence[str]] = None,
    mlflow_uri: Optional[str] = None,
    on_section: Callable[[str], None] = lambda title: None,
) -> WrittenReport:
    """Write the report of the record behind ``engine`` to ``out_path`` (one self-contained HTML file).

    ``structures``, ``datasets`` and ``series`` choose what it covers (see
    :func:`motex_db.reports.data.gather_report`); unknown names and a record
    with nothing to report raise :class:`InputError` before anything is
    written. The file is written atomically (a temporary file renamed into
    place), then logged as an MLflow artefact (folder ``report``) of every
    per-run model's run; the runs of series frames, which can be hundreds,
    get a tag ``motex_db.report`` pointing to one logged copy instead.
    Runs without an ``mlflow_run_id`` are skipped.
    """
    out_path = Path(out_path)
    if out_path.exists() and out_path.is_dir():
        raise InputError(f"{out_path} is a folder; give the report's file name, such as {out_path / 'report.html'}.")
    if not out_path.parent.exists():
        raise InputError(f"the folder {out_path.parent} does not exist.")
    from motex_db.reports.mining import gather_mining

    # mining results of the chosen datasets (all, unless datasets or only series were chosen)
    minings = [] if series and not datasets else gather_mining(engine, datasets)
    data = gather_report(engine, structures, datasets, series, allow_empty=bool(minings))
    text = render_report(engine, data, on_section, minings)
    handle, scratch = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        # mkstemp makes the file 0600; give it the mode any other new file gets (0666 less the umask)
        os.chmod(scratch, 0o666 & ~_umask())
        os.replace(scratch, out_path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    logged, tagged, missing = _log_to_mlflow(engine, data, out_path, mlflow_uri)
    return WrittenReport(
        path=out_path, n_runs=len(data.runs), n_comparisons=len(data.comparisons), n_series=len(data.series),
        n_figures=text.count('class="plotly-graph-div"'), size_bytes=out_path.stat().st_size,
        mlflow_run_ids=logged, mlflow_tagged_run_ids=tagged, mlflow_missing_run_ids=missing,
        n_minings=len(minings),
    )


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _log_to_mlflow(engine: Engine, data: ReportData, path: Path, mlflow_uri: Optional[str]) -> tuple[list, list, list]:
    """Log the file to the per-run models' MLflow runs; tag the series frames' runs with where it is.

    Returns (run ids logged to, run ids tagged, run ids the store does not
    know, e.g. with another ``--mlflow-uri`` than at training time).
    """
    from mlflow.exceptions import MlflowException
    from motex_db.models import TrainedModel
    from sqlmodel import Session, select

    run_ids = list(dict.fromkeys(m.mlflow_run_id for m in data.trained_models if m.mlflow_run_id))
    series_model_ids = sorted({i for s in data.series for i in s.model_ids})
    series_run_ids: list[str] = []
    if series_model_ids:
        with Session(engine) as session:
            found = session.exec(
                select(TrainedModel.mlflow_run_id).where(TrainedModel.id.in_(series_model_ids)).order_by(TrainedModel.id)
            ).all()
        series_run_ids = [r for r in dict.fromkeys(found) if r and r not in run_ids]
    if not run_ids and not series_run_ids:
        return [], [], []
    if not run_ids:
        # a report of series only: one copy, in the latest frame's run
        run_ids, series_run_ids = series_run_ids[-1:], series_run_ids[:-1]

    from motex_db.tracking import open_tracker

    tracker = open_tracker(engine.url.render_as_string(hide_password=False), mlflow_uri)
    logged, tagged, missing = [], [], []
    with tracker.logging():
        for run_id in run_ids:
            try:
                tracker.client.get_run(run_id)
            except MlflowException:
                missing.append(run_id)
                continue
            tracker.client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_PATH)
            logged.append(run_id)
        link = f"runs:/{logged[0]}/{ARTIFACT_PATH}/{path.name}" if logged else None
        for run_id in series_run_ids if link else ():
            try:
                tracker.client.set_tag(run_id, "motex_db.report", link)
                tagged.append(run_id)
            except MlflowException:
                missing.append(run_id)
    return logged, tagged, missing
