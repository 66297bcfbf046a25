"""Reduction cache: fit a reducer once per (embeddings, reducer, seed) and reuse the result.

UMAP on 100k embeddings takes minutes and a sweep over clusterers reuses the same reduction many
times, so the reduced array is stored on disk and kept in a small in-process LRU.

Key: sha256 of ``{"format", "embedding_fingerprint", "reducer": reducer_key(spec with the seed
applied), "seed"}``. On disk, per key: ``<key>.npy`` (the array) and ``<key>.json`` (a sidecar with
the key's inputs, the shape, dtype and a sha256 of the array's bytes). Both are written to a
temporary file in the same directory and moved into place with ``os.replace``, array first: the
sidecar is the commit marker. A missing sidecar, an unreadable or truncated array, or one whose
shape, dtype or checksum disagrees with its sidecar is a miss, and the entry is rewritten.

The embedding fingerprint must identify ``X`` exactly: a subsample of the embeddings is a
different fingerprint. As a cheap guard against a fingerprint that does not, the sidecar also keeps
a digest of 64 evenly spaced rows of ``X`` (as float64, so a float16 -> float32 cast does not
matter); a hit whose rows differ raises :class:`~zsclust.errors.CacheError` instead of returning a
reduction of other data.

Concurrent processes (tuning workers, sweep workers) that need the same reduction take a per-key
file lock beside the entry, so it is fitted once and the others read it.

Arrays returned are read-only (hits and misses alike), so that no caller can change a cached
result in place; copy if you need to write.

UMAP fits share one nearest-neighbour graph per (embeddings, n_neighbors, metric): the cache keeps
the graphs in its ``knn_graphs/`` folder (:class:`~zsclust.cluster._knn_graph.KnnGraphStore`) and hands
them to every UMAP it fits on those embeddings (every ``n_components``, the label-free UMAP-50 space,
the 2-D plot). The graph's description (``method``, and NNDescent's seed) joins the key of a
reduction fitted on it. ``share_knn=False`` turns sharing off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from zsclust._atomic import atomic_save_npy, atomic_write_json
from zsclust.cluster._distances import umap_metric
from zsclust.cluster._knn_graph import SHARED_METRICS, KnnGraphStore, resolve_method
from zsclust.cluster._probe import probe
from zsclust.cluster._reducers import UMAPReducer, create_reducer, reducer_key
from zsclust.cluster._store import KeyedStore
from zsclust.errors import ConfigError, InvalidDataError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1

__all__ = ["ReductionCache"]


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()




class ReductionCache(KeyedStore):
    """Disk cache (plus in-process LRU of ``memory_items`` arrays) of fitted reductions.

    ``directory`` is created if needed. If it cannot be written, results are still returned and a
    warning says the cache is not persisted: a cache must not fail a run.
    """

    def __init__(self, directory, *, memory_items: int = 4, share_knn: bool = True, knn_method: str = "auto",
                 knn_seed: int = 0):
        super().__init__(directory, memory_items=memory_items)
        self.share_knn = bool(share_knn)
        self.knn_method = knn_method
        self.knn_seed = int(knn_seed)
        self.graphs = KnnGraphStore(self.directory / "knn_graphs")

    # -- the shared neighbour graph ----------------------------------------------------------------
    def graph_request(self, reducer_spec, X, *, seed: int) -> dict | None:
        """The shared graph a reduction of ``X`` would use (``n_neighbors``, ``metric``, ``method``, ``seed``), or None.

        Only a single UMAP step on the embeddings themselves shares one (a UMAP after PCA sees other data),
        with a metric of :data:`~zsclust.cluster._knn_graph.SHARED_METRICS`, and not one that fits on a subsample.
        """
        if not self.share_knn or getattr(X, "ndim", 0) != 2:
            return None
        reducer = create_reducer(reducer_spec, random_state=int(seed))
        if not isinstance(reducer, UMAPReducer) or umap_metric(reducer.metric) not in SHARED_METRICS:
            return None
        n, d = X.shape
        if reducer.n_neighbors >= n or (reducer.fit_subsample is not None and n > reducer.fit_subsample):
            return None
        method = resolve_method(self.knn_method, n, d, reducer.metric)
        return {"n_neighbors": int(reducer.n_neighbors), "metric": umap_metric(reducer.metric), "method": method,
                "seed": self.knn_seed if method == "nndescent" else None}

    def fit_details(self, reducer_spec, X, *, seed: int) -> dict:
        """What a reduction of ``X`` is fitted with beyond its parameters, as run params (``knn_graph``)."""
        request = self.graph_request(reducer_spec, X, seed=seed)
        if request is None:
            return {}
        out = {"knn_graph": request["method"]}
        if request["seed"] is not None:
            out["knn_graph_seed"] = request["seed"]
        return out

    # -- keys ------------------------------------------------------------------------------------
    @staticmethod
    def key_inputs(reducer_spec, *, embedding_fingerprint: str, seed: int) -> dict:
        """The JSON-able dict the key is the digest of (also written to the sidecar)."""
        if not isinstance(embedding_fingerprint, str) or not embedding_fingerprint:
            raise ConfigError("ReductionCache: embedding_fingerprint must be a non-empty string.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ConfigError(f"ReductionCache: seed must be an int, got {seed!r}.")
        return {
            "format": CACHE_FORMAT,
            "embedding_fingerprint": embedding_fingerprint,
            "reducer": reducer_key(reducer_spec, random_state=int(seed)),
            "seed": int(seed),
        }

    def key(self, reducer_spec, X=None, *, embedding_fingerprint: str, seed: int) -> str:
        """The cache key (hex sha256) of a reduction. Give ``X`` for the key :meth:`get_or_fit` uses: a UMAP
        that shares the neighbour graph names the graph in its key."""
        return self._keyed(reducer_spec, X, embedding_fingerprint, seed)[0]

    def _keyed(self, reducer_spec, X, embedding_fingerprint: str, seed: int) -> tuple[str, dict, dict | None]:
        """(key, key inputs, shared-graph request or None) of a reduction of ``X``."""
        inputs = self.key_inputs(reducer_spec, embedding_fingerprint=embedding_fingerprint, seed=seed)
        graph = None if X is None else self.graph_request(reducer_spec, np.asarray(X), seed=seed)
        if graph is not None:
            inputs["knn_graph"] = graph
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest(), inputs, graph

    def paths(self, key: str) -> tuple[Path, Path]:
        """(array path, sidecar path) of a key."""
        return self.directory / f"{key}.npy", self.directory / f"{key}.json"

    # -- main entry --------------------------------------------------------------------------------
    def get_or_fit(self, reducer_spec, X, *, embedding_fingerprint: str, seed: int,
                   wait: bool = True) -> tuple[np.ndarray, bool] | None:
        """The reduced ``X`` and whether it came from the cache.

        On a miss the reducer ``create_reducer(reducer_spec, random_state=seed)`` is fitted on ``X``
        and the result stored. On a hit only 64 rows of ``X`` are read (see the module docstring).
        ``reducer_spec`` is a spec (name, mapping or list), not a built estimator. With ``wait=False``
        the answer is ``None`` while another process is fitting the same reduction (workers use it to
        fit different reductions side by side).
        """
        X = np.asarray(X)
        key, inputs, graph = self._keyed(reducer_spec, X, embedding_fingerprint, seed)
        x_probe = probe(X) if X.ndim == 2 else ""
        return self._get_or_make(key, x_probe, embedding_fingerprint,
                                 lambda: self._fit(key, inputs, reducer_spec, X, x_probe, seed, graph), wait=wait)

    def _fit(self, key: str, inputs: dict, reducer_spec, X: np.ndarray, probe: str, seed: int,
             graph_request: dict | None = None) -> np.ndarray:
        reducer = create_reducer(reducer_spec, random_state=int(seed))
        if graph_request is not None:
            graph, _ = self.graphs.get_or_compute(X, embedding_fingerprint=inputs["embedding_fingerprint"],
                                                  **graph_request)
            reduced = np.asarray(reducer.fit_transform(X, knn_graph=graph))
        else:
            reduced = np.asarray(reducer.fit_transform(X))
        if reduced.ndim != 2 or reduced.shape[0] != X.shape[0]:
            raise InvalidDataError(f"Reducer returned shape {reduced.shape} for {X.shape[0]} input rows.")
        reduced = np.ascontiguousarray(reduced)
        if np.may_share_memory(reduced, X):  # identity reducer: never make the caller's array read-only
            reduced = reduced.copy()
        self._store(key, inputs, reduced, probe)
        reduced.flags.writeable = False
        return reduced


    # -- internals ---------------------------------------------------------------------------------
    def _load(self, key: str) -> tuple[np.ndarray, str] | None:
        npy, sidecar = self.paths(key)
        if not sidecar.exists() or not npy.exists():
            return None
        try:
            meta = json.loads(sidecar.read_text())
            array = np.load(npy, allow_pickle=False)
            ok = (
                meta.get("key") == key
                and list(array.shape) == meta.get("shape")
                and str(array.dtype) == meta.get("dtype")
                and isinstance(meta.get("x_probe"), str)
                and _digest(array) == meta.get("sha256")
            )
        except (OSError, ValueError, EOFError, json.JSONDecodeError, AttributeError) as err:
            log.warning("reduction cache entry %s is unreadable (%s); recomputing", key[:12], err)
            return None
        if not ok:
            log.warning("reduction cache entry %s does not match its sidecar; recomputing", key[:12])
            return None
        array.flags.writeable = False
        return array, meta["x_probe"]

    def _store(self, key: str, inputs: dict, array: np.ndarray, probe: str) -> None:
        npy, sidecar = self.paths(key)
        meta = {"key": key, **inputs, "shape": list(array.shape), "dtype": str(array.dtype),
                "sha256": _digest(array), "x_probe": probe}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_save_npy(npy, array)
            atomic_write_json(sidecar, meta)
        except OSError as err:
            warnings.warn(f"Reduction cache: cannot write to {self.directory} ({err}); the result is not cached.",
                          RuntimeWarning, stacklevel=3)

