"""Clusterers: a registry of scikit-learn estimators that check their input before they fit.

Each registered class subclasses the scikit-learn estimator it names and keeps its constructor,
parameters, attributes and ``_parameter_constraints`` unchanged, so ``clone``, ``get_params``,
pipelines and ``fit_predict`` behave exactly as in scikit-learn. What the subclass adds is the work
at the start of ``fit`` (:meth:`GuardedClusterMixin._prepare_fit`, the same for every clusterer):

1. parameter validation, raised as :class:`~zsclust.errors.ConfigError`, plus the cross-parameter
   rules scikit-learn only finds deep in ``fit`` (ward needs euclidean, ...);
2. input checks (NaN/inf rows counted, at least 2 samples) as
   :class:`~zsclust.errors.InvalidDataError`;
3. checks against N (K larger than N, n_neighbors larger than N) as ConfigError;
4. the memory guard (:mod:`zsclust.cluster._memory`), which refuses O(N^2) fits that would not fit.

The registry entries carry the study's defaults (Lowe et al. 2024, and its reference code); the
classes themselves keep scikit-learn's. ``create_clusterer("kmeans")`` is the recipe, like a timm
model name. A clusterer not in the registry is given by import path (``"sklearn.cluster.Birch"``
or ``"sklearn.cluster:Birch"``) and wrapped in :class:`ImportedClusterer`, which runs the same checks.

The noise label is -1 (HDBSCAN; imported density-based clusterers follow the same convention).

HDBSCAN is scikit-learn's (``sklearn.cluster.HDBSCAN``), not the ``hdbscan`` package: the study's
reference code uses scikit-learn's, its parameter validation and ``clone`` follow the same contract
as the other estimators here, and it needs no compiled extension of its own. ``hdbscan.HDBSCAN``
remains usable by import path.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import warnings
from collections.abc import Mapping
from typing import Any

from numbers import Integral, Real

import numpy as np
import sklearn.cluster as skc
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils._param_validation import Interval

from zsclust.cluster._backends import with_backends
from zsclust.cluster._distances import canonical_metric, is_euclidean
from zsclust.cluster._faiss import KMeansBackendMixin
from zsclust.cluster._hdbscan import HDBSCANBackendMixin
from zsclust.cluster._linkage import LinkageBackendMixin
from zsclust.cluster._memory import check_fit_memory, register_estimator
from zsclust.cluster._progress import stage
from zsclust.cluster._validation import _validate_sklearn_params, check_at_most_n, check_embeddings, check_param_names
from zsclust.errors import ConfigError, did_you_mean

__all__ = [
    "GuardedClusterMixin",
    "AffinityPropagationClusterer",
    "AgglomerativeClusterer",
    "HDBSCANClusterer",
    "ImportedClusterer",
    "KMeansClusterer",
    "SpectralClusterer",
    "create_clusterer",
    "list_clusterers",
    "register_clusterer",
]

_F64 = 8  # bytes per float64

_REGISTRY: dict[str, tuple[type, dict[str, Any]]] = {}


def register_clusterer(name: str, *, defaults: Mapping[str, Any] | None = None,
                       test_params: Mapping[str, Any] | None = None,
                       known_answers: Mapping[str, Mapping[str, Any]] | None = None):
    """Class decorator: make ``create_clusterer(name)`` build this class with ``defaults``.

    The class carries what its tests need, so registering it is all it takes to be tested
    (:mod:`zsclust.cluster.contract`, parametrised over the registry): ``test_params`` make it
    sensible on ~60 points, and each of ``known_answers`` (label → params) must recover four
    well-separated blobs exactly. Its memory estimate is its ``fit_memory`` method.
    """

    def deco(cls):
        register_estimator(_REGISTRY, "clusterer", name, cls, defaults, test_params)
        cls._zs_known_answers = {k: dict(v) for k, v in (known_answers or {"default": {}}).items()}
        return cls

    return deco


def list_clusterers() -> list[str]:
    """Registered clusterer names (import paths are accepted as well)."""
    return sorted(_REGISTRY)


def registry_defaults(name: str) -> dict[str, Any]:
    """The study defaults that ``create_clusterer(name)`` applies (a copy)."""
    return dict(_resolve_registered(name)[1])


def registered_class(name: str) -> type:
    """The class a registered name builds (with its ``_zs_test_params`` and ``_zs_known_answers``)."""
    return _resolve_registered(name)[0]


class GuardedClusterMixin:
    """The checks every zsclust clusterer runs at the start of ``fit``; mixed in before the sklearn class.

    A clusterer of your own gets the same checks by mixing it in (``class Mine(GuardedClusterMixin,
    ClusterMixin, BaseEstimator)``, calling ``self._prepare_fit(X)`` first in ``fit``) and defining
    ``fit_memory``; ``register_clusterer`` then makes it a name in configs and in the contract tests.
    """

    _zs_name: str = ""

    def _display_name(self) -> str:
        return self._zs_name or type(self).__name__

    def _check_params(self) -> None:
        """Data-independent rules scikit-learn would only report deep inside fit. Override."""

    def _check_against_data(self, n_samples: int) -> None:
        """Rules that depend on N (K <= N, ...). Override."""

    def validate_config(self) -> None:
        """All data-independent checks: call right after building, long before the expensive part."""
        _validate_sklearn_params(self, self._display_name())
        self._check_params()

    def _prepare_fit(self, X) -> np.ndarray:
        name = self._display_name()
        self.validate_config()
        X = check_embeddings(X, what=f"{name} input")
        self._check_against_data(X.shape[0])
        check_fit_memory(self, X.shape[0], X.shape[1], name=name)
        return X

    def fit(self, X, y=None, **fit_params):
        """Check parameters, input and memory, then run the algorithm. Returns self."""
        X = self._prepare_fit(X)
        return super().fit(X, y, **fit_params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False  # refused with a count of the bad rows
        tags.input_tags.sparse = False  # embeddings are dense
        return tags

    @classmethod
    def algorithm(cls) -> type | None:
        """The scikit-learn class this one wraps (an estimator of it given by import path gets our
        estimate), or None for one written from scratch."""
        base = cls.__bases__[-1]
        return None if base.__module__ == "sklearn.base" else base


@with_backends
@register_clusterer("kmeans", defaults={"n_init": 1, "max_iter": 1000},
                    known_answers={"kmeans": {"n_clusters": 4, "random_state": 0}})
class KMeansClusterer(KMeansBackendMixin, GuardedClusterMixin, skc.KMeans):
    """k-means (needs K). Registry defaults follow the study: one k-means++ init, max_iter=1000."""

    def _check_against_data(self, n_samples):
        check_at_most_n(self.n_clusters, n_samples, param="n_clusters", owner=self._display_name())

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        k = int(self.get_params().get("n_clusters") or 8)
        return 2 * n * d * _F64 + n * min(k, 256) * _F64, "k-means (linear in N)"


@with_backends
@register_clusterer(
    "agglomerative", defaults={"linkage": "ward", "metric": "euclidean"},
    known_answers={
        "K (ward)": {"n_clusters": 4},
        "K (average, cosine)": {"n_clusters": 4, "linkage": "average", "metric": "cosine"},
        "distance_threshold (ward)": {"n_clusters": None, "distance_threshold": 20.0},
        "distance_threshold (average, l1)": {"n_clusters": None, "distance_threshold": 20.0, "linkage": "average",
                                             "metric": "l1"},
    })
class AgglomerativeClusterer(LinkageBackendMixin, GuardedClusterMixin, skc.AgglomerativeClustering):
    """Agglomerative clustering with either K (``n_clusters``) or ``distance_threshold`` (K unknown).

    ``normalize`` (only with a ``distance_threshold``) is the study's "AC w/o C" scaling, so that one
    threshold means the same for every encoder and dimensionality: centre the features, divide by the
    mean over dimensions of the per-dimension standard deviation, then by sqrt(d) for euclidean (and
    ward) or d for L1 distances (other metrics: no extra division; cosine ignores the scale anyway).

    Without ``connectivity`` scipy builds an N(N-1)/2 distance matrix (twice), which the memory
    guard accounts for; single linkage with a fast metric needs only linear memory.
    """

    _zs_extra_params = {**LinkageBackendMixin._zs_extra_params, "normalize": False}
    _parameter_constraints: dict = {**LinkageBackendMixin._parameter_constraints, "normalize": ["boolean"]}

    def _prepare_fit(self, X) -> np.ndarray:
        """The checks every clusterer runs, then the study's scaling when ``normalize`` is set with a threshold."""
        X = super()._prepare_fit(X)
        if self.normalize and self.distance_threshold is not None:
            X = threshold_scale(X, self.metric)
        return X

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        from sklearn.metrics._dist_metrics import METRIC_MAPPING64

        params = self.get_params(deep=False)
        inputs = n * d * _F64
        if params.get("connectivity") is not None:
            return 4 * inputs, "sparse connectivity"
        metric = canonical_metric(params.get("metric"))
        if params.get("linkage") == "single" and isinstance(metric, str) and metric in METRIC_MAPPING64:
            return 3 * inputs + n * 4 * _F64, "single-linkage minimum spanning tree"
        condensed = n * (n - 1) // 2 * _F64  # scipy: condensed pdist, nn_chain's working copy, an isfinite mask
        return 2 * condensed + condensed // 8 + inputs, "condensed N(N-1)/2 distances, twice"

    def _check_params(self):
        name = self._display_name()
        if (self.n_clusters is None) == (self.distance_threshold is None):
            raise ConfigError(
                f"{name}: set exactly one of n_clusters (K known) and distance_threshold (with "
                f"n_clusters=None); got n_clusters={self.n_clusters!r}, "
                f"distance_threshold={self.distance_threshold!r}."
            )
        if self.linkage == "ward" and not is_euclidean(self.metric):
            raise ConfigError(
                f"{name}: linkage='ward' requires metric='euclidean', got metric={self.metric!r}. "
                "Use linkage='average', 'complete' or 'single' for other metrics."
            )

    def _check_against_data(self, n_samples):
        check_at_most_n(self.n_clusters, n_samples, param="n_clusters", owner=self._display_name())


