"""A polish's outputs: the polished motif as files, its fit, and the Rwp-versus-size path as a figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import plotly.graph_objects as go

__all__ = ["PolishFit", "polished_fit", "path_figure", "write_polish_files", "polish_html"]


@dataclass(frozen=True)
class PolishFit:
    """A motif's fit to the data over the fit range: r (Å), observed and calculated G (Å^-2), Rwp."""

    motif_id: int
    r: np.ndarray
    g_obs: np.ndarray
    g_calc: np.ndarray
    rwp: float
    elements: list
    positions: np.ndarray


def polished_fit(engine, outcome, motif_id: Optional[int] = None) -> PolishFit:
    """Recompute the stored fit of the polished motif (or ``motif_id``) with its refined values."""
    from sqlmodel import Session, select

    from motex_db.datasets import get_dataset
    from motex_db.fitting.refine import motif_atoms
    from motex_db.fitting.settings import FitSettings
    from motex_db.models import FitConfig, FitResult, Motif
    from motex_db.pdf import cluster_pdf
    from motex_db.reports.recompute import pdf_parameters
    from motex_db.structures import get_starting_model

    motif_id = outcome.best_motif_id if motif_id is None else motif_id
    with Session(engine) as session:
        model = get_starting_model(session, outcome.structure)
        data = get_dataset(session, outcome.dataset)
        config = session.get(FitConfig, outcome.fit_config_id)
        motif = session.get(Motif, motif_id)
        values = session.exec(
            select(FitResult.params).where(FitResult.motif_id == motif_id).where(FitResult.dataset_id == data.id)
            .where(FitResult.fit_config_id == config.id)
        ).one() or {}
    settings = FitSettings.from_dict(config.settings).resolved(data.meta or {})
    r, g = np.asarray(data.r, dtype=float), np.asarray(data.g, dtype=float)
    inside = (r >= settings.rmin - 1e-9) & (r <= settings.rmax + 1e-9)
    elements, positions = motif_atoms(model, motif.mask)
    g_calc = values.get("scale", settings.scale_start) * cluster_pdf(elements, positions, r[inside], pdf_parameters(settings, values, elements))
    g_obs = g[inside]
    rwp = float(np.sqrt(np.sum((g_obs - g_calc) ** 2) / np.sum(g_obs**2)))
    return PolishFit(motif_id, r[inside], g_obs, g_calc, rwp, elements, positions)


def path_figure(outcome, tolerance: Optional[float] = None) -> go.Figure:
    """Best Rwp at each motif size among the motifs the search evaluated, with the start and the polished motif."""
    sizes = [p["n_kept"] for p in outcome.path if p["rwp"] is not None]
    rwp = [p["rwp"] for p in outcome.path if p["rwp"] is not None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=sizes, y=rwp, mode="lines+markers", name="best Rwp at this size (polish)",
                             line={"color": "#4c72b0"}))
    start_size = outcome.start_mask.count("1")
    if outcome.start_rwp is not None:
        fig.add_trace(go.Scatter(x=[start_size], y=[outcome.start_rwp], mode="markers", name=f"start: {outcome.start_label}",
                                 marker={"symbol": "diamond", "size": 12, "color": "#dd8452"}))
    fig.add_trace(go.Scatter(x=[outcome.best_mask.count("1")], y=[outcome.best_rwp], mode="markers",
                             name=f"polished motif {outcome.best_motif_id}", marker={"symbol": "star", "size": 14, "color": "#55a868"}))
    if tolerance is not None:
        compact = outcome.compact(tolerance)
        if compact is not None:
            fig.add_trace(go.Scatter(x=[compact["n_kept"]], y=[compact["rwp"]], mode="markers",
                                     name=f"compact answer (within {tolerance:g})",
                                     marker={"symbol": "circle-open", "size": 16, "color": "#c44e52", "line": {"width": 2}}))
    fig.update_layout(xaxis_title="kept permutable atoms", yaxis_title="Rwp", template="plotly_white",
                      title=f"Polish {outcome.run_id}: {outcome.structure} / {outcome.dataset}", height=420)
    return fig


