"""`motex-db series decompose`: PCA for the number of components, NMF for the components, frame correlations.

The realistic case is the project's own two-motif series (motif A of a WO3
particle grows at the expense of motif B, with noise); the numerics are also
checked on mixtures of two Gaussian-peak curves, where everything is known.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sqlmodel import Session, select

from support import snapshot

SERIES = "growth"
N_FRAMES = 16


@pytest.fixture(scope="module")
def two_motif(tmp_path_factory):
    """The generated two-motif series written as files: (truth, model.xyz, frame files, times.csv)."""
    from motex_db.examples import two_motif_series, write_two_motif_series

    truth = two_motif_series(n_frames=N_FRAMES, seed=1)
    model, frames, times = write_two_motif_series(tmp_path_factory.mktemp("two-motif"), truth)
    return truth, model, frames, times


def add_series(motex, url, two_motif) -> None:
    _, _, frames, times = two_motif
    result = motex("data", "add", *frames, "--series", SERIES, "--times", times, db=url)
    assert result.exit_code == 0, result.output


def best_match(weights: np.ndarray, truth: np.ndarray) -> list[float]:
    """Correlation of each true fraction with its component's weights, components matched by the best permutation."""
    k = truth.shape[1]
    best = max(itertools.permutations(range(weights.shape[1]), k),
               key=lambda p: sum(np.corrcoef(weights[:, p[j]], truth[:, j])[0, 1] for j in range(k)))
    return [float(np.corrcoef(weights[:, best[j]], truth[:, j])[0, 1]) for j in range(k)]


# ---------------------------------------------------------------- the command on the two-motif series


