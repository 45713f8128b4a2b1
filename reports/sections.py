"""The report's sections as HTML: header, one section per run, comparisons, series.

Each section answers, in this order, the questions a scientist asks of a
motif: which motif, how good is its fit, how sure is the answer, and compared
with what. Captions say how to read each figure.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from motex_db.reports import figures, recompute
from motex_db.reports.comparison import best_rwp_by_size, contribution_distributions, structure_rows
from motex_db.reports.data import ReportData, Run, Series, extracted_composition
from motex_db.reports.html import FigureBlock, esc, facts_html, grid_html, number, table_html
from motex_db.reports.series import (
    best_against_time, component_weights, contribution_heatmap, correlation_heatmap, explained_variance_figure,
)
from motex_db.reports.structure_view import structure_figure

__all__ = ["header_section", "run_section", "comparison_section", "series_section", "index_ranges"]

# Above this many permutable atoms the per-atom figures take the full width.
_WIDE_ATOMS = 40


def index_ranges(indices: Sequence[int]) -> str:
    """1-based atom indices as compact ranges: ``[1, 2, 3, 7]`` -> ``"1–3, 7"``."""
    parts, start, previous = [], None, None
    for i in sorted(int(i) for i in indices):
        if start is None:
            start = previous = i
        elif i == previous + 1:
            previous = i
        else:
            parts.append(f"{start}–{previous}" if previous > start else f"{start}")
            start = previous = i
    if start is not None:
        parts.append(f"{start}–{previous}" if previous > start else f"{start}")
    return ", ".join(parts)


def _score_text(run: Run, value) -> str:
    """``"Rwp 0.4768"``; ``"score -3.2 (imported)"`` for imported scores; ``"not fitted"`` without a value."""
    if value is None:
        return "not fitted"
    return f"Rwp {value:.4f}" if not run.imported else f"{run.score_name.replace(' (imported)', '')} {value:.4g}"


def _kept(mask: str) -> list[int]:
    return [i for i, c in enumerate(mask, start=1) if c == "1"]


def _settings_text(config) -> str:
    if config.calculator == "external":
        settings = config.settings or {}
        return f"fit config {config.id}: scores imported from {settings.get('source_file', 'a file')}"
    free = ", ".join((config.settings or {}).get("free", []))
    return (f"fit config {config.id}: {config.recipe} recipe ({free} refined), {config.calculator} calculator, "
            f"r {config.rmin:g}–{config.rmax:g} Å, Q {config.qmin:g}–{config.qmax:g} Å⁻¹, qdamp {config.qdamp:g} Å⁻¹")


# ---------------------------------------------------------------- header


def _dataset_rows(data: ReportData) -> list[tuple]:
    rows, series_seen = [], {}
    for d in data.datasets:
        if d.series is not None and not any(run.dataset.id == d.id for run in data.runs):
            series_seen.setdefault(d.series, []).append(d)
            continue
        meta = d.meta or {}
        if meta.get("external"):
            rows.append((d.name, d.source_file, "—", "—", "—", "scores imported from elsewhere"))
            continue
        q = f"{number(meta.get('qmin'), 'g')}–{number(meta.get('qmax'), '.4g')}" if "qmin" in meta else "—"
        where = f"{d.series}, t = {d.time:g} s" if d.series is not None and d.time is not None else (d.series or "—")
        rows.append((d.name, d.source_file, f"{d.r_min:g}–{d.r_max:g}", q, meta.get("composition", "—"), where))
    for name, frames in series_seen.items():
        times = [f.time for f in frames if f.time is not None]
        span = f"{name}, t = {min(times):g}–{max(times):g} s" if times else name
        rows.append((f"{len(frames)} frames", "; ".join(f.source_file for f in frames[:2]) + (" …" if len(frames) > 2 else ""),
                     f"{frames[0].r_min:g}–{frames[0].r_max:g}", "—", "—", span))
    return rows


def _glance_rows(data: ReportData) -> list[tuple]:
    rows = []
    for run in data.runs:
        model = run.model
        extracted = run.extracted
        rows.append((
            run.structure.name, run.dataset.name, f"{len(run.fits):,}",
            f"{number(run.best.rwp if run.best else None)} ({run.best.n_kept} kept)" if run.best else "—",
            f"{extracted_composition(run)}, {_score_text(run, extracted.rwp)}" if extracted else "—",
            number((model.metrics or {}).get("mae") if model else None),
            number(model.overall_confidence if model else None, ".2f"),
        ))
    return rows


def header_section(data: ReportData) -> str:
    """Title, when and from what, the runs at a glance, and the record's rows behind them."""
    created = data.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [
        "<header><h1>motex-db report</h1>",
        f'<p class="subtitle">created {esc(created)} by motex-db {esc(data.version)} from {esc(data.record_url)}</p>',
    ]
    if data.runs:
        parts.append("<h3>At a glance</h3>")
        parts.append(table_html(
            ["structure", "dataset", "motifs fitted", "best sampled Rwp", "extracted motif", "test MAE", "overall confidence"],
            _glance_rows(data), numeric=[False, False, True, True, False, True, True],
        ))
        parts.append('<p class="muted">Rwp and MAE are in Rwp units (0 is a perfect fit); overall confidence is the '
                     "mean over atoms of |contribution| / uncertainty (above ~1: the split into motif and rest is clear).</p>")
    structures = table_html(
        ["name", "file", "atoms", "permutable (N)", "bond cutoff (Å)", "motifs"],
        [(s.name, s.source_file, s.n_atoms, f"{s.n_permutable} {'/'.join(s.permutable_elements)}", f"{s.bond_cutoff:g}",
          f"{data.motif_counts.get(s.id, 0):,}") for s in data.structures],
        numeric=[False, False, True, True, True, True],
    )
    datasets = table_html(["name", "file", "r (Å)", "Q (Å⁻¹)", "composition", "series"],
                          _dataset_rows(data), numeric=[False, False, True, True, False, False])
    fits = {}
    for run in data.runs:
        ok, failed = fits.get(run.fit_config.id, (0, 0))
        fits[run.fit_config.id] = (ok + len(run.fits), failed + run.n_failed)
    configs = table_html(
        ["id", "recipe", "calculator", "refined", "r (Å)", "Q (Å⁻¹)", "qdamp", "fits in the runs below: ok / failed"],
        [(c.id, c.recipe, c.calculator, ", ".join((c.settings or {}).get("free", [])),
          *(("—", "—", "—") if c.calculator == "external" else (f"{c.rmin:g}–{c.rmax:g}", f"{c.qmin:g}–{c.qmax:.4g}", f"{c.qdamp:g}")),
          (lambda n: f"{n[0]:,} / {n[1]:,}")(fits[c.id]) if c.id in fits else "(series only)")
         for c in data.fit_configs],
        numeric=[True, False, False, False, True, True, True, True],
    )
    models = [run for run in data.runs if run.model is not None]
    model_table = table_html(
        ["id", "structure / dataset", "config", "motifs", "MAE", "RMSE", "R²", "confidence", "MLflow run", "trained"],
        [(r.model.id, r.title, r.model.fit_config_id, f"{r.model.n_motifs:,}", number(r.model.metrics.get("mae")),
          number(r.model.metrics.get("rmse")), number(r.model.metrics.get("r2"), ".3f"),
          number(r.model.overall_confidence, ".2f"), (r.model.mlflow_run_id or "—")[:12],
          r.model.created_at.strftime("%Y-%m-%d %H:%M")) for r in models],
        numeric=[True, False, True, True, True, True, True, True, False, False],
    ) if models else '<p class="muted">No trained models in these runs yet.</p>'
    parts.append('<div class="tables">'
                 f"<div><h3>Starting structures</h3>{structures}</div><div><h3>Datasets</h3>{datasets}</div>"
                 f'<div class="wide"><h3>Fit configurations</h3>{configs}</div>'
                 f'<div class="wide"><h3>Trained models (latest per run)</h3>{model_table}</div>'
                 "</div></header>")
    return "\n".join(parts)


