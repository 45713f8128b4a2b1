"""`motex-db mine` and `structure add --from-candidate` on a library the project generates itself.

The library: 48 CIFs written with ase.spacegroup.crystal (rocksalt, fluorite,
spinel, inverse spinel, perovskite, rutile, wurtzite, corundum, six
compositions each). The "measured" PDFs: 3 nm particles of library structures
computed as discrete clusters (an engine independent of the library's crystal
engine) with a lower Qmax (20 instead of 25 Å^-1) and 2 % noise, and an
amorphous-like PDF.

The lattice-aware tests use the mining test catalogue
(``motex_db.crystal_examples.mining_catalogue``: two compositions of each of
eight types) against particles of other compositions whose lattices are 2-5 %
off every catalogue entry of their type, 2-4 nm across, Qmax 18 Å^-1.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from support import query, run_cli, snapshot

LIBRARY = "oxides"
PARTICLES = {"spinel_CoFe2O4": "spinel", "wurtzite_ZnO": "wurtzite", "corundum_Fe2O3": "corundum"}
# the lattice-aware tests' catalogue (16 CIFs); the classifier on it with 30 PDFs per class instead of 100, for speed
CATALOGUE = "catalogue"
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
    """A SQLite record holding the generated library and the measured PDFs (~10 s)."""
    from motex_db.crystal_examples import write_example_cifs

    folder = tmp_path_factory.mktemp("mining")
    write_example_cifs(folder / "cifs")
    url = f"sqlite:///{folder / 'motex.db'}"
    result = run_cli("library", "add", folder / "cifs", "--name", LIBRARY, db=url)
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
    # the exact structure is in the library; with the lattice free, a composition of its type whose X-ray
    # contrast is the same (NiFe2O4 for CoFe2O4: Ni and Co differ by one electron) can fit as well
    assert rows[0][2].startswith(PARTICLES[stem]) and f"{stem}.cif" in top3, top3
    # the first one's refinement finds the particle: Rwp near the noise level, the particle's own lattice, 3 nm
    params = run_cli("sql", f"SELECT params FROM mining_candidate WHERE id = {rows[0][1]}", "--csv", db=record).stdout
    lattice = float(re.search(r'""lattice"": ([0-9.]+)', params).group(1))
    diameter = float(re.search(r'""diameter"": ([0-9.]+)', params).group(1))
    from motex_db.crystal_examples import example_crystals

    crystals = dict(example_crystals())
    found = crystals[rows[0][2].removesuffix(".cif")].cell.lengths()[0] * lattice
    assert float(rows[0][4]) < 0.2 and found == pytest.approx(crystals[stem].cell.lengths()[0], rel=0.005), params
    assert 25 < diameter < 36, params
    assert all(float(row[4]) > float(rows[0][4]) for row in rows[1:] if not row[2].startswith(PARTICLES[stem]))


def test_mining_again_reuses_the_stored_ranking(record):
    first = run_cli("mine", "wurtzite_ZnO", "--library", LIBRARY, "--top", "3", db=record)
    before = snapshot(record)
    again = run_cli("mine", "wurtzite_ZnO", "--library", LIBRARY, "--top", "3", db=record)
    assert first.exit_code == again.exit_code == 0
    assert "was already mined" in again.stdout and "wurtzite_ZnO.cif" in again.stdout
    assert snapshot(record) == before


def test_the_best_candidate_becomes_a_starting_model_for_ml_motex(record, tmp_path):
    rows = candidates(record, "spinel_CoFe2O4", "pcc")
    candidate = next(row[1] for row in rows if row[2] == "spinel_CoFe2O4.cif")
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
        (["mine", "glass", "--library", "one", "--stretch", "0.5"], "--stretch must be between 0 and 0.1 (10 %), not 0.5"),
        (["mine", "glass", "--library", "one", "--stretch", "-0.01"], "--stretch must be between 0 and 0.1"),
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

    from ase.spacegroup import crystal

    crystals = dict(example_crystals())
    # oxygen at u = 0.2575 instead of 0.2625: the same class (r 0.99), a worse match at every lattice stretch
    other_u = crystal(["Co", "Fe", "O"], [(0.125,) * 3, (0.5,) * 3, (0.2575,) * 3], spacegroup=227, setting=2,
                     cellpar=[8.39] * 3 + [90] * 3)
    write_example_cifs(tmp_path / "first", [("CoFe2O4_u2575", other_u), ("rocksalt_MgO", crystals["rocksalt_MgO"])])
    write_example_cifs(tmp_path / "second", [("spinel_CoFe2O4", crystals["spinel_CoFe2O4"])])
    assert motex("library", "add", tmp_path / "first", "--name", "lib", db=db_url).exit_code == 0
    files = write_measured(tmp_path, ["spinel_CoFe2O4"])
    assert motex("data", "add", files["spinel_CoFe2O4"], "--name", "np", db=db_url).exit_code == 0
    first = motex("mine", "np", "--library", "lib", "--top", "2", db=db_url)
    assert first.exit_code == 0 and "CoFe2O4_u2575.cif" in first.stdout, first.output

    added = motex("library", "add", tmp_path / "second", "--name", "lib", db=db_url)
    assert added.exit_code == 0 and "0 new classes" in added.stdout, added.output  # it joined the spinel's class
    again = motex("mine", "np", "--library", "lib", "--top", "2", db=db_url)
    assert again.exit_code == 0, again.output
    assert "was already mined" not in again.stdout
    first_row = next(line for line in again.stdout.splitlines() if line.startswith("│ 1 "))
    assert "spinel_CoFe2O4.cif" in first_row
    rows = motex("sql", "SELECT mining_result_id, rank, structure FROM mined_candidate ORDER BY mining_result_id, rank",
                 "--csv", db=db_url).stdout.splitlines()[1:]
    assert [row.split(",")[2] for row in rows] == ["CoFe2O4_u2575.cif", "rocksalt_MgO.cif", "spinel_CoFe2O4.cif",
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


# ---------------------------------------------------------------- the right type when the lattice is not the catalogue's

TARGET_QMAX = 18.0


def _coordination(atoms, index: int, cutoff: float = 2.3) -> int:
    distances = atoms.get_distances(index, range(len(atoms)), mic=True)
    oxygen = np.array(atoms.get_chemical_symbols()) == "O"
    return int(((distances > 0.1) & (distances < cutoff) & oxygen).sum())


def test_spinel_fixtures_put_the_cations_on_8a_and_16d_of_origin_choice_2():
    """Tetrahedral 8a (4 O), octahedral 16d (6 O); the same coordinates read in origin choice 1 would not be a spinel."""
    from ase.spacegroup import crystal

    from motex_db.crystal_examples import example_crystals, mining_catalogue, mining_targets

    spinels = [(s, a) for s, a in example_crystals() + mining_catalogue() if "spinel" in s]
    spinels += [(s, a) for s, _, a, _ in mining_targets() if "spinel" in s]
    assert len(spinels) >= 16
    for stem, atoms in spinels:
        assert len(atoms) == 56, stem
        frac = atoms.get_scaled_positions()
        site_8a = [k for k, f in enumerate(frac) if np.allclose(f, 0.125)]
        site_16d = [k for k, f in enumerate(frac) if np.allclose(f, 0.5)]
        assert len(site_8a) == len(site_16d) == 1, stem
        assert _coordination(atoms, site_8a[0]) == 4 and _coordination(atoms, site_16d[0]) == 6, stem
        occupancy = atoms.info.get("occupancy", {})
        kinds = atoms.arrays["spacegroup_kinds"]
        mixed_16d = len(occupancy.get(str(kinds[site_16d[0]]), {})) == 2
        assert mixed_16d == stem.startswith(("inverse_spinel", "np_inverse_spinel")), stem
    # the check can fail: origin-2 coordinates built in origin choice 1 put 16 cations on a 6-fold site and 8 nowhere near 4 O
    wrong = crystal(["Mg", "Al", "O"], [(0.125,) * 3, (0.5,) * 3, (0.2625,) * 3], spacegroup=227, setting=1,
                    cellpar=[8.08] * 3 + [90] * 3)
    symbols = np.array(wrong.get_chemical_symbols())
    assert (symbols == "Mg").sum() == 16 and _coordination(wrong, int(np.flatnonzero(symbols == "Al")[0])) != 6


def test_the_targets_are_2_to_5_percent_off_every_catalogue_entry_of_their_type():
    from motex_db.crystal_examples import mining_catalogue, mining_targets

    catalogue = mining_catalogue()
    targets = mining_targets()
    assert {kind for _, kind, _, _ in targets} == {"rocksalt", "fluorite", "spinel", "inverse_spinel", "perovskite", "rutile"}
    for stem, kind, atoms, diameter in targets:
        assert 20 <= diameter <= 40
        same = [a for s, a in catalogue if s.rsplit("_", 1)[0] == kind]
        assert len(same) == 2 and stem.split("_", 1)[1] not in {s for s, _ in catalogue}
        offsets = [np.abs(atoms.cell.lengths() / a.cell.lengths() - 1) for a in same]
        assert all(o.min() >= 0.019 for o in offsets), (stem, offsets)
        assert min(o.max() for o in offsets) <= 0.05, (stem, offsets)


def test_the_stretch_scan_follows_the_crystal_engine_and_cannot_miss_the_maximum():
    """The stretched stored PDF against the crystal engine at the stretched lattice; the grid step at 30 Å."""
    from motex_db.crystal_examples import mining_catalogue, nanoparticle_pdf, mining_targets
    from motex_db.library import LibrarySettings, crystal_from_record, pearson, read_crystal, simulate_entry
    from motex_db.mining import (MAX_STRETCH, measured_on_grid, stretch_grid, stretch_window,
                                 stretched_correlations)
    from motex_db.pdf.crystal import crystal_pairs, crystal_pdf
    import tempfile

    settings = LibrarySettings()
    stem, kind, atoms, diameter = [t for t in mining_targets() if t[1] == "spinel"][0]
    r = np.arange(0.5, 30.0001, 0.02)
    g = nanoparticle_pdf(atoms, r, diameter=diameter, qmax=TARGET_QMAX, seed=0)
    measured, covered = measured_on_grid(r, g, settings)
    window = stretch_window(covered, settings, MAX_STRETCH)
    stretches = stretch_grid(settings, MAX_STRETCH)
    # a step moves a peak at 30 Å by half a library peak width (sqrt(2 Uiso) = 0.14 Å)
    assert settings.r[window].max() >= 28 and (stretches[1] - stretches[0]) * 30 <= 0.071
    assert stretches[0] == pytest.approx(-0.06) and stretches[-1] == pytest.approx(0.06)
    with tempfile.TemporaryDirectory() as folder:
        from motex_db.crystal_examples import write_example_cifs

        path = write_example_cifs(folder, [c for c in mining_catalogue() if c[0] == "spinel_ZnCr2O4"])[0]
        crystal = read_crystal(path).crystal
    morphed = stretched_correlations(simulate_entry(crystal, settings)[None, :], measured, window, settings, stretches)[0]
    symbols, cell, frac, occupancies = crystal_from_record(crystal)
    pairs = crystal_pairs(symbols, cell, frac, occupancies, reach=settings.reach, min_scale=0.93, group="distance")
    exact = pearson(crystal_pdf(pairs, settings.r[window], qmin=settings.qmin, qmax=settings.qmax, qdamp=settings.qdamp,
                                uiso=settings.uiso, scales=1.0 + stretches), measured[window])
    assert np.abs(morphed - exact).max() < 0.02
    # the maximum is where the lattices meet: 8.69 / 8.33 - 1 = +4.3 %
    assert stretches[np.argmax(exact)] == pytest.approx(8.69 / 8.33 - 1, abs=0.005)
    assert stretches[np.argmax(morphed)] == pytest.approx(8.69 / 8.33 - 1, abs=0.005)
    assert exact.max() > 0.8 and exact[np.argmin(np.abs(stretches))] < 0.3  # at the catalogue's lattice: no match


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> str:
    """A SQLite record with the mining test catalogue and its targets (2-4 nm, lattices 2-5 % off) (~15 s)."""
    from motex_db.crystal_examples import amorphous_pdf, mining_catalogue, mining_targets, nanoparticle_pdf, write_example_cifs
    from motex_db.datasets import write_gr

    folder = tmp_path_factory.mktemp("catalogue")
    write_example_cifs(folder / "cifs", mining_catalogue())
    url = f"sqlite:///{folder / 'motex.db'}"
    assert run_cli("library", "add", folder / "cifs", "--name", CATALOGUE, db=url).exit_code == 0
    r = np.arange(0.5, 30.0001, 0.02)
    header = {"qmin": 0.8, "qmax": TARGET_QMAX, "qdamp": 0.03}
    for k, (stem, kind, atoms, diameter) in enumerate(mining_targets()):
        g = nanoparticle_pdf(atoms, r, diameter=diameter, qmin=0.8, qmax=TARGET_QMAX, qdamp=0.03, noise=0.02, seed=k)
        path = write_gr(folder / f"{stem}.gr", r, g, header, stem)
        assert run_cli("data", "add", path, "--name", stem, db=url).exit_code == 0
    path = write_gr(folder / "amorphous.gr", r, amorphous_pdf(r), header, "amorphous")
    assert run_cli("data", "add", path, "--name", "amorphous", db=url).exit_code == 0
    return url


TARGETS = ["np_rocksalt_FeO", "np_fluorite_ThO2", "np_spinel_CdFe2O4", "np_inverse_spinel_SnZn2O4", "np_perovskite_BaTiO3",
           "np_rutile_MnO2"]


def _type(structure: str) -> str:
    return structure.rsplit("_", 1)[0]


def _ranked(url: str, dataset: str, method: str) -> list[list[str]]:
    """The latest ranking's rows: rank, structure, score, stretch, rwp, out_of_catalogue."""
    text = run_cli("sql", f"SELECT rank, structure, score, stretch, rwp, out_of_catalogue FROM mined_candidate WHERE "
                   f"dataset = '{dataset}' AND method = '{method}' ORDER BY mining_result_id DESC, rank", "--csv",
                   db=url).stdout
    rows = [line.split(",") for line in text.splitlines()[1:]]
    return rows[: next((k for k in range(1, len(rows)) if rows[k][0] == "1"), len(rows))]


