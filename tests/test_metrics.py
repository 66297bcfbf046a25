"""Metrics: agreement with scikit-learn, Hungarian accuracy, noise handling, undefined cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from zsclust.cluster import (
    LABEL_METRICS,
    clustering_accuracy,
    score_embedding,
    score_labels,
    umap_silhouette,
)
from zsclust.errors import ConfigError, InvalidDataError

SKLEARN = {
    "ami": lambda t, p: skm.adjusted_mutual_info_score(t, p, average_method="arithmetic"),
    "ari": skm.adjusted_rand_score,
    "nmi": lambda t, p: skm.normalized_mutual_info_score(t, p, average_method="arithmetic"),
    "fmi": skm.fowlkes_mallows_score,
    "homogeneity": skm.homogeneity_score,
    "completeness": skm.completeness_score,
    "v_measure": skm.v_measure_score,
}


def _labelings():
    rng = np.random.default_rng(0)
    out = {}
    for n, kt, kp in [(60, 3, 4), (500, 10, 7), (2000, 20, 30), (40, 40, 40)]:
        out[f"random n={n} kt={kt} kp={kp}"] = (rng.integers(0, kt, n), rng.integers(0, kp, n))
    t = rng.integers(0, 8, 1500)
    p = t.copy()
    p[rng.random(1500) < 0.25] = -1  # HDBSCAN-like noise
    swap = rng.random(1500) < 0.1
    p[swap] = rng.integers(0, 8, swap.sum())
    out["with noise"] = (t, p)
    out["single true class"] = (np.zeros(300, int), rng.integers(0, 5, 300))
    out["single predicted cluster"] = (rng.integers(0, 5, 300), np.zeros(300, int))
    out["both single"] = (np.zeros(300, int), np.full(300, 3))
    out["independent"] = (np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))
    out["identical permuted"] = (np.repeat(np.arange(5), 20), np.repeat([3, 0, 4, 1, 2], 20))
    out["one sample"] = (np.array([4]), np.array([7]))
    out["string classes"] = (np.array(list("aabbccab")), np.array([0, 0, 1, 1, 2, 2, 0, -1]))
    return out


LABELINGS = _labelings()


@pytest.mark.parametrize("case", list(LABELINGS))
def test_label_metrics_agree_with_sklearn(case):
    t, p = LABELINGS[case]
    scores = score_labels(t, p)
    for key, ref in SKLEARN.items():
        assert scores[key] == pytest.approx(ref(t, p), abs=1e-6), key
    keep = p != -1
    for key, ref in SKLEARN.items():
        if keep.any():
            assert scores[f"{key}_clustered"] == pytest.approx(ref(t[keep], p[keep]), abs=1e-6), key
    assert all(math.isfinite(scores[k]) for k in LABEL_METRICS)


def test_hungarian_accuracy_of_a_permuted_labeling_is_one():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 7, 400)
    perm = rng.permutation(7) + 10
    assert clustering_accuracy(t, perm[t]) == 1.0
    assert score_labels(t, perm[t])["accuracy"] == 1.0
    assert score_labels(t, perm[t])["ami"] == pytest.approx(1.0)


def test_hungarian_accuracy_counts_unmatched_clusters_as_wrong():
    # 3 classes, 4 clusters: the best matching leaves one cluster (2 points) unmatched
    t = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    p = np.array([5, 5, 5, 6, 6, 6, 7, 7, 8, 8])
    assert clustering_accuracy(t, p) == pytest.approx(8 / 10)


def test_noise_fraction_and_clustered_only_metrics_on_a_hand_made_example():
    t = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    p = np.array([5, 5, -1, 7, 7, -1, -1, -1])
    s = score_labels(t, p)
    assert s["noise_fraction"] == 0.5
    assert s["n_clusters"] == 2
    assert s["n_classes"] == 3
    assert s["n_samples"] == 8
    # the 4 clustered points are perfectly clustered ...
    for key in ("ami", "ari", "nmi", "fmi", "homogeneity", "completeness", "v_measure", "accuracy"):
        assert s[f"{key}_clustered"] == pytest.approx(1.0), key
    # ... but over all points only 4 of 8 are correct (noise never is), and noise is one more
    # cluster for the other scores (scikit-learn's convention, as in the study's code)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["ami"] == pytest.approx(skm.adjusted_mutual_info_score(t, p), abs=1e-12)
    assert s["ami"] < 1.0


def test_all_noise_is_defined():
    t = np.array([0, 0, 1, 1, 2])
    p = np.full(5, -1)
    s = score_labels(t, p)
    assert s["n_clusters"] == 0
    assert s["noise_fraction"] == 1.0
    assert s["accuracy"] == 0.0
    assert all(math.isnan(s[f"{k}_clustered"]) for k in LABEL_METRICS)
    assert s["ami"] == pytest.approx(skm.adjusted_mutual_info_score(t, p), abs=1e-12)
    for noise, scored in (("exclude", 0), ("label", 5)):  # all noise is one label: still undefined
        e = score_embedding(np.random.default_rng(0).normal(size=(5, 3)), p, noise=noise)
        assert e["n_scored"] == scored
        assert all(math.isnan(e[k]) for k in ("silhouette", "davies_bouldin", "calinski_harabasz"))


def test_score_labels_refuses_mismatched_or_empty_input():
    with pytest.raises(InvalidDataError, match="3 labels but labels_pred has 2"):
        score_labels([0, 1, 2], [0, 1])
    with pytest.raises(InvalidDataError, match="no labels"):
        score_labels([], [])
    with pytest.raises(InvalidDataError, match="1-D"):
        score_labels(np.zeros((2, 2)), np.zeros((2, 2)))


@pytest.fixture(scope="module")
def blobs():
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=300, centers=4, n_features=6, cluster_std=1.5, random_state=0)
    return X, y


def test_embedding_metrics_agree_with_sklearn(blobs):
    X, y = blobs
    rng = np.random.default_rng(0)
    for labels in (y, rng.integers(0, 5, len(y)), np.where(rng.random(len(y)) < 0.2, -1, y)):
        for noise in ("label", "exclude"):  # the study's (noise is one more label), or clustered points only
            s = score_embedding(X, labels, sample_size=None, noise=noise)
            keep = labels != -1 if noise == "exclude" else np.ones(len(labels), bool)
            Xk, lk = X[keep], labels[keep]
            assert s["silhouette"] == pytest.approx(skm.silhouette_score(Xk, lk), abs=1e-6)
            assert s["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(Xk, lk), abs=1e-6)
            assert s["calinski_harabasz"] == pytest.approx(skm.calinski_harabasz_score(Xk, lk), rel=1e-9, abs=1e-6)
            assert s["n_scored"] == keep.sum()
    with pytest.raises(ConfigError, match="evaluation.noise must be one of label, exclude"):
        score_embedding(X, y, noise="drop")


def test_embedding_metrics_are_nan_when_undefined(blobs):
    X, _ = blobs
    one = score_embedding(X, np.zeros(len(X), int))
    assert all(math.isnan(one[k]) for k in ("silhouette", "davies_bouldin", "calinski_harabasz"))
    each = score_embedding(X[:10], np.arange(10))
    assert math.isnan(each["silhouette"])
    two = score_embedding(X, np.r_[np.zeros(150, int), np.ones(150, int)])
    assert math.isfinite(two["silhouette"])


def test_silhouette_subsample_is_seeded_and_close(blobs):
    X, y = blobs
    full = score_embedding(X, y, sample_size=None)["silhouette"]
    a = score_embedding(X, y, sample_size=120, random_state=3)
    b = score_embedding(X, y, sample_size=120, random_state=3)
    c = score_embedding(X, y, sample_size=120, random_state=4)
    assert a["silhouette"] == b["silhouette"]
    assert a["silhouette_sample_size"] == 120
    assert a["silhouette"] != c["silhouette"]
    assert a["silhouette"] == pytest.approx(full, abs=0.05)


def test_umap_silhouette_with_a_given_reduction_skips_the_fit(blobs):
    X, y = blobs
    Z = X[:, :3]  # any array of the right length stands in for the UMAP-50 space
    noisy = np.where(np.arange(len(y)) % 7 == 0, -1, y)
    got = umap_silhouette(None, noisy, X_reduced=Z, sample_size=None)  # the study's: noise is one more label
    assert got == pytest.approx(skm.silhouette_score(Z, noisy), abs=1e-9)
    keep = noisy != -1
    got = umap_silhouette(None, noisy, X_reduced=Z, sample_size=None, noise="exclude")
    assert got == pytest.approx(skm.silhouette_score(Z[keep], noisy[keep]), abs=1e-9)
    with pytest.raises(InvalidDataError, match="rows"):
        umap_silhouette(None, y[:-1], X_reduced=Z)


def test_score_embedding_refuses_nan(blobs):
    X, y = blobs
    X = X.copy()
    X[[3, 10, 11]] = np.nan
    with pytest.raises(InvalidDataError, match="3 of 300 rows"):
        score_embedding(X, y)


def test_scoring_never_touches_torchs_process_wide_dtype():
    """Scores computed in one thread while another creates tensors (a sweep's in-process job beside the next
    cell's embedding) must not change the dtype of those tensors."""
    import threading

    import torch

    rng = np.random.default_rng(0)
    X, t = rng.normal(size=(3000, 8)), rng.integers(0, 5, 3000)
    stop, dtypes = threading.Event(), set()

    def make_tensors():
        while not stop.is_set():
            dtypes.add(torch.zeros(4).dtype)

    worker = threading.Thread(target=make_tensors)
    worker.start()
    try:
        for _ in range(20):
            score_labels(t, rng.integers(0, 5, 3000))
            score_embedding(X, t, sample_size=500)
    finally:
        stop.set()
        worker.join()
    assert dtypes == {torch.float32}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kept_distances_give_scikit_learns_silhouette(dtype, monkeypatch):
    """Every clustering of one named space reuses its distances; each score is still scikit-learn's."""
    from zsclust.cluster import _silhouette

    _silhouette.clear_cache()
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((400, 30)) + 3 * rng.integers(0, 5, 400)[:, None]).astype(dtype)
    labelings = [rng.integers(0, k, 400) for k in (2, 5, 40)]
    singles = rng.integers(0, 5, 400)
    singles[[0, 1]] = [7, 8]  # points alone in their cluster score 0
    noisy = np.where(np.arange(400) % 6 == 0, -1, singles)
    for labels in labelings + [singles, noisy]:
        got = score_embedding(X, labels, sample_size=None, cache_key="X")["silhouette"]
        assert got == pytest.approx(skm.silhouette_score(X, labels), abs=1e-6)
    assert list(_silhouette._cache) == ["X:400x30"] and _silhouette._cache["X:400x30"][0] is None  # all points
    assert _silhouette._cache["X:400x30"][1].dtype == dtype
    keep = noisy != -1  # the clustered points only: rows of the kept matrix
    got = score_embedding(X, noisy, sample_size=None, noise="exclude", cache_key="X")["silhouette"]
    assert got == pytest.approx(skm.silhouette_score(X[keep], noisy[keep]), abs=1e-6)
    idx = np.sort(np.random.default_rng(5).choice(400, 150, replace=False))  # a seeded subsample
    got = score_embedding(X, labelings[1], sample_size=150, random_state=5, cache_key="X")["silhouette"]
    assert got == pytest.approx(skm.silhouette_score(X[idx], labelings[1][idx]), abs=1e-6)

    # a space too big to keep whole: only the scored rows are kept, and other rows are a new matrix
    _silhouette.clear_cache()
    monkeypatch.setattr(_silhouette, "CACHE_BYTES", 2 * 150 * 150 * X.itemsize + 1)
    got = score_embedding(X, labelings[1], sample_size=150, random_state=5, cache_key="X")["silhouette"]
    assert got == pytest.approx(skm.silhouette_score(X[idx], labelings[1][idx]), abs=1e-6)
    assert np.array_equal(_silhouette._cache["X:400x30"][0], idx)
    other = np.sort(np.random.default_rng(6).choice(400, 150, replace=False))
    got = score_embedding(X, labelings[1], sample_size=150, random_state=6, cache_key="X")["silhouette"]
    assert got == pytest.approx(skm.silhouette_score(X[other], labelings[1][other]), abs=1e-6)
    assert np.array_equal(_silhouette._cache["X:400x30"][0], other)

    # a matrix over the memory budget: scikit-learn's chunked computation, nothing kept
    _silhouette.clear_cache()
    monkeypatch.setattr(_silhouette, "CACHE_BYTES", 1000)
    got = score_embedding(X, labelings[2], sample_size=None, cache_key="X")["silhouette"]
    assert got == pytest.approx(skm.silhouette_score(X, labelings[2]), abs=1e-6)
    assert not _silhouette._cache
