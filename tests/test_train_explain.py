"""`motex-db train`, `explain` and `refine` end to end on the generated C60 example."""

from __future__ import annotations

import json

import numpy as np
import pytest

from motex_db.examples import C60_ATOM_COUNT
from motex_db.tracking import open_tracker
from support import query, snapshot


@pytest.fixture(scope="module")
def c60(tmp_path_factory):
    """The demo's record with 1500 motifs fitted (built once for this module)."""
    from motex_db.catalogue import sample_motifs
    from motex_db.db import open_engine
    from motex_db.demo import DATASET_NAME, STRUCTURE_NAME, run_demo
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import fit_catalogue

    folder = tmp_path_factory.mktemp("c60")
    url = run_demo(folder / "demo", url=f"sqlite:///{folder / 'demo' / 'motex.db'}", through="data")
    engine = open_engine(url)
    sample_motifs(engine, STRUCTURE_NAME, 1500, seed=3)
    fit_catalogue(engine, STRUCTURE_NAME, DATASET_NAME, FitSettings())
    engine.dispose()
    return url


def test_train_stores_a_model_and_tracks_it_in_mlflow(motex, c60):
    result = motex("train", "--structure", "c60-in-carbon", "--data", "c60-simulated", "--n-iter", "2", "--cv", "2", db=c60)
    assert result.exit_code == 0, result.output
    # the command that opens its runs: motex-db ui on this record (behind the venv's activation where needed)
    assert "trained model" in result.stdout and f"motex-db --db {c60} ui" in result.stdout
    assert "search: 6 trials (all that were asked for), 0 of them pruned" in result.stdout  # cross-validated: never pruned
    (model_id, n_motifs, metrics, run_id), = query(c60, "SELECT id, n_motifs, metrics, mlflow_run_id FROM trained_model")
    metrics = json.loads(metrics) if isinstance(metrics, str) else metrics
    assert n_motifs > 1400 and {"mae", "rmse", "r2"} <= set(metrics) and metrics["mae"] < 0.1
    tracker = open_tracker(c60)
    run = tracker.client.get_run(run_id)
    assert run.data.tags["structure"] == "c60-in-carbon" and run.data.tags["dataset"] == "c60-simulated"
    assert float(run.data.metrics["test_mae"]) == pytest.approx(metrics["mae"])
    children = tracker.client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert len(children) == 4 + 2  # random starts + Bayesian iterations
    assert all("cv_mae" in child.data.metrics and child.data.metrics["pruned"] == 0 for child in children)
    assert len(tracker.client.get_metric_history(run_id, "validation_mae")) > 1  # the loss curve
    # runs worth comparing: named by structure and dataset, with the fit's settings as params
    assert run.info.run_name == "train c60-in-carbon / c60-simulated"
    params = run.data.params
    assert {"structure", "dataset", "recipe", "calculator", "rmin", "rmax", "qmin", "qmax", "qdamp", "zoom_mode",
            "n_motifs", "n_permutable", "seed"} <= set(params)
    assert params["structure"] == "c60-in-carbon" and params["n_permutable"] == "130" and params["zoom_mode"] == "zoom"
    assert {"test_mae", "test_rmse", "test_r2", "best_cv_mae"} <= set(run.data.metrics)
    assert run.info.status == "FINISHED" and run.data.tags["trained_model_id"] == str(model_id)
    # each trial was logged as it finished, with its real start and end
    assert all(c.info.end_time >= c.info.start_time >= run.info.start_time for c in children)
    assert run.info.end_time - run.info.start_time >= max(c.info.end_time for c in children) - run.info.start_time

    again = motex("train", "--structure", "c60-in-carbon", "--data", "c60-simulated", "--n-iter", "2", "--cv", "2", db=c60)
    assert again.exit_code == 0 and "reusing it" in again.stdout
    assert len(query(c60, "SELECT id FROM trained_model")) == 1


