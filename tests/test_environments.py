"""Atom environments (k-NN distance vectors and classes) and the k-NN atom-type check."""

from __future__ import annotations

import numpy as np
import pytest

from support import KEGGIN, query, requires_shared, snapshot

from motex_db.environments import atom_environments, inner_atoms, knn_distances, periodic_knn_distances


def _keggin():
    import ase.io

    atoms = ase.io.read(KEGGIN / "109725.xyz")
    return atoms.get_chemical_symbols(), atoms.get_positions()


@requires_shared
def test_keggin_images_share_a_class_and_a_displaced_atom_leaves_it():
    elements, positions = _keggin()
    w = np.flatnonzero(np.asarray(elements) == "W")
    classes = atom_environments(elements, positions).classes[w]
    # tetrahedral symmetry: 24 W in 6 classes of 4; the Keggin unit's 12 W (the odd ones) fill three of them
    assert sorted(np.unique(classes, return_counts=True)[1].tolist()) == [4] * 6
    odd, even = classes[0::2], classes[1::2]
    assert len(set(odd.tolist())) == 3 and not set(odd.tolist()) & set(even.tolist())

    moved = positions.copy()
    moved[w[0]] += [0.05, 0.0, 0.0]
    after = atom_environments(elements, moved).classes[w]
    assert np.sum(after == after[0]) == 1  # W1 is alone now
    mates = np.flatnonzero(classes == classes[0])[1:]
    assert len(set(after[mates].tolist())) == 1  # its three images still agree with each other


def test_c60_atoms_are_one_environment_and_the_vectors_are_the_obvious_ones():
    from motex_db.examples import c60_positions

    positions = c60_positions()
    environments = atom_environments(["C"] * 60, positions, k=3)
    assert environments.classes.tolist() == [1] * 60
    # a brute-force k-NN: every pair distance, sorted
    pairs = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    brute = np.sort(pairs, axis=1)[:, 1:4]
    assert np.allclose(environments.distances, brute)
    assert np.allclose(sorted(environments.distances[0]), [1.40, 1.45, 1.45], atol=1e-9)


def test_periodic_knn_distances_of_rocksalt_and_inner_atoms():
    a = 4.2
    frac = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                     [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]])
    d = periodic_knn_distances(np.eye(3) * a, frac, 18)
    assert np.allclose(d[:, :6], a / 2) and np.allclose(d[:, 6:18], a / np.sqrt(2))

    line = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]])
    inner = inner_atoms(line, knn_distances(line, 2)[0])
    assert inner.tolist() == [False, True, True, True, False]


@pytest.fixture
def c60_file(tmp_path):
    from motex_db.examples import c60_positions

    path = tmp_path / "c60.xyz"
    lines = [f"C {x:.6f} {y:.6f} {z:.6f}" for x, y, z in c60_positions()]
    path.write_text(f"60\nC60\n" + "\n".join(lines) + "\n")
    return path


def test_structure_add_stores_environments_and_show_lists_the_classes(motex, motex_process, db_url, c60_file):
    assert motex("structure", "add", c60_file, "--name", "ball", "--permute", "C", db=db_url).exit_code == 0
    rows = query(db_url, "SELECT atom_number, permutable_index, k, environment_class FROM atom_environment ORDER BY atom_number")
    assert [r[0] for r in rows] == list(range(1, 61)) and {r[1:] for r in rows[:1]} == {(1, 12, 1)}
    assert {r[3] for r in rows} == {1}

    shown = motex("structure", "show", "ball", db=db_url)
    assert shown.exit_code == 0, shown.stderr
    assert "60 permutable atoms in 1 environment classes (k = 12" in shown.stdout
    assert "1.400C 1.450C 1.450C" in shown.stdout

    before = snapshot(db_url)
    # through the console script once; the other refusals in this process (the same main)
    refused = motex_process("structure", "show", "ball", "--k", "0", db=db_url)
    assert refused.exit_code == 2 and refused.stderr.strip() == "error: --k must be a positive whole number of neighbours, not 0."
    for args, words in [
        (("structure", "show", "ball", "--k", "0"), "--k must be a positive whole number"),
        (("structure", "show", "ball", "--k", "60"), "has 60 atoms, so an atom has at most 59 neighbours"),
        (("structure", "show", "ball", "--tolerance", "-1"), "--tolerance must not be negative"),
        (("structure", "show", "nothing"), "no structure named 'nothing'"),
        (("structure", "check", "ball", "--k", "0"), "--k must be a positive whole number"),
        (("structure", "check", "ball"), "holds only C atoms"),
        (("structure", "check", "ball", "--threshold", "2"), "--threshold must lie between 0 and 1"),
    ]:
        result = motex(*args, db=db_url)
        assert result.exit_code == 2, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr
    assert snapshot(db_url) == before