def write_polish_files(engine, outcome, out_dir: str | Path, tolerance: float) -> dict[str, Path]:
    """The polished motif as XYZ; the starting model as extended XYZ and VESTA with each atom's place in the
    SHAP (start) and polished answers; the path as CSV; the polished fit as PNG; the path figure as HTML."""
    import ase
    import ase.io
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from sqlmodel import Session

    from motex_db.reports.vesta import write_vesta
    from motex_db.structures import get_starting_model, permutable_flags

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{outcome.structure}_{outcome.dataset}_polish{outcome.run_id}"
    files: dict[str, Path] = {}
    fit = polished_fit(engine, outcome)
    files["polished_motif"] = out_dir / f"{stem}_motif.xyz"
    ase.io.write(str(files["polished_motif"]), ase.Atoms(fit.elements, fit.positions), format="xyz")

    with Session(engine) as session:
        model = get_starting_model(session, outcome.structure)
    flags = permutable_flags(model.elements, model.permutable_elements)
    perm = np.flatnonzero(flags)
    start = np.zeros(len(flags), dtype=int)
    polished = np.zeros(len(flags), dtype=int)
    start[perm] = [c == "1" for c in outcome.start_mask]
    polished[perm] = [c == "1" for c in outcome.best_mask]
    atoms = ase.Atoms(list(model.elements), model.positions)
    atoms.new_array("in_start", start)
    atoms.new_array("in_polished", polished)
    # +1 kept by both, +2 added by the polish, -1 removed by it, 0 in neither
    change = np.where(polished & start, 1, np.where(polished, 2, np.where(start, -1, 0)))
    atoms.new_array("polish_change", change)
    files["structure"] = out_dir / f"{stem}_structure.extxyz"
    ase.io.write(str(files["structure"]), atoms, format="extxyz")
    others = sorted({e for e, f in zip(model.elements, flags) if not f})
    bonds = [(a, b, model.bond_cutoff) for a in sorted(set(model.permutable_elements)) for b in others]
    files["vesta"] = write_vesta(
        out_dir / f"{stem}_structure.vesta",
        f"{outcome.structure}: polished motif {outcome.best_motif_id} (+1 kept, +2 added, -1 removed)",
        list(model.elements), model.positions, change.astype(float), flags, bonds,
    )
    rows = [{"n_kept": p["n_kept"], "best_rwp": p["rwp"], "motif_id": p["motif_id"], "mask": p["mask"]} for p in outcome.path]
    files["path"] = out_dir / f"{stem}_path.csv"
    pd.DataFrame(rows).to_csv(files["path"], index=False)

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot(fit.r, fit.g_obs, "o", ms=2.5, color="#4c72b0", label=f"data ({outcome.dataset})")
    top.plot(fit.r, fit.g_calc, "-", color="#c44e52", label=f"polished motif {outcome.best_motif_id}, Rwp {fit.rwp:.4f}")
    top.set_ylabel("G(r) (Å$^{-2}$)")
    top.legend(fontsize=8)
    bottom.plot(fit.r, fit.g_obs - fit.g_calc, "-", color="#55a868")
    bottom.set_xlabel("r (Å)")
    bottom.set_ylabel("difference")
    figure.suptitle(f"{outcome.structure}: the polished motif fitted to {outcome.dataset}", fontsize=10)
    files["fit_plot"] = out_dir / f"{stem}_fit.png"
    figure.savefig(files["fit_plot"], dpi=110, bbox_inches="tight")
    plt.close(figure)

    files["path_plot"] = out_dir / f"{stem}_path.html"
    path_figure(outcome, tolerance).write_html(str(files["path_plot"]), include_plotlyjs="cdn")
    return files


def polish_html(engine, run) -> str:
    """The report's part for a run's latest polish: both answers side by side, the Rwp-versus-size path and the
    polished motif's fit; '' when the run has no polish."""
    from sqlmodel import Session, select

    from motex_db.models import PolishRun
    from motex_db.polish import _outcome
    from motex_db.reports import figures, recompute
    from motex_db.reports.data import MotifFit
    from motex_db.reports.html import FigureBlock, esc, grid_html, number, table_html
    from motex_db.reports.sections import index_ranges

    with Session(engine) as session:
        row = session.exec(
            select(PolishRun).where(PolishRun.starting_model_id == run.structure.id)
            .where(PolishRun.dataset_id == run.dataset.id).where(PolishRun.fit_config_id == run.fit_config.id)
            .where(PolishRun.status == "done").order_by(PolishRun.id.desc())
        ).first()
    if row is None:
        return ""
    start_label = (f"SHAP answer (motif {row.start_motif_id})" if run.extracted is not None
                   and run.extracted.motif_id == row.start_motif_id else f"start (motif {row.start_motif_id})")
    outcome = _outcome(engine, row, run.structure.name, run.dataset.name, False, start_label)
    kept = lambda mask: [i for i, c in enumerate(mask, start=1) if c == "1"]
    table = table_html(
        ["", esc(start_label), "polished"],
        [
            ("motif id", outcome.start_motif_id, outcome.best_motif_id),
            ("kept permutable atoms", outcome.start_mask.count("1"), outcome.best_mask.count("1")),
            ("atoms with bonded ones", outcome.start_n_atoms, outcome.best_n_atoms),
            ("Rwp", number(outcome.start_rwp), number(outcome.best_rwp)),
            ("atoms", index_ranges(kept(outcome.start_mask)), index_ranges(kept(outcome.best_mask))),
        ],
    )
    compact = outcome.compact(0.002)
    text = (
        f"Polish {outcome.run_id} ({outcome.strategy} search, {outcome.n_evaluated} motifs evaluated, "
        f"{outcome.n_fitted} fitted, {outcome.seconds:.1f} s) added atoms {index_ranges(outcome.added) or 'none'} and "
        f"removed {index_ranges(outcome.removed) or 'none'}."
        + (f" The smallest motif within 0.002 of its best Rwp is motif {compact['motif_id']} with {compact['n_kept']} "
           f"atoms (Rwp {compact['rwp']:.4f})." if compact else "")
    )
    blocks = [FigureBlock(path_figure(outcome, 0.002), 420,
                          "Best Rwp at each motif size among every motif the polish evaluated: where the curve is flat, "
                          "a smaller motif fits about as well.", f"{run.key}-polish-path")]
    fit = MotifFit(outcome.best_motif_id, outcome.best_mask, outcome.best_mask.count("1"), outcome.best_n_atoms or 0,
                   "polish", outcome.best_rwp, _stored_params(engine, outcome))
    blocks.append(FigureBlock(figures.fit_figure(recompute.fit_curve(run, fit), "Polished motif"), 420,
                              "The polished motif's fit to the data over the fit range.", f"{run.key}-polish-fit"))
    return "\n".join(["<h3>Beyond the SHAP answer: the best-fitting motif (polish)</h3>", table,
                      f"<p>{esc(text)}</p>", grid_html(blocks)])


def _stored_params(engine, outcome) -> dict:
    from sqlmodel import Session, select

    from motex_db.models import FitResult, Motif

    with Session(engine) as session:
        motif = session.get(Motif, outcome.best_motif_id)
        return session.exec(
            select(FitResult.params).where(FitResult.motif_id == motif.id)
            .where(FitResult.fit_config_id == outcome.fit_config_id)
        ).first() or {}
