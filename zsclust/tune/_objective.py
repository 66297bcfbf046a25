"""The objective: a trial's configuration run as a job on every validation set, its metric weighted.

The val splits are embedded once, up front (:func:`load_validation_sets`); a trial runs one job per
set through :func:`zsclust.cluster.run_job` (the same function every command clusters with, so a
trial's metrics are a run's metrics), reading each reduction from the reduction cache when another
trial already fitted it. Test splits are never loaded here. In label-free mode the sets carry no
labels at all, so nothing the objective computes can depend on them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from zsclust.cluster import SILHOUETTE_KEYS, JobData, JobSpec, Scoring, label_free_space, run_job
from zsclust.errors import ConfigError, ZsclustError

from ._space import SearchSpace

__all__ = ["Objective", "ValidationSet", "load_validation_sets", "reads_labels"]

PROXY = SILHOUETTE_KEYS["umap50"]


def reads_labels(cfg) -> bool:
    """Whether a study may read the val labels: its metric needs them, or AMI is reported beside a label-free one."""
    from ._config import objective_metrics

    return cfg.objective.metric in objective_metrics()[0] or bool(cfg.objective.report_ami)


@dataclass
class ValidationSet:
    """One validation split in memory, with its share of the objective."""

    name: str
    weight: float
    data: JobData
    umap50: np.ndarray | None = None  # the label-free space, fitted once per set


def load_validation_sets(cfg, *, read_labels: bool, progress: bool = True) -> list[ValidationSet] | None:
    """Every ``datasets`` entry's ``val`` split: exported ``.npz`` files, else ``embed()`` (cached).

    Returns ``None`` on ranks other than 0 of a multi-process embedding.
    """
    from zsclust._build import embed_options
    from zsclust.embed import EmbeddingSet

    encoder = None
    sets = []
    for key, d in cfg.datasets.items():
        if d.embeddings:
            emb = EmbeddingSet.from_npz(d.embeddings, labels=read_labels)
        else:
            from zsclust.embed import embed
            from zsclust.encoders import create_encoder

            if encoder is None:
                encoder = create_encoder(cfg.encoder.name, weights=cfg.encoder.weights)
            emb = embed(encoder, d.name or key, split="val", root=d.root, download=d.download, seed=d.seed,
                        skip_corrupt=d.skip_corrupt, options=embed_options(cfg))
            if emb is None:
                return None
        data = JobData.from_embeddings(emb, read_labels=read_labels, n_classes=d.n_classes)
        sets.append(ValidationSet(key, float(d.weight), data))
        if progress:
            print(f"validation set {key}: {len(data.X)} x {data.X.shape[1]} ({data.fingerprint[:12]})", flush=True)
    return sets


class Objective:
    """``objective(trial) -> float``: the weighted mean of ``metric`` over the validation sets.

    Per validation set ``i`` the score is reported at step ``i`` (so a pruner can stop a hopeless trial
    before the next, often larger, set), and every metric goes into the trial's user attribute
    ``zsclust.metrics`` for the tracker: per set as ``<set>.<metric>``, and their weighted means under
    the metric's own name. A configuration that cannot run (ward with a cosine metric, a PCA wider
    than the data, a clusterer over the memory budget) is pruned with the reason in
    ``zsclust.pruned_reason``, so the search goes on and the reason is visible in the study.
    """

    def __init__(self, space: SearchSpace, datasets: list[ValidationSet], *, metric: str = "ami",
                 reduction_cache=None, seed: int = 0, scoring: Scoring = Scoring()):
        self.space = space
        self.datasets = datasets
        self.metric = metric
        self.reduction_cache = reduction_cache
        self.seed = seed
        space_of = {v: k for k, v in SILHOUETTE_KEYS.items()}
        if metric in space_of and space_of[metric] not in scoring.silhouette_spaces:
            scoring = Scoring(scoring.silhouette_spaces + (space_of[metric],), scoring.sample_size, scoring.noise,
                              scoring.umap_seed)
        self.scoring = scoring
        self.total_weight = sum(d.weight for d in datasets)
        self.check()

    # -- before any trial ----------------------------------------------------------------------------
    def check(self) -> None:
        from ._config import objective_metrics

        if self.metric in objective_metrics()[0]:
            for d in self.datasets:
                if d.data.labels is None or not (np.asarray(d.data.labels) >= 0).any():
                    raise ConfigError(f"objective.metric={self.metric} needs the val labels of '{d.name}', which "
                                      "has none. Use objective.metric=silhouette_umap50 (label-free).")
        if self.space.uses_k:
            for d in self.datasets:
                if not d.data.n_classes:
                    raise ConfigError(f"The space fixes clusterer.n_clusters to K, but the number of classes of "
                                      f"'{d.name}' is unknown without reading its labels: set "
                                      f"datasets.{d.name}.n_classes, or search n_clusters as a range.")

    def prepare(self, progress: bool = True, reducers=()) -> None:
        """Fit, through the cache, what the trials will need before the first one: the label-free UMAP-50 space
        of every set, and each of ``reducers`` (the reductions of a grid study) on every set.

        Largest first (by ``n_components``), each taken by the first worker to reach it: a worker passes over
        one that another process is fitting, so ``study.workers`` processes fit different reductions side by
        side instead of queueing for one. A reduction that cannot be fitted is left to its trials (pruned
        with the reason); the label-free space is then waited for, and one that cannot be fitted is an error.
        """
        from zsclust.cluster import STUDY_UMAP_NODE
        from zsclust.cluster._job import reduce

        todo = []
        if "umap50" in self.scoring.silhouette_spaces:
            todo += [(d, STUDY_UMAP_NODE, self.scoring.umap_seed, "label-free space (UMAP-50)")
                     for d in self.datasets if d.umap50 is None]
        todo += [(d, node, self.seed, f"reduction {_describe(node)}") for node in reducers for d in self.datasets]
        todo.sort(key=lambda job: _size_hint(job[1]), reverse=True)  # stable: the label-free space leads a tie
        for d, node, seed, what in todo if self.reduction_cache is not None else ():
            start = time.perf_counter()
            try:
                done = reduce(d.data, node, seed=seed, cache=self.reduction_cache, wait=False)
            except ZsclustError:
                continue  # the label-free space fails again below, with its reason; a trial's reduction in its trial
            if progress and done is not None and not done[1]:
                print(f"{what} of {d.name}: {time.perf_counter() - start:.1f} s", flush=True)
        if "umap50" not in self.scoring.silhouette_spaces:
            return
        for d in self.datasets:
            if d.umap50 is None:
                try:
                    d.umap50 = label_free_space(d.data, self.scoring, self.reduction_cache)
                except ZsclustError as e:
                    raise ConfigError(f"The label-free UMAP-50 space of '{d.name}' cannot be fitted: {e}") from None

    def grid_order(self, grid: list[dict]) -> list[dict]:
        """A grid study's points in the order :meth:`prepare` fits their reductions (largest first), so the
        first trials find theirs fitted while other workers still fit the rest, instead of waiting for the
        last one (a grid lists UMAP's 5 dimensions before its 50)."""
        return sorted(grid, key=lambda params: _size_hint(self.space.build(params)[0]), reverse=True)

    # -- a trial ---------------------------------------------------------------------------------------
    def job(self, params) -> JobSpec:
        """The job a trial's (or a stored best trial's) params describe."""
        reducer, clusterer = self.space.build(params)
        return JobSpec(self.space.family("clusterer"), reducer, clusterer)

    def __call__(self, trial) -> float:
        import optuna

        job = self.job(self.space.suggest(trial))
        metrics: dict[str, float] = {}
        per_set: list[tuple[float, dict]] = []
        total = 0.0
        last = len(self.datasets) - 1
        for i, d in enumerate(self.datasets):
            try:
                out = run_job(d.data, job, seed=self.seed, cache=self.reduction_cache, scoring=self.scoring,
                              umap50=d.umap50)
            except ZsclustError as e:
                reason = f"{d.name}: {getattr(e, 'user_message', str(e))}"
                trial.set_user_attr("zsclust.pruned_reason", reason[:2000])
                trial.set_user_attr("zsclust.metrics", metrics)
                raise optuna.TrialPruned(f"cannot run this configuration ({reason})") from None
            if i == 0:
                trial.set_user_attr("zsclust.params", {k: _jsonable(v) for k, v in out.params.items()})
            metrics.update({f"{d.name}.{k}": v for k, v in out.metrics.items()})
            per_set.append((d.weight, out.metrics))
            value = out.metrics.get(self.metric, math.nan)
            if math.isnan(value):  # e.g. silhouette of fewer than 2 clusters: the worst, not an error
                value = -1.0
            total += d.weight * value
            trial.report(value, step=i)
            if i < last and trial.should_prune():
                trial.set_user_attr("zsclust.pruned_reason", f"pruner: {self.metric} {value:.4f} on {d.name}")
                trial.set_user_attr("zsclust.metrics", metrics)
                raise optuna.TrialPruned(f"{self.metric} {value:.4f} on {d.name}")
        metrics.update(_weighted_means(per_set))
        metrics["value"] = total / self.total_weight
        trial.set_user_attr("zsclust.metrics", metrics)
        return metrics["value"]


def _size_hint(node) -> float:
    """How costly a reduction is, for ordering only: its output width (UMAP's layout cost grows with it)."""
    try:
        return float(dict(node).get("n_components") or 0)
    except (TypeError, ValueError):
        return 0.0


def _describe(node) -> str:
    node = dict(node)
    return f"{node.pop('name', '?')}({', '.join(f'{k}={v}' for k, v in node.items())})"


def _weighted_means(per_set: list[tuple[float, dict]]) -> dict[str, float]:
    """Each metric every set has, as the weighted mean over the sets (NaN where a set's is NaN)."""
    keys = set.intersection(*(set(m) for _, m in per_set))
    total = sum(w for w, _ in per_set)
    return {k: sum(w * m[k] for w, m in per_set) / total for k in sorted(keys)
            if not k.endswith("_seconds") and k != "reduction_cache_hit"}


def _jsonable(v):
    from zsclust._json import to_jsonable

    return to_jsonable(v)
