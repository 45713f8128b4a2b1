"""Steps 3 and 4 through the real command line: train (50 iterations, 3-fold CV) and explain.

Run from the repository root:

    .venv/bin/python benchmarks/bench_learn.py              # 10^4 motifs of a 48-W cluster
    .venv/bin/python benchmarks/bench_learn.py --motifs 3000 --repeats 1

A ~220-atom WO3 cluster with 48 permutable W and a PDF simulated from its
core (see bench_fit.py) is sampled and fitted once; then `train` and
`explain` are timed (wall time of each command, process start included) in a
fresh copy of the record per repeat, and the medians printed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from bench_fit import generated_model, peak_memory_mb, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motifs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-iter", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        structure, data = generated_model(folder)
        url = f"sqlite:///{folder / 'fitted.db'}"
        run(url, "structure", "add", structure, "--name", "s", "--permute", "W")
        run(url, "data", "add", data, "--name", "d")
        run(url, "sample", "--structure", "s", "--n", args.motifs, "--seed", 1)
        run(url, "fit", "--structure", "s", "--data", "d")
        timings = []
        for repeat in range(args.repeats):
            copy = folder / f"run{repeat}"
            copy.mkdir()
            shutil.copy(folder / "fitted.db", copy / "motex.db")
            copy_url = f"sqlite:///{copy / 'motex.db'}"
            train_s, _ = run(copy_url, "train", "--structure", "s", "--data", "d", "--n-iter", args.n_iter, "--cv", 3)
            explain_s, out = run(copy_url, "explain", "--structure", "s", "--data", "d")
            timings.append((train_s, explain_s))
        train_s = statistics.median(t for t, _ in timings)
        explain_s = statistics.median(e for _, e in timings)
        print(f"{args.motifs} motifs, N = 48, train --n-iter {args.n_iter} --cv 3 then explain; medians of {args.repeats} runs:")
        print(f"  train: {train_s:.1f} s   explain: {explain_s:.1f} s   together: {train_s + explain_s:.1f} s "
              f"(runs: {', '.join(f'{t + e:.1f}' for t, e in timings)})")
        print(f"  peak memory of any command: {peak_memory_mb():.0f} MiB")
        print("  last explain said: " + next((l for l in out.splitlines() if l.startswith("extracted motif")), "")[:160])


if __name__ == "__main__":
    main()
