"""Time-resolved series: fit --series (PDFs shared across frames), train/explain --series, on a generated series."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from motex_db.catalogue import masks_from_text, membership_matrix, sample_uniform_masks
from motex_db.examples import WO3_BOND_CUTOFF, two_motif_series, write_two_motif_series
from motex_db.fitting import FitSettings, MotifFitter
from support import query, snapshot


def random_masks(n_permutable: int, n: int, seed: int = 0) -> np.ndarray:
    """Distinct motifs drawn as `sample` draws them."""
    texts, _ = sample_uniform_masks(n_permutable, n, np.random.default_rng(seed))
    return masks_from_text(texts, n_permutable)


@pytest.mark.parametrize("recipe, tolerance", [("fast", 1e-6), ("mlmotex", 1e-4)])
def test_fitting_frames_together_gives_the_per_frame_fits(recipe, tolerance):
    series = two_motif_series(n_frames=6, seed=2)
    permutable = np.array([e == "W" for e in series.elements])
    membership = membership_matrix(series.positions, permutable, WO3_BOND_CUTOFF)
    settings = FitSettings.for_recipe(recipe).resolved(series.header)
    masks = random_masks(int(permutable.sum()), 150 if recipe == "fast" else 40)
    together = MotifFitter(series.elements, series.positions, membership, series.r, series.g, settings).fit_frames(masks)
    assert len(together) == 6
    for frame in (0, 3, 5):
        alone = MotifFitter(series.elements, series.positions, membership, series.r, series.g[frame], settings).fit(masks)
        assert together[frame].ok.all() and alone.ok.all()
        # the isotropic search is global, so sharing the frames' zoom window cannot change its answer;
        # the three-zoom search is local from two starts and may settle a hair apart
        assert np.max(np.abs(together[frame].rwp - alone.rwp)) < tolerance
        if recipe == "fast":
            zooms = np.array([p["zoom"] for p in together[frame].params]), np.array([p["zoom"] for p in alone.params])
            assert np.max(np.abs(zooms[0] - zooms[1])) < 1e-5


def test_a_fitter_of_many_frames_refuses_a_single_fit():
    series = two_motif_series(n_frames=2)
    permutable = np.array([e == "W" for e in series.elements])
    membership = membership_matrix(series.positions, permutable, WO3_BOND_CUTOFF)
    fitter = MotifFitter(series.elements, series.positions, membership, series.r, series.g,
                         FitSettings().resolved(series.header))
    with pytest.raises(Exception, match="fit_frames"):
        fitter.fit(random_masks(27, 3))


@pytest.fixture(scope="module")
def series_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    return write_two_motif_series(folder, two_motif_series(n_frames=5, seed=1))


def test_fit_series_fits_every_frame_once_and_resumes(motex, db_url, series_files):
    model, frames, times = series_files
    assert motex("structure", "add", model, "--name", "wo3", "--permute", "W", "--bond-cutoff", 2.6, db=db_url).exit_code == 0
    assert motex("data", "add", *frames[:4], "--series", "grow", "--times", times, db=db_url).exit_code == 0
    assert motex("sample", "--structure", "wo3", "--n", 200, "--seed", 4, db=db_url).exit_code == 0
    result = motex("fit", "--structure", "wo3", "--series", "grow", db=db_url)
    assert result.exit_code == 0, result.output
    assert "fitted 800 motif-frame pairs" in result.stdout and "4 frames" in result.stdout
    rows = query(db_url, "SELECT dataset_id, count(*), count(DISTINCT motif_id) FROM fit_result GROUP BY dataset_id")
    assert sorted(r[1:] for r in rows) == [(200, 200)] * 4
    assert query(db_url, "SELECT count(*) FROM fit_claim") == [(0,)]

    again = motex("fit", "--structure", "wo3", "--series", "grow", db=db_url)
    assert again.exit_code == 0 and "nothing to fit" in again.stdout

    # a frame that arrives later: only its fits are added, the others are kept as they were
    before = query(db_url, "SELECT id, motif_id, dataset_id, rwp FROM fit_result ORDER BY id")
    assert motex("data", "add", frames[4], "--series", "grow", "--time", 120, db=db_url).exit_code == 0
    more = motex("fit", "--structure", "wo3", "--series", "grow", db=db_url)
    assert more.exit_code == 0, more.output
    after = query(db_url, "SELECT id, motif_id, dataset_id, rwp FROM fit_result ORDER BY id")
    assert after[: len(before)] == before and len(after) == len(before) + 200

    # the same numbers as fitting one frame alone
    single = query(db_url, "SELECT f.motif_id, f.rwp FROM fit_result f JOIN dataset d ON d.id = f.dataset_id "
                           "WHERE d.name = 'frame_0002' ORDER BY f.motif_id")
    engine = sa.create_engine(db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "DELETE FROM fit_result WHERE dataset_id = (SELECT id FROM dataset WHERE name = 'frame_0002')")
    engine.dispose()
    assert motex("fit", "--structure", "wo3", "--data", "frame_0002", db=db_url).exit_code == 0
    refit = query(db_url, "SELECT f.motif_id, f.rwp FROM fit_result f JOIN dataset d ON d.id = f.dataset_id "
                          "WHERE d.name = 'frame_0002' ORDER BY f.motif_id")
    assert [m for m, _ in refit] == [m for m, _ in single]
    assert np.max(np.abs(np.array([r for _, r in refit]) - np.array([r for _, r in single]))) < 1e-6


@pytest.mark.parametrize(
    "args, words",
    [
        (("fit", "--structure", "wo3", "--series", "nope"), "no series named 'nope'"),
        (("fit", "--structure", "wo3", "--series", "grow", "--data", "frame_0000"), "not both"),
        (("fit", "--structure", "wo3"), "not both or neither"),
        (("train", "--structure", "wo3", "--series", "grow"), "no successful fits"),
        (("train", "--structure", "wo3", "--series", "grow", "--reference", "frame_9"), "not a frame of series"),
        (("train", "--structure", "wo3", "--data", "frame_0000", "--reference", "frame_0000"), "with --series"),
        (("explain", "--structure", "wo3", "--series", "grow"), "run motex-db train"),
    ],
)
def test_bad_series_requests_are_one_sentence_and_change_nothing(motex, tmp_path, series_files, args, words):
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    model, frames, times = series_files
    motex("structure", "add", model, "--name", "wo3", "--permute", "W", "--bond-cutoff", 2.6, db=url)
    motex("data", "add", *frames, "--series", "grow", "--times", times, db=url)
    motex("sample", "--structure", "wo3", "--n", 50, db=url)
    before = snapshot(url)
    result = motex(*args, db=url)
    assert result.exit_code == 2, result.output
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(url) == before


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """The generated two-motif series (10 frames), 2000 motifs fitted, trained and explained through the CLI."""
    import subprocess

    from support import motex_executable

    folder = tmp_path_factory.mktemp("explained")
    series = two_motif_series(n_frames=10, seed=0)
    model, frames, times = write_two_motif_series(folder, series)
    url = f"sqlite:///{folder / 'motex.db'}"

    def run(*args):
        done = subprocess.run([motex_executable(), "--db", url, *map(str, args)], capture_output=True, text=True,
                              cwd=folder, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("structure", "add", model, "--name", "wo3", "--permute", "W", "--bond-cutoff", 2.6)
    run("data", "add", *frames, "--series", "grow", "--times", times)
    run("sample", "--structure", "wo3", "--n", 2000, "--seed", 1)
    run("fit", "--structure", "wo3", "--series", "grow")
    trained = run("train", "--structure", "wo3", "--series", "grow", "--n-iter", 4)
    out = run("explain", "--structure", "wo3", "--series", "grow", "--out", folder / "explain")
    return {"url": url, "series": series, "folder": folder, "train": trained, "explain": out, "run": run}


def test_the_growing_motif_becomes_more_negative_as_its_fraction_grows(explained):
    series = explained["series"]
    rows = query(explained["url"],
                 "SELECT time, atom_index, contribution FROM contribution WHERE series = 'grow' "
                 "ORDER BY time, atom_index")
    times = sorted({t for t, _, _ in rows})
    assert len(times) == 10
    matrix = np.array([[c for t, _, c in rows if t == time] for time in times])  # frames x 27 W
    a = matrix[:, series.motif_a].mean(axis=1)
    b = matrix[:, series.motif_b].mean(axis=1)
    # motif A grows from ~5 % to ~95 %: its atoms' mean contribution falls (more negative: they lower Rwp)
    assert a[-3:].mean() < a[:3].mean() - 0.005
    assert np.corrcoef(series.fraction_a, a)[0, 1] < -0.8
    # and once A dominates, its atoms are more negative than those of the shrinking motif B
    assert a[-3:].mean() < b[-3:].mean() - 0.005


def test_series_models_share_one_search_and_are_tracked_as_parent_and_children(explained):
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from motex_db.tracking import open_tracker

    url = explained["url"]
    models = query(url, "SELECT t.id, t.dataset_id, t.series, t.hyperparameters, t.mlflow_run_id, t.training_log "
                        "FROM trained_model t ORDER BY t.dataset_id")
    assert len(models) == 10 and {m[2] for m in models} == {"grow"}
    import json

    searched = [{k: v for k, v in json.loads(m[3]).items() if k != "n_estimators"} for m in models]
    assert all(s == searched[0] for s in searched)
    logs = [json.loads(m[5]) for m in models]
    assert sum("trials" in log for log in logs) == 1 and "trials" in logs[-1]  # searched on the last frame
    parent = {log["search"]["parent_run_id"] for log in logs}
    assert len(parent) == 1
    client = open_tracker(url).client
    children = [client.get_run(m[4]) for m in models]
    assert {c.data.tags[MLFLOW_PARENT_RUN_ID] for c in children} == parent
    assert all("test_mae" in c.data.metrics and "overall_confidence" in c.data.metrics for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.pop(), "explain")}
    assert {"explain/wo3_grow_contributions.csv", "explain/wo3_grow_contribution_matrix.csv"} <= artifacts


def test_series_commands_are_incremental(explained):
    run, url = explained["run"], explained["url"]
    before = query(url, "SELECT count(*) FROM trained_model"), query(url, "SELECT count(*) FROM atom_contribution")
    again = run("train", "--structure", "wo3", "--series", "grow", "--n-iter", 4)
    assert "reusing them" in again
    run("explain", "--structure", "wo3", "--series", "grow")
    assert (query(url, "SELECT count(*) FROM trained_model"), query(url, "SELECT count(*) FROM atom_contribution")) == before
    # each frame's extracted motif was fitted to every frame
    extracted = query(url, "SELECT count(DISTINCT m.id) FROM motif m WHERE m.sampler LIKE 'extracted%'")[0][0]
    fits = query(url, "SELECT count(*) FROM fit_result f JOIN motif m ON m.id = f.motif_id WHERE m.sampler LIKE 'extracted%'")
    assert extracted >= 1 and fits == [(extracted * 10,)]
    matrix = (explained["folder"] / "explain" / "wo3_grow_contribution_matrix.csv").read_text().splitlines()
    assert len(matrix) == 11 and matrix[0].startswith("frame,time,W1,")


def test_frames_added_later_cost_only_their_own_fits_and_keep_the_search(tmp_path):
    """One frame more: fit --series fits only it; train --series keeps the reference frame and retrains only it."""
    import json

    from motex_db.datasets import add_datasets
    from motex_db.db import open_engine
    from motex_db.catalogue import sample_motifs
    from motex_db.fitting.work import fit_catalogue
    from motex_db.learning import train_series
    from motex_db.structures import add_starting_model

    series = two_motif_series(n_frames=5, seed=3)
    model, frames, times = write_two_motif_series(tmp_path / "files", series)
    engine = open_engine(f"sqlite:///{tmp_path / 'late.db'}")
    add_starting_model(engine, model, "wo3", ["W"], WO3_BOND_CUTOFF)
    add_datasets(engine, frames[:4], series="grow", times_file=times)
    sample_motifs(engine, "wo3", 300, seed=2)
    first = fit_catalogue(engine, "wo3", None, FitSettings(), series="grow")
    assert first.fitted == 1200 and first.already_done == 0
    trained = train_series(engine, "wo3", "grow", n_iter=0, cv=2)
    assert trained.reference == "frame_0003" and trained.n_created == 4

    add_datasets(engine, [frames[4]], series="grow", times_file=times)
    second = fit_catalogue(engine, "wo3", None, FitSettings(), series="grow")
    assert second.fitted == 300 and second.already_done == 1200
    again = train_series(engine, "wo3", "grow", n_iter=0, cv=2)
    # the search stays on the frame it was made on, so only the new frame's model is trained
    assert again.reference == "frame_0003" and again.n_created == 1
    assert again.frames["created"].tolist() == [False, False, False, False, True]
    log = json.loads(query(f"sqlite:///{tmp_path / 'late.db'}",
                           "SELECT training_log FROM trained_model ORDER BY id DESC LIMIT 1")[0][0])
    assert log["search"]["reference_frame"] == "frame_0003"
    engine.dispose()
