"""The generated C60 example: cage geometry, starting model, simulated data."""

import numpy as np
import pytest

from motex_db.examples import (
    C60_ATOM_COUNT,
    c60_dataset_header,
    c60_measured_pdf,
    c60_positions,
    c60_starting_model,
)
from motex_db.pdf import PDFParameters, cluster_pdf


def pair_distances(positions):
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=2)
    return distances[np.triu_indices(len(positions), 1)]


def test_c60_has_two_bond_lengths_and_three_bonds_per_atom():
    positions = c60_positions()
    assert positions.shape == (60, 3)
    distances = pair_distances(positions)
    bonds = np.sort(distances[distances < 1.6])
    assert len(bonds) == 90  # 60 atoms x 3 bonds / 2
    # 30 double (6:6) bonds, 60 single (6:5) bonds.
    np.testing.assert_allclose(bonds[:30], 1.40, atol=1e-9)
    np.testing.assert_allclose(bonds[30:], 1.45, atol=1e-9)
    distances_all = np.linalg.norm(positions[:, None] - positions[None], axis=2)
    np.testing.assert_array_equal(((distances_all > 0) & (distances_all < 1.6)).sum(axis=1), 3)


def test_c60_is_a_centred_cage_of_the_right_size():
    radii = np.linalg.norm(c60_positions(), axis=1)
    np.testing.assert_allclose(radii, radii[0], rtol=1e-12)
    assert radii[0] == pytest.approx(3.55, abs=0.02)  # measured C60 radius


def test_starting_model_hides_the_buckyball_among_bonded_carbons():
    atoms = c60_starting_model(n_distractors=70, seed=0)
    assert len(atoms) == 130 and set(atoms.get_chemical_symbols()) == {"C"}
    positions = atoms.positions
    np.testing.assert_allclose(positions[:C60_ATOM_COUNT], c60_positions())
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() >= 1.3
    nearest = distances[C60_ATOM_COUNT:].min(axis=1)
    assert np.all((nearest >= 1.35) & (nearest <= 1.6))
    # The cage stays a cage: no distractor inside or on it.
    assert np.linalg.norm(positions[C60_ATOM_COUNT:], axis=1).min() > 4.0


def test_starting_model_is_deterministic():
    first = c60_starting_model(seed=3).positions
    np.testing.assert_array_equal(first, c60_starting_model(seed=3).positions)
    assert not np.array_equal(first, c60_starting_model(seed=4).positions)


def test_measured_pdf_is_the_cage_pdf_plus_small_noise():
    r = np.arange(1.0, 20.0, 0.01)
    header = c60_dataset_header()
    measured = c60_measured_pdf(r, seed=0)
    clean = cluster_pdf(
        ["C"] * 60,
        c60_positions(),
        r,
        PDFParameters(
            calculator="real",
            radiation="xray",
            qmin=header["qmin"],
            qmax=header["qmax"],
            qdamp=header["qdamp"],
            qbroad=0.0,
            delta2=0.0,
            biso={"*": header["biso"]},
            zoom=1.0,
        ),
    )
    noise = measured - clean
    assert np.std(noise) == pytest.approx(header["noise"] * np.abs(clean).max(), rel=0.1)
    assert np.corrcoef(measured, clean)[0, 1] > 0.99
    np.testing.assert_array_equal(measured, c60_measured_pdf(r, seed=0))
    assert not np.array_equal(measured, c60_measured_pdf(r, seed=1))


def test_dataset_header_says_what_it_is():
    header = c60_dataset_header()
    assert header["composition"] == "C60" and header["simulated"] is True
    assert 22.0 <= header["qmax"] <= 25.0 and 0.03 <= header["qdamp"] <= 0.04
    assert "simulated" in header["note"].lower()
