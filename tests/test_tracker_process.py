"""MLflow tracking in a helper process (motex_db.tracker_process), and `train`/`explain` that use it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import pytest

from motex_db.errors import DatabaseError
from motex_db.processes import process_identity
from motex_db.tracker_process import Pending, TrackerProcess
from motex_db.tracking import PROCESS_TAG, open_tracker
from support import motex_executable, query
from test_learning_durable import _alive, _children, _count, _finish, _start, _wait_for, fitted_series  # noqa: F401


def test_a_helper_sent_nothing_touches_nothing_and_ends(tmp_path):
    record = f"sqlite:///{tmp_path / 'motex.db'}"
    tracker = TrackerProcess(record)
    helper = tracker._process
    tracker.close()
    assert helper.returncode is not None  # ended and reaped
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


def test_calls_run_in_order_in_the_helper_and_runs_belong_to_the_command(tmp_path):
    record = f"sqlite:///{tmp_path / 'motex.db'}"
    with TrackerProcess(record) as tracker:
        tracker.open()
        run = tracker.start_run("a training", {"motex_db.kind": "train"}, {"seed": 3})
        assert isinstance(run, Pending)
        child = tracker.log_child(run, "trial 0", {"motex_db.kind": "trial"}, {"max_depth": 3}, {"cv_mae": 0.5},
                                  time.time() - 2, time.time() - 1)
        tracker.log_values(run, metrics={"test_mae": 0.01, "nan": float("nan")}, tags={"trained_model_id": 7})
        tracker.log_series(run, {"validation_mae": [0.3, 0.2, 0.1]})
        tracker.log_files(run, {"model.json": "{}"}, "model")
        (tmp_path / "table.csv").write_text("a,b\n1,2\n")
        tracker.log_artifacts(run, [tmp_path / "table.csv"], "explain")
        tracker.finish_run(run)
        run_id, child_id = tracker.value(run), tracker.value(child)
        assert tracker.has_run(run_id) and not tracker.has_run("0" * 32)
    mlflow = open_tracker(record)
    stored = mlflow.client.get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.tags[PROCESS_TAG] == process_identity()  # the command's, not the helper's
    assert stored.data.metrics == {"test_mae": 0.01, "validation_mae": 0.1}
    assert stored.data.params == {"seed": "3"} and stored.data.tags["trained_model_id"] == "7"
    assert [h.value for h in mlflow.client.get_metric_history(run_id, "validation_mae")] == [0.3, 0.2, 0.1]
    assert mlflow.client.get_run(child_id).data.tags["mlflow.parentRunId"] == run_id
    assert sorted(a.path for f in ("model", "explain") for a in mlflow.client.list_artifacts(run_id, f)) == [
        "explain/table.csv", "model/model.json"]


def test_a_failure_in_the_helper_is_raised_in_the_command(tmp_path):
    (tmp_path / "a file").write_text("")
    record = f"sqlite:///{tmp_path / 'motex.db'}"
    tracker = TrackerProcess(record, f"sqlite:///{tmp_path / 'a file' / 'mlflow.db'}")  # a folder that is a file
    try:
        tracker.open()
        run = tracker.start_run("never", {})
        with pytest.raises(DatabaseError, match="cannot use the MLflow tracking store"):
            tracker.value(run)
        with pytest.raises(DatabaseError):
            tracker.check()  # and again, every time after
    finally:
        tracker.close(abandon=True)
    assert tracker._process.returncode is not None


def test_the_helpers_sentences_are_said_by_the_command(tmp_path, caplog):
    record = f"sqlite:///{tmp_path / 'motex.db'}"
    open_tracker(record)
    store = tmp_path / "mlflow.db"
    with sqlite3.connect(store) as connection:  # what an interrupted batch migration leaves behind
        connection.execute("CREATE TABLE _alembic_tmp_experiments AS SELECT * FROM experiments")
    with caplog.at_level("WARNING", logger="motex_db"), TrackerProcess(record) as tracker:
        tracker.open()
        tracker.flush()
    assert [r.getMessage() for r in caplog.records if r.name == "motex_db"] == [
        f"the MLflow store {store} was left half-made by an interrupted migration; it was mended (0 runs kept)."
    ]


def test_a_helper_that_dies_is_one_sentence(tmp_path):
    record = f"sqlite:///{tmp_path / 'motex.db'}"
    with pytest.raises(DatabaseError, match="the MLflow helper process ended unexpectedly"):
        with TrackerProcess(record) as tracker:
            tracker.open()
            tracker.flush()
            tracker._process.kill()
            tracker._process.wait()
            tracker.finish_run("0" * 32)
            tracker.flush()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_train_with_an_unusable_store_stops_with_one_sentence_and_stores_nothing(fitted_series, tmp_path):
    (tmp_path / "a file").write_text("")
    process = _start(fitted_series, tmp_path, "train", "--structure", "wo3", "--data", "frame_0003", "--n-iter", 4,
                     "--mlflow-uri", f"sqlite:///{tmp_path / 'a file' / 'mlflow.db'}")
    code, out, err = _finish(process)
    assert code == 2, (out, err)
    assert "Traceback" not in err and "cannot use the MLflow tracking store" in err
    assert _count(fitted_series, "SELECT count(*) FROM trained_model") == 0
    assert _count(fitted_series, "SELECT count(*) FROM learning_claim") == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_train_killed_leaves_no_helper_and_its_run_is_marked_killed(fitted_series, tmp_path):
    url = fitted_series
    store = tmp_path / "mlflow.db"  # beside the record (db_url's file is in tmp_path)
    assert url == f"sqlite:///{tmp_path / 'motex.db'}"

    def running_runs() -> int:
        if not store.exists():
            return 0
        with sqlite3.connect(store) as connection:
            return connection.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]

    args = ("train", "--structure", "wo3", "--data", "frame_0005", "--n-iter", 30, "--full-search", "--cv", 2)
    process = _start(url, tmp_path, *args)
    _wait_for(running_runs, what="the training's MLflow run")
    helpers = _children(process.pid)
    assert helpers, "the MLflow helper process is there"
    process.send_signal(signal.SIGKILL)
    process.wait()
    _wait_for(lambda: not any(_alive(pid) for pid in helpers), timeout=10, what="the helper to die with its command")
    assert _count(url, "SELECT count(*) FROM trained_model") == 0
    tracker = open_tracker(url)
    assert tracker.killed_runs == 1
    (run,) = tracker.client.search_runs([tracker.experiment_id], "tags.`motex_db.kind` = 'train'")
    assert run.info.status == "KILLED"


def test_the_helper_draws_the_shap_summary_and_says_when_it_cannot(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    features = rng.integers(0, 2, size=(200, 4)).astype(float)
    values = rng.normal(size=(200, 4))
    record = f"sqlite:///{tmp_path / 'motex.db'}"
    with TrackerProcess(record, figures=True) as tracker:
        tracker.draw_shap_summary(values, features, ["n_kept", "W1", "W2", "W3"], "a title", tmp_path / "summary.png")
        tracker.flush()
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "mlflow.db").exists()  # drawing needs no store
    with pytest.raises(DatabaseError, match="drawing the SHAP summary plot failed"):
        with TrackerProcess(record, figures=True) as tracker:
            tracker.draw_shap_summary(values, features[:, :2], ["a", "b"], "shapes that do not match",
                                      tmp_path / "never.png")
