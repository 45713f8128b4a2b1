"""The figures of one run: fit quality over the catalogue, fits, the surrogate, its explanation.

Every function takes plain data (arrays, frames, the dataclasses of
:mod:`motex_db.reports.data` and :mod:`motex_db.reports.recompute`) and
returns a ``plotly.graph_objects.Figure``; none reads the record. Rwp and
contributions are dimensionless (Rwp units), r in Å, G in Å^-2.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from motex_db.learning import N_INITIAL

from motex_db.reports.data import MotifFit
from motex_db.reports.recompute import ConvergenceLine, FitCurve, HoldoutPredictions, TrainingShap
from motex_db.reports.style import (
    BEST_COLOUR, CALCULATED_COLOUR, DIFFERENCE_COLOUR, EXTRACTED_COLOUR, KEPT_COLOUR,
    OBSERVED_COLOUR, REMOVED_COLOUR, atom_labels, base_layout, contribution_colours, structure_colour,
    symmetric_clipped_range,
)

__all__ = [
    "rwp_by_size", "fit_figure", "parity_figure", "loss_curve", "search_trials", "shap_summary",
    "contribution_bars", "environment_figure", "convergence_figure",
]

# Rwp bins of the density view; with motif sizes as the other axis (N + 1
# columns at most) the figure stays a few kB for any number of motifs.
_RWP_BINS = 70
# Above this many points a scatter is drawn with WebGL, which stays fluid.
_WEBGL_POINTS = 5000


def _motif_marker(fig: go.Figure, fit: Optional[MotifFit], name: str, symbol: str, colour: str) -> None:
    if fit is None or fit.rwp is None:
        return
    fig.add_scatter(
        x=[fit.n_kept], y=[fit.rwp], mode="markers", name=name,
        marker=dict(symbol=symbol, size=15, color=colour, line=dict(color="white", width=1.5)),
        hovertemplate=f"{name}<br>motif {fit.motif_id}: %{{x}} kept atoms<br>Rwp %{{y:.4f}}<extra></extra>",
    )


def rwp_by_size(fits: pd.DataFrame, best: Optional[MotifFit], extracted: Optional[MotifFit], n_permutable: int,
                score_name: str = "Rwp") -> go.Figure:
    """Density of Rwp against motif size (kept permutable atoms) over every sampled motif.

    The motifs are binned (one column per size, :data:`_RWP_BINS` Rwp rows)
    and the counts drawn on a log colour scale; the line is the lowest Rwp at
    each size, the markers the best sampled and the extracted motif.
    """
    sampled = fits[~fits["extracted"]]
    sizes = sampled["n_kept"].to_numpy()
    rwp = sampled["rwp"].to_numpy()
    fig = go.Figure()
    if len(rwp):
        low, high = float(rwp.min()), float(rwp.max())
        if high - low < 1e-9:
            high = low + 1e-3
        edges = np.linspace(low, high, _RWP_BINS + 1)
        columns = np.arange(sizes.min(), sizes.max() + 1)
        counts, _, _ = np.histogram2d(rwp, sizes, bins=[edges, np.append(columns - 0.5, columns[-1] + 0.5)])
        shown = np.where(counts > 0, np.log10(np.maximum(counts, 1)), np.nan)
        top = max(1.0, float(np.log10(counts.max())))
        ticks = [v for v in (0, 1, 2, 3, 4, 5, 6) if v <= top + 1e-9]
        fig.add_heatmap(
            x=columns, y=0.5 * (edges[:-1] + edges[1:]), z=shown, customdata=counts.astype(int),
            colorscale="Viridis", zmin=0, zmax=top, name="motifs",
            colorbar=dict(title=dict(text="motifs", side="right"), tickvals=ticks,
                          ticktext=[f"{10**v:,}" for v in ticks], thickness=12, len=0.8),
            hovertemplate="%{x} kept atoms, Rwp ≈ %{y:.3f}<br>%{customdata} motifs<extra></extra>",
        )
        lowest = sampled.groupby("n_kept")["rwp"].min()
        fig.add_scatter(
            x=lowest.index, y=lowest.values, mode="lines", name="lowest Rwp per size",
            line=dict(color="#444", width=1.5), hovertemplate="%{x} kept atoms: lowest Rwp %{y:.4f}<extra></extra>",
        )
    _motif_marker(fig, best, "best sampled motif", "star", BEST_COLOUR)
    _motif_marker(fig, extracted, "extracted motif", "diamond", EXTRACTED_COLOUR)
    base_layout(fig, f"{score_name} of {len(rwp):,} sampled motifs against their size",
                f"kept permutable atoms (of {n_permutable})", score_name)
    fig.update_xaxes(range=[0, n_permutable + 1])
    return fig


def fit_figure(curve: FitCurve, what: str) -> go.Figure:
    """Observed and calculated G(r) over the fit range, with the difference offset below."""
    spread = float(np.abs(curve.difference).max()) if curve.r.size else 0.0
    offset = float(min(curve.g_obs.min(), curve.g_calc.min()) - 1.2 * spread) if curve.r.size else 0.0
    fig = go.Figure()
    fig.add_scatter(x=curve.r, y=curve.g_obs, mode="markers", name="observed",
                    marker=dict(size=3.5, color=OBSERVED_COLOUR), hovertemplate="r %{x:.3f} Å<br>G_obs %{y:.4f}<extra></extra>")
    fig.add_scatter(x=curve.r, y=curve.g_calc, mode="lines", name="calculated",
                    line=dict(color=CALCULATED_COLOUR, width=1.8), hovertemplate="r %{x:.3f} Å<br>G_calc %{y:.4f}<extra></extra>")
    fig.add_scatter(x=curve.r, y=curve.difference + offset, mode="lines", name="difference (offset)",
                    line=dict(color=DIFFERENCE_COLOUR, width=1.2), customdata=curve.difference,
                    hovertemplate="r %{x:.3f} Å<br>G_obs − G_calc %{customdata:.4f}<extra></extra>")
    fig.add_hline(y=offset, line=dict(color="grey", width=1, dash="dot"))
    motif = curve.motif
    title = f"{what}: motif {motif.motif_id}, {curve.composition} ({motif.n_kept} kept), Rwp {curve.rwp:.4f}"
    return base_layout(fig, title, "r (Å)", "G (Å⁻²)")


def parity_figure(predictions: HoldoutPredictions, metrics: dict) -> go.Figure:
    """Surrogate-predicted against fitted Rwp of the test motifs; the diagonal is a perfect surrogate."""
    fig = go.Figure()
    if len(predictions.rwp):
        scatter = go.Scattergl if len(predictions.rwp) > _WEBGL_POINTS else go.Scatter
        fig.add_trace(scatter(
            x=predictions.rwp, y=predictions.predicted, mode="markers", name="test motifs",
            marker=dict(size=5, color=predictions.n_kept, colorscale="Cividis", opacity=0.7,
                        colorbar=dict(title=dict(text="kept", side="right"), thickness=12, len=0.8)),
            customdata=np.stack([predictions.motif_ids, predictions.n_kept], axis=1),
            hovertemplate="motif %{customdata[0]} (%{customdata[1]} kept)<br>fitted %{x:.4f}<br>predicted %{y:.4f}<extra></extra>",
        ))
        low = float(min(predictions.rwp.min(), predictions.predicted.min()))
        high = float(max(predictions.rwp.max(), predictions.predicted.max()))
        fig.add_scatter(x=[low, high], y=[low, high], mode="lines", name="predicted = fitted",
                        line=dict(color="#444", dash="dash", width=1), hoverinfo="skip")
    parts = [f"{name} {metrics[key]:.4f}" for key, name in (("mae", "MAE"), ("rmse", "RMSE")) if key in metrics]
    if metrics.get("r2") is not None and np.isfinite(metrics["r2"]):
        parts.append(f"R² {metrics['r2']:.3f}")
    fig = base_layout(fig, f"Surrogate on {len(predictions.rwp):,} test motifs", "fitted Rwp", "predicted Rwp",
                      legend_top=False)
    # the scores inside the plot, top left, where a good surrogate leaves no points
    fig.add_annotation(x=0.02, y=0.98, xref="paper", yref="paper", xanchor="left", yanchor="top", align="left",
                       text="<br>".join(parts), showarrow=False, bgcolor="rgba(255,255,255,0.85)", font=dict(size=12))
    fig.update_layout(showlegend=False)
    return fig


def loss_curve(training_log: dict) -> go.Figure:
    """MAE per boosting round on the trees' own motifs and on the early-stopping validation motifs."""
    curve = (training_log or {}).get("learning_curve") or {}
    best = (training_log or {}).get("best_iteration")
    fig = go.Figure()
    for part, colour, dash in (("train", KEPT_COLOUR, "solid"), ("validation", REMOVED_COLOUR, "solid")):
        values = (curve.get(part) or {}).get("mae") or []
        if values:
            fig.add_scatter(x=np.arange(1, len(values) + 1), y=values, mode="lines", name=f"{part} MAE",
                            line=dict(color=colour, dash=dash, width=1.6),
                            hovertemplate=f"round %{{x}}<br>{part} MAE %{{y:.4f}}<extra></extra>")
    if best is not None:
        rounds = max((len((curve.get(part) or {}).get("mae") or []) for part in ("train", "validation")), default=0)
        # the label goes on the side of the line with room for it
        side = "right" if rounds and best + 1 > 0.6 * rounds else "left"
        fig.add_vline(x=int(best) + 1, line=dict(color="#444", dash="dot", width=1))
        fig.add_annotation(x=int(best) + 1, y=1, yref="paper", text=f"kept {int(best) + 1} rounds ",
                           showarrow=False, xanchor=side, yanchor="top", font=dict(size=11))
    fig = base_layout(fig, "Loss curve of the final fit (early stopping)", "boosting round", "MAE (Rwp)")
    fig.update_yaxes(rangemode="tozero")
    return fig


