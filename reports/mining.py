"""The report's structure-mining sections: for a dataset mined against a library, the ranked candidates and their fits.

One section per (dataset, library, method), from its latest mining result: a
table of the candidates (CIF name, formula, score, lattice stretch, refined parameters, Rwp)
and, for the first three, the measured G(r) against the candidate's refined
crystal PDF. Candidates mined without ``--refine`` are refined here with the
same quick refinement (it takes a fraction of a second each), so every figure
shows a fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from motex_db.library import LibrarySettings
from motex_db.mining import q_settings, refine_candidate
from motex_db.models import Dataset, Library, LibraryStructure, MiningCandidate, MiningResult
from motex_db.reports.html import FigureBlock, esc, grid_html, number, table_html
from motex_db.reports.style import base_layout

__all__ = ["MiningView", "gather_mining", "mining_section", "N_FITS_SHOWN"]

#: Candidates whose fits are drawn per section.
N_FITS_SHOWN = 3


@dataclass
class MiningView:
    result: MiningResult
    dataset: Dataset
    library: Library
    candidates: list[tuple[MiningCandidate, LibraryStructure]]

    @property
    def title(self) -> str:
        return f"{self.dataset.name} mined in {self.library.name} ({self.result.method})"


def gather_mining(engine: Engine, datasets: Optional[Sequence[str]] = None) -> list[MiningView]:
    """The latest mining result per (dataset, library, method), for the named datasets (default: all)."""
    with Session(engine) as session:
        query = select(MiningResult, Dataset, Library).join(Dataset, Dataset.id == MiningResult.dataset_id) \
            .join(Library, Library.id == MiningResult.library_id).order_by(MiningResult.id.desc())
        if datasets:
            query = query.where(Dataset.name.in_(list(datasets)))
        latest: dict[tuple, tuple] = {}
        for result, dataset, library in session.exec(query).all():
            latest.setdefault((dataset.id, library.id, result.method), (result, dataset, library))
        views = []
        for key in sorted(latest):
            result, dataset, library = latest[key]
            rows = session.exec(
                select(MiningCandidate, LibraryStructure)
                .join(LibraryStructure, LibraryStructure.id == MiningCandidate.structure_id)
                .where(MiningCandidate.mining_result_id == result.id).order_by(MiningCandidate.rank)
            ).all()
            views.append(MiningView(result, dataset, library, [(c, s) for c, s in rows]))
    return views


def _fit_figure(view: MiningView, candidate: MiningCandidate, structure: LibraryStructure) -> go.Figure:
    settings = LibrarySettings.from_dict(view.library.settings)
    params = candidate.params
    if params:
        refined = refine_candidate(structure.crystal, settings, view.dataset.r, view.dataset.g,
                                   params.get("qmin"), params.get("qmax"), params.get("qdamp"), start=params)
    else:
        qmin, qmax, qdamp = q_settings(view.dataset, settings)
        refined = refine_candidate(structure.crystal, settings, view.dataset.r, view.dataset.g, qmin, qmax, qdamp,
                                   stretch=candidate.stretch)
    difference = refined.g_obs - refined.g_calc
    offset = float(min(refined.g_obs.min(), refined.g_calc.min()) - 1.2 * np.abs(difference).max())
    fig = go.Figure()
    fig.add_scatter(x=refined.r, y=refined.g_obs, mode="markers", name="measured", marker=dict(size=3, color="#1f77b4"),
                    hovertemplate="r %{x:.2f} Å<br>G_obs %{y:.4f}<extra></extra>")
    fig.add_scatter(x=refined.r, y=refined.g_calc, mode="lines", name="candidate", line=dict(color="#d62728", width=1.6),
                    hovertemplate="r %{x:.2f} Å<br>G_calc %{y:.4f}<extra></extra>")
    fig.add_scatter(x=refined.r, y=difference + offset, mode="lines", name="difference (offset)",
                    line=dict(color="#2ca02c", width=1.1), customdata=difference,
                    hovertemplate="r %{x:.2f} Å<br>G_obs − G_calc %{customdata:.4f}<extra></extra>")
    fig.add_hline(y=offset, line=dict(color="grey", width=1, dash="dot"))
    size = f", diameter {refined.diameter:.0f} Å" if refined.diameter else ", bulk"
    title = (f"#{candidate.rank} {structure.name} ({structure.formula}): Rwp {refined.rwp:.3f}, "
             f"lattice ×{refined.lattice:.4f}, Uiso {refined.uiso:.4f} Å²{size}")
    return base_layout(fig, title, "r (Å)", "G (Å⁻²)")


def mining_section(view: MiningView, anchor: str) -> str:
    """The candidates of one mining result as a table and their fits to the data."""
    result = view.result
    score = "Pearson r" if result.method == "pcc" else "probability"
    rows = []
    for candidate, structure in view.candidates:
        p = candidate.params or {}
        stretch = "—" if candidate.stretch is None else f"{100 * candidate.stretch:+.1f} %"
        rows.append((candidate.rank, candidate.id, structure.name, structure.formula, structure.spacegroup or "—",
                     number(candidate.score, ".3f"), stretch, number(candidate.rwp, ".3f"), number(p.get("lattice"), ".4f"),
                     number(p.get("uiso"), ".4f"), number(p.get("diameter"), ".0f") if p else "—"))
    table = table_html(
        ["rank", "candidate", "structure (CIF)", "formula", "space group", score, "stretch", "Rwp", "lattice",
         "Uiso (Å²)", "diameter (Å)"], rows, numeric=[True, True, False, False, False, True, True, True, True, True, True],
    )
    confidence = result.confidence or {}
    numbers = f"best Pearson r {confidence.get('best_pcc', float('nan')):.3f}"
    if confidence.get("best_stretch"):
        numbers += f" at a lattice stretch of {100 * confidence['best_stretch']:+.1f} %"
    if "top3_probability" in confidence:
        numbers += f", top-3 probability {confidence['top3_probability']:.3f}"
    verdict = (f'<p><b>Warning: this PDF is probably outside the catalogue</b> ({esc(numbers)}): no candidate '
               "is likely to describe it.</p>" if result.out_of_catalogue else f"<p>Confidence: {esc(numbers)}.</p>")
    blocks = [
        FigureBlock(_fit_figure(view, candidate, structure), 400,
                    "Blue: the measured G(r); red: the candidate's crystal PDF with its refined scale, lattice "
                    "expansion, Uiso and spherical particle diameter (the quick refinement of <code>mine --refine</code>, "
                    "redone here where the candidate was not refined); green: the difference, offset below the dotted "
                    "line. A flat green line and a low Rwp mean the structure type explains the data.",
                    f"{anchor}-fit-{candidate.rank}")
        for candidate, structure in view.candidates[:N_FITS_SHOWN]
    ]
    head = (f"{len(view.candidates)} candidates ranked by {score} among the classes of library "
            f"<b>{esc(view.library.name)}</b>; turn one into an ML-MotEx starting model with "
            "<code>motex-db structure add --from-candidate ID --name NAME --permute EL --radius R</code>.")
    return "\n".join([
        f'<section id="{esc(anchor)}"><h2>Structure mining: {esc(view.title)}</h2>',
        f"<p>{head}</p>", verdict, table, grid_html(blocks), "</section>",
    ])
