"""Structure libraries: the crystal PDF engine against slow, obvious computations, and `motex-db library`."""

from __future__ import annotations

import numpy as np
import pytest

from support import query, snapshot


def _rocksalt(a: float = 5.64):
    from ase.spacegroup import crystal

    return crystal(["Na", "Cl"], [(0, 0, 0), (0.5, 0.5, 0.5)], spacegroup=225, cellpar=[a] * 3 + [90] * 3)


def _slow_crystal_pdf(atoms, r, qmin, qmax, qdamp, uiso, reach):
    """The crystal PDF by brute force: a Gaussian per pair on a fine grid, the baseline, numerical sine transforms."""
    from ase.neighborlist import neighbor_list

    from motex_db.pdf.crystal import taper
    from motex_db.pdf.scattering import scattering_factors

    i, j, d = neighbor_list("ijd", atoms, reach)
    symbols = atoms.get_chemical_symbols()
    f = np.array([scattering_factors([s], "xray")[0, 0] for s in symbols])
    weight = f[i] * f[j] / (f.sum() ** 2 / len(f)) * taper(d, reach)
    fine = np.arange(0.0, reach, 0.002)
    sigma = np.sqrt(2 * uiso)
    g = np.zeros_like(fine)
    distances, inverse = np.unique(np.round(d, 7), return_inverse=True)
    for distance, w in zip(distances, np.bincount(inverse, weights=weight)):
        near = np.abs(fine - distance) < 8 * sigma
        g[near] += w / distance * np.exp(-0.5 * ((fine[near] - distance) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)
    g -= 4 * np.pi * len(atoms) / atoms.get_volume() * fine * taper(fine, reach)
    q = np.arange(max(qmin, 1e-4), qmax, 0.002)
    f_q = np.array([np.trapezoid(g * np.sin(k * fine), fine) for k in q])
    return np.array([2 / np.pi * np.trapezoid(f_q * np.sin(q * x), q) for x in r]) * np.exp(-0.5 * (qdamp * r) ** 2)


def test_crystal_pdf_matches_a_brute_force_computation():
    from motex_db.pdf.crystal import MARGIN, crystal_pairs, crystal_pdf

    atoms = _rocksalt()
    r = np.arange(0.5, 20.0001, 0.1)
    reach = 20.0 + MARGIN
    pairs = crystal_pairs(atoms.get_chemical_symbols(), atoms.cell[:], atoms.get_scaled_positions(), reach=reach)
    fast = crystal_pdf(pairs, r, qmin=0.8, qmax=25.0, qdamp=0.04, uiso=0.01)[0]
    slow = _slow_crystal_pdf(atoms, r, 0.8, 25.0, 0.04, 0.01, reach)
    assert np.abs(fast - slow).max() < 3e-3 * np.abs(slow).max()  # the slow one integrates numerically


def test_crystal_pdf_has_the_number_density_baseline():
    """Below the shortest bond G(r) = -4 pi rho0 r (with the whole Q range kept)."""
    from motex_db.pdf.crystal import crystal_pairs, crystal_pdf

    atoms = _rocksalt()
    r = np.arange(0.2, 1.21, 0.05)
    pairs = crystal_pairs(atoms.get_chemical_symbols(), atoms.cell[:], atoms.get_scaled_positions(), reach=15.0)
    g = crystal_pdf(pairs, r, qmin=0.0, qmax=60.0, qdamp=0.0, uiso=0.005)[0]
    rho0 = len(atoms) / atoms.get_volume()
    np.testing.assert_allclose(g, -4 * np.pi * rho0 * r, rtol=0.02, atol=0.01)


def test_scaling_the_axes_reuses_the_pairs_exactly():
    """Scaled pair lists give the PDF of the crystal built with the scaled cell (tetragonal rutile, a = b tied)."""
    from ase.spacegroup import crystal

    from motex_db.pdf.crystal import crystal_pairs, crystal_pdf, tied_axes

    def rutile(a, c):
        return crystal(["Ti", "O"], [(0, 0, 0), (0.305, 0.305, 0)], spacegroup=136, cellpar=[a, a, c, 90, 90, 90])

    base, scaled = rutile(4.594, 2.959), rutile(4.594 * 1.03, 2.959 * 0.97)
    assert list(tied_axes(base.cell.lengths())) == [0, 0, 1]
    r = np.arange(1.0, 15.0, 0.1)
    options = dict(reach=18.0, min_scale=0.95)
    grouped = crystal_pairs(base.get_chemical_symbols(), base.cell[:], base.get_scaled_positions(), **options)
    direct = crystal_pairs(scaled.get_chemical_symbols(), scaled.cell[:], scaled.get_scaled_positions(), **options, group="none")
    assert grouped.n_groups < direct.n_groups / 5  # symmetry: far fewer distinct pair vectors than pairs
    settings = dict(qmin=0.8, qmax=25.0, qdamp=0.04, uiso=[0.01, 0.02])
    reused = crystal_pdf(grouped, r, scales=np.array([[1.03, 1.03, 0.97]] * 2), **settings)
    fresh = crystal_pdf(direct, r, **settings)
    np.testing.assert_allclose(reused, fresh, atol=1e-9 * np.abs(fresh).max())
    assert not np.allclose(reused[0], reused[1])  # Uiso per simulation


def _cifs(folder, names):
    from motex_db.crystal_examples import example_crystals, write_example_cifs

    chosen = [(stem, atoms) for stem, atoms in example_crystals() if stem in names]
    assert len(chosen) == len(names)
    return write_example_cifs(folder, chosen)


def test_library_add_simulates_bundles_and_is_incremental(motex, db_url, tmp_path):
    from ase.spacegroup import crystal
    import ase.io

    _cifs(tmp_path / "first", ["rocksalt_MgO", "rocksalt_NiO", "spinel_CoFe2O4"])
    (tmp_path / "first" / "notes.cif").write_text("this is not a CIF\n")
    # MgO once more with its lattice 0.2 % larger: the same PDF for bundling purposes
    ase.io.write(str(tmp_path / "first" / "MgO_bigger.cif"),
                 crystal(["Mg", "O"], [(0, 0, 0), (0.5, 0.5, 0.5)], spacegroup=225, cellpar=[4.21 * 1.002] * 3 + [90] * 3))
    first = motex("library", "add", tmp_path / "first", "--name", "oxides", db=db_url)
    assert first.exit_code == 0, first.output
    assert "skipped notes.cif: not readable as a crystal" in first.stderr
    assert "added 4 structures" in first.stdout and "3 new classes" in first.stdout
    assert "holds 4 structures in 3 classes" in first.stdout

    rows = motex("sql", "SELECT s.name, k.class_index, s.representative FROM library_structure s "
                 "JOIN library_class k ON k.id = s.class_id ORDER BY s.name", "--csv", db=db_url).stdout.splitlines()
    classes = dict(line.split(",")[:2] for line in rows[1:])
    assert classes["MgO_bigger.cif"] == classes["rocksalt_MgO.cif"] != classes["rocksalt_NiO.cif"]

    _cifs(tmp_path / "second", ["rocksalt_MgO", "rutile_TiO2"])  # one already stored (same content), one new
    again = motex("library", "add", tmp_path / "second", "--name", "oxides", db=db_url)
    assert again.exit_code == 0, again.output
    assert "added 1 structures" in again.stdout and "1 already stored" in again.stdout
    assert "holds 5 structures in 4 classes" in again.stdout

    listed = motex("library", "list", db=db_url)
    assert "oxides" in listed.stdout and "0-30 Å step 0.1" in listed.stdout
    g = motex("sql", "SELECT g FROM library_structure WHERE name = 'rutile_TiO2.cif'", "--csv", db=db_url)
    assert g.exit_code == 0


def test_library_add_refuses_bad_input_and_changes_nothing(motex, db_url, tmp_path):
    _cifs(tmp_path / "cifs", ["rocksalt_MgO"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.cif").write_text("nothing\n")
    (tmp_path / "molecule.xyz").write_text("2\n\nO 0 0 0\nO 0 0 1.2\n")
    assert motex("library", "add", tmp_path / "cifs", "--name", "lib", db=db_url).exit_code == 0
    before = snapshot(db_url)
    cases = [
        ([tmp_path / "missing"], [], "missing does not exist"),
        ([tmp_path / "empty"], [], "holds no crystal files"),
        ([tmp_path / "junk"], [], "none of the files could be read as a crystal: a.cif"),
        ([tmp_path / "molecule.xyz"], [], "molecule.xyz: has no 3D unit cell"),
        ([tmp_path / "cifs"], ["--bundle-pcc", "1.5"], "--bundle-pcc must be in (0, 1]"),
        ([tmp_path / "cifs"], ["--rmax", "0"], "--rmax must be between 2 and 100"),
        ([tmp_path / "cifs"], ["--qmax", "0.5"], "--qmax (0.5) must be larger than --qmin"),
    ]
    for paths, options, words in cases:
        result = motex("library", "add", *paths, "--name", "other", *options, db=db_url)
        assert result.exit_code == 2 and words in result.stderr, (paths, options, result.output)
        assert sum(line.startswith("error:") for line in result.stderr.splitlines()) == 1, result.stderr
    mismatch = motex("library", "add", tmp_path / "cifs", "--name", "lib", "--rmax", "20", db=db_url)
    assert mismatch.exit_code == 2 and "library 'lib' was made with rmax 30.0" in mismatch.stderr
    assert snapshot(db_url) == before


def test_an_r_step_that_does_not_divide_rmax_ends_the_grid_short_of_rmax(motex, db_url, tmp_path):
    from motex_db.db import open_engine
    from motex_db.library import LibrarySettings
    from motex_db.models import LibraryStructure
    from sqlmodel import Session, select

    _cifs(tmp_path / "cifs", ["rocksalt_MgO", "rutile_TiO2"])
    result = motex("library", "add", tmp_path / "cifs", "--name", "odd", "--rstep", "0.07", db=db_url)
    assert result.exit_code == 0, result.output
    assert "added 2 structures" in result.stdout and "skipped" not in result.stderr
    assert "0-30 Å step 0.07" in motex("library", "list", db=db_url).stdout
    grid = LibrarySettings(rstep=0.07).r
    assert grid[-1] == pytest.approx(29.96) and np.allclose(np.diff(grid), 0.07)
    with Session(open_engine(db_url)) as session:
        sizes = {len(g) for g in session.exec(select(LibraryStructure.g)).all()}
    assert sizes == {grid.size}


def test_a_file_that_cannot_be_simulated_is_skipped_by_name(motex, db_url, tmp_path, monkeypatch):
    import motex_db.library
    from motex_db.errors import InputError

    _cifs(tmp_path / "cifs", ["rocksalt_MgO", "rutile_TiO2"])
    simulate = motex_db.library.simulate_entry

    def failing_for_rutile(crystal, settings):
        if "Ti" in crystal["symbols"]:
            raise InputError("the crystal's atoms scatter nothing (total scattering strength 0).")
        return simulate(crystal, settings)

    monkeypatch.setattr(motex_db.library, "simulate_entry", failing_for_rutile)
    result = motex("library", "add", tmp_path / "cifs", "--name", "lib", db=db_url)
    assert result.exit_code == 0, result.output
    assert "skipped rutile_TiO2.cif: the crystal's atoms scatter nothing" in result.stderr
    assert "added 1 structures" in result.stdout


def rocksalt_cif(sites: list[tuple[str, float]], a: float = 4.26) -> str:
    """A rocksalt CIF whose metal site holds ``sites`` (element, occupancy), the way databases write mixed sites."""
    metal = "".join(f"{el}{k} {el} 0 0 0 {occ}\n" for k, (el, occ) in enumerate(sites, start=1))
    return (
        f"data_rocksalt\n_cell_length_a {a}\n_cell_length_b {a}\n_cell_length_c {a}\n"
        "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
        "_symmetry_space_group_name_H-M 'F m -3 m'\n_symmetry_Int_Tables_number 225\n"
        "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
        f"_atom_site_fract_z\n_atom_site_occupancy\n{metal}O1 O 0.5 0.5 0.5 1.0\n"
    )


def test_partially_occupied_sites_keep_every_species_with_its_occupancy(motex, db_url, tmp_path):
    from motex_db.library import entry_pairs, read_crystal, LibrarySettings

    (tmp_path / "cifs").mkdir()
    mixed = tmp_path / "cifs" / "CoFeO2.cif"
    mixed.write_text(rocksalt_cif([("Co", 0.5), ("Fe", 0.5)]))
    vacant = tmp_path / "cifs" / "NiO_vacancies.cif"
    vacant.write_text(rocksalt_cif([("Ni", 0.9)], a=4.18))

    entry = read_crystal(mixed)
    assert entry.formula == "Co2Fe2O4" and entry.n_atoms == 8
    by_species = {}
    for symbol, occupancy in zip(entry.crystal["symbols"], entry.crystal["occupancies"]):
        by_species.setdefault(symbol, []).append(occupancy)
    assert by_species == {"Co": [0.5] * 4, "Fe": [0.5] * 4, "O": [1.0] * 4}
    # vacancies: 3.6 Ni per cell, so the number density (the baseline's slope) is 7.6 atoms per cell
    pairs = entry_pairs(read_crystal(vacant).crystal, LibrarySettings())
    assert read_crystal(vacant).formula == "Ni3.6O4" and pairs.n_atoms == pytest.approx(7.6)

    result = motex("library", "add", tmp_path / "cifs", "--name", "mixed", db=db_url)
    assert result.exit_code == 0 and "added 2 structures" in result.stdout, result.output
    formulas = motex("sql", "SELECT formula FROM library_structure ORDER BY name", "--csv", db=db_url).stdout
    assert formulas.split() == ["formula", "Co2Fe2O4", "Ni3.6O4"]


def started_together(*commands: list, db: str, cwd) -> list:
    """Run several real ``motex-db`` processes at once; their results in the order given."""
    import os
    import subprocess

    from support import CliResult, motex_executable

    processes = [subprocess.Popen([motex_executable(), "--db", db, *map(str, command)], cwd=cwd, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=dict(os.environ))
                 for command in commands]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        results.append(CliResult(process.returncode, out, err))
    return results


def test_two_adds_creating_one_library_at_once_take_turns(db_url, tmp_path):
    """The second waits for the first, then finds its files stored: one library, each structure once, no traceback."""
    _cifs(tmp_path / "cifs", ["rocksalt_MgO", "rocksalt_NiO", "rutile_TiO2", "fluorite_CeO2"])
    assert started_together(["init"], db=db_url, cwd=tmp_path)[0].exit_code == 0  # the schema first: not the race here
    first, second = started_together(["library", "add", "cifs", "--name", "new"], ["library", "add", "cifs", "--name", "new"],
                                      db=db_url, cwd=tmp_path)
    for result in (first, second):
        assert result.exit_code == 0 and "Traceback" not in result.stderr, result.output
    outputs = sorted([first.stdout, second.stdout], key=lambda text: "created library" not in text)
    assert "created library 'new': added 4 structures" in outputs[0]
    assert "added 0 structures" in outputs[1] and "4 already stored" in outputs[1]
    rows = query(db_url, "SELECT l.name, count(*) FROM library_structure s JOIN library l ON l.id = s.library_id GROUP BY l.name")
    assert rows == [("new", 4)]
    assert query(db_url, "SELECT count(*) FROM library_class") == [(4,)]
