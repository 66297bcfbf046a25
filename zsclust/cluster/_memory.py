"""Memory guard: refuse a fit whose peak memory would not fit, before anything large is allocated.

Affinity propagation, spectral clustering with a dense affinity, agglomerative clustering without a
connectivity graph and brute-force HDBSCAN all hold O(N^2) float64 matrices. At N = 100k that is
hundreds of GiB; numpy would either raise deep inside the fit or, worse, the kernel's OOM killer
would take the whole process (or machine) down. Every zsclust clusterer calls
:func:`check_fit_memory` at the start of ``fit`` (one mechanism for the registered estimators and for
the ones given by import path), which compares the estimator's own estimate (its ``fit_memory``, see
:func:`estimate_fit_bytes`) with :func:`memory_budget` and raises
:class:`~zsclust.errors.MemoryGuardError` when it does not fit. An algorithm nobody estimates is
reported as unknown, never assumed to be linear.

Environment:

``ZSCLUST_MEMORY_LIMIT``
    Memory zsclust may assume is available, e.g. ``8GiB``, ``500MB``, ``1.5G``, ``2e9``. It can
    only *lower* the detected figure (a machine does not get more memory by saying so); ``off``
    disables the guard entirely, at your own risk.
``ZSCLUST_MEMORY_SAFETY``
    Fraction of that memory one fit may plan to use (default 0.8): the estimates count the big
    matrices, not every temporary, and other things live in the process too.

Available memory is psutil's ``available`` when psutil is installed, else ``MemAvailable`` from
``/proc/meminfo``, lowered to the cgroup (container) limit minus usage when there is one.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from zsclust.errors import ConfigError, MemoryGuardError

log = logging.getLogger(__name__)

ENV_LIMIT = "ZSCLUST_MEMORY_LIMIT"
ENV_SAFETY = "ZSCLUST_MEMORY_SAFETY"
DEFAULT_SAFETY = 0.8

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}


def parse_bytes(text: str | int | float) -> int:
    """``"8GiB"`` -> 8589934592. KB/MB/GB/TB are decimal, KiB/MiB/... and bare K/M/G/T are binary."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"A memory size cannot be negative, got {text}.")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ConfigError(
            f"Cannot read the memory size {text!r}: use a number with an optional unit, e.g. "
            "'8GiB', '500MB', '1.5G' or '2e9' (bytes)."
        )
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


