"""``motex-db ui``: MLflow's UI on the record's own tracking store, opened at the training runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

import typer

from motex_db.cli.app import MLFLOW_HELP, app, engine_of, shell_hint
from motex_db.cli.output import console
from motex_db.errors import MotexError

# MLflow's server on a busy 2-core machine takes 10-30 s to answer; give it ample time.
STARTUP_TIMEOUT_SECONDS = 180.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def runs_url(base_url: str, experiment_id: Optional[str]) -> str:
    """The address of the experiment's training runs in MLflow 3's UI (not its GenAI overview)."""
    if experiment_id is None:
        return f"{base_url}/#/experiments"
    return f"{base_url}/#/experiments/{experiment_id}/runs"


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _end_with_parent() -> None:
    """In the server's process: receive SIGTERM when motex-db ends, even by kill -9 (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


def _wait_until_serving(process: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            last = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
            reason = last[-1].strip() if last else f"exit code {process.returncode}"
            raise MotexError(f"MLflow's server stopped at start ({reason}); its log is {log_path}.")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise MotexError(f"MLflow's server did not answer within {STARTUP_TIMEOUT_SECONDS:.0f} s; its log is {log_path}.")


def _experiment_id(base_url: str, name: str) -> Optional[str]:
    query = urllib.parse.urlencode({"experiment_name": name})
    try:
        return _get_json(f"{base_url}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]["experiment_id"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _stop(process: subprocess.Popen) -> None:
    """End the server and its workers (its own process group), politely first."""
    # within the 3 s motex-db allows itself after Ctrl-C
    for sig, wait in ((signal.SIGTERM, 1.5), (signal.SIGKILL, 1.0)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


@app.command()
def ui(
    ctx: typer.Context,
    port: int = typer.Option(5000, "--port", help="Port of the UI."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface)."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help=MLFLOW_HELP),
) -> None:
    """Start MLflow's UI on the record's runs (its own tracking store and artefacts); Ctrl-C stops it."""
    from motex_db.db import safe_url
    from motex_db.tracking import EXPERIMENT_NAME, tracking_location, tracking_lock

    if not 0 < port < 65536:
        raise MotexError(f"--port must be between 1 and 65535, not {port}.")
    engine = engine_of(ctx)
    location = tracking_location(engine.url.render_as_string(hide_password=False), mlflow_uri)
    engine.dispose()
    if location.tracking_uri.startswith(("http://", "https://")):
        console.print(f"the runs are on the tracking server {location.tracking_uri}: open it in a browser.")
        return
    if not _port_free(host, port):
        raise MotexError(f"port {port} on {host} is in use: choose another with --port.")

    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    environment = {
        **os.environ,
        # in the environment rather than on the command line, where `ps` would show a password
        "MLFLOW_BACKEND_STORE_URI": location.tracking_uri,
        # MLflow 3's GenAI job runner would add seven huey worker processes we have no use for
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    if location.artifact_location:
        environment["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = location.artifact_location
    log_path = Path(tempfile.gettempdir()) / f"motex-db-ui-{port}.log"
    display_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base_url = f"http://{display_host}:{port}"
    console.print(f"starting MLflow's UI on {safe_url(location.tracking_uri)} ...")
    with open(log_path, "w") as log:
        # Its own session: Ctrl-C reaches motex-db alone, which then stops the server quietly.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_end_with_parent, env=environment,
        )
    try:
        # Holding the store's lock while MLflow creates or migrates it keeps our own processes from racing it.
        with tracking_lock(location):
            _wait_until_serving(process, base_url, log_path)
        experiment_id = _experiment_id(base_url, EXPERIMENT_NAME)
        if experiment_id is None:
            console.print("no motex-db runs in this store yet: motex-db train logs them.")
        console.print(f"MLflow's UI, the training runs: {runs_url(base_url, experiment_id)}")
        console.print("Ctrl-C stops it.")
        process.wait()
        raise MotexError(f"MLflow's server stopped (exit code {process.returncode}); its log is {log_path}.")
    except KeyboardInterrupt:
        _stop(process)
        console.print("stopped MLflow's UI.")
    finally:
        _stop(process)


def runs_hint(ctx, mlflow_uri: Optional[str], ui_command: Optional[str]) -> Optional[str]:
    """How to open a command's MLflow runs: ``motex-db ui`` for the record's store, or the tracking server's URL."""
    if ui_command is None or ui_command.startswith("open "):
        return ui_command
    return ui_hint(ctx.obj["db"], mlflow_uri)


def ui_hint(db_given: Optional[str], mlflow_uri: Optional[str]) -> str:
    """The ``motex-db ui`` command for the record the user named, as they would type it."""
    from motex_db.db import safe_url

    command = "motex-db"
    if db_given:
        command += f" --db {safe_url(db_given)}"
    command += " ui"
    if mlflow_uri:
        command += f" --mlflow-uri {safe_url(mlflow_uri)}"
    return shell_hint(command)
