"""The ``motex-db`` command: parses, calls motex_db, prints.

Exit codes: 0 on success, 2 on bad input, a refused operation, a misused
command line or a failing database or disk (one sentence on stderr), 130 when
interrupted, 1 on an internal error.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

import typer

from motex_db.errors import MotexError
from motex_db.cli import output
from motex_db.cli.output import console

app = typer.Typer(
    name="motex-db",
    help="ML-MotEx motif extraction from PDF data, as a database-centric experiment tracker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
structure_app = typer.Typer(help="Starting models: add, list, rename, remove.", no_args_is_help=True)
data_app = typer.Typer(help="Measured PDFs: add, list.", no_args_is_help=True)
app.add_typer(structure_app, name="structure")
app.add_typer(data_app, name="data")

DB_HELP = "Database URL (else $MOTEX_DB_URL, else sqlite:///motex.db)."
MLFLOW_HELP = "MLflow tracking URI (else $MOTEX_MLFLOW_URI, else an SQLite store beside the record)."


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import version

    from motex_db.db import head_revision

    console.print(f"motex-db {version('motex-db')} (schema revision {head_revision()})")
    raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP, show_default=False),
    version: bool = typer.Option(
        False, "--version", help="Print the version and the schema revision, then exit.",
        callback=_print_version, is_eager=True, expose_value=False,
    ),
) -> None:
    """ML-MotEx motif extraction from PDF data, as a database-centric experiment tracker."""
    ctx.obj = {"db": db}


def shell_hint(command: str) -> str:
    """``command`` as the user types it, behind the venv's activation when ``motex-db`` is not on PATH.

    The README's choice: commands run in the activated environment, which puts ``motex-db``
    (and ``mlflow``) on PATH; a hint printed from outside it says how to get there.
    """
    import shutil

    here = Path(sys.executable).parent
    found = shutil.which("motex-db")
    if found and Path(found).resolve().parent == here.resolve():
        return command
    activate = here / "activate"
    if not activate.exists():
        return command
    try:
        activate = activate.relative_to(Path.cwd())
    except ValueError:
        pass
    return f"source {activate} && {command}"


def engine_of(ctx: typer.Context, create: bool = True):
    from motex_db.db import open_engine

    return open_engine(ctx.obj["db"], create=create)


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the record, or upgrade it to this version's schema."""
    from motex_db import db

    engine = db.create_db_engine(ctx.obj["db"])
    before = db.current_revision(engine)
    after = db.upgrade(engine)
    url = db.safe_url(str(engine.url))
    if before == after:
        console.print(f"{url} is up to date (schema revision {after}).")
    elif before is None:
        console.print(f"created {url} (schema revision {after}).")
    else:
        console.print(f"upgraded {url} from schema revision {before} to {after}.")


@app.command()
def status(
    ctx: typer.Context,
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="MLflow tracking URI, if not the default beside the record."),
) -> None:
    """Per structure and dataset: motifs, fits done and failed, best Rwp, trained models."""
    from motex_db.db import current_revision, safe_url
    from motex_db.record import Record

    record = Record(engine=engine_of(ctx))
    console.print(f"record: {safe_url(str(record.engine.url))} (schema revision {current_revision(record.engine)})")
    frame = record.status()
    if frame.empty:
        console.print("no structure and dataset pair yet: add them with structure add and data add.")
        return
    output.print_frame(frame, title="status")
    if frame["trained_models"].sum() > 0:
        from motex_db.cli.ui import ui_hint
        from motex_db.tracking import tracking_location

        location = tracking_location(record.engine.url.render_as_string(hide_password=False), mlflow_uri)
        console.print(
            f"MLflow tracking: {safe_url(location.tracking_uri)}; compare the training runs in MLflow's UI with:\n"
            f"  {ui_hint(ctx.obj['db'], mlflow_uri)}"
        )


