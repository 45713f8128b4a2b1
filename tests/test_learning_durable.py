"""train and explain survive kill -9 and doubled commands, on SQLite and PostgreSQL (real motex-db processes).

A killed command keeps every unit of learning work it finished (a model, a
series frame's model, a frame's contributions); a rerun adds the rest, and
two or three commands at once split the work or wait for each other:
exactly one row per unit, no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from motex_db.examples import WO3_BOND_CUTOFF, two_motif_series, write_two_motif_series
from support import motex_executable, query

N_FRAMES = 8
N_MOTIFS = 300


@pytest.fixture
def fitted_series(db_url, tmp_path):
    """A record with N_FRAMES frames of the generated two-motif series, N_MOTIFS motifs fitted to each."""
    from motex_db.catalogue import sample_motifs
    from motex_db.datasets import add_datasets
    from motex_db.db import open_engine
    from motex_db.fitting import FitSettings
    from motex_db.fitting.work import fit_catalogue
    from motex_db.structures import add_starting_model

    model, frames, times = write_two_motif_series(tmp_path / "files", two_motif_series(n_frames=N_FRAMES, seed=5))
    engine = open_engine(db_url)
    add_starting_model(engine, model, "wo3", ["W"], WO3_BOND_CUTOFF)
    add_datasets(engine, frames, series="grow", times_file=times)
    sample_motifs(engine, "wo3", N_MOTIFS, seed=2)
    fit_catalogue(engine, "wo3", None, FitSettings(), series="grow")
    engine.dispose()
    return db_url


def _start(url: str, cwd, *args) -> subprocess.Popen:
    return subprocess.Popen([motex_executable(), "--db", url, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def _wait_for(condition, timeout: float = 240.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _count(url: str, sql: str) -> int:
    return int(query(url, sql)[0][0])


def _children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (from /proc)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as handle:
                    kids = [int(k) for k in handle.read().split()]
            except OSError:
                kids = []
            found += kids
            frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_two_identical_trains_store_one_model_and_two_explains_one_explanation(fitted_series, tmp_path):
    url = fitted_series
    train = ("train", "--structure", "wo3", "--data", "frame_0004", "--n-iter", 4, "--cv", 2)
    results = [_finish(p) for p in [_start(url, tmp_path, *train) for _ in range(2)]]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert not any("Traceback" in err for _, _, err in results)
    assert _count(url, "SELECT count(*) FROM trained_model") == 1
    assert sum("reusing it" in out for _, out, _ in results) == 1
    assert _count(url, "SELECT count(*) FROM learning_claim") == 0

    explain = ("explain", "--structure", "wo3", "--data", "frame_0004")
    results = [_finish(p) for p in [_start(url, tmp_path, *explain) for _ in range(2)]]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert not any("Traceback" in err for _, _, err in results)
    assert _count(url, "SELECT count(*) FROM atom_contribution") == 27  # one per permutable W, once
    (extracted,), = query(url, "SELECT extracted_motif_id FROM trained_model")
    assert extracted is not None
    assert _count(url, "SELECT count(*) FROM learning_claim") == 0


def test_train_killed_mid_search_then_rerun_trains_once(fitted_series, tmp_path):
    url = fitted_series
    args = ("train", "--structure", "wo3", "--data", "frame_0002", "--n-iter", 12, "--full-search", "--cv", 2)
    process = _start(url, tmp_path, *args)
    _wait_for(lambda: _count(url, "SELECT count(*) FROM learning_claim") == 1, what="the training's claim")
    time.sleep(1.0)  # inside the search
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _count(url, "SELECT count(*) FROM trained_model") == 0  # nothing half-written
    # the killed process's claim is still there, and the rerun takes it over at once (its holder is gone)
    started = time.monotonic()
    code, out, err = _finish(_start(url, tmp_path, *args))
    assert code == 0, err
    assert "trained model" in out
    assert _count(url, "SELECT count(*) FROM trained_model") == 1
    assert _count(url, "SELECT count(*) FROM learning_claim") == 0
    assert time.monotonic() - started < 300


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL: the three-process test kills one too
def test_series_training_killed_keeps_its_frames_and_leaves_no_worker(fitted_series, tmp_path):
    url = fitted_series
    args = ("train", "--structure", "wo3", "--series", "grow", "--n-iter", 2, "--cv", 2, "--workers", 2)
    process = _start(url, tmp_path, *args)
    _wait_for(lambda: _count(url, "SELECT count(*) FROM trained_model") >= 2, what="two frames stored")
    helpers = _children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = query(url, "SELECT id, inputs_hash FROM trained_model ORDER BY id")
    assert 2 <= len(kept) < N_FRAMES, "the kill came too late to test anything"
    _wait_for(lambda: not any(_alive(pid) for pid in helpers), timeout=10, what="the workers to die with their parent")

    code, out, err = _finish(_start(url, tmp_path, *args))
    assert code == 0, err
    rows = query(url, "SELECT id, inputs_hash FROM trained_model ORDER BY id")
    assert rows[: len(kept)] == kept  # what was finished is kept, not recomputed
    assert _count(url, "SELECT count(DISTINCT dataset_id) FROM trained_model") == N_FRAMES == len(rows)
    assert _count(url, "SELECT count(*) FROM learning_claim") == 0


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # many machines share a PostgreSQL record
def test_three_series_processes_one_killed_give_every_frame_one_model_and_one_explanation(fitted_series, tmp_path):
    url = fitted_series
    train = ("train", "--structure", "wo3", "--series", "grow", "--n-iter", 2, "--cv", 2, "--workers", 1)
    processes = [_start(url, tmp_path, *train) for _ in range(3)]
    _wait_for(lambda: _count(url, "SELECT count(*) FROM trained_model") >= 2, what="two frames stored")
    processes[0].send_signal(signal.SIGKILL)
    processes[0].wait()
    results = [_finish(p) for p in processes[1:]]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert not any("Traceback" in err for _, _, err in results)
    assert query(url, "SELECT count(*), count(DISTINCT dataset_id) FROM trained_model") == [(N_FRAMES, N_FRAMES)]

    explain = ("explain", "--structure", "wo3", "--series", "grow")
    processes = [_start(url, tmp_path, *explain) for _ in range(3)]
    _wait_for(lambda: _count(url, "SELECT count(DISTINCT trained_model_id) FROM atom_contribution") >= 1,
              what="one frame explained")
    processes[1].send_signal(signal.SIGKILL)
    processes[1].wait()
    results = [_finish(p) for p in (processes[0], processes[2])]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert not any("Traceback" in err for _, _, err in results)
    per_model = query(url, "SELECT trained_model_id, count(*) FROM atom_contribution GROUP BY trained_model_id")
    assert len(per_model) == N_FRAMES and all(n == 27 for _, n in per_model)
    assert _count(url, "SELECT count(*) FROM learning_claim") == 0
