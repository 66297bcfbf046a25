"""How :class:`~zsclust.cluster.UMAPReducer` fits: on a shared neighbour graph, on a subsample, or on the GPU.

* ``knn_graph`` (a :class:`~zsclust.cluster._knn_graph.KnnGraph`, given by the reduction cache) goes to
  umap-learn as ``precomputed_knn``, so the fit skips its own neighbour search. When the graph is
  umap-learn's own NNDescent graph made with this fit's seed, the random state NNDescent left behind
  is restored too, and the fit is umap-learn's unshared fit bit for bit (as it is for exact graphs
  below 4096 points, where umap-learn searches exactly itself).
* ``fit_subsample: M`` (above M points) fits on a seeded random subsample of M points and places the
  others with ``transform``: UMAP's layout cost grows with N, and a million points do not need a
  million-point layout to be clustered well. The fitted reducer records it (``fit_info_``), and the
  parameter is part of the reduction's key and of the run's params.
* umap-learn compiles the numba kernels of every fit (the membership strengths and the layout's epoch) anew
  in each process: 16-30 s here before a CLI run's, a tuning worker's or a sweep job's first fit.
  :func:`cache_umap_kernels` turns on numba's on-disk cache for them, so one compilation serves every
  later process of the installation (``NUMBA_CACHE_DIR`` moves the cache, as for any numba code).
* ``backend``: ``umap-learn``, ``cuml`` (RAPIDS cuML on the GPU; unmeasured here), or ``auto`` (cuML when
  a GPU backend is available, see :mod:`zsclust.cluster._gpu`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
import warnings

import numpy as np

from zsclust.cluster._progress import bar, loud, stage
from zsclust.errors import ConfigError

BACKENDS = ("auto", "umap-learn", "cuml")
_TRANSFORM_ROWS = 50_000

__all__ = ["BACKENDS", "cache_umap_kernels", "fit_umap", "resolve_backend"]

_CACHED_KERNELS = (("umap.umap_", "smooth_knn_dist"), ("umap.umap_", "compute_membership_strengths"),
                   ("umap.layouts", "_nb_optimize_layout_euclidean_single_epoch"),
                   ("umap.utils", "fast_knn_indices"), ("umap.distances", "euclidean"))
"""The kernels every fit runs (the last two: umap-learn's own exact search below 4096 points without a shared
graph, 15 s of compilation on their own). The layout's parallel twin (unseeded fits) stays uncached: it wraps
the same Python function, and numba's cache index tells entries apart by signature, not by ``parallel``."""


@functools.cache
def cache_umap_kernels() -> tuple[str, ...]:
    """Turn on numba's on-disk cache for umap-learn's fit kernels (see the module docstring); the names done.

    Only kernels not compiled yet in this process and without a cache of their own are touched, so a
    umap-learn that caches them itself, or one without these names, is left as it is."""
    import importlib

    from numba.core.caching import NullCache

    done = []
    for module, name in _CACHED_KERNELS:
        try:
            kernel = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(getattr(kernel, "_cache", None), NullCache) and not kernel.signatures:
            try:
                kernel.enable_caching()
            except RuntimeError:  # numba found no writable place for a cache: compile per process, as before
                continue
            done.append(f"{module}.{name}")
    return tuple(done)


def resolve_backend(backend: str) -> str:
    from zsclust.cluster._gpu import want_gpu

    return "cuml" if want_gpu(backend, "umap") else "umap-learn"


def _umap_kwargs(est, n_samples: int) -> dict:
    n_jobs = est.n_jobs if est.n_jobs is not None else (1 if est.random_state is not None else -1)
    verbose = bool(est.verbose) or loud(n_samples)
    return dict(n_components=est.n_components, n_neighbors=est.n_neighbors, min_dist=est.min_dist, metric=est.metric,
                random_state=est.random_state, n_epochs=est.n_epochs, init=est.init, n_jobs=n_jobs, verbose=verbose,
                tqdm_kwds={"disable": None if verbose else True})


def _check_graph(graph, est, n_samples: int) -> None:
    if graph.indices.shape[0] != n_samples:
        raise ConfigError(f"umap: the shared neighbour graph has {graph.indices.shape[0]} rows, the data {n_samples}.")
    if graph.n_neighbors < est.n_neighbors:
        raise ConfigError(f"umap: the shared neighbour graph has {graph.n_neighbors} neighbours per point, "
                          f"n_neighbors={est.n_neighbors} needs at least that many.")
    if graph.metric != est.metric:
        raise ConfigError(f"umap: the shared neighbour graph is {graph.metric!r}, the fit {est.metric!r}.")