@requires_shared
def test_check_flags_an_oxygen_written_as_tungsten_in_109725(motex, tmp_path):
    db = f"sqlite:///{tmp_path / 'motex.db'}"
    lines = (KEGGIN / "109725.xyz").read_text().splitlines()
    oxygen = [i for i, line in enumerate(lines[2:], start=2) if line.split()[0] == "O"]
    wrong = oxygen[9]
    lines[wrong] = "W" + lines[wrong][1:]
    (tmp_path / "edited.xyz").write_text("\n".join(lines) + "\n")
    assert motex("structure", "add", KEGGIN / "109725.xyz", "--name", "keggin", "--permute", "W", db=db).exit_code == 0
    assert motex("structure", "add", tmp_path / "edited.xyz", "--name", "edited", "--permute", "W", db=db).exit_code == 0

    result = motex("structure", "check", "edited", "--csv", db=db)
    assert result.exit_code == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header == "atom_index,element,predicted,probability"
    assert [row.split(",")[:3] for row in rows] == [[str(wrong - 1), "W", "O"]]
    assert float(rows[0].split(",")[3]) > 0.5

    again = motex("structure", "check", "edited", db=db)
    assert again.exit_code == 0 and "(stored check reused)" in again.stdout
    assert "held-out confusion matrix" in again.stdout and "held-out accuracy" in again.stdout
    assert query(db, "SELECT COUNT(*), MIN(source) FROM atom_type_check") == [(1, "record")]
    # the unedited model has nothing to flag
    clean = motex("structure", "check", "keggin", "--csv", db=db)
    assert clean.exit_code == 0 and clean.stdout.strip() == "atom_index,element,predicted,probability"


def test_check_against_a_library_flags_a_mislabelled_atom_of_a_generated_crystal(motex, tmp_path):
    import ase
    import ase.io

    from motex_db.crystal_examples import example_crystals, write_example_cifs

    db = f"sqlite:///{tmp_path / 'motex.db'}"
    crystals = [(n, a) for n, a in example_crystals() if n.split("_")[0] in ("fluorite", "rutile", "perovskite")]
    write_example_cifs(tmp_path / "cifs", crystals)
    assert motex("library", "add", tmp_path / "cifs", "--name", "oxides", db=db).exit_code == 0

    crystal = dict(crystals)["fluorite_CeO2"].repeat((4, 4, 4))
    centre = crystal.get_cell().sum(axis=0) / 2
    offset = np.linalg.norm(crystal.get_positions() - centre, axis=1)
    keep = offset < 8.0
    symbols = np.array(crystal.get_chemical_symbols())[keep]
    oxygen = np.flatnonzero(symbols == "O")
    wrong = oxygen[np.argmin(offset[keep][oxygen])]
    symbols[wrong] = "Ce"
    ase.io.write(tmp_path / "ceo2.xyz", ase.Atoms(symbols=list(symbols), positions=crystal.get_positions()[keep]))
    assert motex("structure", "add", tmp_path / "ceo2.xyz", "--name", "ceo2", "--permute", "Ce", db=db).exit_code == 0

    result = motex("structure", "check", "ceo2", "--library", "oxides", "--csv", db=db)
    assert result.exit_code == 0, result.stderr
    rows = [row.split(",") for row in result.stdout.strip().splitlines()[1:]]
    assert [row[:3] for row in rows] == [[str(wrong + 1), "Ce", "O"]]
    shown = motex("structure", "check", "ceo2", "--library", "oxides", db=db)
    assert "4 of 18 structures held out" in shown.stdout and "atoms are not judged" in shown.stdout


# --------------------------------------------------------------------------
# Isometry signatures