@pytest.mark.parametrize("target", TARGETS)
def test_lattice_aware_pcc_ranks_the_type_and_refine_puts_it_first(catalogue, target):
    kind = target.split("_", 1)[1].rsplit("_", 1)[0]
    result = run_cli("mine", target, "--library", CATALOGUE, "--top", "3", db=catalogue)
    assert result.exit_code == 0, result.output
    assert "probably outside the catalogue" not in result.stdout and "at a lattice stretch of" in result.stdout
    rows = _ranked(catalogue, target, "pcc")
    assert kind in [_type(row[1].removesuffix(".cif")) for row in rows], rows
    # the stretch is stored with each candidate: the right type's is where its lattice meets the target's
    right = next(row for row in rows if _type(row[1].removesuffix(".cif")) == kind)
    assert 0.015 <= abs(float(right[3])) <= 0.06, right

    refined = run_cli("mine", target, "--library", CATALOGUE, "--top", "3", "--refine", db=catalogue)
    assert refined.exit_code == 0, refined.output
    assert "plausible classes; ordered by their refined Rwp" in refined.stdout
    rows = _ranked(catalogue, target, "pcc")
    assert _type(rows[0][1].removesuffix(".cif")) == kind, rows
    rwp = [float(row[4]) for row in rows]
    assert rwp == sorted(rwp) and rwp[0] < 0.5, rows