def test_two_motif_series_gives_two_components_that_track_the_fractions(db_url, motex, two_motif):
    from motex_db.db import open_engine
    from motex_db.models import ComponentWeight, Dataset, SeriesComponent, SeriesDecomposition

    truth = two_motif[0]
    add_series(motex, db_url, two_motif)
    result = motex("series", "decompose", SERIES, db=db_url)
    assert result.exit_code == 0, result.output
    assert "components: 2 (auto" in result.stdout
    assert "1: growth_nmf2_c1, 2: growth_nmf2_c2" in result.stdout and "frame_0015" in result.stdout

    engine = open_engine(db_url)
    with Session(engine) as session:
        (row,) = session.exec(select(SeriesDecomposition)).all()
        frames = session.exec(select(Dataset).where(Dataset.series == SERIES).order_by(Dataset.time)).all()
        assert row.n_components == 2 and row.components_requested == "auto" and row.n_frames == N_FRAMES
        assert list(row.frame_ids) == [f.id for f in frames]
        assert (row.r_min, row.r_max) == (pytest.approx(truth.r[0]), pytest.approx(truth.r[-1]))
        ratio = np.asarray(row.explained_variance)
        assert len(ratio) == N_FRAMES and ratio.sum() == pytest.approx(1.0)
        assert ratio[0] < 0.99 <= ratio[:2].sum()
        assert row.shift == pytest.approx(-truth.g.min(), rel=1e-6)

        correlation = np.asarray(row.correlation)
        assert correlation.shape == (N_FRAMES, N_FRAMES)
        np.testing.assert_allclose(correlation, correlation.T, atol=1e-12)
        np.testing.assert_allclose(np.diag(correlation), 1.0, atol=1e-12)
        x = np.array([frame.g for frame in frames])  # the frames as stored (all on one grid)
        np.testing.assert_allclose(correlation, np.corrcoef(x), atol=1e-12)

        components = session.exec(
            select(SeriesComponent).where(SeriesComponent.decomposition_id == row.id).order_by(SeriesComponent.component)
        ).all()
        assert [c.component for c in components] == [1, 2]
        curves, weights = [], np.zeros((N_FRAMES, 2))
        position = {f.id: i for i, f in enumerate(frames)}
        for j, component in enumerate(components):
            dataset = session.get(Dataset, component.dataset_id)
            assert dataset.name == f"{SERIES}_nmf2_c{j + 1}" and dataset.series is None and dataset.time is None
            assert dataset.meta["derived_from"] == {**dataset.meta["derived_from"], "series": SERIES,
                                                   "decomposition_id": row.id, "component": j + 1}
            assert dataset.meta["qmin"] == truth.header["qmin"] and dataset.meta["qmax"] == truth.header["qmax"]
            np.testing.assert_array_equal(dataset.r, frames[0].r)
            curves.append(dataset.g)
            for weight in session.exec(select(ComponentWeight).where(ComponentWeight.series_component_id == component.id)):
                weights[position[weight.frame_dataset_id], j] = weight.weight
        assert len(session.exec(select(ComponentWeight)).all()) == 2 * N_FRAMES
    engine.dispose()

    # the stored components and weights restate the NMF model exactly (module docstring):
    # X + shift ≈ Σ_k w_k (C_k + shift), with the stored relative error
    model = weights @ (np.array(curves) + row.shift)
    error = np.linalg.norm(x + row.shift - model) / np.linalg.norm(x + row.shift)
    assert error == pytest.approx(row.nmf_relative_error, rel=1e-6)
    assert error < 0.05
    assert np.abs(weights.sum(axis=1) - 1).max() < 0.02  # the weights are fractions
    # each component's weight follows one motif's true fraction; component 1 is B, which dominates first
    fractions = np.column_stack([truth.fraction_a, 1 - truth.fraction_a])
    assert min(best_match(weights, fractions)) > 0.95
    assert np.corrcoef(weights[:, 0], 1 - truth.fraction_a)[0, 1] > 0.95

    # the identical decomposition again: the stored one, nothing written
    before = snapshot(db_url)
    again = motex("series", "decompose", SERIES, "--components", "auto", db=db_url)
    assert again.exit_code == 0, again.output
    assert "already decomposed this way: decomposition" in again.stdout and "growth_nmf2_c1" in again.stdout
    assert snapshot(db_url) == before

    # another request is another decomposition, with its own component datasets
    three = motex("series", "decompose", SERIES, "--components", "3", "--rmin", "1.5", "--rmax", "10", db=db_url)
    assert three.exit_code == 0, three.output
    assert "components: 3 (asked for; PCA's 99% rule would give 2)" in three.stdout
    listed = motex("series", "list", db=db_url)
    assert listed.exit_code == 0 and SERIES in listed.stdout and "3 (3)" in listed.stdout

    # weights against frame time, with plain SQL (the README's example)
    query = ("SELECT d.name AS frame, d.time, c.component, w.weight FROM component_weight w "
             "JOIN series_component c ON c.id = w.series_component_id JOIN dataset d ON d.id = w.frame_dataset_id "
             "WHERE c.decomposition_id = 1 ORDER BY d.time, c.component")
    table = motex("sql", query, "--csv", db=db_url)
    assert table.exit_code == 0, table.output
    lines = table.stdout.strip().splitlines()
    assert lines[0] == "frame,time,component,weight" and len(lines) == 1 + 2 * N_FRAMES
    assert lines[1].startswith("frame_0000,0.0,1,") or lines[1].startswith("frame_0000,0,1,")


def test_bad_input_exits_2_with_one_sentence_and_changes_nothing(db_url, motex, two_motif, tmp_path):
    from motex_db.datasets import write_gr

    truth = two_motif[0]
    add_series(motex, db_url, two_motif)
    single = write_gr(tmp_path / "lonely.gr", truth.r, truth.g[0] * 1.5, truth.header, "one frame")
    assert motex("data", "add", single, "--series", "lonely", db=db_url).exit_code == 0
    cases = [
        (["nope"], "no series named 'nope' (known: growth, lonely)."),
        ([SERIES, "--components", "0"], "between 1 and the number of frames (16), not 0"),
        ([SERIES, "--components", "17"], "between 1 and the number of frames (16), not 17"),
        ([SERIES, "--components", "many"], "a whole number or auto, not 'many'"),
        ([SERIES, "--rmin", "5", "--rmax", "4"], "rmin (5 Å) must be smaller than rmax (4 Å)"),
        ([SERIES, "--rmin", "5", "--rmax", "5"], "rmin (5 Å) must be smaller than rmax (5 Å)"),
        ([SERIES, "--rmin", "0.2"], "outside the range every frame of series 'growth' covers (1-12 Å)"),
        ([SERIES, "--rmin", "3", "--rmax", "3.05"], "at least 10 are needed"),
        (["lonely"], "series 'lonely' has 1 frame; a decomposition needs at least 2 frames."),
    ]
    before = snapshot(db_url)
    for args, words in cases:
        result = motex("series", "decompose", *args, db=db_url)
        assert result.exit_code == 2, (args, result.output)
        assert words in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert snapshot(db_url) == before


