"""The launch scripts of experiments/launch, run for real: on a one-node SLURM cluster the suite starts
(conftest.py ``slurm_cluster``: slurmctld, slurmd and munged on loopback) and with torchrun, on CPUs.

The scripts are submitted as they ship, with only what a CPU cluster changes given on the command line
(``--gpus-per-node=0 --cpus-per-task=1``, ``ACCELERATOR=cpu``): two tasks make a two-process DDP
embedding (gloo), an array of two tasks shares one grid (``sweep.shard=auto``). The MLflow record is
checked afterwards: every job once, written by rank 0, and a sweep cancelled with ``scancel`` finished
by submitting it again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, _free_port, write_image_folder

LAUNCH = REPO / "zsclust" / "configs" / "launch"
CPU = ("--nodes=1", "--gpus-per-node=0", "--cpus-per-task=1")  # what a CPU-only cluster changes
CLUSTERERS = ("kmeans", "ac_k", "hdbscan")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_weights):
    """Two tiny image folders, a sweep config over them (test_resnet, three clusterers), and ``zsclust`` on
    PATH as the scripts call it (this checkout's, through a two-line wrapper)."""
    tmp = tmp_path_factory.mktemp("slurm")
    folders = [write_image_folder(tmp / "data" / name, classes=3, per_class=8, seed=seed)
               for name, seed in (("toyA", 1), ("toyB", 2))]
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "zsclust"
    shim.write_text(f"#!/bin/sh\nexport PYTHONPATH={REPO}:{bin_dir}\nexec {sys.executable} -m zsclust \"$@\"\n")
    # A clusterer that holds the sweep until the test says so, so a cancel lands mid-sweep on any machine
    # (imported by path): its first fit on a cell runs at once; later ones wait for the file "slow-gate" (at
    # most 20 min, a safety net only: a 120-s limit once expired on a loaded CI machine before the test's
    # poll saw the first finished job, and the sweep ran to the end uncancelled). The sweep's smoke fits
    # (every process checks each setup on a few hundred synthetic points before planning) pass at once:
    # gated, they held each sweep for minutes before its first job.
    (bin_dir / "slowfit.py").write_text(
        "import os, time\nfrom pathlib import Path\nfrom sklearn.cluster import KMeans\n\n"
        "HERE = Path(__file__).parent\n\n"
        "class SlowKMeans(KMeans):\n    def fit(self, X, y=None, sample_weight=None):\n"
        "        if len(X) == 24:  # a cell of the grid (3 classes x 8 images), not a smoke fit\n"
        "            try:\n                os.close(os.open(HERE / 'slow-first', os.O_CREAT | os.O_EXCL))\n"
        "            except FileExistsError:\n                deadline = time.time() + 1200\n"
        "                while not (HERE / 'slow-gate').exists() and time.time() < deadline:\n"
        "                    time.sleep(0.2)\n"
        "        return super().fit(X, y, sample_weight)\n")
    shim.chmod(0o755)
    config = tmp / "sweep.yaml"
    config.write_text(f"""
encoders:
  - {{name: test_resnet, weights: {tiny_weights}}}
datasets: [{folders[0]}, {folders[1]}]
embed: {{precision: 32-true, num_workers: 0, batch_size: 8}}
reducer: none
clusterer: [kmeans, ac_k, {{name: hdbscan, min_cluster_size: 3}}]
evaluation: {{silhouette_spaces: [raw]}}
tracking: {{experiment: slurm-grid, plots: false}}
sweep: {{name: slurm-grid}}
reduction_cache: {tmp / 'reductions'}
""")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "ACCELERATOR": "cpu", "SWEEP_WORKERS": "0",
           "ZSCLUST_CACHE_DIR": str(tmp / "cache"), "ZSCLUST_DATA": str(tmp / "data"), "HF_HUB_OFFLINE": "1",
           "TORCH_HOME": str(tmp / "torch"), "OMP_NUM_THREADS": "1"}
    return {"tmp": tmp, "folders": folders, "config": config, "weights": tiny_weights, "env": env}


_POLL_ERRORS: list[str] = []


def _finished_jobs(db: Path) -> int:
    """FINISHED job runs in the sweep's MLflow database: a plain connection that waits up to 5 s for a write in
    progress. (A read-only connection with a 1 s wait once read nothing during a whole sweep on CI, and the
    cancel came too late; the errors are now kept for the assertion message.)"""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(str(db), timeout=5)
        try:
            return con.execute("select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                               "where r.status = 'FINISHED' and t.key = 'zsclust.job'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError as e:  # tables not created yet, or the database busy for 5 s
        _POLL_ERRORS.append(str(e))
        return 0


def _job_runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000) if "zsclust.job" in r.data.tags]


