"""What survives what: a fit that raises, a dead worker's claims, kill -9 of a parent, a lost PostgreSQL connection,
a full disk, and MLflow stores and runs left behind by killed processes. Real processes, killed for real."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from support import motex_executable, query, run_cli
from test_fit_work import _assert_complete, _start_fit, _wait_for_results, scalar

FIT = ["fit", "--structure", "c60", "--data", "c60"]


def _motex(url: str, *args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [motex_executable(), "--db", url, *map(str, args)], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _one_sentence(stderr: str, *words: str) -> None:
    # the progress bar (on stderr) aside
    lines = [line for line in stderr.splitlines() if line.strip() and "━" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    for word in words:
        assert word in lines[0], lines[0]


def _c60_record(tmp_path: Path, url: str, n_motifs: int) -> None:
    """The C60 example with ``n_motifs`` motifs, made in this process (the commands under test run in subprocesses)."""
    import ase.io

    from motex_db.datasets import write_gr
    from motex_db.examples import c60_measured_pdf, c60_starting_model
    from motex_db.simulation import r_grid

    structure = tmp_path / "c60_start.xyz"
    ase.io.write(str(structure), c60_starting_model(), format="xyz")
    r = r_grid(0.5, 15.0, 0.01)
    data = write_gr(tmp_path / "c60.gr", r, c60_measured_pdf(r), {"qmin": 0.7, "qmax": 24.0}, "c60")
    for args in (
        ["structure", "add", structure, "--name", "c60", "--permute", "C"],
        ["data", "add", data, "--name", "c60"],
        ["sample", "--structure", "c60", "--n", n_motifs, "--seed", 5],
    ):
        result = run_cli(*args, db=url)
        assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- a fit that raises


def test_a_motif_whose_fit_raises_is_stored_failed_and_its_batch_mates_are_fitted(motex, tmp_path, monkeypatch):
    from motex_db.fitting.batched import MotifFitter

    url = f"sqlite:///{tmp_path / 'raise.db'}"
    _c60_record(tmp_path, url, 200)
    poison = query(url, "SELECT mask FROM motif ORDER BY id LIMIT 1 OFFSET 37")[0][0]
    poison_row = [c == "1" for c in poison]
    fit_frames = MotifFitter.fit_frames

    def raising(self, masks, frames=None):
        if any(list(map(bool, row)) == poison_row for row in masks):
            raise ZeroDivisionError("a bug met this motif")
        return fit_frames(self, masks, frames)

    monkeypatch.setattr(MotifFitter, "fit_frames", raising)
    result = motex(*FIT, "--batch-size", "64", db=url)
    assert result.exit_code == 0, result.output
    assert "fitted 200 motifs" in result.stdout
    status, error = query(url, f"SELECT status, error FROM motif_fit WHERE mask = '{poison}'")[0]
    assert status == "failed" and "ZeroDivisionError: a bug met this motif" in error
    assert scalar(url, "SELECT COUNT(*) FROM fit_result WHERE error LIKE '%ZeroDivisionError%'") == 1
    # its batch-mates have their own outcomes (a few C60 motifs have too few atoms to fit, as always)
    assert scalar(url, "SELECT COUNT(*) FROM fit_result WHERE status = 'ok'") >= 190
    _assert_complete(url, 200)
    # not reclaimed and crashed again: the next run has nothing to do
    assert "nothing to fit" in motex(*FIT, db=url).stdout


# ---------------------------------------------------------------- whose claims are released at once


def test_only_claims_of_a_process_surely_gone_from_this_machine_are_taken_over(tmp_path):
    from motex_db.db import open_engine
    from motex_db.fitting.settings import FitSettings
    from datetime import timedelta

    from motex_db.fitting.work import prepare_fit, release_stale_claims
    from motex_db.models import FitClaim, utcnow
    from motex_db.processes import process_identity
    from sqlmodel import Session

    url = f"sqlite:///{tmp_path / 'claims.db'}"
    _c60_record(tmp_path, url, 60)
    dead = subprocess.Popen(["sleep", "60"])
    identity = process_identity(dead.pid)
    dead.kill()
    dead.wait()
    host, pid, start, boot, namespace = identity.split(":")
    other_boot = "0" * 32 if boot != "0" * 32 else "1" * 32
    workers = {
        "dead here": f"{identity}:a",
        "pid reused by a later process": f"{host}:{os.getpid()}:1:{boot}:{namespace}:b",
        "another machine, same host name": f"{host}:{pid}:{start}:{other_boot}:{namespace}:c",
        "another container, same host name": f"{host}:{pid}:{start}:{boot}:1:d",
        "an older motex-db's host:pid:token": f"{host}:{pid}:e",
        "alive here": f"{process_identity()}:f",
    }
    engine = open_engine(url)
    job = prepare_fit(engine, "c60", "c60", FitSettings()).job
    motifs = [m for (m,) in query(url, "SELECT id FROM motif ORDER BY id")]
    expires = utcnow() + timedelta(hours=1)
    with engine.begin() as connection:
        connection.execute(sa.insert(FitClaim.__table__), [
            {"motif_id": motifs[10 * i + k], "dataset_id": job.dataset_id, "fit_config_id": job.fit_config_id,
             "worker": worker, "expires_at": expires}
            for i, worker in enumerate(workers.values()) for k in range(10)
        ])
    with Session(engine) as session:
        released = release_stale_claims(session, job)
        session.commit()
    engine.dispose()
    left = {w for (w,) in query(url, "SELECT DISTINCT worker FROM fit_claim")}
    assert released == 20
    assert left == {workers[k] for k in workers if k not in ("dead here", "pid reused by a later process")}


# ---------------------------------------------------------------- worker processes die with their parent


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_kill_minus_nine_of_fit_with_workers_leaves_no_process_behind(tmp_path):
    url = f"sqlite:///{tmp_path / 'orphans.db'}"
    _c60_record(tmp_path, url, 4000)
    parent = _start_fit(url, "--workers", "2")
    _wait_for_results(url, 200, parent)
    workers = _descendants(parent.pid)
    assert len(workers) >= 2  # the two fit workers (and multiprocessing's resource tracker)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 3  # the kernel's signal is immediate; the watchdog looks every second
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "worker processes outlived their parent"
    # (that a rerun then finishes the work is test_fit_work's kill -9 test)
    assert scalar(url, "SELECT COUNT(*) FROM fit_result") < 4000


def test_die_with_parent_ends_a_child_whose_parent_is_killed(tmp_path):
    """The helper on its own, as a pool initializer would use it: a grandchild ends when its parent is killed."""
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import os, time; from motex_db.processes import die_with_parent; die_with_parent(' + str(os.getpid()) + '); "
        "print(os.getpid(), flush=True); time.sleep(120)'], stdout=sys.stdout)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert _alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 5
    while time.time() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


# ---------------------------------------------------------------- a lost PostgreSQL connection


def _terminate_backends(admin_url: str, database: str) -> int:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        n = len(connection.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall())
    admin.dispose()
    return n


def test_postgresql_connections_terminated_during_fit_are_reconnected(tmp_path, postgres_url, postgres_server):
    n_motifs = 2000
    _c60_record(tmp_path, postgres_url, n_motifs)
    database = sa.engine.make_url(postgres_url).database
    process = subprocess.Popen(
        [motex_executable(), "--db", postgres_url, *FIT, "--batch-size", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _wait_for_results(postgres_url, 300, process)
    terminated = 0
    for _ in range(3):  # three times, a little apart: mid-batch and mid-transaction
        terminated += _terminate_backends(postgres_server, database)
        time.sleep(0.3)
    out, err = process.communicate(timeout=300)
    assert terminated >= 1
    assert process.returncode == 0 and "Traceback" not in err, err
    _assert_complete(postgres_url, n_motifs)


def test_a_postgresql_connection_that_stays_lost_ends_fit_with_one_sentence(tmp_path, postgres_url, postgres_server):
    n_motifs = 1500
    _c60_record(tmp_path, postgres_url, n_motifs)
    database = sa.engine.make_url(postgres_url).database
    process = subprocess.Popen(
        [motex_executable(), "--db", postgres_url, *FIT, "--batch-size", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MOTEX_DB_RECONNECT_SECONDS": "3"},
    )
    _wait_for_results(postgres_url, 300, process)
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        _terminate_backends(postgres_server, database)
        out, err = process.communicate(timeout=120)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        admin.dispose()
    assert process.returncode == 2
    _one_sentence(err, "lost the connection", "did not come back in 3 s")
    kept = scalar(postgres_url, "SELECT COUNT(*) FROM fit_result")
    assert 300 <= kept < n_motifs
    again = _motex(postgres_url, *FIT)
    assert again.returncode == 0, again.stderr
    assert f"fitted {n_motifs - kept} motifs" in again.stdout
    _assert_complete(postgres_url, n_motifs)


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A small tmpfs (needs root; skipped where mounting is not allowed), and a function that resizes it (bytes)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {tried.stderr.strip()}")

    def resize(size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    yield mount, resize
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_fit_is_one_sentence_and_a_rerun_finishes(tmp_path, small_disk):
    mount, resize = small_disk
    built = tmp_path / "built.db"
    n_motifs = 3000
    _c60_record(tmp_path, f"sqlite:///{built}", n_motifs)
    with sqlite3.connect(built) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    # room for the record and about a third of its results
    resize(built.stat().st_size + 256 * 1024)
    (mount / "motex.db").write_bytes(built.read_bytes())
    url = f"sqlite:///{mount / 'motex.db'}"
    full = _motex(url, *FIT, "--batch-size", "200")
    assert full.returncode == 2, full.stdout + full.stderr
    _one_sentence(full.stderr, "is full", "run the command again")
    with sqlite3.connect(mount / "motex.db") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = connection.execute("SELECT COUNT(*) FROM fit_result").fetchone()[0]
    assert kept < n_motifs
    resize(64 * 1024 * 1024)
    again = _motex(url, *FIT)
    assert again.returncode == 0, again.stderr
    assert f"fitted {n_motifs - kept} motifs" in again.stdout
    _assert_complete(url, n_motifs)


# ---------------------------------------------------------------- the MLflow store and runs left behind


OPEN_RUN = """
import sys, time
from motex_db.tracking import open_tracker
tracker = open_tracker(sys.argv[1])
print(tracker.start_run("train that gets killed", {"motex_db.kind": "train"}), flush=True)
time.sleep(120)
"""


def test_runs_left_running_by_a_killed_process_are_marked_killed_at_the_next_start(tmp_path):
    from motex_db.tracking import open_tracker

    record = f"sqlite:///{tmp_path / 'motex.db'}"
    killed = subprocess.Popen([sys.executable, "-c", OPEN_RUN, record], stdout=subprocess.PIPE, text=True)
    alive = subprocess.Popen([sys.executable, "-c", OPEN_RUN, record], stdout=subprocess.PIPE, text=True)
    try:
        killed_run, alive_run = killed.stdout.readline().strip(), alive.stdout.readline().strip()
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        tracker = open_tracker(record)
        assert tracker.killed_runs == 1
        assert tracker.client.get_run(killed_run).info.status == "KILLED"
        assert tracker.client.get_run(alive_run).info.status == "RUNNING"
    finally:
        alive.kill()
        alive.wait()


CREATE_STORE = """
import sys
from motex_db.tracking import open_tracker
open_tracker(sys.argv[1])
"""


def _kill_during(process, folder: Path, pattern: str) -> None:
    """kill -9 ``process`` 0.3 s after a file matching ``pattern`` appears in ``folder`` (into MLflow's migrations)."""
    deadline = time.time() + 120
    while time.time() < deadline and not list(folder.glob(pattern)):
        assert process.poll() is None, "the store was made before it could be interrupted"
        time.sleep(0.01)
    time.sleep(0.3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_a_store_creation_killed_half_way_leaves_no_half_made_store(tmp_path, monkeypatch):
    """Without a template to copy (the cache folder cannot be made), MLflow's migrations run in the scratch file."""
    from motex_db.tracking import open_tracker

    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("MOTEX_DB_CACHE", str(tmp_path / "a file" / "cache"))
    record = f"sqlite:///{tmp_path / 'motex.db'}"
    _kill_during(subprocess.Popen([sys.executable, "-c", CREATE_STORE, record]), tmp_path, "mlflow.db.creating-*")
    assert not (tmp_path / "mlflow.db").exists()  # no store rather than half a store
    tracker = open_tracker(record)
    assert tracker.client.get_experiment(tracker.experiment_id).name == "motex-db"
    assert not list(tmp_path.glob("mlflow.db.creating-*"))


def test_new_stores_copy_one_template_made_whole_or_not_at_all(tmp_path, monkeypatch):
    """MLflow's migrations run once per machine, into a template that a kill leaves whole or absent; every new
    store copies it, and a template that is not a whole store is made anew."""
    import motex_db.tracking as tracking

    cache = tmp_path / "cache"
    monkeypatch.setenv("MOTEX_DB_CACHE", str(cache))
    first = tmp_path / "first"
    first.mkdir()
    _kill_during(subprocess.Popen([sys.executable, "-c", CREATE_STORE, f"sqlite:///{first / 'motex.db'}"]),
                 cache, "*.creating-*")
    assert not list(cache.glob("*.db")) and not (first / "mlflow.db").exists()
    # the scratch file, and SQLite's journal beside it where the kill fell inside a transaction
    leftovers = list(cache.glob("*.creating-*"))
    (killed,) = [path for path in leftovers if path.name.rsplit("-", 1)[1].isdigit()]
    # an hour on, the killed creation's files are deleted; a creation under way elsewhere is left alone
    aged = time.time() - tracking.STALE_SCRATCH_SECONDS - 60
    for path in leftovers:
        os.utime(path, (aged, aged))
    busy = cache / f"{killed.name.rsplit('-', 1)[0]}-99999999"
    busy.write_bytes(b"")
    tracking.open_tracker(f"sqlite:///{first / 'motex.db'}")
    (template,) = cache.glob("*.db")
    assert list(cache.glob("*.creating-*")) == [busy]

    def no_migrations(path):
        raise AssertionError("MLflow's migrations ran again")

    monkeypatch.setattr(tracking, "_migrate_sqlite_file", no_migrations)
    for name in ("second", "third"):
        (tmp_path / name).mkdir()
        tracker = tracking.open_tracker(f"sqlite:///{tmp_path / name / 'motex.db'}")
        run = tracker.start_run(name, {"motex_db.kind": "train"})
        tracker.finish_run(run)
        assert [r.info.run_name for r in tracker.client.search_runs([tracker.experiment_id])] == [name]
    monkeypatch.undo()
    monkeypatch.setenv("MOTEX_DB_CACHE", str(cache))
    template.write_bytes(b"not an SQLite file")
    (tmp_path / "fourth").mkdir()
    tracker = tracking.open_tracker(f"sqlite:///{tmp_path / 'fourth' / 'motex.db'}")
    assert tracker.client.get_experiment(tracker.experiment_id).name == "motex-db"
    assert tracking._store_state(tmp_path / "fourth" / "mlflow.db")[0]
    assert not template.exists()  # made anew by the next new store


def test_a_half_made_store_from_an_older_version_is_mended_with_one_sentence(tmp_path, caplog):
    from motex_db.tracking import open_tracker

    record = f"sqlite:///{tmp_path / 'motex.db'}"
    tracker = open_tracker(record)
    run = tracker.start_run("kept", {"motex_db.kind": "train"})
    tracker.finish_run(run)
    store = tmp_path / "mlflow.db"
    with sqlite3.connect(store) as connection:  # what an interrupted batch migration leaves behind
        connection.execute("CREATE TABLE _alembic_tmp_experiments AS SELECT * FROM experiments")
    with caplog.at_level("WARNING", logger="motex_db"):
        again = open_tracker(record)
    assert [r.getMessage() for r in caplog.records if r.name == "motex_db"] == [
        f"the MLflow store {store} was left half-made by an interrupted migration; it was mended (1 runs kept)."
    ]
    assert again.client.get_run(run).info.status == "FINISHED"
    with sqlite3.connect(store) as connection:
        names = {n for (n,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not [n for n in names if n.startswith("_alembic_tmp_")]


def test_a_store_killed_in_an_older_mlflow_migration_is_mended(tmp_path, caplog):
    """The issue's case: a store of an older schema whose upgrade was killed inside a batch migration of
    ``experiments`` (which MLflow then fails on with "table _alembic_tmp_experiments already exists")."""
    from alembic import command
    from mlflow.store.db.utils import InitialBase, _get_alembic_config

    from motex_db.tracking import open_tracker

    store = tmp_path / "mlflow.db"
    engine = sa.create_engine(f"sqlite:///{store}")
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(str(engine.url))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "c8d9e0f1a2b3")  # the revision before the one that rebuilds experiments
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE _alembic_tmp_experiments AS SELECT * FROM experiments")
    engine.dispose()
    with caplog.at_level("WARNING", logger="motex_db"):
        tracker = open_tracker(f"sqlite:///{tmp_path / 'motex.db'}")
    assert [r.getMessage() for r in caplog.records if r.name == "motex_db"] == [
        f"the MLflow store {store} was left half-made by an interrupted migration; it was mended (0 runs kept)."
    ]
    run = tracker.start_run("after the mend", {"motex_db.kind": "train"})
    tracker.finish_run(run)
    assert tracker.client.get_run(run).info.status == "FINISHED"
