"""Reduce → cluster → evaluate → log, for every configured reducer × clusterer on one embedding set.

:class:`ClusteringPipeline` is the one code path: the Lightning callback calls it when prediction
ends, and ``zsclust run``/``zsclust cluster`` call it on cached or exported embeddings.
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zsclust.errors import ConfigError, ZsclustError

STUDY_UMAP_SPEC = [{"name": "umap", "n_components": 50, "n_neighbors": 30, "min_dist": 0.0}]
SCATTER_SPEC = [{"name": "umap", "n_components": 2, "n_neighbors": 30, "min_dist": 0.1}]
TABLE_COLUMNS = ("ami", "ari", "nmi", "accuracy", "n_clusters", "noise_fraction", "silhouette_umap50")


@dataclass
class JobResult:
    reducer: str
    clusterer: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    error: str | None = None
    labels_pred: np.ndarray | None = None


def _as_chain(spec) -> list:
    if spec is None:
        return []
    if isinstance(spec, (str, Mapping)):
        return [spec]
    return list(spec)


def _n_components_needed(chain) -> int:
    n = 0
    for step in chain:
        if isinstance(step, Mapping):
            c = step.get("n_components")
            if isinstance(c, int):
                n = max(n, c)
    return n


def job_key(identity: Mapping, chain, clusterer_spec: Mapping, seed: int) -> str:
    """The identity of one clustering job: what is embedded (``identity``), how it is reduced and clustered.

    Every run carries it as the tag ``zsclust.job``; a sweep skips a job whose key already has a
    FINISHED run, so equal keys must mean equal work. Reducer chains are compared canonically
    (``reducer_key``); clusterer specs as written, with sorted keys.
    """
    import hashlib
    import json

    from .._json import to_jsonable
    from ._reducers import reducer_key

    payload = {"identity": to_jsonable(dict(identity)),
               "reducer": reducer_key(chain, random_state=seed) if chain else [{"name": "none"}],
               "clusterer": to_jsonable(dict(clusterer_spec)), "seed": int(seed)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def count_classes(labels) -> int | None:
    """How many classes the labels hold (negative = unlabelled); ``None`` without labels: K stays unknown."""
    y = np.asarray(labels)
    return len(np.unique(y[y >= 0])) or None


def resolve_clusterer_params(spec: Mapping, n_classes: int | None, name: str) -> dict:
    """``n_clusters: null`` (or ``"true"``) means the number of classes, the study's K-known setting."""
    params = dict(spec)
    if "name" not in params:
        raise ConfigError(f"clusterers.{name} needs a 'name' (e.g. kmeans, agglomerative, hdbscan).")
    wants_k = "n_clusters" in params and params["n_clusters"] in (None, "true", "K")
    if wants_k and params.get("distance_threshold") is None:
        if not n_classes:
            raise ConfigError(f"clusterers.{name}.n_clusters is null (= the number of classes), but the "
                              "embeddings carry no labels; set clusterers.{name}.n_clusters to a number.")
        params["n_clusters"] = int(n_classes)
    return params


