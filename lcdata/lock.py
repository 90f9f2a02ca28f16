"""One writer per output directory: ``OutputLock(out)`` is held for a whole build.

The lock is an ``flock`` on ``OUT/.lcdata.lock``, which the kernel releases when its holder
exits in any way (SIGKILL included), so a lock left by a killed build is never an obstacle:
the next build takes it over and says whose it was (forked children, such as engine workers,
close their copy of the lock at fork, so they cannot keep it alive). The file holds the holder's pid, host,
start time and command line, for the message a second build prints when it is refused.
Works on local filesystems (and NFS, where Linux maps ``flock`` to POSIX locks); the
Prefect and Dask runners hold it in the process that runs the flow, for the whole build.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("lcdata")
LOCK_NAME = ".lcdata.lock"


_HELD: set[int] = set()  # lock fds of this process


def _close_in_child() -> None:
    # a forked child (an engine worker) must not keep the parent's lock alive after the
    # parent dies: flock belongs to the open file, which fork shares
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class OutputLocked(RuntimeError):
    """Another live build owns the output directory."""


def _holder(text: str) -> dict[str, Any]:
    try:
        info = json.loads(text)
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def describe(info: dict[str, Any]) -> str:
    if not info:
        return "an unknown process"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')}, started {started} (`{info.get('command', '?')}`)"


class OutputLock:
    """Exclusive ownership of ``out`` while the ``with`` block runs."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the dead holder whose lock this replaced

    def acquire(self) -> OutputLock:
        self.out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            held = False
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    info = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                    raise OutputLocked(
                        f"{self.out} is being written by another build: {describe(info)}. Wait for it to "
                        "finish (or stop it; a rerun then resumes), or build into another --out"
                    ) from None
                held = True
                # the file may have been removed by a holder releasing between our open and lock:
                # then we lock an orphan inode; start over on the current file
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                stale = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                me = {"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3),
                      "command": " ".join(os.path.basename(a) if i == 0 else a
                                          for i, a in enumerate(sys.argv))[:300]}
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(me).encode(), 0)
                os.fsync(fd)
            except BaseException:
                # refused, or interrupted half way (Ctrl-C): leave no lock behind that we held
                if held:
                    with contextlib.suppress(OSError):
                        self.path.unlink()
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            break
        if stale:  # a holder that released cleanly removes the file: this one died holding it
            self.took_over = stale
            log.warning("%s: took over the lock of a build that ended without releasing it (%s)",
                        self.out, describe(stale))
        self.fd = fd
        _HELD.add(fd)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # before unlocking: a waiter that opened it re-checks the inode
        _HELD.discard(self.fd)
        os.close(self.fd)  # releases the flock
        self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
