"""Scale: linear-memory linkage, the exact fast HDBSCAN, faiss K-Means, the shared neighbour graph, GPU paths.

Every fast path is checked against the reference implementation on small data (same labels, same
embedding); timings live in benchmarks/scale.py, never here.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from scipy.cluster.hierarchy import linkage as scipy_linkage
from sklearn.base import clone
from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_mutual_info_score as ami
from sklearn.neighbors import NearestNeighbors

from zsclust.cluster import JobData, JobSpec, ReductionCache, Scoring, create_clusterer, create_reducer, \
    estimate_fit_bytes, reducer_key, run_job
from zsclust.cluster import _clusterers, _hdbscan, _pipeline, _progress
from zsclust.cluster._faiss import faiss_available, kmeans_plusplus
from zsclust.cluster._gpu import gpu_available
from zsclust.cluster._knn_graph import KnnGraphStore, compute_knn_graph, exact_knn
from zsclust.cluster._linkage import cut_tree, fastcluster_available, knn_connectivity
from zsclust.errors import CacheError, ConfigError, MemoryGuardError

needs_fastcluster = pytest.mark.skipif(not fastcluster_available(),
                                       reason="fastcluster is not installed (pip install 'zsclust[scale]')")
needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed (pip install 'zsclust[scale]')")


def same_partition(a, b) -> bool:
    """Equal clusterings up to the names of the clusters (noise, -1, must stay noise)."""
    a, b = np.asarray(a), np.asarray(b)
    if not np.array_equal(a < 0, b < 0):
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


def cloud(n=400, d=6, centers=6, seed=0, std=2.5):
    """Overlapping blobs: continuous data without distance ties, where the linkages disagree with each other."""
    X, y = make_blobs(n_samples=n, centers=centers, n_features=d, cluster_std=std, random_state=seed)
    return X, y


def threshold_between(heights, k):
    """A threshold halfway between the merges that leave k and k-1 clusters (never on a merge height)."""
    h = np.sort(heights)
    return float((h[-k] + h[-k + 1]) / 2)


# ------------------------------------------------------------------------------ linear-memory linkage


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("linkage,metric", [("ward", "euclidean"), ("single", "euclidean"), ("single", "l1"),
                                            ("single", "cosine")])
@needs_fastcluster
def test_linear_linkage_gives_scikit_learns_labels_at_k(linkage, metric, seed):
    """Ward: the same label arrays. Single linkage: the same clusters (scikit-learn numbers the nodes of its
    single-linkage tree in another order)."""
    X, _ = cloud(seed=seed)
    for k in (2, 6, 17):
        ref = AgglomerativeClustering(n_clusters=k, linkage=linkage, metric=metric).fit(X)
        ours = create_clusterer("agglomerative", n_clusters=k, linkage=linkage, metric=metric,
                                backend="fastcluster").fit(X)
        assert ours.backend_ == "fastcluster"
        assert same_partition(ours.labels_, ref.labels_), (linkage, metric, seed, k)
        if linkage == "ward":  # the same tree, cut by scikit-learn's code: the same numbering too
            assert np.array_equal(ours.labels_, ref.labels_)
        assert ours.n_clusters_ == ref.n_clusters_ == k


@needs_fastcluster
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("linkage", ["ward", "single"])
def test_linear_linkage_gives_scikit_learns_labels_at_a_distance_threshold(linkage, seed):
    """scikit-learn compares distance_threshold with the merge heights (for ward: the ward distance,
    scipy's heights); fastcluster's heights are the same numbers, so the same threshold cuts the same tree."""
    X, _ = cloud(seed=seed)
    full = AgglomerativeClustering(n_clusters=None, distance_threshold=0.0, linkage=linkage,
                                   compute_full_tree=True).fit(X)
    ours_tree = create_clusterer("agglomerative", n_clusters=2, linkage=linkage, backend="fastcluster").fit(X)
    np.testing.assert_allclose(np.sort(ours_tree.distances_), np.sort(full.distances_), rtol=1e-10)
    for k in (3, 9, 40):
        t = threshold_between(full.distances_, k)
        ref = AgglomerativeClustering(n_clusters=None, distance_threshold=t, linkage=linkage).fit(X)
        ours = create_clusterer("agglomerative", n_clusters=None, distance_threshold=t, linkage=linkage,
                                backend="fastcluster").fit(X)
        assert ref.n_clusters_ == ours.n_clusters_ == k
        assert same_partition(ours.labels_, ref.labels_)
        assert linkage != "ward" or np.array_equal(ours.labels_, ref.labels_)


@needs_fastcluster
@pytest.mark.parametrize("linkage", ["centroid", "median"])
def test_centroid_and_median_linkage_are_scipys_tree_cut_like_scikit_learn(linkage):
    """scikit-learn has no centroid/median linkage: the linear path is compared with scipy's own tree."""
    X, _ = cloud(seed=3)
    Z = scipy_linkage(X, method=linkage)
    for k in (4, 12):
        ours = create_clusterer("agglomerative", n_clusters=k, linkage=linkage).fit(X)  # auto: fastcluster
        assert ours.backend_ == "fastcluster"
        assert np.array_equal(ours.labels_, cut_tree(Z[:, :2].astype(np.intp), len(X), k))
    with pytest.raises(ConfigError, match="exists only in the fastcluster backend"):
        create_clusterer("agglomerative", n_clusters=3, linkage="centroid", backend="sklearn")
    with pytest.raises(ConfigError, match="requires metric='euclidean'"):
        create_clusterer("agglomerative", n_clusters=3, linkage="median", metric="l1")


@needs_fastcluster
def test_memory_guard_picks_the_linear_path_where_the_quadratic_one_would_not_fit(monkeypatch):
    X, _ = cloud(n=3000, d=40, seed=4)  # above 32 dimensions, where auto prefers scikit-learn if it fits
    reference = AgglomerativeClustering(n_clusters=10).fit(X).labels_  # scikit-learn: ~70 MB of distances
    est = create_clusterer("agglomerative", n_clusters=10)
    quad, quad_why = estimate_fit_bytes(create_clusterer("agglomerative", n_clusters=10, backend="sklearn"), 3000, 40)
    assert "condensed" in quad_why
    monkeypatch.setenv("ZSCLUST_MEMORY_LIMIT", str(quad))  # 80% of it may be used: the N^2 path does not fit
    need, why = estimate_fit_bytes(est, 3000, 40)  # the estimate is the chosen path's
    assert "fastcluster" in why and need < quad / 20
    est.fit(X)
    assert est.backend_ == "fastcluster" and np.array_equal(est.labels_, reference)
    # the explicit quadratic path is still refused, and a linkage without a linear algorithm says what to do
    with pytest.raises(MemoryGuardError, match="condensed"):
        create_clusterer("agglomerative", n_clusters=10, backend="sklearn").fit(X)
    with pytest.raises(MemoryGuardError, match="backend: knn_graph approximates it"):
        create_clusterer("agglomerative", n_clusters=10, linkage="average", metric="cosine").fit(X)
    # with memory to spare, auto keeps scikit-learn (the reference implementation, and the faster one here)
    monkeypatch.delenv("ZSCLUST_MEMORY_LIMIT")
    assert create_clusterer("agglomerative", n_clusters=10).fit(X).backend_ == "sklearn"


@needs_fastcluster
@pytest.mark.parametrize("linkage", ["ward", "single"])
def test_agglomerative_auto_takes_the_faster_linear_path_in_few_dimensions(linkage):
    """Up to 32 dimensions (UMAP-5 to UMAP-20, the study's smaller reductions) the nearest-neighbour chain is
    faster than scipy's condensed matrix: auto takes it with memory to spare, with scikit-learn's clusters."""
    from zsclust.cluster._linkage import LINEAR_FASTER_UP_TO_D

    for d in (2, LINEAR_FASTER_UP_TO_D):
        X, _ = cloud(n=1500, d=d, seed=d)
        ours = create_clusterer("agglomerative", n_clusters=12, linkage=linkage).fit(X)
        ref = AgglomerativeClustering(n_clusters=12, linkage=linkage).fit(X)
        assert ours.backend_ == "fastcluster"
        assert same_partition(ours.labels_, ref.labels_)
        assert linkage != "ward" or np.array_equal(ours.labels_, ref.labels_)
    est = create_clusterer("agglomerative", n_clusters=12, linkage=linkage)
    assert est._choose_backend(1500, LINEAR_FASTER_UP_TO_D + 1) == "sklearn"
    assert create_clusterer("agglomerative", n_clusters=12, linkage="average")._choose_backend(1500, 2) == "sklearn"


@pytest.mark.skipif(not _clusterers.pyamg_available(), reason="pyamg is not installed (pip install 'zsclust[scale]')")
def test_spectral_takes_the_multigrid_eigensolver_at_large_n(monkeypatch, recwarn):
    """An unset eigen_solver is ARPACK (the study's) below AMG_FROM points and pyamg's multigrid LOBPCG from
    there (ARPACK's 1000 eigenvectors of 50k points did not finish in 10 minutes): the same clusters on
    separable data, the solver recorded, an explicit solver kept, LOBPCG's tolerance report not shown."""
    X, _ = make_blobs(n_samples=900, centers=5, n_features=8, cluster_std=1.0, random_state=2)
    small = create_clusterer("spectral", n_clusters=5, random_state=0).fit(X)
    assert small.backend_ == "arpack" and small.eigen_solver is None
    monkeypatch.setattr(_clusterers, "AMG_FROM", 500)
    large = create_clusterer("spectral", n_clusters=5, random_state=0).fit(X)
    assert large.backend_ == "amg" and large.eigen_solver is None  # the parameter is left as it was given
    assert same_partition(large.labels_, small.labels_)
    assert not [w for w in recwarn if "requested tolerance" in str(w.message)]
    assert create_clusterer("spectral", n_clusters=5, random_state=0, eigen_solver="arpack").fit(X).backend_ == "arpack"
    out = run_job(JobData(X.astype(np.float32), "fp"), JobSpec("s", {"name": "none"},
                  {"name": "spectral", "n_clusters": 5}), seed=0, scoring=Scoring(silhouette_spaces=()))
    assert out.params["clusterer.backend_"] == "amg"


def test_multigrid_eigensolver_without_pyamg_names_the_extra(monkeypatch):
    """eigen_solver='amg' without pyamg is refused when the config is checked, naming the install (scikit-learn
    would only fail inside fit); the automatic choice falls back to ARPACK instead."""
    monkeypatch.setattr(_clusterers, "pyamg_available", lambda: False)
    with pytest.raises(ConfigError, match=r"eigen_solver='amg' needs pyamg: pip install 'zsclust\[scale\]'"):
        create_clusterer("spectral", n_clusters=3, eigen_solver="amg").validate_config()
    monkeypatch.setattr(_clusterers, "AMG_FROM", 50)
    X, _ = make_blobs(n_samples=120, centers=3, n_features=2, cluster_std=3.0, random_state=0)
    assert create_clusterer("spectral", n_clusters=3, random_state=0).fit(X).backend_ == "arpack"


@needs_fastcluster
def test_fifty_thousand_points_plan_linear_memory():
    """The issue's case: 50,000 x 50 after UMAP-50 needed ~19.8 GiB at peak; the linear path needs megabytes."""
    est = create_clusterer("agglomerative", n_clusters=1000, backend="fastcluster")
    need, why = estimate_fit_bytes(est, 50_000, 50)
    assert need < 100 * 2**20 and "linear in N" in why
    quad, _ = estimate_fit_bytes(create_clusterer("agglomerative", n_clusters=1000, backend="sklearn"), 50_000, 50)
    assert quad > 18 * 2**30


def test_knn_graph_backend_is_scikit_learns_linkage_on_a_connectivity_graph():
    X, _ = cloud(n=300, seed=5)
    # with every pair connected, the structured linkage is the unstructured one
    full = create_clusterer("agglomerative", n_clusters=6, linkage="average", metric="l1", backend="knn_graph",
                            knn_neighbors=299).fit(X)
    ref = AgglomerativeClustering(n_clusters=6, linkage="average", metric="l1").fit(X)
    assert full.backend_ == "knn_graph" and same_partition(full.labels_, ref.labels_)
    # a sparse graph is an approximation, but a connected one and close on clustered data
    Xb, yb = make_blobs(n_samples=400, centers=5, n_features=6, cluster_std=1.0, random_state=0)
    sparse = create_clusterer("agglomerative", n_clusters=5, linkage="average", metric="cosine",
                              backend="knn_graph", knn_neighbors=8).fit(Xb)
    assert sparse.n_connected_components_ == 1 and ami(yb, sparse.labels_) > 0.9


def test_knn_connectivity_joins_components_without_the_full_distance_matrix():
    X = np.vstack([np.random.default_rng(0).normal(size=(50, 3)) + off for off in (0, 100, 200)])
    from scipy.sparse.csgraph import connected_components

    A = knn_connectivity(X, 5, "euclidean")
    assert connected_components(A, directed=False)[0] == 1
    assert (A != A.T).nnz == 0 and A.diagonal().sum() == 0


@needs_fastcluster
def test_backend_parameter_is_a_scikit_learn_parameter():
    est = create_clusterer("agglomerative", n_clusters=3, backend="fastcluster", knn_neighbors=12)
    params = est.get_params()
    assert params["backend"] == "fastcluster" and params["knn_neighbors"] == 12 and params["linkage"] == "ward"
    twin = clone(est)
    assert twin.get_params() == params and "backend='fastcluster'" in repr(est)
    assert type(est)(3).n_clusters == 3  # positional n_clusters still works
    with pytest.raises(ConfigError, match="backend"):
        create_clusterer("agglomerative", n_clusters=3, backend="gpu-please")
    with pytest.raises(ConfigError, match="cannot run: linkage='average'"):
        create_clusterer("agglomerative", n_clusters=3, linkage="average", backend="fastcluster")
    for name in ("kmeans", "hdbscan"):
        assert create_clusterer(name).get_params()["backend"] == "auto"


# ------------------------------------------------------------------------------ HDBSCAN


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("params", [{"min_cluster_size": 5}, {"min_cluster_size": 10, "min_samples": 3,
                                                                "cluster_selection_method": "leaf"},
                                    {"min_cluster_size": 3, "min_samples": 1},
                                    {"min_cluster_size": 8, "max_cluster_size": 40, "cluster_selection_epsilon": 0.5}])
def test_numba_hdbscan_gives_scikit_learns_labels(params, seed):
    """Not just the same partition: the same arrays (labels, probabilities), although mutual-reachability
    distances tie often and Boruvka implementations differ here (see docs/scale.md)."""
    X, _ = cloud(n=600, d=5, centers=8, seed=seed, std=1.5)
    ref = HDBSCAN(**params).fit(X)
    ours = create_clusterer("hdbscan", backend="numba", **params).fit(X)
    assert ours.backend_ == "numba"
    assert np.array_equal(ours.labels_, ref.labels_)
    assert np.array_equal(ours.probabilities_, ref.probabilities_)
    assert np.array_equal(ours._single_linkage_tree_, ref._single_linkage_tree_)


def test_numba_hdbscan_on_tightly_packed_points_far_from_the_origin():
    """UMAP with min_dist 0 packs clusters tightly: neighbour distances far below float32 rounding of |x|^2."""
    rng = np.random.default_rng(0)
    X = np.concatenate([c + 1e-4 * rng.normal(size=(150, 10)) for c in 100 * rng.normal(size=(4, 10))])
    ref = HDBSCAN(min_cluster_size=5).fit(X)
    ours = create_clusterer("hdbscan", backend="numba", min_cluster_size=5).fit(X)
    assert np.array_equal(ours.labels_, ref.labels_) and np.array_equal(ours.probabilities_, ref.probabilities_)


def test_numba_core_distances_and_tree_are_scikit_learns():
    from sklearn.cluster._hdbscan._linkage import mst_from_data_matrix
    from sklearn.metrics import DistanceMetric

    X, _ = cloud(n=500, d=9, seed=7)
    d, _ = NearestNeighbors(n_neighbors=6, algorithm="kd_tree").fit(X).kneighbors(X)
    core = _hdbscan.core_distances(X, 6)
    assert np.array_equal(core, d[:, -1])
    ours = _hdbscan.prim_mst(X, core)
    ref = mst_from_data_matrix(X, np.ascontiguousarray(d[:, -1]), DistanceMetric.get_metric("euclidean"), 1.0)
    for field in ("current_node", "next_node", "distance"):
        assert np.array_equal(ours[field], ref[field]), field


def test_hdbscan_auto_uses_the_exact_fast_path_from_a_size(monkeypatch):
    X, _ = cloud(n=500, d=4, seed=8)
    assert create_clusterer("hdbscan").fit(X).backend_ == "sklearn"
    monkeypatch.setattr(_hdbscan, "NUMBA_FROM", 100)
    fast = create_clusterer("hdbscan").fit(X)
    assert fast.backend_ == "numba" and np.array_equal(fast.labels_, HDBSCAN(min_cluster_size=5).fit(X).labels_)
    assert create_clusterer("hdbscan", metric="l1").fit(X).backend_ == "sklearn"  # not euclidean: the reference
    need, why = estimate_fit_bytes(create_clusterer("hdbscan"), 100_000, 50)
    assert "numba" in why and need < 2 * 2**30
    with pytest.raises(ConfigError, match="backend='numba' computes euclidean"):
        create_clusterer("hdbscan", backend="numba", metric="cosine")
    with pytest.raises(ConfigError, match="backend='cuml' computes euclidean HDBSCAN without metric_params"):
        create_clusterer("hdbscan", backend="cuml", metric="cosine")  # said before cuML is looked for


# ------------------------------------------------------------------------------ K-Means


@needs_faiss
def test_faiss_kmeans_agrees_with_scikit_learn_on_small_data():
    X, y = make_blobs(n_samples=3000, centers=12, n_features=16, cluster_std=1.0, random_state=0)
    ref = KMeans(12, n_init=1, random_state=0).fit(X)
    ours = create_clusterer("kmeans", n_clusters=12, random_state=0, backend="faiss").fit(X)
    assert ours.backend_ == "faiss" and same_partition(ours.labels_, ref.labels_)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-4)
    assert np.array_equal(ours.predict(X), ours.labels_)  # scikit-learn's predict on faiss's centres
    again = create_clusterer("kmeans", n_clusters=12, random_state=0, backend="faiss").fit(X)
    assert np.array_equal(again.labels_, ours.labels_)  # seeded
    # harder data: as good as scikit-learn's k-means++ (the benchmark checks this at 100k x 768, K=1000)
    Xh, yh = make_blobs(n_samples=4000, centers=40, n_features=32, cluster_std=4.0, random_state=1)
    a = ami(yh, KMeans(40, n_init=1, random_state=0).fit_predict(Xh))
    b = ami(yh, create_clusterer("kmeans", n_clusters=40, random_state=0, backend="faiss").fit_predict(Xh))
    assert b > a - 0.02