def _brute_multiset(mask, membership, elements, positions):
    """Sorted (species pair, distance to 1e-4 Å) of every pair of a motif's atoms, plus its species."""
    atoms = np.flatnonzero(membership[:, np.asarray(mask, dtype=bool)].any(axis=1))
    pairs = sorted(
        (tuple(sorted((elements[a], elements[b]))), round(float(np.linalg.norm(positions[a] - positions[b])), 4))
        for n, a in enumerate(atoms) for b in atoms[n + 1:]
    )
    return sorted(elements[a] for a in atoms), pairs


@requires_shared
def test_keggin_images_share_a_signature_and_a_displaced_atom_breaks_it():
    from motex_db.catalogue import membership_matrix
    from motex_db.environments import motif_signatures

    elements, positions = _keggin()
    elements = np.asarray(elements)
    membership = membership_matrix(positions, elements == "W", 2.6)
    rng = np.random.default_rng(3)
    masks = np.zeros((400, 24), dtype=bool)
    for row in masks:
        row[rng.choice(24, size=rng.integers(1, 4), replace=False)] = True
    signatures = motif_signatures(masks, membership, elements, positions)
    brute = [_brute_multiset(m, membership, elements, positions) for m in masks]
    # equal signatures exactly when the species and pair-distance multisets are equal
    for a in range(len(masks)):
        for b in range(a + 1, len(masks)):
            assert (signatures[a] == signatures[b]) == (brute[a] == brute[b])
    # W1, W7, W13, W19 are images of each other (one environment class); W1 and W2 are not
    single = np.eye(24, dtype=bool)[[0, 6, 12, 18, 1]]
    first, *images, other = motif_signatures(single, membership, elements, positions)
    assert images == [first] * 3 and other != first
    assert len(set(signatures)) < len(signatures)  # small motifs of a symmetric model do repeat

    moved = positions.copy()
    moved[0] += [0.05, 0.0, 0.0]
    after = motif_signatures(single, membership_matrix(moved, elements == "W", 2.6), elements, moved)
    assert after[0] != after[1] and after[1] == after[2] == after[3]


@requires_shared
def test_sample_dedup_isometry_stores_one_motif_per_signature_and_images_fit_alike(motex, tmp_path):
    db = f"sqlite:///{tmp_path / 'motex.db'}"
    assert motex("structure", "add", KEGGIN / "109725.xyz", "--name", "keggin", "--permute", "W", db=db).exit_code == 0
    assert motex("data", "add", KEGGIN / "DanMAX_AlphaKeggin.gr", "--name", "danmax", db=db).exit_code == 0
    plain = motex("sample", "--structure", "keggin", "--n", "300", "--seed", "1", "--max-atoms", "3", db=db)
    assert plain.exit_code == 0
    deduped = motex("sample", "--structure", "keggin", "--n", "200", "--seed", "2", "--dedup", "isometry", db=db)
    assert deduped.exit_code == 0, deduped.stderr
    skipped = int(deduped.stdout.split("drawn motifs were images")[0].split()[-1])
    assert skipped > 0
    rows = query(db, "SELECT signature, sampler FROM motif")
    assert all(signature is not None for signature, _ in rows)  # the plain ones got theirs when needed
    new = [signature for signature, sampler in rows if "dedup=isometry" in sampler]
    old = {signature for signature, sampler in rows if "dedup=isometry" not in sampler}
    assert len(new) == 200 and len(set(new)) == 200 and not set(new) & old

    # images among the plain motifs: one is fitted, the others copy its result and name it
    fitted = motex("fit", "--structure", "keggin", "--data", "danmax", db=db)
    assert fitted.exit_code == 0
    fits = query(db, "SELECT m.id, m.mask, m.signature, r.rwp, r.fitted_motif_id, r.seconds FROM motif m "
                     "JOIN fit_result r ON r.motif_id = m.id WHERE r.status = 'ok'")
    assert len(fits) == 500
    by_id = {row[0]: row for row in fits}
    copies = [row for row in fits if row[4] is not None]
    assert copies and len(copies) == 500 - len({row[2] for row in fits})
    assert f"{len(copies)} of the catalogue's results copy the fit of an image" in fitted.stdout
    for motif_id, _, signature, rwp, source, seconds in copies:
        assert by_id[source][2] == signature and by_id[source][4] is None and by_id[source][3] == rwp and seconds == 0
    # and a copy is what fitting that motif itself gives
    from motex_db.catalogue import masks_from_text
    from motex_db.db import create_db_engine
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import prepare_fit

    prepared = prepare_fit(create_db_engine(db), "keggin", "danmax", FitSettings())
    masks = masks_from_text([row[1] for row in copies[:40]], 24)
    refitted = prepared.fitter().fit_frames(masks, [0])[0].rwp
    assert np.max(np.abs(refitted - np.array([row[3] for row in copies[:40]]))) < 1e-6

    bad = motex("sample", "--structure", "keggin", "--n", "5", "--dedup", "shape", db=db)
    assert bad.exit_code == 2 and "unknown --dedup 'shape'" in bad.stderr


