"""Agglomerative clustering at ImageNet size: exact in linear memory where the mathematics allows it.

scikit-learn (through scipy) builds the condensed N(N-1)/2 distance matrix, twice: 20 GiB at 50k
points, 80 GiB at 100k. Ward, centroid, median and single linkage on euclidean features have exact
algorithms that never hold it: fastcluster's ``linkage_vector`` (nearest-neighbour chain for ward,
a minimum spanning tree for single linkage; O(N*D) memory, O(N^2*D) time). Its merge heights are
scipy's (ward: sqrt(2 |u||v| / (|u|+|v|)) * |c_u - c_v|, the distance scikit-learn compares with
``distance_threshold``), and the tree is cut by scikit-learn's own code, so the labels are
scikit-learn's on the same data (ties apart).

Average and complete linkage, and ward/centroid/median on other metrics, have no exact linear-memory
algorithm. ``backend: knn_graph`` fits them on a sparse k-nearest-neighbour connectivity graph
(``knn_neighbors`` per point, made symmetric, components joined; scikit-learn's structured
agglomerative clustering): an approximation, since only pairs joined by the graph can merge first.

``backend``:
  ``auto``        the linear path for a linkage that has one on at most 32 dimensions, where it is also the
                  faster one (10,000 UMAP-5 points: ward 0.6 s against scikit-learn's 4.3 s; its time grows
                  with N^2*D, scipy's pass over the condensed matrix with N^2, so above about 40 dimensions
                  scikit-learn is faster); above that scikit-learn when its N^2 path fits the memory budget
                  (the memory guard is asked), the linear path when the linkage has one, else scikit-learn
                  (and the guard refuses, naming ``knn_graph``); centroid and median linkage always run on
                  fastcluster.
  ``sklearn``     scikit-learn's AgglomerativeClustering as it is.
  ``fastcluster`` exact, linear memory (ward/centroid/median: euclidean; single: most metrics).
  ``knn_graph``   the kNN connectivity approximation (any linkage scikit-learn has).
The path that ran is ``backend_``.
"""

from __future__ import annotations

import importlib.util
from numbers import Integral

import numpy as np
import sklearn.cluster as skc
from sklearn.utils._param_validation import Interval, StrOptions

from zsclust.cluster._backends import BackendMixin
from zsclust.cluster._distances import ALIASES, canonical_metric, is_euclidean
from zsclust.cluster._progress import stage
from zsclust.errors import ConfigError

BACKENDS = ("auto", "sklearn", "fastcluster", "knn_graph")
LINEAR_LINKAGES = ("ward", "centroid", "median", "single")
"""Linkages with an exact algorithm in linear memory (fastcluster.linkage_vector)."""
EUCLIDEAN_ONLY = ("ward", "centroid", "median")
_FASTCLUSTER_METRIC = {"euclidean": "euclidean", "cityblock": "cityblock", "cosine": "cosine",
                       "chebyshev": "chebychev", "sqeuclidean": "sqeuclidean", "canberra": "canberra",
                       "braycurtis": "braycurtis"}
"""fastcluster's name for each canonical metric (:func:`~zsclust.cluster._distances.canonical_metric`)."""
KNN_GRAPH_METRICS = ("euclidean", "cityblock", "cosine", "chebyshev")
"""Metrics ``backend: knn_graph`` builds its connectivity with (and their aliases)."""
_F64 = 8

__all__ = ["BACKENDS", "LINEAR_LINKAGES", "LinkageBackendMixin", "cut_tree", "knn_connectivity", "linear_linkage",
           "n_clusters_at_threshold"]


def fastcluster_available() -> bool:
    return importlib.util.find_spec("fastcluster") is not None


_INSTALL = "pip install 'zsclust[scale]' (fastcluster)"


def _metric_name(metric) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", repr(metric))


