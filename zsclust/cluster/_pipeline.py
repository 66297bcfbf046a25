"""Every job of a run on one embedding set, each through :func:`run_job`, checked first and tracked.

The Lightning callback calls :class:`ClusteringPipeline` when prediction ends; ``zsclust run``/``cluster``/
``evaluate`` and the sweep's workers call it on cached or exported embeddings.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zsclust._json import to_jsonable
from zsclust.errors import ConfigError, ZsclustError

from ._job import SCATTER_NODE, JobData, JobSpec, Scoring, count_classes, is_identity, reduce, reducer_spec, run_job

TABLE_COLUMNS = ("ami", "ari", "nmi", "accuracy", "n_clusters", "noise_fraction", "silhouette_umap50")


@dataclass
class JobResult:
    job: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    error: str | None = None
    labels_pred: np.ndarray | None = None


def job_key(identity: Mapping, job: JobSpec, seed: int) -> str:
    """The identity of one clustering job: what is embedded (``identity``), how it is reduced and clustered.

    Every run carries it as the tag ``zsclust.job``; a sweep skips a job whose key already has a
    FINISHED run, so equal keys must mean equal work. Reducers are compared canonically
    (``reducer_key``); clusterer nodes as written, with sorted keys.
    """
    import hashlib
    import json

    from .._json import to_jsonable
    from ._reducers import reducer_key

    payload = {"identity": to_jsonable(dict(identity)),
               "reducer": reducer_key(reducer_spec(job.reducer), random_state=seed),
               "clusterer": to_jsonable(dict(job.clusterer)), "seed": int(seed)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


class ClusteringPipeline:
    """``jobs`` on one embedding set, scored and (optionally) tracked in MLflow, one run per job.

    ``context`` (encoder, dataset, split) goes into every run's params and tags; ``identity`` (what
    was embedded, from the config) makes each run's :func:`job_key`, so finished jobs can be
    recognised and skipped; ``job_config(job)`` is the config text logged with each run.
    """

    def __init__(self, jobs: Sequence[JobSpec], *, seed: int = 0, reduction_cache=None, tracker=None,
                 context: Mapping | None = None, scoring: Scoring = Scoring(), plots: bool = True,
                 job_config: Callable[[JobSpec], str] | None = None, identity: Mapping | None = None):
        if not jobs:
            raise ConfigError("No jobs configured: name a clusterer, e.g. clusterer: kmeans.")
        labels = [j.label for j in jobs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"Job labels must be unique, got {labels}.")
        self.jobs = {j.label: j for j in jobs}
        self.seed = seed
        self.reduction_cache = reduction_cache
        self.tracker = tracker
        self.context = dict(context or {})
        self.scoring = scoring
        self.plots = plots
        self.job_config = job_config
        self.identity = dict(identity) if identity is not None else None
        self.skipped_extras: dict[str, str] = {}  # a shared space left out (too few samples) → why

    def job_key(self, label: str) -> str | None:
        return None if self.identity is None else job_key(self.identity, self.jobs[label], self.seed)

    # -- cheap checks before the expensive part ------------------------------------------------
    def validate(self, n_samples: int, n_features: int, n_classes: int | None, smoke_samples: int = 300,
                 memory: bool = True) -> None:
        """Build every estimator, smoke-fit it on a few hundred synthetic points, and check its memory at full size.

        A bad parameter or a job that cannot fit in memory surfaces here, before any embedding.
        """
        from sklearn.datasets import make_blobs

        need = max([_n_components(j.reducer) for j in self.jobs.values()] + [0])
        width = max(min(n_features, 512), need + 1, 8)
        if any(_needs_more_samples_than_features(j.reducer) for j in self.jobs.values()):
            # PCA 'mle' needs N >= d, and its estimate costs O(d^3): a narrower smoke test checks it as well
            width = max(min(n_features, 64), need + 1, 8)
        m = max(smoke_samples, need + 50, width + 50)
        k = max(2, min(n_classes or 5, 20))
        X, _ = make_blobs(n_samples=m, n_features=width, centers=k, random_state=0)
        data = JobData(X.astype(np.float32), "smoke-test", None, k)
        reduced: dict[str, np.ndarray] = {}  # jobs that share a reducer share its smoke fit
        with warnings.catch_warnings():  # convergence chatter on synthetic blobs says nothing about real data
            warnings.simplefilter("ignore")
            for job in self.jobs.values():
                self._smoke_fit(job, data, m, n_samples, n_features, n_classes or k, memory, reduced)

    def _smoke_fit(self, job: JobSpec, data: JobData, m: int, n_samples: int, n_features: int, n_classes: int,
                   memory: bool, reduced: dict) -> None:
        from ._job import build_clusterer
        from ._memory import check_fit_memory
        from ._reducers import create_reducer

        where = f"job '{job.label}'"
        try:
            key = json.dumps(to_jsonable(dict(job.reducer)), sort_keys=True)
            if key not in reduced:
                reduced[key] = reduce(data, _few_epochs(job.reducer), seed=self.seed)[0]
            Xr = reduced[key]
            if memory and not is_identity(job.reducer):
                check_fit_memory(create_reducer(reducer_spec(job.reducer)), n_samples, n_features, name="reducer")
        except ZsclustError as e:
            raise type(e)(f"{where}: reducer: {e}") from None
        smoke = dict(job.clusterer)
        if isinstance(smoke.get("n_clusters"), int):
            smoke["n_clusters"] = min(smoke["n_clusters"], m // 2)
        try:
            build_clusterer(smoke, data.n_classes, self.seed).fit(Xr)
            if memory:
                out_dim = Xr.shape[1] if _n_components(job.reducer) else n_features
                check_fit_memory(build_clusterer(job.clusterer, n_classes, self.seed), n_samples, out_dim,
                                 name="clusterer")
        except ZsclustError as e:
            raise type(e)(f"{where}: {e}") from None

    def memory_problems(self, n_samples: int, n_features: int, n_classes: int | None) -> dict[str, str]:
        """Jobs that would not fit in memory at ``n_samples``, with why: a sweep fails those, not the rest."""
        from ._job import build_clusterer
        from ._memory import check_fit_memory

        problems = {}
        for label, job in self.jobs.items():
            dim = (_n_components(job.reducer) or n_features) if not is_identity(job.reducer) else n_features
            try:
                check_fit_memory(build_clusterer(job.clusterer, n_classes or 2, self.seed), n_samples, dim,
                                 name=f"job '{label}': clusterer")
            except ZsclustError as e:
                problems[label] = str(e)
        return problems

    # -- the work ------------------------------------------------------------------------------
    def run(self, embeddings, *, jobs=None, progress: bool = True) -> list[JobResult]:
        """Run ``jobs`` (labels; default: all) on an :class:`~zsclust.embed.EmbeddingSet`; a failing job is
        reported, not fatal."""
        data = JobData.from_embeddings(embeddings)
        labels = list(self.jobs) if jobs is None else list(jobs)
        extras = self._extras(data)
        results = []
        for i, label in enumerate(labels, 1):
            if progress:
                print(f"[{i}/{len(labels)}] {label}", flush=True)
            results.append(self._run_job(self.jobs[label], data, embeddings, extras))
        return results

    def prepare(self, embeddings, *, jobs=None) -> None:
        """Fit every reduction ``jobs`` need, and the label-free and plot spaces, into the cache.

        Lets parallel workers that each run one job of the same embeddings read the reductions
        instead of fitting the same UMAP side by side.
        """
        if self.reduction_cache is None:
            raise ConfigError("ClusteringPipeline.prepare needs a reduction_cache to keep what it fits.")
        data = JobData.from_embeddings(embeddings)
        self._extras(data)
        for label in dict.fromkeys(jobs or self.jobs):
            try:
                reduce(data, self.jobs[label].reducer, seed=self.seed, cache=self.reduction_cache)
            except ZsclustError:
                pass  # the job meets (and reports) the same error itself

    def _extras(self, data: JobData) -> dict:
        """The spaces every job shares: the label-free UMAP-50 and the 2-D plot (``None`` when too small)."""
        from ._job import label_free_space

        out, self.skipped_extras = {"umap50": None, "scatter": None}, {}
        if "umap50" in self.scoring.silhouette_spaces:
            try:
                out["umap50"] = label_free_space(data, self.scoring, self.reduction_cache)
            except ZsclustError as e:
                self.skipped_extras["silhouette_umap50"] = str(e)
        if self.plots and self.tracker is not None:
            try:
                out["scatter_rows"], plotted = plot_sample(data, self.scoring.umap_seed)
                out["scatter"] = reduce(plotted, SCATTER_NODE, seed=self.scoring.umap_seed, cache=self.reduction_cache)[0]
            except ZsclustError as e:
                self.skipped_extras["umap2d_plot"] = str(e)
        return out

    def _run_job(self, job: JobSpec, data: JobData, embeddings, extras: dict) -> JobResult:
        from ._job import job_params

        result = JobResult(job.label)
        run_id = None
        try:
            result.params = {**self.context, **job_params(job, data.n_classes, self.seed), **self._run_params(job, data)}
            if self.tracker is not None:
                run_id = self.tracker.start_run(self._run_name(job), tags=self._tags(embeddings, job))
                result.run_id = run_id
                self.tracker.log_params(run_id, result.params)
                self.tracker.log_dataset(run_id, self.context.get("data.name", "?"), embeddings.fingerprint,
                                         len(data.X), context=self.context.get("data.split"))
            with self._system_metrics(run_id):
                out = run_job(data, job, seed=self.seed, cache=self.reduction_cache, scoring=self.scoring,
                              umap50=extras["umap50"])
            result.metrics, result.labels_pred = out.metrics, out.labels
            ran = {k: v for k, v in out.params.items() if k not in result.params}  # what ran (clusterer.backend_, ...)
            result.params.update(ran)
            if self.tracker is not None:
                if ran:
                    self.tracker.log_params(run_id, ran)
                self.tracker.log_metrics(run_id, result.metrics)
                self.tracker.set_tags(run_id, self._description(job, result.metrics, embeddings))
                self._log_artifacts(run_id, embeddings, data, out.labels, extras["scatter"], job, result.metrics,
                                    scatter_rows=extras.get("scatter_rows"))
                self.tracker.end_run(run_id)
        except Exception as e:  # noqa: BLE001 - one job's failure (a bad setting, a library error) must not stop the others
            result.error = e.user_message if isinstance(e, ZsclustError) else f"{type(e).__name__}: {e}"
            if run_id is not None:
                self.tracker.set_tags(run_id, {"zsclust.error": result.error[:5000]})
                self.tracker.end_run(run_id, status="FAILED")
        return result

    # -- what a run records --------------------------------------------------------------------
    def _system_metrics(self, run_id):
        """CPU/memory/GPU metrics of the job's run while it computes (a live MLflow run only; psutil needed)."""
        import contextlib

        monitor = getattr(self.tracker, "system_metrics", None)
        return monitor(run_id) if run_id is not None and monitor is not None else contextlib.nullcontext()

    def _description(self, job: JobSpec, metrics: dict, embeddings) -> dict:
        """The run's description tag: what ran on what, and its headline scores."""
        from ..tracking._describe import NOTE_TAG, run_description

        c = self.context
        text = run_description(c.get("encoder.name", "?"), c.get("data.name", "?"), c.get("data.split", "?"),
                               _inline(job.reducer), f"{job.label} ({_inline(job.clusterer)})", metrics,
                               n_samples=len(embeddings), fingerprint=embeddings.fingerprint)
        return {NOTE_TAG: text}

    def _run_name(self, job: JobSpec) -> str:
        c = self.context
        return f"{c.get('encoder.name', '?')}/{c.get('data.name', '?')}:{c.get('data.split', '?')}/{job.label}"

    def _run_params(self, job: JobSpec, data: JobData) -> dict:
        s = self.scoring
        return {"job": job.label, "seed": self.seed, "embedding.num_samples": len(data.X),
                "embedding.dim": int(data.X.shape[1]), "evaluation.silhouette_sample_size": s.sample_size,
                "evaluation.noise": s.noise, "evaluation.umap_seed": s.umap_seed}

    def _tags(self, embeddings, job: JobSpec) -> dict:
        ds = embeddings.meta.get("dataset", {})
        group = self.context.get("data.group") or ds.get("group") or "none"
        return {"embedding.fingerprint": embeddings.fingerprint, "dataset.group": group,
                "encoder": self.context.get("encoder.name"), "dataset": self.context.get("data.name"),
                "split": self.context.get("data.split"), "job": job.label, "reducer": job.reducer.get("name"),
                "clusterer": job.clusterer.get("name"), "zsclust.job": self.job_key(job.label),
                **{f"zsclust.skipped.{k}": v[:500] for k, v in self.skipped_extras.items()}}

    def _log_artifacts(self, run_id, embeddings, data: JobData, pred, scatter, job: JobSpec, metrics: dict,
                       scatter_rows: np.ndarray | None = None) -> None:
        from ..tracking import plot_contingency, plot_scatter

        y = np.asarray(embeddings.labels)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            preds = tmp / "predictions.csv"
            np.savetxt(preds, np.column_stack([np.asarray(embeddings.indices), y, pred]), fmt="%d", delimiter=",",
                       header="index,label,cluster", comments="")
            self.tracker.log_artifact(run_id, preds)
            if self.job_config is not None:
                self.tracker.log_text(run_id, self.job_config(job), "config.yaml")
            if self.plots:
                classes = embeddings.meta.get("dataset", {}).get("classes") or None
                title = self._run_name(job)
                if (y >= 0).any():
                    self.tracker.log_artifact(run_id, plot_contingency(y, pred, tmp / "contingency.png", classes,
                                                                       title=title), "plots")
                if scatter is not None:
                    rows = slice(None) if scatter_rows is None else scatter_rows  # a plotted subsample at large N
                    self.tracker.log_artifact(run_id, plot_scatter(scatter, y[rows], np.asarray(pred)[rows],
                                                                   tmp / "umap2d.png", title,
                                                                   class_names=classes, metrics=metrics), "plots")


