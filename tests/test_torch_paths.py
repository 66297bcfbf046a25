"""zsclust's torch paths, which run on a CUDA GPU when torch sees one: K-Means (``backend: torch``, scikit-learn's
Lloyd step for step) and the exact neighbour search's candidate products. Tested on the CPU here against the
reference implementations, and on CUDA where there is one (the ``gpu`` tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_mutual_info_score as ami

from zsclust.cluster import _gpu, _knn_graph, _torch_kmeans, create_clusterer
from zsclust.cluster._knn_graph import exact_knn, resolve_method
from zsclust.errors import ConfigError, MemoryGuardError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_lloyd_from_the_same_start_is_scikit_learns():
    """Same start, same iterations, same labels and centres as scikit-learn's Lloyd."""
    X, _ = make_blobs(n_samples=5000, centers=30, n_features=12, cluster_std=3.0, random_state=4)
    X = X.astype(np.float32)
    start = X[np.random.default_rng(0).choice(len(X), 30, replace=False)]
    ref = KMeans(30, init=start, n_init=1, algorithm="lloyd", max_iter=300).fit(X)
    ours = create_clusterer("kmeans", n_clusters=30, init=start, backend="torch", max_iter=300).fit(X)
    assert ours.backend_ == "torch"
    assert ref.n_iter_ > 10 and ours.n_iter_ == ref.n_iter_
    assert np.array_equal(ours.labels_, ref.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-5, atol=1e-5)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-5)
    assert np.array_equal(ours.predict(X), ours.labels_)  # scikit-learn's predict on the torch centres


def test_data_far_from_the_origin_is_centred_as_in_scikit_learn():
    """|x|^2 of points far from the origin would swamp the float32 gaps between nearby centres: scikit-learn
    centres the data (and the starts) first, and so does the torch backend."""
    near, _ = make_blobs(n_samples=3000, centers=20, n_features=12, cluster_std=2.0, random_state=0)
    X = (near + 3000.0).astype(np.float32)
    start = X[np.random.default_rng(0).choice(len(X), 20, replace=False)]
    ref = KMeans(20, init=start, n_init=1, algorithm="lloyd").fit(X)
    ours = create_clusterer("kmeans", n_clusters=20, init=start, backend="torch").fit(X)
    assert ours.n_iter_ == ref.n_iter_ and np.array_equal(ours.labels_, ref.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-6)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-4)
    # seeded k-means++ starts: moving the data moves nothing else
    seeded = create_clusterer("kmeans", n_clusters=20, random_state=0, backend="torch").fit(X)
    at_origin = create_clusterer("kmeans", n_clusters=20, random_state=0, backend="torch").fit(near.astype(np.float32))
    assert np.array_equal(seeded.labels_, at_origin.labels_)


@pytest.mark.parametrize("case", ["duplicate", "far", "three far"])  # starts no point is nearest to
def test_empty_clusters_take_the_farthest_points_as_in_scikit_learn(case):
    X = np.random.default_rng(1).normal(size=(600, 5)).astype(np.float32)
    start = X[:8].copy()
    if case == "duplicate":
        start[3] = start[2]
    else:
        start[3], start[5] = 100.0, -100.0
        if case == "three far":
            start[6] = 200.0
    ref = KMeans(8, init=start, n_init=1).fit(X)
    ours = create_clusterer("kmeans", n_clusters=8, init=start, backend="torch").fit(X)
    assert np.unique(ours.labels_).size == 8
    assert np.array_equal(ours.labels_, ref.labels_) and ours.n_iter_ == ref.n_iter_
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-5)


def test_kmeans_plusplus_start_clusters_as_well_as_scikit_learns():
    X, y = make_blobs(n_samples=4000, centers=40, n_features=32, cluster_std=4.0, random_state=1)
    ref = KMeans(40, n_init=1, random_state=0).fit(X)
    ours = create_clusterer("kmeans", n_clusters=40, random_state=0, backend="torch").fit(X)
    assert ami(y, ours.labels_) > ami(y, ref.labels_) - 0.02
    assert ours.inertia_ < 1.02 * ref.inertia_
    again = create_clusterer("kmeans", n_clusters=40, random_state=0, backend="torch").fit(X)
    assert np.array_equal(again.labels_, ours.labels_) and again.inertia_ == ours.inertia_  # seeded
    other = create_clusterer("kmeans", n_clusters=40, random_state=1, backend="torch").fit(X)
    assert not np.array_equal(other.cluster_centers_, ours.cluster_centers_)


def test_kmeans_plusplus_picks_spread_centres():
    """Four tight, far-apart groups and K=4: greedy k-means++ takes one centre from each."""
    rng = np.random.default_rng(0)
    X = np.concatenate([c + 0.01 * rng.normal(size=(50, 3)) for c in 100 * np.eye(4, 3)]).astype(np.float32)
    Xt = torch.as_tensor(X)
    C = _torch_kmeans.kmeans_plusplus(Xt, 4, np.random.default_rng(3)).numpy()
    nearest = ((X[:, None] - C[None]) ** 2).sum(-1).argmin(1)
    assert sorted(np.unique(nearest[np.arange(0, 200, 50)])) == [0, 1, 2, 3]


