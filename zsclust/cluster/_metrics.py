"""Scores of a clustering: against the true labels, and label-free on the embedding.

:func:`score_labels` returns (keys are the MLflow metric names):

``ami`` (primary), ``ari``, ``nmi``, ``fmi``, ``homogeneity``, ``completeness``, ``v_measure``,
``accuracy``
    over all points. As in the study's code, the noise label -1 counts as one more cluster for the
    information-theoretic and pair-counting scores (scikit-learn's convention). For ``accuracy``
    (Hungarian matching of clusters to classes) noise points are never correct: noise is not a
    cluster that could be matched to a class.
``<same>_clustered``
    the same scores on the non-noise points only (NaN when every point is noise).
``n_clusters``
    predicted clusters, noise excluded. ``n_classes``: distinct true labels. ``n_samples``.
``noise_fraction``
    fraction of points labelled -1.

:func:`score_embedding` returns ``silhouette``, ``davies_bouldin``, ``calinski_harabasz``, each NaN
when undefined (fewer than 2 clusters, or every point its own cluster), plus ``n_scored`` (points
scored) and ``silhouette_sample_size``. Noise (-1) is one more label by default, as the study scores
it (``noise="label"``): a clustering that leaves most points as noise is then judged with them, not
on the few points it was sure of; ``noise="exclude"`` scores the clustered points only.

Backend: scikit-learn's metrics (float64 throughout), scipy's ``linear_sum_assignment`` for the
Hungarian accuracy (noise is never matched to a class). zsclust used torchmetrics here once; it
computes in torch's *default* dtype, which only a process-wide switch could make float64, and that
switch changed the dtype of tensors other threads created meanwhile (a sweep's in-process jobs scored
while the next cell embedded). Where the two libraries differ in the undefined cases (two
single-cluster labelings: NMI 1 in scikit-learn; independent labelings: V-measure 0), scikit-learn's
answer is the limit the definitions give.
"""

from __future__ import annotations

import math

import numpy as np

from zsclust.cluster._distances import is_euclidean
from zsclust.errors import InvalidDataError

__all__ = [
    "LABEL_METRICS",
    "DEFAULT_SILHOUETTE_SAMPLE_SIZE",
    "clustering_accuracy",
    "score_embedding",
    "score_labels",
    "umap_silhouette",
]

NOISE = -1
NOISE_POLICIES = ("label", "exclude")

DEFAULT_SILHOUETTE_SAMPLE_SIZE = 10_000
"""Silhouette is O(N^2): above this many (non-noise) points it is computed on a seeded random
subsample of this size (scikit-learn's ``sample_size``). 10k points keep it to a few seconds while
the estimate's standard error stays well below the differences the study reports."""

LABEL_METRICS = ("ami", "ari", "nmi", "fmi", "homogeneity", "completeness", "v_measure", "accuracy")