def test_fit_runs_on_a_component_like_on_any_dataset(tmp_path, motex, two_motif):
    from motex_db.db import open_engine
    from motex_db.models import Dataset, FitConfig, FitResult, Motif

    url = f"sqlite:///{tmp_path / 'motex.db'}"
    add_series(motex, url, two_motif)
    model = two_motif[1]
    assert motex("structure", "add", model, "--name", "wo3", "--permute", "W", db=url).exit_code == 0
    assert motex("sample", "--structure", "wo3", "--n", "30", "--seed", "0", db=url).exit_code == 0
    assert motex("series", "decompose", SERIES, db=url).exit_code == 0
    result = motex("fit", "--structure", "wo3", "--data", f"{SERIES}_nmf2_c2", db=url)
    assert result.exit_code == 0, result.output
    assert "fitted 30 motifs of 'wo3' to 'growth_nmf2_c2'" in result.stdout
    engine = open_engine(url)
    with Session(engine) as session:
        component = session.exec(select(Dataset).where(Dataset.name == f"{SERIES}_nmf2_c2")).one()
        fits = session.exec(select(FitResult).where(FitResult.dataset_id == component.id)).all()
        fit_config = session.get(FitConfig, fits[0].fit_config_id)
    assert len(fits) == 30 and all(f.status == "ok" for f in fits)
    # the Q window came from the component's header, copied from the first frame
    assert (fit_config.qmin, fit_config.qmax) == (two_motif[0].header["qmin"], two_motif[0].header["qmax"])
    # the late component is motif A's PDF: A fits it far better than B (both added by hand to the catalogue)
    masks = tmp_path / "masks.txt"
    truth = two_motif[0]
    masks.write_text("".join("".join("1" if k else "0" for k in m) + "\n" for m in (truth.motif_a, truth.motif_b)))
    assert motex("sample", "--structure", "wo3", "--from-file", masks, db=url).exit_code == 0
    assert motex("fit", "--structure", "wo3", "--data", f"{SERIES}_nmf2_c2", db=url).exit_code == 0
    with Session(engine) as session:
        rwp = {mask: rwp for mask, rwp in session.exec(
            select(Motif.mask, FitResult.rwp).join(FitResult, FitResult.motif_id == Motif.id)
            .where(FitResult.dataset_id == component.id)).all()}
    rwp_a, rwp_b = (rwp["".join("1" if k else "0" for k in m)] for m in (truth.motif_a, truth.motif_b))
    assert rwp_a < 0.5 * rwp_b and rwp_a <= min(rwp.values()) + 1e-9, (rwp_a, rwp_b)
    engine.dispose()


# ---------------------------------------------------------------- the numerics, on known mixtures


def gaussian_mixture(n_frames: int = 25, noise: float = 0.01, seed: int = 0):
    """Frames (1 - f) A + f B of two Gaussian-peak curves with a negative part, f rising from 0.05 to 0.95."""
    r = np.arange(1.0, 10.0, 0.01)

    def curve(centres):
        return sum(np.exp(-((r - c) ** 2) / (2 * 0.08**2)) for c in centres) - 0.3 * np.sin(2 * r) / r

    a, b = curve([2.0, 3.5, 5.1]), curve([2.6, 4.2, 6.3, 7.0])
    f = np.linspace(0.05, 0.95, n_frames)
    x = (1 - f)[:, None] * a + f[:, None] * b
    x = x + np.random.default_rng(seed).normal(0, noise, x.shape)
    return r, x, f, a, b