def threshold_scale(X: np.ndarray, metric: str) -> np.ndarray:
    """The study's feature scaling for a distance threshold (see :class:`AgglomerativeClusterer`)."""
    X = np.asarray(X, dtype=np.float64)
    X = X - X.mean(axis=0)
    spread = float(X.std(axis=0).mean())
    if spread > 0:
        X = X / spread
    d = X.shape[1]
    divisor = {"euclidean": np.sqrt(d), "cityblock": d}.get(canonical_metric(metric), 1.0)
    return X / divisor


AMG_FROM = 20_000
"""From this many points an unset ``eigen_solver`` of spectral clustering is ``'amg'`` (when pyamg is installed)."""


def pyamg_available() -> bool:
    return importlib.util.find_spec("pyamg") is not None


@register_clusterer(
    "spectral",
    defaults={"affinity": "nearest_neighbors", "n_neighbors": 10, "assign_labels": "cluster_qr"},
    test_params={"n_clusters": 3, "n_neighbors": 5},
    known_answers={"spectral": {"n_clusters": 4, "random_state": 0}},
)
class SpectralClusterer(GuardedClusterMixin, skc.SpectralClustering):
    """Spectral clustering (needs K). The registry uses a sparse kNN affinity (scikit-learn's default,
    'rbf', is a dense NxN kernel) and cluster_qr label assignment as in the study's code.

    ``eigen_solver`` unset (the study's default, scikit-learn's ARPACK) becomes scikit-learn's ``'amg'``
    (LOBPCG preconditioned by pyamg's multigrid) from :data:`AMG_FROM` points when pyamg is installed:
    ARPACK's 1000 eigenvectors of a 50,000-point ImageNet graph did not finish in 10 minutes here, AMG's
    took 7 minutes. LOBPCG stops after scikit-learn's 20 iterations, usually short of its tolerance; that
    warning is silenced when zsclust chose the solver. The solver that ran is ``backend_`` (the run's
    ``clusterer.backend_``); set ``eigen_solver: arpack`` to keep ARPACK at any size.
    """

    def fit(self, X, y=None):
        """Check parameters, input and memory, then cluster with the eigensolver for this size. Returns self."""
        X = self._prepare_fit(X)
        solver = self.eigen_solver or ("amg" if X.shape[0] >= AMG_FROM and pyamg_available() else "arpack")
        inner = skc.SpectralClustering(**{**self.get_params(deep=False), "eigen_solver": solver})
        with stage(f"spectral clustering ({solver}, {self.n_components or self.n_clusters} eigenvectors): "
                   f"{X.shape[0]:,} x {X.shape[1]}", X.shape[0]), warnings.catch_warnings():
            if self.eigen_solver is None:  # LOBPCG's report, with every eigenvector's accuracy, at each large fit
                warnings.filterwarnings("ignore", message=r"(?s).*not reaching the requested tolerance")
            inner.fit(X, y)
        for attr in ("labels_", "affinity_matrix_", "n_features_in_"):
            setattr(self, attr, getattr(inner, attr))
        self.backend_ = solver
        return self

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        params = self.get_params(deep=False)
        if params.get("affinity") in ("nearest_neighbors", "precomputed_nearest_neighbors"):
            k = int(params.get("n_neighbors") or 10)
            n_comp = int(params.get("n_components") or params.get("n_clusters") or 8)
            # sparse kNN graph, its symmetrised copy and the Laplacian (~20 B per stored entry), plus the
            # eigensolver's block of vectors
            return n * k * 20 * 4 + n * n_comp * _F64 * 12 + n * d * _F64, "sparse kNN affinity"
        return 3 * n * n * _F64 + n * d * _F64, "dense NxN affinity, Laplacian and factorisation"

    def _check_params(self):
        if self.eigen_solver == "amg" and not pyamg_available():  # scikit-learn would fail only inside fit
            raise ConfigError(f"{self._display_name()}: eigen_solver='amg' needs pyamg: pip install "
                              "'zsclust[scale]' (pyamg), or use eigen_solver: arpack (or leave it unset).")

    def _check_against_data(self, n_samples):
        name = self._display_name()
        check_at_most_n(self.n_clusters, n_samples, param="n_clusters", owner=name)
        n_eig = self.n_clusters if self.n_components is None else self.n_components
        if isinstance(n_eig, int) and n_eig >= n_samples:
            # scipy's eigensolver needs k < N; it would fail with a TypeError about sparse matrices
            param = "n_clusters" if self.n_components is None else "n_components"
            raise ConfigError(
                f"{name}: {param}={n_eig} eigenvectors need more than {n_eig} samples, got N={n_samples}. "
                f"Use {param} <= {n_samples - 1} or pass more samples."
            )
        if self.affinity == "nearest_neighbors":
            check_at_most_n(self.n_neighbors, n_samples, param="n_neighbors", owner=name)