# ---------------------------------------------------------------- one run


_CAPTIONS = {
    "structure": "Drag to rotate, scroll to zoom; hover an atom for its index (1-based among the permutable atoms, "
                 "the numbering used everywhere), element and contribution. <b>Blue</b> atoms lower Rwp when kept: "
                 "they form the motif; <b>red</b> atoms raise it. Colours are clipped at the 10th and 90th percentile "
                 "so that a few extreme atoms do not wash out the rest. Grey: atoms that are not permuted, drawn with "
                 "the bonds (shorter than the bond cutoff) that tie them to permutable atoms.",
    "environments": "Atoms whose k-nearest-neighbour distance vectors agree (an environment class: images of each "
                    "other under the starting model's symmetry) make the same pair distances, so their contributions "
                    "should agree. One colour per class, a point per atom with its uncertainty, a bar at the class mean; "
                    "see motex-db structure show.",
    "bars": "Contribution = mean SHAP value of the atom over motifs that keep it minus the mean over motifs that "
            "remove it; negative means keeping the atom lowers Rwp. Error bars: the uncertainty "
            "√((σ²<sub>keep</sub> + σ²<sub>remove</sub>)/2); confidence = |contribution| / uncertainty. "
            "The extracted motif is the atoms with negative bars, with their bonded atoms.",
    "fit": "Blue points: the measured G(r) over the fit range; red: the motif's G(r) recomputed from the stored "
           "refined values (scale, zoom) with the fit configuration's settings; green: the difference, offset below "
           "the dotted line. A flat green line means the motif explains the data.",
    "rwp": "All sampled motifs binned by size (kept permutable atoms) and Rwp; colour counts motifs per bin (log "
           "scale). The grey line is the lowest Rwp reached at each size; ★ the best sampled motif, ◆ the motif "
           "extracted from the contributions. An extracted motif at or below the line is as good as the best "
           "the sampling found, reached without trying every motif.",
    "convergence": "The contributions from surrogates retrained with the model's hyper-parameters (no new search) "
                   "on the first half and three quarters of its fits, in motif-id order: the answer as it stood "
                   "when sampling had got that far. Lines on top of the black one (r close to 1, no sign changes) "
                   "mean more motifs would not change which atoms form the motif.",
    "parity": "Each point is a test motif, never used in training or early stopping: its fitted Rwp against the "
              "surrogate's prediction (colour: motif size). Points on the dashed diagonal are predicted exactly; "
              "MAE is the typical error, in Rwp.",
    "shap": "For each atom (most negative contribution on the left), the SHAP values of the training motifs that keep "
            "it (blue) and that remove it (orange): box = quartiles, whiskers = 5th–95th percentile, dashed line = "
            "mean. An atom of the motif has its kept box below 0 and its removed box above; boxes on both sides of "
            "0 mean the surrogate barely uses the atom.",
    "loss": "Mean absolute error per boosting round on the motifs the trees were fitted to (blue) and on the "
            "validation motifs held out from them (orange). Boosting stops 50 rounds after the validation error "
            "stops improving; the dotted line marks the round kept. A wide gap between the curves means the trees "
            "learn the fitted motifs' noise.",
    "trials": "Each point is one hyper-parameter trial, scored by its MAE on the validation part of the training "
              "motifs (or by k-fold cross-validation with train --cv K): "
              "grey, the random starts; blue, trials chosen by Bayesian optimisation; the line, the best so far. "
              "Hover for each trial's parameters.",
}


