"""`motex-db import-fits`: fit quality from elsewhere, trained on and explained like our own fits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import sqlalchemy as sa

from support import query, snapshot

# eight W on a line, far apart: every mask is its own motif
LINE = "8\n\n" + "".join(f"W {4 * i} 0 0\n" for i in range(8))


@pytest.fixture
def line_record(motex, db_url, tmp_path):
    path = tmp_path / "line.xyz"
    path.write_text(LINE)
    assert motex("structure", "add", path, "--name", "line", "--permute", "W", db=db_url).exit_code == 0
    return db_url


def synthetic_scores(seed=0):
    """Every non-empty mask of 8 atoms; atoms 1-4 lower the score, 5-8 raise it."""
    rng = np.random.default_rng(seed)
    masks = np.array([m for m in itertools.product([0, 1], repeat=8) if any(m)])
    score = 0.5 - 0.03 * masks[:, :4].sum(1) + 0.02 * masks[:, 4:].sum(1) + rng.normal(0, 0.003, len(masks))
    return masks, score


def test_mlmotex_text_format_then_train_and_explain(motex, line_record, tmp_path):
    masks, score = synthetic_scores()
    path = tmp_path / "xanes_fits.txt"
    lines = ["ID Rwp Atoms " + " ".join(f"W{i}" for i in range(1, 9))]
    lines += [f"{i} {s:.6f} {m.sum()} " + " ".join(map(str, m)) for i, (m, s) in enumerate(zip(masks, score))]
    path.write_text("\n".join(lines) + "\n")
    result = motex("import-fits", path, "--structure", "line", "--source", "xanes", db=line_record)
    assert result.exit_code == 0, result.output
    assert "imported 255 scores" in result.stdout
    assert motex("train", "--structure", "line", "--data", "xanes", "--n-iter", "2", "--cv", "2", db=line_record).exit_code == 0
    explained = motex("explain", "--structure", "line", "--data", "xanes", db=line_record)
    assert explained.exit_code == 0, explained.output
    engine = sa.create_engine(line_record)
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT atom_index, contribution FROM contribution ORDER BY atom_index").fetchall()
    engine.dispose()
    assert {i for i, c in rows if c < 0} == {1, 2, 3, 4}
    again = motex("import-fits", path, "--structure", "line", "--source", "xanes", db=line_record)
    assert "imported 0 scores" in again.stdout


def test_csv_with_a_mask_column_and_higher_is_better(motex, line_record, tmp_path):
    masks, score = synthetic_scores(1)
    path = tmp_path / "scores.csv"
    path.write_text("mask,quality\n" + "\n".join(f"{''.join(map(str, m))},{-s:.6f}" for m, s in zip(masks, score)) + "\n")
    result = motex("import-fits", path, "--structure", "line", "--source", "ext", "--higher-is-better", "--score-column", "quality", db=line_record)
    assert result.exit_code == 0, result.output
    engine = sa.create_engine(line_record)
    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT rwp FROM motif_fit WHERE mask = '10000000'").scalar()
    engine.dispose()
    assert stored == pytest.approx(score[list(map(tuple, masks)).index((1, 0, 0, 0, 0, 0, 0, 0))], abs=1e-6)


@pytest.mark.parametrize(
    "name, text, words",
    [
        ("wide.txt", "1 0.5 2 1 1 0 0 0 0 0 0 0\n", "9 atom columns"),
        ("binary.txt", "1 0.5 2 1 2 0 0 0 0 0 0\n", "must be 0 or 1"),
        ("nan.txt", "1 nan 2 1 1 0 0 0 0 0 0\n", "NaN"),
        ("noscore.csv", "mask,other\n11000000,1\n", "no score column"),
        ("empty.csv", "mask,score\n00000000,0.3\n", "empty motif"),
    ],
)
def test_bad_score_files_are_refused_unchanged(motex, line_record, tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    before = snapshot(line_record)
    result = motex("import-fits", path, "--structure", "line", "--source", "ext", db=line_record)
    assert result.exit_code == 2, result.output
    assert words in result.stderr
    assert snapshot(line_record) == before


def write_mlmotex_training_data(path, masks, score, ids=None):
    """As ML-MotEx's step 2 writes it: np.savetxt of ID, Rwp, n kept, one 0/1 column per atom."""
    ids = np.arange(len(masks)) if ids is None else ids
    np.savetxt(path, np.column_stack([ids, score, masks.sum(1), masks]))


