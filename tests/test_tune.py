"""Hyperparameter search: spaces from YAML, the objective, shared and resumable studies, MLflow, evaluate.

Real Optuna storages (SQLite under tmp_path), real MLflow (SQLite tracking store under tmp_path) and real
worker processes. Studies run on small exported embeddings (``--embeddings``) with no or PCA reduction;
UMAP only where the study's UMAP-50 silhouette is the point.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_mutual_info_score

from conftest import REPO, write_image_folder
from zsclust import jobs
from zsclust.cli import main
from zsclust.errors import ConfigError, InvalidDataError
from zsclust.config import packaged_configs
from zsclust.tune import SearchSpace, load_tune_config

SPACE_FILES = sorted((packaged_configs() / "space").glob("*/*.yaml"))


def blobs_npz(path: Path, *, n=400, d=16, k=5, std=3.0, seed=3, half="val", labels=True) -> Path:
    """One half of a make_blobs draw as an exported embedding file (val: first half, test: second)."""
    X, y = make_blobs(n_samples=2 * n, n_features=d, centers=k, cluster_std=std, random_state=seed)
    sl = slice(0, n) if half == "val" else slice(n, 2 * n)
    arrays = {"embeddings": X[sl].astype(np.float32), "fingerprint": np.asarray(f"blobs-{n}-{d}-{k}-{std}-{seed}-{half}")}
    if labels is True:
        arrays["labels"] = y[sl]
    elif labels == "unreadable":  # an object array: np.load(allow_pickle=False) refuses to read it
        arrays["labels"] = np.array([object()] * n, dtype=object)
    np.savez(path, **arrays)
    return path


def tune_yaml(tmp_path: Path, *, clusterer, reducer="none", metric="ami", spaces=("raw",), n_trials=10,
              tracking=False, name="s", datasets=None, **study) -> Path:
    cfg = {
        "datasets": datasets or {},
        "space": {"reducer": reducer, "clusterer": clusterer},
        "objective": {"metric": metric},
        "study": {"name": name, "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "n_trials": n_trials,
                  "heartbeat_interval": 1, "grace_period": 3, **study},
        "tracking": {"enabled": tracking, "experiment": "tune-test"},
        "evaluation": {"silhouette_spaces": list(spaces)},
        "reduction_cache": str(tmp_path / "reductions"),
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def load(tmp_path, name="s"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


# -- search spaces ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shipped_space_loads_and_samples(path):
    """Each space file is a valid study: its keys are parameters of its estimator, and a sample builds."""
    other = {"reducer": {"name": "none"}, "clusterer": {"name": "kmeans", "n_init": {"low": 1, "high": 3}}}
    group = path.parent.name
    space = SearchSpace({**other, group: yaml.safe_load(path.read_text())}, where=str(path))
    trial = optuna.create_study().ask()
    reducer, clusterer = space.build(space.suggest(trial))
    assert reducer["name"] and clusterer["name"]
    assert all(k.startswith(("reducer.", "clusterer.")) for k in trial.params)


def test_dotted_keys_groups_and_the_ward_condition():
    cfg = load_tune_config("tune/default",
                           ["space.clusterer=[agglomerative,hdbscan]", "study.n_trials=7"])
    assert [c.study.name for c in cfg] == ["tf_efficientnet_lite0.pypi_in1k/pca/agglomerative/ami",
                                           "tf_efficientnet_lite0.pypi_in1k/pca/hdbscan/ami"]
    space = SearchSpace(cfg[0].space)
    assert [d.key for d in space.dimensions] == ["reducer.n_components", "clusterer.linkage", "clusterer.metric",
                                                 "clusterer.distance_threshold"]
    ward = optuna.trial.FixedTrial({"reducer.n_components": 50, "clusterer.linkage": "ward",
                                    "clusterer.distance_threshold": 3.0})
    params = space.suggest(ward)
    assert "clusterer.metric" not in params  # ward implies euclidean: not searched ...
    assert space.build(params)[1]["metric"] == "euclidean"  # ... but set
    avg = space.suggest(optuna.trial.FixedTrial({**ward.params, "clusterer.linkage": "average", "clusterer.metric": "cosine"}))
    assert space.build(avg) == ({"name": "pca", "n_components": 50},
                                {"name": "agglomerative", "n_clusters": None, "normalize": True, "linkage": "average",
                                 "metric": "cosine", "distance_threshold": 3.0})
    k = load_tune_config(None, ["space.clusterer=agglomerative_k", "space.reducer=none", "study.sampler=grid"])[0]
    assert len(SearchSpace(k.space).grid()) == 1 + 3 * 4  # ward x euclidean + 3 linkages x 4 metrics


@pytest.mark.parametrize("overrides, message", [
    (["space.clusterer.linkagee={choices: [ward]}"], "Unknown parameter 'clusterer.linkagee'"),
    (["space.clusterer.linkage.choices=[wardd]"], "clusterer.linkage: value 'wardd' is invalid"),
    (["space.clusterer.distance_threshold.low=0"], "log-scale range needs low > 0"),
    (["space.clusterer.metric.if={clusterer.later: [x]}"], "not a parameter defined before"),
    (["space.clusterer={name: kmeans, n_clusters: K}", "space.reducer.n_components=10"], "search space .* is empty"),
], ids=["unknown-parameter", "bad-choice", "bad-range", "bad-condition", "empty"])
def test_bad_spaces_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        for cfg in load_tune_config("tune/default", overrides):
            SearchSpace(cfg.space)


def test_unknown_space_group_and_config_key(tmp_path):
    with pytest.raises(ConfigError, match="Unknown clusterer search space 'hdbscn'.*Did you mean: hdbscan"):
        load_tune_config(None, ["space.clusterer=hdbscn"])
    with pytest.raises(ConfigError, match="Unknown config key 'study.n_trail'"):
        load_tune_config(None, ["study.n_trail=3"])
    with pytest.raises(ConfigError, match="study.workers .* must be at least 1, got 0"):
        load_tune_config(None, ["study.workers=0"])


@pytest.mark.parametrize("url", ["postgresql://zs:secret@127.0.0.1:1/optuna", "sqlite:///{file}/sub/optuna.db"])
def test_unreachable_storage_is_a_config_error_before_any_work(tmp_path, capsys, url):
    (tmp_path / "afile").write_text("not a folder")
    url = url.format(file=tmp_path / "afile")
    npz = blobs_npz(tmp_path / "val.npz")
    code = main(["tune", "--embeddings", f"blobs={npz}", "space.reducer=none", "space.clusterer=kmeans_find_k",
                 f"study.storage={url}", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Optuna storage" in err and "unreachable" in err
    assert "secret" not in err  # the password is not printed


# -- the objective -----------------------------------------------------------------------------------------


def test_a_small_study_finds_k_beats_the_default_and_is_tracked(tmp_path):
    """Agglomerative with K unknown on 5 blobs: the search finds K=5 and beats the default configuration
    on the held-out test half; MLflow gets a parent run (best params, plots, Spearman) and a child per trial."""
    val, test = blobs_npz(tmp_path / "val.npz"), blobs_npz(tmp_path / "test.npz", half="test")
    cfg = tune_yaml(tmp_path, clusterer="agglomerative", spaces=("raw", "umap50"), n_trials=16, tracking=True)
    cfgs = load_tune_config(cfg, ["space.clusterer.linkage.choices=[ward,average]", "study.pruner=none",
                                  "space.clusterer.distance_threshold.low=1", "space.clusterer.distance_threshold.high=1000"],
                            embeddings=[f"blobs={val}"])
    [result] = jobs.tune(cfgs, progress=False)
    assert result.n_complete == 16 and result.best_metrics["blobs.n_clusters"] == 5
    assert result.best_value > 0.99

    out = jobs.evaluate_study("s", storage=f"sqlite:///{tmp_path / 'optuna.db'}", embeddings=[f"blobs={test}"],
                              progress=False)
    tuned = out[0].results[0].metrics
    X, y = np.load(test)["embeddings"], np.load(test)["labels"]
    default_ac = adjusted_mutual_info_score(y, AgglomerativeClustering().fit_predict(X))  # sklearn's default: K=2
    default_km = adjusted_mutual_info_score(y, KMeans(random_state=0).fit_predict(X))  # K=8
    assert tuned["n_clusters"] == 5 and tuned["ami"] > 0.99 > max(default_ac, default_km)

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("tune-test")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    [parent] = [r for r in runs if r.data.tags.get("zsclust.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 16 and parent.info.status == "FINISHED"
    assert {"clusterer.linkage", "clusterer.distance_threshold", "reducer.name"} <= set(children[0].data.params)
    assert all({"blobs.ami", "blobs.n_clusters", "value"} <= set(c.data.metrics) for c in children)
    assert any("blobs.silhouette_umap50" in c.data.metrics for c in children)  # NaN (one cluster) is not logged
    assert parent.data.metrics["best_value"] == pytest.approx(result.best_value)
    assert parent.data.params["best.clusterer.linkage"] == parent.data.tags["best.clusterer.linkage"]
    assert -1 <= parent.data.metrics["spearman_silhouette_ami"] <= 1
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/optimization_history.png", "plots/param_importances.png", "plots/silhouette_vs_ami.png"}
    [evaluated] = client.search_runs([client.get_experiment_by_name("zsclust-tuned").experiment_id])
    assert evaluated.data.tags["zsclust.study"] == "s" and evaluated.data.params["data.split"] == "test"
    assert float(evaluated.data.metrics["ami"]) == pytest.approx(tuned["ami"])


def test_each_distinct_reduction_is_fitted_once_per_study(tmp_path):
    npz = blobs_npz(tmp_path / "val.npz")
    cfg = tune_yaml(tmp_path, reducer={"name": "pca", "n_components": {"choices": [2, 5]}},
                    clusterer={"name": "kmeans", "n_clusters": "K", "n_init": {"choices": [1, 2, 3]}},
                    sampler="grid", n_trials=100)
    [result] = jobs.tune(load_tune_config(cfg, embeddings=[f"blobs={npz}"]), progress=False)
    assert result.n_complete == 6  # the whole grid, and no more (n_trials is capped to it)
    # a grid study fits its two reductions before the first trial (workers share them out): every trial hits
    hits = [t.user_attrs["zsclust.metrics"]["blobs.reduction_cache_hit"] for t in load(tmp_path).trials]
    assert hits == [1.0] * 6 and len(list((tmp_path / "reductions").glob("*.npy"))) == 2
    # the trials come in the order the reductions are fitted (largest first), the grid's own order within one
    order = [(t.params["reducer.n_components"], t.params["clusterer.n_init"])
             for t in sorted(load(tmp_path).trials, key=lambda t: t.number)]
    assert order == [(5, 1), (5, 2), (5, 3), (2, 1), (2, 2), (2, 3)]


def test_weighted_objective_reports_each_set_and_prunes_after_the_first(tmp_path):
    a = blobs_npz(tmp_path / "a.npz", seed=1)
    b = blobs_npz(tmp_path / "b.npz", seed=2)
    cfg = tune_yaml(tmp_path, clusterer={"name": "kmeans", "n_clusters": {"low": 2, "high": 40}, "n_init": 1},
                    n_trials=14, pruner_startup_trials=3)
    [result] = jobs.tune(load_tune_config(cfg, embeddings=[f"a={a}:2", f"b={b}:1"]), progress=False)
    trials = load(tmp_path).trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    for t in done:
        m = t.user_attrs["zsclust.metrics"]
        assert t.value == pytest.approx((2 * m["a.ami"] + m["b.ami"]) / 3)
        assert t.intermediate_values == {0: pytest.approx(m["a.ami"]), 1: pytest.approx(m["b.ami"])}
    assert pruned, "a hopeless K should be pruned after the first validation set"
    for t in pruned:
        assert list(t.intermediate_values) == [0] and "b.ami" not in t.user_attrs["zsclust.metrics"]
        assert t.user_attrs["zsclust.pruned_reason"].startswith("pruner:")
    assert result.n_complete + result.n_pruned == 14


def test_label_free_search_reads_no_labels(tmp_path):
    """An npz whose labels cannot even be loaded: the silhouette search runs; an AMI search cannot."""
    npz = blobs_npz(tmp_path / "val.npz", labels="unreadable")
    cfg = tune_yaml(tmp_path, metric="silhouette", n_trials=6,
                    clusterer={"name": "kmeans", "n_clusters": "K", "n_init": {"low": 1, "high": 4}})
    with pytest.raises(ConfigError, match="number of classes of 'blobs' is unknown"):
        jobs.tune(load_tune_config(cfg, embeddings=[f"blobs={npz}"]), progress=False)
    [result] = jobs.tune(load_tune_config(cfg, ["datasets.blobs.n_classes=5"], embeddings=[f"blobs={npz}"]),
                         progress=False)
    assert result.n_complete == 6 and result.best_value > 0.3  # the 5 blobs are found without a label
    assert not any("ami" in k for t in load(tmp_path).trials for k in t.user_attrs["zsclust.metrics"])
    with pytest.raises(InvalidDataError, match="cannot read array 'labels'.*allow_pickle"):  # the AMI objective does
        jobs.tune(load_tune_config(cfg, ["objective.metric=ami", "study.name=t"], embeddings=[f"blobs={npz}"]),
                  progress=False)


def test_test_labels_are_never_read_during_a_search(tmp_path, tiny_weights, monkeypatch):
    """Embed val and test, poison the test split's cache entry, and search: only val is ever loaded."""
    from zsclust.embed import CacheEntry, EmbedOptions, embed

    folder = write_image_folder(tmp_path / "imgs" / "train", classes=3, per_class=12).parent
    write_image_folder(tmp_path / "imgs" / "test", classes=3, per_class=4, seed=1)
    opts = EmbedOptions(accelerator="cpu", precision="32-true", num_workers=0, progress=False)
    val = embed("test_resnet", str(folder), split="val", weights=tiny_weights, options=opts)
    test = embed("test_resnet", str(folder), split="test", weights=tiny_weights, options=opts)
    entry = Path(os.environ["ZSCLUST_CACHE_DIR"]) / test.fingerprint
    for f in ("labels.npy", "embeddings.npy"):
        (entry / f).write_bytes(b"poisoned: the search must not read the test split")
    loaded = []
    real_load = CacheEntry.load
    monkeypatch.setattr(CacheEntry, "load", lambda self, *a, **k: loaded.append(self.fingerprint) or real_load(self, *a, **k))

    cfg = tune_yaml(tmp_path, clusterer={"name": "kmeans", "n_clusters": "K", "n_init": {"low": 1, "high": 3}},
                    n_trials=3, datasets={"toy": {"name": str(folder)}})
    cfgs = load_tune_config(cfg, ["encoder.name=test_resnet", f"encoder.weights={tiny_weights}",
                                  "embed.accelerator=cpu", "embed.precision=32-true", "embed.num_workers=0"])
    [result] = jobs.tune(cfgs, progress=False)
    assert result.n_complete == 3 and "toy.ami" in result.best_metrics
    assert loaded == [val.fingerprint] and test.fingerprint not in loaded