@register_clusterer("affinity_propagation", defaults={"damping": 0.9, "convergence_iter": 15, "max_iter": 1000},
                    known_answers={"affinity_propagation": {"random_state": 0}})
class AffinityPropagationClusterer(GuardedClusterMixin, skc.AffinityPropagation):
    """Affinity propagation (finds K itself). Holds ~7 NxN float64 matrices: guarded.

    Registry damping is 0.9, not scikit-learn's 0.5: at 0.5 the messages oscillate and fail to
    converge within 1000 iterations even on four well-separated blobs (~100 "clusters", AMI 0.4),
    while 0.7-0.9 converge in tens of iterations to the right answer. max_iter=1000 and
    convergence_iter=15 are the study code's defaults.
    """

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        # similarity S, A, R, tmp, and during "remove degeneracies" eps*S+tiny, the normal draws and
        # their product: 7 NxN float64 at peak (np.median of S copies it too, but earlier)
        return 7 * n * n * _F64 + n * d * _F64, "7 NxN float64 matrices"


@with_backends
@register_clusterer(
    "hdbscan",
    defaults={"min_cluster_size": 5, "min_samples": None, "cluster_selection_method": "eom",
              "metric": "euclidean", "copy": True},
    test_params={"min_cluster_size": 3},
    known_answers={"eom": {"min_cluster_size": 10}, "leaf": {"min_cluster_size": 10, "cluster_selection_method": "leaf"}},
)
class HDBSCANClusterer(HDBSCANBackendMixin, GuardedClusterMixin, skc.HDBSCAN):
    """HDBSCAN (finds K itself; noise is -1; all points may be noise, which is a valid result).

    ``max_cluster_size`` may also be a fraction of N in (0, 1] (the study caps clusters at 0.2 N):
    it is rounded against the data at fit time. Non-finite rows are refused like everywhere else
    (scikit-learn would label them -2/-3).
    """

    _parameter_constraints: dict = {
        **HDBSCANBackendMixin._parameter_constraints,  # scikit-learn's, plus ``backend``
        "max_cluster_size": [*skc.HDBSCAN._parameter_constraints["max_cluster_size"],
                             Interval(Real, 0, 1, closed="right")],
    }

    def fit(self, X, y=None, **fit_params):
        """Resolve a fractional ``max_cluster_size`` against N, then check and cluster (on the backend's
        path). Returns self."""
        given = self.max_cluster_size
        if isinstance(given, Real) and not isinstance(given, Integral):  # a fraction (np.float32 included)
            self.max_cluster_size = max(2, int(round(float(given) * np.shape(X)[0])))
        try:
            return super().fit(X, y, **fit_params)
        finally:
            self.max_cluster_size = given

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        from sklearn.cluster._hdbscan.hdbscan import FAST_METRICS

        params = self.get_params(deep=False)
        metric = params.get("metric", "euclidean")
        if params.get("algorithm") == "brute" or metric == "precomputed" or metric not in FAST_METRICS:
            # pairwise_distances, then the mutual-reachability pass partitions a copy
            return 2 * n * n * _F64 + n * d * _F64, "dense NxN distances (brute-force HDBSCAN)"
        k = int(params.get("min_samples") or params.get("min_cluster_size") or 5)
        return 3 * n * d * _F64 + n * k * 2 * _F64, "tree-based HDBSCAN"

    def _check_against_data(self, n_samples):
        name = self._display_name()
        if self.min_samples is not None:
            check_at_most_n(self.min_samples, n_samples, param="min_samples", owner=name)
        elif isinstance(self.min_cluster_size, int) and self.min_cluster_size > n_samples:
            raise ConfigError(
                f"{name}: min_samples defaults to min_cluster_size={self.min_cluster_size}, which is larger "
                f"than the number of samples N={n_samples}. Lower min_cluster_size, or set "
                f"min_samples <= {n_samples} (then every point may be noise, which is a valid result)."
            )


