"""The ML-MotEx steps on the command line: simulate, sample, fit, demo."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from motex_db.cli.app import MLFLOW_HELP, app, engine_of, shell_hint
from motex_db.cli import output
from motex_db.cli.output import console
from motex_db.errors import InputError


@app.command()
def sample(
    ctx: typer.Context,
    structure: str = typer.Option(..., "--structure", help="Starting model to sample motifs from."),
    n: Optional[int] = typer.Option(None, "--n", help="How many new distinct motifs to add."),
    min_atoms: int = typer.Option(1, "--min-atoms", help="Fewest kept permutable atoms (uniform)."),
    max_atoms: Optional[int] = typer.Option(None, "--max-atoms", help="Most kept permutable atoms (uniform; default N)."),
    strategy: str = typer.Option("uniform", "--strategy", help="uniform (ML-MotEx's sampler), sphere (cookie cutter) or guided (around the latest explanation's answer)."),
    data: Optional[str] = typer.Option(None, "--data", help="guided: the dataset whose latest explanation guides the draws (default: the latest of any)."),
    radius_min: float = typer.Option(3.0, "--radius-min", help="Smallest sphere radius in Å (sphere)."),
    radius_max: float = typer.Option(10.0, "--radius-max", help="Largest sphere radius in Å (sphere)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (drawn and recorded when not given)."),
    from_file: Optional[Path] = typer.Option(None, "--from-file", help="Add hand-picked motifs: one '0'/'1' string per line."),
    dedup: str = typer.Option("mask", "--dedup", help="mask (never a mask twice) or isometry (never an image of a stored motif under the model's symmetry: same PDF, same fit)."),
) -> None:
    """Add new distinct motifs to a starting model's catalogue (never a mask twice)."""
    from motex_db.catalogue import add_mask_file, sample_motifs

    engine = engine_of(ctx)
    if (n is None) == (from_file is None):
        raise InputError("give either --n N or --from-file MASKS.txt.")
    if from_file is not None:
        outcome = add_mask_file(engine, structure, from_file)
        console.print(
            f"added {outcome.added} motifs from {from_file.name} to '{structure}'"
            + (f" ({outcome.already_stored} were already in the catalogue)" if outcome.already_stored else "")
            + f"; the catalogue holds {outcome.total}."
        )
        return
    outcome = sample_motifs(engine, structure, n, strategy, seed, min_atoms, max_atoms, radius_min, radius_max, dedup, data)
    console.print(f"added {outcome.added} new motifs to '{structure}' ({outcome.sampler}); the catalogue holds {outcome.total}.")
    if dedup == "isometry":
        console.print(
            f"{outcome.isometric_skipped} drawn motifs were images of stored or drawn ones (same pair distances, "
            "same PDF) and were left out."
        )
    if outcome.exhausted and outcome.added < n:
        console.print(f"the space of distinct motifs ran out: {outcome.added} of the {n} asked for were left.")


def _parse_biso(values: list[str]) -> dict[str, float]:
    biso: dict[str, float] = {}
    for item in values:
        element, sep, number = item.partition("=")
        try:
            if not sep or not element.strip():
                raise ValueError
            biso[element.strip()] = float(number)
        except ValueError:
            raise InputError(f"--biso takes EL=VALUE (for example W=0.3 or *=0.4), not '{item}'.") from None
    return biso or {"*": 0.4}


