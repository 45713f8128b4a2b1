"""Opening the record: database URLs, engines, sessions and the shipped migrations.

The migrations live in ``motex_db.migrations`` (the repository's ``migrations/``)
and are run by the library itself, so an installed motex-db can create and
upgrade a database without an ``alembic.ini`` (as Optuna's RDB storage does).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from importlib import resources
from typing import Iterator, Optional

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session

from motex_db.errors import DatabaseError, InputError

DEFAULT_URL = "sqlite:///motex.db"
URL_ENVIRONMENT_VARIABLE = "MOTEX_DB_URL"
SQLITE_BUSY_TIMEOUT_MS = 60_000


def resolve_url(url: Optional[str] = None) -> str:
    """The database URL: the one given, else ``$MOTEX_DB_URL``, else ``sqlite:///motex.db``.

    ``postgresql://`` URLs are routed to the psycopg (3) driver.
    """
    url = url or os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise DatabaseError(f"'{url}' is not a database URL (try sqlite:///motex.db).") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif not (parsed.drivername.startswith("sqlite") or parsed.drivername.startswith("postgresql")):
        raise DatabaseError(
            f"unsupported database '{parsed.drivername}' in {safe_url(url)}: "
            "use sqlite:///FILE or postgresql://USER@HOST/DB."
        )
    return parsed.render_as_string(hide_password=False)


def safe_url(url: str) -> str:
    """The URL with its password masked, for printing."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparsable URL>"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets readers go on while a writer commits; the busy timeout makes
    # concurrent writers wait instead of failing; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_db_engine(url: Optional[str] = None) -> Engine:
    """An SQLAlchemy engine for the record, checked to be reachable."""
    resolved = resolve_url(url)
    parsed = make_url(resolved)
    if parsed.drivername.startswith("sqlite"):
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = os.path.dirname(os.path.abspath(database))
            if not os.path.isdir(folder):
                raise DatabaseError(
                    f"cannot open {safe_url(resolved)}: the folder {folder} does not exist."
                )
        engine = sa.create_engine(resolved, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(
            resolved, pool_pre_ping=True, connect_args={"connect_timeout": 10}
        )
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(f"cannot connect to {safe_url(resolved)}: {reason}") from None
    return engine


def _alembic_config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("motex_db.migrations"))
    )
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema revision this version of motex-db knows."""
    script = ScriptDirectory(str(resources.files("motex_db.migrations")))
    return script.get_current_head()


def current_revision(engine: Engine) -> Optional[str]:
    """The schema revision stored in the database (None for an empty database)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Create or upgrade the schema; returns the revision now stored."""
    _refuse_unknown_revision(engine)
    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), revision)
    return current_revision(engine)


def downgrade(engine: Engine, revision: str = "base") -> Optional[str]:
    """Undo migrations down to ``revision`` (``base`` drops every table)."""
    with engine.begin() as connection:
        command.downgrade(_alembic_config(connection), revision)
    return current_revision(engine)


def _refuse_unknown_revision(engine: Engine) -> None:
    stored = current_revision(engine)
    if stored is None:
        return
    script = ScriptDirectory(str(resources.files("motex_db.migrations")))
    try:
        script.get_revision(stored)
    except Exception:
        raise DatabaseError(
            f"{safe_url(str(engine.url))} has schema revision {stored}, newer than this "
            f"motex-db knows ({head_revision()}): upgrade motex-db."
        ) from None


def open_engine(url: Optional[str] = None, create: bool = True) -> Engine:
    """An engine on an up-to-date record.

    An empty database gets the schema when ``create`` is true; a database of an
    older schema is upgraded only by ``motex-db init`` (an explicit step, because
    other workers may share it); a newer one is refused.
    """
    engine = create_db_engine(url)
    _refuse_unknown_revision(engine)
    stored = current_revision(engine)
    head = head_revision()
    if stored is None and create:
        upgrade(engine)
    elif stored is None:
        raise DatabaseError(f"{safe_url(str(engine.url))} holds no motex-db record: run motex-db init.")
    elif stored != head:
        raise DatabaseError(
            f"{safe_url(str(engine.url))} has schema revision {stored}; this motex-db "
            f"needs {head}: run motex-db init to upgrade it."
        )
    return engine


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work is committed at the end, or rolled back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        if is_sqlite(engine):
            # Take SQLite's write lock up front. A deferred transaction that reads and
            # then writes fails at once (SQLITE_BUSY_SNAPSHOT) when another process
            # committed in between; an immediate one waits its turn (busy timeout).
            session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def get_named(session: Session, table, name: str, what: str, how_to_add: str):
    """The row of ``table`` called ``name``, or an error naming the known ones and how to add one."""
    from sqlmodel import select

    row = session.exec(select(table).where(table.name == name)).first()
    if row is None:
        known = session.exec(select(table.name).order_by(table.name)).all()
        hint = f" (known: {', '.join(known)})" if known else f" (none added yet: use {how_to_add})"
        raise InputError(f"no {what} named '{name}'{hint}.")
    return row
