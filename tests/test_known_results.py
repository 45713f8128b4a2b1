"""The published alpha-Keggin answer (science.md section 6), through the real commands on the real data."""

from __future__ import annotations

import sqlalchemy as sa

from support import KEGGIN, requires_shared


@requires_shared
def test_keggin_odd_tungstens_make_the_motif(motex, tmp_path):
    url = f"sqlite:///{tmp_path / 'keggin.db'}"
    steps = [
        ("structure", "add", KEGGIN / "109725.xyz", "--name", "keggin", "--permute", "W"),
        ("data", "add", KEGGIN / "DanMAX_AlphaKeggin.gr", "--name", "danmax"),
        ("sample", "--structure", "keggin", "--n", "3000", "--seed", "1"),
        ("fit", "--structure", "keggin", "--data", "danmax"),
        ("train", "--structure", "keggin", "--data", "danmax", "--n-iter", "6"),
        ("explain", "--structure", "keggin", "--data", "danmax"),
    ]
    for step in steps:
        result = motex(*step, db=url)
        assert result.exit_code == 0, (step, result.output)
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT atom_index, contribution FROM contribution ORDER BY atom_index").fetchall()
    engine.dispose()
    negative = {index for index, contribution in rows if contribution < 0}
    # ML-MotEx: the 12 W of one complete Keggin unit, W 1, 3, 5, ..., 23 (1-based among W)
    assert negative == set(range(1, 25, 2))
