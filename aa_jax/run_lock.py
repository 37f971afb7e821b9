"""Guarding a run while it trains: one process per run directory or sweep, and cleanups
that run however the process is told to stop.

A run directory is locked with ``flock`` on ``<run_dir>/.lock`` (a sweep on a lock file in
its work folder), and the holder writes its PID into the file, so that a second process
stops at once with one sentence naming the first. The kernel releases a ``flock`` when its
process ends, however it ends (SIGKILL, a crash, a lost terminal), so a lock left behind by
a dead process is simply taken over: no stale-lock cleanup, no PID guessing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import threading
from pathlib import Path
from typing import Iterator

from aa_jax.errors import UserError, storage_error

RUN_LOCK = ".lock"
# Locks this process holds: path -> [file descriptor, depth]. A sweep holds a run
# directory's lock while it trains and publishes the run, and train takes it again.
_held: dict[Path, list[int]] = {}


class Busy(UserError):
    """Another live process holds the lock; ``pid`` is its PID (None where unreadable)."""

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so that every ``finally`` runs
    (checkpoint managers close, locks are released) and the command line reports an
    interruption."""


@contextlib.contextmanager
def hold(path: str | Path, what: str) -> Iterator[None]:
    """Holds the exclusive lock file ``path`` while the block runs, or raises :class:`Busy`
    naming ``what`` (e.g. "The run directory runs/x") and the holder's PID.

    Re-entrant within a process (not between threads of one process)."""
    path = Path(path).absolute()
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            holder = f"process {pid}" if pid is not None else "another process"
            raise Busy(f"{what} is in use by {holder} (it holds {path}); wait for it to "
                       f"end or stop it, then run the same command again.", pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[path] = [fd, 1]
        yield
    finally:
        if _held.get(path, [fd])[0] == fd:
            _held.pop(path, None)
        os.close(fd)  # releases the lock


def _open_lock(path: Path) -> int:
    """The lock file's descriptor, created where missing. A symbolic link (to a file the
    user cares about, which the PID would overwrite) or anything but a plain file is
    refused in one sentence; nothing is followed or written."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"The lock file {path} is a symbolic link, which aa_jax does not "
                            f"follow; remove it, then run the same command again.") from None
        raise storage_error(path, e) or UserError(
            f"Cannot create the lock file {path} ({e.strerror or e}); check the folder's "
            f"permissions.") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"The lock file {path} is not a plain file; remove it, then run the "
                        f"same command again.")
    return fd


def _holder(fd: int, patience: float = 1.0) -> int | None:
    """The holder's PID. A holder writes it just after taking the lock, so a reader that
    comes in between finds the file empty: it reads again for up to ``patience`` seconds
    before it gives up (a file not written by aa_jax)."""
    import time

    deadline = time.monotonic() + patience
    while True:
        try:
            return int(os.pread(fd, 32, 0).decode().strip())
        except (OSError, ValueError):  # written a moment from now, or not by us
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)


def hold_run(out: str | Path) -> contextlib.AbstractContextManager[None]:
    """The lock of the run directory ``out`` (which must exist). The processes of one
    multi-host run share its directory: only the primary process holds the lock."""
    from aa_jax.distributed import is_primary

    if not is_primary():
        return contextlib.nullcontext()
    return hold(Path(out) / RUN_LOCK, f"The run directory {out}")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs in the main thread, SIGTERM raises :class:`Terminated` there
    (once: a second SIGTERM during the cleanups is ignored; SIGKILL still ends the
    process). Elsewhere, or where a handler other than the default is installed, nothing
    changes."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