def _fit_learn(est, X: np.ndarray, graph) -> tuple[object, np.ndarray]:
    import umap

    cache_umap_kernels()
    kwargs = _umap_kwargs(est, X.shape[0])
    if graph is not None:
        _check_graph(graph, est, X.shape[0])
        k = est.n_neighbors
        # umap-learn writes into these (it marks disconnected neighbours): copies, never the cached arrays
        kwargs["precomputed_knn"] = (np.array(graph.indices[:, :k]), np.array(graph.distances[:, :k]), None)
        if graph.method == "nndescent" and graph.rng_state is not None and isinstance(est.random_state, (int, np.integer)) \
                and int(est.random_state) == graph.seed:
            rs = np.random.RandomState()
            rs.set_state(graph.rng_state)
            kwargs["random_state"] = rs  # continue where umap-learn's own search would have left it
    stdout = contextlib.nullcontext()  # sys.stdout is swapped only when there is a repr to replace
    if graph is not None and kwargs["verbose"]:
        shown = {k: kwargs[k] for k in ("n_components", "n_neighbors", "min_dist", "metric", "n_epochs")
                 if kwargs[k] is not None}
        shown["random_state"] = est.random_state
        stdout = contextlib.redirect_stdout(_OwnReprLine(
            sys.stdout, f"UMAP({', '.join(f'{k}={v!r}' for k, v in shown.items())}) on the shared "
                        f"{graph.method} neighbour graph ({X.shape[0]:,} x {est.n_neighbors})"))
    with warnings.catch_warnings(), stdout:
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*n_jobs value .* overridden to 1.*")
        model = umap.UMAP(**kwargs).fit(X)
    return model, model.embedding_


class _OwnReprLine(io.TextIOBase):
    """stdout of a verbose umap-learn fit on a shared graph: umap-learn prints the estimator's repr first, which
    spells out the graph's two arrays over a dozen lines; that one write becomes ``line``, the rest passes."""

    def __init__(self, out, line: str):
        self.out, self.line = out, line

    def write(self, text: str) -> int:
        return self.out.write(self.line if text.startswith("UMAP(") else text)

    def flush(self) -> None:
        self.out.flush()


def _fit_cuml(est, X: np.ndarray, graph) -> tuple[object, np.ndarray]:  # pragma: no cover - needs a GPU
    from cuml.manifold import UMAP

    from zsclust.cluster._gpu import to_numpy

    model = UMAP(n_components=est.n_components, n_neighbors=est.n_neighbors, min_dist=est.min_dist, metric=est.metric,
                 random_state=est.random_state, n_epochs=est.n_epochs or 0, init=est.init if est.init in
                 ("spectral", "random") else "spectral", verbose=bool(est.verbose))
    fit_kwargs = {}
    if graph is not None:
        import scipy.sparse as sp

        _check_graph(graph, est, X.shape[0])
        k = est.n_neighbors
        rows = np.repeat(np.arange(X.shape[0]), k)
        fit_kwargs["knn_graph"] = sp.csr_matrix((graph.distances[:, :k].ravel(), (rows, graph.indices[:, :k].ravel())),
                                                shape=(X.shape[0], X.shape[0]))
    model.fit(np.asarray(X, dtype=np.float32), **fit_kwargs)
    return model, to_numpy(model.embedding_)


def fit_umap(est, X: np.ndarray, knn_graph=None) -> tuple[object, np.ndarray, dict]:
    """Fit ``est``'s UMAP on ``X`` (see the module docstring): (model, embedding of every row, what ran)."""
    n = X.shape[0]
    backend = resolve_backend(est.backend)
    fit = _fit_cuml if backend == "cuml" else _fit_learn
    info = {"backend": backend, "knn_graph": knn_graph.method if knn_graph is not None else "own"}
    m = est.fit_subsample
    what = f"UMAP ({backend}) {n:,} x {X.shape[1]} -> {est.n_components}"
    if m is None or n <= m:
        with stage(f"{what}, neighbour graph: {info['knn_graph']}", n):
            model, emb = fit(est, X, knn_graph)
        return model, np.asarray(emb), info
    seed = est.random_state if isinstance(est.random_state, (int, np.integer)) else None
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, int(m), replace=False))
    rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)
    info.update(knn_graph="own", fit_subsample=int(m))
    with stage(f"{what}, fitted on a seeded subsample of {m:,}", n):
        model, emb_sample = fit(est, X[sample], None)
        emb = np.empty((n, est.n_components), dtype=np.float32)
        emb[sample] = emb_sample
        with bar(len(rest), "UMAP transform", n, unit="pt") as progress:
            for start in range(0, len(rest), _TRANSFORM_ROWS):
                part = rest[start:start + _TRANSFORM_ROWS]
                emb[part] = model.transform(X[part])
                progress.update(len(part))
    return model, emb, info
