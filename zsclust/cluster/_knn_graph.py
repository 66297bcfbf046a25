"""One nearest-neighbour graph per (embedding set, n_neighbors, metric), computed once and shared.

Finding each point's nearest neighbours is most of the cost of a UMAP fit on high-dimensional
embeddings, and a run fits UMAP several times on the same data: every ``n_components`` a search tries,
the label-free UMAP-50 space and the 2-D plot. :class:`KnnGraphStore` (a folder of the reduction
cache) computes the graph once and hands the same arrays to every fit, through umap-learn's
``precomputed_knn``.

How the graph is found (``method``):

``exact``
    Every distance, in blocks: a float32 matrix product picks each row's candidates, then each
    candidate's distance is recomputed with umap-learn's own distance function, so the values are the
    ones umap-learn computes itself. Below 4096 points umap-learn computes this same exact graph, so a
    fit with the shared graph is the fit without it, bit for bit. Above, umap-learn approximates
    (NNDescent) and the exact graph is the better one: results differ from an unshared fit only in
    the neighbours NNDescent misses (0.3 % of them on 10k x 1280 embeddings).
``nndescent``
    umap-learn's own search (pynndescent), seeded with ``seed``. The random state it leaves behind is
    stored too: a UMAP fit whose seed is the graph's continues exactly as umap-learn's would, so it
    is the unshared fit bit for bit. Fits with other seeds use this graph as it is.
``cuml``
    Brute force on the GPU (cuML), exact up to float32 rounding. Unmeasured here (no GPU).
``auto``
    ``exact`` while N*N*D <= :data:`EXACT_MAX_WORK` (about 100k x 768 or 550k x 50: minutes on two
    cores), ``nndescent`` beyond. The exact search's products and the choice of each row's candidates
    run in torch; when torch sees a CUDA GPU they run there, and ``exact`` is chosen up to :data:`EXACT_MAX_WORK_GPU`
    (1M x 768 and more): the same graph as on the CPU, since the candidates are re-ranked exactly on the
    host either way. ``cuml`` when cuML and a GPU are there but torch sees no GPU; asked for by name
    otherwise.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsclust._atomic import atomic_write_bytes, atomic_write_json
from zsclust.cluster._distances import umap_metric
from zsclust.cluster._probe import probe
from zsclust.cluster._store import KeyedStore
from zsclust.cluster._progress import bar, stage
from zsclust.errors import ConfigError

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1
METHODS = ("auto", "exact", "nndescent", "cuml")
EXACT_MAX_WORK = 1.0e13
"""``auto`` searches exactly while N * N * D stays below this (a block of float32 GEMMs)."""
EXACT_MAX_WORK_GPU = 1.0e16
"""The same bound when the products run on a CUDA GPU (1M x 768 is 7.7e14)."""
_CANDIDATE_MARGIN = 16  # extra candidates per row from the float32 product, re-ranked exactly
_BLOCK_BYTES = 256 * 2**20  # one block of the distance matrix
_DEVICE_BLOCK_BYTES = 2**30  # the same on a CUDA device
_ANGULAR = ("cosine", "correlation", "dice", "jaccard", "ll_dirichlet", "hellinger")
_GEMM_METRICS = ("euclidean", "cosine", "correlation")
SHARED_METRICS = frozenset({*_GEMM_METRICS, "manhattan"})
"""Metrics (umap-learn's names, :func:`~zsclust.cluster._distances.umap_metric`) a shared graph is built for
(exact and NNDescent agree on them); UMAP with any other metric (umap-only ones such as ``hellinger``, or
``precomputed``) searches its own neighbours, as umap-learn does."""

__all__ = ["EXACT_MAX_WORK", "KnnGraph", "KnnGraphStore", "compute_knn_graph", "exact_knn", "resolve_method"]


@dataclass(frozen=True)
class KnnGraph:
    """Each row's ``n_neighbors`` nearest points, nearest first (the point itself first, at distance 0)."""

    indices: np.ndarray  # (n, k) int64
    distances: np.ndarray  # (n, k) float32
    metric: str
    method: str  # exact | nndescent | cuml
    seed: int | None = None  # NNDescent's seed (None: the graph does not depend on one)
    rng_state: tuple | None = field(default=None, repr=False)  # the RandomState NNDescent left behind

    @property
    def n_neighbors(self) -> int:
        return int(self.indices.shape[1])

    def describe(self) -> dict:
        """What the graph is, for cache keys and run records."""
        out = {"method": self.method, "metric": self.metric, "n_neighbors": self.n_neighbors}
        if self.seed is not None:
            out["seed"] = int(self.seed)
        return out


# ----------------------------------------------------------------------------------- methods


def resolve_method(method: str, n_samples: int, n_features: int, metric: str = "euclidean") -> str:
    """The method ``method`` means for data of this shape (``auto`` decided; see the module docstring)."""
    if method not in METHODS:
        raise ConfigError(f"knn graph method {method!r} is not one of {', '.join(METHODS)}.")
    if method != "auto":
        return method
    from zsclust.cluster._gpu import cuda_available, fits_on, want_gpu

    work = float(n_samples) ** 2 * n_features
    gemm = umap_metric(metric) in _GEMM_METRICS
    device = _products_device(None) if gemm and cuda_available() else None  # no torch import without a GPU
    if device is not None and device.type == "cuda" and fits_on(device, _device_bytes(n_samples, n_features)):
        return "exact" if work <= EXACT_MAX_WORK_GPU else "nndescent"
    if gemm and want_gpu("auto", "knn graph"):
        return "cuml"
    return "exact" if work <= EXACT_MAX_WORK else "nndescent"


def _umap_distance(metric: str):
    """umap-learn's numba distance function for ``metric`` (what its own exact search uses)."""
    from umap import distances

    try:
        return distances.named_distances[metric]
    except KeyError:
        raise ConfigError(f"knn graph: umap-learn has no metric {metric!r}; choose one of "
                          f"{', '.join(sorted(distances.named_distances))}.") from None


_REFINE = None


def _refine_kernel():
    """Lazily compiled: distances of each row to its candidates with a numba distance function."""
    global _REFINE
    if _REFINE is None:
        import numba

        @numba.njit(nogil=True)
        def refine(X, rows, cand, dist):
            out = np.empty(cand.shape, dtype=np.float64)
            for i in range(cand.shape[0]):
                for j in range(cand.shape[1]):
                    out[i, j] = dist(X[rows[i]], X[cand[i, j]])
            return out

        _REFINE = refine
    return _REFINE


def _candidate_scores(Xb: np.ndarray, Y: np.ndarray, y_sq: np.ndarray | None, metric: str):
    """A block's scores against all rows (smaller = nearer): exact up to float32 rounding."""
    if metric in _GEMM_METRICS:
        s = Xb @ Y.T
        if metric == "euclidean":
            s *= -2.0
            s += y_sq[None, :]
            return s  # + |x|^2 (constant per row) left out: it does not change the row's order
        return -s  # cosine/correlation: rows are normalised, larger dot = nearer
    from sklearn.metrics import pairwise_distances

    return pairwise_distances(Xb, Y, metric=metric)


def _prepare_gemm(X: np.ndarray, metric: str):
    # float64 data (HDBSCAN's) get float64 products: tightly packed points (UMAP with min_dist 0) have
    # neighbour distances far below float32's rounding of |x|^2 + |y|^2 - 2xy
    dtype = np.float64 if X.dtype == np.float64 else np.float32
    Y = np.asarray(X, dtype=dtype)
    kind = metric if metric in _GEMM_METRICS else None
    if kind == "euclidean":
        Y = Y - Y.mean(axis=0, dtype=np.float64).astype(dtype)  # smaller norms: less cancellation
        return np.ascontiguousarray(Y), np.einsum("ij,ij->i", Y, Y)
    if kind is not None:
        if kind == "correlation":
            Y = Y - Y.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(Y, axis=1, keepdims=True)
        return np.ascontiguousarray(Y / np.where(norms > 0, norms, 1)), None
    return np.ascontiguousarray(np.asarray(X, dtype=np.float64)), None


def _products_device(device):
    """The torch device for the candidate products: ``device`` as given, or (None) the CUDA device when torch
    sees one and ``ZSCLUST_GPU`` allows it, the CPU otherwise."""
    import torch

    from zsclust.cluster._gpu import torch_device

    return torch.device(device) if device is not None else torch_device()


def _device_bytes(n: int, d: int, itemsize: int = 4) -> int:
    """CUDA memory of the candidate search: the data and two blocks of scores."""
    return n * d * itemsize + 2 * _DEVICE_BLOCK_BYTES


class _DeviceCandidates:
    """Each row's ``m`` best-scoring candidates and the next score after them, from torch products on
    ``device`` (the same scores as :func:`_candidate_scores`, in the data's precision, never TF32).

    torch also on the CPU: its ``topk`` runs on every core, where NumPy's ``argpartition`` of a block
    takes one; the 20k x 768 30-NN graph took 6 s instead of 17 s on two cores, the same arrays."""

    def __init__(self, Y: np.ndarray, y_sq, metric: str, m: int, device):
        import torch

        self.block_bytes = _DEVICE_BLOCK_BYTES if device.type == "cuda" else _BLOCK_BYTES
        self.Y = torch.as_tensor(Y).to(device)  # no copy on the CPU
        self.y_sq = None if y_sq is None else torch.as_tensor(y_sq).to(device)
        self.metric, self.m = metric, m

    def __call__(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from zsclust.cluster._gpu import full_float32_products

        with full_float32_products(), torch.no_grad():
            if self.metric == "euclidean":
                s = torch.addmm(self.y_sq[None, :], self.Y[start:stop], self.Y.T, alpha=-2.0)
                best = torch.topk(s, self.m + 1, dim=1, largest=False, sorted=True)
                next_score = best.values[:, self.m]
            else:  # score = -similarity: the largest products, without a negated copy of the block
                best = torch.topk(self.Y[start:stop] @ self.Y.T, self.m + 1, dim=1, largest=True, sorted=True)
                next_score = -best.values[:, self.m]
        return best.indices[:, :self.m].cpu().numpy(), next_score.cpu().numpy()


class _RoundingCheck:
    """Rows whose candidate list the products' rounding could have cut short, and their exact scores.

    A product of length D errs by at most D * eps * |x| |y| (eps of the products' precision). A row is
    sure when its k-th exact distance, in score units, lies below the best score left out by more than
    twice that bound; the other rows are searched again with float64 products (cheap: tight clusters
    of near-duplicates are where it happens).
    """

    def __init__(self, X: np.ndarray, Y: np.ndarray, y_sq, metric: str):
        self.X, self.Y, self.metric, self.kind = X, Y, metric, metric
        eps = float(np.finfo(Y.dtype).eps)
        norms = np.sqrt(y_sq.astype(np.float64)) if y_sq is not None else np.ones(len(Y))
        big = float(norms.max()) if len(norms) else 0.0
        self.x_sq = norms ** 2
        self.err = 2.0 * X.shape[1] * eps * (2.0 * norms * big + big ** 2) + 1e-300
        self._Y64 = None

    def unsure(self, rows: np.ndarray, kth_distance: np.ndarray, next_score: np.ndarray) -> np.ndarray:
        if self.kind == "euclidean":  # score = |x - y|^2 - |x|^2 (centred data)
            kth = kth_distance.astype(np.float64) ** 2 - self.x_sq[rows]
        else:  # cosine/correlation: score = -similarity = distance - 1
            kth = kth_distance.astype(np.float64) - 1.0
        return ~(kth + self.err[rows] < next_score.astype(np.float64))

    def exact_candidates(self, rows: np.ndarray, m: int) -> np.ndarray:
        """The ``m`` best candidates of ``rows`` by float64 products (a float64 copy of the data, made the first
        time; the rows in chunks of at most 256 MiB of scores)."""
        if self._Y64 is None:
            self._Y64, sq = _prepare_gemm(np.asarray(self.X, dtype=np.float64), self.metric)
            self._sq64 = sq
        step = max(1, _BLOCK_BYTES // (8 * len(self._Y64)))
        return np.concatenate([np.argpartition(_candidate_scores(self._Y64[rows[i:i + step]], self._Y64, self._sq64,
                                                                 self.metric), m - 1, axis=1)[:, :m]
                               for i in range(0, rows.size, step)])


def exact_knn(X: np.ndarray, n_neighbors: int, metric: str = "euclidean", *, distance=None,
              what: str = "exact kNN", device=None) -> tuple[np.ndarray, np.ndarray]:
    """Every row's ``n_neighbors`` nearest rows of ``X`` (itself included), nearest first, and their distances.

    Candidates come from blocks of the full distance matrix (torch products in X's precision, float32 or
    float64, and ``topk``, for euclidean, cosine and correlation; scikit-learn's ``pairwise_distances``
    for other metrics), ``n_neighbors + 16`` per row; their distances are then recomputed exactly with
    ``distance`` (a numba function of two rows; umap-learn's for ``metric`` by default) on ``X`` as
    given, and sorted (ties by index). Rows whose candidates the products' rounding could have cut
    short are searched again in float64 (:class:`_RoundingCheck`). Memory: the input, one block of at
    most 256 MiB, and the (N, n_neighbors) result; a float64 copy of the input once a row needs the
    float64 search.

    ``device``: where torch computes the candidates for euclidean, cosine and correlation: None for a CUDA
    GPU when torch sees one (1 GiB blocks, the data copied there once), the CPU otherwise; or a torch
    device by name. The result does not depend on it.
    """
    X = np.ascontiguousarray(X)
    n, d = X.shape
    k = int(n_neighbors)
    metric = umap_metric(metric)
    if not 1 <= k <= n:
        raise ConfigError(f"{what}: n_neighbors={k} must be between 1 and N={n}.")
    m = min(n, k + _CANDIDATE_MARGIN)
    distance = distance or _umap_distance(metric)
    refine = _refine_kernel()
    Y, y_sq = _prepare_gemm(X, metric)
    check = _RoundingCheck(X, Y, y_sq, metric) if m < n and metric in _GEMM_METRICS else None
    from zsclust.cluster._gpu import fits_on

    on = _products_device(device) if check is not None else None
    if on is not None and device is None and not fits_on(on, _device_bytes(n, d, Y.itemsize)):
        log.warning("%s: %s has too little free memory for the %.1f GiB of data; the products run on the CPU.",
                    what, on, Y.nbytes / 2**30)
        on = _products_device("cpu")
    candidates = _DeviceCandidates(Y, y_sq, metric, m, on) if on is not None else None
    block_bytes = candidates.block_bytes if candidates is not None else _BLOCK_BYTES
    rows_per_block = max(1, min(n, block_bytes // (Y.itemsize * n)))
    indices = np.empty((n, k), dtype=np.int64)
    dists = np.empty((n, k), dtype=np.float64)
    n_blocks = -(-n // rows_per_block)
    where = f", products on {on}" if on is not None and on.type != "cpu" else ""
    with stage(f"{what}: {n:,} x {d} ({metric}), {k} neighbours{where}", n), \
            bar(n_blocks, what, n, unit="block") as progress:
        for start in range(0, n, rows_per_block):
            stop = min(n, start + rows_per_block)
            rows = np.arange(start, stop)
            if candidates is not None:
                cand, next_score = candidates(start, stop)
            elif m < n:  # metrics without products
                scores = _candidate_scores(Y[start:stop], Y, y_sq, metric)
                part = np.argpartition(scores, m, axis=1)
                cand = part[:, :m]
                next_score = np.take_along_axis(scores, part[:, m:m + 1], axis=1)[:, 0]
                del scores
            else:
                cand = np.broadcast_to(np.arange(n), (stop - start, n)).copy()
            exact = refine(X, rows, np.ascontiguousarray(cand), distance)
            order = np.lexsort((cand, exact), axis=1)[:, :k]
            idx_b = np.take_along_axis(cand, order, axis=1)
            dist_b = np.take_along_axis(exact, order, axis=1)
            if check is not None:
                unsure = check.unsure(rows, dist_b[:, -1], next_score)
                if unsure.any():  # rounding could have left a true neighbour out: these rows again, in float64
                    r = rows[unsure]
                    cand64 = check.exact_candidates(r, m)
                    ex = refine(X, r, np.ascontiguousarray(cand64), distance)
                    o = np.lexsort((cand64, ex), axis=1)[:, :k]
                    idx_b[unsure] = np.take_along_axis(cand64, o, axis=1)
                    dist_b[unsure] = np.take_along_axis(ex, o, axis=1)
            indices[start:stop] = idx_b
            dists[start:stop] = dist_b
            progress.update(1)
    return indices, dists


def _nndescent(X: np.ndarray, n_neighbors: int, metric: str, seed: int):
    """umap-learn's own graph (what ``UMAP.fit`` computes above 4096 points), and the RandomState after it."""
    from umap.umap_ import nearest_neighbors

    rs = np.random.RandomState(seed)
    angular = metric in _ANGULAR  # as UMAP.fit sets angular_rp_forest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idx, dist, _ = nearest_neighbors(np.asarray(X, dtype=np.float32), int(n_neighbors), metric, {}, angular, rs,
                                         low_memory=True, use_pynndescent=True, n_jobs=1, verbose=False)
    return idx, dist, rs.get_state()


def _cuml_knn(X: np.ndarray, n_neighbors: int, metric: str):
    from zsclust.cluster._gpu import require_gpu, to_numpy

    require_gpu("knn graph")
    from cuml.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=int(n_neighbors), metric=metric)
    dist, idx = nn.fit(np.asarray(X, dtype=np.float32)).kneighbors(np.asarray(X, dtype=np.float32))
    return to_numpy(idx).astype(np.int64), to_numpy(dist)


def compute_knn_graph(X, n_neighbors: int, metric: str = "euclidean", *, method: str = "auto",
                      seed: int = 0) -> KnnGraph:
    """The ``n_neighbors``-NN graph of ``X`` by ``method`` (see the module docstring)."""
    X = np.asarray(X)
    n, d = X.shape
    metric = umap_metric(metric)
    chosen = resolve_method(method, n, d, metric)
    if chosen == "exact":
        # as umap-learn does: its distance function on the float32 data
        idx, dist = exact_knn(np.asarray(X, dtype=np.float32), n_neighbors, metric, what="knn graph (exact)")
        return KnnGraph(idx, dist.astype(np.float32), metric, "exact")
    if chosen == "nndescent":
        with stage(f"knn graph (NNDescent, seed {seed}): {n:,} x {d}, {n_neighbors} neighbours", n):
            idx, dist, state = _nndescent(X, n_neighbors, metric, seed)
        return KnnGraph(np.asarray(idx, dtype=np.int64), np.asarray(dist, dtype=np.float32), metric, "nndescent",
                        int(seed), state)
    with stage(f"knn graph (cuML): {n:,} x {d}, {n_neighbors} neighbours", n):
        idx, dist = _cuml_knn(X, n_neighbors, metric)
    return KnnGraph(idx, np.asarray(dist, dtype=np.float32), metric, "cuml")


# ----------------------------------------------------------------------------------- store


class KnnGraphStore(KeyedStore):
    """Graphs on disk (``<key>.npz`` + ``<key>.json`` sidecar, written atomically, array first) and in memory.

    Keyed by the embedding fingerprint, ``n_neighbors``, the metric, the method (as resolved for the
    data's shape) and, for NNDescent, its seed. A per-key file lock makes concurrent workers compute
    a graph once. Like the reduction cache, the sidecar keeps a digest of 64 rows of ``X``, so other
    data under the same fingerprint is refused, and a damaged entry is recomputed.
    """

    def __init__(self, directory, *, memory_items: int = 2):
        super().__init__(directory, memory_items=memory_items)

    @staticmethod
    def key_inputs(*, embedding_fingerprint: str, n_neighbors: int, metric: str, method: str,
                   seed: int | None) -> dict:
        return {"format": GRAPH_FORMAT, "embedding_fingerprint": embedding_fingerprint,
                "n_neighbors": int(n_neighbors), "metric": umap_metric(metric), "method": method,
                "seed": None if method != "nndescent" else int(seed)}

    def get_or_compute(self, X, *, embedding_fingerprint: str, n_neighbors: int, metric: str = "euclidean",
                       method: str = "auto", seed: int = 0) -> tuple[KnnGraph, bool]:
        """The graph, and whether it was stored already."""
        X = np.asarray(X)
        chosen = resolve_method(method, X.shape[0], X.shape[1], metric)
        inputs = self.key_inputs(embedding_fingerprint=embedding_fingerprint, n_neighbors=n_neighbors, metric=metric,
                                 method=chosen, seed=seed)
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        rows = probe(X)

        def make() -> KnnGraph:
            graph = compute_knn_graph(X, n_neighbors, metric, method=chosen, seed=seed)
            self._store(key, inputs, graph, rows)
            return graph

        return self._get_or_make(key, rows, embedding_fingerprint, make)

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.directory / f"{key}.npz", self.directory / f"{key}.json"

    def _store(self, key: str, inputs: dict, graph: KnnGraph, probe: str) -> None:
        npz, sidecar = self._paths(key)
        arrays = {"indices": graph.indices, "distances": graph.distances}
        if graph.rng_state is not None:
            name, keys, pos, has_gauss, gauss = graph.rng_state
            arrays.update(rng_keys=np.asarray(keys), rng_pos=np.asarray([pos, has_gauss]), rng_gauss=np.asarray([gauss]))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        payload = buf.getvalue()
        meta = {"key": key, **inputs, "graph": graph.describe(), "shape": list(graph.indices.shape),
                "sha256": hashlib.sha256(payload).hexdigest(), "x_probe": probe}
        try:
            atomic_write_bytes(npz, lambda f: f.write(payload))
            atomic_write_json(sidecar, meta)
        except OSError as err:
            warnings.warn(f"knn graph store: cannot write to {self.directory} ({err}); the graph is not kept.",
                          RuntimeWarning, stacklevel=3)

    def _load(self, key: str) -> tuple[KnnGraph, str] | None:
        npz, sidecar = self._paths(key)
        if not npz.exists() or not sidecar.exists():
            return None
        try:
            meta = json.loads(sidecar.read_text())
            payload = npz.read_bytes()
            if meta.get("key") != key or hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
                raise ValueError("checksum or key mismatch")
            with np.load(io.BytesIO(payload), allow_pickle=False) as z:
                idx, dist = z["indices"], z["distances"]
                state = None
                if "rng_keys" in z:
                    pos, has_gauss = (int(v) for v in z["rng_pos"])
                    state = ("MT19937", z["rng_keys"], pos, has_gauss, float(z["rng_gauss"][0]))
            g = meta["graph"]
            if list(idx.shape) != meta.get("shape") or idx.shape != dist.shape:
                raise ValueError("shape mismatch")
            graph = KnnGraph(idx, dist, g["metric"], g["method"], g.get("seed"), state)
            x_probe = meta["x_probe"]
            if not isinstance(x_probe, str):
                raise ValueError("x_probe is not a string")
        except (OSError, ValueError, KeyError, TypeError, EOFError, json.JSONDecodeError) as err:
            log.warning("knn graph entry %s is unreadable or damaged (%s); recomputing", key[:12], err)
            return None
        return graph, x_probe
