"""The label-free proxy as the study measures it: the silhouette of the predicted labels in one fixed UMAP-50
space of the original embeddings, noise kept as a label. A clustering that leaves most points as noise must
not win a label-free search against a good K-Means one."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import yaml
from sklearn.datasets import make_blobs

from zsclust import jobs
from zsclust.cluster import JobData, JobSpec, Scoring, label_free_space, run_job, umap_silhouette
from zsclust.tune import load_tune_config


@pytest.fixture(scope="module")
def overlapping():
    """Ten 24-d classes, three tight and seven diffuse: HDBSCAN keeps the dense cores and calls most points noise."""
    centers = np.random.default_rng(3).normal(0, 3.0, size=(10, 24))
    X, y = make_blobs(n_samples=600, centers=centers, cluster_std=[0.3] * 3 + [3.0] * 7, random_state=3)
    return X.astype(np.float32), y


def test_a_mostly_noise_clustering_ranks_below_k_means(overlapping, tmp_path):
    X, y = overlapping
    data = JobData(X, "overlapping-blobs", y, 10)
    umap = {"name": "none"}
    kmeans = run_job(data, JobSpec("kmeans", umap, {"name": "kmeans", "n_clusters": "K"}), seed=1)
    hdb = run_job(data, JobSpec("hdbscan", umap, {"name": "hdbscan", "min_cluster_size": 15}), seed=1)
    assert hdb.metrics["noise_fraction"] > 0.5 and kmeans.metrics["ami"] > hdb.metrics["ami"] + 0.2
    space = label_free_space(data, Scoring())  # the study's: UMAP-50 of X, its own seed (42), for every job
    study = {k: umap_silhouette(X, out.labels, X_reduced=space) for k, out in (("kmeans", kmeans), ("hdbscan", hdb))}
    old = {k: umap_silhouette(X, out.labels, X_reduced=space, noise="exclude") for k, out in
           (("kmeans", kmeans), ("hdbscan", hdb))}
    assert study["kmeans"] > study["hdbscan"]  # noise kept as a label: the good clustering wins
    assert old["hdbscan"] > old["kmeans"]  # noise left out (the old proxy): the few sure points win, wrongly
    assert kmeans.metrics["silhouette_umap50"] == pytest.approx(study["kmeans"])  # what every job logs


def test_a_label_free_search_over_k_means_and_hdbscan_picks_k_means(overlapping, tmp_path):
    X, y = overlapping
    npz = tmp_path / "val.npz"
    np.savez(npz, embeddings=X, labels=y)
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump({
        "space": {"reducer": "none", "clusterer": ["kmeans", "hdbscan"]},
        "objective": {"metric": "silhouette_umap50", "report_ami": True},
        "study": {"name": "label-free", "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "n_trials": 8,
                  "pruner": "none"},
        "tracking": {"enabled": False}, "reduction_cache": str(tmp_path / "red"),
        "evaluation": {"silhouette_spaces": ["umap50"]},
    }))
    cfgs = load_tune_config(tmp_path / "tune.yaml", ["datasets.val.n_classes=10"], embeddings=[f"val={npz}"])
    results = {cfg.space.clusterer.name: r for cfg, r in zip(cfgs, jobs.tune(cfgs, progress=False))}
    picked = max(results, key=lambda k: results[k].best_value)
    assert picked == "kmeans", {k: (r.best_value, r.best_metrics.get("ami")) for k, r in results.items()}
    assert results["kmeans"].best_metrics["ami"] > results["hdbscan"].best_metrics["ami"]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    hdb = optuna.load_study(study_name="label-free/none/hdbscan", storage=storage)
    noisy = [t for t in hdb.trials if t.user_attrs["zsclust.metrics"].get("val.noise_fraction", 0) > 0.5]
    assert noisy, "the HDBSCAN search should have met mostly-noise clusterings"
