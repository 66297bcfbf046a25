"""OPTICS and graph community detection (Louvain, Leiden): the other clusterers of the study's code.

Louvain, as the study runs it, builds a *dense* graph over all N points, edge weights 1/(1 + d)
(d the distance under ``metric``), self-loops removed, and partitions it with networkx's
``louvain_communities`` (resolution 1). That graph has N(N-1)/2 edges, and networkx keeps each one
as Python dicts (up to about 800 bytes an edge at peak), so it is only for small N: ``fit_memory`` counts
it and the memory guard refuses it where it would not fit. ``graph="knn"`` keeps only each point's
``n_neighbors`` nearest neighbours (same weights, symmetrised by keeping an edge found from either
end): memory linear in N. See docs/methods.md for how the two differ.

Leiden runs on the same graphs through igraph's C implementation (``community_leiden`` with the
modularity objective), which is much faster than networkx and stores an edge in tens of bytes.

Community labels are numbered by each community's first sample (label 0 holds sample 0), so equal
partitions give equal labels whatever order the library returns them in. No point is noise.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import sklearn.cluster as skc
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from zsclust.cluster._clusterers import GuardedClusterMixin, register_clusterer
from zsclust.cluster._validation import check_at_most_n

__all__ = ["LeidenClusterer", "LouvainClusterer", "OPTICSClusterer", "affinity_graph", "labels_from_communities"]

_F64 = 8

GRAPH_METRICS = {"euclidean", "l2", "l1", "manhattan", "cityblock", "chebyshev", "cosine"}

# Bytes per undirected edge at the peak of networkx's louvain_communities on a weighted graph (the
# adjacency dicts both ways, the weight dicts, and the working copy of the first aggregation level):
# tracemalloc sees ~630 B (networkx 3.6, N = 300-1200), the process's peak RSS 690-755 B at N = 1000-1500
# (benchmarks/methods_speed.py).
_NX_BYTES_PER_EDGE = 800
# Per node: the library's node records and the partition's working sets (matters at small N only).
_BYTES_PER_NODE = 4096
# igraph (C, not seen by tracemalloc): the edge list and its indices, the weights, and the arrays they are
# built from; peak RSS ~220 B an edge at N = 1000-2000 (benchmarks/methods_speed.py).
_IGRAPH_BYTES_PER_EDGE = 256


def affinity_graph(X: np.ndarray, *, graph: str = "dense", metric: str = "euclidean", n_neighbors: int = 15,
                   remove_self_loops: bool = True, n_jobs: int | None = None):
    """The weighted graph the community detectors partition: weights ``1 / (1 + distance)``.

    ``graph="dense"``: an N x N ndarray over every pair (the study's). ``graph="knn"``: a symmetric
    scipy CSR matrix holding each point's ``n_neighbors`` nearest neighbours (an edge found from either
    end is kept). Self-loops (weight 1, distance 0) are on the diagonal unless removed.
    """
    if graph == "dense":
        from sklearn.metrics import pairwise_distances

        W = pairwise_distances(X, metric=metric, n_jobs=n_jobs)
        W += 1.0
        np.reciprocal(W, out=W)
        np.fill_diagonal(W, 0.0 if remove_self_loops else 1.0)
        return W
    import scipy.sparse as sp
    from sklearn.neighbors import kneighbors_graph

    A = kneighbors_graph(X, n_neighbors, mode="distance", metric=metric, include_self=False, n_jobs=n_jobs)
    A.data = 1.0 / (1.0 + A.data)
    W = A.maximum(A.T).tocsr()  # the weight is symmetric, so this is the union of both directions
    if not remove_self_loops:
        W = (W + sp.identity(W.shape[0], format="csr")).tocsr()
    W.eliminate_zeros()
    return W


def labels_from_communities(communities, n_samples: int) -> np.ndarray:
    """A partition (iterables of sample indices) → labels numbered by each community's smallest index."""
    labels = np.full(n_samples, -1, dtype=np.intp)
    for label, members in enumerate(sorted((sorted(c) for c in communities), key=lambda c: c[0])):
        labels[members] = label
    if (labels < 0).any():
        raise RuntimeError(f"community detection left {(labels < 0).sum()} samples without a community")
    return labels


