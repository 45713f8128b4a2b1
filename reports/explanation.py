"""Files of one explanation: contributions table, coloured starting model, SHAP summary, extracted motif."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def clipped_colour_values(values: np.ndarray, low: float = 10, high: float = 90) -> np.ndarray:
    """Values clipped to their 10th-90th percentile range, so a few outliers do not wash out the colours."""
    lo, hi = np.percentile(values, [low, high])
    return np.clip(values, lo, hi)


def write_shap_summary(values: np.ndarray, features: np.ndarray, names: list[str], title: str,
                       path: str | Path) -> Path:
    """shap's summary plot (beeswarm) of SHAP ``values`` of motifs with ``features``, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    shap.summary_plot(values, features, feature_names=names, show=False, max_display=min(30, len(names)),
                      plot_size=(8, 0.3 * min(30, len(names)) + 1.5))
    figure = plt.gcf()
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return Path(path)


def write_explanation_files(outcome, out_dir: str | Path, draw_shap_summary=write_shap_summary) -> dict[str, Path]:
    """Write contributions.csv, the starting model as extended XYZ with each atom's contribution,
    the extracted motif as XYZ, and a SHAP summary plot (PNG, by ``draw_shap_summary``, which takes
    :func:`write_shap_summary`'s arguments and may draw it in another process)."""
    import ase
    import ase.io

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{outcome.structure}_{outcome.dataset}_model{outcome.trained_model_id}"
    files: dict[str, Path] = {}

    table = outcome.contributions.sort_values("contribution")
    files["contributions"] = out_dir / f"{stem}_contributions.csv"
    table.to_csv(files["contributions"], index=False)

    atoms = ase.Atoms(outcome.starting_elements, outcome.starting_positions)
    contribution = np.zeros(len(atoms))
    perm_index = np.zeros(len(atoms), dtype=int)
    perm_positions = np.flatnonzero(outcome.permutable)
    contribution[perm_positions] = outcome.contributions.sort_values("atom_index")["contribution"].to_numpy()
    perm_index[perm_positions] = np.arange(1, len(perm_positions) + 1)
    atoms.new_array("contribution", contribution)
    atoms.new_array("contribution_clipped", np.zeros(len(atoms)))
    atoms.arrays["contribution_clipped"][perm_positions] = clipped_colour_values(contribution[perm_positions])
    atoms.new_array("permutable_index", perm_index)
    files["coloured_structure"] = out_dir / f"{stem}_contributions.extxyz"
    ase.io.write(str(files["coloured_structure"]), atoms, format="extxyz")

    from motex_db.reports.vesta import write_vesta

    permutable_elements = sorted({e for e, p in zip(outcome.starting_elements, outcome.permutable) if p})
    others = sorted({e for e, p in zip(outcome.starting_elements, outcome.permutable) if not p})
    bonds = [(a, b, outcome.bond_cutoff) for a in permutable_elements for b in others]
    files["vesta"] = write_vesta(
        out_dir / f"{stem}_contributions.vesta", f"{outcome.structure} coloured by contribution ({outcome.dataset})",
        outcome.starting_elements, outcome.starting_positions, contribution, np.asarray(outcome.permutable), bonds,
    )

    if outcome.shap is not None:
        names = ["n_kept"] + [f"{el}{i}" for i, el in enumerate(outcome.elements, start=1)]
        files["shap_values"] = out_dir / f"{stem}_shap_values.csv"
        np.savetxt(files["shap_values"], outcome.shap, delimiter=",", header=",".join(names), comments="", fmt="%.6g")

    if outcome.extracted_elements:
        files["extracted_motif"] = out_dir / f"{stem}_extracted_motif.xyz"
        ase.io.write(str(files["extracted_motif"]), ase.Atoms(outcome.extracted_elements, outcome.extracted_positions), format="xyz")

    if outcome.shap is not None:
        names = ["n_kept"] + [f"{el}{i}" for i, el in enumerate(outcome.elements, start=1)]
        files["shap_summary"] = out_dir / f"{stem}_shap_summary.png"
        draw_shap_summary(outcome.shap, outcome.features, names,
                          f"SHAP values of the surrogate: {outcome.structure} / {outcome.dataset}",
                          files["shap_summary"])
    return files


def write_series_explanation_files(outcome, out_dir: str | Path) -> dict[str, Path]:
    """Write a series explanation: every frame's contributions (long table), the contributions as a
    frames x atoms matrix, and one row per frame (extracted motif, its Rwp, the best Rwp)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{outcome.structure}_{outcome.series}"
    files = {
        "contributions": out_dir / f"{stem}_contributions.csv",
        "contribution_matrix": out_dir / f"{stem}_contribution_matrix.csv",
        "frames": out_dir / f"{stem}_frames.csv",
    }
    outcome.contributions.to_csv(files["contributions"], index=False)
    matrix = outcome.contributions.pivot(index="frame", columns="atom_index", values="contribution")
    matrix = matrix.loc[outcome.frames["frame"]]
    matrix.columns = [f"{outcome.elements[i - 1]}{i}" for i in matrix.columns]
    matrix.insert(0, "time", outcome.frames["time"].to_numpy())
    matrix.to_csv(files["contribution_matrix"])
    outcome.frames.to_csv(files["frames"], index=False)
    return files
