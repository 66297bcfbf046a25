"""HDBSCAN at large N with scikit-learn's labels: the same algorithm, computed faster.

scikit-learn's HDBSCAN (euclidean) spends its time in two places: a kd-tree search for each point's
core distance, and Prim's algorithm over the implicit mutual-reachability graph (O(N^2 * D): 23 s at
20k x 50, ten minutes at 100k on two cores). The ``numba`` backend computes both exactly:

* core distances from an exact blocked search (float64 products pick candidates, then the distance is
  recomputed exactly as scikit-learn's kd-tree computes it: the same float64 values);
* Prim's algorithm with scikit-learn's visiting order and tie-breaking (the first index among equal
  reachabilities), vectorised across points (the data transposed, each point's sum of squares still
  accumulated in feature order, so every distance is bitwise scikit-learn's), removing visited points
  as it goes.

The minimum spanning tree is then handed to scikit-learn's own tree code (``_process_mst``,
``tree_to_labels``), so labels, probabilities and the single-linkage tree are scikit-learn's: equal
arrays, not merely the same partition (tests/test_scale.py checks this). It is still O(N^2 * D) in
time, about 3x faster at 20k, with O(N * D) memory.

Why not Boruvka (fast_hdbscan, or the hdbscan package's ``boruvka_kdtree``)? They are O(N log N) on
low-dimensional data, but mutual-reachability distances tie often (a point's core distance is the
weight of several of its edges: 17-31 % of the tree's edges on our test data), the minimum spanning
tree is then not unique, and HDBSCAN's condensed tree depends on which one is taken: AMI 0.42-0.99
against scikit-learn's labels on small data (docs/scale.md). fast_hdbscan also computes in float32 and
returned infinite-weight edges on 50-d data. Neither gives "the same labels".

``backend``: ``auto`` (cuML on a GPU; ``numba`` for euclidean, alpha 1, a tree algorithm and at least
:data:`NUMBA_FROM` points; scikit-learn otherwise), ``sklearn``, ``numba``, ``cuml``.
"""

from __future__ import annotations

import numpy as np
import sklearn.cluster as skc
from sklearn.utils._param_validation import StrOptions

from zsclust.cluster._backends import BackendMixin
from zsclust.cluster._distances import is_euclidean
from zsclust.cluster._progress import bar, stage
from zsclust.errors import ConfigError

BACKENDS = ("auto", "sklearn", "numba", "cuml")
NUMBA_FROM = 5_000
"""``auto`` uses the numba path from this many points (below, scikit-learn is as fast and needs no compile)."""
_F64 = 8

__all__ = ["BACKENDS", "HDBSCANBackendMixin", "core_distances", "prim_mst"]

_KERNELS: dict = {}


def _kernels():
    """The numba kernels, compiled (and cached on disk) on first use."""
    if _KERNELS:
        return _KERNELS
    import numba

    @numba.njit(nogil=True, cache=True)
    def euclidean64(x, y):
        # scikit-learn's EuclideanDistance64.dist: the sum of squares in feature order, then sqrt
        d = 0.0
        for k in range(x.shape[0]):
            t = x[k] - y[k]
            d += t * t
        return np.sqrt(d)

    @numba.njit(nogil=True, cache=True)
    def prim_steps(XR, idx, reach, src, cr, state, out_s, out_d, out_w, i0, i1):
        # state = [m (points left), pos (current point's slot), cur (its index)]
        D = XR.shape[0]
        n = out_s.shape[0] + 1
        m, pos, cur = state[0], state[1], state[2]
        xc = np.empty(D)
        acc = np.empty(XR.shape[1])
        for i in range(i0, i1):
            m -= 1  # move the current point out: the last slot fills its place
            for k in range(D):
                xc[k] = XR[k, pos]
                XR[k, pos] = XR[k, m]
            idx[pos] = idx[m]
            reach[pos] = reach[m]
            src[pos] = src[m]
            ccore = cr[pos]
            cr[pos] = cr[m]
            for j in range(m):
                acc[j] = 0.0
            for k in range(D):
                xk = xc[k]
                row = XR[k]
                for j in range(m):
                    t = xk - row[j]
                    acc[j] += t * t
            best = np.inf
            best_i = n
            best_p = 0
            for j in range(m):
                old = reach[j]
                mrd = max(max(ccore, cr[j]), np.sqrt(acc[j]))
                if mrd < old:
                    reach[j] = mrd
                    src[j] = cur
                    val = mrd
                else:
                    val = old
                if val < best or (val == best and idx[j] < best_i):
                    best = val
                    best_i = idx[j]
                    best_p = j
            out_s[i] = src[best_p]
            out_d[i] = best_i
            out_w[i] = best
            cur = best_i
            pos = best_p
        state[0], state[1], state[2] = m, pos, cur

    _KERNELS.update(euclidean64=euclidean64, prim_steps=prim_steps)
    return _KERNELS