@needs_faiss
def test_faiss_kmeans_refines_its_start_on_the_sample_at_large_n(monkeypatch):
    """From REFINE_FROM x the k-means++ sample, each start is first refined by Lloyd on that sample, then Lloyd
    runs on all the points from there (the 1M-point benchmark's speed-up); as good as scikit-learn's k-means++."""
    from zsclust.cluster import _faiss

    X, y = make_blobs(n_samples=8000, centers=40, n_features=32, cluster_std=4.0, random_state=1)
    ref = KMeans(40, n_init=1, random_state=0).fit(X)
    rows_seen = []
    real_lloyd = _faiss.lloyd
    monkeypatch.setattr(_faiss, "lloyd", lambda Xs, *a, **kw: rows_seen.append(len(Xs)) or real_lloyd(Xs, *a, **kw))
    create_clusterer("kmeans", n_clusters=40, random_state=0, backend="faiss").fit(X)
    assert rows_seen == [8000]  # 8000 < 4 x 40 x 64: no refinement
    monkeypatch.setattr(_faiss, "INIT_SAMPLE_PER_CLUSTER", 40)  # a 1,600-point sample: 8000 >= 4 x 1600
    rows_seen.clear()
    refined = create_clusterer("kmeans", n_clusters=40, random_state=0, backend="faiss").fit(X)
    assert rows_seen == [1600, 8000]  # the sample, then every point
    assert ami(y, refined.labels_) > ami(y, ref.labels_) - 0.02
    assert refined.inertia_ < ref.inertia_ * 1.02
    again = create_clusterer("kmeans", n_clusters=40, random_state=0, backend="faiss").fit(X)
    assert np.array_equal(again.labels_, refined.labels_)  # seeded


