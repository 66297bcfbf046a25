"""Locks that processes agree on: a file lock (one host) and a PostgreSQL advisory lock (any host).

Used by Optuna workers claiming trials, and by the reduction cache so that concurrent workers fit a
reduction once."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; workers then rely on the storage alone
    fcntl = None


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if needed); ``None`` gives a lock that does nothing.

    ``flock`` is released by the kernel when its process dies, so a killed worker never leaves a
    lock behind. Not reentrant. With ``wait=False`` entering never blocks: ``acquired`` says whether
    this process holds the lock (False while another one does).
    """

    def __init__(self, path: str | os.PathLike | None, *, wait: bool = True):
        self.path = Path(path) if path is not None else None
        self.wait = wait
        self.acquired = False
        self._fh = None

    def __enter__(self):
        self.acquired = True
        if self.path is None or fcntl is None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a+")
        except OSError:  # a read-only cache: nothing to protect
            self._fh = None
            return self
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            self.acquired = False
        return self

    def __exit__(self, *exc):
        self.acquired = False
        if self._fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        return False


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock on ``key``, held on its own connection while inside ``with``.

    The server RDB counterpart of :class:`FileLock`: workers on any machine that share a PostgreSQL
    storage serialise study setup and trial claims through it. The server releases it when a worker's
    connection dies, so a killed worker never leaves it behind. Not reentrant.
    """

    def __init__(self, url: str, key: str):
        self.url, self.key = url, key
        self._engine = None
        self._conn = None

    def __enter__(self):
        import sqlalchemy

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
        self._conn = self._engine.connect()
        self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": self.key})
        return self

    def __exit__(self, *exc):
        import sqlalchemy

        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": self.key})
            self._conn.close()
            self._conn = None
        return False
