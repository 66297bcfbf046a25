"""Progress of long clustering stages: a log line when a stage starts and when it ends, and tqdm bars.

A UMAP fit, a linkage or a neighbour search on 100k points takes minutes; nothing may run that long
silently. Stages on at least :data:`LOUD_FROM` samples log at INFO on the ``zsclust.progress`` logger,
which prints to stderr when the application has configured no logging of its own (as Lightning does
for its logger); smaller stages log at DEBUG, so tests and small runs stay quiet. tqdm bars appear
only on a terminal (``disable=None``). ``ZSCLUST_PROGRESS=off`` silences both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

log = logging.getLogger("zsclust.progress")

LOUD_FROM = 20_000
"""Stages on at least this many samples are announced at INFO."""

ENV_PROGRESS = "ZSCLUST_PROGRESS"


def _enabled() -> bool:
    return os.environ.get(ENV_PROGRESS, "").strip().lower() not in ("0", "off", "false", "no")


_own_handler: logging.Handler | None = None


def _ensure_handler() -> None:
    """Print INFO progress to stderr unless the application set up logging itself (then, from the moment it
    does, hand the messages back to its handlers)."""
    global _own_handler
    if logging.getLogger().handlers:
        if _own_handler is not None:
            log.removeHandler(_own_handler)
            log.propagate, _own_handler = True, None
        return
    if _own_handler is not None or log.handlers:
        return
    _own_handler = logging.StreamHandler(sys.stderr)
    _own_handler.setFormatter(logging.Formatter("[zsclust %(asctime)s] %(message)s", "%H:%M:%S"))
    log.addHandler(_own_handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # no second copy through a root handler added later (see above)


def loud(n_samples: int | None) -> bool:
    """Whether a stage on ``n_samples`` is long enough to announce (and to draw a bar for)."""
    return _enabled() and n_samples is not None and n_samples >= LOUD_FROM


@contextlib.contextmanager
def stage(what: str, n_samples: int | None = None):
    """Log ``what`` when it starts and, with its wall time, when it ends (or fails)."""
    level = logging.INFO if loud(n_samples) else logging.DEBUG
    if level == logging.INFO:
        _ensure_handler()
    log.log(level, "%s ...", what)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        log.log(level, "%s failed after %.1f s", what, time.perf_counter() - start)
        raise
    log.log(level, "%s done in %.1f s", what, time.perf_counter() - start)


def bar(total: int, desc: str, n_samples: int | None = None, unit: str = "it"):
    """A tqdm bar for a loop of ``total`` steps: drawn on a terminal for loud stages, a no-op otherwise."""
    from tqdm.auto import tqdm

    disable = None if loud(n_samples) else True
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, leave=False)


__all__ = ["LOUD_FROM", "bar", "loud", "stage"]
