"""Reducers, clusterers, the memory guard and the reduction cache, on real components.

UMAP tests live here (and only here) so that umap-learn's numba compilation is paid once.
"""

from __future__ import annotations

import json
import math
import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_mutual_info_score as ami
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks as parametrize_with_checks_sklearn

from zsclust.cluster import (
    STUDY_UMAP,
    IdentityReducer,
    ImportedClusterer,
    ReductionCache,
    UMAPReducer,
    create_clusterer,
    create_reducer,
    estimate_fit_bytes,
    list_clusterers,
    list_reducers,
    memory_budget,
    parse_bytes,
    reducer_key,
    registered_class,
    score_embedding,
    score_labels,
    umap_silhouette,
)
from zsclust.cluster.contract import parametrize_with_checks
from zsclust.errors import CacheError, ConfigError, InvalidDataError, MemoryGuardError, ZsclustError


@pytest.fixture(scope="module")
def blobs():
    """Four well-separated blobs: every clusterer should find them exactly."""
    X, y = make_blobs(n_samples=240, centers=4, n_features=8, cluster_std=0.5, random_state=0)
    return X, y


def _small_params(name: str) -> dict:
    """Parameters that make a clusterer sensible on ~30-60 points: the registry's own, or Birch's."""
    return registered_class(name)._zs_test_params if name in list_clusterers() else {"n_clusters": 3}


# ------------------------------------------------------------------------------ contract (over the registry)


@parametrize_with_checks()
def test_contract(check):
    """Every registered clusterer and reducer: params, fit, bad input, its memory estimate, its known answers."""
    check()


@pytest.mark.parametrize("name, params", [
    ("sklearn.cluster.Birch", {"n_clusters": 4}),
    ("sklearn.cluster:MiniBatchKMeans", {"n_clusters": 4, "random_state": 0, "n_init": 3}),
], ids=["dotted", "colon"])
def test_clusterers_by_import_path_recover_well_separated_blobs(name, params, blobs):
    X, y = blobs
    assert ami(y, create_clusterer(name, **params).fit_predict(X)) > 0.99


def test_memory_of_an_unknown_algorithm_is_said_to_be_unknown(caplog):
    """Birch is not registered and nothing estimates it: the guard says so instead of assuming linear memory."""
    est = create_clusterer("sklearn.cluster.Birch", n_clusters=3)
    estimate, why = estimate_fit_bytes(est._build(), 10_000_000, 50)
    assert estimate is None and "sklearn.cluster._birch.Birch does not estimate its memory" in why
    with caplog.at_level("WARNING", logger="zsclust.cluster._memory"):
        est.fit(blobs_array := np.random.default_rng(0).normal(size=(40, 4)))
    assert "memory use is unknown" in caplog.text and est.labels_.shape == (len(blobs_array),)
    # an import path of an algorithm a registered class wraps gets that class's estimate
    ap, why = estimate_fit_bytes(create_clusterer("sklearn.cluster.AffinityPropagation")._build(), 1000, 8)
    assert ap == estimate_fit_bytes(create_clusterer("affinity_propagation"), 1000, 8)[0] and "7 NxN" in why


def _registry_estimators():
    ests = [create_clusterer(n, **_small_params(n)) for n in list_clusterers()]
    ests.append(create_clusterer("sklearn.cluster.Birch", **_small_params("sklearn.cluster.Birch")))
    # umap: see the UMAP tests. A reducer whose defaults need more samples than these checks' ~20
    # (t-SNE's perplexity 30) names smaller ones in _zs_sklearn_check_params, as scikit-learn's own tests do.
    ests += [create_reducer({"name": n, **getattr(_reducer_class(n), "_zs_sklearn_check_params", {})})
             for n in list_reducers() if n != "umap"]
    return ests


def _reducer_class(name):
    from zsclust.cluster._reducers import _resolve

    return _resolve(name)[0]


def _expected_failures(est):
    if isinstance(est, ImportedClusterer):
        return {"check_no_attributes_set_in_init":
                "by design the target's parameters are flat attributes, not in __init__'s signature"}
    return dict(getattr(est, "_zs_sklearn_xfail", {}))  # what the wrapped library itself fails, with why


