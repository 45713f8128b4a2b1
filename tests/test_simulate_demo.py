"""`motex-db simulate` (no database) and `motex-db demo` (the generated example)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa

from motex_db.datasets import read_pdf_data
from motex_db.pdf import PDFParameters, cluster_pdf
from support import KEGGIN, requires_shared, snapshot

TRIANGLE = "3\n\nW 0 0 0\nW 3.2 0 0\nO 1.6 1.2 0\n"


def test_simulate_writes_a_gr_whose_header_records_every_parameter(motex_process, tmp_path):
    xyz = tmp_path / "tri.xyz"
    xyz.write_text(TRIANGLE)
    out = tmp_path / "tri.gr"
    result = motex_process(
        "simulate", xyz, "--out", out, "--calculator", "debye", "--qmax", "18", "--qdamp", "0.03",
        "--qbroad", "0.01", "--delta2", "1.5", "--zoom", "1.0,1.01,0.99", "--biso", "W=0.3", "--biso", "*=0.6",
        "--rmin", "1", "--rmax", "8", "--rstep", "0.02",
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "motex.db").exists()  # no database involved
    data = read_pdf_data(out)
    meta = data.meta
    assert meta["calculator"] == "debye" and meta["qmax"] == 18 and meta["qdamp"] == 0.03
    assert meta["qbroad"] == 0.01 and meta["delta2"] == 1.5 and meta["structure"] == "tri.xyz"
    assert json.loads(meta["biso"]) == {"W": 0.3, "*": 0.6}
    assert json.loads(meta["zoom"]) == [1.0, 1.01, 0.99]
    assert data.r[0] == pytest.approx(1.0) and data.r[-1] == pytest.approx(8.0) and len(data.r) == 351
    params = PDFParameters(calculator="debye", qmax=18, qdamp=0.03, qbroad=0.01, delta2=1.5,
                           zoom=(1.0, 1.01, 0.99), biso={"W": 0.3, "*": 0.6})
    expected = cluster_pdf(["W", "W", "O"], [[0, 0, 0], [3.2, 0, 0], [1.6, 1.2, 0]], data.r, params)
    assert np.allclose(data.g, expected, rtol=1e-6, atol=1e-8 * np.abs(expected).max())


@pytest.mark.parametrize(
    "args, words",
    [
        (["--biso", "W"], "--biso takes EL=VALUE"),
        (["--zoom", "1,2"], "--zoom takes one factor or three"),
        (["--calculator", "magic"], "magic"),
        (["--qmin", "25"], "qmax"),
        (["--rstep", "0"], "r grid"),
    ],
)
def test_simulate_bad_options(motex, tmp_path, args, words):
    xyz = tmp_path / "tri.xyz"
    xyz.write_text(TRIANGLE)
    result = motex("simulate", xyz, "--out", tmp_path / "x.gr", *args)
    assert result.exit_code == 2, result.output
    assert words in result.stderr


def test_simulate_unknown_element(motex, tmp_path):
    xyz = tmp_path / "odd.xyz"
    xyz.write_text("2\n\nXx 0 0 0\nW 2 0 0\n")
    result = motex("simulate", xyz, "--out", tmp_path / "x.gr")
    assert result.exit_code == 2


@requires_shared
def test_simulated_keggin_goes_straight_into_the_record(motex, tmp_path):
    out = tmp_path / "keggin_sim.gr"
    assert motex("simulate", KEGGIN / "109725.xyz", "--out", out, "--rmin", "0", "--rmax", "20").exit_code == 0
    assert motex("data", "add", out, db=f"sqlite:///{tmp_path / 'r.db'}").exit_code == 0


def test_demo_builds_its_record_and_runs_again_without_duplicating(motex_process, tmp_path):
    first = motex_process("demo", "--dir", "demo")
    assert first.exit_code == 0, first.output
    url = f"sqlite:///{tmp_path / 'demo' / 'motex.db'}"
    content = snapshot(url)
    assert len(content["starting_model"]) == 1 and len(content["dataset"]) == 1
    assert "c60-in-carbon" in first.stdout and "130 carbon atoms" in first.stdout
    # the whole pipeline ran, and found the buckyball
    assert len(content["motif"]) == 10_001 and len(content["trained_model"]) == 1
    assert "60 of them in the buckyball" in first.stdout
    # science.md: the 60 buckyball atoms have the 60 most negative contributions
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        most_negative = connection.exec_driver_sql(
            "SELECT atom_index FROM atom_contribution ORDER BY contribution LIMIT 60"
        ).scalars().all()
    engine.dispose()
    assert sorted(most_negative) == list(range(1, 61))
    second = motex_process("demo", "--dir", "demo")
    assert second.exit_code == 0
    again = snapshot(url)
    for table in ("starting_model", "dataset", "motif", "fit_result", "trained_model", "atom_contribution"):
        assert len(again[table]) == len(content[table]), table
