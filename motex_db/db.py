"""Opening the record: database URLs, engines, sessions and the shipped migrations.

The migrations live in ``motex_db.migrations`` (the repository's ``migrations/``)
and are run by the library itself, so an installed motex-db can create and
upgrade a database without an ``alembic.ini`` (as Optuna's RDB storage does).
"""

from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager
from importlib import resources
from typing import Callable, Iterator, Optional, TypeVar

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
# how long a lost PostgreSQL connection is tried again before giving up (overridable for tests and flaky networks)
RECONNECT_SECONDS_ENVIRONMENT_VARIABLE = "MOTEX_DB_RECONNECT_SECONDS"
DEFAULT_RECONNECT_SECONDS = 60.0


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
        # two commands started together on a new database: one creates the schema, the other waits for it
        with work_lock(engine, "schema"):
            if current_revision(engine) is None:
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
    """A session whose work is committed at the end, or rolled back on any error.

    A full disk becomes a :class:`DatabaseError` with one sentence (nothing of
    the transaction is kept, as for any error).
    """
    with Session(engine, expire_on_commit=False) as session:
        try:
            if is_sqlite(engine):
                # Take SQLite's write lock up front. A deferred transaction that reads and
                # then writes fails at once (SQLITE_BUSY_SNAPSHOT) when another process
                # committed in between; an immediate one waits its turn (busy timeout).
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield session
            session.commit()
        except BaseException as exc:
            try:
                session.rollback()
            except sa.exc.DBAPIError:
                pass  # the connection is gone; the server drops the transaction with it
            message = failure_message(exc, engine)
            if message is not None and not connection_lost(exc):
                raise DatabaseError(message) from None
            raise


def _sqlstate(exc: BaseException) -> Optional[str]:
    return getattr(getattr(exc, "orig", None), "sqlstate", None)


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a PostgreSQL connection that broke or could not be made (trying again may help)."""
    if not isinstance(exc, sa.exc.DBAPIError) or exc.orig is None:
        return False
    if type(exc.orig).__module__.startswith("sqlite3"):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    state = _sqlstate(exc)
    # no SQLSTATE: the client lost the socket (server gone, connection refused or reset);
    # 08: connection exception; 57P01-57P03: the server was shut down or is starting
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def failure_message(exc: BaseException, engine: Optional[Engine] = None) -> Optional[str]:
    """One sentence for a failure of the database or the disk under it, or None for any other error."""
    where = f" {safe_url(str(engine.url))}" if engine is not None else ""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        text = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        if "database or disk is full" in text or _sqlstate(exc) == "53100":
            return (
                f"the disk under the database{where} is full ({text}): nothing of the interrupted step was kept; "
                "free some space and run the command again to go on."
            )
        if connection_lost(exc):
            return f"lost the connection to the database{where} ({text})."
        return None
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        target = f" writing {exc.filename}" if exc.filename else ""
        return f"no space left on the disk{target}: free some space and run the command again to go on."
    return None


T = TypeVar("T")


def reconnect_seconds() -> float:
    """How long a lost PostgreSQL connection is tried again: ``$MOTEX_DB_RECONNECT_SECONDS``, else 60 s."""
    text = os.environ.get(RECONNECT_SECONDS_ENVIRONMENT_VARIABLE)
    try:
        return float(text) if text else DEFAULT_RECONNECT_SECONDS
    except ValueError:
        raise InputError(f"${RECONNECT_SECONDS_ENVIRONMENT_VARIABLE} must be a number of seconds, not '{text}'.") from None


def reconnecting(engine: Engine, work: Callable[..., T], *args, **kwargs) -> T:
    """``work(*args, **kwargs)``, run again with backoff (0.25 s doubling to 8 s) while the PostgreSQL connection is lost.

    Only for work that may be repeated as a whole: one transaction, or reads.
    When the connection stays lost for :func:`reconnect_seconds`, raises
    :class:`DatabaseError` with one sentence.
    """
    delay, deadline = 0.25, None
    while True:
        try:
            return work(*args, **kwargs)
        except sa.exc.DBAPIError as exc:
            if not connection_lost(exc):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + reconnect_seconds()
            if now >= deadline:
                raise DatabaseError(
                    f"{failure_message(exc, engine)[:-1]}, and it did not come back in {reconnect_seconds():g} s: "
                    "what was committed is kept, claims left behind expire with their lease, "
                    "and running the command again goes on."
                ) from None
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 8.0)


def analyze(engine: Engine, *tables: str) -> None:
    """Refresh PostgreSQL's planner statistics of ``tables`` (after bulk inserts); nothing on SQLite."""
    if is_sqlite(engine):
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(f"ANALYZE {', '.join(tables)}")


def get_named(session: Session, table, name: str, what: str, how_to_add: str):
    """The row of ``table`` called ``name``, or an error naming the known ones and how to add one."""
    from sqlmodel import select

    row = session.exec(select(table).where(table.name == name)).first()
    if row is None:
        known = session.exec(select(table.name).order_by(table.name)).all()
        hint = f" (known: {', '.join(known)})" if known else f" (none added yet: use {how_to_add})"
        raise InputError(f"no {what} named '{name}'{hint}.")
    return row


# ---------------------------------------------------------------- locks between processes

_LOCK_FILES: dict[str, int] = {}


def _lock_key(name: str) -> int:
    """A signed 64-bit number for ``name`` (PostgreSQL's advisory locks are keyed by a bigint)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def work_lock(engine: Engine, name: str) -> Iterator[None]:
    """Hold the lock ``name`` across processes around a long computation; wait while another process holds it.

    Two identical commands started together take turns, and the second then
    finds the first one's result stored and reuses it. PostgreSQL: a session
    advisory lock on a connection of its own; SQLite: a one-byte lock
    (``fcntl.lockf``) at an offset given by the name in the file
    ``<database>.locks`` beside it, kept open for the life of the process
    (closing any descriptor of a file drops all of a process's POSIX locks
    on it). Both end with the process, kill -9 included, so a crashed holder
    never blocks anyone; locks of different names never wait for each other.
    """
    key = _lock_key(name)
    if not is_sqlite(engine):
        with engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
            connection.commit()
            try:
                yield
            finally:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                connection.commit()
        return
    database = engine.url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        yield  # a database only this process sees
        return
    import fcntl

    path = os.path.abspath(database) + ".locks"
    descriptor = _LOCK_FILES.get(path)
    if descriptor is None:
        descriptor = _LOCK_FILES[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    offset = key % (1 << 40)
    fcntl.lockf(descriptor, fcntl.LOCK_EX, 1, offset)
    try:
        yield
    finally:
        fcntl.lockf(descriptor, fcntl.LOCK_UN, 1, offset)


def lock_in_transaction(session: Session, name: str) -> None:
    """Serialise the rest of this :func:`transaction` with every other one that takes the lock ``name``.

    PostgreSQL: ``pg_advisory_xact_lock`` (released at commit or rollback);
    SQLite: nothing to do, :func:`transaction` already holds the database's
    write lock from its first statement.
    """
    if session.get_bind().dialect.name != "sqlite":
        session.connection().exec_driver_sql(f"SELECT pg_advisory_xact_lock({_lock_key(name)})")