class _CommunityClusterer(GuardedClusterMixin, ClusterMixin, BaseEstimator):
    """Shared by Louvain and Leiden: the graph (dense or kNN), its checks and its memory."""

    _bytes_per_edge = _NX_BYTES_PER_EDGE

    _parameter_constraints: dict = {
        "resolution": [Interval(Real, 0, None, closed="neither")],
        "graph": [StrOptions({"dense", "knn"})],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "metric": [StrOptions(GRAPH_METRICS)],
        "remove_self_loops": ["boolean"],
        "random_state": ["random_state"],
        "n_jobs": [Integral, None],
    }

    def _check_against_data(self, n_samples):
        if self.graph == "knn":
            check_at_most_n(self.n_neighbors, n_samples - 1, param="n_neighbors", owner=self._display_name(),
                            hint="(graph='knn' links each sample to n_neighbors others)")

    def _n_edges(self, n: int) -> int:
        if self.graph == "dense":
            return n * (n - 1) // 2 + (0 if self.remove_self_loops else n)
        return n * min(int(self.n_neighbors), max(n - 1, 1)) + (0 if self.remove_self_loops else n)

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        edges = self._n_edges(n) * self._bytes_per_edge + n * _BYTES_PER_NODE
        if self.graph == "dense":
            # the N x N weight matrix, alive while the graph is built from it (counted on top: an upper bound)
            return n * n * _F64 + edges + n * d * _F64, \
                f"dense graph: NxN weights, then N(N-1)/2 edges at ~{self._bytes_per_edge} B each (use graph='knn' " \
                "for large N)"
        k = int(self.n_neighbors)
        return n * k * 2 * (_F64 + 8) * 2 + edges + 2 * n * d * _F64, \
            f"kNN graph: N x n_neighbors edges at ~{self._bytes_per_edge} B each (linear in N)"

    def _graph(self, X):
        """The library's graph object; the weight matrix it is built from is freed on return."""
        return self._to_graph(affinity_graph(X, graph=self.graph, metric=self.metric, n_neighbors=self.n_neighbors,
                                             remove_self_loops=self.remove_self_loops, n_jobs=self.n_jobs))

    def fit(self, X, y=None):
        """Check parameters, input and memory; build the graph; partition it. Returns self."""
        X = self._prepare_fit(X)
        self.labels_ = labels_from_communities(self._communities(self._graph(X)), X.shape[0])
        self.n_features_in_ = X.shape[1]
        return self


@register_clusterer(
    "louvain",
    test_params={"resolution": 1.0},
    known_answers={"dense": {"random_state": 0}, "knn": {"graph": "knn", "n_neighbors": 10, "random_state": 0}},
)
class LouvainClusterer(_CommunityClusterer):
    """Louvain community detection (networkx's ``louvain_communities``) on an affinity graph (finds K itself).

    Parameters: ``resolution`` (1: modularity; larger gives more, smaller communities), ``graph``
    (``dense``: all pairs, the study's, for small N; ``knn``: each point's ``n_neighbors`` nearest),
    ``metric``, ``remove_self_loops`` (the study's default), ``threshold`` (networkx's modularity-gain
    stopping rule), ``random_state`` (networkx's node order), ``n_jobs`` (distances only).
    """

    _parameter_constraints: dict = {**_CommunityClusterer._parameter_constraints,
                                    "threshold": [Interval(Real, 0, None, closed="left")]}

    def __init__(self, resolution: float = 1.0, graph: str = "dense", n_neighbors: int = 15,
                 metric: str = "euclidean", remove_self_loops: bool = True, threshold: float = 1e-7,
                 random_state=None, n_jobs: int | None = None):
        self.resolution = resolution
        self.graph = graph
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.remove_self_loops = remove_self_loops
        self.threshold = threshold
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _to_graph(self, W):
        import networkx as nx

        return nx.from_numpy_array(W) if isinstance(W, np.ndarray) else nx.from_scipy_sparse_array(W)

    def _communities(self, G):
        import networkx as nx

        seed = self.random_state
        if seed is not None and not isinstance(seed, Integral):
            seed = int(check_random_state(seed).randint(np.iinfo(np.int32).max))
        return nx.community.louvain_communities(G, weight="weight", resolution=self.resolution,
                                                threshold=self.threshold, seed=seed)


