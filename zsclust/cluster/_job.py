"""One clustering job: reduce → cluster → score. The only place zsclust does this.

``zsclust run``/``cluster`` (through :class:`~zsclust.cluster.ClusteringPipeline`), a tuning trial, ``zsclust
evaluate`` and a sweep's workers all call :func:`run_job`, so the same reducer and clusterer on the same
data give the same labels and the same metrics, under the same names, whichever command ran them.

A job is two nodes, each ``{"name": ..., **params}``: a reducer (a registered name, ``none``, or
``{"name": "chain", "steps": [...]}``) and a clusterer (a registered name or an import path).
``n_clusters: K`` means the number of classes of the data (the study's K-known setting).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zsclust.config import K_KNOWN
from zsclust.errors import ConfigError, ZsclustError

STUDY_UMAP_NODE = {"name": "umap", "n_components": 50, "n_neighbors": 30, "min_dist": 0.0}
"""The study's UMAP: the recommended reduction, and the space of the label-free silhouette."""
SCATTER_NODE = {"name": "umap", "n_components": 2, "n_neighbors": 30, "min_dist": 0.1, "n_epochs": 200}
"""The 2-D plot: UMAP on the embeddings' shared neighbour graph; 200 epochs (umap-learn's own number above
10k points) keep it a fraction of a job below that too. Above 20k points it is fitted on a subsample."""
SILHOUETTE_SPACES = ("raw", "reduced", "umap50")
SILHOUETTE_KEYS = {"raw": "silhouette", "reduced": "silhouette_reduced", "umap50": "silhouette_umap50"}
"""Metric names of the silhouette in each space: the same in runs, trials, sweeps and reports."""


@dataclass(frozen=True)
class JobSpec:
    """One job: a label (the run's name part, the report's method) and its reducer and clusterer nodes."""

    label: str
    reducer: Mapping[str, Any]
    clusterer: Mapping[str, Any]


@dataclass(frozen=True)
class Scoring:
    """What a job scores besides the labels (see :data:`SILHOUETTE_KEYS`), and how noise counts."""

    silhouette_spaces: tuple[str, ...] = SILHOUETTE_SPACES
    sample_size: int | None = 10_000
    noise: str = "label"  # HDBSCAN's -1 is one more label (the study), or "exclude"
    umap_seed: int = 42  # seed of the label-free UMAP-50 space, shared by every job on the data

    def __post_init__(self):
        unknown = [s for s in self.silhouette_spaces if s not in SILHOUETTE_SPACES]
        if unknown:
            raise ConfigError(f"evaluation.silhouette_spaces: unknown space '{unknown[0]}'; choose from "
                              f"{', '.join(SILHOUETTE_SPACES)}.")

    @classmethod
    def from_config(cls, evaluation) -> "Scoring":
        return cls(tuple(evaluation.silhouette_spaces), evaluation.silhouette_sample_size, evaluation.noise,
                   int(evaluation.umap_seed))


@dataclass
class JobData:
    """The embeddings a job runs on. ``labels`` is ``None`` when nothing may read them (label-free)."""

    X: np.ndarray
    fingerprint: str
    labels: np.ndarray | None = None
    n_classes: int | None = None
    taxonomy: dict[str, np.ndarray] | None = None  # coarser levels of the labels: ``ami_<level>`` (see _taxonomy)

    @classmethod
    def from_embeddings(cls, emb, *, read_labels: bool = True, n_classes: int | None = None) -> "JobData":
        """An :class:`~zsclust.embed.EmbeddingSet`'s arrays; K from its labels (or ``n_classes``)."""
        from ._validation import check_embeddings

        X = check_embeddings(np.asarray(emb.embeddings, dtype=np.float32), what="embeddings")
        labels = np.asarray(emb.labels) if read_labels else None
        if n_classes is None and labels is not None:
            n_classes = count_classes(labels)
        from ._taxonomy import taxonomy

        classes = emb.meta.get("dataset", {}).get("classes") or []
        if n_classes is None and not read_labels:
            n_classes = len(classes) or None
        levels = taxonomy(classes) if labels is not None else None
        if levels is not None and labels.size and labels.max() >= len(classes):
            levels = None  # labels beyond the class list: the names do not describe them
        return cls(X, emb.fingerprint, labels, n_classes, levels)


