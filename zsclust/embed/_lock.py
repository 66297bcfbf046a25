"""An exclusive lock per cache entry, so two processes never embed the same fingerprint at once.

It is an ``fcntl.flock`` on ``<entry>/.lock``: the kernel releases it when its process dies, so a
killed run never leaves a lock behind, and nothing ever needs deleting by hand. Where ``fcntl`` is
missing (Windows) the lock does nothing, and concurrent runs of one entry rely on the merge, which
accepts a sample embedded twice when both rows agree.

flock is advisory and per open file: it serialises processes on one host and, on NFSv4 (and v3 with
a lock daemon), across hosts; a shared file system without lock support has no protection beyond
the merge check.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

class EntryLock:
    """``acquire()`` blocks (printing once who it waits for), ``acquire(timeout=s)`` gives up after ``s``
    seconds and returns False. Not reentrant; ``release()`` is safe to call when not held.
    """

    POLL_SECONDS = 0.2

    def __init__(self, path: str | os.PathLike, what: str = ""):
        self.path = Path(path)
        self.what = what or str(self.path.parent)
        self._fd: int | None = None
        self._announced = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _try(self) -> bool:
        if fcntl is None:
            self._fd = -1
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        try:  # who holds it, for a person looking at the folder; the lock itself is the flock
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError:
            pass
        return True

    def acquire(self, timeout: float | None = None) -> bool:
        if self.held:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._try():
                return True
            if not self._announced:
                self._announced = True
                holder = ""
                try:
                    holder = self.path.read_text().strip()
                except OSError:
                    pass
                print(f"Waiting for another process ({holder or 'unknown'}) that is embedding {self.what};"
                      " this run resumes from its results when it ends.", flush=True)
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.POLL_SECONDS if deadline is None else min(self.POLL_SECONDS,
                                                                        max(0.0, deadline - time.monotonic())))

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if fd < 0:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> EntryLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