def _manifests(cache: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in cache.glob("*/manifest.json")}


def test_embed_script_then_sweep_script_cancelled_and_resubmitted(slurm_cluster, grid):
    """slurm_embed.sbatch embeds one folder on 2 tasks (DDP); slurm_sweep.sbatch then runs the grid on 2 tasks,
    loading that folder from the cache; it is scancel'ed after its first finished job and submitted again:
    every job has exactly one FINISHED run, all written by task 0, and nothing is left RUNNING."""
    tmp, env = grid["tmp"], dict(grid["env"])
    db = tmp / "mlflow.db"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    tasks = ("--ntasks-per-node=2",)

    out = tmp / "embed.out"
    job = slurm_cluster.sbatch(LAUNCH / "slurm_embed.sbatch", "test_resnet", grid["folders"][0],
                               "--weights", grid["weights"], "--precision", "32-true", "--batch-size", "8",
                               "--num-workers", "0", options=(*CPU, *tasks, f"--output={out}"), env=env, cwd=tmp)
    slurm_cluster.wait(job, timeout=300)
    log = out.read_text()
    assert log.count("embeddings: 24 x ") == 1, log  # printed by rank 0 only
    assert "MEMBER: 2/2" in log and "distributed_backend=gloo" in log, log  # a real 2-process DDP
    [(fingerprint, manifest)] = _manifests(tmp / "cache").items()
    assert manifest["num_embedded"] == 24 and manifest["dataset"]["name"] == "toyA"

    first_out, second_out = tmp / "sweep-1.out", tmp / "sweep-2.out"
    # The grid plus one gated job per cell: the first runs, the second waits for the gate, so the cancel lands
    # mid-sweep (after at least one finished job) however fast or slow the machine; the gate opens for the rerun.
    gate_dir = Path(grid["env"]["PATH"].split(":")[0])
    for name in ("slow-first", "slow-gate"):
        (gate_dir / name).unlink(missing_ok=True)
    config = tmp / "sweep-slow.yaml"
    config.write_text(grid["config"].read_text()
                      + "jobs: {slow: {clusterer: {name: slowfit.SlowKMeans, n_clusters: 3, n_init: 1}}}\n")
    n_jobs = 2 * (len(CLUSTERERS) + 1)
    job = slurm_cluster.sbatch(LAUNCH / "slurm_sweep.sbatch", config,
                               options=(*CPU, *tasks, f"--output={first_out}"), env=env, cwd=tmp)
    try:  # a loaded machine once took 300 s to the first finished job
        slurm_cluster.wait(job, timeout=600, until=lambda: _finished_jobs(db) >= 1 or not slurm_cluster.states(job))
    except AssertionError as e:
        slurm_cluster.cancel(job)  # else its gated fit holds a task of the cluster for the tests after this one
        sweep_log = first_out.read_text() if first_out.exists() else "(none yet)"
        raise AssertionError(f"{e}\n--- sweep output\n{sweep_log}\npolling errors: {sorted(set(_POLL_ERRORS))}") from None
    slurm_cluster.cancel(job)
    slurm_cluster.wait(job, timeout=120)
    done_before = _finished_jobs(db)
    assert 1 <= done_before < n_jobs, (f"the sweep finished before it could be cancelled (polling errors: "
                                       f"{sorted(set(_POLL_ERRORS))}):\n{first_out.read_text()}")

    (gate_dir / "slow-gate").touch()
    job = slurm_cluster.sbatch(LAUNCH / "slurm_sweep.sbatch", config,
                               options=(*CPU, *tasks, f"--output={second_out}"), env=env, cwd=tmp)
    slurm_cluster.wait(job, timeout=300)
    log = second_out.read_text()
    summary = f"Sweep 'slurm-grid': {n_jobs} jobs: {n_jobs - done_before} ran, {done_before} skipped (finished before), 0 failed"
    assert log.count(summary) == 1, log  # one process clustered: task 0
    assert "zsclust: process 1 of 2 (SLURM): helping embed" in log, log
    assert "MEMBER: 2/2" in log, log

    runs = _job_runs(f"sqlite:///{db}", "slurm-grid")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    keys = [r.data.tags["zsclust.job"] for r in finished]
    assert len(finished) == n_jobs and len(set(keys)) == n_jobs  # every job of the grid, once
    assert {(r.data.tags["dataset"], r.data.params["job"]) for r in finished} == {
        (d, c) for d in ("toyA", "toyB") for c in (*CLUSTERERS, "slow")}
    assert not [r for r in runs if r.info.status == "RUNNING"]  # the cancelled task's leftovers were closed
    # Every run was written by one process per submission: task 0's (the helper wrote none).
    assert len({r.data.tags["zsclust.pid"] for r in finished}) <= 2
    # The embed job's entry was loaded, not recomputed; the sweep added toyB's.
    manifests = _manifests(tmp / "cache")
    assert len(manifests) == 2 and manifests[fingerprint]["created"] == manifest["created"]
    assert {r.data.tags["embedding.fingerprint"] for r in finished if r.data.tags["dataset"] == "toyA"} == {fingerprint}