@requires_shared
def test_contributions_are_grouped_per_environment_class(tmp_path):
    from motex_db.db import create_db_engine, upgrade
    from motex_db.environments import contributions_per_environment
    from motex_db.structures import add_starting_model

    engine = create_db_engine(f"sqlite:///{tmp_path / 'motex.db'}")
    upgrade(engine)
    add_starting_model(engine, KEGGIN / "109725.xyz", "keggin", ["W"])
    atom_index = np.arange(24, 0, -1)  # any order of the atoms
    contributions = np.where(atom_index % 2 == 1, -0.04, 0.02) + 0.001 * atom_index
    rows = contributions_per_environment(engine, "keggin", atom_index, contributions)
    assert [row["atoms"] for row in rows[:3]] == [[1, 7, 13, 19], [3, 9, 15, 21], [5, 11, 17, 23]]
    assert {row["element"] for row in rows} == {"W"} and all(row["n_atoms"] == 4 for row in rows)
    first = rows[0]
    values = -0.04 + 0.001 * np.array([1, 7, 13, 19])
    assert np.isclose(first["mean"], values.mean()) and np.isclose(first["std"], values.std(ddof=1))
    assert (first["min"], first["max"]) == pytest.approx((values.min(), values.max()))


def test_the_report_groups_contributions_by_environment_class():
    import pandas as pd

    from motex_db.reports.figures import environment_figure

    table = pd.DataFrame({
        "atom_index": [1, 2, 3, 4], "element": ["W"] * 4, "contribution": [-0.04, 0.02, -0.03, 0.01],
        "uncertainty": [0.005] * 4, "environment_class": [1.0, 2.0, 1.0, 2.0],
    })
    fig = environment_figure(table)
    points = [trace for trace in fig.data if trace.showlegend is not False]
    assert [trace.name for trace in points] == ["W class 1 (2)", "W class 2 (2)"]  # ordered by mean
    assert list(points[0].y) == [-0.04, -0.03] and list(points[0].customdata) == [1, 3]
    means = [trace.y[0] for trace in fig.data if trace.showlegend is False]
    assert means == pytest.approx([-0.035, 0.015])
    # nothing to group: every atom its own class, or no stored classes
    assert environment_figure(table.assign(environment_class=[1.0, 2.0, 3.0, 4.0])) is None
    assert environment_figure(table.assign(environment_class=np.nan)) is None


def test_c60_motifs_and_their_inverted_images_share_a_signature():
    from motex_db.catalogue import membership_matrix
    from motex_db.environments import motif_signatures
    from motex_db.examples import c60_positions

    positions = c60_positions()
    # the cage is centrosymmetric: atom a's image under inversion sits at -x_a
    image_of = np.argmin(np.linalg.norm(positions[:, None] + positions[None], axis=-1), axis=1)
    assert np.allclose(positions[image_of], -positions, atol=1e-9)
    rng = np.random.default_rng(0)
    masks = rng.random((50, 60)) < 0.3
    images = np.zeros_like(masks)
    images[:, image_of] = masks
    membership = membership_matrix(positions, np.ones(60, dtype=bool), 2.6)
    elements = ["C"] * 60
    assert motif_signatures(masks, membership, elements, positions) == motif_signatures(images, membership, elements, positions)
    assert len(set(motif_signatures(masks, membership, elements, positions))) == 50  # different motifs stay apart