@needs_faiss
@pytest.mark.parametrize("local_search_max", [0.0, 1.0])  # every search over all centres / over open groups only
def test_faiss_lloyd_with_bounds_is_scikit_learns_lloyd_from_the_same_start(monkeypatch, local_search_max):
    """Skipping the points that provably keep their centre (Yinyang's group bounds), and searching only the
    groups of centres a point could move to, changes nothing: same start, same iterations, same labels and
    centres as scikit-learn's full Lloyd."""
    from zsclust.cluster import _faiss

    monkeypatch.setattr(_faiss, "LOCAL_SEARCH_MAX", local_search_max)
    monkeypatch.setattr(_faiss, "GROUP_SIZE", 4)  # 7 groups of centres
    X, _ = make_blobs(n_samples=5000, centers=30, n_features=12, cluster_std=3.0, random_state=4)
    start = X[np.random.default_rng(0).choice(len(X), 30, replace=False)]
    ref = KMeans(30, init=start, n_init=1, algorithm="lloyd", max_iter=300).fit(X)
    searched = []
    real = _faiss._search_near
    monkeypatch.setattr(_faiss, "_search_near", lambda X, C, starts, rows, *a: searched.append(rows.size) or
                        real(X, C, starts, rows, *a))
    ours = create_clusterer("kmeans", n_clusters=30, init=start, backend="faiss", max_iter=300).fit(X)
    assert ref.n_iter_ > 10 and abs(ours.n_iter_ - ref.n_iter_) <= 1
    assert np.array_equal(ours.labels_, ref.labels_)  # the centres keep the start's order
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-4, atol=1e-4)
    assert (len(searched) > 5) == (local_search_max == 1.0)


