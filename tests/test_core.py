"""The single core: one job function for every command, one config loader, one name per setting, no import
cycle, provenance that travels with exported embeddings, and configs that ship inside the package."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.datasets import make_blobs

from conftest import REPO, run_cli, write_image_folder
from zsclust import jobs
from zsclust.cluster import JobData, run_job
from zsclust.config import load_config
from zsclust.errors import ConfigError
from zsclust.tune import load_tune_config

PACKAGE = REPO / "zsclust"


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        rel = f.relative_to(REPO).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    return out


def _import_graph() -> dict[str, set[str]]:
    """Every ``zsclust`` module → the ``zsclust`` modules it imports, at top level or inside a function."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        here = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def test_no_import_cycle_inside_the_package():
    graph = _import_graph()
    assert len(graph) > 50 and graph["zsclust.jobs"] >= {"zsclust._build", "zsclust.config"}
    done, cycles = set(), []

    def visit(node, path):
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        done.add(node)

    for m in sorted(graph):
        visit(m, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])
    for low in ("zsclust._build", "zsclust.tune._objective", "zsclust.tune._evaluate", "zsclust.sweep._plan"):
        assert "zsclust.jobs" not in graph[low], f"{low} imports the entry points above it"


def test_one_job_function_does_the_clustering():
    """No second reduce → cluster → score loop: only cluster/_job.py fits a clusterer for a result and scores it."""
    scorers = {"fit_predict", "score_labels", "score_embedding", "umap_silhouette"}
    allowed = {PACKAGE / "cluster" / "_job.py", PACKAGE / "cluster" / "contract.py",  # the job; estimator checks
               PACKAGE / "cluster" / "_clusterers.py",  # an imported clusterer's fit calls its target's
               PACKAGE / "cluster" / "_metrics.py", PACKAGE / "cluster" / "__init__.py"}  # where scores are defined
    found, callers, pipelines = {}, set(), set()
    for f in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in scorers and f not in allowed:
                    found.setdefault(str(f.relative_to(REPO)), []).append(f"{name} (line {node.lineno})")
                if name == "run_job":
                    callers.add(str(f.relative_to(PACKAGE)))
                if name == "ClusteringPipeline" or (name == "make_pipeline" and "_build" not in f.name):
                    pipelines.add(str(f.relative_to(PACKAGE)))
    assert not found, f"clustering or scoring outside zsclust/cluster/_job.py: {found}"
    # runs, `zsclust cluster`, evaluate and sweep workers go through the pipeline, trials straight to run_job
    assert callers == {"cluster/_pipeline.py", "tune/_objective.py"}, callers
    assert {"jobs.py", "tune/_evaluate.py", "sweep/_worker.py"} <= pipelines, pipelines


def _blobs_npz(path: Path) -> Path:
    X, y = make_blobs(n_samples=300, centers=4, n_features=12, cluster_std=2.5, random_state=7)
    np.savez(path, embeddings=X.astype(np.float32), labels=y)
    return path