def _facts(run: Run, predictions, convergence) -> str:
    structure, model = run.structure, run.model
    n, elements = structure.n_permutable, "/".join(structure.permutable_elements)
    facts = []
    if run.extracted is not None:
        kept = _kept(run.extracted.mask)
        facts.append(("Which motif: extracted", f"{extracted_composition(run)}, {_score_text(run, run.extracted.rwp)}",
                      f"{len(kept)} of {n} {elements} atoms: {index_ranges(kept)} (motif {run.extracted.motif_id})"))
    else:
        facts.append(("Which motif: extracted", "not yet",
                      "run motex-db train and explain" if model is None or run.contributions is None
                      else "no atom has a negative contribution"))
    if run.best is not None:
        facts.append(("How good: best sampled", _score_text(run, run.best.rwp),
                      f"motif {run.best.motif_id}, {run.best.n_kept} of {n} kept; best of {len(run.fits):,} fits"
                      + (f" ({run.n_failed:,} failed)" if run.n_failed else "")))
    if model is not None:
        metrics = model.metrics or {}
        tested = f" on {len(predictions.rwp):,} test motifs" if predictions is not None else ""
        facts.append(("How sure: surrogate", f"test MAE {number(metrics.get('mae'))}",
                      f"RMSE {number(metrics.get('rmse'))}, R² {number(metrics.get('r2'), '.3f')}{tested}; "
                      f"model {model.id} on {model.n_motifs:,} motifs"))
    if model is not None and model.overall_confidence is not None:
        detail = f"mean |contribution| / uncertainty over {n} atoms"
        partial = [line for line in convergence or () if line.label != "all"]
        if partial:
            first = partial[0]
            detail += (f"; from the {first.label} of the fits: {first.sign_changes} atom"
                       f"{'s' if first.sign_changes != 1 else ''} change side, r = {first.correlation:.3f}")
        facts.append(("How sure: confidence", f"{model.overall_confidence:.2f}", detail))
    return facts_html(facts)


