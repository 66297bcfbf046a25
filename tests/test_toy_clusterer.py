"""A clusterer registered here, in this file alone, is tested by the registry's contract checks and guarded
by the memory guard through its own estimate: nothing else in zsclust or its tests names it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClusterMixin

from zsclust.cluster import ClusteringPipeline, GuardedClusterMixin, JobSpec, list_clusterers, register_clusterer
from zsclust.cluster.contract import parametrize_with_checks
from zsclust.errors import MemoryGuardError

_F64 = 8


@register_clusterer("toy_medoids", test_params={"n_clusters": 3}, known_answers={"four blobs": {"n_clusters": 4}})
class ToyMedoids(GuardedClusterMixin, ClusterMixin, BaseEstimator):
    """k-medoids on a dense distance matrix, farthest-point start: small, exact, and quadratic in memory."""

    _parameter_constraints: dict = {}

    def __init__(self, n_clusters: int = 8, max_iter: int = 20):
        self.n_clusters = n_clusters
        self.max_iter = max_iter

    def fit(self, X, y=None):
        X = self._prepare_fit(X)
        D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
        medoids = [0]
        while len(medoids) < self.n_clusters:
            medoids.append(int(D[:, medoids].min(axis=1).argmax()))
        for _ in range(self.max_iter):
            labels = D[:, medoids].argmin(axis=1)
            new = [int(np.flatnonzero(labels == c)[D[np.ix_(labels == c, labels == c)].sum(0).argmin()])
                   for c in range(len(medoids))]
            if new == medoids:
                break
            medoids = new
        self.medoid_indices_ = np.asarray(medoids)
        self.labels_ = D[:, medoids].argmin(axis=1)
        return self

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        return 2 * n * n * _F64 + n * d * _F64, "toy_medoids: dense NxN distances"


@parametrize_with_checks(clusterers=["toy_medoids"], reducers=[])
def test_toy_meets_the_contract(check):
    check()


def test_the_registry_wide_suite_includes_the_toy():
    """What ``parametrize_with_checks()`` (every registered estimator, as tests/test_cluster.py uses it) now holds."""
    assert "toy_medoids" in list_clusterers()
    ids = parametrize_with_checks().kwargs["ids"]
    assert {"toy_medoids-params", "toy_medoids-fit_predict", "toy_medoids-bad_input", "toy_medoids-memory",
            "toy_medoids-known_answer[four blobs]"} <= set(ids)


def test_the_memory_guard_asks_the_toy_before_any_work(monkeypatch):
    monkeypatch.setenv("ZSCLUST_MEMORY_LIMIT", "8GiB")
    pipe = ClusteringPipeline([JobSpec("toy", {"name": "none"}, {"name": "toy_medoids", "n_clusters": "K"})])
    pipe.validate(n_samples=5_000, n_features=32, n_classes=10)  # 400 MB: fits
    with pytest.raises(MemoryGuardError, match=r"job 'toy'.*N=100,000.*toy_medoids: dense NxN distances"):
        pipe.validate(n_samples=100_000, n_features=32, n_classes=10)  # 149 GiB: refused before anything runs
    assert pipe.memory_problems(100_000, 32, 10).keys() == {"toy"}