def test_importances_are_skipped_with_a_reason_when_undefined():
    from zsclust.tune._report import param_importances

    one_param = optuna.create_study(direction="maximize")
    one_param.optimize(lambda t: t.suggest_float("clusterer.damping", 0.5, 0.95), n_trials=3)
    assert param_importances(one_param) == (None, "needs more than one parameter common to all completed trials, has 1")
    one_trial = optuna.create_study(direction="maximize")
    one_trial.optimize(lambda t: t.suggest_float("a", 0, 1) + t.suggest_float("b", 0, 1), n_trials=1)
    assert param_importances(one_trial) == (None, "needs at least 2 completed trials, has 1")
    two = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    two.optimize(lambda t: t.suggest_float("a", 0, 1) + 0.01 * t.suggest_float("b", 0, 1), n_trials=8)
    importances, _ = param_importances(two)
    assert set(importances) == {"a", "b"} and importances["a"] > importances["b"]


# -- workers: shared, killed, resumed ------------------------------------------------------------------------


def _worker(cfg: Path, npz: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zsclust", "tune", str(cfg), "--embeddings", f"blobs={npz}",
                             "--no-progress"], env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, timeout=90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    raise AssertionError("timed out")


def _states(tmp_path):
    try:
        return [t.state for t in load(tmp_path).get_trials(deepcopy=False)]
    except KeyError:  # not created yet
        return []


