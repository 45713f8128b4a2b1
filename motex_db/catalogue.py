"""Step 1 of ML-MotEx: the motif catalogue.

A starting model has N *permutable* atoms (the user's chosen elements, in file
order); a *motif* is a subset of them, written as a bit mask of length N. The
other atoms of the model come with a motif if and only if they lie within the
bond cutoff of at least one kept permutable atom (science.md, section 2).

Everything here is a pure function on numpy arrays; masks are stored as text
('0'/'1', one character per permutable atom, file order).

References: Anker et al., npj Comput. Mater. 8, 213 (2022) (ML-MotEx).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from motex_db.errors import InputError

__all__ = [
    "membership_matrix",
    "unbonded_atoms",
    "motif_atom_counts",
    "mask_to_text",
    "masks_to_text",
    "masks_from_text",
    "parse_mask_file",
    "sample_uniform_masks",
    "sample_sphere_masks",
    "sample_guided_masks",
    "SampleOutcome",
    "sample_motifs",
    "add_mask_file",
]

# Sizes k with at most this many masks C(N, k) are enumerated outright instead
# of drawn by rejection: cheap, and rejection would crawl once they fill up.
_ENUMERATE_MAX = 4096
# Sizes that are more than half full (and not huge) are enumerated too.
_ENUMERATE_FULL_MAX = 2_000_000
# The cookie cutter gives up after this many draws in a row that add nothing.
_SPHERE_MAX_FRUITLESS = 10_000
_REJECTION_BATCH_MAX = 200_000
# Motif sizes drawn per round, bounding memory for very large requests.
_SIZE_BATCH_MAX = 1_000_000
# Cookie-cutter draws per batch times N stays below this (memory of distances).
_SPHERE_BATCH_CELLS = 4_000_000
_ZERO = ord("0")
#: ``motif.sampler`` of the motifs a polish (step 5) evaluated, followed by " run ID": answers
#: being searched for, not samples, so training leaves them out.
POLISH_SAMPLER = "polish"


# --------------------------------------------------------------------------
# Membership: which atoms come with which permutable atom


def membership_matrix(
    positions_angstrom: np.ndarray, permutable: np.ndarray, bond_cutoff_angstrom: float
) -> np.ndarray:
    """Which atoms come with each permutable atom, as an (n_atoms, N) bool matrix.

    Column k is the k-th permutable atom in file order. ``membership[a, k]`` is
    True when atom a is that permutable atom itself, or a is a non-permutable
    atom within ``bond_cutoff_angstrom`` (distance <= cutoff, in Å) of it.
    Permutable atoms are never members of each other's columns.

    positions_angstrom: (n_atoms, 3) Cartesian coordinates in Å.
    permutable: (n_atoms,) bool, True for atoms of the permutable elements.
    """
    positions = np.asarray(positions_angstrom, dtype=float)
    permutable = np.asarray(permutable, dtype=bool)
    _check_structure(positions, permutable, bond_cutoff_angstrom)
    perm_index = np.flatnonzero(permutable)
    other_index = np.flatnonzero(~permutable)
    membership = np.zeros((len(positions), len(perm_index)), dtype=bool)
    membership[perm_index, np.arange(len(perm_index))] = True
    if len(other_index) and len(perm_index):
        # A k-d tree keeps this linear in size for big cookie-cutter supercells.
        tree = cKDTree(positions[perm_index])
        neighbours = tree.query_ball_point(positions[other_index], r=bond_cutoff_angstrom)
        for row, columns in zip(other_index, neighbours):
            membership[row, columns] = True
    return membership


def _check_structure(positions: np.ndarray, permutable: np.ndarray, cutoff: float) -> None:
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InputError(f"Atom positions must be an (n_atoms, 3) array, not shape {positions.shape}.")
    if permutable.shape != (len(positions),):
        raise InputError(
            f"The permutable flags must give one value per atom ({len(positions)}), not shape {permutable.shape}."
        )
    if not np.all(np.isfinite(positions)):
        raise InputError("Atom positions must be finite numbers.")
    if not (np.isfinite(cutoff) and cutoff >= 0):
        raise InputError(f"The bond cutoff must be a non-negative distance in Å, not {cutoff}.")


def unbonded_atoms(membership: np.ndarray, permutable: np.ndarray) -> np.ndarray:
    """Indices (0-based, file order) of non-permutable atoms bonded to no permutable atom.

    Such atoms never appear in any motif; the caller may want to warn about them.
    """
    membership = np.asarray(membership, dtype=bool)
    permutable = np.asarray(permutable, dtype=bool)
    return np.flatnonzero(~permutable & ~membership.any(axis=1))


def motif_atom_counts(masks: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """Total number of atoms in each motif: kept permutable plus bonded others.

    masks: (n_motifs, N) bool; membership: (n_atoms, N) bool from
    :func:`membership_matrix`. Returns (n_motifs,) int.
    """
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    membership = np.asarray(membership, dtype=bool)
    if masks.shape[1] != membership.shape[1]:
        raise InputError(
            f"Masks have {masks.shape[1]} permutable atoms but the structure has {membership.shape[1]}."
        )
    columns_per_atom = membership.sum(axis=1)
    # An atom with one column (a permutable atom, or an atom bonded to just
    # one of them) is in the motif exactly when that column is kept: a
    # weighted sum counts them all at once.
    single = membership[columns_per_atom == 1].sum(axis=0)
    counts = masks.astype(np.int64) @ single
    shared = membership[columns_per_atom > 1]
    if len(shared):
        counts += _count_shared_atoms(masks, shared)
    return counts


def _count_shared_atoms(masks: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """How many atoms bonded to several permutable atoms each motif keeps."""
    member = sparse.csc_matrix(shared.T.astype(np.float32))
    counts = np.empty(len(masks), dtype=np.int64)
    # Chunks bound the dense (motifs x shared atoms) intermediate to ~64 MB.
    chunk = max(1, 16_000_000 // len(shared))
    for start in range(0, len(masks), chunk):
        kept_columns = (member.T @ masks[start : start + chunk].T.astype(np.float32)).T
        counts[start : start + chunk] = (kept_columns > 0.5).sum(axis=1)
    return counts


# --------------------------------------------------------------------------
# Masks as text


def mask_to_text(mask: np.ndarray) -> str:
    """A 1-D bool mask as its text form, e.g. ``[False, True] -> '01'``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 1:
        raise InputError(f"A mask must be one-dimensional, not shape {mask.shape}.")
    return (mask.astype(np.uint8) + _ZERO).tobytes().decode("ascii")


