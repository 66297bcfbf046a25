"""Read clustering runs back from MLflow into flat rows: one per encoder × dataset × split × method.

Default runs come from ``zsclust sweep``/``zsclust run``; tuned runs from ``zsclust evaluate`` (tag
``zsclust.role=evaluate``). Only FINISHED runs count; where a job ran twice, the latest run wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GROUP_ORDER = ("in-domain", "domain-shift", "near-ood", "fine-grained", "far-ood")
SETUP_LABELS = {"kmeans": "K-Means", "ac_k": "AC w/ K", "ac_no_k": "AC w/o K", "ap": "AP", "hdbscan": "HDBSCAN",
                "spectral": "Spectral"}


@dataclass
class ResultRow:
    run_id: str
    encoder: str
    dataset: str
    group: str
    split: str
    method: str  # the job's label (``kmeans``, ``ac_k``, ...; a tuned run: its study's clusterer family)
    reducer: str  # the job's reducer (``umap``, ``pca``, ...): it may differ per encoder within a method
    setup: str  # the study's clusterer setup, from the params: kmeans, ac_k, ac_no_k, ap, hdbscan, spectral
    role: str  # default | tuned
    study: str | None
    key: str | None  # the run's zsclust.job tag
    metrics: dict[str, float] = field(default_factory=dict)
    start_time: int = 0

    @property
    def identity(self) -> tuple:
        return (self.encoder, self.dataset, self.split, self.method, self.role, self.study)


def clusterer_setup(params: dict) -> str:
    """The study's six setups from a run's params (``clusterer.name``; for agglomerative, whether a threshold is set)."""
    name = params.get("clusterer.name", "")
    if name == "agglomerative":  # a distance threshold is what lets it find K itself
        return "ac_no_k" if params.get("clusterer.distance_threshold", "None") not in ("None", "", None) else "ac_k"
    return {"kmeans": "kmeans", "affinity_propagation": "ap", "hdbscan": "hdbscan", "spectral": "spectral"}.get(name, name)


def _group(tags: dict, dataset: str) -> str:
    group = tags.get("dataset.group")
    if group and group != "none":
        return group
    from ..data import get_dataset_spec
    from ..errors import ConfigError

    try:
        return get_dataset_spec(dataset).group or "other"
    except ConfigError:
        return "other"


def collect_rows(client, experiment_ids: list[str], keys: set[str] | None = None) -> list[ResultRow]:
    """Every FINISHED clustering run in the experiments, latest per job.

    With ``keys`` (a sweep's job keys), default runs count only when their ``zsclust.job`` is one of
    them: a run with the same names but other settings (another seed, other weights) is not this grid's.
    """
    from ..tracking import iter_runs

    latest: dict[tuple, ResultRow] = {}
    for run in iter_runs(client, experiment_ids, "attributes.status = 'FINISHED'"):
        row = _row(run)
        if row is None or (keys is not None and row.role == "default" and row.key not in keys):
            continue
        if row.identity not in latest or row.start_time > latest[row.identity].start_time:
            latest[row.identity] = row
    return list(latest.values())


def _row(run) -> ResultRow | None:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    if "encoder" not in tags or "dataset" not in tags or "job" not in params:
        return None  # a study parent, a report, anything but a clustering job
    dataset = tags["dataset"]
    tuned = tags.get("zsclust.role") == "evaluate"
    return ResultRow(
        run_id=run.info.run_id, encoder=tags["encoder"], dataset=dataset, group=_group(tags, dataset),
        split=tags.get("split", params.get("data.split", "?")), method=params["job"],
        reducer=params.get("reducer.name", "?"), setup=clusterer_setup(params), role="tuned" if tuned else "default",
        study=tags.get("zsclust.study"), key=tags.get("zsclust.job"), start_time=run.info.start_time or 0,
        metrics={k: v for k, v in metrics.items() if v is not None and not math.isnan(v)},
    )


def group_rank(group: str) -> tuple:
    return (GROUP_ORDER.index(group), group) if group in GROUP_ORDER else (len(GROUP_ORDER), group)


@dataclass
class KnnRow:
    """One kNN probe run (``zsclust.role=knn``): accuracy per k on one encoder × dataset × split."""

    run_id: str
    encoder: str
    dataset: str
    group: str
    split: str
    key: str | None
    accuracy: dict[int, float] = field(default_factory=dict)
    start_time: int = 0


def collect_knn_rows(client, experiment_ids: list[str], keys: set[str] | None = None) -> list[KnnRow]:
    """Every FINISHED kNN probe run in the experiments, latest per encoder × dataset × split (with ``keys``:
    only runs whose ``zsclust.job`` is one of them)."""
    from ..tracking import iter_runs

    prefix = "knn_accuracy_k"
    latest: dict[tuple, KnnRow] = {}
    for run in iter_runs(client, experiment_ids, "attributes.status = 'FINISHED' and tags.`zsclust.role` = 'knn'"):
        tags, metrics = run.data.tags, run.data.metrics
        if "encoder" not in tags or "dataset" not in tags:
            continue
        key = tags.get("zsclust.job")
        if keys is not None and key not in keys:
            continue
        acc = {int(name[len(prefix):]): v for name, v in metrics.items()
               if name.startswith(prefix) and name[len(prefix):].isdigit() and v is not None and not math.isnan(v)}
        row = KnnRow(run.info.run_id, tags["encoder"], tags["dataset"], _group(tags, tags["dataset"]),
                     tags.get("split", "?"), key, acc, run.info.start_time or 0)
        ident = (row.encoder, row.dataset, row.split)
        if ident not in latest or row.start_time > latest[ident].start_time:
            latest[ident] = row
    return list(latest.values())
