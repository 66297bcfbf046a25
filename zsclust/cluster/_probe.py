"""A cheap check that cached results belong to the embeddings passed (the reduction cache and the graph store).

A fingerprint must identify the embeddings exactly; as a guard against one that does not, entries keep
a digest of the array's shape and 64 evenly spaced rows, and a hit whose rows differ is refused.
"""

from __future__ import annotations

import hashlib

import numpy as np

from zsclust.errors import CacheError


def probe(X: np.ndarray) -> str:
    """Digest of X's shape and 64 evenly spaced rows (as float64): cheap, even for millions of rows."""
    rows = np.unique(np.linspace(0, X.shape[0] - 1, num=min(X.shape[0], 64)).astype(np.int64)) if len(X) else []
    sample = np.ascontiguousarray(np.asarray(X[rows], dtype=np.float64))
    return hashlib.sha256(repr(tuple(X.shape)).encode() + sample.data).hexdigest()


def check_probe(cached_probe: str, probe_now: str, fingerprint: str) -> None:
    """CacheError when an entry was made from other rows than those passed under the same fingerprint."""
    if cached_probe != probe_now:
        raise CacheError(
            f"The embeddings passed differ from those cached under fingerprint {fingerprint!r} (other "
            "rows or another shape). The fingerprint must identify the array exactly: include any "
            "subsampling or filtering of the embeddings in it."
        )


__all__ = ["check_probe", "probe"]