BIG_SPACE = {"name": "agglomerative", "n_clusters": None, "linkage": "ward",
             "distance_threshold": {"low": 1.0, "high": 1000.0, "log": True}}


def test_two_workers_share_one_study_exactly(tmp_path):
    npz = blobs_npz(tmp_path / "val.npz", n=2500)  # ~0.2 s a trial, so both workers get some
    cfg = tune_yaml(tmp_path, clusterer=BIG_SPACE, n_trials=24, pruner="none", tracking=True)
    first, second = _worker(cfg, npz), _worker(cfg, npz)  # both create-or-join the study at once
    outs = [p.communicate(timeout=240)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    trials = load(tmp_path).trials
    assert len(trials) == 24 and all(t.state == TrialState.COMPLETE for t in trials)  # none lost, none extra
    assert sorted(t.number for t in trials) == list(range(24))
    assert len({t.params["clusterer.distance_threshold"] for t in trials}) == 24  # no configuration repeated
    ran = [int(o.split(" run by this worker")[0].rsplit("; ", 1)[1]) for o in outs]
    assert sum(ran) == 24 and min(ran) > 0, outs
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # one parent run for the study, a child per trial
    runs = client.search_runs([client.get_experiment_by_name("tune-test").experiment_id], max_results=100)
    [parent] = [r for r in runs if r.data.tags.get("zsclust.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.params["trial.number"]) for r in children) == list(range(24))
    # both workers finish together; one writes the parent's summary, once (two at once collided in MLflow)
    assert not any("could not write the study summary" in o for o in outs), outs
    assert parent.info.status == "FINISHED" and parent.data.tags["zsclust.study_complete"] == "true"
    assert len(client.get_metric_history(parent.info.run_id, "n_trials_complete")) == 1

    # a summary claimed by a process that died before writing it is written by the next worker (here a rerun)
    study = load(tmp_path)
    mark = study.user_attrs["zsclust.summary"]
    assert mark["done"] and mark["state"][:3] == [24, 0, 0]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = {k: v for k, v in mark.items() if k != "zsclust.process"}  # host and pid name it
    study.set_user_attr("zsclust.summary", {**dead, "done": False, "zsclust.pid": str(gone.pid), "at": time.time()})
    rerun = _worker(cfg, npz)
    assert rerun.communicate(timeout=240)[0] and rerun.returncode == 0
    assert len(client.get_metric_history(parent.info.run_id, "n_trials_complete")) == 2
    rerun = _worker(cfg, npz)  # ... and not again once it is written, the parent left FINISHED by the rerun
    assert rerun.communicate(timeout=240)[0] and rerun.returncode == 0
    assert len(client.get_metric_history(parent.info.run_id, "n_trials_complete")) == 2
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_study_workers_start_local_processes_that_share_the_study(tmp_path):
    """study.workers=2: one command, two processes on this machine, each running some of the trials; the
    total stays exact, each trial says which process ran it, and a worker that fails fails the command."""
    npz = blobs_npz(tmp_path / "val.npz", n=2500)
    cfg = tune_yaml(tmp_path, clusterer=BIG_SPACE, n_trials=16, pruner="none", tracking=True, workers=2)
    proc = subprocess.run([sys.executable, "-m", "zsclust", "tune", str(cfg), "--embeddings", f"blobs={npz}",
                           "--no-progress"], env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "starting 1 more worker process(es)" in proc.stdout
    trials = load(tmp_path).trials
    assert len(trials) == 16 and all(t.state == TrialState.COMPLETE for t in trials)
    workers = {t.user_attrs["zsclust.worker"] for t in trials}
    assert len(workers) == 2, workers  # both processes ran trials
    assert str(os.getpid()) not in {w.rsplit(":", 1)[1] for w in workers}
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("tune-test").experiment_id], max_results=100)
    assert {r.data.tags.get("zsclust.worker") for r in runs if r.data.tags.get("zsclust.role") == "trial"} == workers

    # a worker that fails fails the command, naming it; the other workers are stopped
    from zsclust.errors import ZsclustError
    from zsclust.tune._workers import LocalWorkers

    with pytest.raises(ZsclustError, match=r"1 of the study.workers processes failed \(worker 2 \(pid \d+\): exit 3"):
        with LocalWorkers([]) as local:
            local.procs = [subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])]
            local.wait()
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(KeyboardInterrupt):
        with LocalWorkers([]) as local:
            local.procs = [slow]
            raise KeyboardInterrupt
    assert slow.poll() is not None  # stopped, not left running