@structure_app.command("add")
def structure_add(
    ctx: typer.Context,
    file: Optional[Path] = typer.Argument(None, help="Structure file: xyz, extxyz, cif or any format ase.io.read knows."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the starting model (default: the file name)."),
    permute: List[str] = typer.Option(..., "--permute", help="Permutable element (repeat for several)."),
    bond_cutoff: float = typer.Option(2.6, "--bond-cutoff", help="Bond cutoff in Å: other atoms are kept with a kept permutable atom this close."),
    radius: Optional[float] = typer.Option(None, "--radius", help="For a crystal: cut a sphere of this radius (Å) from a supercell around the cell centre."),
    from_candidate: Optional[int] = typer.Option(None, "--from-candidate", help="Instead of a file: a mined candidate's id (see mine); needs --name and --radius."),
) -> None:
    """Add a starting model. The same file with the same choices again gives the existing one."""
    from motex_db.structures import add_starting_model, add_starting_model_from_candidate, summarize

    if (file is None) == (from_candidate is None):
        raise MotexError("give either a structure FILE or --from-candidate ID.")
    if from_candidate is not None:
        if not name:
            raise MotexError("--from-candidate needs a --name for the new starting model.")
        model, created = add_starting_model_from_candidate(engine_of(ctx), from_candidate, name, permute, bond_cutoff, radius)
        source = f"candidate {from_candidate}"
    else:
        model, created = add_starting_model(engine_of(ctx), file, name, permute, bond_cutoff, radius)
        source = str(file)
    if not created:
        console.print(f"{source} with these choices is already stored as '{model.name}' (id {model.id}); nothing added.")
    output.print_structure_summary(summarize(model), created)


@structure_app.command("list")
def structure_list(ctx: typer.Context) -> None:
    """List the starting models."""
    from motex_db.record import Record

    output.print_frame(Record(engine=engine_of(ctx)).structures(), title="starting models", empty="no structures yet.")


@structure_app.command("rename")
def structure_rename(ctx: typer.Context, old: str, new: str) -> None:
    """Rename a starting model."""
    from motex_db.structures import rename_starting_model

    model = rename_starting_model(engine_of(ctx), old, new)
    console.print(f"structure {model.id} is now called '{model.name}'.")


@structure_app.command("remove")
def structure_remove(
    ctx: typer.Context,
    name: str,
    yes: bool = typer.Option(False, "--yes", help="Remove without asking."),
) -> None:
    """Remove a starting model with its motifs, fits, trained models and contributions."""
    from motex_db.structures import dependent_counts, remove_starting_model

    engine = engine_of(ctx)
    counts = dependent_counts(engine, name)
    described = ", ".join(f"{n} {what}" for what, n in counts.items())
    console.print(f"structure '{name}' has {described}.")
    if not yes:
        if not sys.stdin.isatty():
            raise MotexError(f"not removing '{name}' without --yes.")
        typer.confirm(f"Remove '{name}' and all of that?", abort=True)
    remove_starting_model(engine, name)
    console.print(f"removed '{name}' and {described}.")


@data_app.command("add")
def data_add(
    ctx: typer.Context,
    files: List[Path] = typer.Argument(..., help="PDF files: .gr (PDFgetX3/xPDFsuite), two-column text, or CSV with r and G columns."),
    name: Optional[str] = typer.Option(None, "--name", help="Dataset name (one file only; default: the file name)."),
    series: Optional[str] = typer.Option(None, "--series", help="Add the files as frames of this time-resolved series."),
    time: Optional[float] = typer.Option(None, "--time", help="Frame time in seconds (one file)."),
    times: Optional[Path] = typer.Option(None, "--times", help="CSV with columns file,time giving each frame's time in seconds."),
) -> None:
    """Add measured PDFs, all or none. The same content again gives the existing dataset."""
    from motex_db.datasets import add_datasets

    for row, created in add_datasets(engine_of(ctx), files, name, series, time, times):
        output.print_dataset_added(row, created)


@data_app.command("list")
def data_list(ctx: typer.Context) -> None:
    """List the datasets."""
    from motex_db.record import Record

    output.print_frame(Record(engine=engine_of(ctx)).datasets(), title="datasets", empty="no datasets yet.")


@app.command()
def sql(
    ctx: typer.Context,
    query: str = typer.Argument(..., help="One SQL statement that reads (writes are refused)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
) -> None:
    """Run a read-only SQL query on the record and print the result."""
    from motex_db.record import read_only_query

    columns, rows = read_only_query(engine_of(ctx), query)
    if as_csv:
        output.write_csv(columns, rows)
    else:
        output.print_rows(columns, rows)


def _click_classes(name: str) -> tuple:
    """Click's exception class ``name`` from every click this process may raise it from.

    Typer 0.29 ships its own copy of click (``typer._click``) whose exceptions do not
    subclass the real click's; older Typer raises the real click's. Catch both.
    """
    classes = []
    for module_name in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            module = __import__(module_name, fromlist=[name])
        except ImportError:
            continue
        cls = getattr(module, name, None)
        if isinstance(cls, type) and cls not in classes:
            classes.append(cls)
    return tuple(classes)


_CLICK_EXCEPTION = _click_classes("ClickException")
_ABORT = _click_classes("Abort")
_INTERRUPTED = "interrupted; what was committed is kept, run the command again to go on."
_interrupt_reported = threading.Lock()
_interrupt_requested = threading.Event()
# After Ctrl-C, how long the command may take to unwind before it is ended anyway (s).
_INTERRUPT_GRACE_SECONDS = 3.0


def _report_interrupted() -> None:
    """The one line of Ctrl-C, printed once whoever gets there first (main or the watchdog)."""
    if _interrupt_reported.acquire(blocking=False):
        output.error(_INTERRUPTED)


def _exit_interrupted() -> None:
    _report_interrupted()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)


def _on_interrupt(signum, frame) -> None:
    """Ctrl-C: unwind as KeyboardInterrupt, and end the process anyway if that does not end it in time.

    Python swallows a KeyboardInterrupt that lands in a finaliser or weakref callback (it prints
    "Exception ignored in ..." and carries on); every command survives kill -9, so ending it is safe.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _interrupt_requested.set()
    watchdog = threading.Timer(_INTERRUPT_GRACE_SECONDS, _exit_interrupted)
    watchdog.daemon = True
    watchdog.start()
    raise KeyboardInterrupt


def _on_unraisable(unraisable) -> None:
    """A Ctrl-C that Python could not raise (it landed in a finaliser): end now, in one line."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        _exit_interrupted()
    sys.__unraisablehook__(unraisable)


def main() -> None:
    """Entry point of the ``motex-db`` console script."""
    global _interrupt_reported
    _interrupt_reported = threading.Lock()
    _interrupt_requested.clear()
    previous_handler = signal.getsignal(signal.SIGINT)
    previous_unraisable = sys.unraisablehook
    if previous_handler is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_interrupt)
        sys.unraisablehook = _on_unraisable
    try:
        _run()
    finally:
        # After Ctrl-C the hooks stay until the process ends (its finalisers may still take the signal).
        if previous_handler is signal.default_int_handler and not _interrupt_requested.is_set():
            signal.signal(signal.SIGINT, previous_handler)
            sys.unraisablehook = previous_unraisable


