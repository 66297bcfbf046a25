"""One spelling per distance: scikit-learn's aliases resolved in one place for every backend.

scikit-learn accepts ``l2`` for euclidean and ``l1``/``manhattan`` for cityblock; scipy and fastcluster
know ``cityblock``, umap-learn and pynndescent ``manhattan``. Code that compares or translates a metric
asks here instead of keeping its own alias table, so ``l2`` and ``euclidean`` also share cache entries.
"""

from __future__ import annotations

ALIASES = {"l2": "euclidean", "l1": "cityblock", "manhattan": "cityblock"}
"""scikit-learn's other names for a metric -> scipy's name."""
_UMAP_NAMES = {"cityblock": "manhattan"}

__all__ = ["ALIASES", "canonical_metric", "is_euclidean", "umap_metric"]


def canonical_metric(metric):
    """scipy's name for ``metric`` (``l2`` -> ``euclidean``, ``l1``/``manhattan`` -> ``cityblock``); other
    names and callables unchanged."""
    return ALIASES.get(metric, metric) if isinstance(metric, str) else metric


def umap_metric(metric):
    """umap-learn's (and pynndescent's) name for ``metric``."""
    metric = canonical_metric(metric)
    return _UMAP_NAMES.get(metric, metric) if isinstance(metric, str) else metric


def is_euclidean(metric) -> bool:
    return canonical_metric(metric) == "euclidean"