def test_explain_finds_the_buckyball(motex, c60, tmp_path):
    assert motex("train", "--structure", "c60-in-carbon", "--data", "c60-simulated", "--n-iter", "2", "--cv", "2", db=c60).exit_code == 0
    out = tmp_path / "explained"
    result = motex("explain", "--structure", "c60-in-carbon", "--data", "c60-simulated", "--out", out, db=c60)
    assert result.exit_code == 0, result.output
    rows = query(c60, "SELECT atom_index, contribution, confidence FROM contribution ORDER BY atom_index")
    assert [r[0] for r in rows] == list(range(1, 131))
    contribution = np.array([r[1] for r in rows])
    cage, distractors = contribution[:C60_ATOM_COUNT], contribution[C60_ATOM_COUNT:]
    assert cage.mean() < 0 < distractors.mean()
    # most of the cage is extracted, few distractors
    assert (cage < 0).sum() >= 50 and (distractors < 0).sum() <= 10
    (overall, convergence), = query(c60, "SELECT overall_confidence, convergence FROM trained_model")
    assert overall > 1
    convergence = json.loads(convergence) if isinstance(convergence, str) else convergence
    assert set(convergence) == {"half", "three_quarters"} and "change sign" in result.stdout
    halves = query(c60, "SELECT contribution_half, contribution_three_quarters FROM atom_contribution")
    assert all(h is not None and t is not None for h, t in halves)
    import motex_db

    frame = motex_db.open_record(c60).contributions("c60-in-carbon", "c60-simulated")
    assert len(frame) == 130 and motex_db.open_record(c60).trained_models()["overall_confidence"].notna().all()
    (extracted_rwp,), = query(c60, "SELECT rwp FROM motif_fit WHERE mask = (SELECT mask FROM motif WHERE sampler LIKE 'extracted%')")
    assert extracted_rwp < 0.2
    (linked,), = query(c60, "SELECT f.rwp FROM trained_model t JOIN motif_fit f ON f.motif_id = t.extracted_motif_id")
    assert linked == extracted_rwp
    (run_id,), = query(c60, "SELECT mlflow_run_id FROM trained_model")
    metrics = open_tracker(c60).client.get_run(run_id).data.metrics
    assert metrics["extracted_rwp"] == pytest.approx(extracted_rwp) and metrics["extracted_size"] == (cage < 0).sum() + (distractors < 0).sum()
    assert {"overall_confidence", "best_rwp"} <= set(metrics)
    for suffix in ("_contributions.csv", "_contributions.extxyz", "_contributions.vesta", "_shap_values.csv",
                   "_extracted_motif.xyz", "_shap_summary.png"):
        assert list(out.glob(f"*{suffix}")), suffix

    before = snapshot(c60)
    again = motex("explain", "--structure", "c60-in-carbon", "--data", "c60-simulated", db=c60)
    assert again.exit_code == 0 and "already stored" in again.stdout
    assert snapshot(c60)["atom_contribution"] == before["atom_contribution"]


def test_train_and_explain_refuse_what_they_cannot_do(motex, c60):
    before = snapshot(c60)
    cases = [
        (["train", "--structure", "c60-in-carbon", "--data", "nope"], "no dataset named 'nope'"),
        (["train", "--structure", "c60-in-carbon", "--data", "c60-simulated", "--fit-config", "99"], "no fit config with id 99"),
        (["train", "--structure", "c60-in-carbon", "--data", "c60-simulated", "--cv", "1"], "--cv"),
        (["explain", "--structure", "c60-in-carbon", "--data", "c60-simulated", "--model", "99"], "no trained model 99"),
    ]
    for args, words in cases:
        result = motex(*args, db=c60)
        assert result.exit_code == 2, (args, result.output)
        assert words in result.stderr
    assert snapshot(c60)["trained_model"] == before["trained_model"]