def test_at_the_catalogue_lattice_pcc_misses_what_the_stretch_finds(catalogue):
    """--stretch 0 is the old comparison: the spinel particle 4.3 % off its type gets an unrelated ranking."""
    result = run_cli("mine", "np_spinel_CdFe2O4", "--library", CATALOGUE, "--top", "3", "--stretch", "0", db=catalogue)
    assert result.exit_code == 0, result.output
    rows = _ranked(catalogue, "np_spinel_CdFe2O4", "pcc")
    assert "spinel" not in [_type(row[1].removesuffix(".cif")) for row in rows], rows
    assert "warning: this PDF is probably outside the catalogue" in result.stdout


def test_the_classifier_ranks_each_type_and_both_methods_flag_the_amorphous_pdf(catalogue):
    from motex_db.tracking import open_tracker

    for target in TARGETS:
        kind = target.split("_", 1)[1].rsplit("_", 1)[0]
        result = run_cli("mine", target, "--library", CATALOGUE, "--method", "classifier", "--per-class", PER_CLASS,
                         "--top", "3", db=catalogue)
        assert result.exit_code == 0, result.output
        rows = _ranked(catalogue, target, "classifier")
        assert kind in [_type(row[1].removesuffix(".cif")) for row in rows], (target, rows)
        assert all(row[3] for row in rows)  # every candidate has its stretch too
    # trained once (the first call), reused by the others, tracked in MLflow
    assert "reusing classifier" in result.stdout
    rows = run_cli("sql", "SELECT n_classes, metrics, mlflow_run_id FROM library_classifier", "--csv", db=catalogue).stdout
    assert len(rows.splitlines()) == 2 and '""top3_accuracy""' in rows
    run_id = re.search(r"\b[0-9a-f]{32}\b", rows).group(0)
    run = open_tracker(catalogue).client.get_run(run_id)
    assert run.data.tags["library"] == CATALOGUE and run.data.metrics["test_top3_accuracy"] > 0.8
    assert run.data.params["lattice_range"] == "0.06"

    # --refine with the classifier refines the union of both top-3s and orders by Rwp
    result = run_cli("mine", "np_spinel_CdFe2O4", "--library", CATALOGUE, "--method", "classifier", "--per-class",
                     PER_CLASS, "--top", "3", "--refine", db=catalogue)
    assert result.exit_code == 0, result.output
    rows = _ranked(catalogue, "np_spinel_CdFe2O4", "classifier")
    assert _type(rows[0][1].removesuffix(".cif")) == "spinel", rows

    for method in ("classifier", "pcc"):
        extra = ["--per-class", PER_CLASS] if method == "classifier" else []
        result = run_cli("mine", "amorphous", "--library", CATALOGUE, "--method", method, *extra, db=catalogue)
        assert result.exit_code == 0, result.output
        assert "warning: this PDF is probably outside the catalogue" in result.stdout, (method, result.stdout)
        assert _ranked(catalogue, "amorphous", method)[0][5] in ("1", "True", "true")