@dataclass
class JobOutput:
    labels: np.ndarray
    metrics: dict[str, float]
    params: dict[str, Any]
    reduced: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)  # a score left out → why


def count_classes(labels) -> int | None:
    """How many classes the labels hold (negative = unlabelled); ``None`` without labels: K stays unknown."""
    y = np.asarray(labels)
    return len(np.unique(y[y >= 0])) or None


# -- nodes -------------------------------------------------------------------------------------------


def reducer_spec(node: Mapping | None):
    """A reducer node → what ``create_reducer`` takes (``chain`` nodes become a list of steps)."""
    if node is None:
        return None
    node = dict(node)
    if node.get("name") == "chain":
        steps = node.get("steps")
        if not isinstance(steps, (list, tuple)) or set(node) != {"name", "steps"}:
            raise ConfigError("A chain reducer is {name: chain, steps: [{name: zscore}, {name: pca, ...}]}; "
                              f"got {node}.")
        return list(steps)
    return node


def is_identity(node: Mapping | None) -> bool:
    return node is None or dict(node) == {"name": "none"}


def resolve_clusterer(node: Mapping, n_classes: int | None, where: str = "clusterer") -> dict:
    """The node with ``n_clusters: K`` replaced by the number of classes."""
    params = dict(node)
    if "name" not in params:
        raise ConfigError(f"{where} needs a 'name' (e.g. kmeans, agglomerative, hdbscan).")
    if params.get("n_clusters") == K_KNOWN:
        if not n_classes:
            raise ConfigError(f"{where}.n_clusters is K (the number of classes), but the embeddings carry no "
                              f"labels and no class count: set {where}.n_clusters to a number.")
        params["n_clusters"] = int(n_classes)
    elif isinstance(params.get("n_clusters"), str):
        raise ConfigError(f"{where}.n_clusters must be a number, or K for the number of classes; got "
                          f"'{params['n_clusters']}'.")
    return params


def build_clusterer(node: Mapping, n_classes: int | None, seed: int, where: str = "clusterer"):
    """The clusterer a node describes, K resolved and an unset ``random_state`` seeded."""
    from ._clusterers import create_clusterer

    try:
        clusterer = create_clusterer(resolve_clusterer(node, n_classes, where))
    except ZsclustError as e:
        raise type(e)(f"{where}: {e}") from None
    if clusterer.get_params().get("random_state", 0) is None:
        clusterer.set_params(random_state=seed)
    return clusterer


def job_params(job: JobSpec, n_classes: int | None, seed: int) -> dict[str, Any]:
    """What a job ran with, as flat dotted keys (``reducer.n_components``, ``clusterer.linkage``).

    Every parameter of both estimators, defaults filled in: the MLflow params of a run and of a tuning
    trial, whose Optuna parameter names are the same strings.
    """
    from ..config import flatten
    from ._reducers import reducer_key

    steps = reducer_key(reducer_spec(job.reducer), random_state=seed)
    reducer = steps[0] if len(steps) == 1 else {"name": "chain", "steps": steps}
    clusterer = build_clusterer(job.clusterer, n_classes, seed)
    params = {k: v for k, v in clusterer.get_params(deep=False).items() if k != "import_path"}
    out = flatten({"reducer": reducer})
    out.update(flatten({"clusterer": {"name": job.clusterer["name"], **params}}))
    return out


# -- the work ----------------------------------------------------------------------------------------


def reduce(data: JobData, node: Mapping | None, *, seed: int, cache=None,
           wait: bool = True) -> tuple[np.ndarray, bool] | None:
    """``data.X`` reduced by ``node`` (through the cache when there is one) and whether it was a hit.

    ``wait=False`` (with a cache): ``None`` while another process is fitting the same reduction."""
    from ._reducers import create_reducer

    if is_identity(node):
        return data.X, False
    spec = reducer_spec(node)
    if cache is None:
        return np.asarray(create_reducer(spec, random_state=seed).fit_transform(data.X)), False
    return cache.get_or_fit(spec, data.X, embedding_fingerprint=data.fingerprint, seed=seed, wait=wait)


def label_free_space(data: JobData, scoring: Scoring, cache=None) -> np.ndarray:
    """The study's UMAP-50 of the original embeddings with its own seed: one space for every job on ``data``."""
    return reduce(data, STUDY_UMAP_NODE, seed=scoring.umap_seed, cache=cache)[0]


