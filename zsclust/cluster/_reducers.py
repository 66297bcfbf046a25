"""Reducers: scikit-learn transformers applied to embeddings before clustering.

Registered names: ``none`` (identity), ``zscore`` (StandardScaler), ``l2`` (Normalizer), ``pca``
(PCA) and ``umap`` (UMAP; its defaults are the study's recommendation: 50 dimensions,
n_neighbors=30, min_dist=0). A chain such as ``["zscore", "pca", "umap"]`` becomes a
:class:`sklearn.pipeline.Pipeline`.

Like the clusterers, each class keeps the scikit-learn constructor and parameters of the estimator
it wraps and adds input and parameter checks at the start of ``fit``/``fit_transform`` (NaN/inf rows
counted, at least 2 samples, dimensions that cannot exceed N), failing with zsclust errors.

PCA with an integer ``n_components`` larger than ``min(n_samples, n_features)`` is refused with a
ConfigError rather than clamped: a silently smaller PCA would be logged and cached under the
configured dimension, and a sweep would compare results that are not what they claim to be.
UMAP refuses ``n_neighbors >= N`` and ``n_components >= N - 1`` for the same reason (umap-learn would
truncate or fall back to a random initialisation with only a warning).

:func:`reducer_key` gives the canonical JSON-able description of a spec used for caching and
logging: every step with all its parameters (defaults filled in), so ``"umap"``,
``{"name": "umap"}`` and ``[{"name": "umap", "n_components": 50}]`` are the same key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from zsclust.cluster._memory import register_estimator
from zsclust.cluster._validation import _validate_sklearn_params, check_embeddings, check_param_names
from zsclust._json import to_jsonable
from zsclust.cluster._umap import BACKENDS as UMAP_BACKENDS
from zsclust.errors import ConfigError, InvalidDataError, did_you_mean

__all__ = [
    "IdentityReducer",
    "L2Reducer",
    "PCAReducer",
    "UMAPReducer",
    "ZScoreReducer",
    "create_reducer",
    "list_reducers",
    "reducer_key",
    "register_reducer",
]

STUDY_UMAP = {"n_components": 50, "n_neighbors": 30, "min_dist": 0.0, "metric": "euclidean"}
"""The UMAP setting the study recommends (and the label-free silhouette proxy uses)."""

# Parameters that do not change the output, left out of reducer_key so that toggling them is not a
# cache miss.
_NON_SEMANTIC = frozenset({"copy", "verbose", "n_jobs"})

_REGISTRY: dict[str, tuple[type, dict[str, Any]]] = {}


_F64 = 8  # bytes per float64


def register_reducer(name: str, *, defaults: Mapping[str, Any] | None = None,
                     test_params: Mapping[str, Any] | None = None):
    """Class decorator: make ``create_reducer(name)`` build this class with ``defaults``.

    As for clusterers, the class carries its memory estimate (``fit_memory``) and the parameters its
    contract tests use on small data (``test_params``), so registering it is all it takes to be tested.
    """

    def deco(cls):
        return register_estimator(_REGISTRY, "reducer", name, cls, defaults, test_params)

    return deco


def list_reducers() -> list[str]:
    """Registered reducer names."""
    return sorted(_REGISTRY)


class _CheckedReducerMixin:
    """Checks every zsclust reducer runs before fitting; mixed in before the sklearn class."""

    _zs_name: str = ""

    def _check_params(self) -> None:
        """Data-independent rules beyond ``_parameter_constraints``. Override."""

    def _check_against_data(self, n_samples: int, n_features: int) -> None:
        """Rules that depend on the data's shape. Override."""

    def validate_config(self) -> None:
        """All data-independent checks, as ConfigError; run by create_reducer and by fit."""
        _validate_sklearn_params(self, self._zs_name or type(self).__name__)
        self._check_params()

    def _prepare_fit(self, X) -> np.ndarray:
        self.validate_config()
        X = check_embeddings(X, what=f"{self._zs_name or type(self).__name__} input")
        self._check_against_data(*X.shape)
        return X

    def _prepare_transform(self, X) -> np.ndarray:
        X = check_embeddings(X, what=f"{self._zs_name or type(self).__name__} input", min_samples=1)
        n_in = getattr(self, "n_features_in_", None)
        if n_in is not None and X.shape[1] != n_in:
            raise InvalidDataError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting {n_in} features "
                "as input (the number it was fitted on)."
            )
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False  # refused with a count of the bad rows
        tags.input_tags.sparse = False  # embeddings are dense
        return tags

    def fit(self, X, y=None, **fit_params):
        """Check, then fit. Returns self."""
        return super().fit(self._prepare_fit(X), y, **fit_params)

    def fit_transform(self, X, y=None, **fit_params):
        """Check, then fit and transform."""
        return super().fit_transform(self._prepare_fit(X), y, **fit_params)

    def transform(self, X, *args, **kwargs):
        """Check, then transform."""
        return super().transform(self._prepare_transform(X), *args, **kwargs)

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        """Peak bytes of fitting on (n, d): the input as float64 and one output of the same size. Override."""
        return 2 * n * d * _F64, "an elementwise transform (linear in N)"

    @classmethod
    def algorithm(cls) -> type | None:
        """The scikit-learn class this one wraps (an estimator of it given by import path gets our
        estimate), or None for one written from scratch."""
        base = cls.__bases__[-1]
        return None if base.__module__ == "sklearn.base" else base


