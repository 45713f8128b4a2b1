"""Guided sampling and `motex-db extract`: rounds of sample, fit, train, explain, then polish."""

from __future__ import annotations

import numpy as np

from support import KEGGIN, query, requires_shared, snapshot

from motex_db.catalogue import masks_from_text, sample_guided_masks

ODD = "10" * 12


def test_guided_draws_follow_the_contributions_and_the_best_fits():
    contributions = np.array([-0.02] * 10 + [0.02] * 10)
    best = np.array([[True] * 10 + [False] * 10])
    existing = {"1" * 10 + "0" * 10}
    rng = np.random.default_rng(0)
    texts, exhausted = sample_guided_masks(contributions, best, 400, rng, existing)
    assert not exhausted and len(texts) == len(set(texts)) == 400 and not existing & set(texts)
    masks = masks_from_text(texts, 20)  # refuses empty motifs
    kept = masks.mean(axis=0)
    assert kept[:10].min() > 0.75 and kept[10:].max() < 0.25
    # the neighbourhood draws: one to three flips away from the best fit
    distance = (masks != best[0]).sum(axis=1)
    assert np.sum((distance >= 1) & (distance <= 3)) > 100
    # the same seed gives the same draws
    again, _ = sample_guided_masks(contributions, best, 400, np.random.default_rng(0), existing)
    assert again == texts


def test_guided_sampling_without_an_explanation_is_refused(motex_process, tmp_path):
    from support import run_cli

    url = f"sqlite:///{tmp_path / 'guided.db'}"
    xyz = tmp_path / "w3.xyz"
    xyz.write_text("3\n\nW 0 0 0\nW 3.3 0 0\nW 0 3.3 0\n")
    assert run_cli("structure", "add", xyz, "--name", "w3", "--permute", "W", db=url).exit_code == 0
    before = snapshot(url)
    result = motex_process("sample", "--structure", "w3", "--n", "5", "--strategy", "guided", db=url)
    assert result.exit_code == 2 and "motex-db train and explain first" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(url) == before


@requires_shared
def test_extract_finds_the_odd_keggin_unit_and_a_rerun_does_nothing(motex, tmp_path):
    url = f"sqlite:///{tmp_path / 'extract.db'}"
    for step in (("structure", "add", KEGGIN / "109725.xyz", "--name", "keggin", "--permute", "W"),
                 ("data", "add", KEGGIN / "DanMAX_AlphaKeggin.gr", "--name", "danmax")):
        assert motex(*step, db=url).exit_code == 0
    args = ("extract", "--structure", "keggin", "--data", "danmax", "--budget", "1500", "--round", "300", "--n-iter", "4")
    result = motex(*args, "--out", tmp_path / "out", db=url)
    assert result.exit_code == 0, result.output
    assert "rounds" in result.stdout and "the two answers" in result.stdout
    best_mask, best_rwp, budget = query(
        url, "SELECT m.mask, p.best_rwp, p.budget FROM polish_run p JOIN motif m ON m.id = p.best_motif_id")[0]
    # science.md section 6: the 12 odd W, one complete Keggin unit; the polish keeps them
    assert best_mask == ODD and best_rwp <= 0.4768
    n_fits, = query(url, "SELECT count(*) FROM fit_result")[0]
    assert n_fits <= 1500
    assert any(p.name.endswith("_motif.xyz") for p in (tmp_path / "out").iterdir())
    # the report shows both answers and the Rwp-versus-size path
    assert motex("report", "--out", tmp_path / "report.html", db=url).exit_code == 0
    page = (tmp_path / "report.html").read_text()
    assert "Beyond the SHAP answer" in page and "polish-path" in page
    before = snapshot(url)
    again = motex(*args, db=url)
    assert again.exit_code == 0 and "done before" in again.stdout
    assert snapshot(url) == before
    # guided rounds draw around that answer: the odd W are kept more often than the even ones
    last, = query(url, "SELECT max(id) FROM motif")[0]
    assert motex("sample", "--structure", "keggin", "--n", "200", "--strategy", "guided", "--data", "danmax",
                 "--seed", "1", db=url).exit_code == 0
    masks = [m for (m,) in query(url, f"SELECT mask FROM motif WHERE sampler LIKE 'guided%' AND id > {last}")]
    assert len(masks) == 200
    kept = masks_from_text(masks, 24).mean(axis=0)
    assert kept[0::2].mean() > kept[1::2].mean() + 0.3


@requires_shared
def test_extract_killed_mid_round_goes_on_without_duplicates(motex, tmp_path):
    import os
    import signal
    import subprocess
    import time

    from support import motex_executable

    url = f"sqlite:///{tmp_path / 'killed.db'}"
    for step in (("structure", "add", KEGGIN / "109725.xyz", "--name", "keggin", "--permute", "W"),
                 ("data", "add", KEGGIN / "DanMAX_AlphaKeggin.gr", "--name", "danmax")):
        assert motex(*step, db=url).exit_code == 0
    command = [motex_executable(), "--db", url, "extract", "--structure", "keggin", "--data", "danmax",
               "--budget", "1200", "--round", "300", "--n-iter", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if query(url, "SELECT count(*) FROM fit_result")[0][0] >= 50:
                break
            assert process.poll() is None, "extract ended before it could be killed"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rounds = query(url, "SELECT count(*) FROM trained_model")[0][0]
    sampled = query(url, "SELECT count(*) FROM motif WHERE sampler LIKE 'uniform%' OR sampler LIKE 'guided%'")[0][0]
    assert sampled == 300 * rounds  # the killed round was finished, not sampled again
    assert query(url, "SELECT m.mask FROM polish_run p JOIN motif m ON m.id = p.best_motif_id")[0][0] == ODD
