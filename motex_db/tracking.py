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

An embedded SQLite store is created whole or not at all: MLflow's tables are
made and migrated in a scratch file that is renamed into place (SQLite's
Python driver commits each DDL statement on its own, so a store migrated in
place and killed half-way stays half-made). A store found half-made (an
interrupted migration of an older motex-db, say, with its
``_alembic_tmp_experiments`` table) is repaired, or moved aside and made
anew, with one sentence on the ``motex_db`` logger. On PostgreSQL MLflow's
migrations run in one transaction, so they need no such care.

Runs carry the identity of the process that opened them (tag
``motex_db.process``, see :mod:`motex_db.processes`); at every start, runs
still RUNNING whose process is surely gone (same host, boot and pid namespace,
the process no longer there) are marked KILLED. Runs of processes on other
machines are left to them.
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

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from motex_db.db import safe_url
from motex_db.errors import DatabaseError
from motex_db.processes import process_gone, process_identity

MLFLOW_URI_ENVIRONMENT_VARIABLE = "MOTEX_MLFLOW_URI"
EXPERIMENT_NAME = "motex-db"
_POSTGRES_LOCK_KEY = 0x6D6F7465  # "mote": one advisory lock for motex-db's MLflow set-up
PROCESS_TAG = "motex_db.process"  # host:pid:start:boot:pidns of the process that opened a run
_log = logging.getLogger("motex_db")


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


def _sqlite_store_path(uri: str) -> Path:
    return Path(make_url(uri).database)


def _store_state(path: Path) -> tuple[bool, bool, int]:
    """(whole, half_made, runs) of an SQLite MLflow store: whole when MLflow's tables are all there at its schema
    head; half-made when a migration was left half-done; runs: how many runs it holds (0 without a runs table)."""
    import sqlite3

    from mlflow.store.db.utils import _get_latest_schema_revision

    # a read-write connection, so that a hot journal left by a killed writer is rolled back first
    connection = sqlite3.connect(path)
    try:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        runs = connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
        version = (
            connection.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
        )
    finally:
        connection.close()
    half_made = any(name.startswith("_alembic_tmp_") for name in tables)
    at_head = version is not None and version[0] == _get_latest_schema_revision()
    return not half_made and at_head and {"experiments", "runs"} <= tables, half_made, runs


def _migrate_sqlite_file(path: Path) -> None:
    """Create or upgrade MLflow's tables in the SQLite file ``path`` (MLflow's own migrations)."""
    from mlflow.store.db.utils import _initialize_tables

    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()