class ClusteringPipeline:
    """Every ``reducers`` chain × every ``clusterers`` spec, scored and (optionally) tracked.

    ``reducers`` maps a name to a reducer spec or chain (``zsclust.cluster.create_reducer``);
    ``clusterers`` maps a name to ``{"name": registered-or-import-path, **params}``. ``context``
    (encoder, dataset, config) goes into every run's params and tags; ``identity`` (what was embedded,
    from the config) makes each run's :func:`job_key`, so finished jobs can be recognised and skipped.
    """

    def __init__(self, reducers: Mapping, clusterers: Mapping, *, seed: int = 0, reduction_cache=None,
                 tracker=None, context: Mapping | None = None, silhouette_sample_size: int = 10_000,
                 umap_silhouette: bool = True, plots: bool = True, config_yaml: str | None = None,
                 identity: Mapping | None = None):
        if not reducers:
            raise ConfigError("No reducers configured; use {'none': null} to cluster the raw embeddings.")
        if not clusterers:
            raise ConfigError("No clusterers configured; add one under 'clusterers', e.g. kmeans: {name: kmeans}.")
        self.reducers = {str(k): _as_chain(v) for k, v in reducers.items()}
        self.clusterers = {str(k): dict(v) for k, v in clusterers.items()}
        self.seed = seed
        self.reduction_cache = reduction_cache
        self.tracker = tracker
        self.context = dict(context or {})
        self.silhouette_sample_size = silhouette_sample_size
        self.umap_silhouette = umap_silhouette
        self.plots = plots
        self.config_yaml = config_yaml
        self.identity = dict(identity) if identity is not None else None
        self.skipped_extras: dict[str, str] = {}  # extra (silhouette_umap50, umap2d_plot) -> why it was left out

    @property
    def jobs(self) -> list[tuple[str, str]]:
        """Every (reducer name, clusterer name) pair, in run order."""
        return [(r, c) for r in self.reducers for c in self.clusterers]

    def job_key(self, reducer: str, clusterer: str) -> str | None:
        if self.identity is None:
            return None
        return job_key(self.identity, self.reducers[reducer], self.clusterers[clusterer], self.seed)

    # -- cheap checks before the expensive part ------------------------------------------------
    def validate(self, n_samples: int, n_features: int, n_classes: int | None, smoke_samples: int = 300,
                 memory: bool = True) -> None:
        """Build every estimator, smoke-fit it on a few hundred synthetic points, and check its memory at full size.

        A bad parameter or a clusterer that cannot fit in memory surfaces here, before any embedding.
        """
        from sklearn.datasets import make_blobs

        need = max([_n_components_needed(c) for c in self.reducers.values()] + [0])
        m = max(smoke_samples, need + 50)
        k = max(2, min(n_classes or 5, 20))
        X, _ = make_blobs(n_samples=m, n_features=max(n_features if n_features <= 512 else 512, need + 1, 8),
                          centers=k, random_state=0)
        with warnings.catch_warnings():  # convergence chatter on synthetic blobs says nothing about real data
            warnings.simplefilter("ignore")
            self._smoke_fit(X, need, m, k, n_samples, n_features, n_classes, memory)

    def _smoke_fit(self, X, need, m, k, n_samples, n_features, n_classes, memory) -> None:
        from ._clusterers import create_clusterer
        from ._memory import check_fit_memory
        from ._reducers import create_reducer

        for rname, chain in self.reducers.items():
            try:
                Xr = create_reducer(chain, random_state=self.seed).fit_transform(X) if chain else X
            except ZsclustError as e:
                raise ConfigError(f"reducers.{rname}: {e}") from None
            out_dim = Xr.shape[1] if need else n_features
            for cname, spec in self.clusterers.items():
                params = resolve_clusterer_params(spec, n_classes or k, cname)
                smoke = dict(params)
                if smoke.get("n_clusters") is not None and isinstance(smoke["n_clusters"], int):
                    smoke["n_clusters"] = min(smoke["n_clusters"], m // 2)
                try:
                    create_clusterer(smoke).fit(Xr)
                    if memory:
                        check_fit_memory(create_clusterer(params), n_samples, out_dim, name=f"clusterers.{cname}")
                except ZsclustError as e:
                    raise type(e)(f"clusterers.{cname} (after reducers.{rname}): {e}") from None

    def memory_problems(self, n_samples: int, n_features: int, n_classes: int | None) -> dict[tuple[str, str], str]:
        """Jobs that would not fit in memory at ``n_samples``, with why: a sweep fails those, not the rest."""
        from ._clusterers import create_clusterer
        from ._memory import check_fit_memory

        problems = {}
        for rname, cname in self.jobs:
            chain = self.reducers[rname]
            dim = (_n_components_needed(chain) or n_features) if chain else n_features
            try:
                params = resolve_clusterer_params(self.clusterers[cname], n_classes or 2, cname)
                check_fit_memory(create_clusterer(params), n_samples, dim, name=f"clusterers.{cname}")
            except ZsclustError as e:
                problems[(rname, cname)] = str(e)
        return problems

    # -- the work ------------------------------------------------------------------------------
    def run(self, embeddings, *, jobs=None, progress: bool = True) -> list[JobResult]:
        """Run ``jobs`` (default: all) on an :class:`~zsclust.embed.EmbeddingSet`; a failing job is reported, not fatal."""
        X, y, n_classes = self._arrays(embeddings)
        fp = embeddings.fingerprint
        results: list[JobResult] = []
        jobs = self.jobs if jobs is None else [tuple(j) for j in jobs]
        umap50, self.skipped_extras = None, {}
        if self.umap_silhouette:
            umap50 = self._optional_reduce(STUDY_UMAP_SPEC, X, fp, "silhouette_umap50")
        scatter = None
        if self.plots and self.tracker is not None:
            scatter = self._optional_reduce(SCATTER_SPEC, X, fp, "umap2d_plot")
        for i, (rname, cname) in enumerate(jobs, 1):
            if progress:
                print(f"[{i}/{len(jobs)}] {rname} -> {cname}", flush=True)
            results.append(self._run_job(rname, cname, X, y, n_classes, fp, umap50, scatter, embeddings))
        return results

    def _optional_reduce(self, chain, X, fingerprint, what: str):
        """A UMAP space for an extra (the label-free silhouette, the 2-d plot): on too few samples the
        extra is left out, with the reason as a ``zsclust.skipped.<what>`` tag, and the jobs still run."""
        try:
            return self._reduce(chain, X, fingerprint)[0]
        except ZsclustError as e:
            self.skipped_extras[what] = str(e)
            return None

    def prepare(self, embeddings, *, jobs=None) -> float:
        """Fit every reduction ``jobs`` need (and the UMAP spaces for silhouette and plots) into the cache.

        Lets parallel workers that each run one job of the same embeddings read the reductions
        instead of fitting the same UMAP side by side. Returns the seconds spent.
        """
        if self.reduction_cache is None:
            raise ConfigError("ClusteringPipeline.prepare needs a reduction_cache to keep what it fits.")
        start = time.perf_counter()
        X, _, _ = self._arrays(embeddings)
        jobs = self.jobs if jobs is None else [tuple(j) for j in jobs]
        chains = [STUDY_UMAP_SPEC] if self.umap_silhouette else []
        chains += [SCATTER_SPEC] if self.plots else []
        chains += [self.reducers[r] for r in dict.fromkeys(r for r, _ in jobs)]
        for chain in chains:
            try:
                self._reduce(chain, X, embeddings.fingerprint)
            except ZsclustError:
                pass  # each job meets (and reports, or skips for an extra) the same error itself
        return time.perf_counter() - start

    @staticmethod
    def _arrays(embeddings):
        from ._validation import check_embeddings

        X = check_embeddings(np.asarray(embeddings.embeddings, dtype=np.float32), what="embeddings")
        y = np.asarray(embeddings.labels)
        n_classes = count_classes(y)
        return X, y, n_classes

    def _reduce(self, chain, X, fingerprint) -> tuple[np.ndarray, bool, float]:
        from ._reducers import create_reducer

        start = time.perf_counter()
        if not chain:
            return X, False, 0.0
        if self.reduction_cache is not None:
            Xr, hit = self.reduction_cache.get_or_fit(chain, X, embedding_fingerprint=fingerprint, seed=self.seed)
        else:
            Xr, hit = create_reducer(chain, random_state=self.seed).fit_transform(X), False
        return np.asarray(Xr), hit, time.perf_counter() - start

    def _run_job(self, rname, cname, X, y, n_classes, fp, umap50, scatter, embeddings) -> JobResult:
        from ._clusterers import create_clusterer
        from ._metrics import score_embedding, score_labels, umap_silhouette

        chain = self.reducers[rname]
        result = JobResult(rname, cname)
        run_id = None
        try:
            params = resolve_clusterer_params(self.clusterers[cname], n_classes, cname)
            result.params = self._params(rname, chain, cname, params, embeddings)
            if self.tracker is not None:
                run_id = self.tracker.start_run(self._run_name(rname, cname), tags=self._tags(embeddings, rname, cname))
                result.run_id = run_id
                self.tracker.log_params(run_id, result.params)
            Xr, hit, t_reduce = self._reduce(chain, X, fp)
            start = time.perf_counter()
            clusterer = create_clusterer(params)
            if "random_state" in clusterer.get_params() and clusterer.get_params()["random_state"] is None:
                clusterer.set_params(random_state=self.seed)
            pred = np.asarray(clusterer.fit_predict(Xr))
            t_cluster = time.perf_counter() - start
            start = time.perf_counter()
            m: dict[str, float] = {}
            if n_classes:
                m.update(score_labels(y, pred))
            else:
                m["n_clusters"] = float(len(np.unique(pred[pred >= 0])))
                m["noise_fraction"] = float((pred < 0).mean())
            emb_scores = score_embedding(X, pred, sample_size=self.silhouette_sample_size, random_state=self.seed)
            m.update({k: v for k, v in emb_scores.items() if k in ("silhouette", "davies_bouldin", "calinski_harabasz")})
            if chain:
                red = score_embedding(Xr, pred, sample_size=self.silhouette_sample_size, random_state=self.seed)
                m["silhouette_reduced"] = red["silhouette"]
            if umap50 is not None:
                m["silhouette_umap50"] = umap_silhouette(X, pred, X_reduced=umap50, random_state=self.seed,
                                                         sample_size=self.silhouette_sample_size)
            m.update(reduce_seconds=t_reduce, cluster_seconds=t_cluster, score_seconds=time.perf_counter() - start,
                     reduction_cache_hit=float(hit))
            result.metrics = {k: float(v) for k, v in m.items() if v is not None}
            result.labels_pred = pred
            if self.tracker is not None:
                self.tracker.log_metrics(run_id, result.metrics)
                self._log_artifacts(run_id, embeddings, y, pred, scatter, rname, cname)
                self.tracker.end_run(run_id)
        except ZsclustError as e:
            result.error = e.user_message if hasattr(e, "user_message") else str(e)
            if run_id is not None:
                self.tracker.set_tags(run_id, {"zsclust.error": result.error[:5000]})
                self.tracker.end_run(run_id, status="FAILED")
        except Exception as e:  # a library failure on one job must not stop the others
            result.error = f"{type(e).__name__}: {e}"
            if run_id is not None:
                self.tracker.set_tags(run_id, {"zsclust.error": result.error[:5000]})
                self.tracker.end_run(run_id, status="FAILED")
        return result

    # -- what a run records --------------------------------------------------------------------
    def _run_name(self, rname, cname) -> str:
        enc = self.context.get("encoder.name", "?")
        ds = self.context.get("data.name", "?")
        split = self.context.get("data.split", "?")
        return f"{enc}/{ds}:{split}/{rname}/{cname}"

    def _params(self, rname, chain, cname, params, embeddings) -> dict:
        from ..config import flatten
        from ._reducers import reducer_key

        p = {k: v for k, v in self.context.items()}
        p["reducer"] = rname
        p.update(flatten({"steps": reducer_key(chain, random_state=self.seed)} if chain else {"steps": "none"}, "reducer."))
        p["clusterer"] = cname
        p.update({f"clusterer.{k}": v for k, v in params.items()})
        p["seed"] = self.seed
        p["embedding.num_samples"] = len(embeddings)
        p["embedding.dim"] = int(np.asarray(embeddings.embeddings).shape[1])
        p["evaluation.silhouette_sample_size"] = self.silhouette_sample_size
        return p

    def _tags(self, embeddings, rname, cname) -> dict:
        meta = embeddings.meta
        ds = meta.get("dataset", {})
        group = self.context.get("data.group") or ds.get("group") or "none"
        return {"embedding.fingerprint": embeddings.fingerprint, "dataset.group": group,
                "encoder": self.context.get("encoder.name"), "dataset": self.context.get("data.name"),
                "split": self.context.get("data.split"), "reducer": rname, "clusterer": cname,
                "zsclust.job": self.job_key(rname, cname),
                **{f"zsclust.skipped.{k}": v[:500] for k, v in self.skipped_extras.items()}}

    def _log_artifacts(self, run_id, embeddings, y, pred, scatter, rname, cname) -> None:
        from ..tracking import plot_contingency, plot_scatter

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            preds = tmp / "predictions.csv"
            np.savetxt(preds, np.column_stack([np.asarray(embeddings.indices), y, pred]), fmt="%d", delimiter=",",
                       header="index,label,cluster", comments="")
            self.tracker.log_artifact(run_id, preds)
            if self.config_yaml:
                self.tracker.log_text(run_id, self.config_yaml, "config.yaml")
            if self.plots:
                classes = embeddings.meta.get("dataset", {}).get("classes") or None
                if (y >= 0).any():
                    self.tracker.log_artifact(run_id, plot_contingency(y, pred, tmp / "contingency.png", classes), "plots")
                if scatter is not None:
                    title = self._run_name(rname, cname)
                    self.tracker.log_artifact(run_id, plot_scatter(scatter, y, pred, tmp / "umap2d.png", title), "plots")


def format_table(results: list[JobResult], columns=TABLE_COLUMNS) -> str:
    """A compact fixed-width metrics table, one row per job, failures with their reason."""
    head = f"{'reducer':<14} {'clusterer':<16} " + " ".join(f"{c[:12]:>12}" for c in columns) + f" {'time s':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        if r.error:
            lines.append(f"{r.reducer:<14} {r.clusterer:<16} FAILED: {r.error[:200]}")
            continue
        cells = []
        for c in columns:
            v = r.metrics.get(c)
            cells.append(f"{'-':>12}" if v is None or (isinstance(v, float) and math.isnan(v))
                         else f"{v:>12.0f}" if c == "n_clusters" else f"{v:>12.4f}")
        t = sum(r.metrics.get(k, 0.0) for k in ("reduce_seconds", "cluster_seconds", "score_seconds"))
        lines.append(f"{r.reducer:<14} {r.clusterer:<16} " + " ".join(cells) + f" {t:>8.1f}")
    return "\n".join(lines)
