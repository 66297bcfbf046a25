"""The kNN probe as a job: ``zsclust knn``, the sweep's kNN job kind, and the report's kNN-vs-AMI table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import spearmanr

from conftest import run_cli
from test_sweep import write_blurry_folder
from zsclust.cli import main
from zsclust.embed import EmbeddingCache, EmbeddingSet
from zsclust.knn import knn_accuracy, knn_job_key, metric_name, run_knn_job
from zsclust.tracking import RecordingTracker

KS = (1, 10, 20, 100, 200)


def _runs(db: Path, experiment: str, role: str | None = None):
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if role is None or r.data.tags.get("zsclust.role") == role]


def _set(x, y, split: str, encoder: str = "enc", fingerprint: str | None = None) -> EmbeddingSet:
    meta = {"fingerprint": fingerprint or f"{encoder}-{split}", "encoder": {"name": encoder},
            "dataset": {"name": "toy", "split": split, "group": "toys"}}
    return EmbeddingSet(np.asarray(x, np.float32), np.asarray(y), np.arange(len(y)), np.array([], int), meta)


def test_run_knn_job_records_one_run_with_the_probes_accuracies(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8))
    yb, yq = rng.integers(0, 3, 60), rng.integers(0, 3, 25)
    bank = _set(centers[yb] + rng.normal(0, 1.2, (60, 8)), yb, "train")
    queries = _set(centers[yq] + rng.normal(0, 1.2, (25, 8)), yq, "test")
    context = {"encoder.name": "enc", "data.name": "toy", "data.split": "test"}
    tracker = RecordingTracker(tmp_path / "rec")
    with pytest.warns(UserWarning, match="exceeds the 60 labelled bank rows"):  # k=100, 200 > bank
        result = run_knn_job(bank, queries, context=context, key="abc", tracker=tracker)
        expected = knn_accuracy(bank.embeddings, bank.labels, queries.embeddings, queries.labels, ks=KS)
    assert result.error is None and result.accuracy == expected and len(set(expected.values())) > 1
    ops = tracker.recording()
    [start] = [o for o in ops if o[0] == "start_run"]
    assert start[2] == "enc/toy:test/knn"
    assert start[3] == {"encoder": "enc", "dataset": "toy", "split": "test", "dataset.group": "toys",
                        "embedding.fingerprint": "enc-test", "embedding.bank_fingerprint": "enc-train",
                        "zsclust.job": "abc", "zsclust.role": "knn"}
    [metrics] = [o[2] for o in ops if o[0] == "log_metrics"]
    assert {metric_name(k): v for k, v in expected.items()}.items() <= metrics.items()
    [params] = [o[2] for o in ops if o[0] == "log_params"]
    assert params["knn.ks"] == "1,10,20,100,200" and params["knn.temperature"] == 0.07 and params["knn.bank_size"] == 60
    assert ops[-1] == ("end_run", "recorded-1", "FINISHED")


def test_a_mixed_up_pair_is_a_failed_run_with_its_reason(tmp_path):
    x, y = np.eye(4, dtype=np.float32), np.arange(4)
    tracker = RecordingTracker(tmp_path / "rec")
    result = run_knn_job(_set(x, y, "train", encoder="a"), _set(x, y, "test", encoder="b"),
                         context={"encoder.name": "b"}, tracker=tracker)
    assert "bank was embedded with a but the queries with b" in result.error
    assert ("end_run", "recorded-1", "FAILED") in tracker.recording()
    assert any(o[0] == "set_tags" and "zsclust.error" in o[2] for o in tracker.recording())
    # the bank must be the train split; the queries another one
    assert "must be the train split" in run_knn_job(_set(x, y, "val"), _set(x, y, "test"), context={}).error
    same = _set(x, y, "train")
    assert "are the same embeddings" in run_knn_job(same, same, context={}).error


def test_job_key_ignores_clustering_scores_but_not_what_is_embedded():
    identity = {"encoder.name": "raw_pixels", "data.name": "digits", "data.split": "test", "evaluation": {"a": 1}}
    key = knn_job_key(identity)
    assert key == knn_job_key({**identity, "evaluation": {"a": 2}})
    assert key != knn_job_key({**identity, "data.split": "val"})
    assert key != knn_job_key(identity, ks=(1, 10))
    assert key != knn_job_key(identity, temperature=0.1)


def test_knn_command_embeds_both_splits_and_logs_the_probe(tmp_path, monkeypatch, capsys):
    from zsclust._build import run_identity
    from zsclust.config import load_config

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "toyK"
    write_blurry_folder(data / "train", classes=3, per_class=20, seed=4)
    write_blurry_folder(data / "test", classes=3, per_class=8, seed=5)
    db = tmp_path / "knn.db"
    args = ["encoder.name=raw_pixels", f"data.name={data}", "embed.accelerator=cpu", "embed.precision=32-true",
            "embed.num_workers=0", f"tracking.uri=sqlite:///{db}", "tracking.experiment=knn-test"]
    assert main(["knn", *args, "--ks", "1,5", "--temperature", "0.1", "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "k=1 " in out and "k=5 " in out and "MLflow: run" in out
    [run] = _runs(db, "knn-test", "knn")
    cache = EmbeddingCache(tmp_path / "cache")
    entries = {m["dataset"]["split"]: m["fingerprint"] for m in cache.list()}
    bank, queries = cache.load(entries["train"]), cache.load(entries["test"])
    expected = knn_accuracy(bank.embeddings, bank.labels, queries.embeddings, queries.labels, ks=(1, 5),
                            temperature=0.1)
    assert {k: run.data.metrics[metric_name(k)] for k in (1, 5)} == pytest.approx(expected, abs=1e-9)
    tags = run.data.tags
    assert (tags["encoder"], tags["dataset"], tags["split"]) == ("raw_pixels", "toyK", "test")
    assert tags["embedding.fingerprint"] == queries.fingerprint and tags["embedding.bank_fingerprint"] == bank.fingerprint
    cfg = load_config(None, args)
    assert tags["zsclust.job"] == knn_job_key(run_identity(cfg), (1, 5), 0.1)
    assert run.data.params["knn.bank_size"] == str(len(bank)) == "60"
    # the queries must not be the bank's split, and --ks must be numbers
    assert main(["knn", *args, "data.split=train"]) == 2
    assert "the kNN probe's queries must be another split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["knn", *args, "--ks", "one,two"])


@pytest.fixture(scope="module")
def knn_sweep(tmp_path_factory, tiny_weights):
    """2 encoders x 2 datasets (train/test folders) x (2 clusterers + the kNN probe), in a worker process."""
    tmp = tmp_path_factory.mktemp("knnsweep")
    for name, seed in (("toyP", 10), ("toyQ", 20)):
        write_blurry_folder(tmp / "data" / name / "train", classes=3, per_class=24, seed=seed)
        write_blurry_folder(tmp / "data" / name / "test", classes=3, per_class=12, seed=seed + 1)
    config = tmp / "sweep.yaml"
    config.write_text(f"""