def core_distances(X: np.ndarray, min_samples: int) -> np.ndarray:
    """Distance to the ``min_samples``-th nearest point, itself included: scikit-learn's values, exactly."""
    from zsclust.cluster._knn_graph import exact_knn

    _, dist = exact_knn(X, int(min_samples), "euclidean", distance=_kernels()["euclidean64"],
                        what="HDBSCAN core distances")
    return np.ascontiguousarray(dist[:, -1])


def prim_mst(X: np.ndarray, core: np.ndarray):
    """scikit-learn's ``mst_from_data_matrix`` (euclidean, alpha 1): the same edges, in the same order."""
    from sklearn.cluster._hdbscan._linkage import MST_edge_dtype

    prim_steps = _kernels()["prim_steps"]
    X = np.ascontiguousarray(X, dtype=np.float64)
    n = X.shape[0]
    XR = np.ascontiguousarray(X.T)
    idx = np.arange(n, dtype=np.int64)
    reach = np.full(n, np.inf)
    src = np.ones(n, dtype=np.int64)
    cr = np.ascontiguousarray(core, dtype=np.float64).copy()
    state = np.zeros(3, dtype=np.int64)
    state[0] = n
    out_s, out_d, out_w = np.empty(n - 1, np.int64), np.empty(n - 1, np.int64), np.empty(n - 1)
    chunk = max(2_000, (n - 1) // 50)
    with stage(f"HDBSCAN minimum spanning tree (Prim's, numba): {n:,} x {X.shape[1]}", n), \
            bar(n - 1, "HDBSCAN MST", n, unit="pt") as progress:
        for i0 in range(0, n - 1, chunk):
            i1 = min(n - 1, i0 + chunk)
            prim_steps(XR, idx, reach, src, cr, state, out_s, out_d, out_w, i0, i1)
            progress.update(i1 - i0)
    return np.rec.fromarrays([out_s, out_d, out_w], dtype=MST_edge_dtype)


class HDBSCANBackendMixin(BackendMixin):
    """``backend`` for :class:`~zsclust.cluster.HDBSCANClusterer` (see the module docstring)."""

    _zs_extra_params = {"backend": "auto"}
    _parameter_constraints: dict = {**skc.HDBSCAN._parameter_constraints, "backend": [StrOptions(set(BACKENDS))]}
    _zs_backend_known_answers = {"eom (numba)": {"min_cluster_size": 10, "backend": "numba"},
                                 "leaf (numba)": {"min_cluster_size": 10, "cluster_selection_method": "leaf",
                                                  "backend": "numba"}}

    def _numba_possible(self) -> bool:
        return (is_euclidean(self.metric) and float(self.alpha) == 1.0 and not self.metric_params
                and self.algorithm in ("auto", "kd_tree", "ball_tree"))

    def validate_config(self) -> None:
        super().validate_config()
        if self.backend == "cuml" and not self._cuml_possible():
            raise ConfigError(f"{self._display_name()}: backend='cuml' computes euclidean HDBSCAN without "
                              f"metric_params; got metric={self.metric!r}, metric_params={self.metric_params!r}. "
                              "Use backend: sklearn or auto.")
        if self.backend == "numba" and not self._numba_possible():
            raise ConfigError(f"{self._display_name()}: backend='numba' computes euclidean HDBSCAN with alpha=1 and a "
                              f"tree algorithm (scikit-learn's Prim's path); got metric={self.metric!r}, "
                              f"alpha={self.alpha!r}, algorithm={self.algorithm!r}. Use backend: sklearn or auto.")

    def _choose_backend(self, n: int, d: int) -> str:
        from zsclust.cluster._gpu import want_gpu

        if self.backend not in ("auto", "cuml"):
            return self.backend
        # auto leaves to the CPU what cuML's HDBSCAN does not compute (another metric, metric_params)
        if (self.backend == "cuml" or self._cuml_possible()) and want_gpu(self.backend, self._display_name()):
            return "cuml"
        return "numba" if self._numba_possible() and n >= NUMBA_FROM else "sklearn"

    def _cuml_possible(self) -> bool:
        return is_euclidean(self.metric) and not self.metric_params

    def _backend_fit_memory(self, n: int, d: int, reference) -> tuple[int, str]:
        backend = self._choose_backend(n, d)
        if backend == "numba":
            k = int(self.min_samples or self.min_cluster_size or 5) + 16
            block = min(256 * 2**20, 8 * n * n)
            return 2 * n * d * _F64 + block + n * k * 2 * _F64 + 12 * n * _F64, \
                "exact HDBSCAN (numba Prim's, linear in N)"
        if backend == "cuml":
            return 2 * n * d * _F64, "cuML HDBSCAN (host copy; GPU memory not counted)"
        return reference(n, d)

    def _fit_numba(self, X: np.ndarray) -> None:
        from sklearn.cluster._hdbscan.hdbscan import _process_mst, tree_to_labels

        X = np.ascontiguousarray(X, dtype=np.float64)
        self._min_samples = self.min_cluster_size if self.min_samples is None else self.min_samples
        core = core_distances(X, self._min_samples)
        self._single_linkage_tree_ = _process_mst(prim_mst(X, core))
        self.labels_, self.probabilities_ = tree_to_labels(
            self._single_linkage_tree_, self.min_cluster_size, self.cluster_selection_method,
            self.allow_single_cluster, self.cluster_selection_epsilon, self.max_cluster_size)
        self._raw_data = X
        self.n_features_in_ = X.shape[1]
        if self.store_centers:
            self._weighted_cluster_center(X)

    def _fit_cuml(self, X: np.ndarray) -> None:  # pragma: no cover - needs a GPU
        from cuml.cluster.hdbscan import HDBSCAN

        from zsclust.cluster._gpu import to_numpy

        model = HDBSCAN(min_cluster_size=self.min_cluster_size, min_samples=self.min_samples,
                        cluster_selection_epsilon=self.cluster_selection_epsilon,
                        max_cluster_size=int(self.max_cluster_size or 0), metric=self.metric, alpha=self.alpha,
                        cluster_selection_method=self.cluster_selection_method,
                        allow_single_cluster=self.allow_single_cluster)
        with stage(f"HDBSCAN (cuML): {X.shape[0]:,} x {X.shape[1]}", X.shape[0]):
            model.fit(np.asarray(X, dtype=np.float32))
        self.labels_ = to_numpy(model.labels_).astype(np.intp)
        self.probabilities_ = to_numpy(model.probabilities_)
        self.n_features_in_ = X.shape[1]
        if self.store_centers:  # scikit-learn's centroids/medoids from the labels and probabilities
            self._weighted_cluster_center(np.asarray(X, dtype=np.float64))
