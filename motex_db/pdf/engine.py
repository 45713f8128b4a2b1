"""G(r) of many motifs of one starting model at once, without building a structure per motif.

Every motif's pairs are a subset of the starting model's pairs. We group the
model's pairs into classes (species pair, equal distance), once; a motif is
then a vector of class counts, and its G(r) is

    G_m(r) = sum_q P[q, r] (sum_c counts[m, c] K[c, q]) / N_m(q)

with the class kernels K (:mod:`motex_db.pdf.kernels`) built once per zoom and
cached, the projection P built once, and N_m = (sum of f over the motif's
atoms)^2 / (its number of atoms), srreal's N <f>^2. Counting is a sparse
matrix product over the pairs; the rest are dense BLAS products, done in
chunks of motifs so memory stays bounded however many motifs come in.

An isotropic zoom scales every distance alike, so the isotropic classes and
the counts do not depend on its value; three different zoom factors need the
finer anisotropic classes (equal |dx|, |dy|, |dz|), also counted once.

A starting model without repeated distances makes every pair its own class
(tens of thousands for 300 atoms), and every product above grows with that.
Given ``pair_grid_angstrom``, the engine then puts the pairs on a distance
grid instead (:func:`motex_db.pdf.pairs.grid_pair_classes`, 6-point Lagrange
weights): the classes are the grid points, a motif's "counts" are its pairs'
summed weights, and G(r) differs from the exact one by the interpolation
error of the kernels (about 5e-6 of max |G| on a 0.02 Å grid at Qmax
24 Å^-1, tests/test_large_models.py). Counting on the grid goes through
dense products per block of pairs close in distance. It does so only for isotropic zooms and only
where the grid has at most a quarter as many classes as the exact grouping,
so models with repeated distances (crystal-derived clusters) keep their
exact classes and results.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse
from numpy.typing import ArrayLike
from threadpoolctl import ThreadpoolController

from motex_db.errors import InputError
from motex_db.pdf.calculators import ClusterModel, check_cluster_input
from motex_db.pdf.kernels import DebyeTransform, RealSpaceTransform, gaussian_half_width
from motex_db.pdf.pairs import PairClasses, check_distinct, grid_pair_classes, group_pairs, pair_code
from motex_db.pdf.parameters import PDFParameters, Zoom, zoom_factors

__all__ = ["MotifPDFEngine"]

# Pair-presence elements (pairs x motifs) per chunk: about 4 MiB of booleans,
# which benchmarks fastest on a 2-core machine (the working set stays in cache).
_CHUNK_BUDGET = 1 << 22
_CHUNK_MIN, _CHUNK_MAX = 16, 4096
# Singular values of the projection below this fraction of the largest are dropped.
_RANK_TOLERANCE = 1e-13
# Distance grid: points per pair (Lagrange order + 1), and the most classes the
# grid may have, as a fraction of the exact grouping's, for it to be used.
GRID_POINTS = 6
_GRID_MAX_FRACTION = 0.25
# Grid counting: pairs of one species pair within this many grid steps form one dense block.
_GRID_BLOCK_STEPS = 8
# Motifs per chunk with grid counting (fastest on a 2-core machine).
_GRID_CHUNK = 256


@functools.cache
def _blas_controller() -> ThreadpoolController:
    """The BLAS thread pools of this process (looked up once)."""
    return ThreadpoolController()


@dataclass(frozen=True)
class _Partition:
    """One way of classing the starting model's pairs, with classes in increasing distance (at zoom 1)."""

    classes: PairClasses
    pair_i: np.ndarray  # first atom of each pair, pairs sorted by class
    pair_j: np.ndarray
    class_end: np.ndarray  # one past each class's last pair in that order
    indicator: sparse.csr_matrix  # (n_classes, n_pairs) 0/1: which class each sorted pair is in