def test_starts_stopping_rule_and_what_it_refuses():
    X, _ = make_blobs(n_samples=2000, centers=5, n_features=8, random_state=2)
    assert create_clusterer("kmeans", n_clusters=5, random_state=0, backend="torch", max_iter=2).fit(X).n_iter_ <= 2
    loose = create_clusterer("kmeans", n_clusters=5, random_state=0, backend="torch", tol=10.0).fit(X)
    strict = create_clusterer("kmeans", n_clusters=5, random_state=0, backend="torch", tol=0.0).fit(X)
    assert loose.n_iter_ == 1 < strict.n_iter_
    # ten random starts ('auto'), the lowest inertia kept: never worse than the first start alone
    many = create_clusterer("kmeans", n_clusters=5, random_state=0, backend="torch", init="random").fit(X)
    one = create_clusterer("kmeans", n_clusters=5, random_state=0, backend="torch", init="random", n_init=1).fit(X)
    assert many.inertia_ <= one.inertia_
    dup = np.repeat(np.random.default_rng(0).normal(size=(30, 4)), 10, axis=0)
    assert np.unique(create_clusterer("kmeans", n_clusters=20, random_state=0, backend="torch",
                                      init="random").fit(dup).labels_).size == 20
    with pytest.raises(ConfigError, match="sample_weight"):
        create_clusterer("kmeans", n_clusters=3, backend="torch").fit(X, sample_weight=np.ones(len(X)))
    with pytest.raises(ConfigError, match=r"init has shape \(2, 8\), expected \(3, 8\)"):
        create_clusterer("kmeans", n_clusters=3, backend="torch", init=X[:2]).fit(X)
    with pytest.raises(ConfigError, match="not a callable"):
        create_clusterer("kmeans", n_clusters=3, backend="torch", init=lambda X, k, random_state: X[:k]).fit(X)


def test_the_tolerance_is_relative_to_the_mean_variance_in_float64():
    """scikit-learn's ``tol`` times the mean of the column variances: float64 passes on CPU tensors (strided too),
    far from the origin, with a constant column, and for one row."""
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(5000, 9)) * np.arange(1, 10) + 3000.0).astype(np.float32)
    X[:, 4] = 7.0
    for data in (X, X[::3, 1:], X[:1]):
        want = float(np.mean(np.var(data.astype(np.float64), axis=0)))
        assert _torch_kmeans.mean_variance(torch.from_numpy(np.asarray(data))) == pytest.approx(want, rel=1e-12, abs=1e-300)


def test_products_run_at_full_float32_precision_and_the_setting_is_restored(monkeypatch):
    """The embedding job sets 'high' (TF32 on a GPU) for its encoder; K-Means must not inherit it."""
    X, _ = make_blobs(n_samples=1500, centers=6, n_features=10, random_state=5)
    seen = []
    real = _torch_kmeans.assign
    monkeypatch.setattr(_torch_kmeans, "assign", lambda *a: seen.append(torch.get_float32_matmul_precision())
                        or real(*a))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        create_clusterer("kmeans", n_clusters=6, random_state=0, backend="torch").fit(X)
        assert seen and set(seen) == {"highest"}
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_auto_takes_the_torch_backend_only_where_torch_sees_a_gpu(monkeypatch):
    est = create_clusterer("kmeans", n_clusters=4, random_state=0)
    if not torch.cuda.is_available():
        assert _gpu.cuda_available() is False
        assert est._choose_backend(500, 8) == "sklearn"
        X, _ = make_blobs(n_samples=500, centers=4, random_state=0)
        assert est.fit(X).backend_ == "sklearn"
    # what the choice reads, as on a GPU machine with 8 GiB free
    monkeypatch.setattr(_gpu, "cuda_available", lambda: True)
    monkeypatch.setattr(_gpu, "free_device_bytes", lambda device: 8 * 2**30)
    assert est._choose_backend(500, 8) == "torch"
    assert create_clusterer("kmeans", n_clusters=4, backend="faiss")._choose_backend(500, 8) == "faiss"
    big = create_clusterer("kmeans", n_clusters=1000)  # 1M x 768 needs about 4 GiB there: on the CPU instead
    assert big._choose_backend(1_000_000, 768) == "torch"
    assert big._choose_backend(3_000_000, 768) in ("faiss", "sklearn")
    with pytest.raises(MemoryGuardError, match="GiB of GPU memory for 3,000,000 x 768 points"):
        _torch_kmeans.check_device_memory(torch.device("cuda"), 3_000_000, 768, 1000, "kmeans")
    monkeypatch.setenv("ZSCLUST_GPU", "off")
    assert est._choose_backend(500, 8) == "sklearn"
    assert _gpu.torch_device().type == "cpu"


