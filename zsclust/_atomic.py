"""Atomic file writes: a temporary file in the target's folder, fsynced, then renamed over the target.

A killed process leaves either the old file or the new one, never half of one; after the rename the
folder itself is fsynced, so a power cut cannot forget the rename once the call has returned. Every
cache and record zsclust writes goes through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename, a new or deleted file) to disk, where the platform allows it.

    POSIX needs this for a rename to survive a crash; Windows cannot open a folder for it, and some
    network file systems refuse it (EINVAL): both are skipped, as the rename itself already happened.
    """
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace`` then fsync of the destination's folder."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then move it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2, default=None) -> Path:
    """``default`` as in ``json.dumps``: without one, a value JSON cannot hold is a TypeError, not a string."""
    data = json.dumps(obj, indent=indent, sort_keys=True, default=default).encode()
    return atomic_write_bytes(path, lambda f: f.write(data))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    return atomic_write_bytes(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig(path, **kwargs)`` through a temporary file: a killed report leaves the old figure or the new one.

    The format comes from ``path``'s suffix (the temporary file's name would hide it from matplotlib).
    """
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".").lower() or None)
    return atomic_write_bytes(path, lambda f: fig.savefig(f, **kwargs))
