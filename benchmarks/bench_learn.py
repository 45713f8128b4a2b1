"""Steps 3 and 4 through the real command line: `train` then `explain`, with their defaults; and the old search beside.

Run from the repository root (under the benchmark lock, as every benchmark here):

    flock /tmp/motex-bench.lock .venv/bin/python benchmarks/bench_learn.py                 # 10^4 motifs, 48 W
    flock /tmp/motex-bench.lock .venv/bin/python benchmarks/bench_learn.py --metal 72 --motifs 50000 --repeats 1
    flock /tmp/motex-bench.lock .venv/bin/python benchmarks/bench_learn.py --series 100 --repeats 1 --no-compare

A WO3 cluster with --metal permutable W (48: ~220 atoms; 72: ~300) and a PDF
simulated from its core (see bench_fit.py) is sampled and fitted once; then,
in a fresh copy of the record per repeat (without its MLflow store, as at a
first `train`), `train` and `explain` run with their defaults and are timed
(wall time of each command, process start included); medians are printed,
with the load average.

With --series K (needs ../shared): ML-MotEx's Keggin model against K frames
made from the DanMAX measurement (bench_series.keggin_frames), --motifs
motifs fitted to every frame; then `train --series` and `explain --series`
with their defaults, timed the same way.

Then, on the same fits and in this process, the answers are compared with
the search motex-db used before issue 12 (`--compare`, on by default): the
code of commit OLD_COMMIT (its learning.py and explain.py, read with git) runs
its 50-iteration search and its explanation, and the new defaults run
beside it. Printed: test MAE of both (the target: the new one at most 5 %
above the old), the negative atoms of both, and the compute time of both
(CPU-bound, one run each) with their ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import sqlalchemy as sa

from bench_fit import MOTEX, peak_memory_mb, run
from bench_pdf import oxide_particle

OLD_COMMIT = "255c841"  # the record before issue 12: 50-iteration search, TreeSHAP on every training motif
REPO = Path(__file__).resolve().parents[1]


def generated_model(folder: Path, n_metal: int) -> tuple[Path, Path]:
    """A WO3 cluster with ``n_metal`` W, and a PDF simulated from its half nearest the centre."""
    elements, positions, _ = oxide_particle(n_metal=n_metal, n_oxygen=int(round(n_metal * 3.6)))
    structure = folder / f"wo3_{n_metal}.xyz"
    ase.io.write(str(structure), ase.Atoms(elements, positions), format="xyz")
    core, core_positions, _ = oxide_particle(n_metal=n_metal // 2, n_oxygen=2 * n_metal)
    core_file = folder / "wo3_core.xyz"
    ase.io.write(str(core_file), ase.Atoms(core, core_positions), format="xyz")
    data = folder / "wo3_core.gr"
    subprocess.run([MOTEX, "simulate", core_file, "--out", data, "--rmin", "0", "--rmax", "20", "--zoom", "1.004"],
                   check=True, capture_output=True)
    return structure, data


def load_fits(url: str, n_permutable: int) -> tuple[np.ndarray, np.ndarray]:
    """The successful fits of the record, by motif id (as `train` reads them)."""
    from motex_db.catalogue import masks_from_text

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT m.mask, f.rwp FROM motif m JOIN fit_result f ON f.motif_id = m.id WHERE f.status = 'ok' ORDER BY m.id"
        ).fetchall()
    engine.dispose()
    return masks_from_text([r[0] for r in rows], n_permutable), np.array([r[1] for r in rows], dtype=float)


def old_modules(folder: Path):
    """learning.py and explain.py of OLD_COMMIT, importable beside today's package."""
    modules = []
    for name in ("learning", "explain"):
        text = subprocess.run(["git", "show", f"{OLD_COMMIT}:motex_db/{name}.py"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
        path = folder / f"old_{name}.py"
        path.write_text(text.replace("from motex_db.learning import", "from old_learning import"))
        spec = importlib.util.spec_from_file_location(f"old_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"old_{name}"] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def compare(url: str, n_permutable: int, folder: Path) -> None:
    """Old and new step 3 + 4 on the same fits, in this process: test MAE, negative atoms, compute time."""
    from motex_db import contributions, surrogate

    old_learning, old_explain = old_modules(folder)
    masks, rwp = load_fits(url, n_permutable)

    def old():
        result = old_learning.train_surrogate(masks, rwp, seed=0, n_iter=50)
        X = old_learning.features(masks)[result.train_idx]
        found = old_explain.atom_contributions(old_explain.shap_values(result.model, X), X)
        old_explain.contribution_convergence(masks, rwp, result.hyperparameters, 0, found.contribution)
        return result, found

    def new():
        result = surrogate.train_surrogate(masks, rwp, seed=0)
        X = surrogate.features(masks)[result.train_idx]
        X = X[contributions.shap_rows(len(X), 0)]
        _, found, _ = contributions.explain_with_convergence(result.model, X, masks, rwp, result.hyperparameters, 0)
        return result, found

    figures = {}
    for name, step in (("before issue 12", old), ("now", new)):
        started = time.perf_counter()
        result, found = step()
        figures[name] = (time.perf_counter() - started, result, found)
    (old_s, old_r, old_c), (new_s, new_r, new_c) = figures["before issue 12"], figures["now"]
    print(f"same {len(rwp)} fits, in this process (train + explain with its convergence check), load {load()}:")
    for name, (seconds, result, found) in figures.items():
        negative = np.flatnonzero(found.contribution < 0) + 1
        print(f"  {name:16s} {seconds:7.1f} s  {len(result.trials):2d} trials  {result.best_iteration + 1:5d} trees  "
              f"test MAE {result.metrics['mae']:.5f}  {len(negative)} negative atoms")
    same = np.array_equal(old_c.contribution < 0, new_c.contribution < 0)
    print(f"  ratio old/new time: {old_s / new_s:.1f}x; test MAE new/old: {new_r.metrics['mae'] / old_r.metrics['mae']:.3f}; "
          f"negative atoms {'the same' if same else 'differ: ' + str(sorted(set(np.flatnonzero(old_c.contribution < 0) + 1) ^ set(np.flatnonzero(new_c.contribution < 0) + 1)))}")


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def timed_repeats(folder: Path, repeats: int, train_args: list, explain_args: list) -> tuple:
    """Median wall times of `train` and `explain` over fresh copies of folder/fitted.db; the last outputs."""
    timings, out, last = [], "", ""
    for repeat in range(repeats):
        copy = folder / f"run{repeat}"
        copy.mkdir()
        shutil.copy(folder / "fitted.db", copy / "motex.db")
        copy_url = f"sqlite:///{copy / 'motex.db'}"
        train_s, out = run(copy_url, "train", *train_args)
        explain_s, last = run(copy_url, "explain", *explain_args)
        timings.append((train_s, explain_s))
    train_s = statistics.median(t for t, _ in timings)
    explain_s = statistics.median(e for _, e in timings)
    print(f"  train: {train_s:.1f} s   explain: {explain_s:.1f} s   together: {train_s + explain_s:.1f} s "
          f"(runs: {', '.join(f'{t + e:.1f}' for t, e in timings)})")
    print(f"  peak memory of any command: {peak_memory_mb():.0f} MiB")
    return out, last


def series_case(folder: Path, n_frames: int, n_motifs: int, repeats: int) -> None:
    from bench_pdf import KEGGIN_XYZ
    from bench_series import keggin_frames

    paths = keggin_frames(folder, n_frames)
    url = f"sqlite:///{folder / 'fitted.db'}"
    run(url, "structure", "add", KEGGIN_XYZ, "--name", "s", "--permute", "W")
    run(url, "data", "add", *paths, "--series", "keggin")
    run(url, "sample", "--structure", "s", "--n", n_motifs, "--seed", 1)
    fit_s, _ = run(url, "fit", "--structure", "s", "--series", "keggin")
    print(f"109725.xyz (24 W), {n_motifs} motifs x {n_frames} frames made from the DanMAX data (fit --series "
          f"{fit_s:.1f} s); train --series then explain --series with defaults; medians of {repeats} runs, "
          f"load {load()}:")
    out, last = timed_repeats(folder, repeats, ["--structure", "s", "--series", "keggin"],
                              ["--structure", "s", "--series", "keggin"])
    print("  train said: " + " / ".join(line for line in out.splitlines() if "frame" in line)[:300])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motifs", type=int, default=10_000)
    parser.add_argument("--metal", type=int, default=48, help="permutable W of the generated model")
    parser.add_argument("--series", type=int, default=0, help="frames of a Keggin series instead (needs ../shared)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compare", action="store_true", help="skip the comparison with the old search")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if args.series:
            series_case(folder, args.series, args.motifs, args.repeats)
            return
        structure, data = generated_model(folder, args.metal)
        url = f"sqlite:///{folder / 'fitted.db'}"
        run(url, "structure", "add", structure, "--name", "s", "--permute", "W")
        run(url, "data", "add", data, "--name", "d")
        run(url, "sample", "--structure", "s", "--n", args.motifs, "--seed", 1)
        fit_s, _ = run(url, "fit", "--structure", "s", "--data", "d")
        print(f"{args.motifs} motifs, N = {args.metal} W (fit {fit_s:.1f} s); train then explain with defaults; "
              f"medians of {args.repeats} runs, load {load()}:")
        steps = ["--structure", "s", "--data", "d"]
        out, last = timed_repeats(folder, args.repeats, steps, steps)
        print("  train said: " + " / ".join(line for line in out.splitlines() if line.startswith(("trained", "test set"))))
        print("  explain said: " + next((l for l in last.splitlines() if l.startswith("extracted motif")), "")[:160])
        if not args.no_compare:
            compare(url, args.metal, folder)


if __name__ == "__main__":
    main()