def test_pca_counts_the_phases_of_a_mixture():
    from motex_db.series import components_for, explained_variance_ratio

    r, x, f, a, b = gaussian_mixture()
    ratio = explained_variance_ratio(x)
    assert ratio.sum() == pytest.approx(1.0) and np.all(np.diff(ratio) <= 1e-15)
    assert components_for(ratio) == 2
    # why the frames are not mean-centred: about its mean the mixture is one direction (K - 1 = 1),
    # and what noise there is then weighs as much as that direction: 99 % needs many components
    def centred(x):
        return components_for(explained_variance_ratio(x - x.mean(axis=0)))

    assert centred(gaussian_mixture(noise=0)[1]) == 1
    assert centred(gaussian_mixture(noise=0.02)[1]) > 10
    assert components_for(explained_variance_ratio(gaussian_mixture(noise=0.02)[1])) == 2
    # noise-free: exactly two components, whatever the threshold below 1
    assert components_for(explained_variance_ratio(gaussian_mixture(noise=0)[1]), 0.999999) == 2
    # one phase: one component
    assert components_for(explained_variance_ratio(np.outer(np.linspace(1, 2, 10), a))) == 1
    assert components_for(np.array([0.5, 0.49, 0.01])) == 2
    assert components_for(np.array([0.98, 0.005, 0.015])) == 3
    assert components_for(np.zeros(4)) == 1


def test_nmf_components_are_the_phases_and_the_stored_form_is_exact():
    from motex_db.series import nmf_components

    r, x, f, a, b = gaussian_mixture()
    weights, curves, shift, error, iterations = nmf_components(x, 2)
    assert shift == pytest.approx(-x.min()) and shift > 0
    assert weights.shape == (len(f), 2) and curves.shape == (2, len(r)) and (weights >= 0).all()
    # X ≈ (W H) - shift = Σ_k w_k C_k + shift (Σ_k w_k - 1), exactly, with the reported error
    model = weights @ curves + shift * (weights.sum(axis=1, keepdims=True) - 1)
    assert np.linalg.norm(x - model) / np.linalg.norm(x + shift) == pytest.approx(error, rel=1e-9)
    assert error < 0.03 and iterations > 0
    # component 1 dominates first: it is A; its weight follows A's fraction, its curve A's shape
    assert np.corrcoef(weights[:, 0], 1 - f)[0, 1] > 0.99 and np.corrcoef(weights[:, 1], f)[0, 1] > 0.99
    assert np.corrcoef(curves[0], a)[0, 1] > 0.95 and np.corrcoef(curves[1], b)[0, 1] > 0.95
    assert np.abs(weights.sum(axis=1) - 1).max() < 0.01
    # non-negative data need no shift
    _, _, zero_shift, _, _ = nmf_components(x + shift, 2)
    assert zero_shift == 0.0
    # deterministic
    again = nmf_components(x, 2)
    np.testing.assert_array_equal(again[0], weights)


def test_frames_on_other_grids_are_interpolated_onto_the_first():
    from motex_db.errors import InputError
    from motex_db.models import Dataset
    from motex_db.series import frame_matrix

    r, x, f, a, b = gaussian_mixture(n_frames=3)
    coarse = np.arange(0.5, 9.5, 0.02)
    frames = [
        Dataset(name="f0", r=r, g=x[0]),
        Dataset(name="f1", r=r.copy(), g=x[1]),
        Dataset(name="f2", r=coarse, g=np.interp(coarse, r, x[2])),
    ]
    matrix = frame_matrix(frames, series="s")
    assert matrix.interpolated == ["f2"]
    assert matrix.r[0] == pytest.approx(1.0) and matrix.r[-1] <= 9.5 and matrix.r[-1] > 9.48
    np.testing.assert_array_equal(matrix.g[1], x[1][: len(matrix.r)])
    np.testing.assert_allclose(matrix.g[2], np.interp(matrix.r, coarse, frames[2].g))
    part = frame_matrix(frames, 2.0, 3.0, series="s")
    assert (part.r[0], part.r[-1], len(part.r)) == (pytest.approx(2.0), pytest.approx(3.0), 101)
    with pytest.raises(InputError, match=r"outside the range every frame of series 's' covers \(1-9.48 Å\)"):
        frame_matrix(frames, 0.5, 3.0, series="s")
    with pytest.raises(InputError, match="share no r range"):
        frame_matrix([frames[0], Dataset(name="far", r=np.arange(20.0, 30.0, 0.1), g=np.zeros(100))], series="s")


