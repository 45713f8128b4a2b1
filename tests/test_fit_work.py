"""`motex-db fit`: incremental, deduplicated, resumable after kill -9, shared by many workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import sqlalchemy as sa

from motex_db.datasets import write_gr
from motex_db.examples import c60_measured_pdf, c60_starting_model
from motex_db.simulation import r_grid
from support import motex_executable, snapshot

# a W4O4 chain plus a lone W far away: the lone W alone is a motif with one atom, which cannot be fitted
CHAIN = (
    "9\n\nW 0 0 0\nW 3.3 0 0\nW 6.6 0 0\nW 9.9 0 0\nW 30 30 30\n"
    "O 1.65 1.0 0\nO 4.95 1.0 0\nO 8.25 1.0 0\nO 9.9 1.9 0\n"
)


def scalar(url: str, query: str):
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        value = connection.exec_driver_sql(query).scalar()
    engine.dispose()
    return value


@pytest.fixture
def chain_record(motex, db_url, tmp_path):
    """The chain and a PDF simulated from its first three W (and their O)."""
    path = tmp_path / "chain.xyz"
    path.write_text(CHAIN)
    assert motex("structure", "add", path, "--name", "chain", "--permute", "W", db=db_url).exit_code == 0
    motif = tmp_path / "motif.xyz"
    # W1-W3 with the three O bonded to them (the O at x = 9.9 is bonded to W4 only)
    motif.write_text("6\n\nW 0 0 0\nW 3.3 0 0\nW 6.6 0 0\nO 1.65 1.0 0\nO 4.95 1.0 0\nO 8.25 1.0 0\n")
    data = tmp_path / "chain.gr"
    assert motex("simulate", motif, "--out", data, "--rmin", "0.5", "--rmax", "15", "--zoom", "1.003").exit_code == 0
    assert motex("data", "add", data, "--name", "obs", db=db_url).exit_code == 0
    return db_url


def test_fit_everything_then_nothing_then_only_the_new(motex, chain_record, tmp_path):
    url = chain_record
    assert motex("sample", "--structure", "chain", "--n", "10", "--seed", "1", db=url).exit_code == 0
    first = motex("fit", "--structure", "chain", "--data", "obs", db=url)
    assert first.exit_code == 0, first.output
    assert "fitted 10 motifs" in first.stdout and "best Rwp" in first.stdout
    assert scalar(url, "SELECT COUNT(*) FROM fit_result") == 10
    again = motex("fit", "--structure", "chain", "--data", "obs", db=url)
    assert again.exit_code == 0 and "nothing to fit" in again.stdout
    assert motex("sample", "--structure", "chain", "--n", "5", "--seed", "2", db=url).exit_code == 0
    more = motex("fit", "--structure", "chain", "--data", "obs", db=url)
    assert "fitted 5 motifs" in more.stdout
    assert scalar(url, "SELECT COUNT(*) FROM fit_result") == 15
    assert scalar(url, "SELECT COUNT(*) FROM fit_claim") == 0
    # the true motif (W1-W3), added now if the sampler missed it, fits best of all (with the far,
    # lone W5 added it fits as well: that W has no pair within reach, and the scale absorbs its weight)
    true_motif = tmp_path / "true.txt"
    true_motif.write_text("11100\n")
    assert motex("sample", "--structure", "chain", "--from-file", true_motif, db=url).exit_code == 0
    assert motex("fit", "--structure", "chain", "--data", "obs", db=url).exit_code == 0
    true_rwp = scalar(url, "SELECT rwp FROM motif_fit WHERE mask = '11100'")
    rwp = scalar(url, "SELECT MIN(rwp) FROM fit_result")
    assert true_rwp < 0.05 and true_rwp <= rwp + 1e-6


def test_the_true_motif_fits_perfectly_at_its_zoom(motex, chain_record, tmp_path):
    url = chain_record
    masks = tmp_path / "masks.txt"
    masks.write_text("11100\n11110\n")
    assert motex("sample", "--structure", "chain", "--from-file", masks, db=url).exit_code == 0
    assert motex("fit", "--structure", "chain", "--data", "obs", db=url).exit_code == 0
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = dict(connection.exec_driver_sql("SELECT mask, rwp FROM motif_fit").fetchall())
        params = connection.exec_driver_sql("SELECT params FROM motif_fit WHERE mask = '11100'").scalar()
    engine.dispose()
    assert rows["11100"] < 1e-3 < rows["11110"]
    params = params if isinstance(params, dict) else __import__("json").loads(params)
    assert params["zoom"] == pytest.approx(1.003, abs=2e-4)


def test_failed_fits_are_stored_and_retried_only_when_asked(motex, chain_record, tmp_path):
    url = chain_record
    masks = tmp_path / "masks.txt"
    masks.write_text("00001\n11000\n")
    assert motex("sample", "--structure", "chain", "--from-file", masks, db=url).exit_code == 0
    result = motex("fit", "--structure", "chain", "--data", "obs", db=url)
    assert result.exit_code == 0, result.output
    assert "1 failed" in result.stdout
    error = scalar(url, "SELECT error FROM motif_fit WHERE mask = '00001'")
    assert scalar(url, "SELECT status FROM motif_fit WHERE mask = '00001'") == "failed" and error
    assert "nothing to fit" in motex("fit", "--structure", "chain", "--data", "obs", db=url).stdout
    retried = motex("fit", "--structure", "chain", "--data", "obs", "--retry-failed", db=url)
    assert "1 failed fits were cleared" in retried.stdout and "fitted 1 motifs" in retried.stdout
    assert scalar(url, "SELECT COUNT(*) FROM fit_result") == 2


def test_each_recipe_and_option_set_is_one_fit_config(motex, chain_record):
    url = chain_record
    assert motex("sample", "--structure", "chain", "--n", "4", "--seed", "1", db=url).exit_code == 0
    assert motex("fit", "--structure", "chain", "--data", "obs", db=url).exit_code == 0
    assert motex("fit", "--structure", "chain", "--data", "obs", "--recipe", "fast", "--rmin", "1.6", db=url).stdout.count("nothing to fit") == 1
    assert motex("fit", "--structure", "chain", "--data", "obs", "--recipe", "mlmotex", db=url).exit_code == 0
    assert motex("fit", "--structure", "chain", "--data", "obs", "--qdamp", "0.04", db=url).exit_code == 0
    assert scalar(url, "SELECT COUNT(*) FROM fit_config") == 3
    assert scalar(url, "SELECT COUNT(*) FROM fit_result") == 12
    recipes = scalar(url, "SELECT COUNT(DISTINCT recipe) FROM fit_config")
    assert recipes == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["--recipe", "magic"], "magic"),
        (["--free", "scale,wobble"], "wobble"),
        (["--rmin", "20", "--rmax", "30"], "outside dataset 'obs'"),
        (["--zoom-bounds", "1.01"], "--zoom-bounds"),
        (["--data", "nope"], "no dataset named 'nope'"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_bad_fit_options_leave_the_record_unchanged(motex, chain_record, args, words):
    url = chain_record
    assert motex("sample", "--structure", "chain", "--n", "3", "--seed", "1", db=url).exit_code == 0
    before = snapshot(url)
    base = ["fit", "--structure", "chain"] + ([] if "--data" in args else ["--data", "obs"])
    result = motex(*base, *args, db=url)
    assert result.exit_code == 2, result.output
    assert words in result.stderr
    assert snapshot(url) == before


def test_fit_without_motifs_says_to_sample(motex, chain_record):
    before = snapshot(chain_record)
    result = motex("fit", "--structure", "chain", "--data", "obs", db=chain_record)
    assert result.exit_code == 2 and "motex-db sample" in result.stderr
    assert snapshot(chain_record) == before


# ---------------------------------------------------------------- kill -9 and many workers


def _c60_record(tmp_path: Path, url: str, n_motifs: int) -> None:
    structure = tmp_path / "c60_start.xyz"
    ase.io.write(str(structure), c60_starting_model(), format="xyz")
    r = r_grid(0.5, 15.0, 0.01)
    data = write_gr(tmp_path / "c60.gr", r, c60_measured_pdf(r), {"qmin": 0.7, "qmax": 24.0}, "c60")
    run = lambda *args: subprocess.run([motex_executable(), "--db", url, *map(str, args)], check=True, capture_output=True)
    run("structure", "add", structure, "--name", "c60", "--permute", "C")
    run("data", "add", data, "--name", "c60")
    run("sample", "--structure", "c60", "--n", n_motifs, "--seed", "5")


def _start_fit(url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [motex_executable(), "--db", url, "fit", "--structure", "c60", "--data", "c60", "--batch-size", "100", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for_results(url: str, at_least: int, process: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        count = scalar(url, "SELECT COUNT(*) FROM fit_result")
        if count >= at_least:
            return count
        assert process.poll() is None, "the fit finished before it could be killed; give it more work"
        time.sleep(0.05)
    raise AssertionError("no results appeared")


def _assert_complete(url: str, n_motifs: int) -> None:
    assert scalar(url, "SELECT COUNT(*) FROM fit_result") == n_motifs
    assert scalar(url, "SELECT COUNT(DISTINCT motif_id) FROM fit_result") == n_motifs
    assert scalar(url, "SELECT COUNT(*) FROM fit_claim") == 0


def test_kill_minus_nine_then_run_again_finishes_without_duplicates(tmp_path):
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    n_motifs = 4000
    _c60_record(tmp_path, url, n_motifs)
    process = _start_fit(url)
    committed = _wait_for_results(url, 300, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    kept = scalar(url, "SELECT COUNT(*) FROM fit_result")
    assert committed <= kept < n_motifs
    # the dead worker may have had a batch in hand (claims left behind) or not, by timing
    again = subprocess.run(
        [motex_executable(), "--db", url, "fit", "--structure", "c60", "--data", "c60"],
        capture_output=True, text=True, timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert f"fitted {n_motifs - kept} motifs" in again.stdout
    _assert_complete(url, n_motifs)


def test_four_workers_on_postgresql_one_killed(tmp_path, postgres_url):
    n_motifs = 4000
    _c60_record(tmp_path, postgres_url, n_motifs)
    processes = [_start_fit(postgres_url, "--lease", "5") for _ in range(4)]
    _wait_for_results(postgres_url, 400, processes[0])
    os.kill(processes[1].pid, signal.SIGKILL)
    for process in processes:
        process.wait(timeout=600)
    assert [p.returncode for p in processes] == [0, -signal.SIGKILL, 0, 0]
    _assert_complete(postgres_url, n_motifs)


def test_local_worker_processes_share_the_work(motex, tmp_path):
    url = f"sqlite:///{tmp_path / 'workers.db'}"
    _c60_record(tmp_path, url, 600)
    result = motex("fit", "--structure", "c60", "--data", "c60", "--workers", "2", db=url)
    assert result.exit_code == 0, result.output
    assert "fitted 600 motifs" in result.stdout and "2 workers" in result.stdout
    _assert_complete(url, 600)


def test_claims_of_a_dead_worker_on_this_host_are_taken_over_at_once(tmp_path):
    """A batch claimed by a process that no longer exists is fitted by the next run, without waiting for the lease."""
    from motex_db.db import open_engine
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import claim_batch, fit_catalogue, prepare_fit
    from motex_db.processes import process_identity

    url = f"sqlite:///{tmp_path / 'dead.db'}"
    _c60_record(tmp_path, url, 300)
    gone = subprocess.Popen(["sleep", "60"])
    identity = process_identity(gone.pid)
    gone.kill()
    gone.wait()  # its pid now names no process (or a later one, started at another time)
    engine = open_engine(url)
    prepared = prepare_fit(engine, "c60", "c60", FitSettings())
    held = claim_batch(engine, prepared.job, f"{identity}:dead", 100, lease_seconds=3600)
    assert len(held) == 100
    started = time.time()
    summary = fit_catalogue(engine, "c60", "c60", FitSettings())
    assert summary.fitted == 300 and time.time() - started < 120
    engine.dispose()
    _assert_complete(url, 300)