def test_mlmotex_output_with_repeated_and_empty_masks_is_averaged(motex, line_record, tmp_path):
    masks, score = synthetic_scores(2)
    # ML-MotEx's sampler repeats masks and may keep no atom: 40 repeats of 20 masks, one empty row
    rng = np.random.default_rng(3)
    again = rng.choice(20, 40)
    all_masks = np.vstack([masks, masks[again], np.zeros((1, 8), int)])
    all_scores = np.concatenate([score, score[again] + rng.normal(0, 0.01, 40), [0.9]])
    path = tmp_path / "structure_line.txt"
    write_mlmotex_training_data(path, all_masks, all_scores)
    result = motex("import-fits", path, "--structure", "line", "--source", "mlmotex", db=line_record)
    assert result.exit_code == 0, result.output
    repeated = len(set(again))
    assert "imported 255 scores" in result.stdout
    assert f"repeated masks averaged: {40 + repeated} rows into {repeated} scores (40 merged)" in result.stdout
    assert "rows keeping no atom, skipped: 1" in result.stdout
    engine = sa.create_engine(line_record)
    with engine.connect() as connection:
        stored = dict(connection.exec_driver_sql(
            "SELECT m.mask, f.rwp FROM fit_result f JOIN motif m ON m.id = f.motif_id").fetchall())
        counts = dict(connection.exec_driver_sql(
            "SELECT m.mask, f.n_averaged FROM fit_result f JOIN motif m ON m.id = f.motif_id").fetchall())
    engine.dispose()
    for k in range(20):
        text = "".join(map(str, masks[k]))
        rows = np.flatnonzero((all_masks == masks[k]).all(axis=1))
        assert counts[text] == len(rows)
        assert stored[text] == pytest.approx(all_scores[rows].mean(), abs=1e-12)
    assert sum(counts.values()) == len(all_masks) - 1


def test_explain_writes_mlmotex_files_that_import_back_to_identical_contributions(motex, line_record, tmp_path):
    masks, score = synthetic_scores(4)
    path = tmp_path / "first.txt"
    write_mlmotex_training_data(path, masks, score)
    assert motex("import-fits", path, "--structure", "line", "--source", "first", db=line_record).exit_code == 0
    assert motex("train", "--structure", "line", "--data", "first", "--n-iter", "2", "--cv", "2", db=line_record).exit_code == 0
    out = tmp_path / "explained"
    result = motex("explain", "--structure", "line", "--data", "first", "--out", out, db=line_record)
    assert result.exit_code == 0, result.output
    exported = out / "structure_line.txt"
    assert f"mlmotex_training_data: {exported}" in result.stdout

    def contributions(dataset):
        return np.array(query(line_record, (
            "SELECT c.contribution FROM atom_contribution c JOIN trained_model t ON t.id = c.trained_model_id "
            f"JOIN dataset d ON d.id = t.dataset_id WHERE d.name = '{dataset}' ORDER BY c.atom_index")))[:, 0]

    first = contributions("first")
    # ML-MotEx's step 4 file: one value per permutable atom, 0.5 * (mean keep - mean remove)
    values = np.loadtxt(out / "AtomContributionValues.txt")
    assert values.shape == (8,) and np.array_equal(values, 0.5 * first)
    # ML-MotEx's step 3 reads the training data with np.loadtxt: ID, Rwp, n kept, atoms
    table = np.loadtxt(exported, delimiter=" ")
    assert table.shape == (255, 11) and np.array_equal(table[:, 2], table[:, 3:].sum(1))
    # the export imported as a new source, trained and explained alike, gives the same contributions
    assert motex("import-fits", exported, "--structure", "line", "--source", "again", db=line_record).exit_code == 0
    assert motex("train", "--structure", "line", "--data", "again", "--n-iter", "2", "--cv", "2", db=line_record).exit_code == 0
    assert motex("explain", "--structure", "line", "--data", "again", db=line_record).exit_code == 0
    assert np.array_equal(contributions("again"), first)
    assert (first < 0).sum() > 0 and (first > 0).sum() > 0