def test_the_same_training_and_mining_started_twice_at_once_wait_and_reuse(db_url, tmp_path):
    """Two `library train` and then two `mine` on the same inputs: one does the work, the other waits and reuses it."""
    from test_library import started_together

    from motex_db.crystal_examples import mining_catalogue, write_example_cifs

    write_example_cifs(tmp_path / "cifs", [c for c in mining_catalogue() if c[0] in ("rocksalt_MgO", "rutile_TiO2",
                                                                                          "perovskite_SrTiO3")])
    files = write_measured(tmp_path, [])
    assert started_together(["init"], db=db_url, cwd=tmp_path)[0].exit_code == 0
    for command in (["library", "add", "cifs", "--name", "lib"], ["data", "add", files["amorphous"], "--name", "glass"]):
        assert started_together(command, db=db_url, cwd=tmp_path)[0].exit_code == 0

    trained = started_together(*[["library", "train", "lib", "--per-class", "10"]] * 2, db=db_url, cwd=tmp_path)
    for result in trained:
        assert result.exit_code == 0 and "Traceback" not in result.stderr, result.output
    assert sorted(r.stdout.split()[0] for r in trained) == ["reusing", "trained"], [r.stdout for r in trained]
    assert query(db_url, "SELECT count(*) FROM library_classifier") == [(1,)]

    mined = started_together(*[["mine", "glass", "--library", "lib", "--method", "classifier", "--per-class", "10"]] * 2,
                             db=db_url, cwd=tmp_path)
    for result in mined:
        assert result.exit_code == 0 and "Traceback" not in result.stderr, result.output
        assert "reusing classifier" in result.stdout
    assert sum("was already mined" in r.stdout for r in mined) == 1, [r.stdout for r in mined]
    assert query(db_url, "SELECT count(*) FROM mining_result") == [(1,)]
