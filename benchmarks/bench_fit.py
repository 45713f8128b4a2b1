"""End-to-end figures of steps 1 and 2 through the real command line, on SQLite.

Run from the repository root (it needs ../shared beside the repository):

    .venv/bin/python benchmarks/bench_fit.py              # 10^4 motifs, 3 repeats
    .venv/bin/python benchmarks/bench_fit.py --repeats 1  # quicker

For each case a fresh record is made, motifs are sampled and fitted with
``motex-db``; the figures are wall times of the commands (process start
included) and the fits per second that follow, medians over the repeats, plus
the peak resident memory of any command.
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io

from bench_pdf import DANMAX_GR, KEGGIN_XYZ, oxide_particle

MOTEX = str(Path(sys.executable).with_name("motex-db"))


def run(url: str, *args) -> tuple[float, str]:
    """Run one motex-db command; returns (wall seconds, stdout)."""
    start = time.perf_counter()
    done = subprocess.run([MOTEX, "--db", url, *map(str, args)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"motex-db {' '.join(map(str, args))} failed:\n{done.stderr}")
    return seconds, done.stdout


def peak_memory_mb() -> float:
    """Largest resident set of any finished child process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def generated_model(folder: Path) -> tuple[Path, Path]:
    """A ~220-atom WO3 cluster with 48 W, and a PDF simulated from its 24 W nearest the centre."""
    elements, positions, _ = oxide_particle(n_metal=48, n_oxygen=172)
    structure = folder / "wo3_48.xyz"
    ase.io.write(str(structure), ase.Atoms(elements, positions), format="xyz")
    core, core_positions, _ = oxide_particle(n_metal=24, n_oxygen=96)
    core_file = folder / "wo3_core.xyz"
    ase.io.write(str(core_file), ase.Atoms(core, core_positions), format="xyz")
    data = folder / "wo3_core.gr"
    subprocess.run([MOTEX, "simulate", core_file, "--out", data, "--rmin", "0", "--rmax", "20", "--zoom", "1.004"], check=True, capture_output=True)
    return structure, data


def one_case(folder: Path, structure: Path, data: Path, n_motifs: int, recipes: list[str]) -> dict[str, float]:
    url = f"sqlite:///{folder / 'bench.db'}"
    run(url, "structure", "add", structure, "--name", "s", "--permute", "W")
    run(url, "data", "add", data, "--name", "d")
    figures = {"sample_s": run(url, "sample", "--structure", "s", "--n", n_motifs, "--seed", 1)[0]}
    for recipe in recipes:
        seconds, out = run(url, "fit", "--structure", "s", "--data", "d", "--recipe", recipe)
        match = re.search(r"fitted (\d+) motifs", out)
        if not match or int(match.group(1)) != n_motifs:
            raise SystemExit(f"the {recipe} fit did not fit {n_motifs} motifs:\n{out}")
        figures[f"{recipe}_s"] = seconds
        figures[f"{recipe}_fits_per_s"] = n_motifs / seconds
    return figures


def median_case(name: str, structure: Path, data: Path, n_motifs: int, recipes: list[str], repeats: int) -> None:
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            runs.append(one_case(Path(folder), structure, data, n_motifs, recipes))
    print(f"\n{name}: {n_motifs} motifs, medians of {repeats} runs (wall time of each command, process start included)")
    print(f"  sample: {statistics.median(r['sample_s'] for r in runs):.2f} s")
    for recipe in recipes:
        seconds = statistics.median(r[f"{recipe}_s"] for r in runs)
        rate = statistics.median(r[f"{recipe}_fits_per_s"] for r in runs)
        print(f"  fit --recipe {recipe}: {seconds:.2f} s, {rate:,.0f} fits/s end to end")
    print(f"  peak memory of any command so far: {peak_memory_mb():.0f} MiB")


def sampling_only(n_motifs: int, repeats: int) -> None:
    times = []
    with tempfile.TemporaryDirectory() as folder:
        structure, _ = generated_model(Path(folder))
        for repeat in range(repeats):
            url = f"sqlite:///{Path(folder) / f'sample{repeat}.db'}"
            run(url, "structure", "add", structure, "--name", "s", "--permute", "W")
            times.append(run(url, "sample", "--structure", "s", "--n", n_motifs, "--seed", repeat)[0])
    print(f"\nsample {n_motifs} motifs for N = 48 and store them: median {statistics.median(times):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in times)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motifs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not KEGGIN_XYZ.is_file():
        raise SystemExit(f"needs the shared Keggin data at {KEGGIN_XYZ}")
    median_case("109725.xyz (24 W) against DanMAX_AlphaKeggin.gr", KEGGIN_XYZ, DANMAX_GR, args.motifs, ["fast", "mlmotex"], args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        structure, data = generated_model(Path(folder))
        median_case("generated WO3 cluster (48 W, ~220 atoms)", structure, data, args.motifs, ["fast"], args.repeats)
    sampling_only(100_000, args.repeats)


if __name__ == "__main__":
    main()
