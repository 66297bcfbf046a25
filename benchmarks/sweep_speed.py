"""Sweep speed: a cold sweep, a restart with nothing left, and clustering in 1 process vs N worker processes.

    python benchmarks/sweep_speed.py [--config experiments/study/offline.yaml] [--workers 2]
    python benchmarks/sweep_speed.py --synthetic 3000 [--workers 2]     # heavier clustering jobs

Every run is a real ``python -m zsclust sweep`` process on a fresh MLflow store (SQLite in a temp dir):

* cold: empty embedding and reduction caches, the default worker pool;
* restart: the same store again, every job already FINISHED (the cost of a resume with nothing to do);
* serial vs parallel: embeddings cached, reductions not, a fresh store; ``sweep.workers=0`` (every job in
  the main process, one after another) against ``sweep.workers=N``.

Prints wall times and the parallel speedup. The offline config runs anywhere (EfficientNet-Lite0 from
PyPI and raw pixels on scikit-learn's digits, the study's six clusterer setups: 12 jobs). Its jobs take
about a second each, less than a worker process needs to start (imports, numba compiling UMAP), so
``--synthetic N`` writes two image folders of N noisy images in 10 classes and sweeps raw pixels over
them with the same six setups: jobs of seconds to minutes, as on real datasets.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep(config: str, tmp: Path, store: str, overrides: list[str]) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), ZSCLUST_CACHE_DIR=str(tmp / "cache"))
    cmd = [sys.executable, "-m", "zsclust", "sweep", config, "--no-progress", f"tracking.uri=sqlite:///{tmp / store}",
           f"reduction_cache={tmp / 'reductions'}", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"sweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summary = re.search(r"Sweep '.*?': \d+ jobs: .*", proc.stdout)
    return wall, summary.group(0) if summary else "?"


def synthetic_config(tmp: Path, n: int) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folders = []
    for name in ("synthA", "synthB"):
        root = tmp / "data" / name
        centres = rng.uniform(40, 215, size=(10, 3))
        for i in range(n):
            c = i % 10
            d = root / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            img = np.clip(centres[c] + rng.normal(0, 30, 3) + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:05d}.png")
        folders.append(root)
    cfg = tmp / "synthetic.yaml"
    cfg.write_text(f"include: [{REPO / 'experiments/study/clusterers.yaml'}]\n"
                   "encoders: [raw_pixels]\n"
                   f"datasets: {{synthetic: [{folders[0]}, {folders[1]}]}}\n"
                   "sweep: {name: synthetic}\ntracking: {experiment: synthetic}\n")
    return str(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "experiments/study/offline.yaml"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--synthetic", type=int, default=0, metavar="N", help="sweep two written folders of N images")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.synthetic:
            args.config = synthetic_config(tmp, args.synthetic)
            print(f"config: raw pixels x 2 folders of {args.synthetic} images x the study's 6 clusterer setups")
        cold, s1 = sweep(args.config, tmp, "a.db", [f"sweep.workers={args.workers}"])
        print(f"cold sweep (embed + cluster, {args.workers} workers): {cold:7.1f} s   {s1}")
        again, s2 = sweep(args.config, tmp, "a.db", [f"sweep.workers={args.workers}"])
        print(f"restart, nothing left:                   {again:7.1f} s   {s2}")
        shutil.rmtree(tmp / "reductions")
        serial, s3 = sweep(args.config, tmp, "b.db", ["sweep.workers=0"])
        print(f"clustering in the main process:          {serial:7.1f} s   {s3}")
        shutil.rmtree(tmp / "reductions")
        parallel, s4 = sweep(args.config, tmp, "c.db", [f"sweep.workers={args.workers}"])
        print(f"clustering in {args.workers} worker processes:        {parallel:7.1f} s   {s4}")
        print(f"parallel speedup: {serial / parallel:.2f}x")


if __name__ == "__main__":
    main()
