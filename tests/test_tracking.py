"""MLflow tracking: embedded beside the record, separate from our tables, safe under concurrent starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from motex_db.tracking import EXPERIMENT_NAME, open_tracker, tracking_location

RACE = """
import sys
from motex_db.tracking import open_tracker
tracker = open_tracker(sys.argv[1])
with tracker.logging():
    run = tracker.client.create_run(tracker.experiment_id, run_name="r" + sys.argv[2])
    tracker.client.log_param(run.info.run_id, "i", sys.argv[2])
    tracker.client.set_terminated(run.info.run_id)
print(tracker.experiment_id)
"""


def _race(record_url: str, n: int = 3) -> list[str]:
    processes = [
        subprocess.Popen([sys.executable, "-c", RACE, record_url, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(n)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0] * n, [err for _, err in outputs]
    return [out.strip() for out, _ in outputs]


def test_embedded_store_sits_beside_a_sqlite_record(tmp_path):
    location = tracking_location(f"sqlite:///{tmp_path / 'motex.db'}")
    assert location.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert location.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert location.ui_command.startswith(f"mlflow ui --backend-store-uri sqlite:///{tmp_path}")


def test_an_explicit_uri_wins(tmp_path, monkeypatch):
    record = f"sqlite:///{tmp_path / 'motex.db'}"
    assert tracking_location(record, "http://mlflow.example:5000").tracking_uri == "http://mlflow.example:5000"
    monkeypatch.setenv("MOTEX_MLFLOW_URI", f"sqlite:///{tmp_path / 'team.db'}")
    assert tracking_location(record).tracking_uri.endswith("team.db")


def test_processes_starting_at_once_share_one_experiment(tmp_path):
    record = f"sqlite:///{tmp_path / 'motex.db'}"
    ids = _race(record)
    assert len(set(ids)) == 1
    tracker = open_tracker(record)
    assert len(tracker.client.search_runs([tracker.experiment_id])) == 3
    assert tracker.client.get_experiment(tracker.experiment_id).name == EXPERIMENT_NAME


def test_postgresql_record_keeps_mlflow_in_its_own_database(postgres_url):
    ids = _race(postgres_url)
    assert len(set(ids)) == 1
    record = sa.create_engine(postgres_url)
    # our database holds no MLflow table (both would have an alembic_version)
    assert "experiments" not in sa.inspect(record).get_table_names()
    record.dispose()
    location = tracking_location(postgres_url)
    mlflow_db = sa.engine.make_url(location.tracking_uri)
    engine = sa.create_engine(mlflow_db)
    assert "experiments" in sa.inspect(engine).get_table_names()
    engine.dispose()