@needs_faiss
def test_faiss_kmeans_stops_like_scikit_learn_and_fills_empty_clusters():
    X, _ = make_blobs(n_samples=2000, centers=5, n_features=8, random_state=2)
    capped = create_clusterer("kmeans", n_clusters=5, random_state=0, backend="faiss", max_iter=2).fit(X)
    assert capped.n_iter_ <= 2
    # more clusters than distinct points in some places: 30 duplicated points, K=20 from random starts
    dup = np.repeat(np.random.default_rng(0).normal(size=(30, 4)), 10, axis=0)
    est = create_clusterer("kmeans", n_clusters=20, random_state=0, backend="faiss", init="random").fit(dup)
    assert np.unique(est.labels_).size == 20
    with pytest.raises(ConfigError, match="sample_weight"):
        create_clusterer("kmeans", n_clusters=3, backend="faiss").fit(X, sample_weight=np.ones(len(X)))


def test_kmeans_plusplus_starts_are_as_good_as_scikit_learns():
    from sklearn.cluster import kmeans_plusplus as sk_kpp

    X, _ = make_blobs(n_samples=3000, centers=30, n_features=10, cluster_std=2.0, random_state=3)

    def potential(C):
        return ((X[:, None, :] - C[None]) ** 2).sum(-1).min(1).sum()

    ours = np.mean([potential(kmeans_plusplus(X, 30, np.random.default_rng(s))) for s in range(5)])
    ref = np.mean([potential(sk_kpp(X, 30, random_state=s)[0]) for s in range(5)])
    assert ours < 1.15 * ref


