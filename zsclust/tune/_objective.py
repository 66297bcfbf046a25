"""The objective: a trial's configuration scored on every validation set (reduce, cluster, score).

The val splits are embedded once, up front (:func:`load_validation_sets`); a trial only reduces
(through the reduction cache, so each distinct reduction is fitted once per study) and clusters.
Test splits are never loaded here. In label-free mode (``objective.metric: silhouette``) the sets
carry no labels at all, so nothing the objective computes can depend on them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsclust.errors import ConfigError, InvalidDataError, ZsclustError

from ._locks import FileLock
from ._space import K_KNOWN, SearchSpace

__all__ = ["Objective", "ValidationSet", "load_validation_sets", "silhouette_key"]

STUDY_UMAP_SPEC = {"name": "umap", "n_components": 50, "n_neighbors": 30, "min_dist": 0.0}
LABEL_METRICS = ("ami", "ari", "nmi")


def silhouette_key(space: str) -> str:
    """MLflow metric name of the silhouette in a given space (``silhouette_umap50`` as in ``zsclust run``)."""
    return {"umap50": "silhouette_umap50", "reduced": "silhouette_reduced", "raw": "silhouette"}.get(space, "")


@dataclass
class ValidationSet:
    """One validation split in memory. ``labels`` is ``None`` when the search must not see them."""

    name: str
    weight: float
    embeddings: np.ndarray
    fingerprint: str
    labels: np.ndarray | None = None
    n_classes: int | None = None
    meta: dict = field(default_factory=dict)
    silhouette_space: np.ndarray | None = None


def _read_npz(path: str, read_labels: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Embeddings (and labels only when asked) of an exported ``.npz``: np.load reads members lazily."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Embedding file '{p}' does not exist.")
    with np.load(p, allow_pickle=False) as z:
        if "embeddings" not in z.files:
            raise InvalidDataError(f"'{p}' has no 'embeddings' array (it has: {', '.join(z.files)}).")
        X = np.asarray(z["embeddings"])
        y = np.asarray(z["labels"]) if read_labels and "labels" in z.files else None
        fp = str(z["fingerprint"]) if "fingerprint" in z.files else f"npz:{p.resolve()}:{p.stat().st_mtime_ns}"
    return X, y, fp


def load_validation_sets(cfg, *, read_labels: bool, progress: bool = True) -> list[ValidationSet] | None:
    """Every ``datasets`` entry's ``val`` split: exported ``.npz`` files, else ``embed()`` (cached).

    Returns ``None`` on ranks other than 0 of a multi-process embedding.
    """
    from zsclust.jobs import embed_options

    encoder = None
    sets = []
    for key, d in cfg.datasets.items():
        classes = None
        if d.embeddings:
            X, y, fp = _read_npz(d.embeddings, read_labels)
        else:
            from zsclust.embed import embed
            from zsclust.encoders import create_encoder

            if encoder is None:
                encoder = create_encoder(cfg.encoder.name, weights=cfg.encoder.weights)
            emb = embed(encoder, d.name or key, split="val", root=d.root, download=d.download, seed=d.seed,
                        skip_corrupt=d.skip_corrupt, options=embed_options(cfg))
            if emb is None:
                return None
            X, fp = emb.embeddings, emb.fingerprint
            y = np.asarray(emb.labels) if read_labels else None  # dropped unread in label-free mode
            classes = emb.meta.get("dataset", {}).get("classes") or None
        n_classes = d.n_classes
        if y is not None:
            known = y[y >= 0]
            if n_classes is None and known.size:
                n_classes = int(np.unique(known).size)
        elif n_classes is None and classes:
            n_classes = len(classes)
        sets.append(ValidationSet(key, float(d.weight), np.asarray(X), fp, y, n_classes))
        if progress:
            print(f"validation set {key}: {len(X)} x {np.asarray(X).shape[1]} ({fp[:12]})", flush=True)
    return sets


class Objective:
    """``objective(trial) -> float``: the weighted mean score of one configuration over the validation sets.

    Per validation set ``i`` the score is reported at step ``i`` (so a pruner can stop a hopeless trial
    before the next, often larger, set), and every metric goes into the trial's user attribute
    ``zsclust.metrics`` for the tracker. A configuration that cannot run (ward with a cosine metric, a
    PCA wider than the data, a clusterer over the memory budget) is pruned with the reason in
    ``zsclust.pruned_reason``, so the search goes on and the reason is visible in the study.
    """

    def __init__(self, space: SearchSpace, datasets: list[ValidationSet], *, metric: str = "ami",
                 silhouette_space: str = "umap50", reduction_cache=None, seed: int = 0,
                 silhouette_sample_size: int | None = 10_000):
        self.space = space
        self.datasets = datasets
        self.metric = metric
        self.silhouette_space = silhouette_space
        self.reduction_cache = reduction_cache
        self.seed = seed
        self.silhouette_sample_size = silhouette_sample_size
        self.total_weight = sum(d.weight for d in datasets)
        self.value_key = silhouette_key(silhouette_space) if metric == "silhouette" else metric
        self.check()

    # -- before any trial ----------------------------------------------------------------------------
    def check(self) -> None:
        if self.metric in LABEL_METRICS:
            for d in self.datasets:
                if d.labels is None or not (np.asarray(d.labels) >= 0).any():
                    raise ConfigError(f"objective.metric={self.metric} needs the val labels of '{d.name}', which "
                                      "has none. Use objective.metric=silhouette (label-free).")
        if self.space.uses_k:
            for d in self.datasets:
                if not d.n_classes:
                    raise ConfigError(f"The space fixes clusterer.n_clusters to K, but the number of classes of "
                                      f"'{d.name}' is unknown without reading its labels: set "
                                      f"datasets.{d.name}.n_classes, or search n_clusters as a range.")

    def prepare(self, progress: bool = True) -> None:
        """Fit the silhouette space (the study's UMAP-50) of every set once, through the cache."""
        for d in self.datasets:
            if self.silhouette_space == "umap50" and d.silhouette_space is None:
                start = time.perf_counter()
                d.silhouette_space, hit = self.reduce(STUDY_UMAP_SPEC, d)
                if progress:
                    print(f"silhouette space (UMAP-50) of {d.name}: {'cache hit' if hit else 'fitted'} in "
                          f"{time.perf_counter() - start:.1f} s", flush=True)
            elif self.silhouette_space == "raw":
                d.silhouette_space = d.embeddings

    def reduce(self, spec: dict, d: ValidationSet) -> tuple[np.ndarray, bool]:
        """``d``'s embeddings reduced by ``spec``; a per-key file lock lets concurrent workers fit it once."""
        from zsclust.cluster import create_reducer

        if not spec or (spec.get("name") == "none" and len(spec) == 1):
            return d.embeddings, False
        if self.reduction_cache is None:
            return np.asarray(create_reducer(spec, random_state=self.seed).fit_transform(d.embeddings)), False
        cache = self.reduction_cache
        key = cache.key(spec, embedding_fingerprint=d.fingerprint, seed=self.seed)
        with FileLock(cache.directory / f".{key}.lock"):
            return cache.get_or_fit(spec, d.embeddings, embedding_fingerprint=d.fingerprint, seed=self.seed)

    # -- a trial ---------------------------------------------------------------------------------------
    def __call__(self, trial) -> float:
        import optuna

        params = self.space.suggest(trial)
        reducer_spec, clusterer_spec = self.space.build(params)
        metrics: dict[str, float] = {}
        total, weight_done = 0.0, 0.0
        sil_totals = [0.0, 0.0]
        last = len(self.datasets) - 1
        for i, d in enumerate(self.datasets):
            try:
                clusterer = self._clusterer(clusterer_spec, d)
                t0 = time.perf_counter()
                Xr, hit = self.reduce(reducer_spec, d)
                t1 = time.perf_counter()
                pred = np.asarray(clusterer.fit_predict(Xr))
                t2 = time.perf_counter()
            except ZsclustError as e:
                reason = f"{d.name}: {getattr(e, 'user_message', str(e))}"
                trial.set_user_attr("zsclust.pruned_reason", reason[:2000])
                trial.set_user_attr("zsclust.metrics", metrics)
                raise optuna.TrialPruned(f"cannot run this configuration ({reason})") from None
            m = self._score(d, pred, Xr)
            m.update(reduce_seconds=t1 - t0, cluster_seconds=t2 - t1, reduction_cache_hit=float(hit))
            metrics.update({f"{d.name}.{k}": v for k, v in m.items()})
            value = m[self.value_key]
            if math.isnan(value):  # silhouette of fewer than 2 clusters: the worst, not an error
                value = -1.0
            total += d.weight * value
            weight_done += d.weight
            sk = silhouette_key(self.silhouette_space)
            if sk and not math.isnan(m.get(sk, math.nan)):
                sil_totals[0] += d.weight * m[sk]
                sil_totals[1] += d.weight
            trial.report(value, step=i)
            if i < last and trial.should_prune():
                trial.set_user_attr("zsclust.pruned_reason", f"pruner: {self.metric} {value:.4f} on {d.name}")
                trial.set_user_attr("zsclust.metrics", metrics)
                raise optuna.TrialPruned(f"{self.metric} {value:.4f} on {d.name}")
        metrics["value"] = total / weight_done
        for k in LABEL_METRICS:
            per = [(d.weight, metrics.get(f"{d.name}.{k}")) for d in self.datasets]
            if all(v is not None for _, v in per):
                metrics[k] = sum(w * v for w, v in per) / self.total_weight
        if sil_totals[1]:
            metrics["silhouette"] = sil_totals[0] / sil_totals[1]
        trial.set_user_attr("zsclust.metrics", metrics)
        return metrics["value"]

    def _clusterer(self, spec: dict, d: ValidationSet):
        from zsclust.cluster import create_clusterer, resolve_clusterer_params

        spec = dict(spec)
        if spec.get("n_clusters") == K_KNOWN:
            spec["n_clusters"] = None  # resolve_clusterer_params: null = the number of classes
        params = resolve_clusterer_params(spec, d.n_classes, "space.clusterer")
        clusterer = create_clusterer(params)
        if clusterer.get_params().get("random_state", 0) is None:
            clusterer.set_params(random_state=self.seed)
        return clusterer

    def _score(self, d: ValidationSet, pred: np.ndarray, Xr: np.ndarray) -> dict[str, float]:
        """Scores of one clustering: label metrics only when the set carries labels (scikit-learn, no torch)."""
        from sklearn import metrics as skm

        from zsclust.cluster import umap_silhouette

        noise = pred < 0
        m: dict[str, float] = {"n_clusters": float(np.unique(pred[~noise]).size), "noise_fraction": float(noise.mean())}
        if d.labels is not None:
            y = np.asarray(d.labels)
            keep = y >= 0
            y, p = y[keep], pred[keep]
            m["ami"] = float(skm.adjusted_mutual_info_score(y, p))
            m["ari"] = float(skm.adjusted_rand_score(y, p))
            m["nmi"] = float(skm.normalized_mutual_info_score(y, p))
            if (p < 0).any():  # the study reports HDBSCAN's AMI on clustered points too
                c = p >= 0
                m["ami_clustered"] = float(skm.adjusted_mutual_info_score(y[c], p[c])) if c.any() else math.nan
        space = Xr if self.silhouette_space == "reduced" else d.silhouette_space
        if space is not None:
            m[silhouette_key(self.silhouette_space)] = umap_silhouette(
                d.embeddings, pred, X_reduced=space, random_state=self.seed, sample_size=self.silhouette_sample_size)
        return m
