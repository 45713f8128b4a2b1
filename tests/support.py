"""Plain helpers shared by the tests (fixtures are in conftest.py)."""

from __future__ import annotations

import io
import os
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

SHARED = Path(__file__).resolve().parents[2] / "shared"
KEGGIN = SHARED / "data" / "keggin"
REFERENCE = SHARED / "reference"

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)

# Tests that need ../shared or headless Chromium carry these markers. Where the
# thing is missing they skip, with the reason; under CI (CI=true, as .ci/run
# and CI services set it) or with MOTEX_TEST_REQUIRE_SHARED=1 /
# MOTEX_TEST_REQUIRE_CHROMIUM=1 they fail instead (conftest.py), as the
# PostgreSQL tests do with MOTEX_TEST_REQUIRE_POSTGRES=1.
requires_shared = pytest.mark.requires_shared
requires_chromium = pytest.mark.requires_chromium


def _required(name: str) -> bool:
    return os.environ.get(f"MOTEX_TEST_REQUIRE_{name}") == "1" or os.environ.get("CI", "").lower() == "true"


def missing_requirement(marker: str) -> tuple[str, bool] | None:
    """(why the marker's requirement is missing, whether it must be there), or None when it is there."""
    if marker == "requires_shared":
        if KEGGIN.is_dir() and (REFERENCE / "index.json").is_file():
            return None
        return f"shared data not found at {SHARED} (checked out without ../shared)", _required("SHARED")
    if marker == "requires_chromium":
        if CHROMIUM is not None:
            return None
        reason = "headless Chromium is not installed (Debian package 'chromium'; `make test` installs it with apt)"
        return reason, _required("CHROMIUM")
    raise ValueError(f"unknown requirement marker {marker}")


def need(marker: str) -> None:
    """Inside a test: skip (or, where required, fail) when the marker's requirement is missing."""
    missing = missing_requirement(marker)
    if missing is None:
        return
    reason, required = missing
    if required:
        pytest.fail(f"{reason}; CI requires it (CI=true or MOTEX_TEST_REQUIRE_*=1)", pytrace=False)
    pytest.skip(reason)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def motex_executable() -> str:
    candidate = Path(sys.executable).with_name("motex-db")
    return str(candidate) if candidate.exists() else shutil.which("motex-db")



def snapshot(url: str) -> dict:
    """The whole content of a database: every table's rows, ordered, as plain values."""
    engine = sa.create_engine(url)
    content = {}
    try:
        inspector = sa.inspect(engine)
        with engine.connect() as connection:
            for table in sorted(inspector.get_table_names()):
                rows = connection.exec_driver_sql(f'SELECT * FROM "{table}"').fetchall()
                content[table] = sorted((tuple(map(_plain, row)) for row in rows), key=repr)
    finally:
        engine.dispose()
    return content


def _plain(value):
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def oxide_particle(n_metal: int, a: float = 3.75) -> tuple:
    """ReO3-type WO3 piece: the n_metal W nearest a point, every O bonded to them (file order W then O),
    and the catalogue's membership matrix (2.6 Å bonds)."""
    import numpy as np

    from motex_db.catalogue import membership_matrix

    g = np.arange(-3, 4)
    cells = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    centre = np.array([0.3, 0.2, 0.1]) * a
    metal = cells * a
    metal = metal[np.argsort(np.linalg.norm(metal - centre, axis=1), kind="stable")[:n_metal]]
    oxygen = np.concatenate([(cells + shift) * a for shift in np.eye(3) * 0.5])
    bonded = oxygen[(np.linalg.norm(oxygen[:, None] - metal[None], axis=-1) < 2.6).any(axis=1)]
    positions = np.concatenate([metal, bonded])
    elements = ["W"] * n_metal + ["O"] * len(bonded)
    membership = membership_matrix(positions, np.array([e == "W" for e in elements]), 2.6)
    return elements, positions, membership


def run_cli(*args, db: str) -> CliResult:
    """The motex-db command in this process (module fixtures cannot use the `motex` fixture)."""
    from motex_db.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["motex-db", "--db", db, *map(str, args)])
        patch.setattr("sys.stdin", io.StringIO(""))
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def query(url: str, sql: str) -> list[tuple]:
    """Rows of one SQL statement against a record, as plain tuples."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(sql).fetchall()
    engine.dispose()
    return [tuple(r) for r in rows]