def run_section(engine, run: Run) -> str:
    """A run's section: key facts, then which motif, how good, how sure."""
    key = run.key
    n = run.structure.n_permutable
    wide = n > _WIDE_ATOMS
    elements = run.permutable_elements
    contributions = run.contributions
    order = (np.lexsort((contributions["atom_index"].to_numpy(), contributions["contribution"].to_numpy()))
             if contributions is not None else np.arange(n))
    surrogate = recompute.load_surrogate(engine, run) if run.model is not None else None
    predictions = recompute.holdout_predictions(surrogate) if surrogate is not None else None
    convergence = recompute.contribution_convergence(run, surrogate)

    which = [FigureBlock(structure_figure(run.structure, contributions), 540, _CAPTIONS["structure"], f"{key}-structure",
                         wide or contributions is None)]
    if contributions is not None:
        which.append(FigureBlock(figures.contribution_bars(contributions), 540 if not wide else 460, _CAPTIONS["bars"],
                                 f"{key}-contributions", wide))
        environments = figures.environment_figure(contributions)
        if environments is not None:
            which.append(FigureBlock(environments, 440, _CAPTIONS["environments"], f"{key}-environments", True))
    good = []
    for fit, what in ((run.extracted, "Extracted motif"), (run.best, "Best sampled motif")):
        # imported scores come with no PDF: nothing to draw
        if fit is not None and fit.rwp is not None and not run.imported:
            good.append(FigureBlock(figures.fit_figure(recompute.fit_curve(run, fit), what), 420, _CAPTIONS["fit"],
                                    f"{key}-fit-{'extracted' if fit is run.extracted else 'best'}"))
    good.append(FigureBlock(figures.rwp_by_size(run.fits, run.best, run.extracted, n, run.score_name), 440, _CAPTIONS["rwp"],
                            f"{key}-rwp-size", wide=len(good) != 1))
    # Per-atom figures (convergence, SHAP) first; with many atoms they take whole rows and the
    # surrogate's three small figures share one row, else they pair up two by two.
    per_atom, surrogate_blocks = [], []
    if convergence is not None:
        per_atom.append(FigureBlock(figures.convergence_figure(convergence, elements, order), 440,
                                    _CAPTIONS["convergence"], f"{key}-convergence", wide))
    if predictions is not None:
        surrogate_blocks.append(FigureBlock(figures.parity_figure(predictions, run.model.metrics or {}), 420,
                                            _CAPTIONS["parity"], f"{key}-parity"))
    if surrogate is not None:
        shap = recompute.training_shap(surrogate)
        per_atom.append(FigureBlock(figures.shap_summary(shap, elements, order), 460, _CAPTIONS["shap"], f"{key}-shap", True))
    if run.model is not None and run.model.training_log:
        surrogate_blocks.append(FigureBlock(figures.loss_curve(run.model.training_log), 380, _CAPTIONS["loss"], f"{key}-loss"))
        surrogate_blocks.append(FigureBlock(figures.search_trials(run.model.training_log), 380, _CAPTIONS["trials"],
                                            f"{key}-trials"))
    if wide or len(per_atom) != 2 or len(surrogate_blocks) != 3:
        sure = grid_html(per_atom) + grid_html(surrogate_blocks, columns=3 if len(surrogate_blocks) == 3 else 2)
    else:
        # convergence | parity, then SHAP across, then loss | trials
        sure = grid_html([per_atom[0], surrogate_blocks[0], per_atom[1], *surrogate_blocks[1:]])

    notes = []
    if run.model is None:
        notes.append("No trained model yet for this structure and dataset: run <code>motex-db train</code> and "
                     "<code>motex-db explain</code> to learn which atoms matter.")
    elif contributions is None:
        notes.append(f"Model {run.model.id} is trained but not explained yet: run <code>motex-db explain</code>.")
    if run.imported:
        source = (run.fit_config.settings or {}).get("source_file", "a file")
        notes.append(f"The scores of this run were imported from {esc(source)} (<code>motex-db import-fits</code>): "
                     "where this page says Rwp it means that score, lower is better; there is no PDF to draw.")
    if run.model is not None and surrogate is None:
        notes.append("The motifs this model was trained on are no longer all in the record, so its test set and "
                     "SHAP values cannot be recomputed.")
    parts = [
        f'<section id="{esc(key)}"><h2>{esc(run.structure.name)} {"scored by" if run.imported else "fitted to"} '
        f'{esc(run.dataset.name)}</h2>',
        f'<p class="muted">{esc(_settings_text(run.fit_config))}; starting model {esc(run.structure.source_file)}, '
        f"{run.structure.n_atoms} atoms, N = {n} permutable ({esc('/'.join(run.structure.permutable_elements))}), "
        f"bond cutoff {run.structure.bond_cutoff:g} Å.</p>",
        _facts(run, predictions, convergence),
        *(f'<p class="note">{note}</p>' for note in notes),
        "<h3>Which motif: atom contributions</h3>", grid_html(which),
        "<h3>How good: the fits</h3>", grid_html(good),
    ]
    if per_atom or surrogate_blocks:
        parts += ["<h3>How sure: the surrogate and its explanation</h3>", sure]
    if not run.imported:
        from motex_db.reports.polish import polish_html

        parts.append(polish_html(engine, run))
    parts.append("</section>")
    return "\n".join(parts)