@parametrize_with_checks_sklearn(_registry_estimators(), expected_failed_checks=_expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_reducer_to_clusterer_pipeline_is_one_estimator(blobs):
    X, y = blobs
    pipe = Pipeline([("reduce", create_reducer(["zscore", {"name": "pca", "n_components": 4}])),
                     ("cluster", create_clusterer("kmeans", n_clusters=3, random_state=0))])
    pipe = clone(pipe).set_params(cluster__n_clusters=4)
    assert ami(y, pipe.fit_predict(X)) > 0.99
    assert "reduce__pca__n_components" in pipe.get_params()


# ------------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("name", ["kmeans", "agglomerative", "spectral", "sklearn.cluster.Birch"])
def test_k_larger_than_n_names_k_and_n(name, blobs):
    X, _ = blobs
    est = create_clusterer(name, n_clusters=25)
    with pytest.raises(ConfigError, match=r"n_clusters=25 .*N=20"):
        est.fit(X[:20])


def test_spectral_needs_fewer_clusters_than_samples(blobs):
    X, _ = blobs
    with pytest.raises(ConfigError, match="n_clusters=12 .*N=12"):
        create_clusterer("spectral", n_clusters=12, n_neighbors=5).fit(X[:12])
    with pytest.raises(ConfigError, match="n_neighbors=13 .*N=12"):
        create_clusterer("spectral", n_clusters=3, n_neighbors=13).fit(X[:12])


@pytest.mark.parametrize("name", list_clusterers() + ["sklearn.cluster.Birch"])
def test_nan_and_inf_rows_are_counted(name, blobs):
    X = blobs[0][:30].copy()
    X[4, 2] = np.nan
    X[17, 0] = -np.inf
    with pytest.raises(InvalidDataError, match=r"2 of 30 rows contain NaN or inf \(rows 4, 17\)"):
        create_clusterer(name, **_small_params(name)).fit(X)


@pytest.mark.parametrize("name", list_clusterers() + list_reducers())
def test_fewer_than_two_samples(name, blobs):
    X = blobs[0][:1]
    est = create_reducer(name) if name in list_reducers() else create_clusterer(name)
    with pytest.raises(InvalidDataError, match="at least 2 samples, got n_samples=1"):
        est.fit(X)


def test_hdbscan_all_noise_is_a_defined_result():
    X = np.random.default_rng(0).uniform(size=(200, 5))  # no density structure at all
    est = create_clusterer("hdbscan", min_cluster_size=100)
    labels = est.fit_predict(X)
    assert (labels == -1).all()
    s = score_labels(np.arange(200) % 3, labels)
    assert s["n_clusters"] == 0 and s["noise_fraction"] == 1.0 and math.isnan(s["ami_clustered"])
    assert math.isnan(score_embedding(X, labels)["silhouette"])


def test_hdbscan_min_samples_larger_than_n(blobs):
    X = blobs[0][:12]
    with pytest.raises(ConfigError, match="min_cluster_size=13.*N=12"):
        create_clusterer("hdbscan", min_cluster_size=13).fit(X)
    with pytest.raises(ConfigError, match="min_samples=20 .*N=12"):
        create_clusterer("hdbscan", min_samples=20).fit(X)


def test_agglomerative_parameter_rules_fail_at_creation():
    with pytest.raises(ConfigError, match="ward' requires metric='euclidean'"):
        create_clusterer("agglomerative", n_clusters=3, metric="cosine")
    with pytest.raises(ConfigError, match="exactly one of n_clusters"):
        create_clusterer("agglomerative", n_clusters=3, distance_threshold=2.0)
    with pytest.raises(ConfigError, match="exactly one of n_clusters"):
        create_clusterer("agglomerative", n_clusters=None)
    with pytest.raises(ConfigError, match="linkage"):
        create_clusterer("agglomerative", linkage="weighted")


def test_bad_names_and_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="Unknown clusterer 'kmean'.*Did you mean: kmeans"):
        create_clusterer("kmean")
    with pytest.raises(ConfigError, match="n_cluster .*Did you mean: n_clusters"):
        create_clusterer("kmeans", n_cluster=3)
    with pytest.raises(ConfigError, match="'n_clusters' parameter"):
        create_clusterer("kmeans", n_clusters=-3)
    with pytest.raises(ConfigError, match="no attribute 'Nope'"):
        create_clusterer("sklearn.cluster.Nope")
    with pytest.raises(ConfigError, match="Cannot import module"):
        create_clusterer("no_such_package.Clusterer")
    with pytest.raises(ConfigError, match="not a clusterer"):
        create_clusterer("sklearn.decomposition.PCA")
    with pytest.raises(ConfigError, match="threshhold"):
        create_clusterer("sklearn.cluster.Birch", threshhold=0.3)
    with pytest.raises(ConfigError, match="Unknown reducer 'pac'.*Did you mean: pca"):
        create_reducer("pac")
    with pytest.raises(ConfigError, match="n_component"):
        create_reducer({"name": "pca", "n_component": 3})
    with pytest.raises(ConfigError, match="'name' key"):
        create_reducer({"n_components": 3})
    assert isinstance(create_clusterer({"name": "kmeans", "n_clusters": 7}), type(create_clusterer("kmeans")))
    assert create_clusterer({"name": "kmeans", "n_clusters": 7}).n_clusters == 7


