"""What the isometry-aware catalogue saves: fits per distinct motif, not per copy.

Run from the repository root (it needs ../shared beside the repository):

    .venv/bin/python benchmarks/bench_isometry.py

Prints, for the alpha-Keggin starting model 109725.xyz (24 W), the generated C60 demo
model (130 C: the cage and 70 carbons grown around it) and the cage alone, the fraction of uniformly sampled motifs (ML-MotEx's sampler, 10^4
and 10^5 masks) whose isometry signature repeats one drawn before it: the fits an
isometry-aware catalogue does not spend. Then `fit` through the CLI on 10^4 motifs of
109725.xyz sampled without --dedup: how many results were fitted and how many copied
from an image, the largest Rwp difference between a copied result and a direct fit
of that motif, and the contributions of `train` + `explain` on those results against
those on a copy of the record whose copied results are replaced by direct fits.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

import bench_fit
from bench_pdf import DANMAX_GR, KEGGIN_XYZ



def repeated_fraction(elements, positions, permutable, n: int, seed: int = 0) -> tuple[float, float]:
    """(fraction of n sampled masks whose signature was drawn before, seconds for the signatures)."""
    from motex_db.catalogue import masks_from_text, membership_matrix, sample_uniform_masks
    from motex_db.environments import motif_signatures

    membership = membership_matrix(positions, permutable, 2.6)
    texts, _ = sample_uniform_masks(int(permutable.sum()), n, np.random.default_rng(seed))
    start = time.perf_counter()
    signatures = motif_signatures(masks_from_text(texts, int(permutable.sum())), membership, elements, positions)
    seconds = time.perf_counter() - start
    return 1.0 - len(set(signatures)) / len(signatures), seconds


def run(url: str, *args) -> str:
    """One motex-db command's stdout (bench_fit.run, without its timing)."""
    return bench_fit.run(url, *args)[1]


def main() -> None:
    import ase.io

    from motex_db.examples import c60_positions, c60_starting_model

    keggin = ase.io.read(KEGGIN_XYZ)
    c60 = c60_starting_model()
    models = {
        "109725.xyz (24 W of 104 atoms)": (np.array(keggin.get_chemical_symbols()), keggin.get_positions(), "W"),
        "C60 demo (130 C)": (np.array(c60.get_chemical_symbols()), c60.get_positions(), "C"),
        "C60 cage alone (60 C)": (np.array(["C"] * 60), c60_positions(), "C"),
    }
    print("fraction of sampled motifs that repeat an earlier one's signature (fits saved):")
    for name, (elements, positions, permute) in models.items():
        for n in (10_000, 100_000):
            fraction, seconds = repeated_fraction(elements, positions, elements == permute, n)
            print(f"  {name}, {n:,} motifs: {100 * fraction:.1f} % ({seconds:.1f} s for the signatures)")

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'motex.db'}"
        run(url, "structure", "add", KEGGIN_XYZ, "--name", "keggin", "--permute", "W")
        run(url, "data", "add", DANMAX_GR, "--name", "danmax")
        run(url, "sample", "--structure", "keggin", "--n", "10000", "--seed", "1")
        start = time.perf_counter()
        run(url, "fit", "--structure", "keggin", "--data", "danmax")
        seconds = time.perf_counter() - start
        rows = run(url, "sql", "SELECT COUNT(*), COUNT(fitted_motif_id) FROM fit_result WHERE status = 'ok'", "--csv")
        total, copied = map(int, rows.strip().splitlines()[1].split(","))
        print(f"fit, 10,000 motifs of 109725.xyz sampled without --dedup: {seconds:.1f} s with process start; "
              f"{total - copied:,} fitted, {copied:,} copied from an image ({100 * copied / total:.1f} %)")

        from motex_db.catalogue import masks_from_text
        from motex_db.db import create_db_engine
        from motex_db.fitting.settings import FitSettings
        from motex_db.fitting.work import prepare_fit

        engine = create_db_engine(url)
        copies = run(url, "sql", "SELECT m.mask, r.rwp FROM fit_result r JOIN motif m ON m.id = r.motif_id "
                                 "WHERE r.fitted_motif_id IS NOT NULL LIMIT 500", "--csv").strip().splitlines()[1:]
        masks = masks_from_text([line.split(",")[0] for line in copies], 24)
        stored = np.array([float(line.split(",")[1]) for line in copies])
        direct = prepare_fit(engine, "keggin", "danmax", FitSettings()).fitter().fit_frames(masks, [0])[0].rwp
        print(f"copied results against direct fits of the same {len(copies)} motifs: "
              f"max |Rwp difference| {np.max(np.abs(direct - stored)):.2e}")
        contributions_with_and_without_copies(url, folder, engine)


def contributions_with_and_without_copies(url: str, folder: str, engine) -> None:
    """Train and explain the record as fitted (with copies), then a copy of it whose copied results are
    replaced by direct fits of their motifs; compare the contributions against their uncertainty."""
    import shutil

    from motex_db.catalogue import masks_from_text
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import prepare_fit

    other = f"sqlite:///{Path(folder) / 'direct.db'}"
    shutil.copy(Path(folder) / "motex.db", Path(folder) / "direct.db")
    rows = run(other, "sql", "SELECT r.id, m.mask FROM fit_result r JOIN motif m ON m.id = r.motif_id "
                             "WHERE r.fitted_motif_id IS NOT NULL", "--csv").strip().splitlines()[1:]
    ids = [int(line.split(",")[0]) for line in rows]
    masks = masks_from_text([line.split(",")[1] for line in rows], 24)
    direct = prepare_fit(engine, "keggin", "danmax", FitSettings()).fitter().fit_frames(masks, [0])[0].rwp
    import sqlite3

    with sqlite3.connect(Path(folder) / "direct.db") as connection:
        connection.executemany("UPDATE fit_result SET rwp = ?, fitted_motif_id = NULL WHERE id = ?",
                               [(float(r), i) for r, i in zip(direct, ids)])
    tables = {}
    for name, record in (("with copies", url), ("direct fits", other)):
        run(record, "train", "--structure", "keggin", "--data", "danmax", "--seed", "0")
        run(record, "explain", "--structure", "keggin", "--data", "danmax")
        csv = run(record, "sql", "SELECT atom_index, contribution, uncertainty FROM contribution ORDER BY atom_index",
                  "--csv").strip().splitlines()[1:]
        tables[name] = np.array([[float(x) for x in line.split(",")] for line in csv])
    a, b = tables["with copies"], tables["direct fits"]
    shift = np.abs(a[:, 1] - b[:, 1]) / a[:, 2]
    same_signs = bool(np.all(np.sign(a[:, 1]) == np.sign(b[:, 1])))
    print(f"contributions trained on the copies against those trained on direct fits: largest change "
          f"{np.max(np.abs(a[:, 1] - b[:, 1])):.2e} ({np.max(shift):.3f} of that atom's uncertainty), "
          f"signs {'all the same' if same_signs else 'NOT all the same'}")


if __name__ == "__main__":
    main()