def test_run_and_a_tune_trial_agree_on_labels_metrics_and_names(tmp_path, monkeypatch):
    """The same reducer and clusterer on the same data, once as a run and once as a tuning trial."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    npz = _blobs_npz(tmp_path / "blobs.npz")
    red, scores = f"reduction_cache={tmp_path / 'red'}", "evaluation.silhouette_spaces=[raw,reduced]"
    cfg = load_config(None, ["reducer={name: pca, n_components: 5}", "tracking.experiment=core", red, scores,
                             "clusterer={name: agglomerative, n_clusters: K, linkage: average, metric: cosine}"])
    emb, [run], _ = jobs.cluster_embeddings(cfg, str(npz))

    space = {"reducer": {"name": "pca", "n_components": {"choices": [5]}},
             "clusterer": {"name": "agglomerative", "n_clusters": "K", "linkage": {"choices": ["average"]},
                           "metric": {"choices": ["cosine"]}}}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump({
        "space": space, "study": {"name": "core", "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "n_trials": 1},
        "tracking": {"experiment": "core-tune"}, "reduction_cache": str(tmp_path / "red"),
        "evaluation": {"silhouette_spaces": ["raw", "reduced"]}}))
    tune_cfgs = load_tune_config(tmp_path / "tune.yaml", embeddings=[f"blobs={npz}"])
    jobs.tune(tune_cfgs, progress=False)
    trial = optuna.load_study(study_name="core", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials[0]

    trial_metrics = {k.split(".", 1)[1]: v for k, v in trial.user_attrs["zsclust.metrics"].items()
                     if k.startswith("blobs.")}
    same = {k for k in run.metrics if not k.endswith("_seconds") and k != "reduction_cache_hit"}
    assert same == {k for k in trial_metrics if not k.endswith("_seconds") and k != "reduction_cache_hit"}
    assert {k: run.metrics[k] for k in same} == {k: trial_metrics[k] for k in same}  # identical, not close
    assert run.metrics["ami"] > 0.5

    # the trial's job, rebuilt from its Optuna params, gives the run's labels
    from zsclust.tune import Objective, SearchSpace

    objective = Objective(SearchSpace(tune_cfgs[0].space), [], metric="ami")
    out = run_job(JobData.from_embeddings(emb), objective.job(trial.params), seed=0)
    np.testing.assert_array_equal(out.labels, run.labels_pred)

    # one name per setting: the Optuna params are the run's MLflow params, and so are the trial's MLflow params
    client = MlflowClient(uri)
    [logged] = client.search_runs([client.get_experiment_by_name("core").experiment_id])
    [child] = [r for r in client.search_runs([client.get_experiment_by_name("core-tune").experiment_id])
               if r.data.tags.get("zsclust.role") == "trial"]
    assert set(trial.params) == {"reducer.n_components", "clusterer.linkage", "clusterer.metric"}
    assert set(trial.params) <= set(logged.data.params)
    job_keys = {k for k in logged.data.params if k.startswith(("reducer.", "clusterer."))}
    assert job_keys == {k for k in child.data.params if k.startswith(("reducer.", "clusterer."))}
    assert {k: logged.data.params[k] for k in trial.params} == {k: child.data.params[k] for k in trial.params}
    assert logged.data.params["clusterer.n_clusters"] == "4"


def test_space_dir_on_the_command_line_and_includes_in_tune_configs(tmp_path):
    mine = tmp_path / "spaces" / "clusterer"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("name: kmeans\nn_clusters: K\nn_init: {choices: [1, 7]}\n")
    (tmp_path / "shared.yaml").write_text("study: {n_trials: 9}\nspace: {reducer: none, clusterer: mine}\n")
    (tmp_path / "tune.yaml").write_text("include: [shared.yaml]\nobjective: {metric: ami}\n")
    [cfg] = load_tune_config(tmp_path / "tune.yaml", [f"study.space_dir={tmp_path / 'spaces'}"])
    assert cfg.study.n_trials == 9 and cfg.space.clusterer.n_init.choices == [1, 7]  # the include, the folder
    with pytest.raises(ConfigError, match="Unknown clusterer search space 'mine'"):
        load_tune_config(tmp_path / "tune.yaml")  # without the folder, 'mine' does not exist
    [cfg] = load_tune_config(tmp_path / "tune.yaml", [f"study.space_dir={tmp_path / 'spaces'}",
                                                      "space.clusterer.n_init.choices=[3]"])
    assert cfg.space.clusterer.n_init.choices == [3]  # an override below the group applies after loading it


def test_run_choices_groups_and_one_spelling_of_k(tmp_path):
    from zsclust._build import expand_jobs

    by = {j.label: j for j in expand_jobs(load_config("quickstart", ["jobs.kmeans.clusterer.n_init=5"]))}
    assert list(by) == ["ac_k", "kmeans", "hdbscan"]
    assert by["kmeans"].clusterer == {"name": "kmeans", "n_clusters": "K", "n_init": 5}
    [km] = expand_jobs(load_config("quickstart", ["clusterer=[kmeans]", "clusterer.random_state=3"]))
    assert km.clusterer == {"name": "kmeans", "n_clusters": "K", "random_state": 3}
    assert by["ac_k"].reducer == {"name": "umap", "n_components": 50, "n_neighbors": 30, "min_dist": 0.0}
    with pytest.raises(ConfigError, match="clusterer.linkage .*does not apply to job 'kmeans'"):
        expand_jobs(load_config("quickstart", ["clusterer.linkage=average"]))
    with pytest.raises(ConfigError, match="Unknown clusterer choice 'kmean'.*Did you mean: kmeans"):
        expand_jobs(load_config("quickstart", ["clusterer=[kmean]"]))
    own = tmp_path / "clusterer"
    own.mkdir()
    (own / "kmeans.yaml").write_text("name: kmeans\nn_clusters: K\nn_init: 4\n")  # beside the config: wins
    (tmp_path / "run.yaml").write_text("clusterer: kmeans\nreducer: none\n")
    [job] = expand_jobs(load_config(tmp_path / "run.yaml"))
    assert job.clusterer["n_init"] == 4 and job.reducer == {"name": "none"}


def test_exported_npz_keeps_its_provenance_through_cluster(tmp_path, tiny_weights):
    folder = write_image_folder(tmp_path / "toy_photos", classes=3, per_class=10)
    npz = tmp_path / "toy.npz"
    db = tmp_path / "mlflow.db"
    run_cli("embed", "--encoder", "test_resnet", "--weights", tiny_weights, "--dataset", folder, "--split", "test",
            "--accelerator", "cpu", "--precision", "32-true", "--no-progress", "--export", npz, cwd=tmp_path)
    proc = run_cli("cluster", "--embeddings", npz, "reducer=none", "clusterer=kmeans", "tracking.plots=false",
                   "evaluation.silhouette_spaces=[raw]", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    assert "kmeans" in proc.stdout
    client = MlflowClient(f"sqlite:///{db}")
    [run] = client.search_runs([client.get_experiment_by_name("zsclust").experiment_id])
    assert run.info.run_name == "test_resnet/toy_photos:test/kmeans"
    assert (run.data.tags["encoder"], run.data.tags["dataset"], run.data.tags["split"]) == \
        ("test_resnet", "toy_photos", "test")
    assert run.data.params["encoder.weights_digest"].startswith("sha256:") or run.data.params["encoder.weights_digest"]
    logged = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text())
    assert logged["encoder"]["name"] == "test_resnet" and logged["data"]["name"] == "toy_photos"
    assert logged["clusterer"] == {"name": "kmeans", "n_clusters": "K"}  # the job, runnable as a config
    with np.load(npz) as z:
        meta = yaml.safe_load(str(z["meta"]))
    assert meta["dataset"]["classes"] == ["class_0", "class_1", "class_2"] and meta["fingerprint"]


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_runs_with_the_packaged_configs(tmp_path):
    """Build a wheel from a copy of the repo, install it (not editable) into a fresh venv, and use the
    configs that ship inside it from a folder outside the repo."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "mlruns", "__pycache__", "*.egg-info", "build", "dist", "reports", ".pytest_cache"))
    (src / "mlruns").mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, text=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("zsclust-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies come from this environment's site-packages (a plain path: its .pth files, among them
    # the editable zsclust, are not processed); zsclust itself from the wheel, unpacked into the new venv
    import sysconfig
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.unpack_archive(str(wheel), site, format="zip")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def zsclust(*args):
        return subprocess.run([str(python), "-m", "zsclust", *args], cwd=outside, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([str(python), "-c", "import zsclust; print(zsclust.__file__)"], cwd=outside, env=env,
                           capture_output=True, text=True).stdout
    assert where.startswith(site), where
    tune = zsclust("tune", "--print-config", "space.clusterer=hdbscan")
    assert tune.returncode == 0, tune.stderr
    assert "cluster_selection_method:" in tune.stdout and "tf_efficientnet_lite0.pypi_in1k/pca/hdbscan/ami" in tune.stdout
    status = zsclust("sweep", "study/offline", "--status")
    assert status.returncode == 0, status.stderr
    assert "2 cells, 14 jobs: 0 finished, 14 to run." in status.stdout  # 6 setups + the kNN probe, per cell
    run = zsclust("run", "quickstart", "--print-config")
    assert run.returncode == 0 and "3 job(s)" in run.stdout, run.stderr


def test_bad_npz_files_are_one_clear_line_naming_file_and_array(tmp_path):
    from zsclust.embed import EmbeddingSet
    from zsclust.errors import CacheError, InvalidDataError

    def npz(name, **arrays):
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        return path

    X = np.zeros((5, 3), np.float32)
    cases = [
        (npz("flat", embeddings=np.zeros(5)), InvalidDataError, r"flat.npz': array 'embeddings' must be 2-D numbers"),
        (npz("strings", embeddings=X, labels=np.array(list("abcde"))), InvalidDataError,
         r"strings.npz': array 'labels' must be 1-D integers .*dtype <U1"),
        (npz("short", embeddings=X, labels=np.zeros(4, int)), InvalidDataError,
         r"short.npz': array 'labels' has 4 entries but 'embeddings' has 5 rows"),
        (npz("idx", embeddings=X, indices=np.zeros(6, int)), InvalidDataError, r"array 'indices' has 6 entries"),
        (npz("none", vectors=X), CacheError, r"none.npz' has no 'embeddings' array \(it has: vectors\)"),
    ]
    (tmp_path / "text.npz").write_text("not a zip at all")
    cases.append((tmp_path / "text.npz", CacheError, r"text.npz' is not a NumPy .npz archive"))
    np.save(tmp_path / "single.npy", X)
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    cases.append((tmp_path / "single.npz", CacheError, r"single.npz' holds a single array"))
    cases.append((tmp_path / "missing.npz", CacheError, r"missing.npz' does not exist"))
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            EmbeddingSet.from_npz(path)
    fine = EmbeddingSet.from_npz(npz("fine", embeddings=X))
    assert fine.fingerprint.startswith("npz-") and (fine.labels == -1).all()
    # the same content elsewhere is the same entry; other content at the same path is another one
    assert EmbeddingSet.from_npz(npz("copy", embeddings=X)).fingerprint == fine.fingerprint
    assert EmbeddingSet.from_npz(npz("fine", embeddings=X + 1)).fingerprint != fine.fingerprint
