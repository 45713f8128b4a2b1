"""Plain helpers shared by the tests (fixtures are in conftest.py)."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

SHARED = Path(__file__).resolve().parents[2] / "shared"
KEGGIN = SHARED / "data" / "keggin"
REFERENCE = SHARED / "reference"

requires_shared = pytest.mark.skipif(
    not KEGGIN.is_dir(), reason=f"shared data not found at {SHARED} (checked out without ../shared)"
)


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