# ---------------------------------------------------------------- across structures


def comparison_section(dataset: str, runs: Sequence[Run], anchor: str) -> str:
    """Several starting structures fitted to one dataset: one table, aligned figures."""
    rows = structure_rows(runs)
    table = table_html(
        ["structure", "N", "motifs fitted", "best sampled Rwp", "best size", "test MAE", "overall confidence",
         "extracted motif", "extracted Rwp"],
        [(r.structure, r.n_permutable, f"{r.n_fits:,}", number(r.best_rwp), number(r.best_size, "d"), number(r.test_mae),
          number(r.overall_confidence, ".2f"), r.extracted_composition or "—", number(r.extracted_rwp)) for r in rows],
        numeric=[False, True, True, True, True, True, True, False, True],
    )
    blocks = [
        FigureBlock(best_rwp_by_size(runs), 440,
                    "The lowest Rwp each structure's catalogue reached at each motif size, and (◆) its extracted "
                    "motif. The structure whose curve reaches lowest describes the data best; a clear minimum at "
                    "some size says how large the motif is.", f"{anchor}-rwp"),
        FigureBlock(contribution_distributions(runs), 440,
                    "Every permutable atom's contribution per structure (points; hover for the atom). A clean split "
                    "into a group below 0 (the motif) and one above means a confident answer; one blob around 0 "
                    "means the data do not single out a motif in that structure.", f"{anchor}-contributions"),
    ]
    return "\n".join([
        f'<section id="{esc(anchor)}"><h2>Starting structures compared on {esc(dataset)}</h2>',
        f"<p>{len(runs)} starting structures fitted to the same data. Lower Rwp is better; MAE and confidence say "
        "how far to trust each structure's contributions.</p>",
        table, grid_html(blocks), "</section>",
    ])


