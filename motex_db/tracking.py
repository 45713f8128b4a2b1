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
import os
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


def open_tracker(record_url: str, override: Optional[str] = None) -> Tracker:
    """The tracker of the record at ``record_url`` (see :func:`tracking_location`)."""
    return Tracker(tracking_location(record_url, override))