@register_reducer("none")
class IdentityReducer(_CheckedReducerMixin, TransformerMixin, BaseEstimator):
    """No reduction: returns the (checked) embeddings unchanged."""

    _parameter_constraints: dict = {}

    def __init__(self):
        pass

    def fit(self, X, y=None):
        """Check the input and remember its width."""
        X = self._prepare_fit(X)
        self.n_features_in_ = X.shape[1]
        return self

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    def transform(self, X):
        check_is_fitted(self)
        return self._prepare_transform(X)

    def __sklearn_is_fitted__(self):
        return hasattr(self, "n_features_in_")


@register_reducer("zscore")
class ZScoreReducer(_CheckedReducerMixin, StandardScaler):
    """Per-dimension z-score (zero mean, unit variance; constant dimensions are left at scale 1)."""


@register_reducer("l2")
class L2Reducer(_CheckedReducerMixin, Normalizer):
    """Scale each embedding to unit L2 norm (euclidean distance then ranks like cosine distance)."""


@register_reducer("pca", defaults={"zscore": True}, test_params={"n_components": 3})
class PCAReducer(_CheckedReducerMixin, PCA):
    """PCA; ``n_components`` an int (dimensions kept), a float in (0, 1) (variance kept) or ``"mle"``.

    ``zscore`` standardises every dimension first (mean 0, variance 1, ddof 0; a constant dimension
    becomes 0), as the study does whenever it uses PCA; the registry turns it on, the class (like
    scikit-learn's PCA) does not. An int larger than min(n_samples, n_features) is a ConfigError (see
    the module docstring).
    """

    _parameter_constraints: dict = {**PCA._parameter_constraints, "zscore": ["boolean"]}

    def __init__(self, n_components=None, *, zscore=False, copy=True, whiten=False, svd_solver="auto", tol=0.0,
                 iterated_power="auto", n_oversamples=10, power_iteration_normalizer="auto", random_state=None):
        super().__init__(n_components=n_components, copy=copy, whiten=whiten, svd_solver=svd_solver, tol=tol,
                         iterated_power=iterated_power, n_oversamples=n_oversamples,
                         power_iteration_normalizer=power_iteration_normalizer, random_state=random_state)
        self.zscore = zscore

    def _standardise(self, X, fit: bool):
        if not self.zscore:
            return X
        if fit:
            self.zscore_mean_ = X.mean(axis=0)
            scale = X.std(axis=0)
            self.zscore_scale_ = np.where(scale > 0, scale, 1.0)
        return (X - self.zscore_mean_) / self.zscore_scale_

    def fit(self, X, y=None):
        """Check, standardise when ``zscore``, then fit. Returns self."""
        PCA.fit(self, self._standardise(self._prepare_fit(X), fit=True))
        return self

    def fit_transform(self, X, y=None):
        return PCA.fit_transform(self, self._standardise(self._prepare_fit(X), fit=True))

    def transform(self, X):
        return PCA.transform(self, self._standardise(self._prepare_transform(X), fit=False))

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        # the centred copy and the SVD's factors (U at most n x min(n, d)), plus Vt
        return 3 * n * d * _F64 + min(n, d) * d * _F64, "PCA: centred copy and SVD factors (linear in N)"

    def _check_against_data(self, n_samples, n_features):
        k = self.n_components
        if k == "mle" and n_samples < n_features:
            raise ConfigError(
                f"pca: n_components='mle' (Minka's estimate) needs at least as many samples as features, got "
                f"N={n_samples} < d={n_features}. Use a number of dimensions or a variance fraction, or reduce the "
                "width first."
            )
        if isinstance(k, Integral) and not isinstance(k, bool) and k > min(n_samples, n_features):
            raise ConfigError(
                f"pca: n_components={k} is larger than min(n_samples, n_features) = "
                f"min({n_samples}, {n_features}) = {min(n_samples, n_features)}. Use at most that many "
                "dimensions, or a float in (0, 1) to keep a fraction of the variance."
            )