def test_report_draws_a_decomposed_series_without_fits(tmp_path, motex, two_motif):
    import re

    url = f"sqlite:///{tmp_path / 'motex.db'}"
    add_series(motex, url, two_motif)
    assert motex("series", "decompose", SERIES, db=url).exit_code == 0
    out = tmp_path / "report.html"
    result = motex("report", "--out", out, db=url)
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    ids = re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', text)
    assert ids == ["series-0-pca", "series-0-weights", "series-0-correlation"]
    assert "2 NMF components (growth_nmf2_c1, growth_nmf2_c2)" in text


def test_two_decompositions_racing_for_one_component_name_both_succeed(db_url, motex, two_motif, tmp_path):
    """Two real processes started together: different decompositions want growth_nmf2_c1; identical ones share one row."""
    from test_library import started_together

    add_series(motex, db_url, two_motif)
    first, second = started_together(["series", "decompose", SERIES, "--components", "2", "--rmin", "1.5"],
                                     ["series", "decompose", SERIES, "--components", "2", "--rmin", "2"],
                                     db=db_url, cwd=tmp_path)
    for result in (first, second):
        assert result.exit_code == 0 and "Traceback" not in result.stderr, result.output
        assert f"decomposed series '{SERIES}'" in result.stdout
    engine_url = db_url
    from support import query

    names = sorted(row[0] for row in query(engine_url, "SELECT name FROM dataset WHERE series IS NULL"))
    assert len(names) == 4 and {"growth_nmf2_c1", "growth_nmf2_c2"} <= set(names), names

    same = started_together(*[["series", "decompose", SERIES, "--components", "2", "--rmin", "3"]] * 2, db=db_url,
                            cwd=tmp_path)
    for result in same:
        assert result.exit_code == 0 and "Traceback" not in result.stderr, result.output
    assert sum("was already decomposed this way" in r.stdout for r in same) == 1, [r.stdout for r in same]
    assert query(engine_url, "SELECT count(*) FROM series_decomposition") == [(3,)]


def test_a_decomposition_storing_while_another_holds_its_component_name_takes_the_next_name(db_url, motex, two_motif,
                                                                                           tmp_path):
    """Deterministic form of the race: a transaction of another decomposition holds growth_nmf2_c1, not yet committed.

    The real process must wait for it (without the lock, PostgreSQL would block its insert on the unique name and
    then fail it with an IntegrityError), then name its first component growth_nmf2_d<id>_c1.
    """
    import subprocess
    import time

    from support import motex_executable, query

    from motex_db.db import lock_in_transaction, open_engine, transaction
    from motex_db.models import Dataset

    add_series(motex, db_url, two_motif)
    engine = open_engine(db_url)
    with transaction(engine) as session:
        lock_in_transaction(session, "series decomposition")
        r = np.linspace(1.0, 12.0, 50)
        session.add(Dataset(name=f"{SERIES}_nmf2_c1", source_file="another decomposition", content_hash="0" * 64,
                            n_points=r.size, r_min=1.0, r_max=12.0, r=r, g=np.sin(r), dg=None, meta={}))
        session.flush()
        process = subprocess.Popen([motex_executable(), "--db", db_url, "series", "decompose", SERIES, "--components", "2"],
                                   cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                   text=True)
        time.sleep(8)  # process start and the NMF, then it waits for this transaction
        assert process.poll() is None, process.communicate()
    out, err = process.communicate(timeout=300)
    engine.dispose()
    assert process.returncode == 0 and "Traceback" not in err, out + err
    names = {row[0] for row in query(db_url, "SELECT name FROM dataset WHERE series IS NULL")}
    assert f"{SERIES}_nmf2_c2" in names and any(n.startswith(f"{SERIES}_nmf2_d") and n.endswith("_c1") for n in names), names
