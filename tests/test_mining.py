"""`motex-db mine` and `structure add --from-candidate` on a library the project generates itself.

The library: 42 CIFs written with ase.spacegroup.crystal (rocksalt, fluorite,
spinel, perovskite, rutile, wurtzite, corundum, six compositions each). The
"measured" PDFs: 3 nm particles of library structures computed as discrete
clusters (an engine independent of the library's crystal engine) with a lower
Qmax (20 instead of 25 Å^-1) and 2 % noise, and an amorphous-like PDF.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from support import run_cli, snapshot

LIBRARY = "oxides"
PARTICLES = {"spinel_CoFe2O4": "spinel", "wurtzite_ZnO": "wurtzite", "corundum_Fe2O3": "corundum"}
# the classifier's library: three of the types (17 classes), 30 PDFs per class instead of the seed's 100, for speed
CLASSIFIER_LIBRARY = "three-types"
CLASSIFIER_TYPES = ("spinel", "wurtzite", "corundum")
PER_CLASS = 30


def write_measured(folder: Path, names=None) -> dict[str, Path]:
    from motex_db.crystal_examples import amorphous_pdf, example_crystals, nanoparticle_pdf
    from motex_db.datasets import write_gr

    crystals = dict(example_crystals())
    r = np.arange(0.5, 30.0001, 0.01)
    files = {}
    for k, stem in enumerate(PARTICLES):
        if names is not None and stem not in names:
            continue
        g = nanoparticle_pdf(crystals[stem], r, diameter=30.0, qmin=0.8, qmax=20.0, qdamp=0.03, noise=0.02, seed=k)
        files[stem] = write_gr(folder / f"np_{stem}.gr", r, g, {"qmin": 0.8, "qmax": 20.0, "qdamp": 0.03}, f"3 nm {stem}")
    files["amorphous"] = write_gr(folder / "amorphous.gr", r, amorphous_pdf(r), {"qmin": 0.8, "qmax": 20.0}, "amorphous")
    return files


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> str:
    """A SQLite record holding the generated library, a smaller one for the classifier, and the measured PDFs (~10 s)."""
    from motex_db.crystal_examples import example_crystals, write_example_cifs

    folder = tmp_path_factory.mktemp("mining")
    write_example_cifs(folder / "cifs")
    write_example_cifs(folder / "four", [c for c in example_crystals() if c[0].startswith(CLASSIFIER_TYPES)])
    url = f"sqlite:///{folder / 'motex.db'}"
    for path, name in ((folder / "cifs", LIBRARY), (folder / "four", CLASSIFIER_LIBRARY)):
        result = run_cli("library", "add", path, "--name", name, db=url)
        assert result.exit_code == 0, result.output
    for name, path in write_measured(folder).items():
        assert run_cli("data", "add", path, "--name", name, db=url).exit_code == 0
    return url


def candidates(url: str, dataset: str, method: str) -> list[tuple]:
    result = run_cli("sql", f"SELECT rank, candidate_id, structure, score, rwp, out_of_catalogue FROM mined_candidate "
                     f"WHERE dataset = '{dataset}' AND method = '{method}' ORDER BY mining_result_id DESC, rank", "--csv", db=url)
    rows = [line.split(",") for line in result.stdout.splitlines()[1:]]
    return rows


@pytest.mark.parametrize("stem", ["spinel_CoFe2O4", "corundum_Fe2O3"])
def test_pcc_ranks_the_true_structure_type_first_and_refines_it(record, stem):
    result = run_cli("mine", stem, "--library", LIBRARY, "--top", "3", "--refine", db=record)
    assert result.exit_code == 0, result.output
    assert "probably outside the catalogue" not in result.stdout
    rows = candidates(record, stem, "pcc")
    assert len(rows) == 3
    assert f"{stem}.cif" in result.stdout  # candidates are shown by their CIF file name
    top3 = [row[2] for row in rows[:3]]
    assert any(name.startswith(PARTICLES[stem]) for name in top3), top3
    assert rows[0][2] == f"{stem}.cif"  # the exact structure is in the library: it comes first
    # its refinement finds the particle: Rwp near the noise level, the lattice unchanged, a 3 nm diameter
    params = run_cli("sql", f"SELECT params FROM mining_candidate WHERE id = {rows[0][1]}", "--csv", db=record).stdout
    lattice = float(re.search(r'""lattice"": ([0-9.]+)', params).group(1))
    diameter = float(re.search(r'""diameter"": ([0-9.]+)', params).group(1))
    assert float(rows[0][4]) < 0.2 and abs(lattice - 1) < 0.005 and 25 < diameter < 36, params
    assert all(float(row[4]) > float(rows[0][4]) for row in rows[1:] if not row[2].startswith(PARTICLES[stem]))


def test_classifier_finds_the_type_and_flags_an_amorphous_pdf(record):
    from motex_db.tracking import open_tracker

    for stem, kind in PARTICLES.items():
        result = run_cli("mine", stem, "--library", CLASSIFIER_LIBRARY, "--method", "classifier", "--per-class", PER_CLASS,
                         db=record)
        assert result.exit_code == 0, result.output
        top3 = [row[2] for row in candidates(record, stem, "classifier")[:3]]
        assert any(name.startswith(kind) for name in top3), (stem, top3)
        assert "probably outside the catalogue" not in result.stdout
    # trained once (the first call), reused by the others, tracked in MLflow
    assert "reusing classifier" in result.stdout
    rows = run_cli("sql", "SELECT n_classes, metrics, mlflow_run_id FROM library_classifier", "--csv", db=record).stdout
    assert len(rows.splitlines()) == 2 and '""top3_accuracy""' in rows
    run_id = re.search(r"\b[0-9a-f]{32}\b", rows).group(0)
    run = open_tracker(record).client.get_run(run_id)
    assert run.data.tags["library"] == CLASSIFIER_LIBRARY and run.data.metrics["test_top3_accuracy"] > 0.8

    for method in ("classifier", "pcc"):
        extra = ["--per-class", PER_CLASS] if method == "classifier" else []
        result = run_cli("mine", "amorphous", "--library", CLASSIFIER_LIBRARY, "--method", method, *extra, db=record)
        assert result.exit_code == 0, result.output
        assert "warning: this PDF is probably outside the catalogue" in result.stdout, (method, result.stdout)
        assert candidates(record, "amorphous", method)[0][5] in ("1", "True", "true")


def test_mining_again_reuses_the_stored_ranking(record):
    first = run_cli("mine", "wurtzite_ZnO", "--library", LIBRARY, "--top", "3", db=record)
    before = snapshot(record)
    again = run_cli("mine", "wurtzite_ZnO", "--library", LIBRARY, "--top", "3", db=record)
    assert first.exit_code == again.exit_code == 0
    assert "was already mined" in again.stdout and "wurtzite_ZnO.cif" in again.stdout
    assert snapshot(record) == before


def test_the_best_candidate_becomes_a_starting_model_for_ml_motex(record, tmp_path):
    rows = candidates(record, "spinel_CoFe2O4", "pcc")
    candidate = rows[0][1]
    result = run_cli("structure", "add", "--from-candidate", candidate, "--name", "cofe-np", "--permute", "Co",
                     "--permute", "Fe", "--radius", "7", db=record)
    assert result.exit_code == 0, result.output
    assert "added structure 'cofe-np'" in result.stdout
    from motex_db.db import open_engine
    from motex_db.record import Record

    frame = Record(engine=open_engine(record)).structures()
    row = frame[frame["name"] == "cofe-np"].iloc[0]
    assert f"mined candidate {candidate}" in row["source_file"]
    # the ML-MotEx steps run on it as they are
    assert run_cli("sample", "--structure", "cofe-np", "--n", "200", "--seed", "1", db=record).exit_code == 0
    fitted = run_cli("fit", "--structure", "cofe-np", "--data", "spinel_CoFe2O4", db=record)
    assert fitted.exit_code == 0 and "fitted 200 motifs" in fitted.stdout, fitted.output
    again = run_cli("structure", "add", "--from-candidate", candidate, "--name", "cofe-np", "--permute", "Co",
                    "--permute", "Fe", "--radius", "7", db=record)
    assert again.exit_code == 0 and "already stored" in again.stdout


def test_mining_on_postgresql_and_sqlite(motex, db_url, tmp_path):
    from motex_db.crystal_examples import example_crystals, write_example_cifs

    chosen = [(s, a) for s, a in example_crystals() if s in ("spinel_CoFe2O4", "spinel_ZnFe2O4", "rocksalt_NiO", "rocksalt_MgO")]
    write_example_cifs(tmp_path / "cifs", chosen)
    assert motex("library", "add", tmp_path / "cifs", "--name", "small", db=db_url).exit_code == 0
    files = write_measured(tmp_path, ["spinel_CoFe2O4"])
    assert motex("data", "add", files["spinel_CoFe2O4"], "--name", "np", db=db_url).exit_code == 0
    result = motex("mine", "np", "--library", "small", "--top", "3", "--refine", db=db_url)
    assert result.exit_code == 0, result.output
    first_row = next(line for line in result.stdout.splitlines() if line.startswith("│ 1 "))
    assert "spinel_CoFe2O4.cif" in first_row
    rows = motex("sql", "SELECT rank, structure, rwp FROM mined_candidate ORDER BY rank", "--csv", db=db_url).stdout
    assert len(rows.splitlines()) == 4 and "spinel_CoFe2O4.cif" in rows.splitlines()[1]
    import motex_db

    frame = motex_db.open_record(db_url).candidates("np")
    assert list(frame["rank"]) == [1, 2, 3] and frame["structure"][0] == "spinel_CoFe2O4.cif"
    assert frame["rwp"][0] < 0.2


def test_mine_and_from_candidate_refuse_bad_input(motex, db_url, tmp_path):
    from motex_db.crystal_examples import example_crystals, write_example_cifs

    write_example_cifs(tmp_path / "cifs", [c for c in example_crystals() if c[0] == "rocksalt_MgO"])
    assert motex("library", "add", tmp_path / "cifs", "--name", "one", db=db_url).exit_code == 0
    files = write_measured(tmp_path, [])
    assert motex("data", "add", files["amorphous"], "--name", "glass", db=db_url).exit_code == 0
    short = tmp_path / "short.gr"
    short.write_text("".join(f"{40 + 0.1 * k:.2f} {np.sin(k):.4f}\n" for k in range(30)))
    assert motex("data", "add", short, "--name", "far", db=db_url).exit_code == 0
    before = snapshot(db_url)
    cases = [
        (["mine", "nope", "--library", "one"], "no dataset named 'nope'"),
        (["mine", "glass", "--library", "nope"], "no library named 'nope'"),
        (["mine", "glass", "--library", "one", "--method", "magic"], "--method must be pcc or classifier"),
        (["mine", "glass", "--library", "one", "--top", "0"], "--top must be at least 1"),
        (["mine", "far", "--library", "one"], "overlaps the library's r range 0-30 Å in fewer than 10 points"),
        (["mine", "glass", "--library", "one", "--method", "classifier"], "a classifier needs at least 2"),
        (["structure", "add", "--from-candidate", "999", "--name", "x", "--permute", "Mg", "--radius", "5"],
         "there is no mined candidate with id 999"),
        (["structure", "add", "--permute", "Mg", "--name", "x"], "give either a structure FILE or --from-candidate ID"),
        (["library", "train", "nope"], "no library named 'nope'"),
        (["library", "train", "one"], "a classifier needs at least 2"),
        (["library", "train", "one", "--per-class", "5"], "--per-class must be at least 10"),
    ]
    for args, words in cases:
        result = motex(*args, db=db_url)
        assert result.exit_code == 2 and words in result.stderr, (args, result.output)
    assert snapshot(db_url) == before
    mined = motex("mine", "glass", "--library", "one", db=db_url)
    assert mined.exit_code == 0
    candidate = motex("sql", "SELECT candidate_id FROM mined_candidate", "--csv", db=db_url).stdout.splitlines()[1]
    before = snapshot(db_url)
    for args, words in [
        (["--name", "x", "--permute", "Mg"], "give its --radius R"),
        (["--name", "x", "--permute", "W", "--radius", "6"], "has no W atoms to permute"),
        (["--permute", "Mg", "--radius", "6"], "needs a --name"),
    ]:
        result = motex("structure", "add", "--from-candidate", candidate, *args, db=db_url)
        assert result.exit_code == 2 and words in result.stderr, (args, result.output)
    assert snapshot(db_url) == before


@pytest.mark.parametrize("step, end", [(0.01, 29.99), (0.005, 29.995), (0.01, 25.0)])
def test_refinement_covers_every_point_of_an_ordinary_data_grid(tmp_path, step, end):
    """The fit uses every few points; the reported curve is on all of them, up to the last one."""
    from motex_db.crystal_examples import example_crystals, nanoparticle_pdf, write_example_cifs
    from motex_db.library import LibrarySettings, read_crystal
    from motex_db.mining import refine_candidate

    atoms = dict(example_crystals())["rocksalt_MgO"]
    path = write_example_cifs(tmp_path, [("rocksalt_MgO", atoms)])[0]
    r = np.round(np.arange(0.5, end + step / 2, step), 6)
    assert r[-1] == pytest.approx(end)
    g = nanoparticle_pdf(atoms, r, diameter=30.0, qmin=0.8, qmax=25.0, qdamp=0.04, noise=0.0, seed=0)
    settings = LibrarySettings()
    refined = refine_candidate(read_crystal(path).crystal, settings, r, g)
    assert refined.r[-1] == pytest.approx(end) and refined.g_calc.shape == refined.r.shape
    assert refined.rwp < 0.3
    again = refine_candidate(read_crystal(path).crystal, settings, r, g, start=refined.params())
    assert again.rwp == pytest.approx(refined.rwp, rel=1e-6)


def test_mining_again_after_a_file_joined_a_class_ranks_afresh(motex, db_url, tmp_path):
    """A new CIF that joins an existing class changes no class, but can be the better member: a new ranking."""
    from motex_db.crystal_examples import example_crystals, write_example_cifs

    crystals = dict(example_crystals())
    bigger = crystals["spinel_CoFe2O4"].copy()
    bigger.set_cell(bigger.cell[:] * 1.001, scale_atoms=True)
    write_example_cifs(tmp_path / "first", [("CoFe2O4_bigger", bigger), ("rocksalt_MgO", crystals["rocksalt_MgO"])])
    write_example_cifs(tmp_path / "second", [("spinel_CoFe2O4", crystals["spinel_CoFe2O4"])])
    assert motex("library", "add", tmp_path / "first", "--name", "lib", db=db_url).exit_code == 0
    files = write_measured(tmp_path, ["spinel_CoFe2O4"])
    assert motex("data", "add", files["spinel_CoFe2O4"], "--name", "np", db=db_url).exit_code == 0
    first = motex("mine", "np", "--library", "lib", "--top", "2", db=db_url)
    assert first.exit_code == 0 and "CoFe2O4_bigger.cif" in first.stdout, first.output

    added = motex("library", "add", tmp_path / "second", "--name", "lib", db=db_url)
    assert added.exit_code == 0 and "0 new classes" in added.stdout, added.output  # it joined the spinel's class
    again = motex("mine", "np", "--library", "lib", "--top", "2", db=db_url)
    assert again.exit_code == 0, again.output
    assert "was already mined" not in again.stdout
    first_row = next(line for line in again.stdout.splitlines() if line.startswith("│ 1 "))
    assert "spinel_CoFe2O4.cif" in first_row
    rows = motex("sql", "SELECT mining_result_id, rank, structure FROM mined_candidate ORDER BY mining_result_id, rank",
                 "--csv", db=db_url).stdout.splitlines()[1:]
    assert [row.split(",")[2] for row in rows] == ["CoFe2O4_bigger.cif", "rocksalt_MgO.cif", "spinel_CoFe2O4.cif",
                                                    "rocksalt_MgO.cif"]


def test_a_candidate_with_mixed_sites_is_refused_as_a_starting_model(motex, db_url, tmp_path):
    from test_library import rocksalt_cif

    (tmp_path / "cifs").mkdir()
    (tmp_path / "cifs" / "CoFeO2.cif").write_text(rocksalt_cif([("Co", 0.5), ("Fe", 0.5)]))
    assert motex("library", "add", tmp_path / "cifs", "--name", "mixed", db=db_url).exit_code == 0
    files = write_measured(tmp_path, [])
    assert motex("data", "add", files["amorphous"], "--name", "glass", db=db_url).exit_code == 0
    assert motex("mine", "glass", "--library", "mixed", db=db_url).exit_code == 0
    candidate = motex("sql", "SELECT candidate_id FROM mined_candidate", "--csv", db=db_url).stdout.splitlines()[1]
    before = snapshot(db_url)
    result = motex("structure", "add", "--from-candidate", candidate, "--name", "cofe", "--permute", "Co",
                   "--permute", "Fe", "--radius", "6", db=db_url)
    assert result.exit_code == 2, result.output
    assert f"candidate {candidate} (CoFeO2.cif) has partially occupied sites (Co 0.5, Fe 0.5)" in result.stderr
    assert snapshot(db_url) == before
