"""The motif catalogue: membership, mask text, and the two samplers."""

import math

import numpy as np
import pytest

from motex_db.catalogue import (
    mask_to_text,
    masks_from_text,
    masks_to_text,
    membership_matrix,
    motif_atom_counts,
    parse_mask_file,
    sample_sphere_masks,
    sample_uniform_masks,
    unbonded_atoms,
)
from motex_db.errors import InputError


@pytest.fixture
def tiny_structure():
    """Two W 4 Å apart, an O bridging them, an O on each end, one stray O."""
    positions = np.array(
        [
            [0.0, 0.0, 0.0],  # W1
            [-1.9, 0.0, 0.0],  # O bonded to W1 only
            [2.0, 0.0, 0.0],  # O bridging W1 and W2 (2.0 Å from each)
            [4.0, 0.0, 0.0],  # W2
            [5.7, 0.0, 0.0],  # O bonded to W2 only
            [0.0, 9.0, 0.0],  # O bonded to nothing
        ]
    )
    permutable = np.array([True, False, False, True, False, False])
    return positions, permutable


def test_membership_follows_the_bond_cutoff(tiny_structure):
    positions, permutable = tiny_structure
    membership = membership_matrix(positions, permutable, bond_cutoff_angstrom=2.0)
    expected = np.array(
        [
            [True, False],  # W1 is its own column
            [True, False],
            [True, True],  # exactly at the cutoff counts as bonded
            [False, True],  # W2 is its own column
            [False, True],
            [False, False],
        ]
    )
    assert membership.shape == (6, 2)
    np.testing.assert_array_equal(membership, expected)
    np.testing.assert_array_equal(unbonded_atoms(membership, permutable), [5])


def test_motif_atom_counts_include_bonded_atoms_once(tiny_structure):
    positions, permutable = tiny_structure
    membership = membership_matrix(positions, permutable, 2.0)
    masks = masks_from_text(["10", "01", "11"], 2)
    # W1 + 2 O; W2 + 2 O; both W + 3 O (the bridge counted once).
    np.testing.assert_array_equal(motif_atom_counts(masks, membership), [3, 3, 5])


def test_mask_text_round_trip():
    masks = np.array([[True, False, True], [False, False, True]])
    texts = masks_to_text(masks)
    assert texts == ["101", "001"]
    assert mask_to_text(masks[0]) == "101"
    np.testing.assert_array_equal(masks_from_text(texts, 3), masks)


def test_mask_file_skips_blank_lines_and_comments(tmp_path):
    path = tmp_path / "masks.txt"
    path.write_text("# my motifs\n\n1100\n0011  # the other half\n")
    np.testing.assert_array_equal(parse_mask_file(path, 4), masks_from_text(["1100", "0011"], 4))


@pytest.mark.parametrize(
    "bad_line, fragment",
    [("110", "3 characters"), ("11x0", "'x'"), ("0000", "empty motif")],
)
def test_mask_file_errors_name_the_file_and_line(tmp_path, bad_line, fragment):
    path = tmp_path / "masks.txt"
    path.write_text(f"1100\n# comment\n{bad_line}\n")
    with pytest.raises(InputError) as error:
        parse_mask_file(path, 4)
    message = str(error.value)
    assert f"{path}, line 3" in message
    assert fragment in message


def test_missing_mask_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="Cannot read"):
        parse_mask_file(tmp_path / "nope.txt", 4)


def test_uniform_sampler_is_deterministic_and_distinct():
    first, exhausted = sample_uniform_masks(24, 2000, np.random.default_rng(7), set())
    again, _ = sample_uniform_masks(24, 2000, np.random.default_rng(7), set())
    assert first == again
    assert not exhausted
    assert len(first) == len(set(first)) == 2000
    assert all(len(m) == 24 and set(m) <= {"0", "1"} and "1" in m for m in first)