def linear_linkage(X: np.ndarray, linkage: str, metric: str = "euclidean") -> np.ndarray:
    """The full merge tree in scipy's format (children, height, size per merge), in O(N*D) memory."""
    import fastcluster

    if linkage not in LINEAR_LINKAGES:
        raise ConfigError(f"linkage={linkage!r} has no linear-memory exact algorithm; use one of "
                          f"{', '.join(LINEAR_LINKAGES)}, or backend: knn_graph.")
    fc_metric = _FASTCLUSTER_METRIC.get(canonical_metric(metric))
    if fc_metric is None or (linkage in EUCLIDEAN_ONLY and fc_metric != "euclidean"):
        raise ConfigError(f"fastcluster: linkage={linkage!r} with metric={metric!r} is not supported; "
                          f"{'/'.join(EUCLIDEAN_ONLY)} need euclidean, single accepts "
                          f"{', '.join(sorted([*_FASTCLUSTER_METRIC, *ALIASES]))}.")
    X = np.ascontiguousarray(X, dtype=np.float64)
    with stage(f"agglomerative ({linkage}, fastcluster, linear memory): {X.shape[0]:,} x {X.shape[1]}",
               X.shape[0]):
        return fastcluster.linkage_vector(X, method=linkage, metric=fc_metric)


def n_clusters_at_threshold(heights: np.ndarray, threshold: float) -> int:
    """scikit-learn's rule: one cluster more than merges at or above ``threshold``."""
    return int(np.count_nonzero(np.asarray(heights) >= threshold)) + 1


def cut_tree(children: np.ndarray, n_leaves: int, n_clusters: int) -> np.ndarray:
    """Labels of the ``n_clusters`` clusters left when the top merges are undone (scikit-learn's cut)."""
    children = np.asarray(children, dtype=np.intp)
    try:  # scikit-learn's own cut: the same cluster numbering as AgglomerativeClustering
        from sklearn.cluster._agglomerative import _hc_cut

        return np.asarray(_hc_cut(int(n_clusters), children, int(n_leaves)))
    except ImportError:  # pragma: no cover - a private helper moved: the same partition, numbered by order
        parent = np.arange(2 * n_leaves - 1)
        keep = n_leaves - n_clusters
        new = n_leaves + np.arange(keep)
        parent[children[:keep, 0]] = new
        parent[children[:keep, 1]] = new
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
        return np.unique(parent[:n_leaves], return_inverse=True)[1]


