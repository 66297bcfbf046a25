"""Speed and memory of the study's other methods (docs/methods.md): the graph clusterers and t-SNE.

    python benchmarks/methods_speed.py [--cases louvain:dense:1000,louvain:knn:20000,leiden:knn:20000]
                                       [--dim 50] [--centers 20]

A case is ``METHOD:VARIANT:N``: ``louvain``/``leiden`` with ``dense``/``knn`` (k 15), ``tsne`` with
``exact``/``fft``, ``kernel_pca`` with a kernel. Each runs in its own process on N Gaussian-blob samples
of ``--dim`` features, and the script prints the wall and CPU time of the fit, the peak RSS above the
process's RSS before the fit, after a warm-up fit on 60 samples (the kernel's high-water mark, which sees igraph's and openTSNE's C
allocations too), the estimate the memory guard uses (``fit_memory``), and the AMI with the blobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASES = "louvain:dense:500,louvain:dense:1000,leiden:dense:1000,louvain:knn:20000,leiden:knn:20000"

_CHILD = r"""
import json, resource, sys, time, warnings
import numpy as np
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_mutual_info_score
from zsclust.cluster import create_clusterer, create_reducer, estimate_fit_bytes

method, variant, n, dim, centers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
X, y = make_blobs(n_samples=n, centers=centers, n_features=dim, cluster_std=4.0, random_state=0)
if method in ("louvain", "leiden"):
    est = create_clusterer(method, graph=variant, random_state=0)
elif method == "tsne":
    est = create_reducer({"name": "tsne", "method": variant, "random_state": 0})
else:
    est = create_reducer({"name": "kernel_pca", "kernel": variant, "n_components": 10, "random_state": 0})
estimate = estimate_fit_bytes(est, *X.shape)[0]
with warnings.catch_warnings():  # warm up on a few samples: imports and lazy set-up are not the fit's memory
    warnings.simplefilter("ignore")
    small = {"perplexity": 5.0} if method == "tsne" else {}
    (type(est)(**{**est.get_params(), **small}).fit(X[:60]))
with open("/proc/self/status") as f:
    rss0 = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) * 1024
with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS
    f.write("5")
wall, cpu = time.perf_counter(), time.process_time()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if method in ("louvain", "leiden"):
        pred = est.fit_predict(X)
    else:
        Z = est.fit_transform(X)
        pred = create_clusterer("kmeans", n_clusters=centers, random_state=0).fit_predict(Z)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
with open("/proc/self/status") as f:
    hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) * 1024
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_mib": (hwm - rss0) / 2**20, "estimate_mib": estimate / 2**20,
                  "ami": adjusted_mutual_info_score(y, pred), "n_found": int(np.unique(pred).size)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--centers", type=int, default=20)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"d={args.dim}, {args.centers} blobs (std 4)")
    print(f"{'case':<24}{'wall s':>9}{'cpu s':>9}{'peak MiB':>10}{'est. MiB':>10}{'AMI':>7}{'found':>7}")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for case in args.cases.split(","):
        method, variant, n = case.split(":")
        proc = subprocess.run([sys.executable, "-c", _CHILD, method, variant, n, str(args.dim), str(args.centers)],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            print(f"{case:<24}FAILED: {proc.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{case:<24}{r['wall_s']:>9.1f}{r['cpu_s']:>9.1f}{r['peak_mib']:>10.0f}{r['estimate_mib']:>10.0f}"
              f"{r['ami']:>7.3f}{r['n_found']:>7d}")


if __name__ == "__main__":
    main()