def _params_text(params: dict) -> str:
    return "<br>".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in sorted(params.items()))


def search_trials(training_log: dict) -> go.Figure:
    """The search MAE (validation part or CV folds) of each hyper-parameter trial, and the best so far."""
    trials = sorted((training_log or {}).get("trials") or [], key=lambda t: t["index"])
    fig = go.Figure()
    if trials:
        index = np.array([t["index"] + 1 for t in trials])
        score = np.array([t["cv_mae"] for t in trials], dtype=float)
        text = [_params_text(t.get("params") or {}) for t in trials]
        random = index <= N_INITIAL
        for chosen, name, colour in ((random, "random", "#999"), (~random, "Bayesian", KEPT_COLOUR)):
            if chosen.any():
                fig.add_scatter(x=index[chosen], y=score[chosen], mode="markers", name=name, text=np.array(text)[chosen],
                                marker=dict(size=8, color=colour),
                                hovertemplate="trial %{x}: search MAE %{y:.4f}<br>%{text}<extra></extra>")
        fig.add_scatter(x=index, y=np.minimum.accumulate(score), mode="lines", name="best so far",
                        line=dict(color="#444", shape="hv", width=1.5), hoverinfo="skip")
    fig = base_layout(fig, f"Hyper-parameter search: {len(trials)} trials", "trial", "search MAE (Rwp)")
    fig.update_xaxes(dtick=max(1, len(trials) // 10) if trials else None)
    return fig


def _box_stats(values: np.ndarray, member: np.ndarray) -> tuple[list, ...]:
    """Per column: 5th percentile, quartiles, 95th percentile and mean over the rows where ``member``."""
    out = ([], [], [], [], [], [])
    for column in range(values.shape[1]):
        chosen = values[member[:, column], column]
        if chosen.size == 0:
            for part in out:
                part.append(None)
            continue
        p5, q1, median, q3, p95 = np.percentile(chosen, [5, 25, 50, 75, 95])
        for part, value in zip(out, (p5, q1, median, q3, p95, chosen.mean())):
            part.append(float(value))
    return out


def shap_summary(shap: TrainingShap, elements: Sequence[str], order: np.ndarray) -> go.Figure:
    """Per atom, the distribution of its SHAP values over motifs keeping it and motifs removing it.

    Boxes are drawn from precomputed statistics (quartiles, whiskers at the
    5th and 95th percentiles, dashed mean), so the figure's size does not
    grow with the number of motifs. Atoms in ``order`` (0-based), most
    negative contribution first.
    """
    values = shap.values[:, 1:][:, order]
    kept = shap.X[:, 1:][:, order] == 1
    labels = np.array(atom_labels(elements))[order]
    fig = go.Figure()
    for member, name, colour in ((kept, "kept", KEPT_COLOUR), (~kept, "removed", REMOVED_COLOUR)):
        p5, q1, median, q3, p95, mean = _box_stats(values, member)
        fig.add_trace(go.Box(
            x=labels, q1=q1, median=median, q3=q3, lowerfence=p5, upperfence=p95, mean=mean, name=f"atom {name}",
            marker_color=colour, line=dict(width=1), boxpoints=False, offsetgroup=name,
        ))
    fig.add_hline(y=0, line=dict(color="#444", width=1))
    subset = "" if len(shap.values) == shap.n_training else f" (a random {len(shap.values):,} of them)"
    fig = base_layout(fig, f"SHAP values of {shap.n_training:,} training motifs{subset}, per atom",
                      "permutable atom (most negative contribution first)", "SHAP value (Rwp)")
    fig.update_layout(boxmode="group", boxgap=0.25, boxgroupgap=0.1)
    fig.update_xaxes(type="category", tickangle=-90 if len(labels) > 30 else 0)
    return fig


def contribution_bars(contributions: pd.DataFrame) -> go.Figure:
    """Each atom's contribution with its uncertainty, sorted; coloured like the 3D view."""
    table = contributions.sort_values(["contribution", "atom_index"])
    labels = [f"{el}{i}" for el, i in zip(table["element"], table["atom_index"])]
    limit = symmetric_clipped_range(table["contribution"].to_numpy())
    fig = go.Figure(go.Bar(
        x=labels, y=table["contribution"], name="contribution",
        error_y=dict(type="data", array=table["uncertainty"], thickness=1, width=2, color="#555"),
        marker=dict(color=contribution_colours(table["contribution"], limit), line=dict(color="#555", width=0.5)),
        customdata=np.stack([table["uncertainty"], table["confidence"]], axis=1),
        hovertemplate="%{x}: %{y:.4f} ± %{customdata[0]:.4f}<br>confidence %{customdata[1]:.2f}<extra></extra>",
    ))
    fig.add_hline(y=0, line=dict(color="#444", width=1))
    negative = int((table["contribution"] < 0).sum())
    fig = base_layout(fig, f"Atom contributions ± uncertainty: {negative} of {len(table)} negative (in the motif)",
                      "permutable atom", "contribution (Rwp)", legend_top=False)
    fig.update_layout(showlegend=False, bargap=0.15)
    fig.update_xaxes(type="category", tickangle=-90 if len(labels) > 12 else 0)
    return fig


def environment_figure(contributions: pd.DataFrame) -> Optional[go.Figure]:
    """Contributions grouped by environment class: one colour per class, a point per atom, the class mean.

    None when the structure has no stored environment classes, or when every
    atom's environment is its own (nothing to group).
    """
    if "environment_class" not in contributions or contributions["environment_class"].isna().any():
        return None
    classes = contributions["environment_class"].astype(int)
    if classes.nunique() == len(classes):
        return None
    means = contributions.groupby(classes)["contribution"].mean().sort_values()
    fig = go.Figure()
    for number, (environment, mean) in enumerate(means.items()):
        members = contributions[classes == environment].sort_values("atom_index")
        label = f"{members['element'].iloc[0]} class {environment} ({len(members)})"
        colour = structure_colour(number)
        fig.add_trace(go.Scatter(
            x=[label] * len(members), y=members["contribution"], mode="markers", name=label,
            marker=dict(color=colour, size=9, line=dict(color="#333", width=0.5)),
            error_y=dict(type="data", array=members["uncertainty"], thickness=1, width=2, color=colour),
            customdata=members["atom_index"],
            hovertemplate=f"{label}<br>atom %{{customdata}}: %{{y:.4f}}<extra></extra>",
        ))
        fig.add_trace(go.Scatter(
            x=[label], y=[mean], mode="markers", showlegend=False, hoverinfo="skip",
            marker=dict(symbol="line-ew-open", size=28, color="#222", line=dict(width=2)),
        ))
    fig.add_hline(y=0, line=dict(color="#444", width=1))
    fig = base_layout(fig, f"Contributions per environment class: {len(means)} classes of equivalent atoms",
                      "environment class (atoms)", "contribution (Rwp)", legend_top=False)
    fig.update_layout(showlegend=False)
    fig.update_xaxes(type="category", tickangle=-45 if len(means) > 8 else 0)
    return fig


def convergence_figure(lines: Sequence[ConvergenceLine], elements: Sequence[str], order: np.ndarray) -> go.Figure:
    """Contributions learnt from growing parts of the catalogue, atoms in ``order`` (0-based)."""
    labels = np.array(atom_labels(elements))[order]
    colours = {"all": "#111111"}
    palette = iter(["#9ecae1", "#4292c6", "#08519c"])
    fig = go.Figure()
    for line in lines:
        if line.label == "all":
            name = f"all {line.n_motifs:,} fits"
        else:
            name = (f"{line.label}: {line.n_motifs:,} fits, r = {line.correlation:.3f}, "
                    f"{line.sign_changes} sign change{'s' if line.sign_changes != 1 else ''}")
        fig.add_scatter(
            x=labels, y=line.contribution[order], mode="lines+markers", name=name,
            line=dict(color=colours.get(line.label) or next(palette), width=2 if line.label == "all" else 1.3),
            marker=dict(size=4), hovertemplate=f"{line.label}<br>%{{x}}: %{{y:.4f}}<extra></extra>",
        )
    fig.add_hline(y=0, line=dict(color="#444", width=1))
    fig = base_layout(fig, "Convergence of the contributions with the number of fitted motifs",
                      "permutable atom (most negative contribution first)", "contribution (Rwp)", legend_top=False)
    # atoms are sorted by contribution, so the top left of the plot is empty: the legend goes there
    fig.update_layout(legend=dict(x=0.01, y=0.99, xanchor="left", yanchor="top", bgcolor="rgba(255,255,255,0.85)",
                                  font=dict(size=11)))
    fig.update_xaxes(type="category", tickangle=-90 if len(labels) > 16 else 0)
    return fig
