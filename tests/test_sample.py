"""`motex-db sample`: incremental, distinct, reproducible catalogues, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from support import snapshot

# four W in a row, each with its own O; the last O is shared by W3 and W4
CHAIN = "9\n\nW 0 0 0\nW 4 0 0\nW 8 0 0\nW 12 0 0\nO 0 1.9 0\nO 4 1.9 0\nO 8 1.9 0\nO 10 1.0 0\nO 30 0 0\n"


@pytest.fixture
def chain(motex, db_url, tmp_path):
    path = tmp_path / "chain.xyz"
    path.write_text(CHAIN)
    assert motex("structure", "add", path, "--name", "chain", "--permute", "W", db=db_url).exit_code == 0
    return db_url


def masks(url):
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT mask, n_kept, n_atoms FROM motif ORDER BY id").fetchall()
    engine.dispose()
    return rows


def test_sample_adds_distinct_motifs_with_their_atom_counts(motex, chain):
    result = motex("sample", "--structure", "chain", "--n", "5", "--seed", "3", db=chain)
    assert result.exit_code == 0, result.output
    assert "added 5 new motifs" in result.stdout
    rows = masks(chain)
    assert len({mask for mask, _, _ in rows}) == 5
    for mask, n_kept, n_atoms in rows:
        kept = [i for i, c in enumerate(mask) if c == "1"]
        assert n_kept == len(kept)
        # each W brings its own O; the O at x=10 comes with W3 or W4; the O at x=30 never
        expected = n_kept + sum(1 for i in kept if i < 3) + (1 if {2, 3} & set(kept) else 0)
        assert n_atoms == expected, mask


def test_the_space_runs_out_and_says_so(motex, chain):
    first = motex("sample", "--structure", "chain", "--n", "10", "--seed", "1", db=chain)
    assert first.exit_code == 0
    second = motex("sample", "--structure", "chain", "--n", "10", "--seed", "2", db=chain)
    assert "added 5 new motifs" in second.stdout and "ran out" in second.stdout
    assert len(masks(chain)) == 15  # 2^4 - 1 non-empty masks
    third = motex("sample", "--structure", "chain", "--n", "3", db=chain)
    assert "added 0 new motifs" in third.stdout


def test_same_seed_on_an_empty_catalogue_gives_the_same_motifs(motex, tmp_path):
    path = tmp_path / "chain.xyz"
    path.write_text(CHAIN * 1)
    found = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path / (name + '.db')}"
        assert motex("structure", "add", path, "--name", "chain", "--permute", "W", db=url).exit_code == 0
        assert motex("sample", "--structure", "chain", "--n", "7", "--seed", "11", db=url).exit_code == 0
        found.append(masks(url))
    assert found[0] == found[1]


def test_size_bounds(motex, chain):
    assert motex("sample", "--structure", "chain", "--n", "4", "--min-atoms", "2", "--max-atoms", "2", "--seed", "0", db=chain).exit_code == 0
    assert {n_kept for _, n_kept, _ in masks(chain)} == {2}
    before = snapshot(chain)
    bad = motex("sample", "--structure", "chain", "--n", "4", "--min-atoms", "3", "--max-atoms", "9", db=chain)
    assert bad.exit_code == 2 and "--max-atoms" in bad.stderr
    assert snapshot(chain) == before


def test_sphere_strategy(motex, chain):
    result = motex("sample", "--structure", "chain", "--n", "3", "--strategy", "sphere", "--radius-min", "3", "--radius-max", "5", "--seed", "0", db=chain)
    assert result.exit_code == 0, result.output
    for mask, _, _ in masks(chain):
        kept = [i for i, c in enumerate(mask) if c == "1"]
        assert max(kept) - min(kept) <= 2  # a sphere of radius <= 5 Å spans at most 3 neighbours 4 Å apart


def test_masks_from_a_file(motex, chain, tmp_path):
    good = tmp_path / "masks.txt"
    good.write_text("# hand-picked\n1000\n0110\n1000\n")
    result = motex("sample", "--structure", "chain", "--from-file", good, db=chain)
    assert result.exit_code == 0, result.output
    assert [m for m, _, _ in masks(chain)] == ["1000", "0110"]
    before = snapshot(chain)
    for text, words in (("1000\n101\n", "line 2"), ("10a0\n", "line 1"), ("0000\n", "line 1")):
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        refused = motex("sample", "--structure", "chain", "--from-file", bad, db=chain)
        assert refused.exit_code == 2 and words in refused.stderr and "bad.txt" in refused.stderr
    assert snapshot(chain) == before


def test_unknown_structure_and_bad_n(motex, chain):
    missing = motex("sample", "--structure", "nope", "--n", "3", db=chain)
    assert missing.exit_code == 2 and "no structure named 'nope'" in missing.stderr
    assert motex("sample", "--structure", "chain", "--n", "0", db=chain).exit_code == 2
    assert motex("sample", "--structure", "chain", db=chain).exit_code == 2
