"""Starting models of hundreds of atoms without repeated distances (issue 13, item 4).

Run from the repository root (nothing from ../shared is needed):

    flock /tmp/motex-bench.lock .venv/bin/python benchmarks/bench_large.py
    flock /tmp/motex-bench.lock .venv/bin/python benchmarks/bench_large.py --skip-e2e   # fits/s only

The case is :func:`motex_db.examples.large_c60_case`: a C60 hidden in an
amorphous carbon shell, every atom displaced (no two pair distances equal),
the cage's PDF plus noise as the data. Two parts:

1. Fits per second of the fast recipe (:class:`MotifFitter.fit`, the fitter
   built once, outside the timing), on the 300-atom model (240 shell atoms)
   and the 360-atom one: the exact pair classes (every pair its own class, the
   path before the distance grid) against the distance grid, in this one run.
   ML-MotEx's masks (size uniform in 1..N, then a random subset). The exact
   path is timed on fewer masks (it is ~100 times slower).
2. The pipeline end to end through the real command line on a fresh SQLite
   record, the 360-atom model (``--e2e-shell`` for others): structure add,
   data add, sample, fit, train, explain, then polish (issue 13 item 1;
   ``--no-polish`` leaves it out). Wall time per command (process start
   included), each command's own peak resident memory, and how much of the
   cage the extracted motif (the atoms with negative contributions) and the
   polished one recover, plus the same for the 60 most negative atoms.
   ``--extract FITS`` runs the one-command loop (``extract --budget FITS``:
   rounds of uniform then guided sampling, fit, train, explain, then polish)
   in place of sample, fit, train, explain and polish.

Figures are medians over ``--repeats`` for part 1 and one run for part 2;
``uptime``'s load is printed beside them (2 shared cores: compare figures of
one run, and mind the load).
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import motex_db.fitting.batched as batched
from motex_db.examples import C60_ATOM_COUNT, large_c60_case, write_large_case
from motex_db.fitting import FitSettings, MotifFitter

MOTEX = str(Path(sys.executable).with_name("motex-db"))


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def sample_masks(n_permutable: int, n: int, seed: int = 0) -> np.ndarray:
    """ML-MotEx's sampler: k uniform in 1..N, then a uniformly random subset of size k."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, n_permutable), dtype=bool)
    for row, k in zip(masks, rng.integers(1, n_permutable + 1, n)):
        row[rng.choice(n_permutable, k, replace=False)] = True
    return masks


def time_fits(case, grid: bool, masks: np.ndarray, repeats: int) -> dict:
    n = len(case.elements)
    settings = FitSettings().resolved(case.header)
    saved = batched.PAIR_GRID_ANGSTROM
    batched.PAIR_GRID_ANGSTROM = saved if grid else None
    try:
        started = time.perf_counter()
        fitter = MotifFitter(case.elements, case.positions, np.eye(n, dtype=bool), case.r, case.g, settings)
        built = time.perf_counter() - started
    finally:
        batched.PAIR_GRID_ANGSTROM = saved
    n_masks = len(masks)
    fitter.fit(masks[:50])  # warm caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        batch = fitter.fit(masks)
        times.append(time.perf_counter() - started)
    return {
        "rate": n_masks / statistics.median(times),
        "built": built,
        "classes": fitter._iso.n_active,
        "grid": fitter.engine.pair_grid,
        "batch": batch,
    }


def fit_rates(shells: list[int], n_masks: int, n_exact: int, repeats: int) -> None:
    print(f"part 1: fast-recipe fits/s, exact pair classes vs the distance grid  [{load()}]")
    for shell in shells:
        case = large_c60_case(n_shell=shell)
        n = len(case.elements)
        masks = sample_masks(n, n_masks)
        new = time_fits(case, True, masks, repeats)
        old = time_fits(case, False, masks[:n_exact], repeats)
        # the same motifs on both paths: how far the grid moves the results
        common = new["batch"].rwp[:n_exact]
        delta = np.nanmax(np.abs(common - old["batch"].rwp))
        print(
            f"  {n} atoms (N = {n}): exact {old['rate']:8.0f} fits/s ({old['classes']} classes, build {old['built']:.1f} s,"
            f" {n_exact} masks) | grid {new['rate']:8.0f} fits/s ({new['classes']} classes, build {new['built']:.1f} s,"
            f" {n_masks} masks) | x{new['rate'] / old['rate']:.0f} | max |Rwp grid - exact| {delta:.1e}"
        )
    print(f"  peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB  [{load()}]")


