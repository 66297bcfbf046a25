"""Tuning speed: a fixed list of UMAP × K-Means configurations, as one zsclust study and one job per config.

    python benchmarks/tune_speed.py [--umap 2] [--kmeans 4] [--n 10000] [--dim 256] [--tracking]

Both sides score the same configurations on the same 10k-sample synthetic embedding set (make_blobs,
20 classes) by AMI:

* zsclust: one ``python -m zsclust tune`` process; the list is enqueued (``study.enqueue``), trials
  reduce through the reduction cache (each UMAP setting is fitted once) and cluster. Wall time
  includes the process start, the Optuna storage and (with ``--tracking``) MLflow logging.
* per-job: the way the study's scripts ran, one fresh ``python`` process per configuration that
  loads the data, fits UMAP, clusters and scores with plain umap-learn and scikit-learn.

Seeds and parameters are identical (UMAP random_state=0 runs single-threaded and is deterministic),
so both must reach the same best AMI. Prints both wall times, their ratio and both best scores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
UMAP_SETTINGS = [(10, 15), (50, 30), (5, 50)]  # (n_components, n_neighbors); min_dist 0, the study's setting
KMEANS_SETTINGS = [(20, 1), (15, 1), (25, 1), (20, 3), (10, 1), (30, 1), (40, 1), (20, 10)]  # (K, n_init)


def configurations(n_umap: int, n_kmeans: int) -> list[dict]:
    return [{"reducer.n_components": c, "reducer.n_neighbors": nn, "clusterer.n_clusters": k, "clusterer.n_init": i}
            for (c, nn), (k, i) in itertools.product(UMAP_SETTINGS[:n_umap], KMEANS_SETTINGS[:n_kmeans])]


def make_data(path: Path, n: int, dim: int, seed: int = 0) -> Path:
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=n, n_features=dim, centers=20, cluster_std=12.0, random_state=seed)
    np.savez(path, embeddings=X.astype(np.float32), labels=y, fingerprint=np.asarray(f"bench-blobs-{n}-{dim}-{seed}"))
    return path


def job(cfg: dict, data: str) -> dict:
    """One configuration the per-job way: load, fit UMAP, cluster, score (run in a fresh process)."""
    import umap
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score

    with np.load(data) as z:
        X, y = z["embeddings"], z["labels"]
    Z = umap.UMAP(n_components=cfg["reducer.n_components"], n_neighbors=cfg["reducer.n_neighbors"], min_dist=0.0,
                  random_state=0, n_jobs=1).fit_transform(X)
    pred = KMeans(n_clusters=cfg["clusterer.n_clusters"], n_init=cfg["clusterer.n_init"], max_iter=1000,
                  random_state=0).fit_predict(Z)
    return {**cfg, "ami": float(adjusted_mutual_info_score(y, pred))}


def run_per_job(configs: list[dict], data: Path) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    results = []
    for i, cfg in enumerate(configs, 1):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--job", json.dumps(cfg), "--data", str(data)],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  per-job {i}/{len(configs)}: AMI {results[-1]['ami']:.4f} in {time.perf_counter() - t:.1f} s "
              f"{_short(cfg)}", flush=True)
    return time.perf_counter() - start, results


def run_study(configs: list[dict], data: Path, work: Path, tracking: bool) -> tuple[float, list[dict]]:
    import yaml

    cfg = {
        "space": {
            "reducer": {"name": "umap", "min_dist": 0.0,
                        "n_components": {"choices": sorted({c["reducer.n_components"] for c in configs})},
                        "n_neighbors": {"choices": sorted({c["reducer.n_neighbors"] for c in configs})}},
            "clusterer": {"name": "kmeans", "max_iter": 1000,
                          "n_clusters": {"choices": sorted({c["clusterer.n_clusters"] for c in configs})},
                          "n_init": {"choices": sorted({c["clusterer.n_init"] for c in configs})}},
        },
        "objective": {"metric": "ami"},
        "evaluation": {"silhouette_spaces": []},
        "study": {"name": "tune-speed", "storage": f"sqlite:///{work / 'optuna.db'}", "n_trials": len(configs),
                  "sampler": "random", "pruner": "none", "enqueue": configs},
        "tracking": {"enabled": tracking, "uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "tune-speed"},
        "reduction_cache": str(work / "reductions"),
    }
    (work / "tune.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(REPO), ZSCLUST_MLRUNS=str(work / "mlruns"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "zsclust", "tune", str(work / "tune.yaml"), "--embeddings",
                           f"bench={data}", "--no-progress"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"zsclust tune failed:\n{proc.stdout}\n{proc.stderr}")
    for line in proc.stdout.splitlines():
        if line.startswith("trial "):
            print(f"  study {line}", flush=True)
    import optuna

    study = optuna.load_study(study_name="tune-speed", storage=f"sqlite:///{work / 'optuna.db'}")
    results = [{**t.params, "ami": t.value} for t in study.trials]
    fits = len(list((work / "reductions").glob("*.npy")))
    print(f"  study: {len(results)} trials, {fits} UMAP fits (reduction cache)", flush=True)
    return seconds, results


def _short(cfg: dict) -> str:
    return " ".join(f"{k.split('.')[1]}={v}" for k, v in cfg.items() if k != "ami")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--umap", type=int, default=2, help=f"UMAP settings, at most {len(UMAP_SETTINGS)} [2]")
    p.add_argument("--kmeans", type=int, default=4, help=f"K-Means settings per UMAP, at most {len(KMEANS_SETTINGS)} [4]")
    p.add_argument("--n", type=int, default=10_000, help="samples [10000]")
    p.add_argument("--dim", type=int, default=256, help="embedding dimension [256]")
    p.add_argument("--tracking", action="store_true", help="also log every trial to MLflow (a temporary SQLite store)")
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:  # a per-job child process
        print(json.dumps(job(json.loads(args.job), args.data)))
        return 0

    configs = configurations(args.umap, args.kmeans)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; {len(configs)} configurations ({args.umap} UMAP x {args.kmeans} K-Means) "
          f"on {args.n} x {args.dim} embeddings", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_data(work / "bench.npz", args.n, args.dim)
        print("zsclust study (one process, reduction cache):", flush=True)
        t_study, r_study = run_study(configs, data, work, args.tracking)
        print("per-job (one process per configuration, UMAP refitted each time):", flush=True)
        t_jobs, r_jobs = run_per_job(configs, data)
    best_study = max(r["ami"] for r in r_study)
    best_jobs = max(r["ami"] for r in r_jobs)
    key = lambda r: tuple(sorted((k, v) for k, v in r.items() if k != "ami"))  # noqa: E731
    same = {key(r): round(r["ami"], 6) for r in r_study} == {key(r): round(r["ami"], 6) for r in r_jobs}
    print()
    print(f"zsclust study : {t_study:8.1f} s   best AMI {best_study:.4f}")
    print(f"per-job       : {t_jobs:8.1f} s   best AMI {best_jobs:.4f}")
    print(f"speed-up      : {t_jobs / t_study:8.2f} x   every configuration scored the same: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
