"""Pairs of atoms and their classes (element pair, distance), the unit the PDF kernels work on.

Two pairs belong to the same class when their species are the same and their
distances are equal within ``DISTANCE_TOLERANCE`` (isotropic classes), or their
|dx|, |dy| and |dz| are (anisotropic classes, needed when x, y and z are zoomed
by different factors). Symmetric clusters have few classes: the 5356 pairs of
the two-Keggin model ``109725.xyz`` fall into about 1300.

A model without repeated distances (an amorphous shell, a displaced or
simulated snapshot) makes every pair its own class. For those,
:func:`grid_pair_classes` spreads each pair over the few nearest points of a
uniform distance grid with Lagrange interpolation weights: the classes are
then the grid points (per species pair), however many pairs there are, and a
kernel that is smooth in the pair distance is reproduced to the
interpolation error (see :func:`grid_pair_classes`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from motex_db.errors import InputError

__all__ = [
    "DISTANCE_TOLERANCE",
    "PairClasses",
    "species_index",
    "iter_pairs",
    "group_pairs",
    "cluster_pair_classes",
    "lagrange_weights",
    "GridClasses",
    "grid_pair_classes",
]

#: Distances (Å) closer than this are one class; class distance is the members' mean.
DISTANCE_TOLERANCE = 1e-9
# Pairs per block when a large cluster's pairs are enumerated piecewise.
_PAIR_BLOCK = 1 << 21


def species_index(elements: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct symbols in first-seen order and each atom's index into them."""
    symbols: list[str] = []
    lookup: dict[str, int] = {}
    index = np.empty(len(elements), dtype=np.int64)
    for a, element in enumerate(elements):
        if not isinstance(element, str) or not element.strip():
            raise InputError(f"Atom {a + 1} has no element symbol ({element!r}).")
        key = element.strip()
        if key not in lookup:
            lookup[key] = len(symbols)
            symbols.append(key)
        index[a] = lookup[key]
    return symbols, index


def pair_code(species_i: np.ndarray, species_j: np.ndarray, n_species: int) -> np.ndarray:
    """Unordered species pair as one integer: min * n_species + max."""
    lo = np.minimum(species_i, species_j)
    hi = np.maximum(species_i, species_j)
    return lo * n_species + hi


