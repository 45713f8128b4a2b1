"""Fits per second of motex-db's batched fitting numerics (:class:`motex_db.fitting.MotifFitter`).

Run from the repository root:

    .venv/bin/python benchmarks/bench_fit_numerics.py              # everything
    .venv/bin/python benchmarks/bench_fit_numerics.py --quick      # fewer motifs and runs
    .venv/bin/python benchmarks/bench_fit_numerics.py --disordered # plus a model with no repeated distances

Cases: ML-MotEx's Keggin example (109725.xyz, 24 W, O within 2.6 Å of a kept
W, against DanMAX_AlphaKeggin.gr on 1.6-10 Å) with the ``fast`` and ``mlmotex``
recipes, and a generated WO3 (ReO3-type) cluster cut from the lattice: the 48
W nearest a cell centre and every O bonded to them (236 atoms, distances
repeating as in the crystal), fitted with ``fast`` to a simulated PDF.
Masks come from ML-MotEx's sampler (k uniform in 1..N, then a random subset).
The cost grows with the number of distinct pair distances (pair classes):
``--disordered`` adds the WO3 cluster with every atom displaced at random, so
that no two distances repeat (27,730 classes instead of 87).

Figures are medians over ``--repeats`` runs of ``MotifFitter.fit`` on all the
masks (the fitter is built once, outside the timing; its build time is shown
apart). Peak memory is the process's ru_maxrss. Shared machines are noisy:
compare medians, and mind that OpenBLAS threads slow down small products a
lot when another process holds a core.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from motex_db.catalogue import membership_matrix
from motex_db.fitting import FitSettings, MotifFitter
from motex_db.pdf import PDFParameters, cluster_pdf

SHARED = Path(__file__).resolve().parents[2] / "shared"
KEGGIN_XYZ = SHARED / "data" / "keggin" / "109725.xyz"
DANMAX_GR = SHARED / "data" / "keggin" / "DanMAX_AlphaKeggin.gr"
BOND_CUTOFF = 2.6  # Å, W-O


def sample_masks(n_permutable: int, n: int, seed: int = 0) -> np.ndarray:
    """ML-MotEx's sampler: k uniform in 1..N, then a uniformly random subset of size k (repeats allowed)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, n_permutable), dtype=bool)
    for row, k in zip(masks, rng.integers(1, n_permutable + 1, n)):
        row[rng.choice(n_permutable, k, replace=False)] = True
    return masks


def wo3_cluster(n_metal: int = 48, a: float = 3.75) -> tuple[list[str], np.ndarray]:
    """ReO3-type WO3: the n_metal W nearest a cell centre and every O within the bond cutoff of them."""
    m = 6
    cells = np.stack(np.meshgrid(*[np.arange(-m, m + 1)] * 3, indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    centre = np.array([0.5, 0.5, 0.5]) * a
    metal = cells * a
    metal = metal[np.argsort(np.linalg.norm(metal - centre, axis=1), kind="stable")[:n_metal]]
    oxygen = np.concatenate([(cells + shift) * a for shift in np.eye(3) * 0.5])
    bonded = oxygen[(np.linalg.norm(oxygen[:, None] - metal[None], axis=-1) < BOND_CUTOFF).any(axis=1)]
    return ["W"] * n_metal + ["O"] * len(bonded), np.concatenate([metal, bonded])


def keggin_case(recipe: str):
    from motex_db.datasets import read_pdf_data
    from motex_db.structures import read_structure

    structure = read_structure(KEGGIN_XYZ)
    data = read_pdf_data(DANMAX_GR)
    permutable = np.array([e == "W" for e in structure.elements])
    membership = membership_matrix(structure.positions, permutable, BOND_CUTOFF)
    settings = FitSettings.for_recipe(recipe).resolved(data.meta)
    return structure.elements, structure.positions, membership, data.r, data.g, settings


def generated_case(recipe: str, displaced: float = 0.0):
    elements, positions = wo3_cluster()
    if displaced:
        # random displacements: no two pair distances alike, the worst case for class counting
        positions = positions + np.random.default_rng(5).normal(0.0, displaced, positions.shape)
    permutable = np.array([e == "W" for e in elements])
    membership = membership_matrix(positions, permutable, BOND_CUTOFF)
    r = np.arange(160, 1001) * 0.01
    # data: a random half of the model, slightly expanded, plus noise
    rng = np.random.default_rng(1)
    keep = membership[:, rng.random(permutable.sum()) < 0.5].any(axis=1)
    g = cluster_pdf([e for e, k in zip(elements, keep) if k], positions[keep], r, PDFParameters(zoom=1.003))
    g = 1.7 * g + 0.05 * np.abs(g).max() * rng.standard_normal(r.size)
    return elements, positions, membership, r, g, FitSettings.for_recipe(recipe).resolved({})


def run_case(label: str, case, n_masks: int, repeats: int) -> None:
    elements, positions, membership, r, g, settings = case
    started = time.perf_counter()
    fitter = MotifFitter(elements, positions, membership, r, g, settings)
    built = time.perf_counter() - started
    masks = sample_masks(membership.shape[1], n_masks)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        batch = fitter.fit(masks)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    failed = int((~batch.ok).sum())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{label:44s} {n_masks / median:9.0f} fits/s (best {n_masks / min(times):6.0f})"
        f"  {n_masks} masks, {len(elements)} atoms, N={membership.shape[1]}, build {built:.2f} s,"
        f" failed {failed}, median Rwp {np.nanmedian(batch.rwp):.3f}, peak RSS {peak_mib:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 masks and 2 runs per case")
    parser.add_argument("--masks", type=int, default=10_000, help="masks per case (default 10,000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (default 3)")
    parser.add_argument(
        "--disordered", action="store_true", help="also the WO3 cluster with atoms displaced 0.05 Å (slow to build)"
    )
    args = parser.parse_args()
    n_masks, repeats = (2_000, 2) if args.quick else (args.masks, args.repeats)
    if KEGGIN_XYZ.is_file():
        run_case("109725 / DanMAX, fast (scale, zoom)", keggin_case("fast"), n_masks, repeats)
        run_case("109725 / DanMAX, mlmotex (scale, 3 zooms)", keggin_case("mlmotex"), n_masks, repeats)
    else:
        print(f"skipping the Keggin cases: {KEGGIN_XYZ} not found")
    run_case("WO3 cluster, 48 W (generated), fast", generated_case("fast"), n_masks, repeats)
    if args.disordered:
        run_case("WO3 cluster, displaced 0.05 Å, fast", generated_case("fast", 0.05), min(n_masks, 2000), repeats)
        run_case("WO3 cluster, displaced 0.05 Å, mlmotex", generated_case("mlmotex", 0.05), min(n_masks, 1000), repeats)


if __name__ == "__main__":
    main()