def test_a_killed_worker_is_resumed_without_losing_trials(tmp_path):
    npz = blobs_npz(tmp_path / "val.npz", n=2500)
    cfg = tune_yaml(tmp_path, clusterer=BIG_SPACE, n_trials=12, pruner="none")
    for _ in range(3):  # the kill must land inside a trial, not in the few ms between two
        worker = _worker(cfg, npz)
        _wait_for(lambda: (s := _states(tmp_path)).count(TrialState.COMPLETE) >= 3 and s[-1] == TrialState.RUNNING)
        os.kill(worker.pid, signal.SIGKILL)
        worker.communicate(timeout=30)
        running = [t.number for t in load(tmp_path).trials if t.state == TrialState.RUNNING]
        if running:
            break
    before = {t.number: t.value for t in load(tmp_path).trials if t.state == TrialState.COMPLETE}
    assert len(before) >= 3 and running

    rerun = _worker(cfg, npz)
    out = rerun.communicate(timeout=240)[0]
    assert rerun.returncode == 0, out
    trials = load(tmp_path).trials
    assert {t.number: t.value for t in trials if t.number in before} == before  # kept as they were
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 12  # the total is reached
    stale = [t for t in trials if t.number in running]
    assert all(t.state == TrialState.FAIL for t in stale)  # the killed worker's trial: failed by heartbeat ...
    retried = [t for t in trials if t.system_attrs.get("failed_trial") in running]
    assert retried and retried[0].state == TrialState.COMPLETE  # ... and retried with its params