def test_registry_defaults_are_the_recipe():
    assert create_clusterer("spectral").affinity == "nearest_neighbors"
    assert create_clusterer("kmeans").n_init == 1
    assert create_clusterer("kmeans", n_init=5).n_init == 5
    assert create_reducer("umap").get_params() == {**UMAPReducer().get_params(), **STUDY_UMAP}


# ------------------------------------------------------------------------------ reducers


def test_basic_reducers(blobs):
    X, _ = blobs
    assert create_reducer(None).fit_transform(X) is X
    assert isinstance(create_reducer(["none"]), IdentityReducer)
    Z = create_reducer("zscore").fit_transform(X)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(0), 1, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(create_reducer("l2").fit_transform(X), axis=1), 1)
    P = create_reducer({"name": "pca", "n_components": 3, "zscore": False}, random_state=0).fit_transform(X)
    np.testing.assert_allclose(np.abs(P), np.abs(PCA(3, random_state=0).fit_transform(X)), atol=1e-10)
    pca = create_reducer({"name": "pca", "n_components": 0.9}).fit(X)
    assert pca.explained_variance_ratio_.sum() >= 0.9 and pca.n_components_ < X.shape[1]


def test_pca_refuses_more_components_than_min_n_d(blobs):
    X, _ = blobs
    with pytest.raises(ConfigError, match=r"n_components=9 .*min\(240, 8\) = 8"):
        create_reducer({"name": "pca", "n_components": 9}).fit(X)
    with pytest.raises(ConfigError, match="n_components"):
        create_reducer({"name": "pca", "n_components": 1.5})


def test_reducers_refuse_nan(blobs):
    X = blobs[0].copy()
    X[7] = np.inf
    for name in list_reducers():
        with pytest.raises(InvalidDataError, match="1 of 240 rows"):
            create_reducer(name).fit_transform(X)


def test_chains_are_pipelines_and_keys_are_canonical(blobs):
    X, _ = blobs
    chain = create_reducer(["zscore", "none", {"name": "pca", "n_components": 4}, "l2"], random_state=7)
    assert isinstance(chain, Pipeline)
    assert [n for n, _ in chain.steps] == ["zscore", "pca", "l2"]
    assert chain.get_params()["pca__random_state"] == 7
    assert chain.fit_transform(X).shape == (240, 4)
    twice = create_reducer(["pca", "pca"])
    assert [n for n, _ in twice.steps] == ["pca-1", "pca-2"]
    # equal computations, equal keys; different ones differ
    assert reducer_key("umap") == reducer_key({"name": "umap"}) == reducer_key([{"name": "umap", "n_components": 50}])
    assert reducer_key(["none", "pca"]) == reducer_key("pca")
    assert reducer_key(None) == reducer_key("none") == [{"name": "none"}]
    assert reducer_key({"name": "umap", "n_jobs": 4}) == reducer_key("umap")  # does not change the result
    assert reducer_key({"name": "umap", "n_neighbors": 15}) != reducer_key("umap")
    assert reducer_key("pca", random_state=1) != reducer_key("pca", random_state=2)
    key = reducer_key(["zscore", "pca", "umap"])
    assert [s["name"] for s in key] == ["zscore", "pca", "umap"]
    assert json.loads(json.dumps(key)) == key


