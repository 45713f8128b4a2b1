"""Structure mining benchmark: library add of 1,000 generated CIFs, a classifier of ~100 classes, mine latency
with the lattice stretch scan (default +-6 %) and without it (--stretch 0), measured in the same run.

    flock /tmp/motex-bench.lock .venv/bin/python benchmarks/bench_library.py [--n-cifs 1000] [--n-classifier 150]

Everything through the real CLI on a fresh SQLite record, process start
included. The CIFs are the generated oxide types (rocksalt, fluorite, spinel,
perovskite, rutile, wurtzite, corundum) with lattices scaled by 0.85-1.15
(``motex_db.crystal_examples.variant_crystals``). The "measured" PDF is a
3 nm CoFe2O4 particle (cluster calculator, Qmax 20, 2 % noise). Prints one
line per figure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run(*args: str, db: str, cwd: Path) -> tuple[float, str]:
    executable = str(Path(sys.executable).with_name("motex-db"))
    started = time.perf_counter()
    done = subprocess.run([executable, "--db", db, *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"motex-db {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def own_seconds(stdout: str) -> float:
    """The time mine reports for its own work (ranking, refining, storing), without process start."""
    found = re.search(r"\) in ([0-9.]+) s", stdout)
    return float(found.group(1)) if found else float("nan")


def mine_times(db: str, cwd: Path, repeats: int, *args: str) -> tuple[float, float]:
    """Medians over ``repeats`` fresh mine calls (a different --top each, so nothing is reused): wall and own."""
    wall, own = [], []
    for k in range(repeats):
        seconds, out = run("mine", "np", *args, "--top", str(5 + k), db=db, cwd=cwd)
        wall.append(seconds)
        own.append(own_seconds(out))
    return statistics.median(wall), statistics.median(own)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-cifs", type=int, default=1000)
    parser.add_argument("--n-classifier", type=int, default=150, help="CIFs of the classifier's library (about 100 classes)")
    parser.add_argument("--repeats", type=int, default=5, help="mine calls for the latency median")
    args = parser.parse_args()

    from motex_db.crystal_examples import example_crystals, nanoparticle_pdf, variant_crystals, write_example_cifs
    from motex_db.datasets import write_gr

    folder = Path(tempfile.mkdtemp(prefix="bench-library-"))
    print("load average (1, 5, 15 min) at the start: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    try:
        db = f"sqlite:///{folder / 'motex.db'}"
        write_example_cifs(folder / "cifs", variant_crystals(args.n_cifs, seed=1))
        write_example_cifs(folder / "small", variant_crystals(args.n_classifier, seed=2))
        r = np.arange(0.5, 30.0001, 0.01)
        atoms = dict(example_crystals())["spinel_CoFe2O4"]
        write_gr(folder / "np.gr", r, nanoparticle_pdf(atoms, r, diameter=30, qmax=20, seed=3),
                 {"qmin": 0.8, "qmax": 20, "qdamp": 0.03}, "3 nm CoFe2O4")
        run("init", db=db, cwd=folder)
        run("data", "add", "np.gr", "--name", "np", db=db, cwd=folder)

        seconds, out = run("library", "add", "cifs", "--name", "big", db=db, cwd=folder)
        print(f"library add, {args.n_cifs} CIFs: {seconds:.1f} s ({args.n_cifs / seconds:.1f} CIFs/s); {out.strip().splitlines()[-1]}")
        seconds_again, _ = run("library", "add", "cifs", "--name", "big", db=db, cwd=folder)
        print(f"library add again (nothing new): {seconds_again:.1f} s")

        wall0, own0 = mine_times(db, folder, args.repeats, "--library", "big", "--stretch", "0")
        print(f"mine --method pcc --stretch 0 (at the catalogue's lattice), {args.n_cifs} structures: "
              f"median {wall0:.2f} s per command, {own0:.3f} s of it mining")
        wall, own = mine_times(db, folder, args.repeats, "--library", "big")
        print(f"mine --method pcc (stretch scan +-6 %), {args.n_cifs} structures: median {wall:.2f} s per command, "
              f"{own:.3f} s of it mining; {wall / wall0:.2f}x the command without the scan")
        wall, own = mine_times(db, folder, args.repeats, "--library", "big", "--refine")
        print(f"mine --refine (the top 5-9 and every class within 0.1 of the best r, at most 12): "
              f"median {wall:.2f} s per command, {own:.2f} s of it mining")

        _, out = run("library", "add", "small", "--name", "small", db=db, cwd=folder)
        print(f"classifier library: {out.strip().splitlines()[-1]}")
        seconds, out = run("library", "train", "small", db=db, cwd=folder)
        trained = [line for line in out.splitlines() if line.startswith("trained classifier")]
        print(f"library train (100 PDFs per class): {seconds:.1f} s; {trained[0] if trained else out.strip()}")
        wall, own = mine_times(db, folder, args.repeats, "--library", "small", "--method", "classifier")
        print(f"mine --method classifier: median {wall:.2f} s per command, {own:.3f} s of it mining")
        start, _ = run("sql", "SELECT 1", db=db, cwd=folder)
        print(f"(motex-db process start and a trivial query: {start:.2f} s)")
        print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