def _few_epochs(node):
    """The smoke test's copy of a reducer node: UMAP steps run 10 epochs (it checks parameters, not layouts)."""
    spec = reducer_spec(node)
    if spec is None:
        return node

    def cut(step):
        if isinstance(step, Mapping) and step.get("name") == "umap":
            return {**step, "n_epochs": min(int(step.get("n_epochs") or 10), 10)}
        return step

    if isinstance(spec, list):
        return {"name": "chain", "steps": [cut(s) for s in spec]}
    return cut(spec)


PLOT_MAX_POINTS = 20_000
"""Above this many points the 2-D UMAP plot shows a seeded random subsample of this size: the plot must never
cost as much as a job (below it, it shares the embeddings' neighbour graph through the reduction cache)."""


def plot_sample(data: JobData, seed: int) -> tuple[np.ndarray | None, JobData]:
    """(rows plotted or None for all, the data to fit the 2-D plot on)."""
    n = len(data.X)
    if n <= PLOT_MAX_POINTS:
        return None, data
    rows = np.sort(np.random.default_rng(seed).choice(n, PLOT_MAX_POINTS, replace=False))
    return rows, JobData(data.X[rows], f"{data.fingerprint}:plot-sample:{PLOT_MAX_POINTS}:{seed}", None, data.n_classes)