def end_to_end(n_motifs: int, train_args: list[str], polish: bool, shell: int, extract_budget: int = 0) -> None:
    case = large_c60_case(n_shell=shell)
    how = f"`extract --budget {extract_budget}`" if extract_budget else f"{n_motifs} motifs"
    print(f"part 2: the {len(case.elements)}-atom case end to end through the CLI, {how}  [{load()}]")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model_file, data_file = write_large_case(folder, case)
        url = f"sqlite:///{folder / 'large.db'}"
        steps = [
            ("structure add", ["structure", "add", model_file, "--name", "large", "--permute", "C", "--bond-cutoff", "1.6"]),
            ("data add", ["data", "add", data_file, "--name", "cage"]),
            ("sample", ["sample", "--structure", "large", "--n", n_motifs, "--seed", 1]),
            ("fit", ["fit", "--structure", "large", "--data", "cage"]),
            ("train", ["train", "--structure", "large", "--data", "cage", *train_args]),
            ("explain", ["explain", "--structure", "large", "--data", "cage", "--out", folder / "explain"]),
        ]
        if extract_budget:
            # the one-command loop instead: rounds of sample (uniform, then guided), fit, train, explain, then polish
            steps[2:] = [("extract", ["extract", "--structure", "large", "--data", "cage", "--budget", extract_budget,
                                      "--seed", 1])]
        elif polish:
            steps.append(("polish", ["polish", "--structure", "large", "--data", "cage"]))
        total = 0.0
        peak = 0.0
        for label, args in steps:
            seconds, rss, stdout = run_measured(url, args)
            total += seconds
            peak = max(peak, rss)
            last = [line for line in stdout.splitlines() if line.strip()][-1:] or [""]
            print(f"  {label:14s} {seconds:7.1f} s  peak {rss:6.0f} MiB  | {last[0][:110]}")
        print(f"  end to end     {total:7.1f} s  peak {peak:6.0f} MiB (largest of any command)  [{load()}]")
        recovery(folder / "large.db", None if extract_budget else folder / "explain", case)


# A small launcher runs each command and reports its child's peak RSS: Linux starts a forked
# child's peak at its parent's resident size, so this (large) process must not be the parent.
LAUNCHER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(url: str, args: list) -> tuple[float, float, str]:
    """Run one motex-db command: (wall s, its own peak RSS in MiB, stdout)."""
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak"
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, peak_file, MOTEX, "--db", url, *map(str, args)],
            capture_output=True, text=True,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"motex-db {' '.join(map(str, args))} failed:\n{done.stderr}")
        return seconds, int(peak_file.read_text()) / 1024, done.stdout


# The motifs whose recovery is reported: the latest explanation's extracted motif and the latest polish's best.
ANSWERS = {
    "extracted motif (negative contributions)": "SELECT m.mask, f.rwp FROM trained_model t JOIN motif m"
    " ON m.id = t.extracted_motif_id LEFT JOIN fit_result f ON f.motif_id = m.id ORDER BY t.id DESC LIMIT 1",
    "polished motif (polish's best)": "SELECT m.mask, p.best_rwp FROM polish_run p JOIN motif m"
    " ON m.id = p.best_motif_id ORDER BY p.id DESC LIMIT 1",
}


def recovery(db_file: Path, explain_dir: Path, case) -> None:
    truth = np.flatnonzero(case.motif)
    for label, query in ANSWERS.items():
        with sqlite3.connect(db_file) as connection:
            try:
                row = connection.execute(query).fetchone()
            except sqlite3.OperationalError:
                row = None
        if row is None:
            continue
        kept = np.flatnonzero(np.frombuffer(row[0].encode(), dtype=np.uint8) == ord("1"))
        found = np.intersect1d(kept, truth).size
        rwp = "" if row[1] is None else f", Rwp {row[1]:.4f}"
        print(
            f"  {label}: {kept.size} atoms{rwp}, {found} of the {truth.size} cage atoms"
            f" ({100 * found / truth.size:.0f} % recovered), {kept.size - found} extra"
            f" ({100 * (kept.size - found) / truth.size:.0f} % of the cage's size)"
        )
    table = None if explain_dir is None else next(explain_dir.glob("*_contributions.csv"), None)
    if table is not None:
        with table.open() as handle:
            rows = list(csv.DictReader(handle))
        order = sorted(rows, key=lambda r: float(r["contribution"]))
        top = np.array([int(r["atom_index"]) for r in order[: truth.size]])
        index_base = min(int(r["atom_index"]) for r in rows)
        top_found = np.intersect1d(top - index_base, truth).size
        print(f"  the {truth.size} most negative atoms hold {top_found} of the {truth.size} cage atoms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--masks", type=int, default=10_000, help="masks timed on the grid (default 10,000)")
    parser.add_argument("--exact-masks", type=int, default=300, help="masks timed on exact classes (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs on the grid (default 3)")
    parser.add_argument("--shells", default="240,300", help="shell sizes (default 240,300: 300 and 360 atoms)")
    parser.add_argument("--motifs", type=int, default=20_000, help="motifs sampled end to end (default 20,000)")
    parser.add_argument("--e2e-shell", type=int, default=300, help="shell atoms end to end (default 300: 360 atoms)")
    parser.add_argument("--train-args", default="", help="extra train options, e.g. '--n-iter 20'")
    parser.add_argument("--no-polish", action="store_true", help="end to end without the polish step")
    parser.add_argument("--extract", type=int, default=0, metavar="FITS",
                        help="end to end with `extract --budget FITS` instead of the separate commands")
    parser.add_argument("--skip-fits", action="store_true", help="skip part 1")
    parser.add_argument("--skip-e2e", action="store_true", help="skip part 2")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each figure as soon as it is measured
    print(f"motex-db bench_large, {os.cpu_count()} cores")
    if not args.skip_fits:
        fit_rates([int(s) for s in args.shells.split(",")], args.masks, args.exact_masks, args.repeats)
    if not args.skip_e2e:
        end_to_end(args.motifs, args.train_args.split(), not args.no_polish, args.e2e_shell, args.extract)


if __name__ == "__main__":
    main()