def test_array_script_shares_the_grid_out_with_shard_auto(slurm_cluster, grid, mlflow_server):
    """slurm_sweep_array.sbatch as a 2-task job array against a real MLflow server: task i runs shard i/2 of
    the grid (sweep.shard=auto), so each cell is swept by one task and every job has exactly one run."""
    tmp, env = grid["tmp"], dict(grid["env"])
    experiment = f"slurm-array-{int(time.time())}"
    env["MLFLOW_TRACKING_URI"] = mlflow_server
    out = tmp / "array-%a.out"
    job = slurm_cluster.sbatch(LAUNCH / "slurm_sweep_array.sbatch", grid["config"], f"tracking.experiment={experiment}",
                               options=(*CPU, "--array=0-1", f"--output={out}"), env=env, cwd=tmp)
    slurm_cluster.wait(job, timeout=400)
    logs = [(tmp / f"array-{i}.out").read_text() for i in (0, 1)]
    for i, log in enumerate(logs):
        assert f"Sweep 'slurm-grid' shard {i}/2 (from the SLURM job array): 1 cells" in log, log
        assert "Sweep 'slurm-grid': 3 jobs: 3 ran, 0 skipped (finished before), 0 failed" in log, log
    runs = _job_runs(mlflow_server, experiment)
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["zsclust.job"] for r in runs}) == 6
    assert {r.data.tags["dataset"] for r in runs} == {"toyA", "toyB"}


def test_sweep_on_several_tasks_without_ddp_is_refused(slurm_cluster, grid):
    """``srun -n 2 zsclust sweep`` with one device per process is not a DDP launch: every task stops with one
    line saying how to launch instead (it used to embed on task 1, never cluster, and exit 0)."""
    tmp, env = grid["tmp"], dict(grid["env"])
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'refused.db'}"
    out = tmp / "refused.out"
    proc = slurm_cluster.command("sbatch", "--parsable", *CPU, "--ntasks-per-node=2", f"--output={out}", f"--chdir={tmp}",
                                 "--wrap", f"srun zsclust sweep {grid['config']} embed.accelerator=cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    slurm_cluster.wait(job, timeout=200)
    log = out.read_text()
    assert log.count("zsclust: error: SLURM started 2 tasks of this command") == 2, log  # both tasks, same words
    assert "sweep.shard=auto" in log and "embed.devices=$SLURM_NTASKS_PER_NODE" in log
    assert "helping embed" not in log and "Sweep 'slurm-grid'" not in log
    assert not (tmp / "refused.db").exists()  # nothing was recorded


def test_torchrun_script_embeds_on_two_cpu_processes(grid, tmp_path):
    """torchrun_embed.sh with 2 CPU processes on one node: one cache entry with every sample, printed once."""
    env = {**os.environ, **grid["env"], "GPUS": "2", "MASTER_PORT": str(_free_port()),
           "ZSCLUST_CACHE_DIR": str(tmp_path / "cache")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # torchrun of this Python
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(["bash", str(LAUNCH / "torchrun_embed.sh"), "test_resnet", str(grid["folders"][1]),
                           "--weights", str(grid["weights"]), "--precision", "32-true", "--batch-size", "8",
                           "--num-workers", "0"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert log.count("embeddings: 24 x ") == 1, log
    assert "MEMBER: 2/2" in log, log
    [manifest] = _manifests(tmp_path / "cache").values()
    assert manifest["num_embedded"] == 24 and manifest["dataset"]["name"] == "toyB"
