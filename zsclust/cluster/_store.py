"""What the reduction cache and the neighbour-graph store share: keyed entries on disk, a small in-process
LRU, one computation per key across processes, and the probe that refuses other data under a fingerprint.

A subclass says how an entry is read and written (``_load(key) -> (value, x_probe) | None``, a miss for a
missing or damaged entry; its own ``_store``, atomic, sidecar last); :meth:`KeyedStore._get_or_make` does the
rest, so both stores behave the same way under concurrency and damage.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from zsclust._locks import FileLock
from zsclust.cluster._probe import check_probe

__all__ = ["KeyedStore"]


class KeyedStore:
    def __init__(self, directory, *, memory_items: int):
        self.directory = Path(directory)
        self.memory_items = int(memory_items)
        self._memory: OrderedDict[str, tuple[Any, str]] = OrderedDict()

    def _get_or_make(self, key: str, x_probe: str, fingerprint: str, make: Callable[[], Any], *,
                     wait: bool = True) -> tuple[Any, bool] | None:
        """The entry ``key`` (from memory, then disk), or ``make()``'s result (which stores it); and whether it was
        there. A per-key file lock makes concurrent processes compute it once and the others read it; with
        ``wait=False``, ``None`` while another process is computing it."""
        if key in self._memory:
            value, cached_probe = self._memory[key]
            check_probe(cached_probe, x_probe, fingerprint)
            self._memory.move_to_end(key)
            return value, True
        with FileLock(self.directory / f".{key}.lock", wait=wait) as lock:
            if not lock.acquired:
                return None
            loaded = self._load(key)
            if loaded is not None:
                check_probe(loaded[1], x_probe, fingerprint)
                self._remember(key, *loaded)
                return loaded[0], True
            value = make()
            self._remember(key, value, x_probe)
            return value, False

    def _load(self, key: str) -> tuple[Any, str] | None:  # pragma: no cover - every store defines it
        raise NotImplementedError

    def clear_memory(self) -> None:
        """Drop the in-process layer (the disk entries stay)."""
        self._memory.clear()

    def _remember(self, key: str, value, probe: str) -> None:
        if self.memory_items <= 0:
            return
        self._memory[key] = (value, probe)
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)