encoders:
  - raw_pixels
  - {{name: test_resnet, weights: {tiny_weights}}}
datasets:
  near: [{tmp / 'data' / 'toyP'}]
  far: [{tmp / 'data' / 'toyQ'}]
embed: {{accelerator: cpu, precision: 32-true, num_workers: 0, progress: false, cache_dir: {tmp / 'cache'}}}
reducer: {{name: pca, n_components: 8}}
clusterer: [kmeans, ac_k]
reduction_cache: {tmp / 'reductions'}
evaluation: {{silhouette_spaces: [raw, reduced]}}
tracking: {{experiment: knn-grid, uri: "sqlite:///{tmp / 'mlflow.db'}", plots: false}}
sweep: {{name: knn-grid, workers: 1, knn: true}}
""")
    env = {"ZSCLUST_CACHE_DIR": str(tmp / "cache")}
    first = run_cli("sweep", config, "--no-progress", cwd=tmp, env=env)
    second = run_cli("sweep", config, "--no-progress", cwd=tmp, env=env)
    status = run_cli("sweep", config, "--status", cwd=tmp, env=env)
    return {"tmp": tmp, "config": config, "db": tmp / "mlflow.db", "first": first.stdout + first.stderr,
            "second": second.stdout, "status": status.stdout}


def test_sweep_runs_one_knn_job_per_encoder_and_dataset_and_skips_it_after(knn_sweep):
    assert "12 jobs: 12 ran, 0 skipped (finished before), 0 failed" in knn_sweep["first"], knn_sweep["first"]
    assert "done raw_pixels/toyP:test/knn" in knn_sweep["first"]
    assert "12 jobs: 0 ran, 12 skipped" in knn_sweep["second"]
    assert "4 cells, 12 jobs: 12 finished, 0 to run." in knn_sweep["status"]
    runs = [r for r in _runs(knn_sweep["db"], "knn-grid", "knn") if r.info.status == "FINISHED"]
    assert sorted((r.data.tags["encoder"], r.data.tags["dataset"]) for r in runs) == [
        ("raw_pixels", "toyP"), ("raw_pixels", "toyQ"), ("test_resnet", "toyP"), ("test_resnet", "toyQ")]
    assert {r.data.tags["dataset.group"] for r in runs} == {"near", "far"}
    cache = EmbeddingCache(knn_sweep["tmp"] / "cache")
    for run in runs:  # each run scores the probe on the cell's cached train (bank) and test (queries) entries
        bank, queries = cache.load(run.data.tags["embedding.bank_fingerprint"]), cache.load(
            run.data.tags["embedding.fingerprint"])
        assert bank.meta["dataset"]["split"] == "train" and queries.meta["dataset"]["split"] == "test"
        with pytest.warns(UserWarning):  # k=100, 200 exceed the 72-row bank
            expected = knn_accuracy(bank.embeddings, bank.labels, queries.embeddings, queries.labels)
        assert {k: run.data.metrics[metric_name(k)] for k in KS} == pytest.approx(expected, abs=1e-9)


def test_knn_command_and_sweep_share_the_job_key(knn_sweep, monkeypatch):
    tmp = knn_sweep["tmp"]
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("ZSCLUST_CACHE_DIR", str(tmp / "cache"))
    [swept] = [r for r in _runs(knn_sweep["db"], "knn-grid", "knn")
               if (r.data.tags["encoder"], r.data.tags["dataset"]) == ("raw_pixels", "toyQ")]
    cache_before = {m["fingerprint"] for m in EmbeddingCache(tmp / "cache").list()}
    assert main(["knn", "encoder.name=raw_pixels", f"data.name={tmp / 'data' / 'toyQ'}", "embed.accelerator=cpu",
                 "embed.precision=32-true", "embed.num_workers=0", f"embed.cache_dir={tmp / 'cache'}",
                 f"tracking.uri=sqlite:///{knn_sweep['db']}", "tracking.experiment=knn-cli", "--no-progress"]) == 0
    [mine] = _runs(knn_sweep["db"], "knn-cli", "knn")
    assert mine.data.tags["zsclust.job"] == swept.data.tags["zsclust.job"]
    assert all(mine.data.metrics[metric_name(k)] == swept.data.metrics[metric_name(k)] for k in KS)
    assert {m["fingerprint"] for m in EmbeddingCache(tmp / "cache").list()} == cache_before  # both from the cache


def test_report_correlates_knn_accuracy_with_ami_per_k_and_clusterer(knn_sweep, monkeypatch):
    tmp = knn_sweep["tmp"]
    monkeypatch.chdir(tmp)
    out = tmp / "report"
    assert main(["report", str(knn_sweep["config"]), "--out", str(out), "--no-log"]) == 0
    runs = [r for r in _runs(knn_sweep["db"], "knn-grid") if r.info.status == "FINISHED"]
    acc = {(r.data.tags["encoder"], r.data.tags["dataset"]): r.data.metrics for r in runs
           if r.data.tags.get("zsclust.role") == "knn"}
    ami = {(r.data.tags["encoder"], r.data.tags["dataset"], r.data.params["job"]): r.data.metrics["ami"] for r in runs
           if "job" in r.data.params}
    lines = [line.split(",") for line in (out / "knn_vs_ami.csv").read_text().splitlines()]
    assert lines[0] == ["clusterer", "k=1", "k=10", "k=20", "k=100", "k=200", "cells"]
    table = {row[0]: row[1:] for row in lines[1:]}
    assert list(table) == ["kmeans", "ac_k", "mean of clusterers"]
    cells = sorted(acc)
    for method in ("kmeans", "ac_k", "mean of clusterers"):
        y = [np.mean([ami[c + (m,)] for m in ("kmeans", "ac_k")]) if method == "mean of clusterers" else ami[c + (method,)]
             for c in cells]
        for j, k in enumerate(KS):
            rho = spearmanr([acc[c][metric_name(k)] for c in cells], y).statistic
            got = table[method][j]
            assert (got == "" and (np.isnan(rho) or np.ptp(y) == 0)) or float(got) == pytest.approx(rho, abs=1e-5)
        assert table[method][-1] == "4"
    assert any(v != "" for row in table.values() for v in row[:-1])  # some rho is defined on this grid
    knn_rows = (out / "knn_accuracy.csv").read_text().splitlines()
    assert knn_rows[0] == "encoder / dataset,k=1,k=10,k=20,k=100,k=200" and len(knn_rows) == 5
    assert (out / "knn_vs_ami.png").read_bytes()[:4] == b"\x89PNG"
    # the study's other tables come from the same small sweep
    for stem in ("clusterer_mean", "clusterer_ranks", "clusterer_wilcoxon", "encoder_ranks", "encoder_wilcoxon"):
        assert (out / f"{stem}.csv").stat().st_size > 0, stem
    mean_rows = {l.split(",")[0]: l.split(",") for l in (out / "clusterer_mean.csv").read_text().splitlines()}
    header = mean_rows["encoder"]
    for enc in ("raw_pixels", "test_resnet"):
        for ds in ("toyP", "toyQ"):
            assert float(mean_rows[enc][header.index(ds)]) == pytest.approx(
                np.mean([ami[(enc, ds, m)] for m in ("kmeans", "ac_k")]), abs=1e-5)
    report = (out / "report.md").read_text()
    assert "## kNN probe" in report and "## Clusterer ranks" in report
    missing = (out / "missing.md").read_text()
    assert "Nothing: every expected job has a finished run." in missing  # the kNN jobs count as expected and done
    # the same grid read without sweep.knn: the probe's runs on its cells still count, and are not "missing"
    assert main(["report", str(knn_sweep["config"]), "sweep.knn=false", "--out", str(tmp / "r2"), "--no-log"]) == 0
    assert (tmp / "r2" / "knn_vs_ami.csv").read_text() == (out / "knn_vs_ami.csv").read_text()
    assert "no supervised reference" not in missing and "no encoder shares an architecture" in missing
