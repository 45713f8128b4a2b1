"""Time-resolved series through the real command line, on SQLite: fit --series, then train and explain --series.

Run from the repository root:

    .venv/bin/python benchmarks/bench_series.py                      # 10^4 motifs x 100 frames
    .venv/bin/python benchmarks/bench_series.py --frames 20 --motifs 3000 --skip-learn

Cases:

- ML-MotEx's Keggin model (109725.xyz, 24 W) against a series of frames made
  from the DanMAX measurement (needs ../shared): frame i is the measured G(r)
  times (1 + 0.3 i / frames) plus Gaussian noise of 1 % of max |G|, with the
  measurement's header (so every frame resolves the same fit settings).
  In one run, on one machine: `fit --data` of 10^4 motifs against the first
  frame in one fresh record, and `fit --series` of the same 10^4 motifs
  against all frames in another; the ratio of their fits per second is the
  gain from sharing each motif's calculated PDFs across frames.
- The generated two-motif WO3 series (motex_db.examples.two_motif_series;
  27 W, 81 atoms): `fit --series` alone.

Then, on the Keggin series record: `train --series` (one search of
--n-iter iterations and 3-fold CV on the last frame, a model per frame) and
`explain --series`. Wall times include process start.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import numpy as np

from bench_fit import peak_memory_mb, run
from bench_pdf import DANMAX_GR, KEGGIN_XYZ
from motex_db.datasets import read_pdf_data, write_gr
from motex_db.examples import two_motif_series, write_two_motif_series


def keggin_frames(folder: Path, n_frames: int, seed: int = 0) -> list[Path]:
    data = read_pdf_data(DANMAX_GR)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_frames):
        g = data.g * (1 + 0.3 * i / n_frames) + rng.normal(size=data.g.size) * 0.01 * np.abs(data.g).max()
        header = {k: v for k, v in data.meta.items() if isinstance(v, (int, float, str))}
        paths.append(write_gr(folder / f"frame_{i:04d}.gr", data.r, g, header, f"frame {i} made from the DanMAX data"))
    return paths


def fitted(out: str) -> int:
    match = re.search(r"fitted (\d+) motif", out)
    if not match:
        raise SystemExit(f"no fit count in:\n{out}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motifs", type=int, default=10_000)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--n-iter", type=int, default=50)
    parser.add_argument("--skip-learn", action="store_true", help="only the fits")
    args = parser.parse_args()
    n, frames = args.motifs, args.frames
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if KEGGIN_XYZ.is_file():
            paths = keggin_frames(folder, frames)
            single = f"sqlite:///{folder / 'single.db'}"
            run(single, "structure", "add", KEGGIN_XYZ, "--name", "s", "--permute", "W")
            run(single, "data", "add", paths[0], "--name", "d")
            run(single, "sample", "--structure", "s", "--n", n, "--seed", 1)
            single_s, out = run(single, "fit", "--structure", "s", "--data", "d")
            assert fitted(out) == n, out
            url = f"sqlite:///{folder / 'series.db'}"
            run(url, "structure", "add", KEGGIN_XYZ, "--name", "s", "--permute", "W")
            run(url, "data", "add", *paths, "--series", "keggin")
            run(url, "sample", "--structure", "s", "--n", n, "--seed", 1)
            series_s, out = run(url, "fit", "--structure", "s", "--series", "keggin")
            assert fitted(out) == n * frames, out
            print(f"109725.xyz (24 W), fast recipe, {n} motifs; one run, wall time of each command:")
            print(f"  fit --data (1 frame):        {single_s:7.1f} s  {n / single_s:9,.0f} fits/s")
            print(f"  fit --series ({frames} frames):  {series_s:7.1f} s  {n * frames / series_s:9,.0f} fits/s"
                  f"  ({n * frames / series_s / (n / single_s):.1f} x the single-dataset rate)")
            if not args.skip_learn:
                train_s, out = run(url, "train", "--structure", "s", "--series", "keggin", "--n-iter", args.n_iter, "--cv", 3)
                explain_s, _ = run(url, "explain", "--structure", "s", "--series", "keggin")
                print(f"  train --series (--n-iter {args.n_iter} --cv 3): {train_s:.1f} s; explain --series: {explain_s:.1f} s;"
                      f" together {train_s + explain_s:.1f} s for {frames} frames ({(train_s + explain_s) / frames:.2f} s per frame)")
        else:
            print(f"skipping the Keggin case: {KEGGIN_XYZ} not found")
        generated = two_motif_series(n_frames=frames)
        model, paths, times = write_two_motif_series(folder / "wo3", generated)
        url = f"sqlite:///{folder / 'wo3.db'}"
        run(url, "structure", "add", model, "--name", "wo3", "--permute", "W", "--bond-cutoff", 2.6)
        run(url, "data", "add", *paths, "--series", "grow", "--times", times)
        run(url, "sample", "--structure", "wo3", "--n", n, "--seed", 1)
        series_s, out = run(url, "fit", "--structure", "wo3", "--series", "grow")
        count = fitted(out)
        print(f"generated two-motif WO3 series (27 W, 81 atoms), {n} motifs x {frames} frames:"
              f" fit --series {series_s:.1f} s, {count / series_s:,.0f} fits/s")
        print(f"peak memory of any command: {peak_memory_mb():.0f} MiB")


if __name__ == "__main__":
    main()