def test_kmeans_auto_keeps_scikit_learn_for_study_sizes():
    X, _ = make_blobs(n_samples=500, centers=4, random_state=0)
    assert create_clusterer("kmeans", n_clusters=4, random_state=0).fit(X).backend_ == "sklearn"


# ------------------------------------------------------------------------------ exact kNN and the shared graph


@pytest.mark.parametrize("metric,sk_metric", [("euclidean", "euclidean"), ("cosine", "cosine"),
                                              ("manhattan", "manhattan")])
def test_exact_knn_is_the_brute_force_neighbour_list(metric, sk_metric):
    X = np.random.default_rng(0).normal(size=(700, 12)).astype(np.float32)
    idx, dist = exact_knn(X, 15, metric)
    d_ref, i_ref = NearestNeighbors(n_neighbors=15, metric=sk_metric, algorithm="brute").fit(X).kneighbors(X)
    assert np.array_equal(idx, i_ref)
    np.testing.assert_allclose(dist, d_ref, rtol=1e-5, atol=1e-5)
    assert np.array_equal(idx[:, 0], np.arange(700))


def test_exact_knn_is_exact_where_float32_products_cannot_rank_neighbours():
    """Tight clusters far from each other: float32 products cannot order the points inside a cluster, so the
    rows the rounding bound cannot vouch for are searched again in float64."""
    rng = np.random.default_rng(0)
    X = np.concatenate([c + 1e-3 * rng.normal(size=(200, 10)) for c in 100 * rng.normal(size=(5, 10))])
    idx, dist = exact_knn(X.astype(np.float32), 10)
    X64 = X.astype(np.float32).astype(np.float64)
    d_ref, i_ref = NearestNeighbors(n_neighbors=10, algorithm="brute").fit(X64).kneighbors(X64)
    assert np.array_equal(idx, i_ref)
    np.testing.assert_allclose(dist, d_ref, rtol=1e-5, atol=1e-7)