def knn_connectivity(X: np.ndarray, n_neighbors: int, metric: str):
    """A symmetric sparse kNN connectivity matrix with every component joined to the rest.

    Components are joined along a minimum spanning tree of their centroids, each edge linking the
    point of one component nearest the other's centroid: scikit-learn would otherwise join them with
    the full distance matrix between components, O(N^2) memory for two large ones.
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    from zsclust.cluster._knn_graph import compute_knn_graph

    n = X.shape[0]
    k = min(int(n_neighbors) + 1, n)
    graph = compute_knn_graph(np.asarray(X, dtype=np.float32), k, metric, method="auto")
    rows = np.repeat(np.arange(n), k)
    cols = graph.indices.ravel()
    ok = (cols >= 0) & (cols != rows)
    A = sp.coo_matrix((np.ones(ok.sum(), dtype=np.float64), (rows[ok], cols[ok])), shape=(n, n)).tocsr()
    A = ((A + A.T) > 0).astype(np.float64)
    n_comp, comp = connected_components(A, directed=False)
    if n_comp > 1:
        extra_r, extra_c = [], []
        order = np.argsort(comp, kind="stable")  # the members of component c: order[starts[c]:starts[c + 1]]
        starts = np.concatenate([[0], np.cumsum(np.bincount(comp, minlength=n_comp))])
        centroids = np.zeros((n_comp, X.shape[1]))
        np.add.at(centroids, comp, X)
        centroids /= np.diff(starts)[:, None]
        for a, b in _centroid_tree(centroids):
            ia, ib = order[starts[a]:starts[a + 1]], order[starts[b]:starts[b + 1]]
            pa = ia[np.argmin(((X[ia] - centroids[b]) ** 2).sum(axis=1))]
            pb = ib[np.argmin(((X[ib] - centroids[a]) ** 2).sum(axis=1))]
            extra_r += [pa, pb]
            extra_c += [pb, pa]
        A = (A + sp.coo_matrix((np.ones(len(extra_r)), (extra_r, extra_c)), shape=(n, n)).tocsr() > 0)
        A = A.astype(np.float64)
    return A.tocsr()


_DENSE_TREE_MAX = 4096  # components up to which the centroid tree is exact (a 134 MB distance matrix)


def _centroid_tree(centroids: np.ndarray) -> list[tuple[int, int]]:
    """Edges joining every centroid: their minimum spanning tree (exact up to ``_DENSE_TREE_MAX`` centroids; above,
    over a 30-nearest-neighbour graph of the centroids, whose own components are then chained in order)."""
    from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

    c = centroids.shape[0]
    if c <= _DENSE_TREE_MAX:
        from sklearn.metrics import pairwise_distances

        tree = minimum_spanning_tree(pairwise_distances(centroids) + 1e-12).tocoo()
        return list(zip(tree.row.tolist(), tree.col.tolist()))
    from sklearn.neighbors import NearestNeighbors

    graph = NearestNeighbors(n_neighbors=min(31, c)).fit(centroids).kneighbors_graph(mode="distance")
    graph.data += 1e-12
    tree = minimum_spanning_tree(graph.maximum(graph.T)).tocoo()
    edges = list(zip(tree.row.tolist(), tree.col.tolist()))
    n_meta, meta = connected_components(tree, directed=False)
    firsts = [int(np.flatnonzero(meta == m)[0]) for m in range(n_meta)]
    return edges + list(zip(firsts[:-1], firsts[1:]))


LINEAR_FASTER_UP_TO_D = 32
"""Up to this many dimensions ``auto`` takes the linear path whatever the memory: it is the faster one there."""
LINEAR_WITHOUT_BUDGET_FROM = 20_000
"""With no memory budget known, ``auto`` takes the linear-memory path from this many points (3 GiB of N² distances)."""


class LinkageBackendMixin(BackendMixin):
    """``backend`` and ``knn_neighbors`` for :class:`~zsclust.cluster.AgglomerativeClusterer` (see the module)."""

    _zs_extra_params = {"backend": "auto", "knn_neighbors": 30}
    _parameter_constraints: dict = {
        **skc.AgglomerativeClustering._parameter_constraints,
        "linkage": [StrOptions({"ward", "complete", "average", "single", "centroid", "median"})],
        "backend": [StrOptions(set(BACKENDS))],
        "knn_neighbors": [Interval(Integral, 1, None, closed="left")],
    }
    _zs_backend_known_answers = {} if not fastcluster_available() else {
        "K (ward, fastcluster)": {"n_clusters": 4, "backend": "fastcluster"},
        "distance_threshold (ward, fastcluster)": {"n_clusters": None, "distance_threshold": 20.0,
                                                   "backend": "fastcluster"},
        "K (centroid)": {"n_clusters": 4, "linkage": "centroid"},
        "K (single, l1, fastcluster)": {"n_clusters": 4, "linkage": "single", "metric": "l1",
                                        "backend": "fastcluster"},
        "K (average, cosine, knn_graph)": {"n_clusters": 4, "linkage": "average", "metric": "cosine",
                                           "backend": "knn_graph", "knn_neighbors": 10},
    }

    # -- which path ----------------------------------------------------------------------------
    def _metric(self) -> str:
        return _metric_name(self.metric)

    def _linear_possible(self) -> bool:
        if self.connectivity is not None or self.linkage not in LINEAR_LINKAGES or not fastcluster_available():
            return False
        fc = _FASTCLUSTER_METRIC.get(canonical_metric(self._metric()))
        return fc is not None and (self.linkage not in EUCLIDEAN_ONLY or fc == "euclidean")

    def _check_backend(self) -> None:
        name = self._display_name()
        backend, linkage = self.backend, self.linkage
        if (backend == "fastcluster" or linkage in ("centroid", "median")) and not fastcluster_available():
            raise ConfigError(f"{name}: {'linkage=' + repr(linkage) if backend != 'fastcluster' else 'backend=fastcluster'}"
                              f" needs fastcluster: {_INSTALL}.")
        if linkage in ("centroid", "median"):
            if backend in ("sklearn", "knn_graph"):
                raise ConfigError(f"{name}: linkage={linkage!r} exists only in the fastcluster backend; use "
                                  f"backend: auto or fastcluster (scikit-learn has ward, complete, average, single).")
            if not is_euclidean(self._metric()):
                raise ConfigError(f"{name}: linkage={linkage!r} requires metric='euclidean', got {self.metric!r}.")
        if backend == "fastcluster" and not self._linear_possible():
            why = ("connectivity is given" if self.connectivity is not None else
                   f"linkage={linkage!r} with metric={self.metric!r} has no exact linear-memory algorithm")
            raise ConfigError(f"{name}: backend='fastcluster' cannot run: {why}. Linear-memory linkages: ward, "
                              "centroid, median (euclidean) and single (most metrics); use backend: knn_graph "
                              "(an approximation) or sklearn.")
        if backend == "knn_graph":
            if self.connectivity is not None:
                raise ConfigError(f"{name}: backend='knn_graph' builds its own connectivity; leave connectivity unset.")
            if canonical_metric(self._metric()) not in KNN_GRAPH_METRICS:
                raise ConfigError(f"{name}: backend='knn_graph' supports metrics "
                                  f"{', '.join(sorted([*KNN_GRAPH_METRICS, *ALIASES]))}, "
                                  f"got {self.metric!r}.")

    def validate_config(self) -> None:
        super().validate_config()
        self._check_backend()

    def _choose_backend(self, n: int, d: int, reference=None) -> str:
        """The path fit will take on (n, d): explicit, or ``auto``'s choice (see the module docstring)."""
        if self.backend != "auto":
            return self.backend
        if self.linkage in ("centroid", "median"):
            return "fastcluster"
        if not self._linear_possible():
            return "sklearn"
        if d <= LINEAR_FASTER_UP_TO_D:
            return "fastcluster"
        from zsclust.cluster._memory import memory_budget

        budget = memory_budget().bytes
        if budget is None:  # no budget to compare with (guard off): the linear path where the N^2 one gets large
            return "fastcluster" if n >= LINEAR_WITHOUT_BUDGET_FROM else "sklearn"
        reference = reference or self._zs_reference_fit_memory
        return "sklearn" if reference(n, d)[0] <= budget else "fastcluster"

    def _backend_fit_memory(self, n: int, d: int, reference) -> tuple[int, str]:
        backend = self._choose_backend(n, d, reference)
        inputs = n * d * _F64
        if backend == "fastcluster":
            # the float64 copy fastcluster works on, its O(N) work arrays and the (N-1, 4) tree
            return 2 * inputs + 12 * n * _F64, f"fastcluster {self.linkage} linkage (linear in N)"
        if backend == "knn_graph":
            k = int(self.knn_neighbors) + 1
            # the graph, its symmetric copy, and scikit-learn's per-node neighbour maps (~150 B per edge)
            return 2 * inputs + n * k * 2 * 150 + n * k * 16, f"kNN connectivity graph, k={k - 1} (linear in N)"
        estimate, why = reference(n, d)
        if self.backend == "auto" and self.linkage in LINEAR_LINKAGES and not fastcluster_available():
            why += f"; {_INSTALL} would fit {self.linkage} linkage in linear memory"
        elif self.backend == "auto" and self.linkage not in LINEAR_LINKAGES and self.connectivity is None:
            why += (f"; linkage={self.linkage!r} has no exact linear-memory algorithm: backend: knn_graph "
                    "approximates it on a kNN graph")
        elif self.backend == "auto" and not self._linear_possible() and self.connectivity is None:
            why += (f"; {self.linkage} linkage with metric={self.metric!r} has no exact linear-memory algorithm: "
                    "backend: knn_graph approximates it on a kNN graph")
        return estimate, why

    # -- fitting -------------------------------------------------------------------------------
    def _fit_fastcluster(self, X: np.ndarray) -> None:
        n = X.shape[0]
        Z = linear_linkage(X, self.linkage, self._metric())
        self.children_ = Z[:, :2].astype(np.intp)
        self.distances_ = Z[:, 2].copy()
        self.n_leaves_ = n
        self.n_connected_components_ = 1
        self.n_features_in_ = X.shape[1]
        if self.distance_threshold is not None:
            self.n_clusters_ = n_clusters_at_threshold(self.distances_, self.distance_threshold)
        else:
            self.n_clusters_ = int(self.n_clusters)
        self.labels_ = cut_tree(self.children_, n, self.n_clusters_)

    def _fit_knn_graph(self, X: np.ndarray) -> None:
        params = {k: v for k, v in self.get_params(deep=False).items() if k not in self._zs_extra_params}
        params["connectivity"] = knn_connectivity(X, self.knn_neighbors, self._metric())
        with stage(f"agglomerative ({self.linkage}, kNN graph k={self.knn_neighbors}): {X.shape[0]:,} x {X.shape[1]}",
                   X.shape[0]):
            inner = skc.AgglomerativeClustering(**params).fit(X)
        for attr in ("labels_", "n_clusters_", "n_leaves_", "n_connected_components_", "children_", "distances_",
                     "n_features_in_"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))