def _parse_zoom(text: str) -> float | tuple[float, float, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        return values[0]
    if len(values) == 3:
        return tuple(values)
    raise InputError(f"--zoom takes one factor or three (x,y,z) separated by commas, not '{text}'.")


@app.command()
def simulate(
    structure_file: Path = typer.Argument(..., help="Structure file (any format ase.io.read knows)."),
    out: Path = typer.Option(..., "--out", help="Where to write the .gr file."),
    calculator: str = typer.Option("real", "--calculator", help="real (srreal's PDFCalculator), debye (its DebyePDFCalculator: Debye sum on srreal's Q grid) or debye-exact (the integral that sum approximates)."),
    radiation: str = typer.Option("xray", "--radiation", help="xray or neutron."),
    qmin: float = typer.Option(0.7, "--qmin", help="Qmin, Å^-1."),
    qmax: float = typer.Option(20.0, "--qmax", help="Qmax, Å^-1."),
    qdamp: float = typer.Option(0.05, "--qdamp", help="Q resolution damping, Å^-1."),
    qbroad: float = typer.Option(0.0, "--qbroad", help="Q resolution peak broadening, Å^-1."),
    delta2: float = typer.Option(0.0, "--delta2", help="Correlated-motion sharpening, Å^2."),
    zoom: str = typer.Option("1.0", "--zoom", help="Multiplies the coordinates: one factor, or x,y,z."),
    biso: List[str] = typer.Option([], "--biso", help="EL=VALUE in Å^2, repeatable; *=VALUE for every element (default *=0.4)."),
    rmin: float = typer.Option(1.0, "--rmin", help="First r, Å."),
    rmax: float = typer.Option(30.0, "--rmax", help="Last r, Å."),
    rstep: float = typer.Option(0.01, "--rstep", help="r step, Å."),
    radius: Optional[float] = typer.Option(None, "--radius", help="For a crystal: a sphere of this radius (Å) cut from a supercell."),
    calc_rmax: Optional[float] = typer.Option(None, "--calc-rmax", help="srreal's rmax, Å (default rmax + rstep/2, as srfit sets it): calculate to this r and cut back; sets the debye calculator's Q grid and longest pair."),
) -> None:
    """Write the PDF of a structure (as a non-periodic cluster) to a .gr file. Needs no database."""
    from motex_db.simulation import simulate_file

    written, n_atoms = simulate_file(
        structure_file, out, calculator=calculator, radiation=radiation, qmin=qmin, qmax=qmax,
        qdamp=qdamp, qbroad=qbroad, delta2=delta2, zoom=_parse_zoom(zoom), biso=_parse_biso(biso),
        rmin=rmin, rmax=rmax, rstep=rstep, radius=radius, calc_rmax=calc_rmax,
    )
    console.print(f"wrote {written} ({n_atoms} atoms, {calculator} calculator, r {rmin:g}-{rmax:g} Å).")


@app.command()
def demo(
    ctx: typer.Context,
    directory: Path = typer.Option(Path("motex-demo"), "--dir", help="Folder for the demo's record and files."),
) -> None:
    """Run the generated C60 example end to end in a fresh folder (its own SQLite record)."""
    from motex_db.demo import run_demo

    from motex_db.db import open_engine
    from motex_db.reports.report import write_report

    url = run_demo(directory, url=ctx.obj["db"], on_step=console.print)
    written = write_report(open_engine(url), Path(directory) / "report.html")
    console.print(f"report: {written.path} (open it in a browser)")
    console.print(
        "done: look at the record and its MLflow runs with\n"
        f"  {shell_hint(f'motex-db --db {url} status')}\n  {shell_hint(f'motex-db --db {url} ui')}"
    )


def _parse_pair(text: Optional[str], option: str) -> Optional[tuple[float, float]]:
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{option} takes two numbers separated by a comma (for example 0.99,1.01), not '{text}'.") from None
    return low, high


@app.command()
def fit(
    ctx: typer.Context,
    structure: str = typer.Option(..., "--structure", help="Starting model whose catalogue is fitted."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset to fit against."),
    series: Optional[str] = typer.Option(None, "--series", help="Fit against every frame of this time-resolved series instead."),
    recipe: str = typer.Option("fast", "--recipe", help="fast (scale and one zoom) or mlmotex (scale and three zooms, the published recipe)."),
    calculator: Optional[str] = typer.Option(None, "--calculator", help="real (default), debye (srreal's DebyePDFCalculator) or debye-exact."),
    radiation: Optional[str] = typer.Option(None, "--radiation", help="xray (default) or neutron."),
    rmin: Optional[float] = typer.Option(None, "--rmin", help="Fit range start, Å (default 1.6)."),
    rmax: Optional[float] = typer.Option(None, "--rmax", help="Fit range end, Å (default 10)."),
    qmin: Optional[float] = typer.Option(None, "--qmin", help="Qmin, Å^-1 (default: the data header's, else 0.7)."),
    qmax: Optional[float] = typer.Option(None, "--qmax", help="Qmax, Å^-1 (default: the data header's, else 20)."),
    qdamp: Optional[float] = typer.Option(None, "--qdamp", help="Q damping, Å^-1 (default 0.05)."),
    qbroad: Optional[float] = typer.Option(None, "--qbroad", help="Q broadening, Å^-1 (default 0)."),
    biso: List[str] = typer.Option([], "--biso", help="Biso EL=VALUE in Å^2 (fixed, or the start when refined); *=VALUE for all (default *=0.4)."),
    delta2: Optional[float] = typer.Option(None, "--delta2", help="delta2, Å^2 (fixed, or the start when refined; default 0)."),
    free: Optional[str] = typer.Option(None, "--free", help="Refined parameters, comma separated: scale, zoom or zoom3, biso or biso_EL, delta2."),
    scale_start: Optional[float] = typer.Option(None, "--scale-start", help="Start value of the scale."),
    zoom_start: Optional[float] = typer.Option(None, "--zoom-start", help="Start value of the zoom(s)."),
    zoom_bounds: Optional[str] = typer.Option(None, "--zoom-bounds", help="Restraint window of the zoom(s), LOW,HIGH (default 0.99,1.01)."),
    zoom_sigma: Optional[float] = typer.Option(None, "--zoom-sigma", help="Restraint sigma of the zoom(s) (default 0.001)."),
    workers: int = typer.Option(1, "--workers", help="Local worker processes."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Fit again the motifs whose fit failed."),
    lease: float = typer.Option(300.0, "--lease", help="Seconds after which another worker may take over a claimed batch."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Motifs per claimed batch (default: adaptive, about a second of work)."),
) -> None:
    """Fit every motif of a structure that has no result yet for this dataset (or series frame) and recipe."""
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import fit_catalogue

    overrides = {
        "calculator": calculator, "radiation": radiation, "rmin": rmin, "rmax": rmax, "qmin": qmin, "qmax": qmax,
        "qdamp": qdamp, "qbroad": qbroad, "delta2": delta2, "scale_start": scale_start, "zoom_start": zoom_start,
        "zoom_bounds": _parse_pair(zoom_bounds, "--zoom-bounds"), "zoom_sigma": zoom_sigma,
        "biso": _parse_biso(biso) if biso else None,
        "free": tuple(p.strip() for p in free.split(",") if p.strip()) if free else None,
    }
    settings = FitSettings.for_recipe(recipe, **{k: v for k, v in overrides.items() if v is not None})
    engine = engine_of(ctx)
    with output.fit_progress() as on_progress:
        summary = fit_catalogue(
            engine, structure, data, settings, workers=workers, retry_failed=retry_failed,
            lease_seconds=lease, on_progress=on_progress, batch_size=batch_size, series=series,
        )
    output.print_fit_summary(summary)


@app.command()
def refine(
    ctx: typer.Context,
    motif: int = typer.Option(..., "--motif", help="Motif id (see motex-db sql \"SELECT * FROM motif_fit ORDER BY rwp\")."),
    data: str = typer.Option(..., "--data", help="Dataset to refine against."),
    free: str = typer.Option("scale,zoom3,biso", "--free", help="Refined: scale, zoom or zoom3, biso or biso_EL, delta2."),
    recipe: str = typer.Option("mlmotex", "--recipe", help="Recipe giving the calculation and start values."),
    zoom_start: Optional[float] = typer.Option(None, "--zoom-start", help="Start value of the zoom(s)."),
    biso: List[str] = typer.Option([], "--biso", help="Start Biso EL=VALUE in Å^2 (*=VALUE for all)."),
    delta2: Optional[float] = typer.Option(None, "--delta2", help="Start delta2, Å^2."),
    rmin: Optional[float] = typer.Option(None, "--rmin", help="Fit range start, Å."),
    rmax: Optional[float] = typer.Option(None, "--rmax", help="Fit range end, Å."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the plots and values (default refine-motif-ID)."),
) -> None:
    """A full diffpy.srfit refinement of one motif: values with uncertainties, Rwp, and plots."""
    from motex_db.fitting.refine import refine_motif
    from motex_db.fitting.settings import FitSettings
    from motex_db.reports.refinement import write_refinement_files

    overrides = {"zoom_start": zoom_start, "delta2": delta2, "rmin": rmin, "rmax": rmax,
                 "biso": _parse_biso(biso) if biso else None}
    settings = FitSettings.for_recipe(recipe, **{k: v for k, v in overrides.items() if v is not None})
    words = [w.strip() for w in free.split(",") if w.strip()]
    result = refine_motif(engine_of(ctx), motif, data, settings, words)
    files = write_refinement_files(result, out or Path(f"refine-motif-{motif}"))
    console.print(f"motif {result.motif_id} ({result.mask}, {len(result.elements)} atoms) of '{result.structure}' against '{result.dataset}'")
    output.print_rows(
        ["parameter", "value", "uncertainty"],
        [(name, result.values[name], result.uncertainties.get(name)) for name in result.values],
    )
    console.print(f"Rwp = {result.rwp:.5f}")
    for kind, path in files.items():
        console.print(f"{kind}: {path}")


@app.command()
def train(
    ctx: typer.Context,
    structure: str = typer.Option(..., "--structure", help="Starting model whose fits are learnt."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset the motifs were fitted to."),
    series: Optional[str] = typer.Option(None, "--series", help="Train a model per frame of this series instead (one search)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="With --series: the frame searched on (default: the last)."),
    fit_config: Optional[int] = typer.Option(None, "--fit-config", help="Fit config id (default: the one with the most fits)."),
    n_iter: int = typer.Option(50, "--n-iter", help="Bayesian iterations after the 4 random starts."),
    cv: int = typer.Option(0, "--cv", help="How each trial is scored: 0 on the validation part of the training motifs (its fit is the final model if chosen), K >= 2 by K-fold cross-validation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the search and the model."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help=MLFLOW_HELP),
    full_search: bool = typer.Option(False, "--full-search", help="Run all --n-iter iterations and take the lowest search MAE (ML-MotEx's exhaustive search) instead of stopping when the search stops improving."),
    workers: Optional[int] = typer.Option(None, "--workers", help="With --series: local processes training frames (default: one per core)."),
) -> None:
    """Step 3: learn Rwp from atom presence (XGBoost, Bayesian hyper-parameter search), tracked in MLflow."""
    from motex_db.cli.ui import runs_hint
    from motex_db.tracker_process import TrackerProcess

    _data_or_series(data, series, workers)
    engine = engine_of(ctx)
    if series is None:
        # MLflow loads in its helper process while XGBoost and the fits load here
        with TrackerProcess(engine.url.render_as_string(hide_password=False), mlflow_uri) as tracker:
            _train_one(ctx, engine, structure, data, reference, fit_config, n_iter, cv, seed, mlflow_uri,
                       full_search, tracker)
        return
    from motex_db.learning import N_INITIAL, check_search_options, train_series

    check_search_options(n_iter, cv)  # before a progress bar is drawn
    if full_search:
        raise InputError("--full-search applies to one dataset's search: leave it out with --series.")
    with output.series_progress("training frames", N_INITIAL + n_iter) as (on_trial, on_frame):
        outcome = train_series(
            engine, structure, series, reference, fit_config, n_iter, cv, seed, mlflow_uri, on_trial, on_frame,
            workers=workers,
        )
    output.print_series_train_outcome(outcome, runs_hint(ctx, mlflow_uri, outcome.ui_command))


def _train_one(ctx, engine, structure, data, reference, fit_config, n_iter, cv, seed, mlflow_uri, full_search,
               tracker) -> None:
    from motex_db.cli.ui import runs_hint
    from motex_db.learning import N_INITIAL, check_search_options, train_model

    check_search_options(n_iter, cv)  # before a progress bar is drawn
    if reference is not None:
        raise InputError("--reference picks a frame of a series: use it with --series.")
    with output.trial_progress(N_INITIAL + n_iter) as on_trial:
        outcome = train_model(engine, structure, data, fit_config, n_iter, cv, seed, mlflow_uri, on_trial,
                              full_search=full_search, tracker=tracker)
    output.print_train_outcome(outcome, runs_hint(ctx, mlflow_uri, outcome.ui_command))


def _data_or_series(data: Optional[str], series: Optional[str], workers: Optional[int] = None) -> None:
    """Refuse both or neither of --data and --series, and a --workers that is not for a series."""
    if (data is None) == (series is None):
        raise InputError("give a dataset (--data NAME) or a series (--series NAME), not both or neither.")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be 1 or more, not {workers}.")
    if workers is not None and series is None:
        raise InputError("--workers splits the frames of a series: use it with --series.")


@app.command()
def explain(
    ctx: typer.Context,
    structure: str = typer.Option(..., "--structure", help="Starting model."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset."),
    series: Optional[str] = typer.Option(None, "--series", help="Explain every frame's model of this series instead."),
    model: Optional[int] = typer.Option(None, "--model", help="Trained model id (default: the latest for this structure and dataset)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the contributions table, coloured structure, SHAP plot and extracted motif."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="Extract only atoms at least this confident."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help=MLFLOW_HELP),
    shap_motifs: Optional[int] = typer.Option(None, "--shap-motifs", help="Training motifs explained (a seeded subset; 0: all). Default 2000, and 500 per frame with --series."),
    workers: Optional[int] = typer.Option(None, "--workers", help="With --series: local processes explaining frames (default: one per core)."),
) -> None:
    """Step 4: each atom's contribution to the fit quality (SHAP), and the extracted motif, fitted."""
    import tempfile

    from motex_db.tracker_process import TrackerProcess

    _data_or_series(data, series, workers)
    engine = engine_of(ctx)
    if series is not None:
        _explain_series(engine, structure, series, model, out, min_confidence, mlflow_uri, shap_motifs, workers)
        return
    if shap_motifs is not None and shap_motifs < 0:
        raise InputError(f"--shap-motifs must be 0 (all) or more, not {shap_motifs}.")
    # MLflow and the plotting libraries load in a helper process while the explanation is computed here;
    # the helper then draws the SHAP summary while the other files are written here, and logs them all
    with TrackerProcess(engine.url.render_as_string(hide_password=False), mlflow_uri, figures=True) as tracker:
        from motex_db.explain import SHAP_MOTIFS, explain_model, log_explanation
        from motex_db.interop import export_mlmotex_files
        from motex_db.reports.explanation import write_explanation_files

        outcome = explain_model(engine, structure, data, model, min_confidence,
                                SHAP_MOTIFS if shap_motifs is None else shap_motifs,
                                on_model=lambda row: tracker.open() if row.mlflow_run_id else None)
        with tempfile.TemporaryDirectory() as scratch:
            files = write_explanation_files(outcome, out or Path(scratch), tracker.draw_shap_summary)
            files.update(export_mlmotex_files(engine, outcome.trained_model_id, out or Path(scratch)))
            output.note(log_explanation(tracker, outcome, files))
            tracker.flush()  # every file is written (and logged)
    output.print_explain_outcome(outcome, files if out else None)
    from motex_db.environments import contributions_per_environment

    table = outcome.contributions
    output.print_environment_contributions(
        contributions_per_environment(engine, structure, table["atom_index"], table["contribution"]))


def _explain_series(engine, structure, series, model, out, min_confidence, mlflow_uri, shap_motifs, workers) -> None:
    import tempfile

    from motex_db.explain import explain_series, log_series_explanation
    from motex_db.reports.explanation import write_series_explanation_files

    if model is not None:
        raise InputError("--model picks one trained model: with --series every frame's latest model is explained.")
    if shap_motifs is None:
        from motex_db.explain import SERIES_SHAP_MOTIFS

        shap_motifs = SERIES_SHAP_MOTIFS
    if shap_motifs < 0:
        raise InputError(f"--shap-motifs must be 0 (all) or more, not {shap_motifs}.")
    with output.series_progress("explaining frames") as (_, on_frame):
        outcome = explain_series(engine, structure, series, min_confidence, on_frame, shap_motifs, workers)
    with tempfile.TemporaryDirectory() as scratch:
        files = write_series_explanation_files(outcome, out or Path(scratch))
        output.note(log_series_explanation(engine.url.render_as_string(hide_password=False), outcome, files,
                                           mlflow_uri))
    output.print_series_explain_outcome(outcome, files if out else None)


@app.command("import-fits")
def import_fits(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Scores: ML-MotEx's text format (ID, Rwp, n atoms, 0/1 per atom) or CSV (mask or 0/1 columns, and a score)."),
    structure: str = typer.Option(..., "--structure", help="Starting model the masks refer to."),
    source: str = typer.Option(..., "--source", help="Name of the external dataset the scores belong to."),
    higher_is_better: bool = typer.Option(False, "--higher-is-better", help="Higher scores are better (stored negated)."),
    score_column: Optional[str] = typer.Option(None, "--score-column", help="CSV column holding the score (default: score or rwp)."),
) -> None:
    """Import goodness-of-fit values computed elsewhere, to train and explain them like motex-db's own fits."""
    from motex_db.fitting.imported import import_fits as run_import

    outcome = run_import(engine_of(ctx), file, structure, source, higher_is_better, score_column)
    console.print(
        f"imported {outcome.imported} scores for '{outcome.structure}' as dataset '{outcome.source}' "
        f"(fit config {outcome.fit_config_id}); {outcome.new_motifs} motifs were new to the catalogue"
        + (f", {outcome.already} scores were already imported" if outcome.already else "")
        + (f"; repeated masks averaged: {outcome.merged + outcome.repeated_motifs} rows into "
           f"{outcome.repeated_motifs} scores ({outcome.merged} merged)" if outcome.merged else "")
        + (f"; rows keeping no atom, skipped: {outcome.skipped_empty}" if outcome.skipped_empty else "")
        + f". Next: motex-db train --structure {outcome.structure} --data {outcome.source}"
    )
