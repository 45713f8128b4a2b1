"""Which process did this, is it still alive, and child processes that die with their parent.

Claims (``fit_claim.worker``) and MLflow runs carry the identity of the process
that made them, so that another process can tell whether it is gone:

    host : pid : start : boot : pidns : token

- ``host``: the host name;
- ``pid`` and ``start``: the process id and its start time (clock ticks after
  boot, ``/proc/PID/stat`` field 22), so that a pid reused by a later process
  is not taken for the dead one;
- ``boot``: the kernel's boot id (``/proc/sys/kernel/random/boot_id``), so that
  machines (or containers on different machines) that share a host name never
  judge each other's processes, and a reboot ends every process before it;
- ``pidns``: the pid namespace (``/proc/self/ns/pid``), so that containers on one
  kernel with one host name (each with its own pid 1, 2, ...) do not either.

A process is judged gone only when all of host, boot and pid namespace are this
process's own and the pid names no process started at ``start``; anything else
(another machine, an older motex-db's ``host:pid:token``) is left to its lease.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import threading
import time
import uuid
from functools import lru_cache
from typing import Callable, Iterator, Optional

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


@lru_cache(maxsize=1)
def boot_id() -> str:
    """The kernel's boot id without dashes ('' where the system has none)."""
    return (_read("/proc/sys/kernel/random/boot_id") or "").replace("-", "")


@lru_cache(maxsize=1)
def pid_namespace() -> str:
    """This process's pid namespace inode ('' where the system has none)."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    return link.partition("[")[2].rstrip("]")


def start_ticks(pid: int) -> Optional[str]:
    """When process ``pid`` started (clock ticks after boot), or None when there is no such process (or no /proc)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # the command name (field 2) is in parentheses and may hold spaces; the fields after it are plain
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None  # a zombie has finished: it only waits to be reaped
    return fields[19]


def process_identity(pid: Optional[int] = None) -> str:
    """``host:pid:start:boot:pidns`` of this process (or of ``pid``, on this machine)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{start_ticks(pid) or ''}:{boot_id()}:{pid_namespace()}"


def worker_identity() -> str:
    """This process's identity plus a random token: a name no other worker, here or anywhere, has."""
    return f"{process_identity()}:{uuid.uuid4().hex[:8]}"


def process_gone(identity: str) -> bool:
    """Whether the process named by ``identity`` (see :func:`process_identity`) has surely ended.

    False whenever that cannot be told from here: another host, another boot,
    another pid namespace, or an identity without them.
    """
    parts = identity.split(":")
    if len(parts) < 5:
        return False
    host, pid, start, boot, namespace = parts[:5]
    if host != socket.gethostname() or not pid.isdigit() or not start:
        return False
    if not boot or boot != boot_id() or namespace != pid_namespace():
        return False
    return start_ticks(int(pid)) != start


def die_with_parent(parent_pid: Optional[int] = None, poll_seconds: float = 1.0) -> None:
    """Make this (child) process end when its parent does, even by kill -9 of the parent.

    Call it first thing in a child process, or give it as a pool's initializer
    (``Pool(initializer=die_with_parent, initargs=(os.getpid(),))``). On Linux
    the kernel sends SIGKILL to the child when the parent thread that started it
    exits (prctl PR_SET_PDEATHSIG); everywhere, a daemon thread also checks
    every ``poll_seconds`` that the parent (``parent_pid``, else the parent at
    the time of the call) is still the parent, and ends the process if not.
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    # Ctrl-C at a terminal reaches the whole process group; the parent handles it and ends its
    # children, so a child ignores it rather than print a KeyboardInterrupt traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog below does it
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was armed

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def local_workers(requested: Optional[int], n_items: int) -> int:
    """How many local processes work on ``n_items`` items: ``requested``, else one per core when four or more."""
    if requested is not None:
        return requested
    return min(os.cpu_count() or 1, n_items) if n_items >= 4 else 1


@contextlib.contextmanager
def helper_processes(target: Callable, args: list[tuple], join_seconds: float = 60.0) -> Iterator[None]:
    """Local helper processes, ``target(*a)`` for each ``a`` in ``args``, alive while the block runs.

    Started with "spawn" (no inherited threads or connections); the target
    calls :func:`die_with_parent` first, so no helper outlives a kill -9 of
    its parent. After the block each helper gets ``join_seconds`` to finish
    and is then killed. An empty ``args`` starts nothing.
    """
    import multiprocessing as mp

    context = mp.get_context("spawn")
    helpers = [context.Process(target=target, args=a, daemon=True) for a in args]
    for process in helpers:
        process.start()
    try:
        yield
    finally:
        for process in helpers:
            process.join(timeout=join_seconds)
            if process.is_alive():
                process.kill()