def test_cli_prints_config_and_evaluate_names_unknown_studies(tmp_path, capsys):
    assert main(["tune", str("tune/default"), "--print-config", "study.n_trials=3"]) == 0
    printed = capsys.readouterr().out
    assert "n_trials: 3" in printed and "distance_threshold:" in printed
    code = main(["evaluate", "--study", "nope", "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    assert code == 2 and "No study 'nope'" in capsys.readouterr().err


def test_local_workers_share_the_cores_during_trials(monkeypatch):
    """With study.workers processes on one machine, a trial runs on cores // workers threads (BLAS/OpenMP,
    numba, torch), so it does not slow another worker's single-threaded UMAP layout; restored afterwards."""
    import numba
    import torch
    from threadpoolctl import threadpool_info

    from zsclust.tune._workers import ENV_LOCAL_WORKERS, shared_cores

    cores = os.cpu_count() or 1
    before = numba.get_num_threads(), torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()]
    monkeypatch.setenv(ENV_LOCAL_WORKERS, str(cores))  # one worker per core: one thread each
    with shared_cores():
        assert numba.get_num_threads() == 1 and torch.get_num_threads() == 1
        assert {p["num_threads"] for p in threadpool_info()} == {1}
    assert (numba.get_num_threads(), torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()]) == before
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)  # a big node's share:
    with shared_cores():  # 64 // cores threads each, but never more than a library had
        assert numba.get_num_threads() <= before[0] and torch.get_num_threads() <= before[1]
        assert all(p["num_threads"] <= n for p, n in zip(threadpool_info(), before[2]))
    monkeypatch.delenv(ENV_LOCAL_WORKERS)
    with shared_cores():  # one process: every core
        assert numba.get_num_threads() == before[0] and torch.get_num_threads() == before[1]
