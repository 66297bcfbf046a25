"""``zsclust sweep`` and ``zsclust report`` end to end: real worker processes, a real MLflow store, a real kill."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, run_cli
from zsclust.cli import main
from zsclust.errors import ConfigError
from zsclust.sweep import expand_cells, load_sweep_config, shard_cells

ENCODERS = ("raw_pixels", "test_resnet")
CLUSTERERS = ("kmeans", "ac_k", "hdbscan")


def write_blurry_folder(root: Path, classes: int, per_class: int, seed: int) -> Path:
    """Classes whose colours overlap under heavy noise, so scores differ between encoders and clusterers."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.array([60 + 40 * c, 120, 200 - 40 * c], dtype=float)
        for i in range(per_class):
            shift = rng.normal(0, 30, size=3)  # per image, so classes overlap after pooling too
            arr = np.clip(base + shift + rng.normal(0, 40, size=(40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i:03d}.jpg", quality=90)
    return root


def _sweep_yaml(tmp: Path, weights: Path, datasets: str, extra: str = "") -> Path:
    path = tmp / "sweep.yaml"
    path.write_text(f"""
encoders:
  - raw_pixels
  - {{name: test_resnet, weights: {weights}}}
datasets:
{datasets}
embed: {{accelerator: cpu, precision: 32-true, num_workers: 0, progress: false, cache_dir: {tmp / 'cache'}}}
reducer: {{name: pca, n_components: 8}}
clusterer: [kmeans, ac_k, {{name: hdbscan, min_cluster_size: 4}}]
reduction_cache: {tmp / 'reductions'}
tracking: {{experiment: study-test, uri: "sqlite:///{tmp / 'mlflow.db'}"}}
sweep: {{name: test-grid, workers: 2}}
{extra}""")
    return path


def _finished(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from runs where status = 'FINISHED'").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet, or a write in progress
        return 0


def _job_runs(db: Path):
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("study-test")
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000) if "zsclust.job" in r.data.tags]


def _manifests(cache: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["created"] for p in cache.glob("*/manifest.json")}


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_weights):
    """A 2 encoders x 2 datasets x 3 clusterers sweep, SIGKILLed mid-clustering, then run again to the end."""
    tmp = tmp_path_factory.mktemp("sweep")
    write_blurry_folder(tmp / "data" / "toyA", classes=3, per_class=20, seed=0)
    write_blurry_folder(tmp / "data" / "toyB" / "train", classes=4, per_class=32, seed=1)
    write_blurry_folder(tmp / "data" / "toyB" / "test", classes=4, per_class=16, seed=2)
    datasets = f"  group_a: [{tmp / 'data' / 'toyA'}]\n  group_b: [{tmp / 'data' / 'toyB'}]"
    config = _sweep_yaml(tmp, tiny_weights, datasets)
    db = tmp / "mlflow.db"
    env = dict(os.environ, PYTHONPATH=str(REPO), ZSCLUST_CACHE_DIR=str(tmp / "cache"))
    first = subprocess.Popen([sys.executable, "-m", "zsclust", "sweep", str(config), "--no-progress"], cwd=tmp,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    deadline = time.time() + 300
    while _finished(db) < 3 and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and its workers, mid-way
    first_out = first.communicate()[0]
    assert first.returncode == -signal.SIGKILL, f"the sweep ended before it could be killed:\n{first_out}"
    before = {"finished": _finished(db), "manifests": _manifests(tmp / "cache"),
              "status": run_cli("sweep", config, "--status", cwd=tmp).stdout}
    second = run_cli("sweep", config, "--no-progress", cwd=tmp, env={"ZSCLUST_CACHE_DIR": str(tmp / "cache")})
    return {"tmp": tmp, "config": config, "db": db, "before": before, "first": first_out,
            "second": second.stdout + second.stderr}


def test_interrupted_sweep_resumes_and_does_each_job_exactly_once(swept):
    before, out = swept["before"], swept["second"]
    assert 3 <= before["finished"] < 12, swept["first"]
    assert f"4 cells, 12 jobs: {before['finished']} finished, {12 - before['finished']} to run." in before["status"]
    runs = _job_runs(swept["db"])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    keys = Counter(r.data.tags["zsclust.job"] for r in finished)
    assert len(keys) == 12 and set(keys.values()) == {1}, keys  # every job once, none twice
    cells = Counter((r.data.tags["encoder"], r.data.tags["dataset"]) for r in finished)
    assert cells == {(e, d): 3 for e in ENCODERS for d in ("toyA", "toyB")}
    assert {r.data.params["job"] for r in finished} == set(CLUSTERERS)
    # the restart skipped what was finished and ran only the rest
    assert f"{12 - before['finished']} ran, {before['finished']} skipped" in out, out
    assert "0 failed" in out
    # a run the kill caught mid-write is closed, not left RUNNING forever
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # every cell was embedded exactly once: the restart loaded the cache entries the first run wrote
    after = _manifests(swept["tmp"] / "cache")
    assert len(after) == 4
    assert {k: v for k, v in after.items() if k in before["manifests"]} == before["manifests"]
    # runs carry what the report needs
    r = finished[0]
    assert r.data.tags["zsclust.sweep"] == "test-grid" and r.data.tags["dataset.group"] in ("group_a", "group_b")
    assert {"ami", "ari", "nmi", "silhouette_umap50"} <= set(r.data.metrics)
    artifacts = {a.path for a in MlflowClient(f"sqlite:///{swept['db']}").list_artifacts(r.info.run_id)}
    assert "predictions.csv" in artifacts and "plots" in artifacts


def test_third_run_has_nothing_left(swept):
    proc = run_cli("sweep", swept["config"], "--no-progress", cwd=swept["tmp"],
                   env={"ZSCLUST_CACHE_DIR": str(swept["tmp"] / "cache")})
    assert "0 ran, 12 skipped" in proc.stdout
    assert len([r for r in _job_runs(swept["db"]) if r.info.status == "FINISHED"]) == 12
    status = run_cli("sweep", swept["config"], "--status", cwd=swept["tmp"]).stdout
    assert "4 cells, 12 jobs: 12 finished, 0 to run." in status and "test_resnet/toyB:test" in status


def test_report_writes_tables_and_scatter_to_a_folder_and_mlflow(swept, monkeypatch):
    tmp = swept["tmp"]
    monkeypatch.chdir(tmp)
    out = tmp / "report"
    assert main(["report", str(swept["config"]), "--out", str(out)]) == 0
    for method in CLUSTERERS:
        for ext in ("md", "csv", "tex"):
            assert (out / f"ami_{method}.{ext}").stat().st_size > 0
        assert (out / f"ami_heatmap_{method}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "silhouette_vs_ami.png").read_bytes()[:4] == b"\x89PNG"
    # the CSV holds the MLflow values: each cell equals its run's AMI
    runs = [r for r in _job_runs(swept["db"]) if r.info.status == "FINISHED"]
    ami = {(r.data.tags["encoder"], r.data.tags["dataset"], r.data.params["job"]): r.data.metrics["ami"]
           for r in runs}
    lines = (out / "ami_kmeans.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["encoder", "toyA", "toyB"] and "group_a mean" in header and "mean rank" in header
    for line in lines[1:]:
        cells = line.split(",")
        assert float(cells[1]) == pytest.approx(ami[(cells[0], "toyA", "kmeans")], abs=1e-5)
        assert float(cells[2]) == pytest.approx(ami[(cells[0], "toyB", "kmeans")], abs=1e-5)
        ranks = float(cells[header.index("mean rank")])
        assert 1.0 <= ranks <= 2.0
    latex = (out / "ami_kmeans.tex").read_text()
    assert r"\begin{tabular}" in latex and r"\textbf{" in latex and "group\\_a mean" in latex
    # Spearman per clusterer, computed from the same points as scipy would
    from scipy.stats import spearmanr

    sp = {l.split(",")[0]: l.split(",")[1] for l in (out / "spearman.csv").read_text().splitlines()[1:]}
    for method in CLUSTERERS:
        pts = [(r.data.metrics["silhouette_umap50"], r.data.metrics["ami"]) for r in runs
               if r.data.params["job"] == method]
        expected = spearmanr(*zip(*pts)).statistic
        assert (sp[method] == "" and np.isnan(expected)) or float(sp[method]) == pytest.approx(expected, abs=1e-4)
    assert "Nothing: every expected job" in (out / "missing.md").read_text()
    # the same files are artifacts of a report run
    client = MlflowClient(f"sqlite:///{swept['db']}")
    exp = client.get_experiment_by_name("study-test")
    [report] = client.search_runs([exp.experiment_id], "tags.`zsclust.role` = 'report'")
    names = {a.path.split("/")[-1] for a in client.list_artifacts(report.info.run_id, "report")}
    assert {"report.md", "summary.tex", "silhouette_vs_ami.png", "ami_kmeans.csv"} <= names


def test_report_on_a_subset_says_what_is_missing(swept, tmp_path, tiny_weights):
    """A grid larger than what ran: the report still works and lists the jobs that have no run."""
    config = swept["config"]
    bigger = tmp_path / "bigger.yaml"
    bigger.write_text(config.read_text().replace("  - raw_pixels\n", "  - raw_pixels\n  - resnet50.random\n"))
    out = tmp_path / "report"
    assert main(["report", str(bigger), "--out", str(out), "--no-log"]) == 0
    missing = (out / "missing.md").read_text()
    assert missing.count("resnet50.random /") == 6 and "no run" in missing
    assert "raw_pixels /" not in missing
    assert (out / "ami_kmeans.md").read_text().count("resnet50.random") == 0  # rows only for what ran
    # runs count by their job key: the same names with another seed are not this grid's results
    other = tmp_path / "other-seed"
    assert main(["report", str(config), "seed=7", "--out", str(other), "--no-log"]) == 0
    assert (other / "missing.md").read_text().count(": no run") == 12 and not (other / "ami_kmeans.csv").exists()
    assert main(["report", str(config), "tracking.experiment=study-tset", "--no-log"]) == 2  # a typo: an error,
    assert MlflowClient(f"sqlite:///{swept['db']}").get_experiment_by_name("study-tset") is None  # not a new one


def test_mean_ranks_rank_what_each_dataset_has():
    from zsclust.report import mean_ranks

    m = np.array([[0.5, 0.2, np.nan], [0.4, 0.3, 0.9], [np.nan, np.nan, np.nan]])
    # column 3 has one score: nothing to rank; the third encoder has none at all
    np.testing.assert_allclose(mean_ranks(m)[:2], [1.5, 1.5])
    assert np.isnan(mean_ranks(m)[2])
    np.testing.assert_allclose(mean_ranks(np.array([[0.1, 0.9], [0.1, 0.2], [0.3, 0.1]])), [1.75, 2.25, 2.0])  # ties share 2.5


def test_report_compares_tuned_with_default(swept, monkeypatch):
    """The real path: tune K-Means on toyB's val split, evaluate on its test split, then report."""
    tmp = swept["tmp"]
    monkeypatch.chdir(tmp)
    tune = tmp / "tune.yaml"
    tune.write_text(f"""
encoder: {{name: raw_pixels}}
datasets:
  toyB: {{name: {tmp / 'data' / 'toyB'}, weight: 1.0}}
space: {{reducer: pca, clusterer: kmeans}}
study: {{n_trials: 3, name: toyB-kmeans, storage: "sqlite:///{tmp / 'optuna.db'}"}}
embed: {{accelerator: cpu, precision: 32-true, num_workers: 0, progress: false, cache_dir: {tmp / 'cache'}}}
evaluate: {{experiment: study-test-tuned}}
tracking: {{experiment: study-test-tune, uri: "sqlite:///{swept['db']}"}}
""")
    assert main(["tune", str(tune), "--no-progress"]) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{swept['db']}")
    assert main(["evaluate", "--study", "toyB-kmeans", "--storage", f"sqlite:///{tmp / 'optuna.db'}",
                 "--no-progress"]) == 0
    out = tmp / "report-tuned"
    assert main(["report", str(swept["config"]), "--out", str(out), "--tuned-experiment", "study-test-tuned",
                 "--no-log"]) == 0
    lines = (out / "tuned_vs_default.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("raw_pixels / toyB / K-Means,")
    default, tuned, delta = map(float, lines[1].split(",")[1:])
    assert delta == pytest.approx(tuned - default, abs=1e-5) and 0 <= tuned <= 1
    assert (out / "tuned_vs_default.png").exists()


def test_one_failing_dataset_does_not_stop_the_sweep(tmp_path, tiny_weights, capsys):
    write_blurry_folder(tmp_path / "ok", classes=3, per_class=20, seed=3)
    datasets = f"  - {tmp_path / 'ok'}\n  - {tmp_path / 'no-such-folder'}"
    config = _sweep_yaml(tmp_path, tiny_weights, datasets, extra="evaluation: {silhouette_spaces: [raw]}\n")
    config.write_text(config.read_text().replace("workers: 2", "workers: 0").replace("  - raw_pixels\n", ""))
    assert main(["sweep", str(config), "--no-progress"]) == 1  # some jobs failed
    out = capsys.readouterr().out
    assert "3 ran, 0 skipped (finished before), 3 failed" in out
    assert sum(out.count(f"FAILED test_resnet/no-such-folder:test/{c}:") for c in CLUSTERERS) >= 3
    assert "no-such-folder" in out and "neither a registered dataset nor an existing directory" in out
    assert "rerunning the sweep retries them" in out


def test_sweep_config_errors_name_the_item(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoders: [{nmae: x}]\ndatasets: [digits]\n")
    with pytest.raises(ConfigError, match=r"encoders\[0\] must be a name or a mapping with a 'name'"):
        load_sweep_config(bad)
    bad.write_text("encoders: [raw_pixels]\ndatasets: [{name: digits, rooot: /x}]\n")
    with pytest.raises(ConfigError, match=r"datasets\[0\] \(digits\) has unknown key\(s\) \['rooot'\]"):
        load_sweep_config(bad)
    bad.write_text("encoders: [raw_pixels]\ndatasets: [digits]\nclusterer: {name: kmeans, n_clusters: K}\n"
                   "sweep: {splits: [test]}\n")
    cells = expand_cells(load_sweep_config(bad))
    assert [c.label for c in cells] == ["raw_pixels/digits:test"] and list(cells[0].cfg.jobs) == ["kmeans"]
    bad.write_text("encoders: [{name: raw_pixels, jobs: {ac: {clusterer: {linkage: average}}}}]\n"
                   "datasets: [digits]\nclusterer: kmeans\n")
    with pytest.raises(ConfigError, match=r"encoders\[raw_pixels\]\.jobs\.ac patches a job the sweep does not "
                                          r"run; it runs: kmeans"):
        load_sweep_config(bad)
    bad.write_text("encoders: [raw_pixels, raw_pixels]\ndatasets: [digits]\n")
    with pytest.raises(ConfigError, match="twice"):
        load_sweep_config(bad)


def test_overrides_merge_into_typed_sections_and_includes_may_change_shape(tmp_path):
    cfg = load_sweep_config(REPO / "experiments/study/offline.yaml",
                            ["tracking={experiment: other}", "sweep={workers: 3}"])
    assert cfg.tracking.experiment == "other" and cfg.tracking.plots is True and cfg.sweep.workers == 3
    inc = tmp_path / "inc.yaml"
    inc.write_text(f"include: {REPO / 'experiments/study/sweep.yaml'}\ndatasets: [cifar10]\n")
    cells = expand_cells(load_sweep_config(inc))  # a list where the included file has groups: replaced
    assert {c.dataset for c in cells} == {"cifar10"} and len(cells) == 14
    # a subset named on the command line keeps the items' own settings (a subset of the same jobs)
    sub = expand_cells(load_sweep_config(REPO / "experiments/study/sweep.yaml",
                                         ["encoders=[resnet50.dino]", "datasets=[celeba]"]))
    assert [c.label for c in sub] == ["resnet50.dino/celeba:test"] and sub[0].group == "far-ood"
    jobs = sub[0].cfg.jobs
    assert jobs.ac_k.clusterer.linkage == "average" and jobs.hdbscan.clusterer.min_cluster_size == 2


def test_shards_deal_the_grid_out_without_overlap(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("encoders: [raw_pixels, resnet50.random]\ndatasets: {far-ood: [dtd, mnist], in-domain: [cifar10]}\n")
    cells = expand_cells(load_sweep_config(path))
    assert len(cells) == 6 and cells[0].group == "far-ood" and cells[2].group == "in-domain"
    shards = [shard_cells(cells, f"{i}/4") for i in range(4)]
    assert sorted(c.label for s in shards for c in s) == sorted(c.label for c in cells)
    assert [len(s) for s in shards] == [2, 2, 1, 1]
    subset = expand_cells(load_sweep_config(path, ["datasets=[dtd]", "encoders=[raw_pixels]"]))
    assert [c.label for c in subset] == ["raw_pixels/dtd:test"]  # a whole list on the command line replaces
    regrouped = expand_cells(load_sweep_config(path, ["datasets={near-ood: [lsun]}"]))
    assert {c.dataset for c in regrouped} == {"lsun"} and regrouped[0].group == "near-ood"
    for bad in ("4/4", "1", "a/b"):
        with pytest.raises(ConfigError, match="sweep.shard"):
            shard_cells(cells, bad)


def test_study_configs_compose_into_the_papers_grid():
    """experiments/study: 14 encoders (12 + the CLIP towers) x 26 datasets in the 5 groups x 6 setups, all valid."""
    from zsclust.data import get_dataset_spec
    from zsclust.encoders import list_encoders
    from zsclust.report import clusterer_setup
    from zsclust.sweep._runner import _validate_pipelines

    cells = expand_cells(load_sweep_config(REPO / "experiments/study/sweep.yaml"))
    encoders = list(dict.fromkeys(c.encoder for c in cells))
    datasets = {c.dataset: c.group for c in cells}
    assert len(encoders) == 14 and set(encoders) <= set(list_encoders())
    assert len(datasets) == 26 and len(cells) == 14 * 26
    assert Counter(datasets.values()) == {"in-domain": 5, "domain-shift": 4, "near-ood": 3, "fine-grained": 6,
                                          "far-ood": 8}
    assert all(get_dataset_spec(d).group == g for d, g in datasets.items())  # the registry agrees on groups
    setups = {clusterer_setup({f"clusterer.{k}": str(v) for k, v in job.clusterer.items()})
              for job in cells[0].cfg.jobs.values()}
    assert setups == {"kmeans", "ac_k", "ac_no_k", "ap", "hdbscan", "spectral"}
    dino = next(c for c in cells if c.encoder == "resnet50.dino")  # each cell's settings: tests/test_study_configs.py
    assert dino.cfg.jobs.kmeans.reducer == {"name": "umap", "n_components": 50, "n_neighbors": 30, "min_dist": 0.0}
    mae = next(c for c in cells if c.encoder == "vit_base_patch16_224.mae")
    assert mae.cfg.jobs.ac_k.clusterer.metric == "cosine" and mae.cfg.jobs.ap.clusterer.damping == 0.6
    celeba = next(c for c in cells if c.dataset == "celeba")
    assert celeba.cfg.jobs.hdbscan.clusterer.min_cluster_size == 2
    _validate_pipelines(cells)  # every distinct reducer/clusterer spec of the grid builds and smoke-fits
    offline = expand_cells(load_sweep_config(REPO / "experiments/study/offline.yaml"))
    assert [c.label for c in offline] == ["tf_efficientnet_lite0.pypi_in1k/digits:test", "raw_pixels/digits:test"]


def test_ddp_sweep_embeds_on_two_processes_and_clusters_once(tmp_path, tiny_weights):
    """embed.devices=2: Lightning relaunches the sweep as rank 1; both ranks embed each cell, rank 0 alone clusters."""
    write_blurry_folder(tmp_path / "data" / "toyA", classes=3, per_class=20, seed=5)
    write_blurry_folder(tmp_path / "data" / "toyB", classes=3, per_class=20, seed=6)
    datasets = f"  - {tmp_path / 'data' / 'toyA'}\n  - {tmp_path / 'data' / 'toyB'}"
    config = _sweep_yaml(tmp_path, tiny_weights, datasets, extra="evaluation: {silhouette_spaces: [raw]}\n")
    config.write_text(config.read_text().replace("  - raw_pixels\n", "").replace("workers: 2", "workers: 1"))
    proc = run_cli("sweep", config, "embed.devices=2", "--no-progress", cwd=tmp_path,
                   env={"ZSCLUST_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.stdout.count("Sweep 'test-grid': 6 jobs: 6 ran, 0 skipped") == 1, proc.stdout + proc.stderr
    runs = _job_runs(tmp_path / "mlflow.db")
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)  # not 12: rank 1 logged nothing
    assert len(_manifests(tmp_path / "cache")) == 2
    log = proc.stdout + proc.stderr
    assert "MEMBER: 2/2" in log and "distributed_backend=gloo" in log, log  # rank 1 joined (and stayed for cell 2)


def test_in_process_jobs_are_written_as_they_finish_not_after_their_cell(tmp_path):
    """With ``sweep.workers: 0`` a cell's jobs run one after another in the sweep's process; each one's MLflow
    run is written when it finishes, so a long job (held here until the test opens a gate) does not hold back
    the runs of the jobs before it."""
    from conftest import write_image_folder

    folder = write_image_folder(tmp_path / "data" / "toy", classes=3, per_class=8, seed=3)
    (tmp_path / "heldfit.py").write_text(
        "import time\nfrom pathlib import Path\nfrom sklearn.cluster import KMeans\n\n"
        "HERE = Path(__file__).parent\n\n"
        "class HeldKMeans(KMeans):\n    def fit(self, X, y=None, sample_weight=None):\n"
        "        if len(X) == 24:  # the cell, not a smoke fit\n"
        "            (HERE / 'held').touch()\n"
        "            deadline = time.time() + 600\n"
        "            while not (HERE / 'gate').exists() and time.time() < deadline:\n"
        "                time.sleep(0.1)\n"
        "        return super().fit(X, y, sample_weight)\n")
    config = tmp_path / "sweep.yaml"
    config.write_text(f"""
encoders: [raw_pixels]
datasets: [{folder}]
embed: {{accelerator: cpu, precision: 32-true, num_workers: 0, progress: false, cache_dir: {tmp_path / 'cache'}}}
reducer: none
clusterer: [kmeans, ac_k]
jobs: {{held: {{clusterer: {{name: heldfit.HeldKMeans, n_clusters: 3, n_init: 1}}}}}}
evaluation: {{silhouette_spaces: [raw]}}
tracking: {{experiment: study-test, uri: "sqlite:///{tmp_path / 'mlflow.db'}", plots: false}}
sweep: {{name: held-grid, workers: 0}}
""")
    db = tmp_path / "mlflow.db"
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{tmp_path}")
    proc = subprocess.Popen([sys.executable, "-m", "zsclust", "sweep", str(config), "--no-progress"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "held").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "held").exists(), "the held job never started"
        deadline = time.time() + 60
        while _finished(db) < 2 and time.time() < deadline:
            time.sleep(0.1)
        assert _finished(db) == 2  # kmeans and ac_k, written while the held job still runs
        assert proc.poll() is None
    finally:
        (tmp_path / "gate").touch()
        out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert "3 jobs: 3 ran" in out and _finished(db) == 3, out
