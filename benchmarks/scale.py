"""Scale: the study's recipe at ImageNet and iNaturalist size, zsclust against plain scikit-learn/scipy/umap-learn.

    python benchmarks/scale.py recipe   [--n 10000 --d 1280 --classes 100]   # zsclust cluster vs a plain script
    python benchmarks/scale.py study    [--n 10000 --d 1280 --classes 100]   # 12-config zsclust tune vs a plain loop
    python benchmarks/scale.py stages   [--n 50000 --classes 1000]           # each stage at ImageNet size
    python benchmarks/scale.py umap_ward [--n 100000]                        # UMAP-50 + ward, K known
    python benchmarks/scale.py kmeans   [--n 1000000 --ami-n 100000]         # faiss K-Means; AMI vs scikit-learn

Every measurement runs in a fresh Python process (numba compilation, imports and loading the data
counted the same way on both sides), timed from outside, its peak resident memory read from the
kernel (``ru_maxrss`` of that process alone). The data are synthetic embeddings (``--d`` dimensions,
``--classes`` classes): class centres in a 32-d latent space, projected, plus noise, written once to
an .npz under ``--work``. Each figure is printed with the machine's load average (``uptime``) before
and after it: the machine is shared, and a loaded machine makes both sides slower, not always equally.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
GiB = 2**30


# ----------------------------------------------------------------------------------- data


def synthetic(n: int, d: int, classes: int, seed: int = 0, latent: int = 32, spread: float = 1.0):
    """(X float32 (n, d), y): ``classes`` centres in a ``latent``-d space, projected to ``d``, plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, latent), dtype=np.float32)
    proj = rng.standard_normal((latent, d), dtype=np.float32) / np.sqrt(latent)
    y = rng.integers(0, classes, size=n)
    X = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        z = centres[y[start:stop]] + spread * rng.standard_normal((stop - start, latent), dtype=np.float32)
        X[start:stop] = z @ proj + 0.25 * rng.standard_normal((stop - start, d), dtype=np.float32)
    return X, y.astype(np.int64)