# ----------------------------------------------------------------------------------- import paths


def _import_class(path: str) -> type:
    """'pkg.mod.Class' or 'pkg.mod:Class' -> the class, or ConfigError naming what is missing."""
    if not isinstance(path, str):
        raise ConfigError(f"A clusterer import path must be a string, got {path!r}.")
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"Clusterer import path {path!r} must look like 'package.module.Class' or 'package.module:Class'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"Cannot import module {module_name!r} for clusterer {path!r}: {err}.") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"Module {module_name!r} has no attribute {attr!r} (clusterer {path!r}).")
        obj = getattr(obj, part)
    if not inspect.isclass(obj) or not hasattr(obj, "fit"):
        raise ConfigError(f"{path!r} is not an estimator class with a fit method.")
    if not (issubclass(obj, ClusterMixin) or hasattr(obj, "fit_predict")):
        raise ConfigError(f"{path!r} is not a clusterer: it has neither ClusterMixin nor fit_predict.")
    return obj


def _init_param_names(cls) -> list[str]:
    getter = getattr(cls, "_get_param_names", None)
    if getter is not None:
        return list(getter())
    sig = inspect.signature(cls.__init__)
    return [p.name for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


class ImportedClusterer(GuardedClusterMixin, ClusterMixin, BaseEstimator):
    """Any scikit-learn-compatible clusterer given by import path, with zsclust's checks on fit.

    Its parameters are ``import_path`` plus the target's own, flat (``n_clusters``, not
    ``estimator__n_clusters``), so the same dotted key works for registered and imported
    clusterers. ``get_params`` returns the parameters that were given; ``set_params`` accepts any
    parameter of the target class. The fitted target is ``estimator_``.
    """

    _parameter_constraints: dict = {"import_path": [str]}

    def __init__(self, import_path: str, **params):
        self.import_path = import_path
        for key, value in params.items():
            setattr(self, key, value)

    # -- parameters: flat, the target's own -------------------------------------------------------
    def _target(self) -> type:
        return _import_class(self.import_path)

    def _target_params(self) -> dict[str, Any]:
        try:
            names = set(_init_param_names(self._target()))
        except ConfigError:  # unresolvable path: report the attributes that were set
            names = {k for k in vars(self) if not k.endswith("_") and not k.startswith("_")}
        return {k: v for k, v in vars(self).items() if k in names and k != "import_path"}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        out = {"import_path": self.import_path}
        for key, value in self._target_params().items():
            out[key] = value
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{key}__{k}", v) for k, v in value.get_params().items())
        return out

    def set_params(self, **params):
        if not params:
            return self
        if "import_path" in params:
            self.import_path = params.pop("import_path")
        try:
            valid = set(_init_param_names(self._target())) | {"import_path"}
        except ConfigError:
            # an unresolvable path is reported by validate_config/fit; like scikit-learn's
            # set_params, do not fail here
            valid = {k.partition("__")[0] for k in params}
        nested: dict[str, dict] = {}
        for key, value in params.items():
            head, _, sub = key.partition("__")
            if head not in valid:
                raise ConfigError(
                    f"Invalid parameter {head!r} for clusterer {self.import_path!r}. Valid parameters: "
                    f"{', '.join(sorted(valid))}.{did_you_mean(head, valid)}"
                )
            if sub:
                nested.setdefault(head, {})[sub] = value
            else:
                setattr(self, head, value)
        for head, sub_params in nested.items():
            getattr(self, head).set_params(**sub_params)
        return self

    # -- fitting ---------------------------------------------------------------------------------
    def _display_name(self) -> str:
        return self.import_path

    def _build(self):
        try:
            return self._target()(**self._target_params())
        except TypeError as err:
            raise ConfigError(f"{self.import_path}: {err}") from err

    def validate_config(self) -> None:
        _validate_sklearn_params(self._build(), self._display_name())

    def fit(self, X, y=None, **fit_params):
        """Check parameters, input and memory (estimated for the target class), then fit the target."""
        name = self._display_name()
        inner = self._build()
        _validate_sklearn_params(inner, name)
        X = check_embeddings(X, what=f"{name} input")
        check_at_most_n(getattr(inner, "n_clusters", None), X.shape[0], param="n_clusters", owner=name)
        check_fit_memory(inner, X.shape[0], X.shape[1], name=name)
        if hasattr(inner, "fit_predict"):
            labels = inner.fit_predict(X, **fit_params)
        else:
            labels = inner.fit(X, **fit_params).labels_
        self.estimator_ = inner
        self.labels_ = np.asarray(labels)
        self.n_features_in_ = X.shape[1]
        return self


# ----------------------------------------------------------------------------------- factory


def _resolve_registered(name: str) -> tuple[type, dict[str, Any]]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"Unknown clusterer {name!r}. Registered: {', '.join(list_clusterers())}; or give an "
            f"import path such as 'sklearn.cluster.Birch'.{did_you_mean(name, _REGISTRY)}"
        ) from None


def create_clusterer(name: str | Mapping[str, Any], **params) -> BaseEstimator:
    """Build a clusterer: a registered name with the study defaults, or an import path.

    ``name`` may also be a mapping ``{"name": ..., **params}`` (a config group). Parameters are
    validated now (ConfigError), so a typo fails before any embedding is computed; checks that need
    the data (K <= N, memory) run in ``fit``.
    """
    if isinstance(name, Mapping):
        spec = dict(name)
        if "name" not in spec:
            raise ConfigError(f"A clusterer spec needs a 'name' key, got {sorted(spec)}.")
        name = spec.pop("name")
        params = {**spec, **params}
    if not isinstance(name, str) or not name:
        raise ConfigError(f"A clusterer name must be a non-empty string, got {name!r}.")
    if name in _REGISTRY or not ("." in name or ":" in name):
        cls, defaults = _resolve_registered(name)
        check_param_names(params, cls._get_param_names(), kind="clusterer", name=name)
        estimator = cls(**{**defaults, **params})
    else:
        check_param_names(params, _init_param_names(_import_class(name)), kind="clusterer", name=name)
        estimator = ImportedClusterer(name, **params)
    estimator.validate_config()
    return estimator
