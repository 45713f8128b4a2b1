"""MLflow tracking in a helper process, beside the work it tracks.

Importing MLflow and opening its store cost one core 1.5-2 s, a fifth of a
`train` or an `explain` of 10^4 motifs, and the work itself leaves a core idle
for most of that time (imports, reading the record, writing files). A
:class:`TrackerProcess` starts a helper process that imports MLflow at once and
waits; the command sends it :class:`~motex_db.tracking.Tracker` calls (open the
store, start a run, log a finished trial, log files...), which the helper runs
one after another, in order, while the command goes on.

- Nothing touches the store before :meth:`TrackerProcess.open` is sent (so bad
  input, found before it, changes nothing); a helper sent nothing is simply
  ended.
- Calls return at once. :meth:`TrackerProcess.start_run` and
  :meth:`TrackerProcess.log_child` return a :class:`Pending` that later calls
  take in place of the run id; :meth:`TrackerProcess.value` waits for one.
  The first call that failed in the helper is raised in the command by the
  next :meth:`TrackerProcess.check`, :meth:`TrackerProcess.value` or
  :meth:`TrackerProcess.close` (which waits for every call).
- Runs carry the command's identity, not the helper's, so that a run left
  RUNNING by a killed command is marked KILLED at the next start as before.
- The helper dies with the command (kill -9 included: :func:`motex_db.processes.die_with_parent`);
  what the store holds then is what whole calls made (each is one short
  critical section, see :mod:`motex_db.tracking`).
- Sentences the helper's tracker says on the ``motex_db`` logger (a store
  mended, say) are said again on the command's.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Optional

from motex_db.errors import DatabaseError, MotexError
from motex_db.tracking import TrackingLocation, tracking_location

_log = logging.getLogger("motex_db")

# How long :meth:`TrackerProcess.close` waits, after an error in the command, for the calls
# already sent (a run marked FAILED, say) before it ends the helper.
ABANDON_SECONDS = 15.0


@dataclass(frozen=True)
class Pending:
    """The result of a call sent to the helper, by its number; pass it where the result (a run id) goes."""

    token: int


class TrackerProcess:
    """A :class:`~motex_db.tracking.Tracker` in a helper process; see the module's docstring.

    Use it as a context manager (the helper is ended on the way out, waiting
    for every call when the block ended normally), or call :meth:`close`.
    """

    def __init__(self, record_url: str, override: Optional[str] = None, figures: bool = False):
        from motex_db.processes import process_identity

        self.location: TrackingLocation = tracking_location(record_url, override)
        self._identity = process_identity()
        self._lock = threading.Lock()
        self._next = 0
        self._replies: dict[int, tuple[bool, Any]] = {}
        self._failure: Optional[BaseException] = None
        self._sent = False
        self._closed = False
        commands, helper_commands = os.pipe()
        helper_replies, replies = os.pipe()
        code = (f"import sys; sys.path[:] = {list(sys.path)!r}; "
                f"from motex_db.tracker_process import serve; serve({commands}, {replies}, {os.getpid()}, {figures})")
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(commands, replies), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        finally:
            os.close(commands)
            os.close(replies)
        self._send = Connection(helper_commands, readable=False)
        self._receive = Connection(helper_replies, writable=False)

    # ------------------------------------------------------------------ the calls

    def open(self) -> None:
        """Open the store (made whole, the experiment found or made, runs of killed processes marked KILLED)."""
        self._call("open", self.location, self._identity)

    def start_run(self, name: str, tags: dict, params: Optional[dict] = None, parent_run_id=None,
                  start_seconds: Optional[float] = None) -> Pending:
        return self._call("start_run", name, tags, params, parent_run_id,
                          time.time() if start_seconds is None else start_seconds)

    def log_values(self, run_id, metrics: Optional[dict] = None, params: Optional[dict] = None,
                   tags: Optional[dict] = None, step: int = 0) -> None:
        self._call("log_values", run_id, metrics, params, tags, step)

    def log_series(self, run_id, curves: dict, max_points: int = 300) -> None:
        self._call("log_series", run_id, curves, max_points)

    def log_child(self, parent_run_id, name: str, tags: dict, params: dict, metrics: dict,
                  start_seconds: float, end_seconds: float) -> Pending:
        return self._call("log_child", parent_run_id, name, tags, params, metrics, start_seconds, end_seconds)

    def log_files(self, run_id, files: dict, folder: str) -> None:
        self._call("log_files", run_id, files, folder)

    def log_artifacts(self, run_id, paths: list, folder: str) -> None:
        self._call("log_artifacts", run_id, [str(p) for p in paths], folder)

    def finish_run(self, run_id) -> None:
        self._call("finish_run", run_id)

    def terminate(self, run_id, status: str) -> None:
        self._call("terminate", run_id, status)

    def has_run(self, run_id) -> bool:
        return bool(run_id) and self.value(self._call("has_run", run_id))

    def draw_shap_summary(self, values, features, names: list, title: str, path) -> Pending:
        """:func:`motex_db.reports.explanation.write_shap_summary` in the helper (``figures=True`` loads
        matplotlib and shap there beforehand); the file is there once :meth:`flush` returns."""
        return self._call("draw_shap_summary", values, features, list(names), title, str(path))

    def missing_run_note(self, run_id: str, what: str) -> str:
        return self.value(self._call("missing_run_note", run_id, what))

    # ------------------------------------------------------------------ waiting and ending

    def check(self) -> None:
        """Raise the first failure of a call so far, without waiting for the calls under way."""
        with self._lock:
            self._drain(block_for=None)
            self._raise_failure()

    def value(self, pending):
        """Wait for a call's result (a run id, say); a plain value is returned as it is."""
        if not isinstance(pending, Pending):
            return pending
        with self._lock:
            while pending.token not in self._replies:
                self._drain(block_for=pending.token)
            ok, value = self._replies[pending.token]
            self._raise_failure()
        return value

    def flush(self) -> None:
        """Wait until every call sent so far has run; raise the first failure."""
        if self._sent:
            self.value(self._call("sync"))

    def close(self, abandon: bool = False) -> None:
        """End the helper once every call sent has run (raising the first failure); with ``abandon``
        (after an error in the command) give those calls at most :data:`ABANDON_SECONDS` and raise nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._sent and not abandon:
                self.flush()
            elif self._sent:
                deadline = time.monotonic() + ABANDON_SECONDS
                with self._lock:
                    while len(self._replies) < self._next and time.monotonic() < deadline:
                        if not self._drain(block_for=None, wait=0.1):
                            break
        finally:
            self._end()

    def __enter__(self) -> "TrackerProcess":
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.close(abandon=kind is not None)

    # ------------------------------------------------------------------ the pipe

    def _call(self, method: str, *args) -> Pending:
        with self._lock:
            self._drain(block_for=None)
            self._raise_failure()
            token = self._next
            self._next += 1
            try:
                self._send.send((token, method, args))
            except OSError:
                self._failure = self._failure or self._helper_gone()
                self._raise_failure()
            self._sent = True
        return Pending(token)

    def _drain(self, block_for: Optional[int], wait: float = 0.0) -> bool:
        """Read the replies there are (waiting for ``block_for``'s, or ``wait`` seconds); False once the helper is gone."""
        try:
            while self._receive.poll(None if block_for is not None else wait):
                token, ok, value, said = self._receive.recv()
                for sentence in said:
                    _log.warning(sentence)
                self._replies[token] = (ok, value)
                if not ok and self._failure is None:
                    self._failure = value
                if block_for is not None and token == block_for:
                    return True
                wait = 0.0
        except (EOFError, OSError):
            self._failure = self._failure or self._helper_gone()
            for token in range(self._next):
                self._replies.setdefault(token, (False, self._failure))
            return False
        return True

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _helper_gone(self) -> DatabaseError:
        code = self._process.poll()
        return DatabaseError(f"the MLflow helper process ended unexpectedly (exit code {code}); "
                             f"what was logged before is kept, run the command again to log the rest.")

    def _end(self) -> None:
        """Close the pipe (the helper, idle or not, then ends) and reap it."""
        for connection in (self._send, self._receive):
            connection.close()
        self._process.kill()  # whatever it was doing is abandoned, or it was waiting for a call
        self._process.wait()


# ---------------------------------------------------------------------- the helper


def _warm(figures: bool) -> None:
    """Import what opening the store needs (most of its cost), and with ``figures`` what drawing needs,
    before anything is asked."""
    import sqlalchemy.orm
    from mlflow.store.tracking import sqlalchemy_store  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    sqlalchemy.orm.configure_mappers()
    if figures:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
        import shap  # noqa: F401


class _Said(logging.Handler):
    """Collects the sentences the tracker says on the ``motex_db`` logger, to be said again by the command."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.sentences: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.sentences.append(record.getMessage())


def serve(commands_fd: int, replies_fd: int, parent_pid: int, figures: bool = False) -> None:
    """The helper's loop: run each call on a :class:`~motex_db.tracking.Tracker`, reply with its result."""
    from motex_db.processes import die_with_parent

    die_with_parent(parent_pid)
    commands = Connection(commands_fd, writable=False)
    replies = Connection(replies_fd, readable=False)
    said = _Said()
    logging.getLogger("motex_db").addHandler(said)
    try:
        _warm(figures)
    except Exception:  # opening the store will say what is wrong
        pass
    tracker = None
    results: dict[int, Any] = {}

    def resolved(value):
        if isinstance(value, Pending):
            return results.get(value.token)
        if isinstance(value, (list, tuple)):
            return type(value)(resolved(v) for v in value)
        return value

    while True:
        try:
            token, method, args = commands.recv()
        except (EOFError, OSError):
            break
        ok, value = True, None
        try:
            args = resolved(args)
            if method == "open":
                from motex_db.tracking import Tracker

                tracker = Tracker(args[0], identity=args[1])
            elif method == "draw_shap_summary":
                from motex_db.reports.explanation import write_shap_summary

                write_shap_summary(*args)
            elif method != "sync":
                if tracker is None:
                    raise DatabaseError("the MLflow store was not opened.")
                value = getattr(tracker, method)(*args)
        except BaseException as exc:  # sent back, raised in the command
            what = "drawing the SHAP summary plot" if method == "draw_shap_summary" else "MLflow logging"
            ok, value = False, exc if isinstance(exc, MotexError) else DatabaseError(
                f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        results[token] = value
        try:
            replies.send((token, ok, value, said.sentences))
        except (BrokenPipeError, OSError):
            break
        said.sentences = []
    os._exit(0)
