"""Timings of motex-db's PDF engine: one cluster, and motif PDFs per second in batches.

Run from the repository root:

    .venv/bin/python benchmarks/bench_pdf.py            # everything
    .venv/bin/python benchmarks/bench_pdf.py --quick    # fewer sizes and motifs

Every figure is the median over ``--repeats`` runs (the best run in brackets);
shared machines are noisy, so compare medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from motex_db.catalogue import masks_from_text, membership_matrix, sample_uniform_masks
from motex_db.datasets import read_pdf_data
from motex_db.pdf import MotifPDFEngine, PDFParameters, cluster_pdf
from motex_db.structures import read_structure

SHARED = Path(__file__).resolve().parents[2] / "shared"
KEGGIN_XYZ = SHARED / "data" / "keggin" / "109725.xyz"
DANMAX_GR = SHARED / "data" / "keggin" / "DanMAX_AlphaKeggin.gr"
BOND_CUTOFF = 2.6  # Å, W-O bonds in ML-MotEx's Keggin example


def timed(func: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, best) wall time in seconds over ``repeats`` calls, after one warm-up call."""
    func()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def lattice_sphere(kind: str, n_atoms: int) -> tuple[list[str], np.ndarray]:
    """The n_atoms lattice sites nearest a point near the origin: fcc Au (a 4.08 Å) or rocksalt NaCl (a 5.64 Å)."""
    if kind == "fcc":
        a, basis, species = 4.08, [(0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)], ["Au"] * 4
    else:
        a = 5.64
        cation = [(0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)]
        anion = [(0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5), (0.5, 0.5, 0.5)]
        basis, species = cation + anion, ["Na"] * 4 + ["Cl"] * 4
    m = int(np.ceil((n_atoms / len(basis)) ** (1 / 3))) + 2
    cells = np.stack(np.meshgrid(*[np.arange(-m, m + 1)] * 3, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    sites = ((cells + np.asarray(basis, dtype=float)) * a).reshape(-1, 3)
    elements = np.tile(species, cells.shape[0])
    order = np.argsort(np.linalg.norm(sites - 0.01, axis=1), kind="stable")[:n_atoms]
    return list(elements[order]), sites[order]


def oxide_particle(n_metal: int = 72, n_oxygen: int = 228, a: float = 3.75) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A ReO3-type WO3 particle: the n_metal W nearest a centre and n_oxygen O bonded to them; membership by bonds."""
    m = 6
    cells = np.stack(np.meshgrid(*[np.arange(-m, m + 1)] * 3, indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    centre = np.array([0.25, 0.15, 0.10]) * a
    metal = cells * a
    oxygen = np.concatenate([(cells + shift) * a for shift in np.eye(3) * 0.5])
    metal = metal[np.argsort(np.linalg.norm(metal - centre, axis=1), kind="stable")[:n_metal]]
    bonded = oxygen[(np.linalg.norm(oxygen[:, None] - metal[None], axis=-1) < BOND_CUTOFF).any(axis=1)]
    bonded = bonded[np.argsort(np.linalg.norm(bonded - centre, axis=1), kind="stable")[:n_oxygen]]
    positions = np.concatenate([metal, bonded])
    elements = ["W"] * n_metal + ["O"] * len(bonded)
    return elements, positions, bond_membership(elements, positions, "W")


def bond_membership(elements: list[str], positions: np.ndarray, permutable: str) -> np.ndarray:
    """The catalogue's membership matrix: W and the atoms within the bond cutoff of it."""
    return membership_matrix(positions, np.asarray(elements) == permutable, BOND_CUTOFF)


def read_xyz(path: Path) -> tuple[list[str], np.ndarray]:
    structure = read_structure(path)
    return structure.elements, structure.positions


def danmax_grid(rmin: float = 1.6, rmax: float = 10.0) -> np.ndarray:
    r = read_pdf_data(DANMAX_GR).r
    return r[(r >= rmin) & (r <= rmax)]


def mlmotex_masks(n_motifs: int, n_permutable: int, seed: int = 0) -> np.ndarray:
    """ML-MotEx's sampler (k uniform, then a random subset of size k), distinct masks as motex-db samples them."""
    texts, _ = sample_uniform_masks(n_permutable, n_motifs, np.random.default_rng(seed))
    return masks_from_text(texts, n_permutable)


def bench_clusters(sizes: list[int], repeats: int, r: np.ndarray) -> None:
    print(f"One cluster, r {r[0]:g}-{r[-1]:g} Å ({r.size} points), X-ray, ML-MotEx settings; ms per G(r):")
    print(f"{'cluster':>18} {'atoms':>6} {'real':>18} {'debye':>18} {'debye-exact':>18}")
    for kind in ("fcc", "rocksalt"):
        for n in sizes:
            elements, positions = lattice_sphere(kind, n)
            cells = []
            for calculator in ("real", "debye", "debye-exact"):
                params = PDFParameters(calculator=calculator)
                median, best = timed(lambda: cluster_pdf(elements, positions, r, params), repeats)
                cells.append(f"{median * 1e3:9.1f} ({best * 1e3:6.1f})")
            label = "fcc Au sphere" if kind == "fcc" else "rocksalt NaCl"
            print(f"{label:>18} {n:>6} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18}")
    # a disordered cluster: every pair distance distinct, the worst case for pair classes
    elements, positions = lattice_sphere("fcc", 1000)
    positions = positions + np.random.default_rng(1).normal(scale=0.05, size=positions.shape)
    cells = []
    for calculator in ("real", "debye", "debye-exact"):
        params = PDFParameters(calculator=calculator)
        median, best = timed(lambda: cluster_pdf(elements, positions, r, params), max(1, repeats // 2))
        cells.append(f"{median * 1e3:9.1f} ({best * 1e3:6.1f})")
    print(f"{'fcc Au, disordered':>18} {1000:>6} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18}")


def bench_engine(label: str, engine: MotifPDFEngine, masks: np.ndarray, zooms: list, repeats: int) -> None:
    """Motif PDFs per second; each repeat uses a zoom not seen before, so kernel building is included."""
    fresh = iter(zooms)
    engine.pdfs(masks[:8], zoom=next(fresh))  # classes and projection, built once per engine
    times = []
    for _ in range(repeats):
        zoom = next(fresh)
        start = time.perf_counter()
        engine.pdfs(masks, zoom=zoom)
        times.append(time.perf_counter() - start)
    median, best = statistics.median(times), min(times)
    classes = engine.n_classes(zoom)
    print(
        f"{label:>46} {classes:>7} {engine.n_active(zoom):>6} "
        f"{masks.shape[0] / median:>10.0f} ({masks.shape[0] / best:.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median reported)")
    parser.add_argument("--motifs", type=int, default=20000, help="motifs per batched run")
    parser.add_argument("--quick", action="store_true", help="sizes 100 and 300 only, 5000 motifs")
    args = parser.parse_args()
    sizes = [100, 300] if args.quick else [100, 300, 1000, 3000]
    n_motifs = 5000 if args.quick else args.motifs
    rng = np.random.default_rng(7)

    r_fit = danmax_grid() if DANMAX_GR.exists() else np.round(np.arange(160, 1001) * 0.01, 2)
    bench_clusters(sizes, args.repeats, r_fit)
    print()
    print(f"Motif PDFs per second, real calculator, {r_fit.size} r points 1.6-10 Å, {n_motifs} ML-MotEx masks:")
    print(f"{'starting model, zoom':>46} {'classes':>7} {'active':>6} {'motifs/s':>10} (best)")
    iso = lambda: [float(z) for z in rng.uniform(0.99, 1.01, args.repeats + 1)]  # noqa: E731
    xyz = lambda: [tuple(z) for z in rng.uniform(0.99, 1.01, (args.repeats + 1, 3))]  # noqa: E731
    if KEGGIN_XYZ.exists():
        elements, positions = read_xyz(KEGGIN_XYZ)
        membership = bond_membership(elements, positions, "W")
        engine = MotifPDFEngine(elements, positions, membership, r_fit, PDFParameters())
        masks = mlmotex_masks(n_motifs, membership.shape[1])
        bench_engine("109725.xyz (24 W, 104 atoms), one zoom", engine, masks, iso(), args.repeats)
        bench_engine("109725.xyz, three zoom factors", engine, masks, xyz(), args.repeats)
    else:
        print(f"  (skipped 109725.xyz: {KEGGIN_XYZ} not found)")
    elements, positions, membership = oxide_particle()
    masks = mlmotex_masks(max(n_motifs // 4, 1000), membership.shape[1], seed=1)
    engine = MotifPDFEngine(elements, positions, membership, r_fit, PDFParameters())
    bench_engine(f"WO3 particle (72 W, {len(elements)} atoms), one zoom", engine, masks, iso(), args.repeats)
    shaken = positions + np.random.default_rng(3).normal(scale=0.03, size=positions.shape)
    engine = MotifPDFEngine(elements, shaken, membership, r_fit, PDFParameters())
    bench_engine("same, atoms displaced 0.03 Å, one zoom", engine, masks, iso(), args.repeats)


if __name__ == "__main__":
    main()
