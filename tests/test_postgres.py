"""MLflow tracking and Optuna studies on a real PostgreSQL server (the team setup of docker/compose.yaml).

The ``postgres_url`` fixture (conftest.py) starts a throwaway cluster from the installed server binaries, or
uses ``$ZSCLUST_TEST_POSTGRES_URL``; it fails, never skips, when there is no server. Nothing is mocked: the
tracker, the workers and the read-back all go through psycopg2 to the server, and the rows are checked in
PostgreSQL's own tables.

A database store has no artifact folder of its own: the tests set ``ZSCLUST_ARTIFACT_ROOT`` under ``tmp_path``
and run from ``tmp_path``, so nothing is written to the repository's ``mlruns/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import optuna
import psycopg2  # noqa: F401  (the `postgres` extra; a missing driver is an error here, not a skip)
import pytest
import sqlalchemy
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import REPO, _create_databases
from zsclust.tracking import MLflowTracker
from zsclust.tracking._mlflow import MAX_PARAM_LEN
from zsclust.tune import open_storage
from zsclust.tune._study import redact


def _sql(url: str, query: str, **params) -> list[tuple]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sqlalchemy.text(query), params)]
    finally:
        engine.dispose()


def test_mlflow_tracker_round_trip_on_postgres(postgres_url, tmp_path, monkeypatch):
    """Params (over one log_batch, one at MLflow's length limit), metric history, tags and artifacts written
    by MLflowTracker come back unchanged through a fresh client, and the run is a row of PostgreSQL's ``runs``."""
    monkeypatch.chdir(tmp_path)
    uri = f"{postgres_url}/mlflow"
    name = f"pg-tracker-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("ZSCLUST_ARTIFACT_ROOT", str(tmp_path / "artifacts"))  # a database has no folder of its own

    tracker = MLflowTracker(uri=uri, experiment=name)
    exp_id = tracker.experiment_id
    assert tracker.uri == uri
    rid = tracker.start_run("round-trip", tags={"encoder": "resnet18", "dropped": None})
    params = {f"p{i:03d}": i for i in range(150)}  # two log_batch calls of at most 100
    params.update({"reducer.name": "pca", "none": None, "long": "x" * (MAX_PARAM_LEN + 500)})
    tracker.log_params(rid, params)
    tracker.log_metrics(rid, {"ami": 0.25, "n_clusters": 7, "nan": float("nan"), "text": "skipped"}, step=0)
    tracker.log_metrics(rid, {"ami": 0.75}, step=1)
    tracker.set_tags(rid, {"zsclust.role": "test", "count": 3, "unset": None, "error": "e" * 5000})
    report = tmp_path / "report.txt"
    report.write_text("clusters: 7\n")
    tracker.log_artifact(rid, report, "reports")
    tracker.log_text(rid, "reducer: pca\n", "config/run.yaml")
    tracker.end_run(rid)

    client = MlflowClient(tracking_uri=uri)  # a fresh client: everything comes from the server
    run = client.get_run(rid)
    assert run.info.status == "FINISHED" and run.info.experiment_id == exp_id and run.info.run_name == "round-trip"
    expected_params = {k: str(v) for k, v in params.items()}
    expected_params["long"] = "x" * (MAX_PARAM_LEN - 3) + "..."
    assert run.data.params == expected_params
    assert run.data.metrics == {"ami": 0.75, "n_clusters": 7.0}
    assert [(m.step, m.value) for m in client.get_metric_history(rid, "ami")] == [(0, 0.25), (1, 0.75)]
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    expected_tags = {"encoder": "resnet18", "zsclust.role": "test", "count": "3", "error": "e" * 5000,
                     "zsclust.version": tracker.base_tags["zsclust.version"]}
    if "git.commit" in tracker.base_tags:
        expected_tags["git.commit"] = tracker.base_tags["git.commit"]
    tags.pop("zsclust.command", None)  # the command line (context tags, on every run)
    owner = {k: tags.pop(k) for k in ("zsclust.host", "zsclust.pid", "zsclust.process") if k in tags}
    assert owner["zsclust.pid"] == str(os.getpid())  # the process that made the run (for closing orphans)
    assert tags == expected_tags
    assert {a.path for a in client.list_artifacts(rid)} == {"config", "reports"}
    assert [a.path for a in client.list_artifacts(rid, "reports")] == ["reports/report.txt"]
    dl = str(tmp_path / "dl")
    assert Path(client.download_artifacts(rid, "reports/report.txt", dl)).read_text() == "clusters: 7\n"
    assert Path(client.download_artifacts(rid, "config/run.yaml", dl)).read_text() == "reducer: pca\n"
    assert run.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()

    # The store really is PostgreSQL, and the run, its params and its metric history are rows in it.
    [(version,)] = _sql(uri, "SELECT version()")
    assert version.startswith("PostgreSQL")
    assert _sql(uri, "SELECT status, experiment_id FROM runs WHERE run_uuid = :rid",
                rid=rid) == [("FINISHED", int(exp_id))]
    assert _sql(uri, "SELECT count(*) FROM params WHERE run_uuid = :rid", rid=rid) == [(len(params),)]
    assert _sql(uri, "SELECT length(value) FROM params WHERE run_uuid = :rid AND key = 'long'",
                rid=rid) == [(MAX_PARAM_LEN,)]
    assert _sql(uri, "SELECT step, value FROM metrics WHERE run_uuid = :rid AND key = 'ami' ORDER BY step",
                rid=rid) == [(0, 0.25), (1, 0.75)]


# -- Optuna: workers sharing one study on PostgreSQL -----------------------------------------------------------


def digits_npz(path: Path) -> Path:
    """scikit-learn's digits (1797 x 64, 10 classes, bundled: no download) as an exported embedding file."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    np.savez(path, embeddings=X.astype(np.float32), labels=y, fingerprint=np.asarray("sklearn-digits"))
    return path


def _worker(cfg: Path, npz: Path, cwd: Path, env: dict) -> subprocess.Popen:
    args = ["tune", str(cfg), "--embeddings", f"digits={npz}", "--no-progress"]
    return subprocess.Popen([sys.executable, "-m", "zsclust", *args], cwd=cwd,
                            env=dict(os.environ, PYTHONPATH=str(REPO), **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


N_TRIALS = 24


def test_two_workers_share_one_study_on_postgres(postgres_url, tmp_path, monkeypatch):
    """``zsclust tune`` in two processes, with the Optuna storage and the MLflow store both on PostgreSQL:
    the study is complete, its best AMI is sane, and MLflow holds one parent run with a child per trial."""
    monkeypatch.chdir(tmp_path)
    # Fresh, empty databases: the two workers also race to create Optuna's and MLflow's tables.
    suffix = uuid.uuid4().hex[:8]
    _create_databases(postgres_url, (f"optuna_{suffix}", f"mlflow_{suffix}"))
    storage, tracking = f"{postgres_url}/optuna_{suffix}", f"{postgres_url}/mlflow_{suffix}"
    name = f"pg-study-{suffix}"

    npz = digits_npz(tmp_path / "digits.npz")
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump({
        "datasets": {},
        "space": {"reducer": "none",
                  "clusterer": {"name": "agglomerative", "n_clusters": None, "linkage": "ward",
                                "distance_threshold": {"low": 10.0, "high": 2000.0, "log": True}}},
        "objective": {"metric": "ami"},
        "study": {"name": name, "storage": storage, "n_trials": N_TRIALS, "pruner": "none",
                  "heartbeat_interval": 2, "grace_period": 30},
        "tracking": {"enabled": True, "uri": tracking, "experiment": name},
        "evaluation": {"silhouette_spaces": ["raw"]},
        "reduction_cache": str(tmp_path / "reductions"),
    }, sort_keys=False))

    env = {"ZSCLUST_ARTIFACT_ROOT": str(tmp_path / "artifacts")}  # a database store has no folder of its own
    workers = [_worker(cfg, npz, tmp_path, env) for _ in range(2)]  # started together: setup races too
    outs = [w.communicate(timeout=240)[0] for w in workers]
    assert [p.returncode for p in workers] == [0, 0], outs

    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # Setup and claims are serialised by a PostgreSQL advisory lock: the total is exact.
    assert len(complete) == len(trials) == N_TRIALS, outs
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert study.user_attrs["zsclust.workers"] == 2  # each worker its own sampler seed ...
    assert len({t.params["clusterer.distance_threshold"] for t in trials}) == len(trials)  # ... no repeats
    ran = [int(o.split(" run by this worker")[0].rsplit("; ", 1)[1]) for o in outs]
    assert sum(ran) == len(trials) and min(ran) > 0, outs
    assert 0.3 < study.best_value <= 1.0  # ward on raw digits pixels: AMI ~0.8 near K=10
    best = study.best_trial.user_attrs["zsclust.metrics"]
    assert best["digits.ami"] == pytest.approx(study.best_value) and best["digits.n_clusters"] > 1
    [(n_rows,)] = _sql(storage, "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                                "WHERE s.study_name = :name AND t.state = 'COMPLETE'", name=name)
    assert n_rows == len(complete)

    client = MlflowClient(tracking)
    exp_id = client.get_experiment_by_name(name).experiment_id
    runs = client.search_runs([exp_id], max_results=100)
    [parent] = [r for r in runs if r.data.tags.get("zsclust.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 1 + len(trials)
    assert sorted(int(r.data.params["trial.number"]) for r in children) == sorted(t.number for t in trials)
    assert all(r.info.status == "FINISHED" and "digits.ami" in r.data.metrics for r in children)
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna.storage"] == redact(storage)
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert study.user_attrs["zsclust.mlflow"] == {"uri": redact(tracking), "experiment": name,
                                                  "parent_run_id": parent.info.run_id}
    assert "tune_config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert parent.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())
    assert _sql(tracking, "SELECT count(*) FROM runs WHERE experiment_id = :e", e=int(exp_id)) == [(len(runs),)]