def data_file(work: Path, n: int, d: int, classes: int) -> Path:
    path = work / f"synthetic-{n}x{d}-{classes}.npz"
    if not path.exists():
        X, y = synthetic(n, d, classes)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, embeddings=X, labels=y, indices=np.arange(n))
        os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------- measuring


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def measure(code: str, *, env: dict | None = None, timeout: float | None = None, argv: list[str] | None = None):
    """Run ``code`` (or ``argv``) in a fresh process; (wall seconds, peak RSS bytes, its JSON result or None, rc)."""
    cmd = argv or [sys.executable, "-c", code]
    wrapper = textwrap.dedent("""
        import json, resource, subprocess, sys, time
        t = time.perf_counter()
        try:
            p = subprocess.run(json.loads(sys.argv[1]), capture_output=True, text=True,
                               timeout=float(sys.argv[2]) or None)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:  # killed and reaped: its peak memory still counts
            rc, out, err = "timeout", (e.stdout or b"").decode(errors="replace"), "timed out"
        wall = time.perf_counter() - t
        sys.stderr.write(err[-4000:])
        print(json.dumps({"wall": wall, "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                          "rc": rc, "stdout": out[-20000:]}))
    """)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    before = load()
    p = subprocess.run([sys.executable, "-c", wrapper, json.dumps(cmd), str(timeout or 0)], capture_output=True,
                       text=True, env=full_env)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    result = None
    for line in reversed(out["stdout"].splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
            break
    if out["rc"] not in (0, "timeout"):
        print(f"    (exit {out['rc']}) {p.stderr.strip()[-1500:]}", flush=True)
    return {"wall": out["wall"], "peak": out["maxrss_kib"] * 1024, "result": result, "rc": out["rc"],
            "load": f"{before} -> {load()}", "stdout": out["stdout"]}


def row(stage: str, ours: dict | None, plain: dict | None, note: str = "") -> dict:
    r = {"stage": stage, "note": note}
    for side, m in (("zsclust", ours), ("plain", plain)):
        if m is not None and m["rc"] == "timeout":
            r["note"] += f"; {side}: not finished after {m['wall']:.0f} s (peak {m['peak'] / GiB:.2f} GiB so far, {m['load']})"
        elif m is not None and m["rc"] != 0:
            r["note"] += f"; {side}: failed (exit {m['rc']})"
        if m is not None and m["rc"] == 0:
            r[f"{side}_s"] = m["wall"]
            r[f"{side}_gib"] = m["peak"] / GiB
            r[f"{side}_load"] = m["load"]
            if m["result"]:
                r[f"{side}_result"] = m["result"]
    if "zsclust_s" in r and "plain_s" in r:
        r["ratio"] = r["plain_s"] / r["zsclust_s"]
    return r


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}\n")
    print("| stage | zsclust s | zsclust peak GiB | plain s | plain peak GiB | plain/zsclust | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        def f(key, fmt):
            return fmt.format(r[key]) if key in r else "-"
        notes = [r["note"]] if r["note"] else []
        for side in ("zsclust", "plain"):
            if f"{side}_result" in r:
                notes.append(f"{side}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in r[f"{side}_result"].items()))
            if f"{side}_load" in r:
                notes.append(f"{side} {r[f'{side}_load']}")
        print(f"| {r['stage']} | {f('zsclust_s', '{:.1f}')} | {f('zsclust_gib', '{:.2f}')} | {f('plain_s', '{:.1f}')} "
              f"| {f('plain_gib', '{:.2f}')} | {f('ratio', '{:.2f}')} | {'; '.join(notes)} |", flush=True)


def header() -> None:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}; {load()}")


# ----------------------------------------------------------------------------------- snippets run in children

PRELUDE = """
import json, time, warnings, numpy as np
warnings.simplefilter("ignore")
z = np.load({path!r}); X, y = z["embeddings"], z["labels"]
K = int(len(np.unique(y)))
def ami(labels):
    from sklearn.metrics import adjusted_mutual_info_score
    return float(adjusted_mutual_info_score(y, labels))
def done(**kw):
    print("RESULT " + json.dumps(kw), flush=True)
"""


def child(path: Path, body: str) -> str:
    return PRELUDE.format(path=str(path)) + textwrap.dedent(body)


PLAIN_RECIPE = """
import umap
from sklearn.cluster import KMeans, AgglomerativeClustering, HDBSCAN
Z = umap.UMAP(n_components=50, n_neighbors=30, min_dist=0.0, random_state=0).fit_transform(X)
a = ami(KMeans(K, n_init=1, max_iter=1000, random_state=0).fit_predict(Z))
b = ami(AgglomerativeClustering(K, linkage="ward").fit_predict(Z))
c = ami(HDBSCAN(min_cluster_size=5).fit_predict(Z))
done(ami_kmeans=a, ami_ward=b, ami_hdbscan=c)
"""


def cmd_recipe(args) -> list[dict]:
    """zsclust cluster with the study's recipe (UMAP-50, then K-Means, ward, HDBSCAN; scored, plotted, tracked
    in MLflow) against a plain script doing the same three fits."""
    path = data_file(args.work, args.n, args.d, args.classes)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        env = {"ZSCLUST_CACHE_DIR": f"{tmp}/cache", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        argv = [sys.executable, "-m", "zsclust", "cluster", "--embeddings", str(path), "reducer=umap50",
                "clusterer=[kmeans,ac_k,hdbscan]"]
        ours = measure("", argv=argv, env=env)
        amis = {}
        for line in ours["stdout"].splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[0] in ("kmeans", "ac_k", "hdbscan"):  # the results table: job, ami, ...
                try:
                    amis[f"ami_{parts[0]}"] = float(parts[1])
                except ValueError:
                    pass
        ours["result"] = amis or None
    plain = measure(child(path, PLAIN_RECIPE))
    rows = [row(f"recipe {args.n:,} x {args.d}, {args.classes} classes", ours, plain,
                "zsclust: scored (3 silhouette spaces incl. the label-free UMAP-50), 2-D plot, MLflow")]
    variants = {"seed=42 (the job's UMAP-50 is the label-free space)": ["seed=42"],
                "no label-free space, no plots": ["evaluation.silhouette_spaces=[raw,reduced]", "tracking.plots=false"]}
    for label, extra in (variants.items() if args.variants else ()):
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            env = {"ZSCLUST_CACHE_DIR": f"{tmp}/cache", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
            rows.append(row(f"  zsclust with {label}", measure("", argv=argv + extra, env=env), plain,
                            "plain: the same run as above"))
    print_table("zsclust cluster (study recipe) vs plain script; ratio >= 1.0 means zsclust is no slower", rows)
    return rows


PLAIN_STUDY = """
import umap
from sklearn.cluster import KMeans, AgglomerativeClustering, HDBSCAN
best = {}
for dim in (5, 10, 20, 50):
    for name in ("kmeans", "ward", "hdbscan"):
        Z = umap.UMAP(n_components=dim, n_neighbors=30, min_dist=0.0, random_state=0).fit_transform(X)
        est = {"kmeans": KMeans(K, n_init=1, max_iter=1000, random_state=0),
               "ward": AgglomerativeClustering(K, linkage="ward"), "hdbscan": HDBSCAN(min_cluster_size=5)}[name]
        a = ami(est.fit_predict(Z))
        if a > best.get(name, (-1, 0))[0]:
            best[name] = (a, dim)
done(**{f"best_{k}": f"{v[0]:.4f}@{v[1]}" for k, v in best.items()})
"""

STUDY_CONFIG = """
encoder: {{name: synthetic}}
space:
  reducer: {{name: umap, n_components: {{choices: [5, 10, 20, 50]}}, n_neighbors: 30, min_dist: 0.0}}
  clusterer:
    - {{name: kmeans, n_clusters: K}}
    - {{name: agglomerative, n_clusters: K, linkage: ward}}
    - {{name: hdbscan, min_cluster_size: 5}}
objective: {{metric: ami}}
study: {{n_trials: 4, sampler: grid, storage: "sqlite:///{tmp}/optuna.db", workers: {workers}}}
tracking: {{experiment: scale-bench, uri: "sqlite:///{tmp}/mlflow.db"}}
{evaluation}"""

READ_STUDY = """
import optuna, sys
best = {}
for s in optuna.get_all_study_summaries(storage=sys.argv[1]):
    st = optuna.load_study(study_name=s.study_name, storage=sys.argv[1])
    t = st.best_trial
    best[s.study_name.split("/")[2]] = f"{t.value:.4f}@{t.params.get('reducer.n_components')}"
print(json.dumps(best))
"""


def cmd_study(args) -> list[dict]:
    """A 12-config study (UMAP n_components {5,10,20,50} x K-Means, ward, HDBSCAN) through zsclust tune
    against the same 12 configs fitted one after another in one plain process."""
    path = data_file(args.work, args.n, args.d, args.classes)
    variants = [(f"zsclust tune, study.workers={args.workers}", args.workers, "")]
    if args.variants:
        variants = [("zsclust tune, 1 process", 1, ""), ("zsclust tune, study.workers=2", 2, ""),
                    ("zsclust tune, study.workers=2, scored like the plain loop (AMI; no label-free UMAP-50)", 2,
                     "evaluation: {silhouette_spaces: [raw, reduced]}\n")]
    ours_rows = []
    for label, workers, evaluation in variants:
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            cfg = Path(tmp) / "study.yaml"
            cfg.write_text(STUDY_CONFIG.format(tmp=tmp, workers=workers, evaluation=evaluation))
            env = {"ZSCLUST_CACHE_DIR": f"{tmp}/cache", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
            argv = [sys.executable, "-m", "zsclust", "tune", str(cfg), "--embeddings", f"syn={path}", "--no-progress"]
            ours = measure("", argv=argv, env=env)
            best = subprocess.run([sys.executable, "-c", "import json\n" + READ_STUDY, f"sqlite:///{tmp}/optuna.db"],
                                  capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            try:
                ours["result"] = {f"best_{k}": v for k, v in json.loads(best.stdout.strip().splitlines()[-1]).items()}
            except (ValueError, IndexError):
                print(best.stderr[-2000:])
            ours_rows.append((label, ours))
    plain = None if args.skip_plain else measure(child(path, PLAIN_STUDY))
    rows = [row(f"12-config study, {args.n:,} x {args.d}: {label}", ours, plain,
                "zsclust: 4 UMAP fits on one shared kNN graph" + (", + the label-free UMAP-50 and its silhouettes"
                                                                   if "plain loop" not in label else "")
                + ("; peak memory: the largest of the processes" if "workers=2" in label else ""))
            for label, ours in ours_rows]
    print_table("zsclust tune (12 configs) vs a plain loop refitting UMAP per config; target ratio >= 3", rows)
    return rows


# -- stages at ImageNet size ---------------------------------------------------------------------

OURS_UMAP = """
from zsclust.cluster import ReductionCache
t = time.perf_counter()
Z, _ = ReductionCache({cache!r}).get_or_fit({{"name": "umap", "n_components": 50, "n_neighbors": 30, "min_dist": 0.0}},
                                            X, embedding_fingerprint="bench", seed=0)
np.save({out!r}, Z)
done(seconds_inside=time.perf_counter() - t)
"""
PLAIN_UMAP = """
import umap
t = time.perf_counter()
Z = umap.UMAP(n_components=50, n_neighbors=30, min_dist=0.0, random_state=0).fit_transform(X)
np.save({out!r}, Z)
done(seconds_inside=time.perf_counter() - t)
"""
OURS_KNN = """
from zsclust.cluster._knn_graph import compute_knn_graph
g = compute_knn_graph(X, 30, "euclidean", method={method!r}, seed=0)
done(method=g.method)
"""
PLAIN_KNN = """
from umap.umap_ import nearest_neighbors
nearest_neighbors(X, 30, "euclidean", {}, False, np.random.RandomState(0), n_jobs=1)
done(method="NNDescent")
"""
OURS_CLUSTER = """
from zsclust.cluster import create_clusterer
from zsclust.errors import ZsclustError
Z = np.load({z!r})
est = create_clusterer({node!r})
try:
    labels = est.fit_predict(Z)
except ZsclustError as e:
    done(refused=str(e))
else:
    done(ami=ami(labels), backend=getattr(est, "backend_", "-"), n_clusters=int(len(set(labels) - {{-1}})))
"""
PLAIN_CLUSTER = """
import sklearn.cluster as skc
Z = np.load({z!r})
labels = {expr}.fit_predict(Z)
done(ami=ami(labels), n_clusters=int(len(set(labels) - {{-1}})))
"""


def _cluster_pair(path, z, node, expr, env, timeout, plain=True):
    ours = measure(child(path, OURS_CLUSTER.format(z=str(z), node=node)), env=env, timeout=timeout)
    theirs = measure(child(path, PLAIN_CLUSTER.format(z=str(z), expr=expr)), timeout=timeout) if plain else None
    return ours, theirs


def cmd_stages(args) -> list[dict]:
    """Every stage of the study's recipe at ImageNet size (default 50k x 768, 1000 classes)."""
    path = data_file(args.work, args.n, args.d, args.classes)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        env = {"ZSCLUST_MEMORY_LIMIT": args.memory_limit} if args.memory_limit else {}
        z_ours, z_plain = Path(tmp) / "z_ours.npy", Path(tmp) / "z_plain.npy"
        want = set(args.only.split(",")) if args.only else None

        def on(name):
            return want is None or name in want

        if on("knn"):
            rows.append(row("kNN graph (k=30)", measure(child(path, OURS_KNN.format(method="auto")), env=env),
                            measure(child(path, PLAIN_KNN)), "zsclust: exact blocked search; plain: NNDescent"))
        if on("umap") or not z_ours.exists():
            rows.append(row("UMAP-50", measure(child(path, OURS_UMAP.format(cache=f"{tmp}/cache", out=str(z_ours))),
                                               env=env),
                            measure(child(path, PLAIN_UMAP.format(out=str(z_plain)))),
                            "zsclust: shared exact kNN graph (computed in this run)"))
        t = args.timeout
        K = args.classes
        cases = [
            ("K-Means (K known)", {"name": "kmeans", "n_clusters": K, "n_init": 1, "max_iter": 1000, "random_state": 0},
             f"skc.KMeans({K}, n_init=1, max_iter=1000, random_state=0)", True),
            ("AC w/ K (ward)", {"name": "agglomerative", "n_clusters": K}, f"skc.AgglomerativeClustering({K})",
             args.n <= args.plain_ward_max),
            ("AC w/o K (ward, threshold)", {"name": "agglomerative", "n_clusters": None, "distance_threshold": 2.0},
             "skc.AgglomerativeClustering(None, distance_threshold=2.0)", args.n <= args.plain_ward_max),
            ("spectral (kNN affinity)", {"name": "spectral", "n_clusters": K, "random_state": 0},
             f"skc.SpectralClustering({K}, affinity='nearest_neighbors', n_neighbors=10, assign_labels='cluster_qr', "
             "random_state=0)", True),
            ("HDBSCAN", {"name": "hdbscan", "min_cluster_size": 5}, "skc.HDBSCAN(min_cluster_size=5)", True),
            ("affinity propagation", {"name": "affinity_propagation"}, "skc.AffinityPropagation(damping=0.9)", False),
        ]
        for label, node, expr, run_plain in cases:
            key = label.split()[0].lower()
            if not on(key):
                continue
            timeout = args.spectral_timeout if key == "spectral" else t
            ours, theirs = _cluster_pair(path, z_ours, node, expr, env, timeout, plain=run_plain)
            note = "on zsclust's UMAP-50" + ("" if run_plain else "; plain not run (N^2 memory)")
            rows.append(row(f"{label}", ours, theirs, note))
    print_table(f"stages at {args.n:,} x {args.d}, {args.classes} classes", rows)
    return rows


def cmd_umap_ward(args) -> list[dict]:
    """UMAP-50 + ward with K known (the study's recommended pipeline) in one zsclust process."""
    path = data_file(args.work, args.n, args.d, args.classes)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        code = child(path, f"""
            from zsclust.cluster import JobData, JobSpec, ReductionCache, Scoring, run_job
            job = JobSpec("umap50/ward", {{"name": "umap", "n_components": 50, "n_neighbors": 30, "min_dist": 0.0}},
                          {{"name": "agglomerative", "n_clusters": "K"}})
            out = run_job(JobData(X, "bench", y, K), job, seed=0, cache=ReductionCache({tmp + '/cache'!r}),
                          scoring=Scoring(silhouette_spaces=()))
            m = out.metrics
            done(ami=m["ami"], backend=out.params.get("clusterer.backend_"), knn=out.params.get("reducer.knn_graph"),
                 reduce_s=m["reduce_seconds"], cluster_s=m["cluster_seconds"])
        """)
        ours = measure(code)
    rows = [row(f"UMAP-50 + ward (K known), {args.n:,} x {args.d}", ours, None,
                "plain: not run (scikit-learn ward needs ~{:.0f} GiB of condensed distances)".format(
                    args.n * (args.n - 1) / 2 * 8 * 2 / GiB))]
    print_table("UMAP-50 + ward at iNaturalist size; targets <= 20 min, <= 6 GiB", rows)
    return rows


OURS_KMEANS = """
import torch
from zsclust.cluster import _faiss, create_clusterer
if {per} is not None:
    _faiss.INIT_SAMPLE_PER_CLUSTER = {per}
est = create_clusterer({{"name": "kmeans", "n_clusters": K, "random_state": 0, "backend": "{backend}",
                         "max_iter": {it}}})
t = time.perf_counter()
labels = est.fit_predict(X)
fit_s = time.perf_counter() - t
m = min(len(X), _faiss.INIT_SAMPLE_PER_CLUSTER * K)
if est.backend_ == "torch":
    from zsclust.cluster._gpu import torch_device
    device = torch_device()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
else:
    where = "cpu"
done(fit_s=fit_s, ami=ami(labels), n_iter=est.n_iter_, inertia=est.inertia_, backend=est.backend_, device=where,
     refined_on=m if est.backend_ == "faiss" and len(X) >= _faiss.REFINE_FROM * m else 0)
"""
PLAIN_KMEANS = """
from sklearn.cluster import KMeans
t = time.perf_counter()
est = KMeans(K, n_init=1, max_iter=1000, random_state=0).fit(X)
fit_s = time.perf_counter() - t
done(fit_s=fit_s, ami=ami(est.labels_), n_iter=int(est.n_iter_), inertia=float(est.inertia_))
"""


def cmd_kmeans(args) -> list[dict]:
    """zsclust's K-Means (--backend, faiss by default), K=1000: AMI against scikit-learn's k-means++ at --ami-n, then time and memory at --n."""
    rows = []
    small = data_file(args.work, args.ami_n, args.d, args.classes)
    for it in args.max_iter:
        rows.append(row(f"K-Means K={args.classes}, {args.ami_n:,} x {args.d}, max_iter={it}",
                        measure(child(small, OURS_KMEANS.format(it=it, per=args.refine_sample, backend=args.backend))), None, "AMI check"))
    if not args.skip_sklearn:
        rows.append(row(f"K-Means K={args.classes}, {args.ami_n:,} x {args.d} (scikit-learn k-means++)", None,
                        measure(child(small, PLAIN_KMEANS)), "reference AMI"))
    if args.n:
        big = data_file(args.work, args.n, args.d, args.classes)
        rows.append(row(f"K-Means K={args.classes}, {args.n:,} x {args.d}, max_iter={args.max_iter[-1]}",
                        measure(child(big, OURS_KMEANS.format(it=args.max_iter[-1], per=None, backend=args.backend))), None,
                        "plain scikit-learn not run at this size (k-means++ alone: hours on 2 cores)"))
    print_table("K-Means at 1M points; targets <= 3 min, <= 10 GiB, AMI within 0.01 of scikit-learn", rows)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["recipe", "study", "stages", "umap_ward", "kmeans"])
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--d", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "zsclust-scale-bench")
    p.add_argument("--only", default=None, help="stages: comma-separated subset (knn,umap,k-means,ac,spectral,hdbscan,affinity)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per measurement")
    p.add_argument("--spectral-timeout", type=float, default=1200, help="seconds per spectral measurement")
    p.add_argument("--memory-limit", default=None, help="ZSCLUST_MEMORY_LIMIT for zsclust's side")
    p.add_argument("--plain-ward-max", type=int, default=25_000, help="largest N to try scikit-learn's ward at")
    p.add_argument("--ami-n", type=int, default=100_000)
    p.add_argument("--max-iter", type=int, nargs="+", default=[20, 1000])
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--workers", type=int, default=1, help="study: study.workers of the zsclust side")
    p.add_argument("--skip-plain", action="store_true", help="study: do not run the plain loop")
    p.add_argument("--backend", default="faiss", choices=["faiss", "torch", "auto"],
                   help="kmeans: zsclust's K-Means backend (torch runs on CUDA when torch sees a GPU)")
    p.add_argument("--refine-sample", type=int, default=None,
                   help="kmeans: k-means++ sample per cluster for the --ami-n rows (a smaller one makes the faiss "
                        "backend refine its start on the sample there too, as it does at --n)")
    p.add_argument("--variants", action="store_true", help="recipe: also zsclust with seed=42, and without the "
                   "label-free space and plots; study: 1 process, 2 workers, and 2 workers scored like the plain loop")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    defaults = {"recipe": (10_000, 1280, 100), "study": (10_000, 1280, 100), "stages": (50_000, 768, 1000),
                "umap_ward": (100_000, 768, 1000), "kmeans": (1_000_000, 768, 1000)}[args.scenario]
    args.n = defaults[0] if args.n is None else args.n
    args.d = args.d or defaults[1]
    args.classes = args.classes or defaults[2]
    args.work.mkdir(parents=True, exist_ok=True)
    header()
    rows = {"recipe": cmd_recipe, "study": cmd_study, "stages": cmd_stages, "umap_ward": cmd_umap_ward,
            "kmeans": cmd_kmeans}[args.scenario](args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
