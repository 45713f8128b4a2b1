"""Polish and guided sampling on Keggin-bearing starting models with known answers (issue 13).

Starting models: 109725.xyz (24 W) and copies of it, displaced so that they do not
overlap, with or without lone W (motex_db.examples.keggin_copies); their complete
Keggin units are known by geometry. Data: the DanMAX alpha-Keggin PDF. Fast recipe.

Part 1, polish. Per model: sample uniformly, fit, train, explain (the SHAP answer),
then polish from it with the tabu search and with plain greedy, each with the
default min_gain (0.001 per atom changed) and with none, and the default tabu
search without the ranking scan. Prints the SHAP
answer, the best single unit, and for each search the polished motif's size and
Rwp, whether it holds a whole unit, motifs evaluated, fits computed and seconds.

Part 2, guided sampling. On one model, the same number of fits spent in rounds of
uniform sampling, or a uniform round then guided rounds; after each round the
extracted motif's size, Rwp and extra atoms beyond one unit.

    flock /tmp/motex-bench.lock .venv/bin/python benchmarks/bench_polish.py [--motifs 2000] [--budget 5000]

Needs ../shared/data/keggin.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

KEGGIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "keggin"
MODELS = {"109725 (24 W)": (1, 0), "2 copies (48 W)": (2, 0), "3 copies (72 W)": (3, 0), "2 copies + 24 W (72 W)": (2, 24)}


def _load() -> str:
    return os.popen("uptime").read().strip()


def _record(folder: Path, name: str, n_copies: int, n_extra: int):
    import ase
    import ase.io

    from motex_db.datasets import add_datasets
    from motex_db.db import open_engine
    from motex_db.examples import keggin_copies, keggin_units
    from motex_db.structures import add_starting_model

    atoms = ase.io.read(KEGGIN / "109725.xyz")
    elements, positions = keggin_copies(atoms.get_chemical_symbols(), atoms.positions, n_copies, n_extra, seed=0)
    path = folder / f"{name}.xyz"
    ase.io.write(str(path), ase.Atoms(elements, positions), format="xyz")
    engine = open_engine(f"sqlite:///{folder / (name + '.db')}")
    add_starting_model(engine, path, name, ["W"], 2.6, None)
    add_datasets(engine, [KEGGIN / "DanMAX_AlphaKeggin.gr"], "danmax", None, None, None)
    return engine, keggin_units(elements, positions), int(sum(e == "W" for e in elements))


def _unit_rwp(engine, name: str, units, n: int) -> float:
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import prepare_fit

    fitter = prepare_fit(engine, name, "danmax", FitSettings.for_recipe("fast")).fitter()
    masks = np.zeros((len(units), n), dtype=bool)
    for row, unit in zip(masks, units):
        row[unit - 1] = True
    return float(np.min(fitter.fit(masks).rwp))


def _has_unit(mask: str, units) -> bool:
    kept = {i + 1 for i, c in enumerate(mask) if c == "1"}
    return any(set(unit.tolist()) <= kept for unit in units)


def _extra(mask: str, units) -> int:
    """Kept W beyond the unit the motif overlaps most."""
    kept = {i + 1 for i, c in enumerate(mask) if c == "1"}
    return len(kept) - max(len(kept & set(u.tolist())) for u in units)


def _round(engine, name: str, n: int, strategy: str, seed: int, n_iter: int):
    from motex_db.catalogue import sample_motifs
    from motex_db.explain import explain_model
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import fit_catalogue
    from motex_db.learning import train_model

    sample_motifs(engine, name, n, strategy, seed, data="danmax" if strategy == "guided" else None)
    fit_catalogue(engine, name, "danmax", FitSettings.for_recipe("fast"))
    trained = train_model(engine, name, "danmax", n_iter=n_iter, seed=seed)
    return explain_model(engine, name, "danmax", trained.trained_model_id)


# (strategy, min_gain, ranking scan): the default first, then each choice changed on its own
SEARCHES = (("tabu", 0.001, True), ("tabu", 0.001, False), ("greedy", 0.001, True), ("tabu", 0.0, True),
            ("greedy", 0.0, True))


def polish_part(folder: Path, n_motifs: int, budget: int, n_iter: int) -> None:
    from motex_db.polish import polish_motif

    print(f"\n== polish from the SHAP answer ({n_motifs} uniform motifs, budget {budget} fits, fast recipe) ==")
    print(f"load before: {_load()}")
    header = ("model", "SHAP W", "SHAP Rwp", "unit Rwp", "search", "W", "Rwp", "unit?", "<=unit+0.001",
              "evaluated", "fitted", "stopped", "search s", "command s (with set-up)", "fits/s in the search")
    rows = []
    for name, (n_copies, n_extra) in MODELS.items():
        tag = name.split()[0] + f"_{n_copies}_{n_extra}"
        engine, units, n = _record(folder, tag, n_copies, n_extra)
        explanation = _round(engine, tag, n_motifs, "uniform", 0, n_iter)
        unit = _unit_rwp(engine, tag, units, n)
        for strategy, min_gain, scan in SEARCHES:
            started = time.perf_counter()
            outcome = polish_motif(engine, tag, "danmax", "extracted", budget, 0, strategy, min_gain, ranking_scan=scan)
            seconds = time.perf_counter() - started
            rows.append((name, explanation.extracted_mask.count("1"), explanation.extracted_rwp, unit,
                         f"{strategy} min_gain={min_gain:g}{'' if scan else ' no scan'}",
                         outcome.best_mask.count("1"), outcome.best_rwp, _has_unit(outcome.best_mask, units),
                         outcome.best_rwp <= unit + 0.001, outcome.n_evaluated, outcome.n_fitted, outcome.stopped,
                         outcome.seconds, seconds, outcome.n_fitted / outcome.seconds if outcome.seconds else float("nan")))
            print(" | ".join(_text(v) for v in rows[-1]), flush=True)
        engine.dispose()
    print("columns: " + " | ".join(header))
    print("(the searches of one model share the record: 'evaluated' compares them, 'fitted' counts only new fits)")
    print(f"load after: {_load()}")


def guided_part(folder: Path, n_round: int, n_rounds: int, n_iter: int) -> None:
    print(f"\n== guided against uniform sampling on 2 copies + 24 W: {n_rounds} rounds of {n_round} motifs ==")
    print(f"load before: {_load()}")
    for label in ("uniform", "guided"):
        engine, units, _ = _record(folder, f"sampling_{label}", 2, 24)
        for k in range(n_rounds):
            strategy = "uniform" if k == 0 or label == "uniform" else "guided"
            explanation = _round(engine, f"sampling_{label}", n_round, strategy, k, n_iter)
            unit = _unit_rwp(engine, f"sampling_{label}", units, 72)
            mask = explanation.extracted_mask
            changes = (explanation.convergence or {}).get("three_quarters", {}).get("sign_changes")
            print(f"{label:8s} round {k + 1} ({strategy:7s}) fits {(k + 1) * n_round:6d}: extracted {mask.count('1'):2d} W, "
                  f"Rwp {_text(explanation.extracted_rwp)} (best unit {unit:.4f}), whole unit {_has_unit(mask, units)}, "
                  f"W beyond one unit {_extra(mask, units)}, sign changes (3/4) {changes}", flush=True)
        engine.dispose()
    print(f"load after: {_load()}")


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 100 else f"{value:.0f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motifs", type=int, default=2000, help="uniform motifs before the SHAP answer (part 1)")
    parser.add_argument("--budget", type=int, default=5000, help="fits a polish may spend")
    parser.add_argument("--n-iter", type=int, default=6, help="Bayesian iterations of each training")
    parser.add_argument("--round", type=int, default=1000, help="motifs per sampling round (part 2)")
    parser.add_argument("--rounds", type=int, default=3, help="sampling rounds (part 2)")
    parser.add_argument("--part", choices=("polish", "guided", "both"), default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if args.part in ("polish", "both"):
            polish_part(folder, args.motifs, args.budget, args.n_iter)
        if args.part in ("guided", "both"):
            guided_part(folder, args.round, args.rounds, args.n_iter)


if __name__ == "__main__":
    main()
