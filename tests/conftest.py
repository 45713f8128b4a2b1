"""Shared fixtures: real record databases (SQLite files and PostgreSQL), the real CLI, shared data."""

from __future__ import annotations

import io
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from support import CliResult, motex_executable, need

POSTGRES_ADMIN_URL = os.environ.get(
    "MOTEX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("MOTEX_TEST_REQUIRE_POSTGRES") == "1"


REQUIREMENT_MARKERS = ("requires_shared", "requires_chromium")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "requires_shared: needs ../shared (skips where absent; fails under CI)")
    config.addinivalue_line("markers", "requires_chromium: needs headless Chromium (skips where absent; fails under CI)")


def pytest_runtest_setup(item) -> None:
    for marker in REQUIREMENT_MARKERS:
        if item.get_closest_marker(marker) is not None:
            need(marker)


def _postgres_unavailable_reason() -> str | None:
    try:
        engine = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as exc:  # any failure to connect means: no server here
        return f"no PostgreSQL server answers at {POSTGRES_ADMIN_URL}: {str(exc).splitlines()[0]}"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the PostgreSQL test server; skips (or fails in CI) where none answers."""
    reason = _postgres_unavailable_reason()
    if reason:
        if REQUIRE_POSTGRES:
            pytest.fail(reason + " (MOTEX_TEST_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    return POSTGRES_ADMIN_URL


def _create_postgres_database(admin_url: str) -> tuple[str, callable]:
    name = f"motex_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as connection:
            # the MLflow store of a PostgreSQL record lives in NAME_mlflow beside it
            for database in (name, f"{name}_mlflow"):
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()

    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return url, drop


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    url, drop = _create_postgres_database(postgres_server)
    yield url
    drop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty record database of each backend: a SQLite file, and a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'motex.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def motex_process(tmp_path):
    """Run the real ``motex-db`` console script in a subprocess: ``motex_process("init", db=url)``."""

    def run(*args: str, db: str | None = None, cwd: Path | None = None, env: dict | None = None) -> CliResult:
        command = [motex_executable()] + (["--db", db] if db else []) + [str(a) for a in args]
        completed = subprocess.run(
            command,
            cwd=cwd or tmp_path,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            timeout=600,
        )
        return CliResult(completed.returncode, completed.stdout, completed.stderr)

    return run


@pytest.fixture
def motex(tmp_path, capsys, monkeypatch):
    """Run the ``motex-db`` command in this process (the same ``main`` the console script calls).

    Much faster than a subprocess; the exit code is the one ``main`` would give.
    Tests of the console script itself use ``motex_process``.
    """
    from motex_db.cli.app import main

    def run(*args: str, db: str | None = None, cwd: Path | None = None, env: dict | None = None) -> CliResult:
        argv = ["motex-db"] + (["--db", db] if db else []) + [str(a) for a in args]
        with monkeypatch.context() as patch:
            patch.chdir(cwd or tmp_path)
            patch.setattr("sys.argv", argv)
            patch.setattr("sys.stdin", io.StringIO(""))
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            capsys.readouterr()
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
