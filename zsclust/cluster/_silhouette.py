"""Euclidean silhouettes from a distance matrix that every clustering of the same space shares.

A job scores each clustering in the original space and in the label-free UMAP-50 space; a tuning study
or a sweep scores dozens of clusterings of the same embeddings there. scikit-learn's ``silhouette_score``
recomputes all pairwise distances every time (10,000 x 1,280: about 8 s on two cores), so zsclust keeps
the distances of the scored points of a named space in a small in-process LRU and computes each silhouette
from them in one parallel pass (about 0.5 s).

Distances are computed as scikit-learn computes them (float64 products, stored in the input's precision:
float32 for float32 embeddings), so the scores agree with ``silhouette_score`` to float rounding. The LRU holds at most
:data:`CACHE_BYTES`; a space whose whole matrix would take more than half of it (over about 11,500
points of float32) keeps only the scored rows, and one whose matrix would take more than a quarter of the
free memory goes to scikit-learn's chunked computation.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["CACHE_BYTES", "clear_cache", "euclidean_silhouette"]

CACHE_BYTES = 1 << 30
"""Bytes of distance matrices kept between silhouettes (two spaces of 10,000 points: 800 MB)."""

_BLOCK = 1024
_cache: OrderedDict[str, tuple[np.ndarray | None, np.ndarray]] = OrderedDict()  # key -> (rows or None=all, D)
_lock = threading.Lock()  # sweeps score in threads
_KERNEL = None


def clear_cache() -> None:
    """Drop every kept distance matrix."""
    with _lock:
        _cache.clear()


def euclidean_silhouette(X: np.ndarray, labels: np.ndarray, rows: np.ndarray, *, space: str | None = None) -> float:
    """Mean silhouette of ``labels[rows]`` on the points ``X[rows]`` (euclidean); NaN unless 2 <= K <= len(rows)-1.

    ``space`` names ``X`` (a fingerprint of its contents); with it the distances are kept for the next
    clustering of the same space: over all of ``X`` when that fits, else over ``rows``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    codes, lab = np.unique(labels[rows], return_inverse=True)
    m, k = rows.size, codes.size
    if not 2 <= k <= m - 1:
        return math.nan
    if m * m * _itemsize(X) > _budget():
        from sklearn.metrics import silhouette_score

        return float(silhouette_score(X[rows], lab))
    with _lock:
        base, D = _distances(X, rows, space)
    pos = rows if base is None else np.searchsorted(base, rows)
    counts = np.bincount(lab, minlength=k).astype(np.float64)
    return float(_kernel()(D, pos, lab.astype(np.int64), counts))


def _budget() -> int:
    from ._memory import available_memory

    avail = available_memory()
    return CACHE_BYTES if avail is None else max(min(CACHE_BYTES, avail // 4), 0)


def _distances(X, rows, space) -> tuple[np.ndarray | None, np.ndarray]:
    """The (kept) distance matrix covering ``rows``: (its rows, None meaning all of ``X``; the matrix)."""
    key = None if space is None else f"{space}:{X.shape[0]}x{X.shape[1]}"
    if key is not None and key in _cache:
        base, D = _cache[key]
        if base is None or (np.isin(rows, base, assume_unique=True).all()):
            _cache.move_to_end(key)
            return base, D
    n = X.shape[0]
    base = None if key is not None and 2 * n * n * _itemsize(X) <= _budget() else rows
    D = _pairwise(X if base is None else X[base])
    if key is not None and 2 * D.nbytes <= _budget():
        _cache[key] = (base, D)
        while sum(d.nbytes for _, d in _cache.values()) > CACHE_BYTES:
            _cache.popitem(last=False)
    return base, D


def _itemsize(X) -> int:
    return 4 if X.dtype == np.float32 else 8


def _pairwise(X: np.ndarray) -> np.ndarray:
    """Euclidean distances from float64 products (scikit-learn's upcast for float32), stored as float32 for
    float32 input and as float64 otherwise. BLAS computes each block's products; one parallel numba pass
    turns them into distances (NumPy's five elementwise passes over the block took most of the time in
    spaces of up to a few hundred dimensions: 1.4 s of 10,000 x 50, against 0.4 s)."""
    dtype = np.float32 if X.dtype == np.float32 else np.float64
    X = np.asarray(X, dtype=np.float64)
    sq = np.einsum("ij,ij->i", X, X)
    D = np.empty((X.shape[0], X.shape[0]), dtype=dtype)
    to_distances = _distance_kernel()
    for start in range(0, X.shape[0], _BLOCK):
        stop = min(start + _BLOCK, X.shape[0])
        to_distances(X[start:stop] @ X.T, sq[start:stop], sq, D[start:stop])
    np.fill_diagonal(D, 0.0)
    return D


_DISTANCES = None


def _distance_kernel():
    """to_distances(G, sq_rows, sq, out): out = sqrt(max(-2 G + sq_rows[:, None] + sq[None, :], 0)), in that
    order of operations (the values NumPy's passes gave, to the bit)."""
    global _DISTANCES
    if _DISTANCES is None:
        import numba

        @numba.njit(parallel=True, cache=True)
        def to_distances(G, sq_rows, sq, out):
            for i in numba.prange(G.shape[0]):
                for j in range(G.shape[1]):
                    out[i, j] = np.sqrt(max(-2.0 * G[i, j] + sq_rows[i] + sq[j], 0.0))

        _DISTANCES = to_distances
    return _DISTANCES


def _kernel():
    """silhouette(D, pos, lab, counts): scikit-learn's definition (0 for a point alone in its cluster), one
    parallel numba pass over the scored rows."""
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.njit(parallel=True, cache=True)
        def silhouette(D, pos, lab, counts):
            m, k = pos.shape[0], counts.shape[0]
            s = np.zeros(m)
            for i in numba.prange(m):
                sums = np.zeros(k)
                row = D[pos[i]]
                for j in range(m):
                    sums[lab[j]] += row[pos[j]]
                own = lab[i]
                if counts[own] <= 1:
                    continue
                a = sums[own] / (counts[own] - 1.0)
                b = np.inf
                for c in range(k):
                    if c != own:
                        b = min(b, sums[c] / counts[c])
                top = max(a, b)
                if top > 0:
                    s[i] = (b - a) / top
            return s.mean()

        _KERNEL = silhouette
    return _KERNEL
