"""Bringing structures and measured PDFs into the record, through the real CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest

from motex_db.structures import read_structure
from support import KEGGIN, requires_shared, snapshot

TRIANGLE = "4\ncomment\nW 0 0 0\nW 3.2 0 0\nO 1.6 1.2 0\nO 9 9 9\n"


@pytest.fixture
def record(motex, db_url):
    assert motex("init", db=db_url).exit_code == 0
    return db_url


def write(path, text):
    path.write_text(text)
    return path


def gr_text(n=50, header=True, columns=2, start=1.0):
    r = start + 0.1 * np.arange(n)
    g = np.sin(r) * np.exp(-r / 5)
    lines = []
    if header:
        lines += ["# xPDFsuite Configuration #", "[PDF]", "qmin = 0.7", "qmax = 19.5", "composition = W12O40", "mode = xray", "", "#### start data", "#S 1", "#L r G"]
    for x, y in zip(r, g):
        extra = {2: "", 3: " 0.01", 4: " 0.0 0.01"}[columns]
        lines.append(f"{x:.3f} {y:.6f}{extra}")
    return "\n".join(lines) + "\n"


# --- structures ---------------------------------------------------------------------------


def test_structure_add_summarises_and_numbers_permutable_atoms_in_file_order(motex, record, tmp_path):
    xyz = write(tmp_path / "tri.xyz", TRIANGLE)
    result = motex("structure", "add", xyz, "--name", "tri", "--permute", "W", db=record)
    assert result.exit_code == 0, result.output
    assert "2 W, 2 O" in result.stdout and "N = 2" in result.stdout
    # the far O is bonded to no W: it can never be in a motif, and the summary says so
    assert "O4" in result.stdout and "never be in a motif" in result.stdout
    listing = motex("structure", "list", db=record)
    assert "tri" in listing.stdout


def test_same_file_and_choices_under_any_name_give_the_existing_row(motex, record, tmp_path):
    xyz = write(tmp_path / "tri.xyz", TRIANGLE)
    assert motex("structure", "add", xyz, "--name", "tri", "--permute", "W", db=record).exit_code == 0
    before = snapshot(record)
    again = motex("structure", "add", xyz, "--name", "other", "--permute", "W", db=record)
    assert again.exit_code == 0
    assert "already stored as 'tri'" in again.stdout
    assert snapshot(record) == before
    # other choices make another starting model
    other = motex("structure", "add", xyz, "--name", "tri-wide", "--permute", "W", "--bond-cutoff", "3.0", db=record)
    assert other.exit_code == 0 and "added structure 'tri-wide'" in other.stdout


@pytest.mark.parametrize(
    "content, args, words",
    [
        (None, ["--permute", "W"], "does not exist"),
        ("", ["--permute", "W"], "cannot read structure file"),
        ("this is not a structure\nat all\n", ["--permute", "W"], "cannot read structure file"),
        (TRIANGLE, ["--permute", "Mo"], "has no Mo atoms to permute (it has O, W)"),
        (TRIANGLE, ["--permute", "W", "--bond-cutoff", "-1"], "--bond-cutoff must be positive"),
        (TRIANGLE, ["--permute", "W", "--radius", "5"], "has no unit cell"),
    ],
)
def test_bad_structure_input_is_refused_with_the_database_unchanged(motex, record, tmp_path, content, args, words):
    path = tmp_path / "bad.xyz"
    if content is not None:
        path.write_text(content)
    before = snapshot(record)
    result = motex("structure", "add", path, "--name", "bad", *args, db=record)
    assert result.exit_code == 2, result.output
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(record) == before


def test_a_cif_with_partially_occupied_sites_is_refused_not_silently_ordered(motex, record, tmp_path):
    # ase names a mixed site by its majority species; a starting model would silently lose the others
    cif = tmp_path / "mixed.cif"
    cif.write_text(
        "data_mixed\n_cell_length_a 4.26\n_cell_length_b 4.26\n_cell_length_c 4.26\n"
        "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
        "_symmetry_space_group_name_H-M 'F m -3 m'\n_symmetry_Int_Tables_number 225\n"
        "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
        "_atom_site_fract_z\n_atom_site_occupancy\nCo1 Co 0 0 0 0.5\nFe1 Fe 0 0 0 0.5\nO1 O 0.5 0.5 0.5 1.0\n"
    )
    before = snapshot(record)
    result = motex("structure", "add", cif, "--name", "mixed", "--permute", "Co", "--radius", "6", db=record)
    assert result.exit_code == 2, result.output
    assert "partially occupied sites (Co 0.5, Fe 0.5)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(record) == before


def test_a_name_used_for_other_content_is_refused(motex, record, tmp_path):
    assert motex("structure", "add", write(tmp_path / "a.xyz", TRIANGLE), "--name", "x", "--permute", "W", db=record).exit_code == 0
    before = snapshot(record)
    other = write(tmp_path / "b.xyz", TRIANGLE.replace("3.2", "3.3"))
    result = motex("structure", "add", other, "--name", "x", "--permute", "W", db=record)
    assert result.exit_code == 2 and "already used" in result.stderr
    assert snapshot(record) == before


def _rocksalt_cif(path):
    from ase.io import write as ase_write
    from ase.spacegroup import crystal

    nacl = crystal(["Na", "Cl"], [(0, 0, 0), (0.5, 0.5, 0.5)], spacegroup=225, cellpar=[5.64] * 3 + [90] * 3)
    ase_write(str(path), nacl)
    return path


def test_cif_gives_one_unit_cell_or_a_sphere(motex, record, tmp_path):
    cif = _rocksalt_cif(tmp_path / "nacl.cif")
    cell = read_structure(cif)
    assert sorted(set(cell.elements)) == ["Cl", "Na"] and len(cell.elements) == 8
    sphere = read_structure(cif, radius=6.0)
    centre = np.full(3, 5.64 / 2) + 5.64 * (len(sphere.elements) > 0)  # the middle copy's centre
    distances = np.linalg.norm(sphere.positions - sphere.positions.mean(axis=0), axis=1)
    assert len(sphere.elements) > 8 and distances.max() <= 6.0 + 1e-6 + np.abs(sphere.positions.mean(axis=0) - centre).max()
    # a sphere around the cell centre (a Cl site in rocksalt) holds that atom and its 6 Na neighbours
    result = motex("structure", "add", cif, "--name", "nacl-sphere", "--permute", "Na", "--radius", "3.0", "--bond-cutoff", "3.0", db=record)
    assert result.exit_code == 0, result.output
    assert "6 Na, 1 Cl" in result.stdout or "1 Cl, 6 Na" in result.stdout


def test_rename_and_remove(motex, record, tmp_path):
    xyz = write(tmp_path / "tri.xyz", TRIANGLE)
    assert motex("structure", "add", xyz, "--name", "tri", "--permute", "W", db=record).exit_code == 0
    assert motex("structure", "rename", "tri", "triangle", db=record).exit_code == 0
    missing = motex("structure", "rename", "tri", "x", db=record)
    assert missing.exit_code == 2 and "no structure named 'tri'" in missing.stderr
    before = snapshot(record)
    refused = motex("structure", "remove", "triangle", db=record)
    assert refused.exit_code == 2 and "without --yes" in refused.stderr
    assert snapshot(record) == before
    removed = motex("structure", "remove", "triangle", "--yes", db=record)
    assert removed.exit_code == 0 and "0 motifs" in removed.stdout
    assert snapshot(record)["starting_model"] == []


@requires_shared
def test_keggin_starting_model(motex, record):
    result = motex("structure", "add", KEGGIN / "109725.xyz", "--name", "keggin", "--permute", "W", db=record)
    assert result.exit_code == 0, result.output
    assert "24 W, 80 O" in result.stdout and "N = 24" in result.stdout


# --- data -----------------------------------------------------------------------------------


def test_gr_with_header_keeps_metadata(motex, record, tmp_path):
    from motex_db.db import open_engine
    from motex_db.models import Dataset
    from sqlmodel import Session, select

    path = write(tmp_path / "frame.gr", gr_text())
    result = motex("data", "add", path, "--name", "frame", db=record)
    assert result.exit_code == 0, result.output
    assert "50 points" in result.stdout and "qmax=19.5" in result.stdout
    with Session(open_engine(record)) as session:
        row = session.exec(select(Dataset)).one()
    assert row.meta["qmin"] == 0.7 and row.meta["composition"] == "W12O40"
    assert row.r.shape == (50,) and row.dg is None and row.r[0] == pytest.approx(1.0)


@pytest.mark.parametrize("columns", [2, 3, 4])
def test_plain_text_with_two_three_or_four_columns(motex, record, tmp_path, columns):
    from motex_db.datasets import read_pdf_data

    path = write(tmp_path / f"plain{columns}.dat", "# a comment\n" + gr_text(header=False, columns=columns))
    data = read_pdf_data(path)
    assert (data.dg is None) == (columns == 2)
    assert motex("data", "add", path, db=record).exit_code == 0


def test_csv_with_r_and_g_columns(motex, record, tmp_path):
    r = np.linspace(1, 10, 30)
    path = write(tmp_path / "pdf.csv", "r,G,dG\n" + "\n".join(f"{x},{np.sin(x)},0.01" for x in r) + "\n")
    result = motex("data", "add", path, db=record)
    assert result.exit_code == 0, result.output
    assert "added dataset 'pdf'" in result.stdout


def test_same_content_again_gives_the_existing_dataset(motex, record, tmp_path):
    path = write(tmp_path / "frame.gr", gr_text())
    assert motex("data", "add", path, db=record).exit_code == 0
    before = snapshot(record)
    again = motex("data", "add", path, "--name", "another", db=record)
    assert again.exit_code == 0 and "already stored as dataset 'frame'" in again.stdout
    assert snapshot(record) == before


@pytest.mark.parametrize(
    "name, text, words",
    [
        ("nan.gr", gr_text().replace("1.100 ", "1.100 nan #"), "NaN or infinite G"),
        ("inf.dat", gr_text(header=False).replace("1.200 ", "1.200 inf #"), "NaN or infinite"),
        ("backwards.dat", gr_text(header=False).replace("1.300 ", "1.050 "), "r does not increase"),
        ("short.dat", gr_text(n=9, header=False), "at least 10 are needed"),
        ("onecol.dat", "\n".join(str(x) for x in range(20)), "a G column is needed"),
        ("nog.csv", "r,intensity\n" + "\n".join(f"{x},1" for x in range(20)), "has no G column"),
        ("words.dat", "1 2\n3 4\nfoo bar\n", "line 3"),
        ("empty.gr", "", "holds no data rows"),
    ],
)
def test_bad_data_is_refused_with_the_database_unchanged(motex, record, tmp_path, name, text, words):
    path = write(tmp_path / name, text)
    before = snapshot(record)
    result = motex("data", "add", path, db=record)
    assert result.exit_code == 2, result.output
    assert words in result.stderr and name in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(record) == before


def test_missing_data_file(motex, record, tmp_path):
    result = motex("data", "add", tmp_path / "nope.gr", db=record)
    assert result.exit_code == 2 and "nope.gr does not exist" in result.stderr


def test_several_files_go_in_together_or_not_at_all(motex, record, tmp_path):
    good = write(tmp_path / "good.gr", gr_text())
    bad = write(tmp_path / "bad.gr", gr_text(n=5))
    before = snapshot(record)
    assert motex("data", "add", good, bad, db=record).exit_code == 2
    assert snapshot(record) == before
    other = write(tmp_path / "good2.gr", gr_text(start=1.5))
    assert motex("data", "add", good, other, db=record).exit_code == 0
    assert len(snapshot(record)["dataset"]) == 2


def test_dataset_name_used_for_other_content_is_refused(motex, record, tmp_path):
    assert motex("data", "add", write(tmp_path / "a.gr", gr_text()), "--name", "x", db=record).exit_code == 0
    before = snapshot(record)
    result = motex("data", "add", write(tmp_path / "b.gr", gr_text(start=2.0)), "--name", "x", db=record)
    assert result.exit_code == 2 and "already used" in result.stderr
    assert snapshot(record) == before


def test_series_with_a_times_file(motex, record, tmp_path):
    frames = [write(tmp_path / f"f{i}.gr", gr_text(start=1.0 + 0.01 * i)) for i in range(3)]
    times = write(tmp_path / "times.csv", "file,time\nf0.gr,0\nf1.gr,30\nf2.gr,60\n")
    result = motex("data", "add", *frames, "--series", "growth", "--times", times, db=record)
    assert result.exit_code == 0, result.output
    assert "series 'growth' at t = 30 s" in result.stdout
    listing = motex("sql", "SELECT name, time FROM dataset WHERE series = 'growth' ORDER BY time", "--csv", db=record)
    assert listing.stdout.splitlines()[1:] == ["f0,0", "f1,30", "f2,60"]


def series_times(motex, record, series):
    listing = motex("sql", f"SELECT name, time FROM dataset WHERE series = '{series}' ORDER BY time", "--csv", db=record)
    return [tuple(line.split(",")) for line in listing.stdout.splitlines()[1:]]


def test_frames_added_later_continue_after_the_series_last_time_with_its_step(motex, record, tmp_path):
    frames = [write(tmp_path / f"f{i}.gr", gr_text(start=1.0 + 0.01 * i)) for i in range(5)]
    times = write(tmp_path / "times.csv", "file,time\nf0.gr,0\nf1.gr,30\nf2.gr,60\n")
    assert motex("data", "add", *frames[:3], "--series", "growth", "--times", times, db=record).exit_code == 0
    result = motex("data", "add", *frames[3:], "--series", "growth", db=record)
    assert result.exit_code == 0, result.output
    assert "series 'growth' at t = 120 s" in result.stdout
    assert series_times(motex, record, "growth") == [("f0", "0"), ("f1", "30"), ("f2", "60"), ("f3", "90"), ("f4", "120")]
    # a series numbered by file order goes on numbering
    a = [write(tmp_path / f"a{i}.gr", gr_text(start=2.0 + 0.01 * i)) for i in range(2)]
    b = [write(tmp_path / f"b{i}.gr", gr_text(start=3.0 + 0.01 * i)) for i in range(2)]
    assert motex("data", "add", *a, "--series", "t", db=record).exit_code == 0
    assert motex("data", "add", *b, "--series", "t", db=record).exit_code == 0
    assert series_times(motex, record, "t") == [("a0", "0"), ("a1", "1"), ("b0", "2"), ("b1", "3")]


def test_a_time_the_series_already_has_is_refused_through_the_console_script(motex, motex_process, record, tmp_path):
    frames = [write(tmp_path / f"f{i}.gr", gr_text(start=1.0 + 0.01 * i)) for i in range(4)]
    assert motex("data", "add", *frames[:2], "--series", "growth", db=record).exit_code == 0
    before = snapshot(record)
    result = motex_process("data", "add", frames[2], "--series", "growth", "--time", "1", db=record)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "error: series 'growth' already has a frame at t = 1 s (f2.gr); give it another time."
    ]
    clash = write(tmp_path / "clash.csv", "file,time\nf2.gr,5\nf3.gr,5\n")
    result = motex_process("data", "add", *frames[2:], "--series", "growth", "--times", clash, db=record)
    assert result.exit_code == 2 and "f2.gr and f3.gr are both given t = 5 s" in result.stderr
    assert "Traceback" not in result.output
    assert snapshot(record) == before


@requires_shared
def test_danmax_data(motex, record):
    result = motex("data", "add", KEGGIN / "DanMAX_AlphaKeggin.gr", "--name", "danmax", db=record)
    assert result.exit_code == 0, result.output
    assert "3001 points" in result.stdout and "composition=W12O40" in result.stdout


def test_status_counts_per_structure_and_dataset(motex, record, tmp_path):
    assert motex("structure", "add", write(tmp_path / "tri.xyz", TRIANGLE), "--permute", "W", db=record).exit_code == 0
    assert motex("data", "add", write(tmp_path / "frame.gr", gr_text()), db=record).exit_code == 0
    result = motex("status", db=record)
    assert result.exit_code == 0
    assert "tri" in result.stdout and "frame" in result.stdout