# ---------------------------------------------------------------- series


def series_section(series: Series, anchor: str) -> str:
    """A time-resolved series: best fits against time, contributions per frame, and its latest decomposition."""
    blocks = [FigureBlock(best_against_time(series), 480,
                          "For each frame, the best Rwp over the sampled motifs (top) and how many permutable atoms "
                          "that motif keeps (bottom), one line per starting structure. A change of the best motif's "
                          "size over time points to growth, dissolution or a change of motif.", f"{anchor}-best", True)
              ] if series.frames else []
    for k, structure in enumerate(series.frames):
        figure = contribution_heatmap(series, structure)
        if figure is not None:
            n = series.structures[structure].n_permutable
            blocks.append(FigureBlock(figure, int(min(900, max(340, 14 * n + 140))),
                                      "Each column is a frame, each row a permutable atom; colour is the atom's "
                                      "contribution from that frame's latest model (blue: in the motif, red: out; "
                                      "clipped at the 10th and 90th percentile; empty: frame not explained yet). "
                                      "Rows that change colour over time are atoms joining or leaving the motif.",
                                      f"{anchor}-heatmap-{k}", True))
    blocks += _decomposition_blocks(series, anchor)
    explained = sum(1 for frames in series.frames.values() for f in frames if f.contributions is not None)
    d = series.decomposition
    decomposed = (f" Latest decomposition ({d.decomposition_id}): {d.n_components} NMF component"
                  f"{'s' if d.n_components != 1 else ''} ({esc(', '.join(d.component_names))}), relative error "
                  f"{d.nmf_relative_error:.4f}." if d is not None else "")
    return "\n".join([
        f'<section id="{esc(anchor)}"><h2>Series {esc(series.name)}</h2>',
        f"<p>{len(series.datasets)} frames ordered by time, {len(series.frames)} starting structure"
        f"{'s' if len(series.frames) != 1 else ''}; {explained} frame model{'s' if explained != 1 else ''} explained."
        f"{decomposed}</p>",
        grid_html(blocks), "</section>",
    ])


def _decomposition_blocks(series: Series, anchor: str) -> list[FigureBlock]:
    """PCA explained variance, NMF weights against time and the frames' correlation matrix (latest decomposition)."""
    blocks = []
    figure = explained_variance_figure(series)
    if figure is not None:
        blocks.append(FigureBlock(figure, 400,
                                  "Share of the frames' variance (sum of G², frames not mean-centred) carried by each "
                                  "principal component, and the running total. The number of components is the "
                                  "fewest reaching 99 % (dashed line) unless a number was asked for: that is how "
                                  "many phases or motifs the series holds.", f"{anchor}-pca"))
    figure = component_weights(series)
    if figure is not None:
        blocks.append(FigureBlock(figure, 400,
                                  "Weight of each NMF component in each frame against time (each component is stored "
                                  "as a dataset of its own, named in the legend). The weights are scaled so that "
                                  "they add up to about one per frame (dotted line): read them as phase fractions.",
                                  f"{anchor}-weights"))
    figure = correlation_heatmap(series)
    if figure is not None:
        n = len(series.decomposition.frame_ids)
        blocks.append(FigureBlock(figure, int(min(760, max(400, 8 * n + 160))),
                                  "Pearson correlation of every pair of frames over the decomposition's r range. "
                                  "Blocks of high correlation are stretches of time with one structure; a sharp "
                                  "edge is a transition.", f"{anchor}-correlation"))
    return blocks