def iter_pairs(positions: np.ndarray, block: int = _PAIR_BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """All pairs i < j as (i, j, r_j - r_i) in blocks of rows, so memory stays bounded."""
    n = positions.shape[0]
    start = 0
    while start < n - 1:
        # rows start..stop-1 hold sum (n - 1 - i) pairs; take rows until the block is full
        stop = start + 1
        count = n - 1 - start
        while stop < n - 1 and count + (n - 1 - stop) <= block:
            count += n - 1 - stop
            stop += 1
        i, j = _rows_pairs(n, start, stop)
        yield i, j, positions[j] - positions[i]
        start = stop


def _rows_pairs(n: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = n - 1 - np.arange(start, stop)
    i = np.repeat(np.arange(start, stop), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    j = i + 1 + offsets
    return i, j


def check_distinct(i: np.ndarray, j: np.ndarray, distance: np.ndarray) -> None:
    """Raise when two atoms sit on the same spot (srreal cannot weight such a pair by 1/d either)."""
    bad = np.flatnonzero(distance < 1e-8)
    if bad.size:
        a, b = int(i[bad[0]]) + 1, int(j[bad[0]]) + 1
        raise InputError(f"Atoms {a} and {b} are at the same position; remove the duplicate.")


@dataclass(frozen=True)
class PairClasses:
    """Pairs grouped into classes.

    - ``code``: species pair code of each class (see :func:`pair_code`), (n_classes,)
    - ``components``: class geometry, mean over members: |d| (n_classes,) for
      isotropic classes, (|dx|, |dy|, |dz|) (n_classes, 3) for anisotropic ones (Å)
    - ``size``: number of unordered pairs per class, (n_classes,)
    - ``of_pair``: class index of each input pair, (n_pairs,) (None when pairs were merged blockwise)
    """

    code: np.ndarray
    components: np.ndarray
    size: np.ndarray
    of_pair: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return int(self.code.size)

    def distances(self, zoom: tuple[float, float, float] | float = 1.0) -> np.ndarray:
        """Class distances (Å) with the coordinates multiplied by ``zoom``."""
        if self.components.ndim == 1:
            factors = np.atleast_1d(np.asarray(zoom, dtype=float))
            if np.any(factors != factors[0]):
                raise InputError("Isotropic pair classes cannot take three different zoom factors.")
            return self.components * factors[0]
        factors = np.broadcast_to(np.asarray(zoom, dtype=float), (3,))
        return np.sqrt(((self.components * factors) ** 2).sum(axis=1))


def group_pairs(
    code: np.ndarray, components: np.ndarray, weight: np.ndarray | None = None, tol: float = DISTANCE_TOLERANCE
) -> PairClasses:
    """Group items with the same code and components equal within ``tol``.

    ``weight`` gives each item's multiplicity (default 1); class components are
    the weighted means.
    """
    components = np.asarray(components, dtype=float)
    n = code.size
    if n == 0:  # no pairs at all (one atom, or every pair out of reach)
        return PairClasses(code[:0], components[:0].copy(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    cols = components.reshape(n, -1)
    keys = np.rint(cols / tol).astype(np.int64)
    w = np.ones(n, dtype=np.int64) if weight is None else np.asarray(weight, dtype=np.int64)
    new = np.ones(n, dtype=bool)
    span = int(keys.max()) + 1
    if keys.shape[1] == 1 and int(code.max()) < (1 << 62) // span:
        # one integer key (code, distance) sorts several times faster than a lexsort
        key = code * span + keys[:, 0]
        order = np.argsort(key)
        sorted_key = key[order]
        new[1:] = sorted_key[1:] != sorted_key[:-1]
    else:
        # lexsort: last key is primary
        order = np.lexsort(tuple(keys[:, c] for c in range(keys.shape[1] - 1, -1, -1)) + (code,))
        sorted_keys = np.column_stack((code[order], keys[order]))
        new[1:] = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)
    class_sorted = np.cumsum(new) - 1
    of_item = np.empty(n, dtype=np.int64)
    of_item[order] = class_sorted
    n_classes = int(class_sorted[-1]) + 1
    size = np.bincount(of_item, weights=w, minlength=n_classes).astype(np.int64)
    means = np.empty((n_classes, cols.shape[1]))
    for c in range(cols.shape[1]):
        means[:, c] = np.bincount(of_item, weights=w * cols[:, c], minlength=n_classes) / size
    class_code = code[order][new]
    if components.ndim == 1:
        means = means[:, 0]
    return PairClasses(class_code, means, size, of_item)


def cluster_pair_classes(
    positions: np.ndarray,
    species: np.ndarray,
    n_species: int,
    keep: Callable[[np.ndarray], np.ndarray] | None = None,
) -> PairClasses:
    """Isotropic pair classes of a whole cluster, enumerated blockwise (no per-pair index kept).

    ``keep(distances) -> bool array`` drops pairs that cannot contribute
    (beyond the reach of the real-space calculator) before the grouping sort.
    """
    parts_code, parts_d, parts_w = [], [], []
    for i, j, diff in iter_pairs(positions):
        d = np.sqrt((diff**2).sum(axis=1))
        check_distinct(i, j, d)
        if keep is not None:
            kept = keep(d)
            i, j, d = i[kept], j[kept], d[kept]
        block = group_pairs(pair_code(species[i], species[j], n_species), d)
        parts_code.append(block.code)
        parts_d.append(block.components)
        parts_w.append(block.size)
    if not parts_code:
        return PairClasses(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
    if len(parts_code) == 1:
        return PairClasses(parts_code[0], parts_d[0], parts_w[0])
    merged = group_pairs(np.concatenate(parts_code), np.concatenate(parts_d), np.concatenate(parts_w))
    return PairClasses(merged.code, merged.components, merged.size)


def lagrange_weights(x: np.ndarray, n_points: int) -> np.ndarray:
    """(len(x), n_points) weights of the Lagrange polynomial through the nodes 0, 1, ..., n_points - 1 at ``x``.

    sum_j w[:, j] f(j) interpolates f at x; the weights sum to 1.
    """
    x = np.asarray(x, dtype=float)[:, None]
    nodes = np.arange(n_points)
    out = np.ones((x.shape[0], n_points))
    for k in range(n_points):
        factor = (x - k) / np.where(nodes == k, 1.0, nodes - k)
        out *= np.where(nodes == k, 1.0, factor)
    return out


@dataclass(frozen=True)
class GridClasses:
    """Pairs spread over grid-point classes: :class:`PairClasses` (components: the grid distances, Å;
    size: the summed weights, fractional) and the sparse map from pairs to classes as
    (class, pair, weight) triples, ``n_points`` per pair."""

    classes: PairClasses
    class_of_entry: np.ndarray
    pair_of_entry: np.ndarray
    weight_of_entry: np.ndarray


def grid_pair_classes(code: np.ndarray, distance: np.ndarray, step: float, n_points: int) -> GridClasses:
    """Pair classes on a uniform distance grid of ``step`` Å, ``n_points``-point Lagrange interpolation.

    A pair at distance d = (b + x) step, b integer, 0 <= x < 1, belongs to the
    grid points b - n_points/2 + 1 ... b + n_points/2 of its species pair with
    the Lagrange weights of x there; so for any function K of distance,
    sum_pairs K(d) ~ sum_points (summed weights) K(point). For an isotropic
    zoom z the grid scales with the distances and the weights do not change,
    so one set of classes serves every zoom. The interpolation error of
    sin(Q d) is at most ~ prod_j |x - j| / n_points! (Q step)^n_points
    (e.g. 6 points, step 0.01 Å, Q = 24 Å^-1: 1e-6). ``n_points`` must be
    even and every distance at least n_points/2 steps (grid points stay
    positive). Classes are ordered by grid distance, then species pair code.
    """
    if n_points < 2 or n_points % 2:
        raise InputError(f"The distance grid needs an even number of points, at least 2, not {n_points}.")
    distance = np.asarray(distance, dtype=float)
    code = np.asarray(code, dtype=np.int64)
    t = distance / step
    base = np.floor(t).astype(np.int64) - (n_points // 2 - 1)
    if distance.size and int(base.min()) < 1:
        raise InputError(
            f"Pair distances below {n_points // 2 * step:g} Å cannot be put on a {step:g} Å grid of {n_points} points."
        )
    weights = lagrange_weights(t - base, n_points)
    point = base[:, None] + np.arange(n_points)
    span = int(point.max(initial=0)) + 1
    key = (code[:, None] * span + point).ravel()
    unique, inverse = np.unique(key, return_inverse=True)
    class_code, class_point = np.divmod(unique, span)
    rank = np.lexsort((class_code, class_point))  # by distance, then code
    new_index = np.empty_like(rank)
    new_index[rank] = np.arange(rank.size)
    class_of_entry = new_index[inverse.ravel()]
    pair_of_entry = np.repeat(np.arange(distance.size), n_points)
    weight_of_entry = weights.ravel()
    size = np.bincount(class_of_entry, weights=weight_of_entry, minlength=rank.size)
    classes = PairClasses(class_code[rank], class_point[rank] * step, size)
    return GridClasses(classes, class_of_entry, pair_of_entry, weight_of_entry)