def test_the_memory_guard_counts_the_torch_fit_on_the_cpu():
    from zsclust.cluster import estimate_fit_bytes

    est = create_clusterer("kmeans", n_clusters=1000, backend="torch")
    need, why = estimate_fit_bytes(est, 1_000_000, 768)
    if torch.cuda.is_available():
        assert "GPU" in why and need >= 1_000_000 * 768 * 4
    else:
        assert "CPU" in why and 1_000_000 * 768 * 4 < need < 4 * 2**30


# ------------------------------------------------------------------------------ the exact neighbour search


@pytest.mark.parametrize("dtype,metric", [(np.float32, "correlation"), (np.float64, "euclidean")])
def test_candidates_from_torch_products_give_the_brute_force_graph(dtype, metric):
    """torch picks the candidates (on the CPU here), in the data's precision: float32 for UMAP's graph,
    float64 for HDBSCAN's core distances."""
    from sklearn.neighbors import NearestNeighbors

    X = np.random.default_rng(0).normal(size=(900, 24)).astype(dtype)
    idx, dist = exact_knn(X, 15, metric, device="cpu")
    X64 = X.astype(np.float64)
    d_ref, i_ref = NearestNeighbors(n_neighbors=15, metric=metric, algorithm="brute").fit(X64).kneighbors(X64)
    assert np.array_equal(idx, i_ref)
    np.testing.assert_allclose(dist, d_ref, rtol=1e-5, atol=1e-6)


def test_torch_candidates_keep_the_rounding_check():
    """Tight clusters far apart: float32 products cannot order the points inside a cluster, so rows the rounding
    bound cannot vouch for are searched again in float64, whichever device chose the candidates."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    X = np.concatenate([c + 1e-3 * rng.normal(size=(200, 10)) for c in 100 * rng.normal(size=(5, 10))])
    X32 = X.astype(np.float32)
    idx, dist = exact_knn(X32, 10, device="cpu")
    X64 = X32.astype(np.float64)
    d_ref, i_ref = NearestNeighbors(n_neighbors=10, algorithm="brute").fit(X64).kneighbors(X64)
    assert np.array_equal(idx, i_ref)
    np.testing.assert_allclose(dist, d_ref, rtol=1e-5, atol=1e-7)


def test_auto_searches_exactly_much_further_when_the_products_run_on_a_gpu(monkeypatch):
    n_cpu_limit = int((_knn_graph.EXACT_MAX_WORK / 768) ** 0.5)
    monkeypatch.setenv("ZSCLUST_GPU", "off")
    assert resolve_method("auto", 2 * n_cpu_limit, 768) == "nndescent"
    monkeypatch.delenv("ZSCLUST_GPU")
    # what the choice reads, as on a GPU machine with 80 GiB free
    monkeypatch.setattr(_gpu, "cuda_available", lambda: True)
    monkeypatch.setattr(_gpu, "free_device_bytes", lambda device: 80 * 2**30)
    assert _knn_graph._products_device(None) == torch.device("cuda")
    assert resolve_method("auto", 1_000_000, 768) == "exact"
    assert resolve_method("auto", 3_000_000, 768) == "exact"  # 6.9e15 <= 1e16
    assert resolve_method("auto", 10_000_000, 768) == "nndescent"  # beyond the GPU's work bound
    assert resolve_method("auto", 1_000_000, 768, metric="manhattan") == "nndescent"  # no products for l1
    monkeypatch.setattr(_gpu, "free_device_bytes", lambda device: 4 * 2**30)  # 3 GiB of data would not fit
    assert resolve_method("auto", 1_000_000, 768) == "nndescent"


# ------------------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
@needs_cuda
def test_the_gpu_gives_the_cpu_labels_every_time(monkeypatch):
    X, y = make_blobs(n_samples=20_000, centers=50, n_features=64, cluster_std=4.0, random_state=3)
    gpu = create_clusterer("kmeans", n_clusters=50, random_state=0, backend="torch").fit(X)
    again = create_clusterer("kmeans", n_clusters=50, random_state=0, backend="torch").fit(X)
    assert np.array_equal(gpu.labels_, again.labels_) and np.array_equal(gpu.cluster_centers_, again.cluster_centers_)
    monkeypatch.setenv("ZSCLUST_GPU", "off")
    cpu = create_clusterer("kmeans", n_clusters=50, random_state=0, backend="torch").fit(X)
    assert ami(cpu.labels_, gpu.labels_) > 0.999 and gpu.inertia_ == pytest.approx(cpu.inertia_, rel=1e-4)
    with pytest.raises(MemoryGuardError, match="GiB of GPU memory"):
        _torch_kmeans.check_device_memory(torch.device("cuda"), 10**9, 4096, 1000, "kmeans")


@pytest.mark.gpu
@needs_cuda
def test_the_exact_graph_is_the_same_with_products_on_the_gpu(monkeypatch):
    X = np.random.default_rng(1).normal(size=(5000, 64)).astype(np.float32)
    gpu_idx, gpu_dist = exact_knn(X, 30)
    monkeypatch.setenv("ZSCLUST_GPU", "off")
    cpu_idx, cpu_dist = exact_knn(X, 30)
    assert np.array_equal(gpu_idx, cpu_idx) and np.array_equal(gpu_dist, cpu_dist)
