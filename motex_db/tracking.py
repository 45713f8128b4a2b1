"""MLflow tracking, embedded by default.

Where runs go: ``--mlflow-uri`` or ``$MOTEX_MLFLOW_URI`` when given (a team's
tracking server, say); otherwise beside the record:

- SQLite record ``.../motex.db``: an MLflow SQLite store ``.../mlflow.db`` and
  artefacts in ``.../mlartifacts`` (MLflow's file store is deprecated);
- PostgreSQL record ``.../NAME``: the database ``NAME_mlflow`` on the same
  server (MLflow's tables, ``alembic_version`` included, never share a schema
  with ours), created on first use, and artefacts in ``./mlartifacts``.

All runs go to one experiment, ``motex-db``, tagged with structure, dataset,
fit config and motif count, so the MLflow UI compares them side by side.
Creating the store and the experiment happens under a lock (a file lock for
SQLite, an advisory lock for PostgreSQL), so many processes starting at once
neither race MLflow's own migrations nor create the experiment twice; the
logging of a finished training is short and done under the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from motex_db.db import safe_url
from motex_db.errors import DatabaseError

MLFLOW_URI_ENVIRONMENT_VARIABLE = "MOTEX_MLFLOW_URI"
EXPERIMENT_NAME = "motex-db"
_POSTGRES_LOCK_KEY = 0x6D6F7465  # "mote": one advisory lock for motex-db's MLflow set-up


@dataclass(frozen=True)
class TrackingLocation:
    """An MLflow tracking URI and where its artefacts go (None: the server decides)."""

    tracking_uri: str
    artifact_location: Optional[str] = None
    lock_path: Optional[str] = None  # for an embedded SQLite store

    @property
    def ui_command(self) -> str:
        """The command that opens this store in the MLflow UI."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"open {self.tracking_uri} in a browser"
        command = f"mlflow ui --backend-store-uri {safe_url(self.tracking_uri)}"
        if self.artifact_location:
            command += f" --default-artifact-root {self.artifact_location}"
        return command


def tracking_location(record_url: str, override: Optional[str] = None) -> TrackingLocation:
    """Where MLflow runs of the record at ``record_url`` go (see the module docstring)."""
    uri = override or os.environ.get(MLFLOW_URI_ENVIRONMENT_VARIABLE)
    if uri:
        if uri.startswith(("postgresql://", "postgres://")):
            # the driver installed with motex-db is psycopg (3); MLflow would look for psycopg2
            uri = make_url(uri).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return TrackingLocation(uri)
    record = make_url(record_url)
    if record.drivername.startswith("sqlite"):
        database = record.database or ""
        if not database or database == ":memory:":
            folder = Path.cwd()
        else:
            folder = Path(database).resolve().parent
        store = folder / "mlflow.db"
        return TrackingLocation(
            f"sqlite:///{store}", (folder / "mlartifacts").resolve().as_uri(), lock_path=f"{store}.lock"
        )
    mlflow_db = record.set(database=f"{record.database}_mlflow")
    return TrackingLocation(
        mlflow_db.render_as_string(hide_password=False), (Path.cwd() / "mlartifacts").resolve().as_uri()
    )


@contextlib.contextmanager
def tracking_lock(location: TrackingLocation) -> Iterator[None]:
    """Serialise set-up and logging between processes sharing an embedded or PostgreSQL store."""
    if location.lock_path:
        with open(location.lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    url = make_url(location.tracking_uri) if "://" in location.tracking_uri else None
    if url is not None and url.drivername.startswith("postgresql"):
        admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f"SELECT pg_advisory_lock({_POSTGRES_LOCK_KEY})")
                try:
                    _create_postgres_database(connection, url.database)
                    yield
                finally:
                    connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_POSTGRES_LOCK_KEY})")
        finally:
            admin.dispose()
        return
    yield


def _create_postgres_database(connection, name: str) -> None:
    exists = connection.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).first()
    if not exists:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')


def _quiet_mlflow() -> None:
    # MLflow logs its store migrations and model signature inference at INFO/WARNING;
    # motex-db reports what matters itself.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