@register_reducer("umap", test_params={"n_components": 5, "n_neighbors": 10})
class UMAPReducer(_CheckedReducerMixin, TransformerMixin, BaseEstimator):
    """UMAP (umap-learn), with the study's defaults: 50-d, n_neighbors=30, min_dist=0.

    umap-learn is imported on first fit (it compiles numba code, ~1 min the first time in a
    process), so importing zsclust stays fast. With a ``random_state`` the result is reproducible
    and UMAP runs single-threaded (``n_jobs=None`` picks 1 then, all cores otherwise). The fitted
    ``umap.UMAP`` is ``umap_``; ``embedding_`` is the training data's embedding, which
    ``fit_transform`` returns.
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "n_neighbors": [Interval(Integral, 2, None, closed="left")],
        "min_dist": [Interval(Real, 0, 1, closed="both")],
        "metric": [str, callable],
        "random_state": ["random_state"],
        "n_epochs": [Interval(Integral, 1, None, closed="left"), None],
        "init": [StrOptions({"spectral", "random", "pca", "tswspectral"})],
        "n_jobs": [Integral, None],
        "verbose": ["verbose"],
        "fit_subsample": [Interval(Integral, 2, None, closed="left"), None],
        "backend": [StrOptions(set(UMAP_BACKENDS))],
    }

    def __init__(
        self,
        n_components: int = STUDY_UMAP["n_components"],
        n_neighbors: int = STUDY_UMAP["n_neighbors"],
        min_dist: float = STUDY_UMAP["min_dist"],
        metric: str = STUDY_UMAP["metric"],
        random_state=None,
        n_epochs: int | None = None,
        init: str = "spectral",
        n_jobs: int | None = None,
        verbose: bool = False,
        fit_subsample: int | None = None,
        backend: str = "auto",
    ):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.random_state = random_state
        self.n_epochs = n_epochs
        self.init = init
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.fit_subsample = fit_subsample
        self.backend = backend

    def _check_against_data(self, n_samples, n_features):
        if self.n_neighbors >= n_samples:
            raise ConfigError(
                f"umap: n_neighbors={self.n_neighbors} needs more than {self.n_neighbors} samples, got "
                f"N={n_samples}. Lower n_neighbors or pass more samples."
            )
        if self.n_components >= n_samples - 1:
            raise ConfigError(
                f"umap: n_components={self.n_components} needs at least {self.n_components + 2} samples "
                f"for its spectral initialisation, got N={n_samples}. Lower n_components or pass more samples."
            )
        m = self.fit_subsample
        if m is not None and n_samples > m and (self.n_neighbors >= m or self.n_components >= m - 1):
            raise ConfigError(
                f"umap: fit_subsample={m} fits on {m} of the N={n_samples} samples, too few for "
                f"n_neighbors={self.n_neighbors} and n_components={self.n_components} (it needs more than "
                f"{max(self.n_neighbors, self.n_components + 1)}). Raise fit_subsample."
            )

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        # input copy, the kNN graph (indices + distances), the fuzzy graph (COO: row, col, value, twice
        # while symmetrising) and the embedding being optimised
        k = int(self.n_neighbors)
        return n * d * _F64 + n * k * 16 + n * k * 2 * 24 + n * int(self.n_components) * _F64, \
            "UMAP: kNN graph, fuzzy graph and embedding (linear in N)"

    def fit(self, X, y=None, knn_graph=None):
        """Fit UMAP on the checked embeddings (on ``knn_graph``, a shared neighbour graph, when given). Returns self.

        How it fits (shared graph, subsample, GPU) is :mod:`zsclust.cluster._umap`; ``fit_info_`` says what ran.
        """
        X = self._prepare_fit(X)
        from zsclust.cluster._umap import fit_umap

        self.umap_, self.embedding_, self.fit_info_ = fit_umap(self, X, knn_graph)
        self.n_features_in_ = X.shape[1]
        return self

    def fit_transform(self, X, y=None, knn_graph=None):
        """Fit, and return the training data's embedding (not a re-projection of it)."""
        return self.fit(X, knn_graph=knn_graph).embedding_

    def _zs_key_params(self) -> dict[str, Any]:
        """Parameters for :func:`reducer_key`: ``fit_subsample`` only when set, ``backend`` only when it means cuML,
        so the keys of plain CPU fits are what they were before these parameters existed."""
        from zsclust.cluster._umap import resolve_backend

        params = self.get_params(deep=False)
        if params.get("fit_subsample") is None:
            params.pop("fit_subsample", None)
        backend = params.pop("backend", "auto")
        if resolve_backend(backend) == "cuml":
            params["backend"] = "cuml"
        return params

    def transform(self, X):
        """Project new points into the fitted embedding."""
        check_is_fitted(self, "umap_")
        if getattr(self.umap_, "_knn_search_index", True) is None and getattr(self, "fit_info_", {}).get("knn_graph") \
                not in (None, "own"):
            raise ConfigError("umap: this reducer was fitted on a shared neighbour graph, which has no search index "
                              "to place new points with; fit it without knn_graph to use transform.")
        return self.umap_.transform(self._prepare_transform(X))