def _template_path() -> Optional[Path]:
    """Where this machine keeps an empty store at the installed MLflow's schema head (None: no cache folder).

    ``$MOTEX_DB_CACHE``, else ``$XDG_CACHE_HOME/motex-db``, else ``~/.cache/motex-db``.
    """
    import mlflow
    from mlflow.store.db.utils import _get_latest_schema_revision

    folder = os.environ.get("MOTEX_DB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "motex-db")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK | os.X_OK):
        return None
    return Path(folder) / f"mlflow-{mlflow.__version__}-{_get_latest_schema_revision()}.db"


def _new_store(scratch: Path) -> None:
    """A new store in ``scratch``: MLflow's tables at its schema head, and nothing else.

    MLflow's migrations take over a second of a first ``train``; they run once
    per machine and MLflow version into a template (made in a scratch file of
    its own and renamed into place, so a kill leaves none or a whole one),
    which every new store then copies. Where no template can be kept or the one
    found is not whole, the migrations run in ``scratch`` itself.
    """
    import shutil

    template = _template_path()
    if template is not None:
        _remove_stale_scratch(template.parent)
        try:
            if not template.exists():
                making = template.with_name(f"{template.name}.creating-{os.getpid()}")
                try:
                    _migrate_sqlite_file(making)
                    os.replace(making, template)
                finally:
                    making.unlink(missing_ok=True)
            shutil.copyfile(template, scratch)
            if _store_state(scratch)[0]:
                return
        except Exception:  # a cache that cannot be written, or a template that is not an SQLite file
            pass
        with contextlib.suppress(OSError):
            template.unlink(missing_ok=True)  # not a whole store: made anew next time
        scratch.unlink(missing_ok=True)
    _migrate_sqlite_file(scratch)


# A template's scratch file older than this was left by a creation killed
# before its rename (a creation takes seconds). Age, not the pid in its name,
# decides: a cache folder may be shared by machines, whose pids mean nothing here.
STALE_SCRATCH_SECONDS = 3600.0


def _remove_stale_scratch(folder: Path) -> None:
    """Delete the scratch files of template creations that were killed (see :data:`STALE_SCRATCH_SECONDS`)."""
    for leftover in folder.glob("mlflow-*.db.creating-*"):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete
            if time.time() - leftover.stat().st_mtime > STALE_SCRATCH_SECONDS:
                leftover.unlink()


def _finish_half_done_migration(path: Path) -> None:
    """Undo what an interrupted batch migration left: ``_alembic_tmp_T`` beside ``T`` is dropped (the copy had not
    replaced it), and renamed to ``T`` where ``T`` was already dropped."""
    import sqlite3

    connection = sqlite3.connect(path, isolation_level=None)
    try:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for name in sorted(tables):
            if name.startswith("_alembic_tmp_"):
                target = name[len("_alembic_tmp_"):]
                if target in tables:
                    connection.execute(f'DROP TABLE "{name}"')
                else:
                    connection.execute(f'ALTER TABLE "{name}" RENAME TO "{target}"')
    finally:
        connection.close()


def prepare_sqlite_store(uri: str) -> None:
    """Make the embedded SQLite store at ``uri`` whole before MLflow opens it; call it under :func:`tracking_lock`.

    - no store (or an empty file): a new one (:func:`_new_store`, a copy of
      this machine's template) is made in a scratch file beside it, which is
      then renamed into place;
    - an older schema: upgraded the same way, on a copy;
    - half-made (an interrupted migration): mended on a copy; if that fails, the
      store is moved aside and a new one made (and if it held no run, it is
      simply made anew). Either is said in one sentence on the ``motex_db`` logger.
    """
    import shutil

    path = _sqlite_store_path(uri)
    for leftover in path.parent.glob(f"{path.name}.creating-*"):
        leftover.unlink(missing_ok=True)  # a creation killed before its rename (we hold the lock)
    scratch = path.with_name(f"{path.name}.creating-{os.getpid()}")

    def migrate_scratch_into_place() -> None:
        _migrate_sqlite_file(scratch)
        os.replace(scratch, path)

    def new_store_into_place() -> None:
        _new_store(scratch)
        os.replace(scratch, path)

    if not path.exists() or path.stat().st_size == 0:
        for suffix in ("-journal", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)  # of a store that is gone
        new_store_into_place()
        return
    whole, half_made, runs = _store_state(path)
    if whole:
        return
    try:
        shutil.copyfile(path, scratch)
        if half_made:
            _finish_half_done_migration(scratch)
        migrate_scratch_into_place()
    except Exception as exc:  # any failure of MLflow's migrations on the copy: fall back to a new store
        scratch.unlink(missing_ok=True)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    else:
        if half_made:
            _log.warning(f"the MLflow store {path} was left half-made by an interrupted migration; it was mended ({runs} runs kept).")
        return
    if runs:
        aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        _log.warning(f"the MLflow store {path} could not be mended ({reason}); it was moved to {aside.name} and a new one made.")
    else:
        _log.warning(f"the MLflow store {path} was half-made and held no run; it was made anew.")
    new_store_into_place()


def mark_killed_runs(client, experiment_id: str) -> int:
    """Mark KILLED the experiment's RUNNING runs whose process (tag ``motex_db.process``) is surely gone; returns how many."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    killed = 0
    for run in runs:
        identity = run.data.tags.get(PROCESS_TAG)
        if identity and process_gone(identity):
            client.set_terminated(run.info.run_id, status="KILLED")
            killed += 1
    return killed


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

    def __init__(self, location: TrackingLocation, identity: Optional[str] = None):
        from mlflow.tracking import MlflowClient

        _quiet_mlflow()

        self.location = location
        self.identity = identity or process_identity()  # of the process the runs it opens belong to
        self.uri = location.tracking_uri
        with tracking_lock(self.location):
            try:
                if location.lock_path:
                    prepare_sqlite_store(self.uri)
                self.client = MlflowClient(tracking_uri=self.uri)
                self.experiment_id = self._experiment()
                self.killed_runs = mark_killed_runs(self.client, self.experiment_id)
            except DatabaseError:
                raise
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

        tags = {PROCESS_TAG: self.identity, **{key: str(value) for key, value in tags.items()}}
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

    def log_series(self, run_id: str, curves: dict[str, list[float]], max_points: int = 300) -> None:
        """Log metric histories (one value per step) as MLflow metric charts, in batches MLflow accepts.

        A history longer than ``max_points`` is logged at that many evenly
        spread steps, the first and last included (each at its own step):
        enough for a chart, where every point of a 3000-round learning curve
        cost about a second of logging. Callers log whole curves as files.
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = []
        for name, values in curves.items():
            steps = range(len(values)) if len(values) <= max_points else \
                np.unique(np.linspace(0, len(values) - 1, max_points).round().astype(int))
            rows += [Metric(name, float(values[step]), now, int(step)) for step in steps if _finite(values[step])]
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
            self.log_artifacts(run_id, paths, folder)

    def log_artifacts(self, run_id: str, paths: list, folder: str) -> None:
        """Attach files on disk, by path, under ``folder`` of the run's artefacts."""
        with self.logging():
            for path in paths:
                self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def check(self) -> None:
        """Nothing to wait for: here every call has run when it returns (see :mod:`motex_db.tracker_process`)."""

    flush = check

    def has_run(self, run_id: Optional[str]) -> bool:
        """Whether this store holds the run (a record copied without its MLflow store, or read
        through another ``--mlflow-uri``, names runs the store never saw)."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return False
        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def missing_run_note(self, run_id: str, what: str) -> str:
        """One sentence for a run :meth:`has_run` did not find."""
        return (f"the MLflow run {run_id} of {what} is not in the tracking store {safe_url(self.uri)}: "
                f"the results are stored in the record, nothing was logged to MLflow.")

    def finish_run(self, run_id: str) -> None:
        """Mark a run FINISHED now."""
        self.terminate(run_id, "FINISHED")

    def terminate(self, run_id: str, status: str) -> None:
        """End a run now with ``status`` (FINISHED, FAILED or KILLED)."""
        with self.logging():
            self.client.set_terminated(run_id, status)


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