class MotifPDFEngine:
    """Batched G(r) of motifs of one starting model, equal to :func:`cluster_pdf` of each motif.

    Parameters:

    - ``elements``: symbol per atom of the starting model.
    - ``positions_angstrom``: (n_atoms, 3) coordinates, Å, before any zoom.
    - ``membership``: (n_atoms, N) bool; ``membership[a, k]`` is True when atom
      a is present whenever permutable atom k is kept (the permutable atom k
      itself, and the atoms bonded to it). Atom a is in a motif iff some kept
      k has ``membership[a, k]``.
    - ``r_angstrom``: the output r grid, Å (any grid, as for :func:`cluster_pdf`).
    - ``params``: the calculation; ``params.zoom`` is the default zoom.
    - ``rmax_angstrom``: as for :func:`cluster_pdf`.
    - ``chunk_size``: motifs per chunk (default: from a memory budget).
    - ``kernel_cache_size``: how many zooms' kernels to keep.
    - ``pair_grid_angstrom``: distance grid step (Å) for isotropic classes of
      models without repeated distances (module docstring); :attr:`pair_grid`
      says whether it is used (the step) or not (None). Default: exact classes.

    A motif is a length-N 0/1 mask. A motif with fewer than two atoms has no
    pairs and gives G = 0, as srreal does.

    One difference from srreal run motif by motif: when the ripple extension
    6 * 2 pi / qmax plus the widest peak tail exceeds 10 Å (qmax below about
    4 Å^-1), srreal shrinks the extension according to the largest Biso in the
    structure; the engine uses the starting model's largest Biso for every motif.
    """

    def __init__(
        self,
        elements: Sequence[str],
        positions_angstrom: ArrayLike,
        membership: ArrayLike,
        r_angstrom: ArrayLike,
        params: PDFParameters,
        *,
        rmax_angstrom: float | None = None,
        chunk_size: int | None = None,
        kernel_cache_size: int = 32,
        pair_grid_angstrom: float | None = None,
    ):
        elements, positions, r = check_cluster_input(elements, positions_angstrom, r_angstrom)
        membership = np.asarray(membership)
        if membership.ndim != 2 or membership.shape[0] != len(elements):
            raise InputError(
                f"membership must be an (n_atoms, n_permutable) array with n_atoms = {len(elements)}, "
                f"not shape {membership.shape}."
            )
        if membership.dtype != bool:
            if not np.all((membership == 0) | (membership == 1)):
                raise InputError("membership must hold only True/False (or 1/0).")
            membership = membership.astype(bool)
        if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
            raise InputError(f"chunk_size must be a positive integer, not {chunk_size!r}.")
        self.params = params
        self.r = r
        self.n_atoms = len(elements)
        self.n_permutable = membership.shape[1]
        self._model = ClusterModel(elements, params)
        self._membership_t = np.ascontiguousarray(membership.T, dtype=np.float32)  # (N, n_atoms)
        self._species_onehot = np.zeros((self.n_atoms, self._model.n_species))
        self._species_onehot[np.arange(self.n_atoms), self._model.species] = 1.0
        self._rmax = rmax_angstrom

        i, j = np.triu_indices(self.n_atoms, 1)
        diff = positions[j] - positions[i]
        distance = np.sqrt((diff**2).sum(axis=1))
        check_distinct(i, j, distance)
        code = pair_code(self._model.species[i], self._model.species[j], self._model.n_species)
        self._pairs = (i, j, diff, distance, code)
        self._partitions: dict[str, _Partition] = {}
        n_pairs = max(int(i.size), 1)
        default_chunk = int(np.clip(_CHUNK_BUDGET // n_pairs, _CHUNK_MIN, _CHUNK_MAX))
        self.chunk_size = int(chunk_size) if chunk_size else default_chunk
        self._kernel_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._kernel_cache_size = int(kernel_cache_size)
        self._transforms: dict[int, RealSpaceTransform | DebyeTransform] = {}
        self._indicators: dict[tuple[int, int], sparse.csr_matrix] = {}
        self._grid_blocks: dict[int, list[tuple]] = {}
        self._factors: dict[int, tuple] = {}
        self.pair_grid = self._choose_grid(pair_grid_angstrom)
        if self.pair_grid is not None and not chunk_size:
            # grid counting holds one block's pair presence at a time, not all pairs'
            self.chunk_size = _GRID_CHUNK
        self.transform()  # builds the default projection; refuses a bad rmax_angstrom now

    def _choose_grid(self, step: float | None) -> float | None:
        """The grid step when a distance grid has far fewer classes than the exact grouping, else None."""
        if step is None:
            return None
        if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
            raise InputError(f"pair_grid_angstrom must be a positive number of Å, not {step!r}.")
        _, _, _, distance, code = self._pairs
        if distance.size == 0 or float(distance.min()) < (GRID_POINTS // 2 + 1) * step:
            return None
        grid = grid_pair_classes(code, distance, float(step), GRID_POINTS)
        exact = group_pairs(code, distance).n_classes
        if grid.classes.n_classes > _GRID_MAX_FRACTION * exact:
            return None
        self._grid = grid
        return float(step)

    # ------------------------------------------------------------------ zoom and classes

    def _zoom(self, zoom: Zoom | None) -> tuple[float, float, float]:
        return zoom_factors(self.params.zoom if zoom is None else zoom)

    def _kind(self, zoom_xyz: tuple[float, float, float]) -> str:
        if zoom_xyz[0] == zoom_xyz[1] == zoom_xyz[2]:
            return "grid" if self.pair_grid is not None else "iso"
        return "aniso"

    def _partition(self, kind: str) -> _Partition:
        if kind == "grid" and kind not in self._partitions:
            self._partitions[kind] = self._grid_partition()
        if kind not in self._partitions:
            i, j, diff, distance, code = self._pairs
            raw = group_pairs(code, distance if kind == "iso" else np.abs(diff))
            # renumber classes by increasing zoom-1 distance, so the classes a
            # real-space calculation can reach form a leading block
            reach = raw.components if kind == "iso" else np.sqrt((raw.components**2).sum(axis=1))
            rank = np.argsort(reach, kind="stable")
            new_index = np.empty_like(rank)
            new_index[rank] = np.arange(rank.size)
            classes = PairClasses(raw.code[rank], raw.components[rank], raw.size[rank], new_index[raw.of_pair])
            order = np.argsort(classes.of_pair, kind="stable")
            indicator = sparse.csr_matrix(
                (np.ones(order.size, dtype=np.float32), (classes.of_pair[order], np.arange(order.size))),
                shape=(classes.n_classes, order.size),
            )
            self._partitions[kind] = _Partition(
                classes, i[order], j[order], np.cumsum(classes.size), indicator
            )
        return self._partitions[kind]

    def _grid_partition(self) -> _Partition:
        """The grid classes; pairs sorted by distance, so the pairs of the leading classes form a leading block."""
        i, j, _, distance, _ = self._pairs
        grid = self._grid
        order = np.argsort(distance, kind="stable")
        position = np.empty_like(order)
        position[order] = np.arange(order.size)
        columns = position[grid.pair_of_entry]
        n_classes = grid.classes.n_classes
        # one past the last (sorted) pair that touches class c or an earlier one
        last = np.zeros(n_classes, dtype=np.int64)
        np.maximum.at(last, grid.class_of_entry, columns + 1)
        indicator = sparse.csr_matrix(
            (grid.weight_of_entry.astype(np.float32), (grid.class_of_entry, columns)), shape=(n_classes, order.size)
        )
        return _Partition(grid.classes, i[order], j[order], np.maximum.accumulate(last), indicator)

    def classes(self, zoom: Zoom | None = None) -> PairClasses:
        """The pair classes used at this zoom (isotropic, or anisotropic when the three factors differ)."""
        return self._partition(self._kind(self._zoom(zoom))).classes

    def n_classes(self, zoom: Zoom | None = None) -> int:
        """Number of pair classes at this zoom (the columns of :meth:`class_counts`)."""
        return self.classes(zoom).n_classes

    def n_active(self, zoom: Zoom | None = None) -> int:
        """Classes 0..n_active-1 are all that can contribute at this zoom (all classes for the Debye calculator).

        The real-space calculator ignores pairs whose peak lies wholly beyond its
        extended range (rmax + 6 termination ripples); classes are ordered by
        distance, so those form a trailing block that counting can skip.
        """
        zoom_xyz = self._zoom(zoom)
        classes = self.classes(zoom_xyz)
        transform = self.transform(zoom_xyz)
        if not isinstance(transform, RealSpaceTransform) or classes.n_classes == 0:
            return classes.n_classes
        distance = classes.distances(zoom_xyz)
        lim = transform.limits
        fwhm = self._model.class_fwhm(classes, distance)
        reaches = distance - gaussian_half_width(fwhm) < lim.ext_hi * lim.rstep
        return int(np.flatnonzero(reaches).max(initial=-1)) + 1

    # ------------------------------------------------------------------ building blocks

    def transform(self, zoom: Zoom | None = None) -> RealSpaceTransform | DebyeTransform:
        """The Q-space machinery (``q``, ``projection``) used at this zoom."""
        zoom_xyz = self._zoom(zoom)
        if self.params.calculator == "real":
            key = 0
        else:
            # the Debye quadrature must resolve the longest pair at this zoom;
            # round the need up to 10 % steps so nearby zooms share one quadrature
            longest = float(self._pairs[3].max(initial=0.0)) * max(zoom_xyz)
            key = max(1, math.ceil(math.log(max(longest, 1.0)) / math.log(1.1)))
        if key not in self._transforms:
            if self.params.calculator == "real":
                self._transforms[key] = self._model.transform(self.r, 0.0, rmax_angstrom=self._rmax)
            else:
                self._transforms[key] = self._model.transform(self.r, 1.1**key, rmax_angstrom=self._rmax)
        return self._transforms[key]

    @property
    def q(self) -> np.ndarray:
        """Q points (Å^-1) of the kernels at the default zoom."""
        return self.transform().q

    def projection(self, zoom: Zoom | None = None) -> np.ndarray:
        """(n_q, n_r) map from F(Q) on :attr:`q` to G(r): Q window, sine transform, qdamp envelope."""
        return self.transform(zoom).projection

    def projection_factors(self, zoom: Zoom | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(left, right)`` with ``projection(zoom) == left @ right`` to ~1e-13.

        ``right`` (k, n_r) has orthonormal rows spanning every G(r) the engine
        can produce on this grid: G is band-limited, so k (the numerical rank,
        singular values above 1e-13 of the largest) is far below n_r and n_q.
        ``left`` (n_q, k) maps F(Q) to coefficients in that basis.
        """
        transform = self.transform(zoom)
        key = id(transform)
        cached = self._factors.get(key)
        if cached is None or cached[0] is not transform:
            u, s, vt = np.linalg.svd(transform.projection, full_matrices=False)
            rank = int(np.count_nonzero(s > _RANK_TOLERANCE * s[0])) if s.size and s[0] > 0 else 0
            left, right = u[:, :rank] * s[:rank], np.ascontiguousarray(vt[:rank])
            left.setflags(write=False)
            right.setflags(write=False)
            cached = self._factors[key] = (transform, left, right)
        return cached[1], cached[2]

    @property
    def q_independent_normalisation(self) -> bool:
        """True when N <f>^2 is one number per motif (real-space calculator, or neutrons)."""
        return self.params.calculator == "real" or self.params.radiation == "neutron"

    def presence(self, masks: ArrayLike) -> np.ndarray:
        """(n_motifs, n_atoms) bool: which atoms each motif holds."""
        masks = self._check_masks(masks)
        return (masks.astype(np.float32) @ self._membership_t) > 0.5

    def class_counts(self, masks: ArrayLike, zoom: Zoom | None = None, n_classes: int | None = None) -> np.ndarray:
        """(n_motifs, n_classes) float64: unordered pairs of each class in each motif.

        On a :attr:`pair_grid` a "count" is the motif's pairs' summed grid weights (fractional).

        ``n_classes`` limits the count to the leading classes (see :meth:`n_active`).
        """
        masks = self._check_masks(masks)
        partition = self._partition(self._kind(self._zoom(zoom)))
        n = partition.classes.n_classes if n_classes is None else int(n_classes)
        if not 0 <= n <= partition.classes.n_classes:
            raise InputError(f"n_classes must be between 0 and {partition.classes.n_classes}, not {n_classes}.")
        out = np.empty((masks.shape[0], n))
        # on the grid every product here is small: one BLAS thread (see _grid_counts_t)
        single = partition is self._partitions.get("grid")
        with _blas_controller().limit(limits=1, user_api="blas") if single else contextlib.nullcontext():
            for start in range(0, masks.shape[0], self.chunk_size):
                stop = start + self.chunk_size
                out[start:stop] = self._counts_t(self.presence(masks[start:stop]), partition, n).T
        return out

    def _counts_t(self, presence: np.ndarray, partition: _Partition, n_classes: int) -> np.ndarray:
        """(n_classes, n_motifs) counts from presence: pair presence, then a sparse sum per class."""
        n_pairs = int(partition.class_end[n_classes - 1]) if n_classes > 0 else 0
        key = (id(partition), n_classes)
        indicator = self._indicators.get(key)
        if indicator is None:
            indicator = self._indicators[key] = partition.indicator[:n_classes, :n_pairs].tocsr()
        # atoms as rows: gathering whole rows is a memory copy, not a strided gather
        present = np.ascontiguousarray(presence.T)
        if partition is self._partitions.get("grid"):
            return self._grid_counts_t(present, indicator, n_classes)
        pair_present = present[partition.pair_i[:n_pairs]] & present[partition.pair_j[:n_pairs]]
        return np.asarray(indicator @ pair_present.astype(np.float32), dtype=np.float64)

    def _grid_counts_t(self, present: np.ndarray, indicator: sparse.csr_matrix, n_classes: int) -> np.ndarray:
        """Grid counts as a few dense products: each block of pairs touches a short run of classes.

        A pair has GRID_POINTS weights; in a sparse product each costs a scalar
        loop step, while a block of pairs close in distance (one species pair)
        touches only ~GRID_POINTS + _GRID_BLOCK_STEPS classes, so a dense
        (classes x pairs) @ (pairs x motifs) product per block does the same
        sum through BLAS, several times faster.
        """
        blocks = self._grid_blocks.get(n_classes)
        if blocks is None:
            blocks = self._grid_blocks[n_classes] = self._make_grid_blocks(indicator)
        out = np.zeros((n_classes, present.shape[1]))
        present = present.astype(np.float32)  # 0/1: a product is the pair's presence
        # small products: BLAS threads only add synchronisation (20x slower when a core is busy)
        with _blas_controller().limit(limits=1, user_api="blas"):
            for pair_i, pair_j, rows, weights in blocks:
                out[rows] += weights @ (present[pair_i] * present[pair_j])
        return out

    def _make_grid_blocks(self, indicator: sparse.csr_matrix) -> list[tuple]:
        partition = self._partitions["grid"]
        n_pairs = indicator.shape[1]
        entries = indicator.tocoo()
        # a block: one species pair, pair distances within _GRID_BLOCK_STEPS grid steps
        distance = self._pairs[3]
        code = self._pairs[4]
        order = np.argsort(distance, kind="stable")[:n_pairs]  # the partition's pair order
        steps = np.floor(distance[order] / (self.pair_grid * _GRID_BLOCK_STEPS)).astype(np.int64)
        block_of_pair = code[order] * (1 << 32) + steps
        blocks = []
        by_block = np.argsort(block_of_pair[entries.col], kind="stable")
        cols, rows, values = entries.col[by_block], entries.row[by_block], entries.data[by_block]
        keys = block_of_pair[cols]
        bounds = np.flatnonzero(np.diff(keys)) + 1
        for c, r, v in zip(np.split(cols, bounds), np.split(rows, bounds), np.split(values, bounds)):
            pairs, pair_index = np.unique(c, return_inverse=True)
            classes, class_index = np.unique(r, return_inverse=True)
            weights = np.zeros((classes.size, pairs.size), dtype=np.float32)
            weights[class_index, pair_index] = v
            blocks.append((partition.pair_i[pairs], partition.pair_j[pairs], classes, weights))
        return blocks

    def kernel_q(self, zoom: Zoom | None = None) -> np.ndarray:
        """(n_classes, n_q) per-class F(Q) kernel at this zoom (cached): weight f_a f_b per ordered pair.

        Multiply by class counts, divide by :meth:`normalisation`, project with
        :meth:`projection` to get G(r).
        """
        zoom_xyz = self._zoom(zoom)
        key = ("q", zoom_xyz)
        cached = self._cache_get(key)
        if cached is not None:
            return cached
        classes = self.classes(zoom_xyz)
        transform = self.transform(zoom_xyz)
        distance = classes.distances(zoom_xyz)
        fwhm = self._model.class_fwhm(classes, distance)
        # one pair of a class, counted in both orders as srreal's sum over i != j does
        weight = 2.0 * self._model.code_weight(classes.code, transform)
        kernel = transform.kernel_q(distance, fwhm, weight)
        kernel.setflags(write=False)
        return self._cache_put(key, kernel)

    def kernel(self, zoom: Zoom | None = None) -> np.ndarray:
        """(n_classes, n_r) per-class G(r) kernel at this zoom: ``kernel_q(zoom) @ projection(zoom)``.

        For the real calculator (and neutrons) the normalisation does not depend
        on Q, so G = class_counts @ kernel / normalisation. For X-ray Debye it
        does; combine kernel_q, normalisation and projection there. Not cached
        (it is n_r wide); keep it while you use it.
        """
        zoom_xyz = self._zoom(zoom)
        return self.kernel_q(zoom_xyz) @ self.projection(zoom_xyz)

    def normalisation(self, masks: ArrayLike, zoom: Zoom | None = None) -> np.ndarray:
        """srreal's N <f>^2 per motif: (n_motifs, 1), or (n_motifs, n_q) for X-ray Debye (f depends on Q).

        Infinite for a motif with no atoms (or sum f = 0), so G is 0 there.
        """
        return self._normalisation(self.presence(masks), self.transform(zoom))

    def _normalisation(self, presence: np.ndarray, transform) -> np.ndarray:
        return self._model.normalisation(presence.astype(np.float64) @ self._species_onehot, transform)

    # ------------------------------------------------------------------ the result

    def pdfs(self, masks: ArrayLike, zoom: Zoom | None = None) -> np.ndarray:
        """(n_motifs, n_r) G(r) (Å^-2) of every motif, all at one zoom (default ``params.zoom``).

        A 1-D mask is one motif (result (1, n_r)).
        """
        masks = self._check_masks(masks)
        out = np.empty((masks.shape[0], self.r.size))
        for start, stop, g in self.iter_pdfs(masks, zoom):
            out[start:stop] = g
        return out

    def iter_pdfs(self, masks: ArrayLike, zoom: Zoom | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield (start, stop, G of masks[start:stop]) chunk by chunk, to stream any number of motifs."""
        masks = self._check_masks(masks)
        zoom_xyz = self._zoom(zoom)
        partition = self._partition(self._kind(zoom_xyz))
        transform = self.transform(zoom_xyz)
        n_active = self.n_active(zoom_xyz)
        if self.q_independent_normalisation:
            # G = (counts @ K @ left) / N @ right: the normalisation commutes with
            # the projection, so work in the k-dimensional basis of the output
            kernel = self._reduced_kernel(zoom_xyz)[:n_active]
            _, projection = self.projection_factors(zoom_xyz)
        else:
            kernel = self.kernel_q(zoom_xyz)[:n_active]
            projection = transform.projection
        for start in range(0, masks.shape[0], self.chunk_size):
            stop = min(start + self.chunk_size, masks.shape[0])
            presence = self.presence(masks[start:stop])
            counts_t = self._counts_t(presence, partition, n_active)
            coefficients = counts_t.T @ kernel
            coefficients /= self._normalisation(presence, transform)
            yield start, stop, coefficients @ projection

    def _reduced_kernel(self, zoom_xyz: tuple[float, float, float]) -> np.ndarray:
        key = ("basis", zoom_xyz)
        cached = self._cache_get(key)
        if cached is not None:
            return cached
        left, _ = self.projection_factors(zoom_xyz)
        kernel = self.kernel_q(zoom_xyz) @ left
        kernel.setflags(write=False)
        return self._cache_put(key, kernel)

    # ------------------------------------------------------------------ helpers

    def _check_masks(self, masks: ArrayLike) -> np.ndarray:
        masks = np.asarray(masks)
        if masks.ndim == 1:
            masks = masks[None, :]
        if masks.ndim != 2 or masks.shape[1] != self.n_permutable:
            raise InputError(f"Masks must be (n_motifs, {self.n_permutable}) arrays of 0/1, not shape {masks.shape}.")
        if masks.dtype != bool:
            if not np.all((masks == 0) | (masks == 1)):
                raise InputError("Masks must hold only 0/1 (or True/False).")
            masks = masks.astype(bool)
        return masks

    def _cache_get(self, key: tuple) -> np.ndarray | None:
        value = self._kernel_cache.get(key)
        if value is not None:
            self._kernel_cache.move_to_end(key)
        return value

    def _cache_put(self, key: tuple, value: np.ndarray) -> np.ndarray:
        self._kernel_cache[key] = value
        while len(self._kernel_cache) > self._kernel_cache_size:
            self._kernel_cache.popitem(last=False)
        return value
