"""`motex-db report`: one self-contained HTML file, opened in a real browser (headless Chromium).

The record is the generated C60 example, smaller than the demo's: two starting
structures fitted to the same data (for the comparison) and a three-frame
series fitted, trained and explained frame by frame. The browser test loads
the report from disk with the network switched off, records every script
error and console.error through a small probe script injected into a copy of
the page, checks that each figure drew its plot, and saves a screenshot at a
laptop's width.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from support import CHROMIUM, CliResult, need, requires_chromium, run_cli

STRUCTURE = "c60-in-carbon"
OTHER_STRUCTURE = "c60-fewer-distractors"
DATASET = "c60-simulated"
SERIES = "growth"
FRAME_TIMES = (0.0, 30.0, 60.0)  # s

# The flags this machine needs; software WebGL (SwiftShader) draws the 3D view
# with --disable-gpu, and Chromium asks for an explicit opt-in to it.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-unsafe-swiftshader", "--hide-scrollbars", "--window-size=1280,2400",
    "--virtual-time-budget=20000",
]
# Injected first into <head>: collects script errors, failed resource loads
# (which is what a network dependency would give), unhandled rejections and
# console.error, console.warn and console.trace calls (plotly's warnings, such
# as a colour it cannot read, go to console.trace), and, once the page has loaded and settled, what each
# figure's div holds; writes all of it as JSON into a hidden <pre> that
# --dump-dom returns.
PROBE = """<script>(function () {
  var errors = [];
  function note(kind, text) { errors.push(kind + ": " + text); }
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) { note("resource", t.src || t.href); }
    else { note("error", (e.message || e.type) + (e.filename ? " at " + e.filename + ":" + e.lineno : "")); }
  }, true);
  window.addEventListener("unhandledrejection", function (e) { note("unhandledrejection", String(e.reason && (e.reason.stack || e.reason))); });
  ["error", "warn", "trace"].forEach(function (level) {
    var original = console[level];
    console[level] = function () { note("console." + level, Array.prototype.map.call(arguments, String).join(" ")); return original.apply(console, arguments); };
  });
  window.addEventListener("load", function () { setTimeout(function () {
    var figures = [];
    document.querySelectorAll(".plotly-graph-div").forEach(function (div) {
      var box = div.getBoundingClientRect();
      figures.push({id: div.id, svg: div.querySelectorAll(".main-svg").length, canvas: div.querySelectorAll("canvas").length,
                    traces: (div.data || []).length, width: Math.round(box.width), height: Math.round(box.height),
                    text: div.innerText.slice(0, 200)});
    });
    var out = document.createElement("pre");
    out.id = "motex-probe"; out.style.display = "none";
    out.textContent = JSON.stringify({errors: errors, figures: figures, plotly: typeof Plotly,
                                      scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth});
    document.body.appendChild(out);
  }, 3000); });
})();</script>"""


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> str:
    """The C60 example with everything a report shows, built with the real steps (~25 s).

    Two starting structures (the buckyball among 20 and among 10 distractor
    atoms: smaller than the demo's 70, for speed) fitted to the simulated
    PDF, and a three-frame series (the same PDF with growing noise) fitted,
    trained and explained frame by frame on the second.
    """
    import ase.io

    from motex_db.catalogue import sample_motifs
    from motex_db.datasets import add_datasets, write_gr
    from motex_db.db import open_engine
    from motex_db.examples import c60_dataset_header, c60_measured_pdf, c60_starting_model
    from motex_db.explain import explain_model
    from motex_db.fitting.settings import FitSettings
    from motex_db.fitting.work import fit_catalogue
    from motex_db.learning import train_model
    from motex_db.series import decompose_series
    from motex_db.simulation import r_grid
    from motex_db.structures import add_starting_model

    folder = tmp_path_factory.mktemp("record")
    url = f"sqlite:///{folder / 'motex.db'}"
    engine = open_engine(url)
    for name, distractors in ((STRUCTURE, 20), (OTHER_STRUCTURE, 10)):
        path = folder / f"{name}.xyz"
        ase.io.write(str(path), c60_starting_model(n_distractors=distractors, seed=2), format="xyz")
        add_starting_model(engine, path, name, ["C"], bond_cutoff=1.6)
    r = r_grid(0.5, 20.0, 0.01)
    add_datasets(engine, [write_gr(folder / f"{DATASET}.gr", r, c60_measured_pdf(r), c60_dataset_header(), "C60")])
    frames = []
    for k, noise in enumerate((0.01, 0.02, 0.04)):
        frames.append(write_gr(folder / f"frame{k}.gr", r, c60_measured_pdf(r, seed=10 + k, noise=noise),
                               c60_dataset_header(seed=10 + k, noise=noise), f"frame {k}"))
    times = folder / "times.csv"
    times.write_text("file,time\n" + "".join(f"{f.name},{t}\n" for f, t in zip(frames, FRAME_TIMES)))
    add_datasets(engine, frames, series=SERIES, times_file=times)

    decompose_series(engine, SERIES, components=2)  # drawn in the series section: PCA, weights, correlations
    for structure, n, datasets in ((STRUCTURE, 300, [DATASET]), (OTHER_STRUCTURE, 200, [DATASET] + [f.stem for f in frames])):
        sample_motifs(engine, structure, n, seed=3)
        for dataset in datasets:
            fit_catalogue(engine, structure, dataset, FitSettings())
            train_model(engine, structure, dataset, n_iter=1, cv=2, seed=0)
            explain_model(engine, structure, dataset)
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def report(record, tmp_path_factory) -> tuple[Path, CliResult]:
    """The whole record's report, written by the command line."""
    out = tmp_path_factory.mktemp("out") / "report.html"
    result = run_cli("report", "--out", out, db=record)
    assert result.exit_code == 0, result.stdout + result.stderr
    return out, result


def figure_ids(text: str) -> list[str]:
    return re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', text)


def chromium(page: Path, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
        )


def test_report_is_one_self_contained_file_and_logged_in_mlflow(record, report):
    from plotly.offline import get_plotlyjs

    from motex_db import __version__
    from motex_db.tracking import open_tracker

    out, result = report
    assert f"wrote {out}" in result.stdout and "2 runs, 1 comparison of structures, 1 series" in result.stdout
    text = out.read_text(encoding="utf-8")
    # plotly.js once, inline; nothing else fetched from anywhere (plotly.js itself names
    # CDNs for map data and MathJax, which these figures never load)
    plotly_js = get_plotlyjs()
    assert text.count(plotly_js) == 1
    page = text.replace(plotly_js, "")
    assert "<script src" not in page and "http://" not in page and "https://" not in page and "<link" not in page
    ids = figure_ids(text)
    # two runs (their oxide particles are symmetric: an environment-class figure each), one comparison, one series
    assert len(ids) == len(set(ids)) == 2 * 11 + 2 + 5
    for part in ("structure", "contributions", "environments", "fit-extracted", "fit-best", "rwp-size", "convergence",
                 "parity", "shap", "loss", "trials"):
        assert sum(i.startswith("run-") and i.endswith(f"-{part}") for i in ids) == 2, part  # one per run
    assert any(i.startswith("compare-") for i in ids) and any("heatmap" in i for i in ids)
    # the header says what was analysed
    for words in (f"motex-db {__version__}", STRUCTURE, OTHER_STRUCTURE, DATASET, "Fit configurations",
                  "Trained models", f"Series {SERIES}", "Starting structures compared on c60-simulated"):
        assert html.escape(words) in text, words

    tracker = open_tracker(record)
    logged = [line for line in result.stdout.splitlines() if line.startswith("logged as an MLflow artefact")]
    assert logged, result.stdout
    run_ids = re.findall(r"\b[0-9a-f]{32}\b", logged[0])
    assert len(run_ids) == 2  # the two per-run models; the series frames' runs link to a copy
    for run_id in run_ids:
        assert [a.path for a in tracker.client.list_artifacts(run_id, "report")] == ["report/report.html"]
    frames = tracker.client.search_runs([tracker.experiment_id], "tags.`motex_db.report` LIKE 'runs:/%'")
    assert len(frames) == len(FRAME_TIMES)


@requires_chromium
def test_report_renders_in_headless_chromium(report, tmp_path):
    out, _ = report
    text = out.read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")

    # one launch: the DOM once the page has settled, and a screenshot of its top (the probe draws nothing)
    screenshot = tmp_path / "report-1280.png"
    dumped = chromium(probed, "--dump-dom", f"--screenshot={screenshot}")
    found = re.search(r'<pre id="motex-probe"[^>]*>(.*?)</pre>', dumped.stdout, re.S)
    assert found, f"the page never finished loading in Chromium: {dumped.stderr[-2000:]}"
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["errors"] == []
    assert probe["plotly"] == "object"
    assert [f["id"] for f in probe["figures"]] == figure_ids(text)
    for figure in probe["figures"]:
        assert figure["svg"] >= 1 and figure["traces"] >= 1, figure  # plotly drew it
        assert figure["width"] >= 300 and figure["height"] >= 300, figure
        assert "WebGL" not in figure["text"], figure  # no "WebGL is not supported" in place of the 3D view
    for figure in probe["figures"]:
        if figure["id"].endswith("-structure"):
            assert figure["canvas"] >= 1, figure  # the 3D view is drawn with WebGL
    # readable at a laptop's width: nothing sticks out sideways
    assert probe["innerWidth"] == 1280 and probe["scrollWidth"] <= 1280

    assert screenshot.exists(), dumped.stderr[-2000:]
    header = screenshot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(header[16:20], "big") == 1280
    print(f"screenshot of the report at 1280 px: {screenshot}")


def test_recomputed_numbers_match_the_record(record):
    """The report's curves, test set and SHAP values are the record's: recomputed, they give its numbers back."""
    from motex_db.db import open_engine
    from motex_db.explain import atom_contributions
    from motex_db.reports import recompute
    from motex_db.reports.data import gather_report

    engine = open_engine(record)
    data = gather_report(engine, structures=[STRUCTURE])
    (run,) = data.runs
    assert run.extracted is not None and run.extracted.sampler.startswith("extracted")
    assert run.best is not None and not run.best.sampler.startswith("extracted")
    assert run.best.rwp == run.fits.loc[~run.fits["extracted"], "rwp"].min()
    for fit in (run.best, run.extracted):
        curve = recompute.fit_curve(run, fit)
        assert curve.rwp == pytest.approx(fit.rwp, abs=1e-6)
        assert curve.r.min() >= run.fit_config.rmin - 1e-9 and curve.r.max() <= run.fit_config.rmax + 1e-9
    surrogate = recompute.load_surrogate(engine, run)
    predictions = recompute.holdout_predictions(surrogate)
    assert len(predictions.rwp) == round(0.2 * run.model.n_motifs)
    assert predictions.mae == pytest.approx(run.model.metrics["mae"], rel=1e-9)
    shap = recompute.training_shap(surrogate)
    stored = run.contributions.sort_values("atom_index")
    found = atom_contributions(shap.values, shap.X)
    np.testing.assert_allclose(found.contribution, stored["contribution"], atol=1e-9)
    # the convergence explain stored, and the same recomputed for a model explained before explain stored it
    stored_lines = recompute.contribution_convergence(run, surrogate)
    assert [line.label for line in stored_lines] == ["first 50%", "first 75%", "all"]
    assert [line.n_motifs for line in stored_lines] == sorted(line.n_motifs for line in stored_lines)
    run.model.convergence = None
    run.contributions = run.contributions.assign(contribution_half=np.nan, contribution_three_quarters=np.nan)
    recomputed = recompute.contribution_convergence(run, surrogate)
    for old, new in zip(stored_lines, recomputed):
        assert (new.label, new.n_motifs, new.sign_changes) == (old.label, old.n_motifs, old.sign_changes)
        np.testing.assert_allclose(new.contribution, old.contribution, atol=1e-9)
    engine.dispose()


def test_series_report_alone(record, tmp_path):
    out = tmp_path / "series.html"
    result = run_cli("report", "--out", out, "--series", SERIES, db=record)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "0 runs" in result.stdout and "1 series" in result.stdout
    ids = figure_ids(out.read_text(encoding="utf-8"))
    assert ids == ["series-0-best", "series-0-heatmap-0", "series-0-pca", "series-0-weights", "series-0-correlation"]


def test_report_of_scores_imported_from_elsewhere(tmp_path):
    """import-fits scores: everything but the PDF curves, which do not exist."""
    import itertools

    from motex_db.db import open_engine
    from motex_db.explain import explain_model
    from motex_db.fitting.imported import import_fits
    from motex_db.learning import train_model
    from motex_db.structures import add_starting_model

    url = f"sqlite:///{tmp_path / 'motex.db'}"
    engine = open_engine(url)
    line = tmp_path / "line.xyz"  # eight W far apart: every mask is its own motif
    line.write_text("8\n\n" + "".join(f"W {4 * i} 0 0\n" for i in range(8)))
    add_starting_model(engine, line, "line", ["W"])
    masks = np.array([m for m in itertools.product([0, 1], repeat=8) if any(m)])
    score = 0.5 - 0.03 * masks[:, :4].sum(1) + 0.02 * masks[:, 4:].sum(1) + np.random.default_rng(0).normal(0, 0.003, len(masks))
    scores = tmp_path / "xanes.csv"
    scores.write_text("mask,score\n" + "".join(f"{''.join(map(str, m))},{v:.6f}\n" for m, v in zip(masks, score)))
    import_fits(engine, scores, "line", "xanes")
    train_model(engine, "line", "xanes", n_iter=1, cv=2, seed=0)
    explain_model(engine, "line", "xanes")
    engine.dispose()

    out = tmp_path / "imported.html"
    result = run_cli("report", "--out", out, db=url)
    assert result.exit_code == 0, result.stdout + result.stderr
    text = out.read_text(encoding="utf-8")
    ids = figure_ids(text)
    assert not any("-fit-" in i for i in ids) and any(i.endswith("-rwp-size") for i in ids)
    assert "imported from xanes.csv" in text and "W4, score" in text  # the extracted motif: atoms 1-4


def test_report_refuses_what_it_cannot_do(record, tmp_path):
    cases = [
        (["--structure", "nope"], "no structure named 'nope'"),
        (["--data", "nope"], "no dataset named 'nope'"),
        (["--series", "nope"], "no series named 'nope'"),
    ]
    for args, words in cases:
        result = run_cli("report", "--out", tmp_path / "r.html", *args, db=record)
        assert result.exit_code == 2 and words in result.stderr, (args, result.stderr)
    result = run_cli("report", "--out", tmp_path / "missing" / "r.html", db=record)
    assert result.exit_code == 2 and "does not exist" in result.stderr
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    result = run_cli("report", "--out", tmp_path / "r.html", db=empty)
    assert result.exit_code == 2 and "nothing to report" in result.stderr
    assert not (tmp_path / "r.html").exists()


def test_structure_mining_section_renders_in_headless_chromium(tmp_path):
    """A record with only structure mining: the candidates' table and their fits, drawn in a real browser."""
    from motex_db.crystal_examples import example_crystals, nanoparticle_pdf, write_example_cifs
    from motex_db.datasets import write_gr

    url = f"sqlite:///{tmp_path / 'motex.db'}"
    crystals = [c for c in example_crystals() if c[0].startswith("spinel") or c[0] in ("rocksalt_MgO", "rocksalt_NiO")]
    write_example_cifs(tmp_path / "cifs", crystals)
    r = np.arange(0.5, 25.0001, 0.01)
    g = nanoparticle_pdf(dict(crystals)["spinel_CoFe2O4"], r, diameter=30.0, qmax=20.0, seed=0)
    write_gr(tmp_path / "np.gr", r, g, {"qmin": 0.8, "qmax": 20.0, "qdamp": 0.03}, "3 nm CoFe2O4")
    for args in (("library", "add", tmp_path / "cifs", "--name", "oxides"), ("data", "add", tmp_path / "np.gr", "--name", "np"),
                 ("mine", "np", "--library", "oxides", "--top", "4", "--refine")):
        result = run_cli(*args, db=url)
        assert result.exit_code == 0, result.output
    out = tmp_path / "mining.html"
    result = run_cli("report", "--out", out, db=url)
    assert result.exit_code == 0, result.output
    assert "1 structure mining result" in result.stdout
    text = out.read_text(encoding="utf-8")
    ids = figure_ids(text)
    assert ids == ["mining-0-fit-1", "mining-0-fit-2", "mining-0-fit-3"]
    assert "Structure mining: np mined in oxides (pcc)" in text and "spinel_CoFe2O4.cif" in text
    assert "--from-candidate" in text
    need("requires_chromium")  # the HTML was checked above; its rendering needs the browser
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    dumped = chromium(probed, "--dump-dom")
    found = re.search(r'<pre id="motex-probe"[^>]*>(.*?)</pre>', dumped.stdout, re.S)
    assert found, f"the page never finished loading in Chromium: {dumped.stderr[-2000:]}"
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["errors"] == [] and probe["plotly"] == "object"
    assert [f["id"] for f in probe["figures"]] == ids
    for figure in probe["figures"]:
        assert figure["svg"] >= 1 and figure["traces"] == 3 and figure["height"] >= 300, figure
    assert probe["scrollWidth"] <= 1280


def test_report_file_gets_the_mode_of_any_new_file(record, tmp_path):
    import os
    import stat

    for umask in (0o022, 0o077):
        previous = os.umask(umask)
        try:
            out = tmp_path / f"report-{umask:o}.html"
            result = run_cli("report", "--out", out, "--structure", STRUCTURE, db=record)
        finally:
            os.umask(previous)
        assert result.exit_code == 0, result.output
        assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
        assert not list(tmp_path.glob(f".{out.name}.*"))  # no scratch file left behind


def test_default_3d_view_shows_no_other_atom_inside_the_motif():
    from types import SimpleNamespace

    import pandas as pd

    from motex_db.reports.structure_view import motif_view, structure_figure

    # a motif of four atoms in a square, one positive atom right behind its centre as seen
    # from the usual oblique camera, and three further away
    usual = np.array([1.05, 1.05, 0.8]) / np.linalg.norm([1.05, 1.05, 0.8])
    square = np.array([[2.0, 0, 0], [-2.0, 0, 0], [0, 2.0, 0], [0, -2.0, 0]]) @ np.linalg.qr(np.c_[usual, np.eye(3)[:, :2]])[0]
    positions = np.vstack([square, -6.0 * usual, [[9.0, 0, 0], [0, 9.0, 0], [0, 0, 9.0]]])
    in_motif = np.array([True] * 4 + [False] * 4)
    eye, up = motif_view(positions, in_motif)
    assert abs(np.linalg.norm(eye) - 1) < 1e-12 and abs(eye @ up) < 1e-12
    relative = positions - positions[in_motif].mean(axis=0)
    sideways = np.linalg.norm(relative - np.outer(relative @ eye, eye), axis=1)
    assert sideways[~in_motif].min() > sideways[in_motif].max() + 1.0
    # from the usual camera the positive atom sits in the middle of the motif
    usual_sideways = np.linalg.norm(relative - np.outer(relative @ usual, usual), axis=1)
    assert usual_sideways[4] < usual_sideways[in_motif].max()

    structure = SimpleNamespace(name="square", positions=positions, elements=["W"] * 8, permutable_elements=["W"],
                                bond_cutoff=1.0)
    table = pd.DataFrame({"atom_index": np.arange(1, 9), "element": "W", "uncertainty": 0.001, "confidence": 1.0,
                          "contribution": [-0.02, -0.01, -0.015, -0.02, 0.01, 0.02, 0.005, 0.0]})
    fig = structure_figure(structure, table)
    motif, outside = (t for t in fig.data if t.type == "scatter3d" and t.mode == "markers")
    assert len(motif.x) == 4 and motif.marker.opacity == 1 and len(outside.x) == 4 and outside.marker.opacity < 0.5
    camera = fig.layout.scene.camera
    assert camera.projection.type == "orthographic"
    shown = np.array([camera.eye.x, camera.eye.y, camera.eye.z])
    assert np.allclose(shown / np.linalg.norm(shown), eye)