def test_shared_graph_gives_the_same_umap_embedding_as_a_fit_without_it(tmp_path):
    """Below 4096 points umap-learn searches exactly itself: the shared exact graph is its graph, and the fit
    on it is the same fit, bit for bit. (The NNDescent case is test_nndescent_graph_..., marked slow.)"""
    X, _ = make_blobs(n_samples=500, centers=5, n_features=20, cluster_std=3.0, random_state=0)
    spec = {"name": "umap", "n_components": 3, "n_neighbors": 12}
    plain = create_reducer(spec, random_state=5).fit_transform(X)
    graph = compute_knn_graph(X, 12, "euclidean", method="exact")
    shared = create_reducer(spec, random_state=5).fit(X, knn_graph=graph)
    assert shared.fit_info_["knn_graph"] == "exact"
    assert np.array_equal(shared.embedding_, plain)
    # through the cache: one graph for every n_components and seed on these embeddings
    cache = ReductionCache(tmp_path / "red")
    a, _ = cache.get_or_fit(spec, X, embedding_fingerprint="fp", seed=5)
    b, _ = cache.get_or_fit({**spec, "n_components": 2}, X, embedding_fingerprint="fp", seed=9)
    assert np.array_equal(a, plain)
    assert np.array_equal(b, create_reducer({**spec, "n_components": 2}, random_state=9).fit_transform(X))
    assert len(list((tmp_path / "red" / "knn_graphs").glob("*.npz"))) == 1
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "red").glob("*.json")]
    assert {s["knn_graph"]["method"] for s in sidecars} == {"exact"}
    off, _ = ReductionCache(tmp_path / "off", share_knn=False).get_or_fit(spec, X, embedding_fingerprint="fp", seed=5)
    assert np.array_equal(off, plain)
    with pytest.raises(ConfigError, match="shared neighbour graph"):
        shared.transform(X[:3])


def test_verbose_fit_on_a_shared_graph_says_so_in_one_line(capfd):
    """umap-learn's verbose fit prints its repr first, which would spell out the shared graph's arrays (a
    dozen lines in every large run's log): zsclust prints one line instead; the epoch messages stay."""
    X, _ = make_blobs(n_samples=300, centers=3, n_features=10, random_state=0)
    graph = compute_knn_graph(X, 10, "euclidean", method="exact")
    spec = {"name": "umap", "n_components": 2, "n_neighbors": 10, "min_dist": 0.0, "n_epochs": 20, "verbose": True}
    create_reducer(spec, random_state=4).fit(X, knn_graph=graph)
    out = capfd.readouterr().out
    assert "UMAP(n_components=2, n_neighbors=10, min_dist=0.0, metric='euclidean', n_epochs=20, random_state=4) on " \
           "the shared exact neighbour graph (300 x 10)" in out
    assert "completed  10  /  20 epochs" in out
    assert "array(" not in out and "precomputed_knn" not in out


@pytest.mark.slow
def test_nndescent_graph_gives_the_same_umap_embedding_as_a_fit_without_it():
    """Above 4096 points umap-learn searches with NNDescent: the shared graph made with the fit's seed, plus
    the random state the search left behind, reproduce umap-learn's fit bit for bit (~1 min: numba compiles
    pynndescent)."""
    X, _ = make_blobs(n_samples=4200, centers=4, n_features=8, cluster_std=2.0, random_state=0)
    spec = {"name": "umap", "n_components": 2, "n_neighbors": 10, "n_epochs": 20}
    plain = create_reducer(spec, random_state=3).fit_transform(X)
    graph = compute_knn_graph(X, 10, "euclidean", method="nndescent", seed=3)
    assert graph.method == "nndescent" and graph.seed == 3
    assert np.array_equal(create_reducer(spec, random_state=3).fit_transform(X, knn_graph=graph), plain)


UMAP_FIT_IN_A_FRESH_PROCESS = """
import hashlib, importlib, json
import numpy as np
from sklearn.datasets import make_blobs
from zsclust.cluster import create_reducer
from zsclust.cluster._umap import _CACHED_KERNELS
X, _ = make_blobs(n_samples=300, centers=3, n_features=10, random_state=0)  # umap-learn's own exact search
Z = create_reducer({"name": "umap", "n_components": 2, "n_neighbors": 10, "n_epochs": 30}, random_state=1).fit_transform(X)
kernels = [getattr(importlib.import_module(module), name) for module, name in _CACHED_KERNELS]
print(json.dumps({"hits": [sum(k.stats.cache_hits.values()) for k in kernels],
                  "misses": [sum(k.stats.cache_misses.values()) for k in kernels],
                  "embedding": hashlib.sha256(np.ascontiguousarray(Z).tobytes()).hexdigest()}))
"""


def test_umap_kernels_compile_once_per_installation_not_once_per_process():
    """umap-learn compiles its fit's numba kernels in every process (16 s here): zsclust turns numba's on-disk
    cache on for them, so a later process (a tuning worker, a sweep job, the next CLI run) loads them, and
    its fit is the same."""
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", UMAP_FIT_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert len(second["hits"]) == 5 and min(second["hits"]) >= 1 and max(second["misses"]) == 0, second  # all loaded
    assert all(h + m >= 1 for h, m in zip(first["hits"], first["misses"]))  # the first compiled or loaded each
    assert first["embedding"] == second["embedding"]


def test_graph_store_is_atomic_checked_and_refuses_other_data(tmp_path):
    X = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    store = KnnGraphStore(tmp_path)
    g, hit = store.get_or_compute(X, embedding_fingerprint="fp", n_neighbors=10)
    assert not hit and g.method == "exact" and g.indices.shape == (300, 10)
    g2, hit2 = KnnGraphStore(tmp_path).get_or_compute(X, embedding_fingerprint="fp", n_neighbors=10)
    assert hit2 and np.array_equal(g2.indices, g.indices) and np.array_equal(g2.distances, g.distances)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporaries left behind
    npz = next(tmp_path.glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:100])  # damaged: recomputed, not trusted
    g3, hit3 = KnnGraphStore(tmp_path).get_or_compute(X, embedding_fingerprint="fp", n_neighbors=10)
    assert not hit3 and np.array_equal(g3.indices, g.indices)
    with pytest.raises(CacheError, match="differ from those cached"):
        KnnGraphStore(tmp_path).get_or_compute(X[::-1].copy(), embedding_fingerprint="fp", n_neighbors=10)