@register_clusterer(
    "leiden",
    test_params={"resolution": 1.0},
    known_answers={"dense": {"random_state": 0}, "knn": {"graph": "knn", "n_neighbors": 10, "random_state": 0}},
)
class LeidenClusterer(_CommunityClusterer):
    """Leiden community detection (igraph's ``community_leiden``, modularity objective) on the same graphs.

    Not in the study; offered because it is fast (C) and compact (~256 B an edge at peak) where networkx's
    Louvain is neither, and it guarantees connected communities. Same parameters as ``louvain``
    plus ``beta`` (randomness of the refinement) and ``n_iterations`` (-1: until stable).
    Needs ``igraph`` (``pip install 'zsclust[methods]'``).
    """

    _bytes_per_edge = _IGRAPH_BYTES_PER_EDGE

    _parameter_constraints: dict = {**_CommunityClusterer._parameter_constraints,
                                    "beta": [Interval(Real, 0, None, closed="neither")],
                                    "n_iterations": [Interval(Integral, -1, None, closed="left")]}

    def __init__(self, resolution: float = 1.0, graph: str = "dense", n_neighbors: int = 15,
                 metric: str = "euclidean", remove_self_loops: bool = True, beta: float = 0.01,
                 n_iterations: int = -1, random_state=None, n_jobs: int | None = None):
        self.resolution = resolution
        self.graph = graph
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.remove_self_loops = remove_self_loops
        self.beta = beta
        self.n_iterations = n_iterations
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _check_params(self):
        if self.n_iterations == 0:
            from zsclust.errors import ConfigError

            raise ConfigError("leiden: n_iterations=0 runs no iteration; use a positive number or -1 (until stable).")

    def _to_graph(self, W):
        import scipy.sparse as sp

        from zsclust.cluster._extra_reducers import _import

        ig = _import("igraph", "The leiden clusterer")
        n = W.shape[0]
        if isinstance(W, np.ndarray):  # every pair i <= j (the diagonal holds the self-loops, if kept)
            rows, cols = np.triu_indices(n, k=0 if not self.remove_self_loops else 1)
            weights = W[rows, cols]
        else:
            upper = sp.triu(W, k=0).tocoo()
            rows, cols, weights = upper.row, upper.col, upper.data
        G = ig.Graph(n=n, edges=np.column_stack([rows, cols]).astype(np.int64), directed=False)
        G.es["weight"] = weights
        return G

    def _communities(self, G):
        import random

        from zsclust.cluster._extra_reducers import _import

        ig = _import("igraph", "The leiden clusterer")
        # igraph draws from a global generator: give it a seeded one for this call, then restore it
        ig.set_random_number_generator(random.Random(int(check_random_state(self.random_state).randint(2**31 - 1))))
        try:
            parts = G.community_leiden(objective_function="modularity", weights="weight",
                                       resolution=self.resolution, beta=self.beta, n_iterations=self.n_iterations)
        finally:
            ig.set_random_number_generator(random)
        return [list(p) for p in parts]


@register_clusterer(
    "optics",
    defaults={"min_samples": 5, "xi": 0.05, "cluster_method": "xi", "metric": "euclidean"},
    test_params={"min_samples": 5},
    known_answers={"xi (study's, min_cluster_size 20)": {"min_cluster_size": 20}, "xi 0.1": {"min_samples": 10, "xi": 0.1},
                   "dbscan": {"cluster_method": "dbscan", "eps": 2.0}},
)
class OPTICSClusterer(GuardedClusterMixin, skc.OPTICS):
    """OPTICS (finds K itself; noise is -1). Registry defaults are the study's: min_samples 5, xi 0.05.

    Memory is linear in N: scikit-learn computes the core distances in chunks bounded by its
    ``working_memory`` setting and each reachability update needs one row of distances.
    """

    def _check_against_data(self, n_samples):
        name = self._display_name()
        if isinstance(self.min_samples, Integral):
            check_at_most_n(self.min_samples, n_samples, param="min_samples", owner=name)
        if isinstance(self.min_cluster_size, Integral):
            check_at_most_n(self.min_cluster_size, n_samples, param="min_cluster_size", owner=name)

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        import sklearn

        params = self.get_params(deep=False)
        k = params.get("min_samples") or 5
        k = int(k * n) if isinstance(k, float) and k <= 1 else int(k)
        chunk = min(n * n * _F64, int(sklearn.get_config()["working_memory"]) * 2**20)
        # input (and its tree), the ordering/reachability/core-distance arrays, the kNN chunk
        return 3 * n * d * _F64 + 8 * n * _F64 + n * k * 16 + chunk, "OPTICS: chunked distances (linear in N)"