# ----------------------------------------------------------------------------------- available


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def _cgroup_headroom() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, then v1), or None without a limit."""
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_f), _read_int(usage_f)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 "unlimited" is ~2^63
            return max(limit - usage, 0)
    return None


def available_memory() -> int | None:
    """Bytes the OS could give this process now, or None when it cannot be found out."""
    avail = None
    try:
        import psutil  # optional: not a declared dependency

        avail = int(psutil.virtual_memory().available)
    except Exception:  # ImportError, or psutil unsupported on this platform
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError, IndexError):
            avail = None
    headroom = _cgroup_headroom()
    if headroom is not None:
        avail = headroom if avail is None else min(avail, headroom)
    return avail


@dataclass(frozen=True)
class MemoryBudget:
    """What one fit may use: ``bytes`` (None = unknown or guard disabled) and where it came from."""

    bytes: int | None
    source: str


def memory_budget() -> MemoryBudget:
    """The budget from the environment and the machine (see the module docstring)."""
    raw_limit = os.environ.get(ENV_LIMIT, "").strip()
    if raw_limit.lower() in ("off", "none", "disable", "disabled", "unlimited"):
        return MemoryBudget(None, f"guard disabled by {ENV_LIMIT}={raw_limit}")
    raw_safety = os.environ.get(ENV_SAFETY, "").strip()
    try:
        safety = float(raw_safety) if raw_safety else DEFAULT_SAFETY
    except ValueError:
        safety = -1.0
    if not 0.0 < safety <= 1.0:
        raise ConfigError(f"{ENV_SAFETY}={raw_safety!r} must be a fraction in (0, 1], e.g. 0.8.")
    detected = available_memory()
    limit = parse_bytes(raw_limit) if raw_limit else None
    if limit is not None and (detected is None or limit <= detected):
        base, source = limit, f"{ENV_LIMIT}={raw_limit}"
    elif detected is not None:
        base, source = detected, "available memory"
        if limit is not None:
            source += f", lower than {ENV_LIMIT}={raw_limit}"
    else:
        return MemoryBudget(None, "available memory unknown")
    return MemoryBudget(int(base * safety), f"{safety:.0%} of {format_bytes(base)} {source}")


# ----------------------------------------------------------------------------------- estimates


def estimate_fit_bytes(estimator, n_samples: int, n_features: int) -> tuple[int | None, str]:
    """Approximate peak bytes of ``estimator.fit`` on an (n_samples, n_features) array, and why.

    The estimator says it itself (``fit_memory``: every registered reducer and clusterer has one); an
    estimator given by import path is asked through the registered class of the same algorithm
    (``sklearn.cluster.AffinityPropagation`` → ``affinity_propagation``'s estimate). ``(None, why)``
    when nothing knows: the guard then says plainly that it cannot check, instead of guessing.
    """
    own = getattr(estimator, "fit_memory", None)
    if callable(own):
        return own(int(n_samples), int(n_features))
    steps = getattr(estimator, "steps", None)
    if steps is not None:  # a chain (sklearn Pipeline): its steps run one after another, so the largest counts
        return _largest_step(steps, int(n_samples), int(n_features))
    for cls in _registered_classes():
        algorithm = cls.algorithm()
        if algorithm is not None and isinstance(estimator, algorithm):
            return cls.fit_memory(estimator, int(n_samples), int(n_features))
    return None, f"{type(estimator).__module__}.{type(estimator).__name__} does not estimate its memory"


def _largest_step(steps, n: int, d: int) -> tuple[int | None, str]:
    """The peak of a chain: its largest step's estimate (each step's width is what the one before returns)."""
    best, width = (0, "empty chain"), d
    for name, step in steps:
        estimate, why = estimate_fit_bytes(step, n, width)
        if estimate is None:
            return None, f"step '{name}': {why}"
        if estimate > best[0]:
            best = (estimate, f"step '{name}': {why}")
        out = getattr(step, "n_components", None)
        width = out if isinstance(out, int) and not isinstance(out, bool) else width
    return best


_ESTIMATING: list[type] = []  # registered classes, in registration order (register_estimator adds them)


def _registered_classes() -> list[type]:
    return [cls for cls in _ESTIMATING if hasattr(cls, "algorithm")]


def register_estimator(registry: dict, kind: str, name: str, cls: type, defaults, test_params) -> type:
    """What ``register_clusterer`` and ``register_reducer`` share: ``name`` → (``cls``, ``defaults``).

    The class must estimate its own memory (``fit_memory``); that estimate then also serves estimators
    of ``cls.algorithm()`` given by import path. ``test_params`` are for the contract checks.
    """
    if name in registry:
        raise ValueError(f"{kind} {name!r} is already registered")
    if not callable(getattr(cls, "fit_memory", None)):
        raise TypeError(f"{kind} {name!r} must define fit_memory(n_samples, n_features) -> (bytes, why)")
    cls._zs_name = name
    cls._zs_test_params = dict(test_params or {})
    _ESTIMATING.append(cls)
    registry[name] = (cls, dict(defaults or {}))
    return cls


def _largest_n_that_fits(estimator, n_samples: int, n_features: int, budget: int) -> int:
    lo, hi = 1, n_samples  # estimate(lo) is assumed to fit; find the largest n with estimate <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_fit_bytes(estimator, mid, n_features)[0] <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_fit_memory(estimator, n_samples: int, n_features: int, *, name: str | None = None) -> int | None:
    """Raise MemoryGuardError when ``estimator.fit`` on this shape would exceed the budget.

    Returns the estimate in bytes (``None``, with a logged warning, when it is unknown). Cheap: it
    allocates nothing.
    """
    name = name or type(estimator).__name__
    estimate, detail = estimate_fit_bytes(estimator, n_samples, n_features)
    if estimate is None:
        log.warning("memory guard: %s's memory use is unknown (%s); not checked at N=%d", name, detail, n_samples)
        return None
    budget = memory_budget()
    if budget.bytes is None:
        log.debug("memory guard skipped for %s (%s); estimate %s", name, budget.source, format_bytes(estimate))
        return estimate
    if estimate <= budget.bytes:
        return estimate
    fits = _largest_n_that_fits(estimator, n_samples, n_features, budget.bytes)
    knob = ENV_LIMIT if budget.source.endswith(f"{ENV_LIMIT}={os.environ.get(ENV_LIMIT, '').strip()}") else ENV_SAFETY
    raise MemoryGuardError(
        f"{name}: fitting N={n_samples:,} samples would need about {format_bytes(estimate)} at peak "
        f"({detail}), but only {format_bytes(budget.bytes)} is available to it ({budget.source}). "
        f"Subsample to at most about N={fits:,}, or use a clusterer whose memory grows linearly with "
        "N (kmeans; hdbscan with a tree metric such as euclidean; spectral with "
        "affinity='nearest_neighbors'), or reduce N otherwise. If that much memory really is free, "
        f"raise {knob} ({ENV_LIMIT}=off disables the guard)."
    )