def masks_to_text(masks: np.ndarray) -> list[str]:
    """An (m, N) bool array of masks as a list of m '0'/'1' strings."""
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    n = masks.shape[1]
    if len(masks) == 0 or n == 0:
        return [""] * len(masks)
    chars = np.ascontiguousarray(masks.astype(np.uint8) + _ZERO)
    return [s.decode("ascii") for s in chars.view(f"S{n}").ravel()]


def masks_from_text(texts: list[str], n_permutable: int) -> np.ndarray:
    """Parse '0'/'1' strings of length ``n_permutable`` into an (m, N) bool array.

    Raises InputError naming the offending mask (1-based) for a wrong length,
    a character other than '0' or '1', or an empty (all-zero) motif.
    """
    masks = np.zeros((len(texts), n_permutable), dtype=bool)
    for i, text in enumerate(texts):
        masks[i] = _parse_mask(text.strip(), n_permutable, f"Mask {i + 1}")
    return masks


def parse_mask_file(path: str | Path, n_permutable: int) -> np.ndarray:
    """Read a mask file: one '0'/'1' string of length N per line.

    Blank lines and lines starting with '#' are skipped (a '#' after a mask
    starts a comment too). Raises InputError naming the file and the line
    number for a wrong length or character and for an all-zero motif.
    Returns an (m, N) bool array in file order.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the mask file {path}: {exc}.") from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            rows.append(_parse_mask(text, n_permutable, f"{path}, line {number}:"))
    if not rows:
        return np.zeros((0, n_permutable), dtype=bool)
    return np.vstack(rows)


def _parse_mask(text: str, n_permutable: int, where: str) -> np.ndarray:
    if len(text) != n_permutable:
        raise InputError(
            f"{where} the mask has {len(text)} characters but the structure has {n_permutable} permutable atoms."
        )
    bad = set(text) - {"0", "1"}
    if bad:
        raise InputError(f"{where} a mask may only contain '0' and '1', not {sorted(bad)[0]!r}.")
    mask = np.frombuffer(text.encode("ascii"), dtype=np.uint8) == ord("1")
    if not mask.any():
        raise InputError(f"{where} the mask keeps no atom (an empty motif).")
    return mask


# --------------------------------------------------------------------------
# ML-MotEx's uniform sampler


def sample_uniform_masks(
    n_permutable: int,
    n_new: int,
    rng: np.random.Generator,
    existing: set[str] | frozenset[str] = frozenset(),
    k_min: int = 1,
    k_max: int | None = None,
) -> tuple[list[str], bool]:
    """Draw ``n_new`` new distinct motifs the way ML-MotEx does.

    For each motif the number of kept atoms k is drawn uniformly from the
    sizes in [k_min, k_max] (default 1..N) that still have untaken masks, then
    a uniformly random subset of size k among the masks of that size not yet
    taken (a draw repeating a mask in ``existing`` or drawn earlier is drawn
    again). A size whose C(N, k) masks are all taken is dropped from the draw.

    Returns (new mask texts in draw order, exhausted): ``exhausted`` is True
    when every mask with k_min..k_max atoms is now taken, in which case fewer
    than ``n_new`` may have been returned. Deterministic for a given ``rng``
    state and ``existing`` set (its iteration order does not matter).
    """
    n = int(n_permutable)
    k_max = n if k_max is None else int(k_max)
    _check_sizes(n, n_new, int(k_min), k_max)
    sizes = list(range(int(k_min), k_max + 1))
    free = _free_per_size(n, sizes, existing)
    taken = set(existing)
    out: list[str] = []
    while len(out) < n_new and sum(free) > 0:
        ks = _draw_sizes(sizes, free, min(n_new - len(out), _SIZE_BATCH_MAX), rng)
        batch = np.empty(len(ks), dtype=object)
        for i, k in enumerate(sizes):
            where = np.flatnonzero(ks == k)
            if len(where):
                batch[where] = _draw_masks_of_size(n, k, len(where), free[i], rng, taken)
                free[i] -= len(where)
        out.extend(batch.tolist())
    return out, sum(free) == 0


def _check_sizes(n: int, n_new: int, k_min: int, k_max: int) -> None:
    if n < 1:
        raise InputError(f"A structure needs at least one permutable atom to sample motifs, not {n}.")
    if n_new < 0:
        raise InputError(f"The number of motifs to draw must be zero or more, not {n_new}.")
    if not 1 <= k_min <= k_max <= n:
        raise InputError(
            f"The motif size range must satisfy 1 <= min ({k_min}) <= max ({k_max}) <= {n} permutable atoms."
        )


def _free_per_size(n: int, sizes: list[int], existing: set[str] | frozenset[str]) -> list[int]:
    """Untaken masks per size, as Python ints: C(N, k) overflows int64 for big N.

    Texts in ``existing`` of another length than N are not masks of this
    structure and are ignored.
    """
    taken = [0] * (n + 1)
    for text in existing:
        if len(text) == n:
            taken[text.count("1")] += 1
    return [math.comb(n, k) - taken[k] for k in sizes]


def _draw_sizes(sizes: list[int], free: list[int], n_wanted: int, rng: np.random.Generator) -> np.ndarray:
    """Draw up to n_wanted sizes uniformly among those with untaken masks.

    The batch is cut just before the first draw that would exceed a size's
    remaining masks: from that point on the size is exhausted and the draw must
    be made without it, so the caller draws again with updated counts.
    """
    open_sizes = np.array([k for k, f in zip(sizes, free) if f > 0])
    ks = open_sizes[rng.integers(0, len(open_sizes), size=n_wanted)]
    cut = n_wanted
    for k, f in zip(sizes, free):
        if 0 < f < n_wanted:
            hits = np.flatnonzero(ks == k)
            if len(hits) > f:
                cut = min(cut, int(hits[f]))
    return ks[:cut]


def _draw_masks_of_size(
    n: int, k: int, count: int, n_free: int, rng: np.random.Generator, taken: set[str]
) -> list[str]:
    """``count`` new distinct masks with k atoms, uniform among the untaken ones.

    ``n_free`` (>= count) is how many masks of size k are still untaken. The
    new masks are added to ``taken``.
    """
    total = math.comb(n, k)
    filling = total - n_free + count
    if total <= _ENUMERATE_MAX or (total <= _ENUMERATE_FULL_MAX and 2 * filling > total):
        return _draw_by_enumeration(n, k, count, rng, taken)
    return _draw_by_rejection(n, k, count, rng, taken, free_fraction=n_free / total)


def _draw_by_enumeration(n: int, k: int, count: int, rng: np.random.Generator, taken: set[str]) -> list[str]:
    n_masks = math.comb(n, k)
    index = np.fromiter(combinations(range(n), k), dtype=np.dtype((np.intp, (k,))), count=n_masks)
    chars = np.full((n_masks, n), _ZERO, dtype=np.uint8)
    np.put_along_axis(chars, index.reshape(n_masks, k), ord("1"), axis=1)
    free = [s for s in (b.decode("ascii") for b in chars.view(f"S{n}").ravel()) if s not in taken]
    chosen = [free[i] for i in rng.choice(len(free), size=count, replace=False)]
    taken.update(chosen)
    return chosen


def _draw_by_rejection(
    n: int, k: int, count: int, rng: np.random.Generator, taken: set[str], free_fraction: float
) -> list[str]:
    chosen: list[str] = []
    while len(chosen) < count:
        missing = count - len(chosen)
        # Over-draw by the expected rejection rate so one round usually suffices.
        n_draw = min(int(missing / free_fraction * 1.1) + 8, _REJECTION_BATCH_MAX)
        for text in _random_subsets(n, k, n_draw, rng):
            if text not in taken:
                taken.add(text)
                chosen.append(text)
                if len(chosen) == count:
                    break
    return chosen


def _random_subsets(n: int, k: int, m: int, rng: np.random.Generator) -> list[str]:
    """m uniformly random k-subsets of n atoms as mask texts (repeats possible)."""
    keys = rng.random((m, n))
    # The k smallest of n i.i.d. keys form a uniformly random k-subset.
    threshold = np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
    return masks_to_text(keys <= threshold)


# --------------------------------------------------------------------------
# The cookie cutter


def sample_sphere_masks(
    positions_perm: np.ndarray,
    n_new: int,
    rng: np.random.Generator,
    existing: set[str] | frozenset[str] = frozenset(),
    radius_min: float = 3.0,
    radius_max: float = 10.0,
    centres: str = "atoms",
) -> tuple[list[str], bool]:
    """Draw new distinct motifs as spheres cut from the permutable atoms.

    Each draw takes a centre and a radius uniform in [radius_min, radius_max]
    (Å) and keeps the permutable atoms within the radius (distance <= radius).
    ``centres='atoms'`` puts the centre on a uniformly chosen permutable atom
    (so no sphere is empty); ``centres='box'`` draws it uniformly inside the
    axis-aligned bounding box of the permutable atoms. Empty spheres and masks
    already in ``existing`` or drawn earlier are skipped.

    positions_perm: (N, 3) Cartesian coordinates in Å of the permutable atoms.
    Returns (new mask texts in draw order, exhausted): ``exhausted`` is True
    when the cutter gave up after 10,000 draws in a row that gave nothing new,
    in which case fewer than ``n_new`` may have been returned.
    """
    positions = np.asarray(positions_perm, dtype=float)
    _check_sphere_inputs(positions, n_new, radius_min, radius_max, centres)
    return _collect_new(
        lambda remaining: _sphere_batch(positions, rng, radius_min, radius_max, centres),
        existing, n_new, _SPHERE_MAX_FRUITLESS,
    )


def _collect_new(draw_batch, existing, n_new: int, max_fruitless: int) -> tuple[list[str], bool]:
    """New mask texts from batches of draws, until ``n_new`` or ``max_fruitless`` draws in a row gave nothing new.

    ``draw_batch(remaining)`` returns an iterable of mask texts, None for a draw
    to reject (an empty motif). Texts in ``existing`` or drawn before are
    skipped. Returns (new texts in draw order, exhausted).
    """
    taken = set(existing)
    out: list[str] = []
    fruitless = 0
    while len(out) < n_new:
        for text in draw_batch(n_new - len(out)):
            if text is not None and text not in taken:
                taken.add(text)
                out.append(text)
                fruitless = 0
                if len(out) == n_new:
                    return out, False
            else:
                fruitless += 1
                if fruitless >= max_fruitless:
                    return out, True
    return out, False


def _check_sphere_inputs(
    positions: np.ndarray, n_new: int, radius_min: float, radius_max: float, centres: str
) -> None:
    if positions.ndim != 2 or positions.shape[1] != 3 or len(positions) == 0:
        raise InputError(f"Permutable atom positions must be an (N, 3) array with N >= 1, not shape {positions.shape}.")
    if n_new < 0:
        raise InputError(f"The number of motifs to draw must be zero or more, not {n_new}.")
    if not (0 <= radius_min <= radius_max and np.isfinite(radius_max)):
        raise InputError(
            f"The sphere radii must satisfy 0 <= min ({radius_min}) <= max ({radius_max}), in Å."
        )
    if centres not in ("atoms", "box"):
        raise InputError(f"Sphere centres must be 'atoms' or 'box', not {centres!r}.")


def _sphere_batch(
    positions: np.ndarray, rng: np.random.Generator, radius_min: float, radius_max: float, centres: str
) -> list[str | None]:
    """One batch of cookie-cutter draws; None stands for an empty sphere."""
    size = int(np.clip(_SPHERE_BATCH_CELLS // len(positions), 16, 1024))
    if centres == "atoms":
        centre = positions[rng.integers(0, len(positions), size=size)]
    else:
        low, high = positions.min(axis=0), positions.max(axis=0)
        centre = low + (high - low) * rng.random((size, 3))
    radius = rng.uniform(radius_min, radius_max, size=size)
    masks = cdist(centre, positions) <= radius[:, None]
    texts = masks_to_text(masks)
    return [t if m.any() else None for t, m in zip(texts, masks)]


# --------------------------------------------------------------------------
# Guided sampling: new motifs around the current answer


# Keep probabilities stay inside [floor, 1 - floor]: every atom is still kept in
# some motifs and removed in others, which the next explanation needs.
_GUIDED_FLOOR = 0.05
# Neighbourhood draws flip 1..this many atoms of one of the best motifs.
_GUIDED_MAX_FLIPS = 3
_GUIDED_MAX_FRUITLESS = 10_000
# An atom one standard deviation of the contributions below zero is kept with
# probability 1 / (1 + e^-2) = 0.88.
_GUIDED_SHARPNESS = 2.0


def sample_guided_masks(
    contributions: np.ndarray,
    best_masks: np.ndarray,
    n_new: int,
    rng: np.random.Generator,
    existing: set[str] | frozenset[str] = frozenset(),
    neighbourhood_fraction: float = 0.5,
) -> tuple[list[str], bool]:
    """Draw ``n_new`` new distinct motifs around the current answer.

    Two kinds of draws, mixed at random (a fraction ``neighbourhood_fraction``
    of the second kind):

    - **by contribution**: atom a is kept with probability
      1 / (1 + exp(2 c_a / s)), with c_a its contribution (negative: it
      belongs) and s the standard deviation of the contributions, kept within
      [0.05, 0.95] so that every atom is still kept in some motifs and removed
      in others;
    - **around the best fits**: one of ``best_masks`` ((k, N) bool, the best
      fitted motifs) with 1 to 3 of its atoms flipped, uniformly.

    Empty motifs and masks in ``existing`` or drawn before are drawn again.
    Returns (new mask texts in draw order, exhausted): ``exhausted`` is True
    when 10,000 draws in a row gave nothing new.
    """
    c = np.asarray(contributions, dtype=float)
    if c.ndim != 1 or c.size == 0 or not np.all(np.isfinite(c)):
        raise InputError("guided sampling needs one finite contribution per permutable atom.")
    if n_new < 0:
        raise InputError(f"The number of motifs to draw must be zero or more, not {n_new}.")
    n = c.size
    best = np.asarray(best_masks, dtype=bool).reshape(-1, n)
    spread = float(np.std(c))
    keep = 1.0 / (1.0 + np.exp(np.clip(_GUIDED_SHARPNESS * c / spread, -50, 50))) if spread > 0 else np.full(n, 0.5)
    keep = np.clip(keep, _GUIDED_FLOOR, 1.0 - _GUIDED_FLOOR)
    fraction = neighbourhood_fraction if len(best) else 0.0

    def draw_batch(remaining: int) -> list[str | None]:
        size = min(max(2 * remaining, 64), 100_000)
        near = rng.random(size) < fraction
        masks = rng.random((size, n)) < keep
        if near.any():
            rows = best[rng.integers(0, len(best), size=int(near.sum()))].copy()
            for row, k in zip(rows, rng.integers(1, _GUIDED_MAX_FLIPS + 1, size=len(rows))):
                row[rng.choice(n, size=min(int(k), n), replace=False)] ^= True
            masks[near] = rows
        return [text if mask.any() else None for text, mask in zip(masks_to_text(masks), masks)]

    return _collect_new(draw_batch, existing, n_new, _GUIDED_MAX_FRUITLESS)


def _guide(session, model, dataset: str | None, n_best: int = 20) -> tuple[np.ndarray, np.ndarray, str]:
    """Contributions of the latest explained model of a structure (for ``dataset`` when given), the masks of
    its best fits, and a description for ``motif.sampler``."""
    from sqlmodel import select

    from motex_db.models import AtomContribution, Dataset, FitResult, Motif, TrainedModel

    query = (
        select(TrainedModel).where(TrainedModel.starting_model_id == model.id).where(TrainedModel.series.is_(None))
        .where(select(AtomContribution.id).where(AtomContribution.trained_model_id == TrainedModel.id).exists())
        .order_by(TrainedModel.id.desc())
    )
    if dataset is not None:
        row = session.exec(select(Dataset.id).where(Dataset.name == dataset)).first()
        if row is None:
            raise InputError(f"there is no dataset '{dataset}'.")
        query = query.where(TrainedModel.dataset_id == row)
    trained = session.exec(query).first()
    if trained is None:
        raise InputError(
            f"guided sampling needs an explained model of '{model.name}'"
            + (f" and '{dataset}'" if dataset else "") + ": run motex-db train and explain first."
        )
    contributions = np.zeros(model.n_permutable)
    for index, value in session.exec(
        select(AtomContribution.atom_index, AtomContribution.contribution)
        .where(AtomContribution.trained_model_id == trained.id)
    ).all():
        contributions[index - 1] = value
    best = session.exec(
        select(Motif.mask).join(FitResult, FitResult.motif_id == Motif.id)
        .where(Motif.starting_model_id == model.id).where(FitResult.dataset_id == trained.dataset_id)
        .where(FitResult.fit_config_id == trained.fit_config_id).where(FitResult.status == "ok")
        .order_by(FitResult.rwp, Motif.id).limit(n_best)
    ).all()
    masks = masks_from_text(list(best), model.n_permutable) if best else np.zeros((0, model.n_permutable), dtype=bool)
    return contributions, masks, f"model={trained.id}"


# --------------------------------------------------------------------------
# The catalogue in the record


@dataclass(frozen=True)
class SampleOutcome:
    """What a call of :func:`sample_motifs` or :func:`add_mask_file` did."""

    structure: str
    requested: int
    added: int
    already_stored: int
    exhausted: bool
    sampler: str
    total: int
    # drawn motifs left out because a stored or newly drawn motif is their image (``dedup='isometry'``)
    isometric_skipped: int = 0


def _stored_masks(session, model_id: int) -> set[str]:
    from sqlmodel import select

    from motex_db.models import Motif

    return set(session.exec(select(Motif.mask).where(Motif.starting_model_id == model_id)).all())


def _insert_motifs(session, model, masks: list[str], sampler: str, signatures: list[str] | None = None) -> int:
    """Insert motifs in bulk, skipping masks another process stored meanwhile; returns how many went in."""
    from sqlalchemy import func, select as sa_select
    from sqlalchemy.dialects import postgresql, sqlite

    from motex_db.models import Motif, utcnow

    if not masks:
        return 0
    flags = np.isin(np.asarray(model.elements), model.permutable_elements)
    membership = membership_matrix(model.positions, flags, model.bond_cutoff)
    arrays = masks_from_text(masks, model.n_permutable)
    n_atoms = motif_atom_counts(arrays, membership)
    n_kept = arrays.sum(axis=1)
    now = utcnow()
    rows = [
        {"starting_model_id": model.id, "mask": m, "n_kept": int(k), "n_atoms": int(a), "sampler": sampler,
         "signature": g, "created_at": now}
        for m, k, a, g in zip(masks, n_kept, n_atoms, signatures or [None] * len(masks))
    ]
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    count = lambda: session.execute(
        sa_select(func.count()).select_from(Motif).where(Motif.starting_model_id == model.id)
    ).scalar_one()
    before = count()
    statement = dialect.insert(Motif.__table__).on_conflict_do_nothing(
        index_elements=["starting_model_id", "mask"]
    )
    for start in range(0, len(rows), 20_000):
        session.execute(statement, rows[start : start + 20_000])
    return count() - before


def sample_motifs(
    engine,
    structure: str,
    n: int,
    strategy: str = "uniform",
    seed: int | None = None,
    min_atoms: int = 1,
    max_atoms: int | None = None,
    radius_min: float = 3.0,
    radius_max: float = 10.0,
    dedup: str = "mask",
    data: str | None = None,
) -> SampleOutcome:
    """Add ``n`` new distinct motifs to a starting model's catalogue, in one transaction.

    With ``dedup='isometry'`` a drawn motif whose isometry signature (see
    :func:`motex_db.environments.motif_signatures`) is already stored, or drawn
    before it, is left out and another is drawn: an image of a stored motif under
    the model's symmetry has the same PDF and would only repeat its fit.

    ``strategy`` is 'uniform' (ML-MotEx's sampler; ``min_atoms``/``max_atoms``
    bound the number of kept permutable atoms), 'sphere' (the cookie cutter,
    radii in Å) or 'guided' (around the current answer: the contributions and
    best fits of the latest explained model, for dataset ``data`` when given;
    :func:`sample_guided_masks`). The seed (drawn when not given) is recorded in ``motif.sampler``;
    the same seed on the same catalogue gives the same motifs.
    """
    from motex_db.db import transaction
    from motex_db.structures import get_starting_model

    if n < 1:
        raise InputError(f"--n must be at least 1, not {n}.")
    if strategy not in ("uniform", "sphere", "guided"):
        raise InputError(f"unknown sampling strategy '{strategy}' (use uniform, sphere or guided).")
    if dedup not in ("mask", "isometry"):
        raise InputError(f"unknown --dedup '{dedup}' (use mask or isometry).")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    with transaction(engine) as session:
        model = get_starting_model(session, structure)
        stored = _stored_masks(session, model.id)
        if strategy == "uniform":
            k_max = model.n_permutable if max_atoms is None else max_atoms
            if not 1 <= min_atoms <= k_max <= model.n_permutable:
                raise InputError(
                    f"--min-atoms {min_atoms} and --max-atoms {k_max} must satisfy "
                    f"1 <= min <= max <= {model.n_permutable} (the permutable atoms of '{structure}')."
                )
            draw = lambda count, taken: sample_uniform_masks(model.n_permutable, count, rng, taken, min_atoms, k_max)
            sampler = f"uniform k={min_atoms}..{k_max} seed={seed}"
        elif strategy == "guided":
            contributions, best, source = _guide(session, model, data)
            draw = lambda count, taken: sample_guided_masks(contributions, best, count, rng, taken)
            sampler = f"guided {source} seed={seed}"
        else:
            flags = np.isin(np.asarray(model.elements), model.permutable_elements)
            draw = lambda count, taken: sample_sphere_masks(
                model.positions[flags], count, rng, taken, radius_min, radius_max
            )
            sampler = f"sphere r={radius_min:g}..{radius_max:g} seed={seed}"
        if dedup == "isometry":
            masks, signatures, exhausted, skipped = _draw_without_images(session, model, n, stored, draw)
            sampler += " dedup=isometry"
        else:
            (masks, exhausted), signatures, skipped = draw(n, stored), None, 0
        added = _insert_motifs(session, model, masks, sampler, signatures)
        return SampleOutcome(structure, n, added, len(masks) - added, exhausted, sampler, len(stored) + added, skipped)


def _stored_signatures(session, model) -> set[str]:
    """Isometry signatures of a model's stored motifs; those stored without one get theirs now."""
    from sqlalchemy import bindparam, update
    from sqlmodel import select

    from motex_db.environments import motif_signatures
    from motex_db.models import Motif

    rows = session.exec(select(Motif.id, Motif.mask, Motif.signature).where(Motif.starting_model_id == model.id)).all()
    known = {signature for _, _, signature in rows if signature is not None}
    missing = [(motif_id, mask) for motif_id, mask, signature in rows if signature is None]
    if missing:
        flags = np.isin(np.asarray(model.elements), model.permutable_elements)
        membership = membership_matrix(model.positions, flags, model.bond_cutoff)
        masks = masks_from_text([mask for _, mask in missing], model.n_permutable)
        signatures = motif_signatures(masks, membership, model.elements, model.positions)
        statement = update(Motif.__table__).where(Motif.__table__.c.id == bindparam("motif_id")).values(
            signature=bindparam("new_signature"))
        session.execute(statement, [{"motif_id": i, "new_signature": g} for (i, _), g in zip(missing, signatures)])
        known.update(signatures)
    return known


