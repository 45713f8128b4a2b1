"""`motex-db ui`: MLflow's UI on the record's own store, with training runs worth comparing.

A record with trained and explained models on two starting structures; `motex-db ui` runs as
the installed console script. One test asks MLflow's REST API for the runs' params and
metrics; one opens the UI in headless Chromium (driven over the DevTools protocol on a pipe),
sees both runs with their param columns, opens MLflow's compare view of the two, and fails on
a console error.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from support import CHROMIUM, motex_executable, requires_chromium

STRUCTURES = ("wo3-12w", "wo3-8w")
DATASET = "wo3-simulated"
# what the issue asks each training run to carry (issue 14, "runs worth comparing")
TRAIN_PARAMS = ("structure", "dataset", "recipe", "calculator", "rmin", "rmax", "qmin", "qmax", "qdamp",
                "zoom_mode", "n_motifs", "n_permutable", "seed")
TRAIN_METRICS = ("test_mae", "test_rmse", "test_r2", "best_cv_mae", "overall_confidence")
COMPARED_PARAMS = ("calculator", "rmax", "qmax", "zoom_mode")
# MLflow's own UI asks its server who the user is; without MLflow's basic-auth app that answers 404.
MLFLOW_OWN_CONSOLE_ERRORS = ("/ajax-api/2.0/mlflow/users/current",)


def _cli(url: str, *args) -> None:
    """One motex-db command in this process (the console script's own main)."""
    from motex_db.cli.app import main

    saved = sys.argv
    sys.argv = ["motex-db", "--db", url, *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = saved
    assert code == 0, f"motex-db {' '.join(map(str, args))} exited with {code}"


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> str:
    """Two starting structures (generated WO3 pieces with 12 and 8 W) against the PDF simulated from the
    larger one, 200 motifs each, trained (one Bayesian iteration) and explained."""
    from ase import Atoms
    from ase.io import write

    from support import oxide_particle

    folder = tmp_path_factory.mktemp("ui")
    url = f"sqlite:///{folder / 'motex.db'}"
    for name, n_metal in zip(STRUCTURES, (12, 8)):
        elements, positions, _ = oxide_particle(n_metal)
        write(folder / f"{name}.xyz", Atoms(elements, positions=positions))
        _cli(url, "structure", "add", folder / f"{name}.xyz", "--name", name, "--permute", "W")
    _cli(url, "simulate", folder / f"{STRUCTURES[0]}.xyz", "--out", folder / "measured.gr", "--rmin", 0, "--rmax", 20)
    _cli(url, "data", "add", folder / "measured.gr", "--name", DATASET)
    for structure in STRUCTURES:
        _cli(url, "sample", "--structure", structure, "--n", 200, "--seed", 1)
        _cli(url, "fit", "--structure", structure, "--data", DATASET)
        _cli(url, "train", "--structure", structure, "--data", DATASET, "--n-iter", 1, "--cv", 2)
        _cli(url, "explain", "--structure", structure, "--data", DATASET)
    return url


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ui(record, tmp_path_factory):
    """`motex-db --db RECORD ui --port P` running; yields (base URL, the runs URL it printed)."""
    port = _free_port()
    process = subprocess.Popen(
        [motex_executable(), "--db", record, "ui", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        cwd=tmp_path_factory.mktemp("ui-cwd"), start_new_session=True,
    )
    printed = []
    try:
        while True:
            line = process.stdout.readline()
            if not line:
                pytest.fail(f"motex-db ui ended: {printed} {process.communicate(timeout=30)[1]}")
            printed.append(line)
            if "training runs:" in line:
                break
        runs_url = line.split("training runs:")[1].strip()
        yield f"http://127.0.0.1:{port}", runs_url, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _api(base: str, endpoint: str, body: dict | None = None) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    request = urllib.request.Request(
        url, data=None if body is None else json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read().decode())


def _train_runs(base: str) -> tuple[str, list[dict]]:
    experiment = _api(base, "experiments/get-by-name?experiment_name=motex-db")["experiment"]["experiment_id"]
    runs = _api(base, "runs/search", {"experiment_ids": [experiment], "max_results": 1000})["runs"]
    top = [r for r in runs if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
    return experiment, [r for r in top if r["info"].get("run_name", "").startswith("train ")]


def test_ui_prints_the_runs_page_and_serves_the_runs_params_and_metrics(ui):
    base, runs_url, _ = ui
    experiment, runs = _train_runs(base)
    assert runs_url == f"{base}/#/experiments/{experiment}/runs"
    assert sorted(r["info"]["run_name"] for r in runs) == sorted(f"train {s} / {DATASET}" for s in STRUCTURES)
    for run in runs:
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        structure = run["info"]["run_name"].split()[1]
        assert set(TRAIN_PARAMS) <= set(params), sorted(set(TRAIN_PARAMS) - set(params))
        assert params["structure"] == structure and params["dataset"] == DATASET
        assert params["recipe"] == "fast" and params["calculator"] == "real" and params["seed"] == "0"
        assert int(params["n_permutable"]) == (12 if structure == "wo3-12w" else 8)
        assert float(params["rmin"]) == pytest.approx(1.6) and float(params["rmax"]) == pytest.approx(10.0)
        assert set(TRAIN_METRICS) <= set(metrics), sorted(set(TRAIN_METRICS) - set(metrics))
        assert 0 < metrics["test_mae"] < 1 and metrics["overall_confidence"] > 0
        # after explain: the extracted motif's Rwp and size, and the best sampled Rwp
        names = set(metrics)
        assert any("extracted" in k and "rwp" in k for k in names), sorted(names)
        assert any("extracted" in k and ("size" in k or "atoms" in k) for k in names), sorted(names)
        assert any(k.startswith("best") and "rwp" in k and "cv" not in k for k in names), sorted(names)
        # the artefacts come from the record's own artefact root, through the server
        files = _api(base, f"artifacts/list?run_id={run['info']['run_id']}").get("files", [])
        assert files, f"no artefacts served for {run['info']['run_name']}"


def test_status_names_motex_db_ui_behind_the_activation_when_not_on_path(record, motex_process):
    venv_bin = str(Path(motex_executable()).parent)
    on_path = motex_process("status", db=record, env={"PATH": f"{venv_bin}:/usr/bin:/bin"})
    assert on_path.exit_code == 0, on_path.output
    assert f"\n  motex-db --db {record} ui\n" in on_path.stdout and "mlflow ui" not in on_path.stdout
    outside = motex_process("status", db=record, env={"PATH": "/usr/bin:/bin"})
    assert outside.exit_code == 0, outside.output
    assert f"  source {venv_bin}/activate && motex-db --db {record} ui\n" in outside.stdout, outside.stdout


def test_ui_refuses_a_port_in_use(record, motex_process):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = motex_process("ui", "--port", port, db=record)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr


def test_ui_on_a_postgresql_record_opens_its_own_mlflow_database(postgres_url, tmp_path):
    """A PostgreSQL record keeps its runs in NAME_mlflow on the same server: the UI shows them."""
    from motex_db.db import open_engine
    from motex_db.tracking import open_tracker

    open_engine(postgres_url).dispose()
    tracker = open_tracker(postgres_url)
    run_id = tracker.start_run("train pg-structure / pg-data", {"structure": "pg-structure"}, {"recipe": "fast"})
    port = _free_port()
    process = subprocess.Popen(
        [motex_executable(), "--db", postgres_url, "ui", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        cwd=tmp_path, start_new_session=True,
    )
    try:
        while "training runs:" not in (line := process.stdout.readline()):
            assert line, process.communicate(timeout=30)[1]
        base = f"http://127.0.0.1:{port}"
        assert line.split("training runs:")[1].strip() == f"{base}/#/experiments/{tracker.experiment_id}/runs"
        runs = _api(base, "runs/search", {"experiment_ids": [tracker.experiment_id]})["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run_id]
        assert runs[0]["data"]["params"] == [{"key": "recipe", "value": "fast"}]
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (no websocket library needed)."""

    def __init__(self, profile: Path):
        to_browser_read, self._to_browser = os.pipe()
        from_browser_read, from_browser_write = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4 (--remote-debugging-pipe).
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_read, from_browser_write)]

        def arrange() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--enable-unsafe-swiftshader", "--no-first-run", "--window-size=3200,1200",
             f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=arrange, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        for fd in (to_browser_read, from_browser_write, *high):
            os.close(fd)
        self._from_browser = os.fdopen(from_browser_read, "rb")
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=self.session)

    def _read(self) -> None:
        buffer = b""
        while chunk := self._from_browser.read1(65536):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        self._replies[message["id"]] = message
                        self._lock.notify_all()
                else:
                    self._events.put(message)

    def send(self, method: str, session: str | None = None, timeout: float = 60.0, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        with self._lock:
            if not self._lock.wait_for(lambda: self._next_id in self._replies, timeout=timeout):
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
            reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", session=self.session, expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        return None

    def console_problems(self) -> list[str]:
        """Console errors and uncaught exceptions seen so far."""
        problems = []
        while not self._events.empty():
            event = self._events.get()
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                problems.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                problems.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                problems.append(f"{entry.get('text')} ({entry.get('url', '')})")
        return problems

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@requires_chromium
def test_runs_page_and_compare_view_in_headless_chromium(ui, tmp_path):
    base, runs_url, _ = ui
    experiment, runs = _train_runs(base)
    names = [r["info"]["run_name"] for r in runs]
    browser = Chromium(tmp_path / "profile")
    try:
        browser.send("Page.navigate", session=browser.session, url=runs_url)
        text = browser.wait_for(
            f"(() => {{ const t = document.body.innerText; return {json.dumps(names)}.every(n => t.includes(n)) && t; }})()"
        )
        assert text, f"the runs page never showed both runs: {browser.evaluate('document.body.innerText')[:2000]}"
        # the param columns the runs are compared by, chosen in the table's Columns menu
        browser.evaluate("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Columns').click()")
        assert browser.wait_for("!!document.querySelector('input[placeholder=\"Search columns\"]')", timeout=30)
        for name in COMPARED_PARAMS:
            browser.evaluate("(() => { const i = document.querySelector('input[placeholder=\"Search columns\"]'); i.focus(); i.select(); })()")
            browser.send("Input.insertText", session=browser.session, text=name)
            found = browser.wait_for(
                "(() => { const n = [...document.querySelectorAll('[class*=\"tree-treenode\"]')]"
                f".find(x => x.querySelector('[class*=\"tree-title\"]')?.textContent === {json.dumps(name)});"
                " if (!n) return false; n.querySelector('[class*=\"tree-checkbox\"]').click(); return true; })()",
                timeout=30,
            )
            assert found, f"the Columns menu offers no param {name}"
        headers = browser.wait_for(
            "(() => { const h = [...document.querySelectorAll('[role=columnheader]')].map(x => x.innerText.trim());"
            f" return {json.dumps(list(COMPARED_PARAMS))}.every(n => h.includes(n)) && h; }})()", timeout=30
        )
        assert headers, f"the runs table shows no param columns: {browser.evaluate('document.body.innerText')[:2000]}"
        problems = browser.console_problems()

        compare = f"{base}/#/compare-runs?" + urllib.parse.urlencode(
            {"runs": json.dumps([r["info"]["run_id"] for r in runs]), "experiments": json.dumps([experiment])}
        )
        browser.send("Page.navigate", session=browser.session, url=compare)
        shown = browser.wait_for(
            "(() => { const t = document.body.innerText; return t.includes('Comparing') && t.includes('calculator')"
            f" && {json.dumps(names)}.every(n => t.includes(n)) && t; }})()"
        )
        assert shown, f"the compare view never showed the two runs: {browser.evaluate('document.body.innerText')[:2000]}"
        for structure in STRUCTURES:
            assert structure in shown
        problems += browser.console_problems()
    finally:
        browser.close()
    ours = [p for p in problems if not any(known in p for known in MLFLOW_OWN_CONSOLE_ERRORS)]
    assert not ours, ours


def test_ctrl_c_stops_the_ui_and_its_server(ui):
    """Last in this module: it stops the UI the other tests used."""
    base, _, process = ui
    port = int(base.rsplit(":", 1)[1])
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "stopped MLflow's UI." in stdout and "Traceback" not in stderr, stderr
    with socket.socket() as probe:  # the server is gone: its port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
