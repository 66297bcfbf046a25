"""The other reductions the study's code offers: kernel PCA, PaCMAP and t-SNE.

The study (Lowe et al. 2024) reports UMAP and PCA in its tables, but its code also runs
``KernelPCA`` (kernels linear, poly, rbf, sigmoid, cosine), PaCMAP (``init="pca"``, no PCA
pre-reduction) and exact t-SNE. They are registered here like the reducers in ``_reducers.py``:
the same input and parameter checks (``_CheckedReducerMixin``), a ``fit_memory`` estimate, and a
``random_state`` that ``run_job`` seeds.

Kernel PCA and exact t-SNE hold N x N matrices, so these two also ask the memory guard at the start
of ``fit`` (the pipeline asks it for every reducer before any embedding is computed).

PaCMAP and t-SNE embed the training data only: like scikit-learn's ``TSNE`` they have
``fit_transform`` and no ``transform`` (PaCMAP's own ``transform`` treats new points as extra data
and moves old ones, which is not a projection).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import KernelPCA
from sklearn.utils._available_if import available_if
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils import check_random_state

from zsclust.cluster._memory import check_fit_memory
from zsclust.cluster._reducers import _CheckedReducerMixin, register_reducer
from zsclust.errors import ConfigError

__all__ = ["KernelPCAReducer", "PaCMAPReducer", "TSNEReducer", "EXACT_TSNE_MAX_SAMPLES", "pacmap_n_neighbors"]

_F64 = 8
_F32 = 4

EXACT_TSNE_MAX_SAMPLES = 5_000
"""``TSNEReducer(method="auto")`` runs exact t-SNE up to this many samples (the study's method; its
time and memory grow as N^2) and FFT-accelerated t-SNE (openTSNE) above it."""

_EXAGGERATION_ITER = 250  # scikit-learn's fixed early-exaggeration phase, given to openTSNE as well

_INSTALL_HINT = "pip install 'zsclust[methods]'"


def _never(_self) -> bool:
    """For ``available_if``: hides the mixin's ``transform`` from estimators that cannot project new points
    (their classes opt out of set_output's wrapping, which would expose it again)."""
    return False


def _import(module: str, feature: str):
    """Import an optional dependency, or fail with the install command (like Optuna's try_import)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{feature} needs the '{module}' package: {_INSTALL_HINT}.") from err


class _GuardedReducerMixin(_CheckedReducerMixin):
    """The reducer checks plus the memory guard at the start of fit (for the O(N^2) reducers)."""

    def _prepare_fit(self, X) -> np.ndarray:
        X = super()._prepare_fit(X)
        check_fit_memory(self, X.shape[0], X.shape[1], name=self._zs_name or type(self).__name__)
        return X


# ----------------------------------------------------------------------------------- kernel PCA


@register_reducer("kernel_pca", test_params={"n_components": 3, "kernel": "rbf"})
class KernelPCAReducer(_GuardedReducerMixin, KernelPCA):
    """Kernel PCA (scikit-learn's), kernels linear, poly, rbf, sigmoid or cosine, as in the study's code.

    ``n_components`` is a number of dimensions (``None``: every non-zero component, up to N); a
    variance fraction or ``"mle"`` are PCA-only, as in the study. An int larger than N is a
    ConfigError rather than silently fewer dimensions. The kernel matrix is N x N: guarded.
    ``random_state`` seeds the arpack/randomized eigensolvers.
    """

    _zs_sklearn_xfail = {"check_transformer_n_iter": "scikit-learn's KernelPCA has max_iter (arpack) but no n_iter_"}

    def _check_against_data(self, n_samples, n_features):
        k = self.n_components
        if isinstance(k, Integral) and not isinstance(k, bool) and k > n_samples:
            raise ConfigError(
                f"kernel_pca: n_components={k} is larger than the number of samples N={n_samples} (kernel PCA "
                f"has at most N components). Use n_components <= {n_samples}."
            )

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        # the kernel matrix, the centred kernel, and the eigensolver's output (dense eigh: N x N
        # eigenvectors; arpack/randomized: N x k)
        k = self.n_components
        iterative = self.eigen_solver in ("arpack", "randomized") or (
            self.eigen_solver == "auto" and n > 200 and k is not None and k < 10)
        vectors = n * int(k) * _F64 if iterative else n * n * _F64
        return 2 * n * n * _F64 + vectors + 2 * n * d * _F64, "kernel PCA: NxN kernel matrix, centred copy, eigenvectors"


# ----------------------------------------------------------------------------------- PaCMAP


def pacmap_n_neighbors(n_samples: int) -> int:
    """PaCMAP's own default neighbourhood size for N samples (``n_neighbors=None``)."""
    return 10 if n_samples <= 10_000 else int(round(10 + 15 * (np.log10(n_samples) - 4)))


@register_reducer("pacmap", test_params={"n_components": 3, "n_neighbors": 5})
class PaCMAPReducer(_CheckedReducerMixin, TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """PaCMAP (the ``pacmap`` package) as the study runs it: ``init="pca"``, no PCA pre-reduction.

    ``n_components`` defaults to 50, the dimension of the study's PaCMAP setting (PaCMAP-50 before
    affinity propagation for three ResNet-50 encoders); ``n_neighbors=None`` is PaCMAP's rule
    (10 up to 10k samples, more above, see :func:`pacmap_n_neighbors`). ``distance`` is PaCMAP's
    name for the metric. With a ``random_state`` PaCMAP is reproducible (and single-threaded).
    """

    _zs_sklearn_check_params = {"n_components": 2, "n_neighbors": 2}  # scikit-learn's checks fit ~10-30 samples

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left"), None],
        "MN_ratio": [Interval(Real, 0, None, closed="neither")],
        "FP_ratio": [Interval(Real, 0, None, closed="neither")],
        "distance": [StrOptions({"euclidean", "manhattan", "angular"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "apply_pca": ["boolean"],
        "init": [StrOptions({"pca", "random"})],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
        "verbose": ["verbose"],
    }

    def __init__(self, n_components: int = 50, n_neighbors: int | None = None, MN_ratio: float = 0.5,
                 FP_ratio: float = 2.0, distance: str = "euclidean", lr: float = 1.0, apply_pca: bool = False,
                 init: str = "pca", random_state: int | None = None, verbose: bool = False):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.MN_ratio = MN_ratio
        self.FP_ratio = FP_ratio
        self.distance = distance
        self.lr = lr
        self.apply_pca = apply_pca
        self.init = init
        self.random_state = random_state
        self.verbose = verbose

    def _pairs(self, n_samples: int) -> tuple[int, int, int]:
        k = self.n_neighbors or pacmap_n_neighbors(n_samples)
        return k, int(round(k * self.MN_ratio)), int(round(k * self.FP_ratio))

    def _check_against_data(self, n_samples, n_features):
        k, mn, fp = self._pairs(n_samples)
        if k + mn + fp >= n_samples:
            raise ConfigError(
                f"pacmap: n_neighbors={k} with MN_ratio={self.MN_ratio} and FP_ratio={self.FP_ratio} samples "
                f"{k + mn + fp} pairs per point, which needs more than {k + mn + fp} samples; got N={n_samples}. "
                "Lower n_neighbors or pass more samples (PaCMAP would otherwise shrink them silently)."
            )
        if self.init == "pca" and not (self.apply_pca and n_features > 100) and self.n_components > min(n_samples,
                                                                                                        n_features):
            raise ConfigError(
                f"pacmap: init='pca' needs n_components={self.n_components} <= min(n_samples, n_features) = "
                f"{min(n_samples, n_features)}. Lower n_components, or use init='random'."
            )

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        k, mn, fp = self._pairs(n)
        # float32 copy of the input and its HNSW index (~ input + 32 links per node), the pairs
        # (int64), the embedding with Adam's moments and gradient
        return (3 * n * d * _F32 + n * 64 * 8 + n * (k + mn + fp) * 2 * 8 + 5 * n * self.n_components * _F32,
                "PaCMAP: HNSW index, sampled pairs and embedding (linear in N)")

    def fit(self, X, y=None):
        """Fit PaCMAP on the checked embeddings. Returns self."""
        X = self._prepare_fit(X)
        pacmap = _import("pacmap", "The pacmap reducer")
        import faiss  # pacmap's kNN backend (a dependency of pacmap >= 0.9)

        threads = faiss.omp_get_max_threads()  # PaCMAP sets faiss to one thread when seeded: put it back
        try:
            self.pacmap_ = pacmap.PaCMAP(
                n_components=self.n_components, n_neighbors=self.n_neighbors, MN_ratio=self.MN_ratio,
                FP_ratio=self.FP_ratio, distance=self.distance, lr=self.lr, apply_pca=self.apply_pca,
                verbose=self.verbose, random_state=None if self.random_state is None else int(self.random_state),
            )
            self.embedding_ = np.asarray(self.pacmap_.fit_transform(X, init=self.init))
        finally:
            faiss.omp_set_num_threads(threads)
        self.n_features_in_ = X.shape[1]
        return self

    def fit_transform(self, X, y=None):
        """Fit, and return the training data's embedding."""
        return self.fit(X).embedding_

    @available_if(_never)
    def transform(self, X):  # pragma: no cover - hidden: PaCMAP cannot project new points
        raise NotImplementedError

    def __sklearn_is_fitted__(self):
        return hasattr(self, "embedding_")


# ----------------------------------------------------------------------------------- t-SNE


@register_reducer("tsne", test_params={"n_components": 2, "perplexity": 5.0})
class TSNEReducer(_GuardedReducerMixin, TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """t-SNE: exact (scikit-learn, the study's), Barnes-Hut (scikit-learn) or FFT-accelerated (openTSNE).

    ``method="auto"`` runs exact t-SNE up to :data:`EXACT_TSNE_MAX_SAMPLES` samples and FFT t-SNE above
    (FFT needs ``n_components <= 2``, Barnes-Hut ``<= 3``; with more dimensions auto stays exact, which
    the memory guard refuses where it would not fit). The method used is ``method_``. Exact and
    Barnes-Hut are scikit-learn's ``TSNE``, FFT is openTSNE's; all three start from PCA, use the
    automatic learning rate and ``max_iter`` iterations in all (1000, the first 250 with early
    exaggeration 12: scikit-learn's schedule, which openTSNE is given too). Perplexity must be
    below N (exact) or N/3 (the approximations use 3 x perplexity neighbours).
    """

    _zs_sklearn_check_params = {"perplexity": 2.0, "max_iter": 250}  # as scikit-learn's own checks of TSNE

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "perplexity": [Interval(Real, 0, None, closed="neither")],
        "metric": [StrOptions({"euclidean", "manhattan", "cosine", "chebyshev", "l1", "l2", "cityblock"})],
        "method": [StrOptions({"auto", "exact", "barnes_hut", "fft"})],
        "max_iter": [Interval(Integral, 250, None, closed="left")],
        "random_state": ["random_state"],
        "n_jobs": [Integral, None],
        "verbose": ["verbose"],
    }

    def __init__(self, n_components: int = 2, perplexity: float = 30.0, metric: str = "euclidean",
                 method: str = "auto", max_iter: int = 1000, random_state=None, n_jobs: int | None = None,
                 verbose: bool = False):
        self.n_components = n_components
        self.perplexity = perplexity
        self.metric = metric
        self.method = method
        self.max_iter = max_iter
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose

    def _check_params(self):
        limit = {"barnes_hut": 3, "fft": 2}.get(self.method)
        if limit is not None and self.n_components > limit:
            raise ConfigError(
                f"tsne: method={self.method!r} supports n_components <= {limit}, got {self.n_components}. Use "
                "method='exact' (or 'auto') for more dimensions."
            )

    def method_for(self, n_samples: int) -> str:
        """The method ``fit`` uses on ``n_samples`` samples (resolves ``"auto"``)."""
        if self.method != "auto":
            return self.method
        return "exact" if n_samples <= EXACT_TSNE_MAX_SAMPLES or self.n_components > 2 else "fft"

    def _check_against_data(self, n_samples, n_features):
        method = self.method_for(n_samples)
        if method == "exact" and self.perplexity >= n_samples:
            raise ConfigError(f"tsne: perplexity={self.perplexity} must be less than the number of samples "
                              f"N={n_samples}. Lower perplexity or pass more samples.")
        if method != "exact" and 3 * self.perplexity >= n_samples - 1:
            raise ConfigError(
                f"tsne: method={method!r} uses 3 x perplexity = {3 * self.perplexity:g} neighbours, which needs more "
                f"than {3 * self.perplexity + 1:g} samples; got N={n_samples}. Lower perplexity or pass more samples.")
        if self.n_components > min(n_samples, n_features):
            raise ConfigError(f"tsne: the PCA initialisation needs n_components={self.n_components} <= "
                              f"min(n_samples, n_features) = {min(n_samples, n_features)}. Lower n_components.")

    def fit_memory(self, n: int, d: int) -> tuple[int, str]:
        method = self.method_for(n)
        if method == "exact":
            # pairwise distances, the conditional and joint affinities, and each step's (P - Q) x dist matrix
            return 4 * n * n * _F64 + 2 * n * d * _F64, "exact t-SNE: NxN distances and affinities"
        k = min(n - 1, int(3 * self.perplexity) + 1)
        return (2 * n * d * _F64 + n * k * 3 * (_F64 + 8) + 8 * n * self.n_components * _F64,
                f"{method} t-SNE: kNN affinities (linear in N)")

    def fit(self, X, y=None):
        """Fit t-SNE on the checked embeddings. Returns self."""
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None):
        """Fit, and return the training data's embedding."""
        X = self._prepare_fit(X)
        self.method_ = self.method_for(X.shape[0])
        if self.method_ == "fft":
            openTSNE = _import("openTSNE", "t-SNE with method='fft'")
            seed = self.random_state
            if seed is not None and not isinstance(seed, Integral):  # a RandomState: openTSNE takes an int
                seed = int(check_random_state(seed).randint(np.iinfo(np.int32).max))
            model = openTSNE.TSNE(n_components=self.n_components, perplexity=self.perplexity, metric=self.metric,
                                  negative_gradient_method="fft", early_exaggeration_iter=_EXAGGERATION_ITER,
                                  n_iter=self.max_iter - _EXAGGERATION_ITER, random_state=seed,
                                  n_jobs=self.n_jobs or 1, verbose=bool(self.verbose))
            self.embedding_ = np.asarray(model.fit(X))
            self.n_iter_ = self.max_iter  # openTSNE runs every iteration
        else:
            from sklearn.manifold import TSNE

            model = TSNE(n_components=self.n_components, perplexity=self.perplexity, metric=self.metric,
                         method=self.method_, init="pca", learning_rate="auto", max_iter=self.max_iter,
                         random_state=self.random_state, n_jobs=self.n_jobs, verbose=int(self.verbose))
            self.embedding_ = model.fit_transform(X)
            self.n_iter_ = int(model.n_iter_) + 1  # scikit-learn counts from 0
        self.n_features_in_ = X.shape[1]
        return self.embedding_

    @available_if(_never)
    def transform(self, X):  # pragma: no cover - hidden: t-SNE does not project new points
        raise NotImplementedError

    def __sklearn_is_fitted__(self):
        return hasattr(self, "embedding_")