def test_a_bad_search_option_is_one_line_before_any_progress_bar(motex_process, c60):
    before = snapshot(c60)
    for option in (["--cv", "1"], ["--cv", "-2"], ["--n-iter", "-1"]):
        result = motex_process("train", "--structure", "c60-in-carbon", "--data", "c60-simulated", *option, db=c60)
        assert result.exit_code == 2, (option, result.stdout, result.stderr)
        assert result.stderr.strip().splitlines() == [
            f"error: --n-iter must be >= 0 and --cv 0 (the validation part) or >= 2 "
            f"(got {option[1] if option[0] == '--n-iter' else 50} and {option[1] if option[0] == '--cv' else 0})."
        ], result.stderr
    assert snapshot(c60) == before


def test_refine_one_motif_with_srfit(motex, c60, tmp_path):
    (motif_id, rwp), = query(c60, "SELECT motif_id, rwp FROM motif_fit WHERE status = 'ok' ORDER BY rwp LIMIT 1")
    out = tmp_path / "refined"
    result = motex("refine", "--motif", motif_id, "--data", "c60-simulated", "--free", "scale,zoom,biso", "--out", out, db=c60)
    assert result.exit_code == 0, result.output
    values = json.loads(next(out.glob("*.json")).read_text())
    assert set(values["values"]) == {"scale", "zoom", "biso_C"}
    assert values["rwp"] <= rwp + 1e-3  # freeing Biso can only help
    assert values["uncertainties"]["zoom"] > 0
    assert list(out.glob("*.png")) and list(out.glob("*.html"))
    bad = motex("refine", "--motif", motif_id, "--data", "c60-simulated", "--free", "scale,wobble", "--out", out, db=c60)
    assert bad.exit_code == 2 and "wobble" in bad.stderr


def _trained_copy(run, c60: str, folder) -> str:
    """A copy of the C60 record in ``folder`` with a model trained on it by ``run`` (a CLI fixture); its URL."""
    import shutil

    folder.mkdir()
    shutil.copy(c60.removeprefix("sqlite:///"), folder / "motex.db")
    url = f"sqlite:///{folder / 'motex.db'}"
    trained = run("train", "--structure", "c60-in-carbon", "--data", "c60-simulated", "--n-iter", "1", db=url)
    assert trained.exit_code == 0, trained.stderr
    return url


def test_explain_without_the_models_mlflow_run_stores_its_answer_and_says_so(motex_process, c60, tmp_path):
    """A record copied without its MLflow store: explain still answers, and says in one line why MLflow got nothing."""
    url = _trained_copy(motex_process, c60, tmp_path / "copy")
    (tmp_path / "copy" / "mlflow.db").unlink()  # the store that holds the new model's run
    result = motex_process("explain", "--structure", "c60-in-carbon", "--data", "c60-simulated", db=url)
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "is not in the tracking store" in notes[0] and "stored in the record" in notes[0]
    model_id, = query(url, "SELECT max(id) FROM trained_model")[0]
    assert query(url, f"SELECT count(*) FROM atom_contribution WHERE trained_model_id = {model_id}")[0][0] > 0


def test_explain_refuses_a_model_whose_fits_are_gone_and_changes_nothing(motex, c60, tmp_path):
    import sqlite3

    from sqlmodel import Session

    from motex_db.db import open_engine
    from motex_db.models import TrainedModel

    url = _trained_copy(motex, c60, tmp_path / "copy")
    (model_id,), = query(url, "SELECT max(id) FROM trained_model")
    engine = open_engine(url)
    with Session(engine) as session:
        gone = int(session.get(TrainedModel, model_id).motif_ids[17])
    engine.dispose()
    with sqlite3.connect(tmp_path / "copy" / "motex.db") as connection:
        connection.execute("DELETE FROM fit_result WHERE motif_id = ?", (gone,))
    before = snapshot(url)
    result = motex("explain", "--structure", "c60-in-carbon", "--data", "c60-simulated", db=url)
    assert result.exit_code == 2
    assert f"trained model {model_id}'s motifs or fits are no longer all in the record: train again." in result.stderr
    assert snapshot(url) == before