def _inline(node: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in node.items())


def _needs_more_samples_than_features(node) -> bool:
    spec = reducer_spec(node)
    return any(isinstance(s, Mapping) and s.get("n_components") == "mle" for s in
               (spec if isinstance(spec, list) else [spec]))


def _n_components(node) -> int:
    """The widest ``n_components`` (an int) of a reducer node's steps: what the smoke test needs."""
    spec = reducer_spec(node)
    steps = spec if isinstance(spec, list) else [spec]
    return max([s.get("n_components") for s in steps if isinstance(s, Mapping)
                and isinstance(s.get("n_components"), int)] + [0])


def format_table(results: list[JobResult], columns=TABLE_COLUMNS) -> str:
    """A compact fixed-width metrics table, one row per job, failures with their reason."""
    width = max([len(r.job) for r in results] + [12]) + 2
    head = f"{'job':<{width}}" + " ".join(f"{c[:12]:>12}" for c in columns) + f" {'time s':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        if r.error:
            lines.append(f"{r.job:<{width}}FAILED: {r.error[:200]}")
            continue
        cells = []
        for c in columns:
            v = r.metrics.get(c)
            cells.append(f"{'-':>12}" if v is None or (isinstance(v, float) and math.isnan(v))
                         else f"{v:>12.0f}" if c == "n_clusters" else f"{v:>12.4f}")
        t = sum(r.metrics.get(k, 0.0) for k in ("reduce_seconds", "cluster_seconds", "score_seconds"))
        lines.append(f"{r.job:<{width}}" + " ".join(cells) + f" {t:>8.1f}")
    return "\n".join(lines)


__all__ = ["ClusteringPipeline", "JobResult", "count_classes", "format_table", "job_key"]