def test_umap_subsample_fit_is_recorded_and_keyed():
    X, _ = make_blobs(n_samples=600, centers=4, n_features=10, random_state=0)
    red = create_reducer({"name": "umap", "n_components": 2, "n_neighbors": 10, "fit_subsample": 300},
                         random_state=0)
    Z = red.fit_transform(X)
    assert Z.shape == (600, 2) and np.isfinite(Z).all() and red.fit_info_["fit_subsample"] == 300
    with pytest.raises(ConfigError, match="fit_subsample=20 fits on 20 of the N=600 samples.*Raise fit_subsample"):
        create_reducer({"name": "umap", "n_components": 2, "n_neighbors": 30, "fit_subsample": 20}).fit(X)
    assert "fit_subsample" not in reducer_key("umap")[0] and "backend" not in reducer_key("umap")[0]
    assert reducer_key({"name": "umap", "fit_subsample": 300})[0]["fit_subsample"] == 300


@needs_fastcluster
def test_run_job_records_the_backend_and_the_graph(tmp_path):
    X, y = make_blobs(n_samples=300, centers=4, n_features=16, cluster_std=0.5, random_state=0)
    data = JobData(X.astype(np.float32), "blobs-300", y, 4)
    job = JobSpec("umap/ward", {"name": "umap", "n_components": 5, "n_neighbors": 10},
                  {"name": "agglomerative", "n_clusters": "K", "backend": "fastcluster"})
    out = run_job(data, job, seed=0, cache=ReductionCache(tmp_path), scoring=Scoring(silhouette_spaces=("raw",)))
    assert out.params["clusterer.backend_"] == "fastcluster" and out.params["clusterer.backend"] == "fastcluster"
    assert out.params["reducer.knn_graph"] == "exact" and out.metrics["ami"] > 0.99


def test_the_plot_is_fitted_on_a_subsample_at_large_n(monkeypatch):
    monkeypatch.setattr(_pipeline, "PLOT_MAX_POINTS", 100)
    data = JobData(np.random.default_rng(0).normal(size=(250, 4)).astype(np.float32), "fp", None, None)
    rows, sub = _pipeline.plot_sample(data, 42)
    assert rows.shape == (100,) and np.array_equal(sub.X, data.X[rows]) and sub.fingerprint != "fp"
    assert np.array_equal(rows, _pipeline.plot_sample(data, 42)[0])  # seeded
    assert _pipeline.plot_sample(JobData(data.X[:80], "fp80"), 42)[0] is None


@needs_fastcluster
def test_long_stages_say_so(monkeypatch, caplog):
    monkeypatch.setattr(_progress, "LOUD_FROM", 100)
    X, _ = cloud(n=150, seed=1)
    with caplog.at_level(logging.INFO, logger="zsclust.progress"):
        create_clusterer("agglomerative", n_clusters=3, backend="fastcluster").fit(X)
        exact_knn(X.astype(np.float32), 5)
    text = caplog.text
    assert "agglomerative (ward, fastcluster, linear memory): 150 x 6 ..." in text and "done in" in text
    assert "exact kNN: 150 x 6" in text