def test_uniform_sampler_avoids_existing_masks():
    existing, _ = sample_uniform_masks(12, 500, np.random.default_rng(1), set())
    new, _ = sample_uniform_masks(12, 500, np.random.default_rng(2), set(existing))
    assert not set(new) & set(existing)
    # The same seed with the same stored set gives the same catalogue.
    assert new == sample_uniform_masks(12, 500, np.random.default_rng(2), set(existing))[0]


def test_uniform_sampler_respects_the_size_range():
    masks, _ = sample_uniform_masks(30, 3000, np.random.default_rng(3), set(), k_min=5, k_max=9)
    sizes = np.array([m.count("1") for m in masks])
    assert sizes.min() == 5 and sizes.max() == 9
    # k is uniform over the sizes: each gets about a fifth of the draws.
    counts = np.bincount(sizes, minlength=10)[5:]
    assert np.all(np.abs(counts - 600) < 120)


def test_uniform_sampler_exhausts_a_small_space():
    masks, exhausted = sample_uniform_masks(4, 100, np.random.default_rng(0), set())
    assert exhausted
    assert len(masks) == len(set(masks)) == 15
    assert "0000" not in masks
    more, exhausted_again = sample_uniform_masks(4, 10, np.random.default_rng(1), set(masks))
    assert more == [] and exhausted_again


def test_uniform_sampler_drops_full_sizes_and_keeps_drawing_others():
    # Asking for exactly the whole space: once size 1 (10 masks) is full, the
    # draws go on in size 2 until it is full too, none lost.
    masks, exhausted = sample_uniform_masks(10, 55, np.random.default_rng(5), set(), k_min=1, k_max=2)
    assert exhausted  # C(10,1) + C(10,2) = 55
    assert sorted(m.count("1") for m in masks) == [1] * 10 + [2] * 45


def test_uniform_sampler_rejects_bad_ranges():
    with pytest.raises(InputError, match="size range"):
        sample_uniform_masks(5, 10, np.random.default_rng(0), set(), k_min=0)
    with pytest.raises(InputError, match="size range"):
        sample_uniform_masks(5, 10, np.random.default_rng(0), set(), k_min=3, k_max=6)


def test_uniform_sampler_handles_a_hundred_thousand_masks_for_48_atoms():
    masks, exhausted = sample_uniform_masks(48, 100_000, np.random.default_rng(0), set())
    assert len(set(masks)) == 100_000 and not exhausted
    sizes = np.bincount([m.count("1") for m in masks], minlength=49)
    assert sizes[0] == 0
    assert sizes[1] == 48 and sizes[47] == 48 and sizes[48] == 1  # full sizes
    assert sizes[2] == sizes[46] == math.comb(48, 2)


def test_sphere_sampler_is_deterministic_and_distinct():
    rng_positions = np.random.default_rng(0)
    positions = rng_positions.uniform(0, 15, size=(60, 3))
    first, exhausted = sample_sphere_masks(positions, 200, np.random.default_rng(4), set(), 2.0, 8.0)
    again, _ = sample_sphere_masks(positions, 200, np.random.default_rng(4), set(), 2.0, 8.0)
    assert first == again and not exhausted
    assert len(set(first)) == 200 and all("1" in m for m in first)


def test_sphere_masks_are_spheres():
    positions = np.random.default_rng(1).uniform(0, 10, size=(40, 3))
    masks, _ = sample_sphere_masks(positions, 50, np.random.default_rng(2), set(), 3.0, 3.0, centres="box")
    for mask in masks_from_text(masks, 40):
        inside = positions[mask]
        # No two atoms in one sphere are farther apart than its diameter.
        span = np.max(np.linalg.norm(inside[:, None] - inside[None], axis=2))
        assert span <= 6.0 + 1e-9


def test_sphere_sampler_gives_up_when_nothing_new_comes():
    positions = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    # Radii below 10 Å around an atom can only ever give '10' or '01'.
    masks, exhausted = sample_sphere_masks(positions, 5, np.random.default_rng(0), set(), 1.0, 2.0)
    assert sorted(masks) == ["01", "10"] and exhausted
