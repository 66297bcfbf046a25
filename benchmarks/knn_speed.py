"""kNN probe speed: time and peak memory of ``knn_accuracy`` on synthetic embeddings, per size.

    python benchmarks/knn_speed.py [--sizes 10000x1000,100000x10000,1000000x10000] [--dim 768]
                                   [--classes 1000] [--noise 4] [--dtype float32|float16] [--device cpu|cuda|auto]
                                   [--memory-budget-mib 512] [--chunk-size N]

A size ``BANKxQUERIES`` is a bank of BANK train embeddings and QUERIES test embeddings of ``--dim``
features (Gaussian blobs around one centre per class, stored as ``--dtype``), scored at the study's
ks (1, 10, 20, 100, 200) with T = 0.07. Each size runs in its own process so that its peak RSS is
its own: the script prints the RSS once the data exist, the peak RSS during the probe (the kernel's
high-water mark, reset after the data are made), the wall time of the probe (normalising the bank
included), the CPU time of all its threads (on a shared machine: the work, whatever the load),
queries per second and the similarity GFLOP/s (2 * bank * queries * dim / wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = "10000x1000,100000x10000,1000000x1000,1000000x10000"


def make_split(n: int, dim: int, classes: int, dtype: str, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Blobs written block by block into an array of ``dtype``: no float64 copy of the whole set."""
    centres = np.random.default_rng(0).standard_normal((classes, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    out = np.empty((n, dim), dtype=dtype)
    step = 65_536
    for start in range(0, n, step):
        y = labels[start:start + step]
        out[start:start + step] = centres[y] + noise * rng.standard_normal((len(y), dim), dtype=np.float32)
    return out, labels


def _status_kib(field: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def one(args) -> dict:
    """Run one size in this process and return its figures."""
    import torch

    from zsclust.knn import DEFAULT_KS, auto_chunk_size, knn_accuracy
    from zsclust.knn._inputs import resolve_device

    n_bank, n_queries = (int(v) for v in args.one.split("x"))
    bank, bank_labels = make_split(n_bank, args.dim, args.classes, args.dtype, seed=1, noise=args.noise)
    queries, query_labels = make_split(n_queries, args.dim, args.classes, args.dtype, seed=2, noise=args.noise)
    rss_data = _status_kib("VmRSS")
    peak_reset = _reset_peak_rss()
    device = resolve_device(args.device, bank)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    budget = args.memory_budget_mib * 2**20
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    acc = knn_accuracy(bank, bank_labels, queries, query_labels, chunk_size=args.chunk_size, device=device,
                       memory_budget=budget)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = (cpu_end.ru_utime - cpu_start.ru_utime) + (cpu_end.ru_stime - cpu_start.ru_stime)
    return {
        "bank": n_bank, "queries": n_queries, "seconds": seconds, "cpu_seconds": cpu_seconds,
        "chunk": args.chunk_size or auto_chunk_size(n_bank, args.classes, budget),
        "rss_data_gib": rss_data / 2**20 if rss_data else None,
        "peak_rss_gib": (_status_kib("VmHWM") or 0) / 2**20 if peak_reset else None,
        "gpu_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "accuracy": {str(k): acc[k] for k in DEFAULT_KS},
        "threads": torch.get_num_threads(), "device": str(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated BANKxQUERIES")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=4.0, help="std of the blobs (4: accuracy well below 1)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="storage of the inputs")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--memory-budget-mib", type=int, default=512, help="per-chunk budget (chunk size from it)")
    parser.add_argument("--chunk-size", type=int, default=None, help="queries per chunk (overrides the budget)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one size in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args)), flush=True)
        return

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}, "
          f"dim {args.dim}, {args.classes} classes, noise {args.noise}, {args.dtype} inputs, "
          f"budget {args.memory_budget_mib} MiB",
          flush=True)
    print(f"{'bank':>9} {'queries':>8} {'chunk':>6} {'seconds':>9} {'CPU s':>9} {'queries/s':>10} {'GFLOP/s':>8} "
          f"{'RSS data':>9} {'peak RSS':>9} {'GPU peak':>9}  accuracy k=1/10/20/100/200", flush=True)
    forwarded = ["--dim", str(args.dim), "--classes", str(args.classes), "--noise", str(args.noise),
                 "--dtype", args.dtype, "--device", args.device, "--memory-budget-mib", str(args.memory_budget_mib)]
    if args.chunk_size:
        forwarded += ["--chunk-size", str(args.chunk_size)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for size in args.sizes.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", size.strip(), *forwarded],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"{size}: failed\n{out.stderr.strip()}", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        gib = lambda v: f"{v:.2f} GiB" if v is not None else "n/a"  # noqa: E731
        flops = 2.0 * r["bank"] * r["queries"] * args.dim / r["seconds"] / 1e9
        accs = "/".join(f"{v:.3f}" for v in r["accuracy"].values())
        print(f"{r['bank']:>9} {r['queries']:>8} {r['chunk']:>6} {r['seconds']:>9.2f} {r['cpu_seconds']:>9.1f} "
              f"{r['queries'] / r['seconds']:>10.0f} {flops:>8.1f} {gib(r['rss_data_gib']):>9} "
              f"{gib(r['peak_rss_gib']):>9} {gib(r['gpu_peak_gib']):>9}  {accs}", flush=True)


if __name__ == "__main__":
    main()
