"""The study's other methods: kernel PCA, PaCMAP, t-SNE, PCA "mle", OPTICS, Louvain (and Leiden).

The registry-wide contract and scikit-learn checks in test_cluster.py cover these estimators too (they
are registered); here: agreement with the study's own recipe computed directly, the memory of the
dense Louvain graph, seeding through run_job, and the shipped config choices.
"""

from __future__ import annotations

import tracemalloc
import warnings

import networkx as nx
import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_mutual_info_score as ami
from sklearn.metrics import pairwise_distances

from zsclust.cluster import (
    EXACT_TSNE_MAX_SAMPLES,
    ClusteringPipeline,
    JobData,
    JobSpec,
    Scoring,
    affinity_graph,
    check_fit_memory,
    create_clusterer,
    create_reducer,
    estimate_fit_bytes,
    registry_defaults,
    run_job,
)
from zsclust.config import load_config
from zsclust.errors import ConfigError, MemoryGuardError


@pytest.fixture(scope="module")
def overlapping():
    """Three blobs that touch: a partition with some freedom, so agreement with a reference means something."""
    return make_blobs(n_samples=120, centers=3, n_features=5, cluster_std=2.5, random_state=3)


@pytest.fixture(scope="module")
def separated():
    return make_blobs(n_samples=150, centers=3, n_features=6, cluster_std=0.5, random_state=0)


def _partition(labels) -> set[frozenset]:
    return {frozenset(np.flatnonzero(labels == k)) for k in np.unique(labels)}


# ------------------------------------------------------------------------------ Louvain / Leiden


@pytest.mark.parametrize("metric, remove_self_loops", [("euclidean", True), ("l1", False)])
def test_dense_louvain_is_the_study_recipe_computed_directly(overlapping, metric, remove_self_loops):
    """Weights 1/(1+d) over all pairs, networkx's louvain_communities, same seed: the same communities."""
    X, _ = overlapping
    W = 1.0 / (1.0 + pairwise_distances(X, metric=metric))
    if remove_self_loops:
        np.fill_diagonal(W, 0.0)
    expected = nx.community.louvain_communities(nx.from_numpy_array(W), resolution=1.0, threshold=1e-7, seed=7)
    est = create_clusterer("louvain", metric=metric, remove_self_loops=remove_self_loops, random_state=7)
    labels = est.fit_predict(X)
    assert _partition(labels) == {frozenset(c) for c in expected}
    assert 2 <= len(expected) < len(X)  # a real partition, not all-in-one or singletons
    assert labels[0] == 0 and labels.dtype.kind == "i" and (labels >= 0).all()  # numbered by first member, no noise


def test_resolution_trades_community_size(overlapping):
    X, _ = overlapping
    sizes = [np.unique(create_clusterer("louvain", resolution=r, random_state=0).fit_predict(X)).size
             for r in (0.5, 1.0, 4.0)]
    assert sizes[0] <= sizes[1] < sizes[2]


def test_knn_graph_keeps_the_nearest_pairs_of_the_dense_graph(overlapping):
    X, _ = overlapping
    dense = affinity_graph(X, graph="dense")
    knn = affinity_graph(X, graph="knn", n_neighbors=5)
    assert (knn != knn.T).nnz == 0 and knn.diagonal().sum() == 0
    rows, cols = knn.nonzero()
    np.testing.assert_allclose(knn[rows, cols].A1, dense[rows, cols])  # same weights 1/(1+d)
    order = np.argsort(-dense, axis=1)[:, :5]  # each point's 5 strongest (nearest) links are all there
    assert all(knn[i, j] > 0 for i in range(len(X)) for j in order[i])
    assert len(X) * 5 <= knn.nnz < len(X) * 10  # symmetrised union, far fewer than N^2
    with_loops = affinity_graph(X, graph="knn", n_neighbors=5, remove_self_loops=False)
    assert np.all(with_loops.diagonal() == 1.0) and np.all(np.diag(affinity_graph(X, remove_self_loops=False)) == 1.0)