class Tracker:
    """An MLflow client on the motex-db experiment."""

    def __init__(self, location: TrackingLocation):
        from mlflow.tracking import MlflowClient

        _quiet_mlflow()

        self.location = location
        self.uri = location.tracking_uri
        with tracking_lock(self.location):
            try:
                self.client = MlflowClient(tracking_uri=self.uri)
                self.experiment_id = self._experiment()
            except Exception as exc:  # MLflow raises many types for an unusable store
                raise DatabaseError(
                    f"cannot use the MLflow tracking store {safe_url(self.uri)}: {str(exc).splitlines()[0]}"
                ) from None

    def _experiment(self) -> str:
        experiment = self.client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(EXPERIMENT_NAME, artifact_location=self.location.artifact_location)

    @contextlib.contextmanager
    def logging(self) -> Iterator["Tracker"]:
        """A short critical section for logging a finished computation."""
        with tracking_lock(self.location):
            yield self

    # ---------------------------------------------------------------- run logging
    # Runs are opened when the work starts and logged as it goes, so the MLflow UI
    # shows a running search with real start and end times. Every call is one short
    # critical section; a run left RUNNING by a killed process is the set-up's to close.

    def start_run(self, name: str, tags: dict, params: Optional[dict] = None, parent_run_id: Optional[str] = None,
                  start_seconds: Optional[float] = None) -> str:
        """Open a run (RUNNING) named ``name`` with ``tags`` and ``params``; returns its id."""
        from mlflow.entities import Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags = {key: str(value) for key, value in tags.items()}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        start = int(1000 * (start_seconds if start_seconds is not None else time.time()))
        with self.logging():
            run = self.client.create_run(self.experiment_id, start_time=start, tags=tags, run_name=name)
            if params:
                self.client.log_batch(run.info.run_id, params=[Param(k, _param_text(v)) for k, v in params.items()])
        return run.info.run_id

    def log_values(self, run_id: str, metrics: Optional[dict] = None, params: Optional[dict] = None,
                   tags: Optional[dict] = None, step: int = 0) -> None:
        """Log finite ``metrics``, ``params`` and ``tags`` to a run, in one call."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metric_rows = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if _finite(v)]
        param_rows = [Param(k, _param_text(v)) for k, v in (params or {}).items()]
        tag_rows = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        with self.logging():
            self.client.log_batch(run_id, metrics=metric_rows, params=param_rows, tags=tag_rows)

    def log_series(self, run_id: str, curves: dict[str, list[float]]) -> None:
        """Log whole metric histories (one value per step), in batches MLflow accepts."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(name, float(v), now, step) for name, values in curves.items()
                for step, v in enumerate(values) if _finite(v)]
        with self.logging():
            for start in range(0, len(rows), 900):
                self.client.log_batch(run_id, metrics=rows[start:start + 900])

    def log_child(self, parent_run_id: str, name: str, tags: dict, params: dict, metrics: dict,
                  start_seconds: float, end_seconds: float) -> str:
        """A finished child run (a search trial, say) with its real start and end times."""
        from mlflow.entities import Metric, Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags = {**{key: str(value) for key, value in tags.items()}, MLFLOW_PARENT_RUN_ID: parent_run_id}
        end = int(1000 * end_seconds)
        with self.logging():
            run = self.client.create_run(self.experiment_id, start_time=int(1000 * start_seconds), tags=tags, run_name=name)
            self.client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, float(v), end, 0) for k, v in metrics.items() if _finite(v)],
                params=[Param(k, _param_text(v)) for k, v in params.items()],
            )
            self.client.set_terminated(run.info.run_id, end_time=end)
        return run.info.run_id

    def log_files(self, run_id: str, files: dict[str, str], folder: str) -> None:
        """Attach text files, ``{name: content}``, under ``folder`` of the run's artefacts."""
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            paths = []
            for name, content in files.items():
                path = Path(scratch) / name
                path.write_text(content)
                paths.append(path)
            with self.logging():
                for path in paths:
                    self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def finish_run(self, run_id: str) -> None:
        """Mark a run FINISHED now."""
        with self.logging():
            self.client.set_terminated(run_id)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _param_text(value) -> str:
    # MLflow keeps params as text of at most 6000 characters
    return str(value)[:6000]


def open_tracker(record_url: str, override: Optional[str] = None) -> Tracker:
    """The tracker of the record at ``record_url`` (see :func:`tracking_location`)."""
    return Tracker(tracking_location(record_url, override))
