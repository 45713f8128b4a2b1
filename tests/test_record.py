"""The record: init, migrations, URLs, read-only SQL and the Python API, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

import motex_db
from motex_db import db
from motex_db.errors import DatabaseError
from support import snapshot

PUBLIC_TABLES = {
    "starting_model",
    "dataset",
    "motif",
    "fit_config",
    "fit_result",
    "trained_model",
    "atom_contribution",
}
REPO = Path(__file__).resolve().parents[1]


def test_init_creates_then_reports_up_to_date(motex, db_url):
    first = motex("init", db=db_url)
    assert first.exit_code == 0, first.output
    assert "created" in first.stdout and f"revision {db.head_revision()}" in first.stdout
    second = motex("init", db=db_url)
    assert second.exit_code == 0
    assert "up to date" in second.stdout
    tables = set(sa.inspect(sa.create_engine(db_url)).get_table_names())
    assert PUBLIC_TABLES <= tables


def test_default_url_is_motex_db_in_the_current_directory(motex_process, tmp_path):
    result = motex_process("init", env={"MOTEX_DB_URL": ""})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "motex.db").is_file()
    assert "sqlite:///motex.db" in result.stdout


def test_environment_variable_names_the_database(motex, tmp_path):
    url = f"sqlite:///{tmp_path / 'from_env.db'}"
    assert motex("init", env={"MOTEX_DB_URL": url}).exit_code == 0
    assert (tmp_path / "from_env.db").is_file()


def test_password_is_never_printed(motex_process, postgres_url):
    motex = motex_process
    with_password = sa.engine.make_url(postgres_url).set(password="s3cret-pw")
    url = with_password.render_as_string(hide_password=False)
    result = motex("init", db=url)
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output and "***" in result.stdout
    unreachable = with_password.set(port=1).render_as_string(hide_password=False)
    failed = motex("status", db=unreachable)
    assert failed.exit_code == 2
    assert "s3cret-pw" not in failed.output


@pytest.mark.parametrize(
    "url, words",
    [
        ("postgresql://postgres@127.0.0.1:1/nowhere", "cannot connect"),
        ("sqlite:////no/such/folder/motex.db", "does not exist"),
        ("mysql://x@y/z", "unsupported database"),
        ("not a url", "not a database URL"),
    ],
)
def test_bad_database_url_is_one_sentence_and_exit_2(motex_process, url, words):
    result = motex_process("status", db=url)
    assert result.exit_code == 2
    assert words in result.stderr
    assert result.stderr.count("\n") == 1


def test_migration_round_trip(db_url):
    engine = db.create_db_engine(db_url)
    assert db.upgrade(engine) == db.head_revision()
    assert db.downgrade(engine, "base") is None
    inspector = sa.inspect(engine)
    assert not (PUBLIC_TABLES & set(inspector.get_table_names()))
    assert db.upgrade(engine) == db.head_revision()
    assert PUBLIC_TABLES <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_database_of_a_newer_schema_is_refused_unchanged(motex, db_url):
    assert motex("init", db=db_url).exit_code == 0
    engine = sa.create_engine(db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    before = snapshot(db_url)
    for command in (["init"], ["status"], ["structure", "list"]):
        result = motex(*command, db=db_url)
        assert result.exit_code == 2
        assert "newer than this motex-db" in result.stderr
    assert snapshot(db_url) == before


def test_older_schema_needs_init(db_url):
    engine = db.create_db_engine(db_url)
    db.upgrade(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM alembic_version")
    # an emptied version table reads as an empty database: open_engine may not create over tables
    with pytest.raises(Exception):
        db.open_engine(db_url)
    engine.dispose()


def test_sql_reads_and_refuses_writes(motex, db_url, tmp_path):
    assert motex("init", db=db_url).exit_code == 0
    xyz = tmp_path / "w2.xyz"
    xyz.write_text("3\n\nW 0 0 0\nW 3 0 0\nO 1.5 0.5 0\n")
    assert motex("structure", "add", xyz, "--name", "pair", "--permute", "W", db=db_url).exit_code == 0
    table = motex("sql", "SELECT name, n_permutable FROM starting_model", db=db_url)
    assert table.exit_code == 0
    assert "pair" in table.stdout and "1 row" in table.stdout
    as_csv = motex("sql", "SELECT name, n_permutable FROM starting_model", "--csv", db=db_url)
    assert as_csv.stdout.splitlines() == ["name,n_permutable", "pair,2"]
    before = snapshot(db_url)
    for statement in (
        "DELETE FROM starting_model",
        "UPDATE starting_model SET name = 'x'",
        "DROP TABLE motif",
        "INSERT INTO fit_config (content_hash) VALUES ('x')",
    ):
        refused = motex("sql", statement, db=db_url)
        assert refused.exit_code == 2, (statement, refused.output)
        assert refused.stderr.startswith("error:")
    assert snapshot(db_url) == before
    assert motex("sql", "SELEC nonsense", db=db_url).exit_code == 2


def test_views_answer_the_common_questions(db_url):
    engine = db.open_engine(db_url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT * FROM motif_fit").fetchall() == []
        assert connection.exec_driver_sql("SELECT * FROM contribution").fetchall() == []
    engine.dispose()


def test_python_api_gives_dataframes(tmp_path):
    url = f"sqlite:///{tmp_path / 'api.db'}"
    record = motex_db.open_record(url)
    xyz = tmp_path / "w2.xyz"
    xyz.write_text("3\n\nW 0 0 0\nW 3 0 0\nO 1.5 0.5 0\n")
    from motex_db.structures import add_starting_model

    add_starting_model(record.engine, xyz, "pair", ["W"])
    structures = record.structures()
    assert list(structures["name"]) == ["pair"]
    assert record.motifs("pair").empty
    assert record.sql("SELECT COUNT(*) AS n FROM starting_model")["n"][0] == 1
    assert record.status().empty  # one row per structure and dataset, and no dataset yet
    from motex_db.datasets import add_datasets

    gr = tmp_path / "frame.gr"
    gr.write_text("".join(f"{1 + 0.1 * i:.2f} {np.sin(1 + 0.1 * i):.6f}\n" for i in range(40)))
    add_datasets(record.engine, [gr])
    status = record.status()
    assert status[["structure", "dataset", "motifs", "fits_ok", "fits_failed", "trained_models"]].values.tolist() == [
        ["pair", "frame", 0, 0, 0, 0]
    ]


def test_a_regular_install_carries_and_runs_its_migrations(tmp_path):
    """A non-editable install (a wheel's files) can create a database: the migrations ship with it."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True,
        capture_output=True,
    )
    assert (target / "motex_db" / "migrations" / "versions").is_dir()
    assert not (target / "cli").exists() and not (target / "migrations").exists()
    url = f"sqlite:///{tmp_path / 'installed.db'}"
    code = (
        "import motex_db.db as d, motex_db.cli.app;"
        f"e = d.open_engine({url!r}); print(d.current_revision(e), motex_db.db.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    ).stdout
    revision, module_file = out.split()
    assert revision == db.head_revision()
    assert module_file.startswith(str(target))


def test_unknown_url_scheme_raises_database_error():
    with pytest.raises(DatabaseError):
        db.resolve_url("oracle://x@y/z")


def test_two_commands_on_a_new_database_at_once_both_find_one_schema(db_url):
    """The first creates the schema; the second waits for it instead of racing it into an IntegrityError."""
    import subprocess

    from support import motex_executable

    commands = [subprocess.Popen([motex_executable(), "--db", db_url, "status"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(c.wait(timeout=300), c.stderr.read()) for c in commands]
    assert [code for code, _ in results] == [0, 0, 0], results