def _draw_without_images(session, model, n: int, stored: set[str], draw, rounds: int = 50):
    """Draw up to ``n`` masks none of which is an image of a stored motif or of another drawn one.

    Returns (masks, their signatures, exhausted, how many drawn masks were left out as images).
    """
    from motex_db.environments import motif_signatures

    known = _stored_signatures(session, model)
    flags = np.isin(np.asarray(model.elements), model.permutable_elements)
    membership = membership_matrix(model.positions, flags, model.bond_cutoff)
    taken, masks, signatures, skipped, exhausted = set(stored), [], [], 0, False
    for _ in range(rounds):
        if len(masks) >= n or exhausted:
            break
        drawn, exhausted = draw(n - len(masks), taken)
        if not drawn:
            break
        taken.update(drawn)
        for mask, signature in zip(drawn, motif_signatures(
                masks_from_text(drawn, model.n_permutable), membership, model.elements, model.positions)):
            if signature in known:
                skipped += 1
                continue
            known.add(signature)
            masks.append(mask)
            signatures.append(signature)
    return masks, signatures, exhausted, skipped


def add_mask_file(engine, structure: str, path: str | Path) -> SampleOutcome:
    """Add hand-picked motifs from a file of '0'/'1' lines; masks already stored are skipped."""
    from motex_db.db import transaction
    from motex_db.structures import get_starting_model

    with transaction(engine) as session:
        model = get_starting_model(session, structure)
        masks = masks_to_text(parse_mask_file(path, model.n_permutable))
        stored = _stored_masks(session, model.id)
        new = list(dict.fromkeys(m for m in masks if m not in stored))
        added = _insert_motifs(session, model, new, f"file {Path(path).name}")
        return SampleOutcome(structure, len(masks), added, len(masks) - added, False, "file", len(stored) + added)
