"""The command line as a new user meets it: misuse gets a usage line and one sentence (exit 2),
Ctrl-C one line (exit 130), ``--version`` the version and schema revision; never a traceback.

Each case runs the installed ``motex-db`` console script in a subprocess, as a user's shell does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from importlib.metadata import version

import pytest

from support import motex_executable, query, snapshot


def assert_usage_error(result, sentence: str, usage: str = "Usage: motex-db") -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith(usage), result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr
    assert sentence in error_lines[0], result.stderr


def test_no_arguments_prints_help_with_usage_and_exit_2(motex_process):
    result = motex_process()
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Usage: motex-db [OPTIONS] COMMAND [ARGS]...")
    assert "sample" in result.stderr and "fit" in result.stderr


def test_group_without_subcommand_prints_its_help_and_exit_2(motex_process):
    result = motex_process("structure")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Usage: motex-db structure [OPTIONS] COMMAND [ARGS]...")
    assert "rename" in result.stderr


def test_unknown_command_suggests_the_close_one(motex_process):
    assert_usage_error(motex_process("smaple"), "No such command 'smaple'. Did you mean 'sample'?")


def test_unknown_option_names_it_and_the_close_ones(motex_process):
    result = motex_process("sample", "--structre", "x")
    assert_usage_error(result, "No such option: --structre", usage="Usage: motex-db sample [OPTIONS]")
    assert "--structure" in result.stderr


def test_missing_option_names_it(motex_process):
    assert_usage_error(motex_process("fit"), "Missing option '--structure'.", usage="Usage: motex-db fit [OPTIONS]")


def test_bad_option_value_names_the_option(motex_process):
    result = motex_process("sample", "--structure", "x", "--n", "many")
    assert_usage_error(result, "Invalid value for '--n'", usage="Usage: motex-db sample [OPTIONS]")


def test_misuse_leaves_the_database_unchanged(motex_process, db_url):
    assert motex_process("init", db=db_url).exit_code == 0
    before = snapshot(db_url)
    for args in (("smaple",), ("structure", "add", "--nme", "x"), ("data", "add"), ("sql",)):
        result = motex_process(*args, db=db_url)
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)
    assert snapshot(db_url) == before


def test_version_prints_package_version_and_schema_revision(motex_process):
    from motex_db.db import head_revision

    result = motex_process("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"motex-db {version('motex-db')} (schema revision {head_revision()})"


def test_help_exits_0(motex_process):
    result = motex_process("fit", "--help")
    assert result.exit_code == 0 and result.stdout.startswith("Usage: motex-db fit [OPTIONS]"), result.output


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    """Ctrl-C at a terminal signals the whole process group; the demo is a long command."""
    process = subprocess.Popen(
        [motex_executable(), "demo", "--dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )
    try:
        first = process.stdout.readline()
        assert first.startswith("record:"), first + process.communicate(timeout=60)[1]
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == ["error: interrupted; what was committed is kept, run the command again to go on."], stderr


def test_ctrl_c_during_a_parallel_fit_is_one_line_too(tmp_path):
    """The fit's worker processes take the terminal's Ctrl-C as well: they leave it to the parent."""
    from motex_db.catalogue import sample_motifs
    from motex_db.db import open_engine
    from motex_db.demo import DATASET_NAME, STRUCTURE_NAME, run_demo

    url = run_demo(tmp_path / "demo", url=f"sqlite:///{tmp_path / 'demo' / 'motex.db'}", through="data")
    engine = open_engine(url)
    sample_motifs(engine, STRUCTURE_NAME, 50_000, seed=1)
    engine.dispose()
    process = subprocess.Popen(
        [motex_executable(), "--db", url, "fit", "--structure", STRUCTURE_NAME, "--data", DATASET_NAME,
         "--recipe", "mlmotex", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )
    try:
        # the workers are started and fitting once results land (50,000 mlmotex fits take minutes)
        deadline = time.monotonic() + 120
        while query(url, "SELECT count(*) FROM fit_result")[0][0] < 100 and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("fitting")]
    assert lines == ["error: interrupted; what was committed is kept, run the command again to go on."], stderr