def _run() -> None:
    try:
        code = app(standalone_mode=False)
    except MotexError as exc:
        output.error(str(exc))
        sys.exit(2)
    except _ABORT as exc:
        # Click turns Ctrl-C (and EOF at a prompt) into Abort; a refused confirmation also aborts.
        if isinstance(exc.__context__, KeyboardInterrupt):
            _report_interrupted()
            sys.exit(130)
        output.error("aborted; nothing changed.")
        sys.exit(2)
    except _CLICK_EXCEPTION as exc:
        # Click's usage line and one sentence; every misuse of the command line is exit code 2.
        exc.show()
        sys.exit(2)
    except KeyboardInterrupt:
        _report_interrupted()
        sys.exit(130)
    except Exception as exc:
        # After Ctrl-C, a failure on the way out (worker processes that took the signal too,
        # say) is the interruption's doing: one line, not its traceback.
        if _interrupt_requested.is_set():
            _report_interrupted()
            sys.exit(130)
        # the database or the disk failing under a command (a lost connection, a full disk): one sentence
        from motex_db.db import failure_message

        message = failure_message(exc)
        if message is None:
            raise
        output.error(message)
        sys.exit(2)
    # Without standalone mode, Typer 0.29 returns the code of an Exit it caught: 0 after
    # --help or --version, 130 after Ctrl-C (which it turns into Exit(130) silently).
    if code == 130:
        _report_interrupted()
    sys.exit(code if isinstance(code, int) else 0)


# The step commands register themselves on `app`.
from motex_db.cli import environments, mining, polish, report, series, steps, ui  # noqa: E402,F401