def run_job(data: JobData, job: JobSpec, *, seed: int = 0, cache=None, scoring: Scoring = Scoring(),
            umap50: np.ndarray | None = None) -> JobOutput:
    """Reduce, cluster and score one job. Raises :class:`~zsclust.errors.ZsclustError` for a job that cannot run.

    ``umap50`` is the label-free space (:func:`label_free_space`) when the caller already has it; it is
    fitted (through the cache) otherwise, and left out with the reason in ``skipped`` when the data is
    too small for it.
    """
    params = job_params(job, data.n_classes, seed)
    start = time.perf_counter()
    Xr, hit = reduce(data, job.reducer, seed=seed, cache=cache)
    t_reduce = time.perf_counter() - start
    clusterer = build_clusterer(job.clusterer, data.n_classes, seed)
    start = time.perf_counter()
    pred = np.asarray(clusterer.fit_predict(Xr))
    t_cluster = time.perf_counter() - start
    params.update(fit_record(data, job, seed, cache, clusterer))
    start = time.perf_counter()
    skipped: dict[str, str] = {}
    if "umap50" in scoring.silhouette_spaces and umap50 is None:
        try:
            umap50 = label_free_space(data, scoring, cache)
        except ZsclustError as e:
            skipped[SILHOUETTE_KEYS["umap50"]] = str(e)
    metrics = score(data, pred, Xr, scoring, reduced=not is_identity(job.reducer), umap50=umap50)
    metrics.update(reduce_seconds=t_reduce, cluster_seconds=t_cluster, score_seconds=time.perf_counter() - start,
                   reduction_cache_hit=float(hit))
    return JobOutput(pred, {k: float(v) for k, v in metrics.items() if v is not None}, params, Xr, skipped)


def fit_record(data: JobData, job: JobSpec, seed: int, cache, clusterer) -> dict[str, Any]:
    """How the job's estimators ran, beyond their parameters: the clusterer's backend (``clusterer.backend_``,
    e.g. fastcluster when ``backend: auto`` chose the linear path) and the shared neighbour graph a UMAP
    reduction was fitted on (``reducer.knn_graph``)."""
    out: dict[str, Any] = {}
    if cache is not None and not is_identity(job.reducer) and hasattr(cache, "fit_details"):
        out.update({f"reducer.{k}": v for k, v in cache.fit_details(reducer_spec(job.reducer), data.X, seed=seed).items()})
    if getattr(clusterer, "backend_", None) is not None:
        out["clusterer.backend_"] = clusterer.backend_
    return out


def score(data: JobData, pred: np.ndarray, Xr: np.ndarray, scoring: Scoring, *, reduced: bool,
          umap50: np.ndarray | None) -> dict[str, float]:
    """Label scores where labels may be read (labelled points only), and the configured silhouettes."""
    from ._metrics import score_embedding, score_labels, umap_silhouette

    m: dict[str, float] = {}
    if data.labels is not None and (np.asarray(data.labels) >= 0).any():
        y = np.asarray(data.labels)
        keep = y >= 0
        m.update(score_labels(y[keep], pred[keep]))
        if data.taxonomy:
            from ._taxonomy import taxonomic_ami

            m.update(taxonomic_ami(y[keep], pred[keep], data.taxonomy))
    else:
        m["n_clusters"] = float(np.unique(pred[pred >= 0]).size)
        m["noise_fraction"] = float((pred < 0).mean())
    kw = dict(sample_size=scoring.sample_size, random_state=scoring.umap_seed, noise=scoring.noise)
    # the raw and label-free spaces are the same for every job on ``data``: their distances are kept
    if "raw" in scoring.silhouette_spaces:
        raw = score_embedding(data.X, pred, cache_key=f"{data.fingerprint}:raw", **kw)
        m.update({k: raw[k] for k in ("silhouette", "davies_bouldin", "calinski_harabasz")})
    if "reduced" in scoring.silhouette_spaces and reduced:
        m[SILHOUETTE_KEYS["reduced"]] = score_embedding(Xr, pred, **kw)["silhouette"]
    if "umap50" in scoring.silhouette_spaces and umap50 is not None:
        m[SILHOUETTE_KEYS["umap50"]] = umap_silhouette(data.X, pred, X_reduced=umap50, **kw,
                                                       cache_key=f"{data.fingerprint}:umap50:{scoring.umap_seed}")
    return m