@pytest.mark.parametrize("name", ["louvain", "leiden"])
def test_graph_clusterers_are_seeded_and_agree_with_the_blobs(name, overlapping, separated):
    X, y = overlapping
    a = create_clusterer(name, graph="knn", n_neighbors=10, random_state=1).fit_predict(X)
    b = create_clusterer(name, graph="knn", n_neighbors=10, random_state=1).fit_predict(X)
    assert np.array_equal(a, b) and ami(y, a) > 0.5
    Xs, ys = separated
    assert ami(ys, create_clusterer(name, random_state=0).fit_predict(Xs)) == 1.0


def test_leiden_leaves_the_global_random_generator_alone(separated):
    import random

    import igraph

    random.seed(11)
    expected = random.random()
    random.seed(11)
    create_clusterer("leiden", graph="knn", n_neighbors=5, random_state=0).fit(separated[0])
    assert random.random() == expected  # igraph drew from its own seeded generator, which was then put back
    assert igraph.Graph.Famous("Zachary").community_leiden(objective_function="modularity") is not None


@pytest.mark.parametrize("name", ["louvain", "leiden"])
def test_memory_guard_refuses_the_dense_graph_without_building_it(monkeypatch, name):
    monkeypatch.setenv("ZSCLUST_MEMORY_LIMIT", "1GiB")
    X = np.zeros((40_000, 2), dtype=np.float32)
    est = create_clusterer(name)
    tracemalloc.start()
    try:
        with pytest.raises(MemoryGuardError) as info:
            est.fit(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20  # the weight matrix alone would be 11.9 GiB
    msg = str(info.value)
    assert "N=40,000" in msg and "GiB" in msg and "dense graph" in msg and "graph='knn'" in msg
    assert not hasattr(est, "labels_")
    knn = create_clusterer(name, graph="knn", n_neighbors=15)  # the same N on a kNN graph fits the budget
    assert check_fit_memory(knn, 40_000, 2) < 2**30


def test_dense_louvain_estimate_covers_what_networkx_really_allocates(overlapping):
    """fit_memory reflects the N^2 graph: at or above the measured peak, and not wildly above it."""
    X = np.vstack([overlapping[0]] * 2)[:200]
    est = create_clusterer("louvain", random_state=0)
    estimate, why = estimate_fit_bytes(est, *X.shape)
    tracemalloc.start()
    try:
        est.fit(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= estimate < 2.5 * peak, (peak, estimate)
    assert "N(N-1)/2 edges" in why
    grows = estimate_fit_bytes(est, 4000, 5)[0] / estimate_fit_bytes(est, 2000, 5)[0]
    assert 3.9 < grows < 4.1  # quadratic in N


@pytest.mark.parametrize("params, message", [
    ({"graph": "sparse"}, "graph"),
    ({"resolution": 0}, "resolution"),
    ({"metric": "mahalanobis"}, "metric"),
])
def test_bad_graph_parameters_are_config_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        create_clusterer("louvain", **params)


def test_knn_graph_needs_more_samples_than_neighbours(separated):
    with pytest.raises(ConfigError, match=r"n_neighbors=15 is larger than the number of samples N=9"):
        create_clusterer("louvain", graph="knn").fit(separated[0][:10])


# ------------------------------------------------------------------------------ OPTICS


def test_optics_uses_the_study_defaults_and_marks_outliers_as_noise(separated):
    assert registry_defaults("optics") == {"min_samples": 5, "xi": 0.05, "cluster_method": "xi", "metric": "euclidean"}
    X, y = separated
    far = np.eye(X.shape[1])[:5] * 300  # five isolated points, far from the blobs and from each other
    labels = create_clusterer("optics", min_cluster_size=20).fit_predict(np.vstack([X, far]))
    assert np.all(labels[-5:] == -1)
    assert ami(y, labels[:-5]) == 1.0


def test_optics_by_import_path_gets_the_registered_estimate():
    est = create_clusterer("sklearn.cluster.OPTICS", min_samples=5)
    assert estimate_fit_bytes(est._build(), 10_000, 8) == estimate_fit_bytes(create_clusterer("optics"), 10_000, 8)


# ------------------------------------------------------------------------------ reducers


def test_linear_kernel_pca_is_pca(separated):
    """Known answer: kernel PCA with a linear kernel gives PCA's scores (up to each component's sign)."""
    X, _ = separated
    kpca = create_reducer({"name": "kernel_pca", "n_components": 3, "kernel": "linear"}, random_state=0).fit_transform(X)
    pca = PCA(n_components=3).fit_transform(X)
    np.testing.assert_allclose(np.abs(kpca), np.abs(pca), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel", ["poly", "rbf", "sigmoid", "cosine"])
def test_every_kernel_of_the_study_reduces(kernel, separated):
    X, y = separated
    spec = {"name": "kernel_pca", "n_components": 3, "kernel": kernel, "eigen_solver": "arpack"}
    Z = create_reducer(spec, random_state=0).fit_transform(X)
    assert Z.shape == (len(X), 3) and np.isfinite(Z).all()
    assert np.array_equal(Z, create_reducer(spec, random_state=0).fit_transform(X))


def test_kernel_pca_refuses_more_components_than_samples(separated):
    with pytest.raises(ConfigError, match=r"n_components=20 is larger than the number of samples N=10"):
        create_reducer({"name": "kernel_pca", "n_components": 20}).fit(separated[0][:10])


def test_kernel_pca_and_exact_tsne_are_guarded_in_fit(monkeypatch):
    monkeypatch.setenv("ZSCLUST_MEMORY_LIMIT", "64MiB")
    X = np.zeros((100_000, 2), dtype=np.float32)
    for spec, words in (({"name": "kernel_pca", "n_components": 2}, "NxN kernel matrix"),
                        ({"name": "tsne", "method": "exact"}, "exact t-SNE")):
        with pytest.raises(MemoryGuardError, match=words):
            create_reducer(spec).fit_transform(X)


def test_tsne_picks_exact_for_the_study_sizes_and_fft_above():
    tsne = create_reducer("tsne")
    assert tsne.method_for(EXACT_TSNE_MAX_SAMPLES) == "exact" and tsne.method_for(EXACT_TSNE_MAX_SAMPLES + 1) == "fft"
    assert create_reducer({"name": "tsne", "n_components": 5}).method_for(100_000) == "exact"  # FFT: 2-d at most
    small, why_small = estimate_fit_bytes(tsne, EXACT_TSNE_MAX_SAMPLES, 50)
    big, why_big = estimate_fit_bytes(tsne, 100_000, 50)
    assert "exact" in why_small and "fft" in why_big and big < small  # FFT's memory is linear in N
    with pytest.raises(ConfigError, match="method='fft' supports n_components <= 2"):
        create_reducer({"name": "tsne", "method": "fft", "n_components": 3})


def test_tsne_refuses_a_perplexity_its_data_cannot_have(separated):
    with pytest.raises(ConfigError, match=r"perplexity=30.0 must be less than the number of samples N=20"):
        create_reducer("tsne").fit_transform(separated[0][:20])


@pytest.mark.parametrize("method", ["exact", "fft"])
def test_tsne_is_seeded_and_separates_the_blobs(method, separated):
    X, y = separated
    spec = {"name": "tsne", "perplexity": 10.0, "method": method, "max_iter": 300}
    est = create_reducer(spec, random_state=0)
    Z = est.fit_transform(X)
    assert est.method_ == method and Z.shape == (len(X), 2)
    assert np.array_equal(Z, create_reducer(spec, random_state=0).fit_transform(X))
    assert ami(y, create_clusterer("kmeans", n_clusters=3, random_state=0).fit_predict(Z)) == 1.0


def test_pacmap_is_seeded_separates_the_blobs_and_restores_faiss_threads(separated):
    import faiss

    X, y = separated
    threads = faiss.omp_get_max_threads()
    spec = {"name": "pacmap", "n_components": 2}
    Z = create_reducer(spec, random_state=3).fit_transform(X)
    assert faiss.omp_get_max_threads() == threads  # PaCMAP sets one thread when seeded; put back
    assert np.array_equal(Z, create_reducer(spec, random_state=3).fit_transform(X))
    assert not np.array_equal(Z, create_reducer(spec, random_state=4).fit_transform(X))
    assert ami(y, create_clusterer("kmeans", n_clusters=3, random_state=0).fit_predict(Z)) == 1.0
    assert not hasattr(create_reducer("pacmap"), "transform")  # no projection of new points


def test_pacmap_refuses_what_it_would_silently_shrink(separated):
    with pytest.raises(ConfigError, match="needs more than 35 samples; got N=30"):
        create_reducer({"name": "pacmap", "n_components": 2}).fit_transform(separated[0][:30])
    with pytest.raises(ConfigError, match=r"n_components=50 <= min\(n_samples, n_features\) = 6"):
        create_reducer("pacmap").fit_transform(separated[0])


def test_pca_accepts_mle(separated):
    """The existing pca reducer takes the study's n_components="mle" (Minka's estimate of the dimension)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 12)) * 5 + rng.normal(scale=0.01, size=(300, 12))
    assert create_reducer({"name": "pca", "n_components": "mle", "zscore": False}).fit_transform(X).shape == (300, 3)


def test_pipeline_validates_pca_mle_on_wide_embeddings():
    """The smoke test fits 'mle' on more samples than features; fewer samples than features is a clear error."""
    job = JobSpec("mle", {"name": "pca", "n_components": "mle"}, {"name": "kmeans", "n_clusters": 5})
    ClusteringPipeline([job]).validate(n_samples=10_000, n_features=768, n_classes=10)
    with pytest.raises(ConfigError, match="'mle' .*needs at least as many samples as features, got N=20 < d=30"):
        create_reducer({"name": "pca", "n_components": "mle"}).fit(np.random.default_rng(0).normal(size=(20, 30)))


# ------------------------------------------------------------------------------ jobs and configs


def test_run_job_seeds_every_new_method(separated):
    X, y = separated
    data = JobData(X.astype(np.float32), "blobs", y, 3)
    job = JobSpec("tsne/louvain", {"name": "tsne", "perplexity": 10.0, "max_iter": 300},
                  {"name": "louvain", "graph": "knn", "n_neighbors": 10})
    scoring = Scoring(silhouette_spaces=("reduced",))
    first = run_job(data, job, seed=5, scoring=scoring)
    assert first.params["reducer.random_state"] == 5 and first.params["clusterer.random_state"] == 5
    assert np.array_equal(first.labels, run_job(data, job, seed=5, scoring=scoring).labels)
    assert first.metrics["ami"] > 0.6  # Louvain on a t-SNE map splits blobs into a few communities; it finds them


CHOICES = {"reducer": ["kernel_pca", "pacmap50", "tsne"], "clusterer": ["optics", "louvain", "louvain_knn",
                                                                         "leiden_knn"]}


def test_shipped_choices_expand_into_jobs_that_build():
    from zsclust._build import expand_jobs
    from zsclust.cluster._job import build_clusterer, reducer_spec

    jobs = expand_jobs(load_config("quickstart", [f"reducer=[{','.join(CHOICES['reducer'])}]",
                                                  f"clusterer=[{','.join(CHOICES['clusterer'])}]"]))
    assert len(jobs) == 12
    by = {j.label: j for j in jobs}
    assert by["kernel_pca/optics"].reducer["steps"][0] == {"name": "zscore"}  # the study z-scores before PCA
    assert by["pacmap50/louvain"].clusterer == {"name": "louvain", "graph": "dense", "resolution": 1.0}
    for job in jobs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            create_reducer(reducer_spec(job.reducer))
            build_clusterer(job.clusterer, 10, seed=0)