# ----------------------------------------------------------------------------------- registry


def _resolve(name: str) -> tuple[type, dict[str, Any]]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"Unknown reducer {name!r}. Registered: {', '.join(list_reducers())}.{did_you_mean(name, _REGISTRY)}"
        ) from None


def _normalise_spec(spec) -> list[tuple[str, dict[str, Any]]]:
    """Any accepted spec -> a list of (name, params), identity steps removed."""
    if spec is None:
        return []
    if isinstance(spec, (str, Mapping)):
        items = [spec]
    elif isinstance(spec, Sequence):
        items = list(spec)
    else:
        raise ConfigError(
            f"A reducer spec is a name, a mapping {{'name': ..., params}} or a list of those; got {type(spec).__name__}."
        )
    steps = []
    for item in items:
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, Mapping):
            params = dict(item)
            if "name" not in params:
                raise ConfigError(f"A reducer step needs a 'name' key, got keys {sorted(params)}.")
            name = params.pop("name")
        else:
            raise ConfigError(f"A reducer step is a name or a mapping, got {item!r}.")
        if not isinstance(name, str):
            raise ConfigError(f"A reducer name must be a string, got {name!r}.")
        cls, _ = _resolve(name)
        if cls is IdentityReducer:
            if params:
                raise ConfigError(f"Reducer 'none' takes no parameters, got {sorted(params)}.")
            continue
        steps.append((name, params))
    return steps


def _build_step(name: str, params: dict[str, Any]):
    cls, defaults = _resolve(name)
    check_param_names(params, cls._get_param_names(), kind="reducer", name=name)
    est = cls(**{**defaults, **params})
    est.validate_config()
    return est


def create_reducer(spec, *, random_state=None):
    """Build the reducer a spec describes: a name, ``{"name": ..., **params}``, or a list (a chain).

    ``None``/``"none"``/``[]`` give :class:`IdentityReducer`; one step gives that estimator; more
    give a Pipeline whose steps are named after the registry (``pca``, ``umap``; a repeated name
    gets ``-1``, ``-2``, ...). ``random_state``, when given, overrides the seed of every step that
    has one. Parameters are validated now (ConfigError).
    """
    steps = [_build_step(n, p) for n, p in _normalise_spec(spec)]
    if random_state is not None:
        for est in steps:
            if "random_state" in est.get_params(deep=False):
                est.set_params(random_state=random_state)
    if not steps:
        return IdentityReducer()
    if len(steps) == 1:
        return steps[0]
    names = [est._zs_name for est in steps]
    counts = {n: names.count(n) for n in names}
    seen: dict[str, int] = {}
    step_names = []
    for n in names:
        if counts[n] > 1:
            seen[n] = seen.get(n, 0) + 1
            step_names.append(f"{n}-{seen[n]}")
        else:
            step_names.append(n)
    return Pipeline(list(zip(step_names, steps)))


def _describe(est) -> dict[str, Any]:
    name = getattr(est, "_zs_name", "")
    if not name or _REGISTRY.get(name, (None,))[0] is not type(est):
        raise ConfigError(f"reducer_key: {type(est).__name__} is not a registered zsclust reducer.")
    own = getattr(est, "_zs_key_params", None)
    raw = own() if callable(own) else est.get_params(deep=False)
    params = {k: to_jsonable(v) for k, v in sorted(raw.items()) if k not in _NON_SEMANTIC}
    return {"name": name, **params}


def reducer_key(spec, *, random_state=None) -> list[dict[str, Any]]:
    """Canonical, JSON-able description of a reducer spec (or of an estimator create_reducer built).

    A list of steps, each ``{"name": ..., **all parameters}`` (defaults filled in, identity steps
    dropped, parameters that do not change the output such as ``n_jobs`` left out); the identity is
    ``[{"name": "none"}]``. Equal keys mean equal computations, so it is what the reduction cache
    hashes and what gets logged.
    """
    if isinstance(spec, BaseEstimator):
        est = spec
        if random_state is not None:
            raise ConfigError("reducer_key: pass random_state only with a spec, not with a built estimator.")
    else:
        est = create_reducer(spec, random_state=random_state)
    if isinstance(est, IdentityReducer):
        return [{"name": "none"}]
    if isinstance(est, Pipeline):
        return [_describe(step) for _, step in est.steps]
    return [_describe(est)]