# ------------------------------------------------------------------------------ memory guard


def test_memory_guard_refuses_huge_affinity_propagation_without_allocating(monkeypatch):
    monkeypatch.setenv("ZSCLUST_MEMORY_LIMIT", "1GiB")
    X = np.zeros((200_000, 2), dtype=np.float32)
    est = create_clusterer("affinity_propagation")
    tracemalloc.start()
    try:
        with pytest.raises(MemoryGuardError) as info:
            est.fit(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20  # a single 200k x 200k float64 matrix would be 298 GiB
    msg = str(info.value)
    assert "N=200,000" in msg and "TiB" in msg  # the estimate
    assert "ZSCLUST_MEMORY_LIMIT=1GiB" in msg and "819.2 MiB" in msg  # what is available (80% of it)
    assert "Subsample" in msg and "kmeans" in msg  # what to do
    assert isinstance(info.value, ZsclustError) and isinstance(info.value, MemoryError)
    assert not hasattr(est, "labels_")


@pytest.mark.parametrize("name,params", [
    ("affinity_propagation", {}),
    ("agglomerative", {"n_clusters": 3, "backend": "sklearn"}),  # ward's auto backend is linear (tests/test_scale.py)
    ("agglomerative", {"n_clusters": 3, "linkage": "average", "metric": "cosine"}),
    ("hdbscan", {"metric": "cosine"}),  # not a tree metric: brute force, NxN
    ("spectral", {"n_clusters": 3, "affinity": "rbf"}),
    ("sklearn.cluster.AffinityPropagation", {}),  # same guard by import path
    ("sklearn.cluster.AgglomerativeClustering", {"n_clusters": 3}),
])
def test_memory_guard_covers_every_quadratic_algorithm(name, params, monkeypatch):
    monkeypatch.setenv("ZSCLUST_MEMORY_LIMIT", "64MiB")
    X = np.zeros((20_000, 4))
    with pytest.raises(MemoryGuardError, match=r"at most about N=\d"):
        create_clusterer(name, **params).fit(X)


def test_linear_memory_algorithms_pass_the_guard():
    n, d = 1_000_000, 50
    for name, params in [("kmeans", {"n_clusters": 100}), ("hdbscan", {}), ("spectral", {"n_clusters": 10}),
                         ("agglomerative", {"n_clusters": 10, "linkage": "single", "metric": "l1"})]:
        assert estimate_fit_bytes(create_clusterer(name, **params), n, d)[0] < 8 * 2**30, name


def test_memory_budget_from_the_environment(monkeypatch):
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("500MB") == 500 * 10**6
    assert parse_bytes("1.5G") == int(1.5 * 2**30)
    assert parse_bytes("2e9") == 2 * 10**9
    with pytest.raises(ConfigError, match="memory size"):
        parse_bytes("lots")
    monkeypatch.setenv("ZSCLUST_MEMORY_LIMIT", "100MiB")
    monkeypatch.setenv("ZSCLUST_MEMORY_SAFETY", "0.5")
    assert memory_budget().bytes == 50 * 2**20
    monkeypatch.setenv("ZSCLUST_MEMORY_LIMIT", "1000TiB")  # cannot raise it above what there is
    assert memory_budget().bytes < 1000 * 2**40 * 0.5
    monkeypatch.setenv("ZSCLUST_MEMORY_SAFETY", "2")
    with pytest.raises(ConfigError, match="ZSCLUST_MEMORY_SAFETY"):
        memory_budget()
    monkeypatch.setenv("ZSCLUST_MEMORY_LIMIT", "off")
    assert memory_budget().bytes is None


# ------------------------------------------------------------------------------ reduction cache

PCA4 = ["zscore", {"name": "pca", "n_components": 4}]


def test_cache_hit_and_misses(tmp_path, blobs):
    X, _ = blobs
    cache = ReductionCache(tmp_path / "red")
    a, hit = cache.get_or_fit(PCA4, X, embedding_fingerprint="fp1", seed=0)
    assert not hit and a.shape == (240, 4)
    b, hit = cache.get_or_fit(PCA4, X, embedding_fingerprint="fp1", seed=0)
    assert hit and np.array_equal(a, b)
    assert not a.flags.writeable  # nobody changes a cached array in place
    # a fresh process (new instance, same directory) hits on disk
    c, hit = ReductionCache(tmp_path / "red").get_or_fit(PCA4, X, embedding_fingerprint="fp1", seed=0)
    assert hit and np.array_equal(a, c)
    # equal spec spelled differently: still a hit
    _, hit = cache.get_or_fit(["zscore", "none", {"name": "pca", "n_components": 4, "copy": False}], X,
                              embedding_fingerprint="fp1", seed=0)
    assert hit
    for spec, fp, seed in [(PCA4, "fp1", 1), (["zscore", {"name": "pca", "n_components": 3}], "fp1", 0),
                           (PCA4, "fp2", 0)]:
        _, hit = cache.get_or_fit(spec, X, embedding_fingerprint=fp, seed=seed)
        assert not hit, (spec, fp, seed)
    sidecars = sorted(tmp_path.joinpath("red").glob("*.json"))
    assert len(sidecars) == 4
    meta = json.loads(sidecars[0].read_text())
    assert {"key", "embedding_fingerprint", "reducer", "seed", "shape", "dtype", "sha256", "x_probe"} <= set(meta)
    assert not list(tmp_path.joinpath("red").glob("*.tmp"))


def test_cache_passes_over_a_reduction_another_process_is_fitting(tmp_path, blobs):
    """``wait=False``: workers fit different reductions side by side instead of queueing for one."""
    import subprocess
    import sys

    X, _ = blobs
    cache = ReductionCache(tmp_path / "red")
    key = cache.key(PCA4, X, embedding_fingerprint="fp1", seed=0)
    holder = subprocess.Popen(  # another process holding the entry's lock, as a worker fitting it does
        [sys.executable, "-c", "import sys; from zsclust._locks import FileLock\n"
         "with FileLock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.readline()",
         str(tmp_path / "red" / f".{key}.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cache.get_or_fit(PCA4, X, embedding_fingerprint="fp1", seed=0, wait=False) is None
        other, hit = cache.get_or_fit(["zscore", {"name": "pca", "n_components": 3}], X, embedding_fingerprint="fp1",
                                      seed=0, wait=False)  # another reduction is free
        assert not hit and other.shape == (240, 3)
    finally:
        holder.communicate("\n", timeout=30)
    a, hit = cache.get_or_fit(PCA4, X, embedding_fingerprint="fp1", seed=0, wait=False)
    assert not hit and a.shape == (240, 4)
    assert cache.get_or_fit(PCA4, X, embedding_fingerprint="fp1", seed=0, wait=False)[1]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip", "no sidecar", "bad sidecar"])
def test_cache_treats_a_damaged_entry_as_a_miss_and_rewrites_it(damage, tmp_path, blobs):
    X, _ = blobs
    cache = ReductionCache(tmp_path)
    ref, _ = cache.get_or_fit(PCA4, X, embedding_fingerprint="fp", seed=0)
    key = cache.key(PCA4, embedding_fingerprint="fp", seed=0)
    npy, sidecar = cache.paths(key)
    data = npy.read_bytes()
    if damage == "truncate":
        npy.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        npy.write_bytes(b"not a numpy file")
    elif damage == "flip":
        npy.write_bytes(data[:-8] + bytes(8))  # valid file, wrong numbers: the checksum notices
    elif damage == "no sidecar":
        sidecar.unlink()  # as after a crash between the two writes
    else:
        sidecar.write_text("{not json")
    fresh = ReductionCache(tmp_path)
    again, hit = fresh.get_or_fit(PCA4, X, embedding_fingerprint="fp", seed=0)
    assert not hit and np.array_equal(again, ref)
    _, hit = ReductionCache(tmp_path).get_or_fit(PCA4, X, embedding_fingerprint="fp", seed=0)
    assert hit  # rewritten


def test_cache_in_memory_lru_and_unwritable_directory(tmp_path, blobs):
    X, _ = blobs
    cache = ReductionCache(tmp_path, memory_items=1)
    cache.get_or_fit(PCA4, X, embedding_fingerprint="a", seed=0)
    cache.get_or_fit(PCA4, X, embedding_fingerprint="b", seed=0)
    assert len(cache._memory) == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning, match="not cached"):
        out, hit = ReductionCache(blocker / "sub").get_or_fit(PCA4, X, embedding_fingerprint="a", seed=0)
    assert not hit and out.shape == (240, 4)
    with pytest.raises(ConfigError, match="embedding_fingerprint"):
        cache.get_or_fit(PCA4, X, embedding_fingerprint="", seed=0)


def test_cache_refuses_other_data_under_the_same_fingerprint(tmp_path, blobs):
    X = blobs[0].astype(np.float32)
    cache = ReductionCache(tmp_path)
    cache.get_or_fit(PCA4, X, embedding_fingerprint="fp", seed=0)
    _, hit = ReductionCache(tmp_path).get_or_fit(PCA4, X.astype(np.float64), embedding_fingerprint="fp", seed=0)
    assert hit  # same values, another dtype
    for other in (X[::-1], X[:200]):
        for c in (cache, ReductionCache(tmp_path)):  # in memory and on disk
            with pytest.raises(CacheError, match="fingerprint must identify the array exactly"):
                c.get_or_fit(PCA4, other, embedding_fingerprint="fp", seed=0)


# ------------------------------------------------------------------------------ UMAP (one module: numba compiles once)


@pytest.fixture(scope="module")
def umap_blobs():
    X, y = make_blobs(n_samples=200, centers=4, n_features=16, cluster_std=0.5, random_state=0)
    return X, y


def test_umap_reducer_is_seeded_and_clusters_well(umap_blobs, tmp_path):
    X, y = umap_blobs
    spec = {"name": "umap", "n_components": 5, "n_neighbors": 15}
    red = create_reducer(spec, random_state=0)
    assert clone(red).get_params() == red.get_params()
    Z = red.fit_transform(X)
    assert Z.shape == (200, 5) and np.isfinite(Z).all()
    assert np.array_equal(Z, create_reducer(spec, random_state=0).fit_transform(X))  # seeded: reproducible
    assert ami(y, create_clusterer("kmeans", n_clusters=4, random_state=0).fit_predict(Z)) > 0.99
    assert red.transform(X[:7]).shape == (7, 5)
    cache = ReductionCache(tmp_path)
    c1, hit1 = cache.get_or_fit(spec, X, embedding_fingerprint="fp", seed=0)
    c2, hit2 = ReductionCache(tmp_path).get_or_fit(spec, X, embedding_fingerprint="fp", seed=0)
    assert (hit1, hit2) == (False, True) and np.array_equal(c1, Z) and np.array_equal(c2, Z)


def test_umap_refuses_too_few_samples_before_fitting(umap_blobs):
    X, _ = umap_blobs
    with pytest.raises(ConfigError, match="n_neighbors=30 .*N=20"):
        create_reducer("umap").fit(X[:20])
    with pytest.raises(ConfigError, match="n_components=50 .*N=40"):
        create_reducer({"name": "umap", "n_neighbors": 10}).fit(X[:40])
    with pytest.raises(ConfigError, match="min_dist"):
        create_reducer({"name": "umap", "min_dist": -1})


def test_umap_silhouette_is_the_study_proxy(umap_blobs):
    X, y = umap_blobs
    s = umap_silhouette(X, y)  # the study's space: UMAP-50 with its own seed, 42
    Z = create_reducer("umap", random_state=42).fit_transform(X)
    assert s == pytest.approx(umap_silhouette(X, y, X_reduced=Z))
    assert s > 0.5  # separated blobs
    assert umap_silhouette(X, np.random.default_rng(0).integers(0, 4, 200), X_reduced=Z) < 0.1