def _codes(labels, what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InvalidDataError(f"{what}: expected a 1-D array of labels, got shape {arr.shape}.")
    return arr


def clustering_accuracy(labels_true, labels_pred, *, noise_label: int | None = NOISE) -> float:
    """Best one-to-one matching of clusters to classes (Hungarian algorithm), as a fraction of N.

    Points labelled ``noise_label`` are never counted correct. Extra clusters or classes stay
    unmatched. Empty input: NaN.
    """
    from scipy.optimize import linear_sum_assignment

    t = np.asarray(labels_true)
    p = np.asarray(labels_pred)
    if t.size == 0:
        return math.nan
    keep = np.ones(p.shape, bool) if noise_label is None else p != noise_label
    if not keep.any():
        return 0.0
    classes, ti = np.unique(t[keep], return_inverse=True)
    clusters, pi = np.unique(p[keep], return_inverse=True)
    contingency = np.zeros((classes.size, clusters.size), dtype=np.int64)
    np.add.at(contingency, (ti.ravel(), pi.ravel()), 1)
    rows, cols = linear_sum_assignment(contingency, maximize=True)
    return float(contingency[rows, cols].sum()) / t.size


def _label_scores(t: np.ndarray, p: np.ndarray, *, noise_label) -> dict[str, float]:
    """All LABEL_METRICS for one pair of labelings (noise, if any, is a cluster except for accuracy)."""
    from sklearn import metrics as skm

    if t.size == 0:
        return {k: math.nan for k in LABEL_METRICS}
    out = {
        "ami": float(skm.adjusted_mutual_info_score(t, p, average_method="arithmetic")),
        "ari": float(skm.adjusted_rand_score(t, p)),
    }
    out["nmi"] = float(skm.normalized_mutual_info_score(t, p, average_method="arithmetic"))
    out["fmi"] = float(skm.fowlkes_mallows_score(t, p))
    h, c, v = skm.homogeneity_completeness_v_measure(t, p)
    out["homogeneity"], out["completeness"], out["v_measure"] = float(h), float(c), float(v)
    out["accuracy"] = clustering_accuracy(t, p, noise_label=noise_label)
    return {k: out[k] for k in LABEL_METRICS}


def score_labels(labels_true, labels_pred, *, noise_label: int = NOISE) -> dict[str, float]:
    """Compare a clustering with the true labels; see the module docstring for the keys.

    Defined for every input of equal length >= 1: a single class, a single cluster, all noise.
    """
    t = _codes(labels_true, "labels_true")
    p = _codes(labels_pred, "labels_pred")
    if t.shape != p.shape:
        raise InvalidDataError(f"labels_true has {t.size} labels but labels_pred has {p.size}.")
    if t.size == 0:
        raise InvalidDataError("score_labels: got no labels.")
    noise = p == noise_label
    clustered = ~noise
    out: dict[str, float] = {}
    out.update(_label_scores(t, p, noise_label=noise_label))
    if noise.any():
        sub = _label_scores(t[clustered], p[clustered], noise_label=None)
    else:
        sub = {k: out[k] for k in LABEL_METRICS}  # identical by definition: skip the recomputation
    out.update({f"{k}_clustered": v for k, v in sub.items()})
    out["n_clusters"] = int(np.unique(p[clustered]).size)
    out["n_classes"] = int(np.unique(t).size)
    out["n_samples"] = int(t.size)
    out["noise_fraction"] = float(noise.mean())
    return out


def _sample(n: int, sample_size: int | None, random_state) -> np.ndarray | None:
    if sample_size is None or n <= sample_size:
        return None
    return np.sort(np.random.default_rng(random_state).choice(n, size=sample_size, replace=False))


def _scored_rows(labels: np.ndarray, noise_label, noise: str, sample_size, random_state) -> np.ndarray:
    """The points a silhouette scores: every point (noise as a label) or the clustered ones, then a seeded
    subsample of ``sample_size`` of them when there are more."""
    rows = np.arange(labels.size) if noise == "label" else np.flatnonzero(labels != noise_label)
    idx = _sample(rows.size, sample_size, random_state)
    return rows if idx is None else rows[idx]


def _silhouette(X: np.ndarray, labels: np.ndarray, rows: np.ndarray, *, metric="euclidean", space=None) -> float:
    if is_euclidean(metric):
        from ._silhouette import euclidean_silhouette

        return euclidean_silhouette(X, labels, rows, space=space)
    from sklearn.metrics import silhouette_score

    X, labels = X[rows], labels[rows]
    k = np.unique(labels).size
    if not 2 <= k <= X.shape[0] - 1:
        return math.nan
    return float(silhouette_score(X, labels, metric=metric))


def _prepare_embedding(X, labels_pred, noise: str) -> tuple[np.ndarray, np.ndarray]:
    """``X`` checked, and the predicted labels as int codes (noise keeps its -1)."""
    from zsclust.cluster._validation import check_embeddings
    from zsclust.errors import ConfigError

    if noise not in NOISE_POLICIES:
        raise ConfigError(f"evaluation.noise must be one of {', '.join(NOISE_POLICIES)}, got {noise!r}.")
    X = check_embeddings(X, what="score_embedding X", min_samples=1)
    labels = _codes(labels_pred, "labels_pred")
    if labels.size != X.shape[0]:
        raise InvalidDataError(f"X has {X.shape[0]} rows but labels_pred has {labels.size} labels.")
    return X, labels


def score_embedding(
    X,
    labels_pred,
    *,
    sample_size: int | None = DEFAULT_SILHOUETTE_SAMPLE_SIZE,
    random_state=0,
    noise_label: int = NOISE,
    metric: str = "euclidean",
    noise: str = "label",
    cache_key: str | None = None,
) -> dict[str, float]:
    """Label-free quality of a clustering of ``X``: silhouette, Davies-Bouldin, Calinski-Harabasz.

    Noise is one more label, or left out with ``noise="exclude"``. Silhouette uses a seeded
    subsample of ``sample_size`` points when there are more (None: all points). A score that is
    undefined (fewer than 2 clusters, or as many clusters as points) is NaN, not an exception.
    ``cache_key`` names ``X``'s contents (a fingerprint): the next clustering of the same ``X`` then
    reuses its pairwise distances (:mod:`zsclust.cluster._silhouette`).
    """
    X, labels = _prepare_embedding(X, labels_pred, noise)
    keep = slice(None) if noise == "label" else labels != noise_label
    Xk, lk = X[keep], labels[keep]
    n = Xk.shape[0]
    k = np.unique(lk).size
    out = {"silhouette": math.nan, "davies_bouldin": math.nan, "calinski_harabasz": math.nan,
           "n_scored": int(n), "silhouette_sample_size": int(min(n, sample_size or n))}
    if not 2 <= k <= n - 1:
        return out
    rows = _scored_rows(labels, noise_label, noise, sample_size, random_state)
    out["silhouette"] = _silhouette(X, labels, rows, metric=metric, space=cache_key)
    from sklearn import metrics as skm

    X64 = np.asarray(Xk, dtype=np.float64)
    out["davies_bouldin"] = float(skm.davies_bouldin_score(X64, lk))
    out["calinski_harabasz"] = float(skm.calinski_harabasz_score(X64, lk))
    return out


def umap_silhouette(
    X,
    labels_pred,
    *,
    X_reduced=None,
    random_state=42,
    sample_size: int | None = DEFAULT_SILHOUETTE_SAMPLE_SIZE,
    noise_label: int = NOISE,
    noise: str = "label",
    reducer_params: dict | None = None,
    cache_key: str | None = None,
) -> float:
    """The study's label-free proxy: silhouette of the predicted labels in one fixed UMAP-50 space.

    The space is UMAP with the study's setting (50-d, n_neighbors=30, min_dist=0; override with
    ``reducer_params``) fitted on all of the original embeddings ``X`` with its own seed
    (``random_state``, the study's 42), independent of the clustering's reduction, so every
    clustering of ``X`` is judged in the same space. Pass ``X_reduced`` (that space, e.g. from
    :class:`~zsclust.cluster.ReductionCache`) to skip the fit, and ``cache_key`` (naming that space)
    to reuse its pairwise distances in the next call. Noise is one more label, as in the
    study (``noise="exclude"`` leaves it out). NaN when fewer than 2 labels remain.
    """
    if X_reduced is None:
        from zsclust.cluster._reducers import STUDY_UMAP, UMAPReducer

        params = {**STUDY_UMAP, "random_state": random_state, **(reducer_params or {})}
        X_reduced = UMAPReducer(**params).fit_transform(X)
    Z, labels = _prepare_embedding(X_reduced, labels_pred, noise)
    rows = _scored_rows(labels, noise_label, noise, sample_size, random_state)
    return _silhouette(Z, labels, rows, space=cache_key)


def spearman_rho(x, y) -> float:
    """Spearman's rank correlation; NaN where it is undefined (fewer than 3 pairs, or a constant side).

    How the study checks the label-free proxy: silhouette in UMAP space against AMI.
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)