def test_progress_goes_to_stderr_until_the_application_sets_up_logging():
    """Without logging set up, long stages print to stderr; once the application configures the root logger,
    they go through its handlers instead (and only there)."""
    script = textwrap.dedent("""
        import logging, sys
        from zsclust.cluster._progress import stage
        with stage("first stage", 10**6):
            pass
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="ROOT %(name)s %(message)s")
        with stage("second stage", 10**6):
            pass
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, ZSCLUST_PROGRESS="1"))
    assert out.returncode == 0, out.stderr
    assert "first stage done in" in out.stderr and "first stage" not in out.stdout
    assert "ROOT zsclust.progress second stage done in" in out.stdout and "second stage" not in out.stderr


# ------------------------------------------------------------------------------ GPU (cuML): skipped without one


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs cuML and a CUDA GPU")
@pytest.mark.parametrize("name,params", [("kmeans", {"n_clusters": 4, "random_state": 0}),
                                         ("hdbscan", {"min_cluster_size": 10})])
def test_cuml_clusterers_find_the_blobs(name, params):
    X, y = make_blobs(n_samples=2000, centers=4, n_features=8, cluster_std=0.5, random_state=0)
    est = create_clusterer(name, backend="cuml", **params).fit(X)
    assert est.backend_ == "cuml" and ami(y, est.labels_) > 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs cuML and a CUDA GPU")
def test_cuml_umap_and_graph_run_on_the_gpu():
    X, y = make_blobs(n_samples=3000, centers=4, n_features=16, cluster_std=0.5, random_state=0)
    g = compute_knn_graph(X, 15, method="cuml")
    ref, _ = exact_knn(X.astype(np.float32), 15)
    assert g.method == "cuml" and (g.indices == ref).mean() > 0.99
    Z = create_reducer({"name": "umap", "n_components": 5, "n_neighbors": 15, "backend": "cuml"},
                       random_state=0).fit(X, knn_graph=g).embedding_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ami(y, KMeans(4, n_init=1, random_state=0).fit_predict(Z)) > 0.95


def test_asking_for_the_gpu_without_one_is_a_clear_error(monkeypatch):
    if gpu_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="needs cuML and a CUDA GPU"):
        create_clusterer("kmeans", n_clusters=3, backend="cuml").fit(np.zeros((10, 2)) + np.arange(10)[:, None])
    monkeypatch.setenv("ZSCLUST_GPU", "on")
    with pytest.raises(ConfigError, match="needs cuML"):
        create_clusterer("hdbscan").fit(np.random.default_rng(0).normal(size=(50, 2)))
    monkeypatch.setenv("ZSCLUST_GPU", "sometimes")
    with pytest.raises(ConfigError, match="ZSCLUST_GPU"):
        create_clusterer("hdbscan").fit(np.random.default_rng(0).normal(size=(50, 2)))


# -- backend choices that must not pick a path that then fails ---------------------------------------


def test_a_misspelt_backend_is_refused_for_every_clusterer():
    X, _ = cloud(n=200, d=4, seed=1)
    for name, params in (("hdbscan", {}), ("kmeans", {"n_clusters": 3}), ("agglomerative", {"n_clusters": 3})):
        with pytest.raises(ConfigError, match="backend"):
            create_clusterer(name, backend="sklean", **params).fit(X)


@needs_fastcluster
def test_agglomerative_auto_without_a_budget_takes_the_linear_path_at_large_n(monkeypatch):
    from zsclust.cluster._linkage import LINEAR_WITHOUT_BUDGET_FROM

    monkeypatch.setenv("ZSCLUST_MEMORY_LIMIT", "off")
    est = create_clusterer("agglomerative", n_clusters=10)
    assert est._choose_backend(LINEAR_WITHOUT_BUDGET_FROM, 50) == "fastcluster"
    assert est._choose_backend(LINEAR_WITHOUT_BUDGET_FROM - 1, 50) == "sklearn"
    assert create_clusterer("agglomerative", n_clusters=10, linkage="average")._choose_backend(10**6, 50) == "sklearn"


@needs_faiss
def test_kmeans_auto_keeps_scikit_learn_for_what_only_it_takes(monkeypatch):
    """From FAISS_FROM points auto picks faiss, except with sample weights or a callable init."""
    from zsclust.cluster import _faiss

    monkeypatch.setattr(_faiss, "FAISS_FROM", 100)
    X, _ = make_blobs(n_samples=400, centers=4, n_features=6, random_state=0)
    assert create_clusterer("kmeans", n_clusters=4, random_state=0).fit(X).backend_ == "faiss"
    weighted = create_clusterer("kmeans", n_clusters=4, random_state=0).fit(X, sample_weight=np.ones(len(X)))
    assert weighted.backend_ == "sklearn"

    def first_rows(X, k, random_state):
        return X[:k]

    assert create_clusterer("kmeans", n_clusters=4, init=first_rows, n_init=1).fit(X).backend_ == "sklearn"
    with pytest.raises(ConfigError, match="not a callable"):
        create_clusterer("kmeans", n_clusters=4, init=first_rows, n_init=1, backend="faiss").fit(X)


def test_umap_metrics_the_shared_graph_does_not_cover_search_their_own(tmp_path):
    """hellinger exists only in umap-learn: no shared graph is asked for, and the fit runs as umap-learn's."""
    X = np.abs(np.random.default_rng(0).normal(size=(300, 8))).astype(np.float32)
    cache = ReductionCache(tmp_path)
    node = {"name": "umap", "n_components": 2, "n_neighbors": 10, "metric": "hellinger", "n_epochs": 20}
    assert cache.graph_request(node, X, seed=0) is None
    assert cache.graph_request({**node, "metric": "cosine"}, X, seed=0)["metric"] == "cosine"
    Z, hit = cache.get_or_fit(node, X, embedding_fingerprint="hellinger", seed=0)
    assert Z.shape == (300, 2) and not hit and np.isfinite(Z).all()


def test_a_numpy_float_max_cluster_size_is_a_fraction():
    X, _ = make_blobs(n_samples=300, centers=[[0, 0], [0.3, 0]], cluster_std=0.2, random_state=0)
    as_float = create_clusterer("hdbscan", min_cluster_size=5, max_cluster_size=0.2).fit(X)
    as_numpy = create_clusterer("hdbscan", min_cluster_size=5, max_cluster_size=np.float32(0.2)).fit(X)
    assert np.array_equal(as_float.labels_, as_numpy.labels_)
    assert as_numpy.max_cluster_size == np.float32(0.2)  # restored after the fit


def test_many_components_are_joined_without_a_dense_matrix_of_their_centroids(monkeypatch):
    """Above _DENSE_TREE_MAX components the centroids are joined over their own kNN graph: still one component."""
    from scipy.sparse.csgraph import connected_components

    from zsclust.cluster import _linkage

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (12, 6)) + rng.uniform(-1e3, 1e3, 6) for _ in range(150)]).astype(np.float32)
    dense = knn_connectivity(X, 5, "euclidean")
    monkeypatch.setattr(_linkage, "_DENSE_TREE_MAX", 20)
    sparse = knn_connectivity(X, 5, "euclidean")
    assert connected_components(dense, directed=False)[0] == connected_components(sparse, directed=False)[0] == 1
    # the joining edges form a tree over the 150 blobs: 149 links between blobs, each stored both ways
    blob = np.arange(len(X)) // 12
    for A in (dense, sparse):
        rows, cols = A.nonzero()
        assert (blob[rows] != blob[cols]).sum() == 2 * 149
