"""`motex-db import-fits`: fit quality from elsewhere, trained on and explained like our own fits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import sqlalchemy as sa

from support import snapshot

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
