"""K-Means for millions of points: faiss's nearest-centroid search, k-means++ starts, scikit-learn's stopping rule.

``backend: faiss`` runs Lloyd's algorithm on all the data: each iteration assigns every point to its
nearest centre, then moves each centre to its points' mean (accumulated in float64). The assignment is
Yinyang K-Means' (Ding et al., ICML 2015): the centres form about K/10 groups, and bounds on each point's
distance to its own centre and to each group skip the points that provably keep their centre and, for the
others, the groups and centres that cannot be nearer. What is left is searched with faiss's BLAS products
against all centres (on the GPU with faiss-gpu) while many groups are open, and by a parallel numba loop
over the open groups' centres once few are; the labels are a full search's. It does *not* use ``faiss.Kmeans``, which
trains on 256 points per centroid unless told otherwise and stops after a fixed number of iterations:
here every point counts, and the loop stops like scikit-learn's (labels unchanged, or total centre
shift below ``tol`` times the mean feature variance, or ``max_iter``). Empty clusters get the points
farthest from their centres, as in scikit-learn.

Starts: ``init='k-means++'`` is greedy k-means++ (scikit-learn's: 2 + log K candidates per step, the one
that lowers the potential most) on a seeded subsample of at most :data:`INIT_SAMPLE_PER_CLUSTER`
points per cluster, computed with float32 products (the torch backend's implementation, run on the CPU);
``n_init`` starts, the lowest inertia kept. (On this
machine scikit-learn's ``kmeans_plusplus`` on float32 data upcasts every distance block to float64 and
took 172 s for 20k x 768 and K=1000; this takes seconds.) ``'random'`` and an array of centres work too.

Large N: when there are at least :data:`REFINE_FROM` times as many points as the k-means++ sample holds,
each start is first refined by Lloyd's algorithm on that sample (same stopping rule), and the run on
all points starts from there. The full-data iterations then begin near a solution, so the bounds
skip most points from the second pass on: at 1M x 768 and K=1000 this cuts the full passes that
dominate the cost (BENCHMARKS.md). The result is still Lloyd's algorithm on every point, stopped by
scikit-learn's rule; only its starting centres differ from an unrefined k-means++ start.

``auto``: the torch backend (:mod:`zsclust.cluster._torch_kmeans`: the same algorithm, on the device) when
torch sees a CUDA GPU; otherwise faiss from :data:`FAISS_FROM` points when it is installed; scikit-learn below
(the study's reference implementation, which is fast enough there). cuML only when asked for by name.

faiss-cpu wheels bundle an OpenBLAS (0.3.15 in faiss-cpu 1.15) that does not recognise recent Xeons and
falls back to slow generic kernels (10x slower products here). Unless ``OPENBLAS_CORETYPE`` is set,
zsclust sets it for the moment faiss is imported, from the CPU's flags (SkylakeX with AVX-512,
Haswell with AVX2); numpy's own OpenBLAS is loaded already and is not affected.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings

import numpy as np
import sklearn.cluster as skc
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions

from zsclust.cluster._backends import BackendMixin
from zsclust.cluster._progress import bar, stage
from zsclust.errors import ConfigError

BACKENDS = ("auto", "sklearn", "faiss", "torch", "cuml")
FAISS_FROM = 200_000
"""``auto`` uses faiss from this many points."""
INIT_SAMPLE_PER_CLUSTER = 64
"""k-means++ starts are chosen among at most this many points per cluster (a seeded subsample)."""
REFINE_FROM = 4
"""Refine each start on the k-means++ sample first when N is at least this many times the sample."""
GROUP_SIZE = 10
"""Centres per Yinyang group (Ding et al. 2015: K/10 groups)."""
LOCAL_SEARCH_MAX = 0.1
"""Search only the open groups' centres (numba) when at most this fraction of groups is open on average;
all centres (BLAS products) otherwise."""
_ASSIGN_ROWS = 65_536
_BLOCK_BYTES = 256 * 2**20  # one block of point-to-centre distances
_F32, _F64 = 4, 8

__all__ = ["BACKENDS", "KMeansBackendMixin", "faiss_available", "import_faiss", "kmeans_plusplus", "lloyd"]


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def _openblas_coretype() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return None
    if "avx512f" in flags:
        return "SkylakeX"
    if "avx2" in flags:
        return "Haswell"
    return None


def import_faiss():
    """``import faiss`` with the OpenBLAS core type set for its bundled library (see the module docstring)."""
    if "faiss" in sys.modules:
        return sys.modules["faiss"]
    if not faiss_available():
        raise ConfigError("kmeans: backend='faiss' needs faiss: pip install 'zsclust[scale]' (faiss-cpu), or "
                          "faiss-gpu on a CUDA machine; or use backend: sklearn.")
    core = None if "OPENBLAS_CORETYPE" in os.environ else _openblas_coretype()
    if core:
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        import faiss
    finally:
        if core:
            os.environ.pop("OPENBLAS_CORETYPE", None)
    return faiss


def kmeans_plusplus(X: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ centres of ``X`` (NumPy, float32 products): the torch backend's, on the CPU."""
    import torch

    from zsclust.cluster._gpu import full_float32_products, host_tensor
    from zsclust.cluster._torch_kmeans import kmeans_plusplus as on_device

    with full_float32_products(), torch.no_grad():
        return on_device(host_tensor(np.ascontiguousarray(X, dtype=np.float32)), n_clusters, rng).numpy()


class _Assigner:
    """Squared distances from points to every centre in row blocks (faiss's BLAS products; on the GPU with
    faiss-gpu), reduced at once to what the bounds need: the nearest centre, the distance to it and, per group
    of centres, the distance to the nearest other centre of the group."""

    def __init__(self, faiss, d: int, gpu: bool):
        self.faiss, self.d, self.gpu = faiss, d, gpu
        self.res = faiss.StandardGpuResources() if gpu else None

    def _sq_distances(self, part: np.ndarray, C: np.ndarray) -> np.ndarray:
        if self.gpu:  # pragma: no cover - needs faiss-gpu
            return self.faiss.pairwise_distance_gpu(self.res, part, C)
        return self.faiss.pairwise_distances(part, C)

    def search(self, X: np.ndarray, C: np.ndarray, starts: np.ndarray, rows: np.ndarray | None = None):
        """(nearest centre, distance to it, (n, groups) distances to the nearest other centre of each group) of
        ``X[rows]`` (all rows: None); the groups are the contiguous runs of centres that begin at ``starts``."""
        C = np.ascontiguousarray(C, dtype=np.float32)
        n = X.shape[0] if rows is None else rows.size
        labels = np.empty(n, dtype=np.int64)
        upper = np.empty(n, dtype=np.float64)
        group_lower = np.empty((n, starts.size), dtype=np.float32)
        block = max(1, min(_ASSIGN_ROWS, _BLOCK_BYTES // (_F32 * C.shape[0])))
        ends = np.r_[starts[1:], C.shape[0]].astype(np.int64)
        for start in range(0, n, block):
            part = X[start:start + block] if rows is None else X[rows[start:start + block]]
            stop = start + len(part)
            _reduce_rows(self._sq_distances(np.ascontiguousarray(part), C), starts.astype(np.int64), ends,
                         labels[start:stop], upper[start:stop], group_lower[start:stop])
        return labels, upper, group_lower


_REDUCE = None


def _reduce_rows(D, starts, ends, labels, upper, group_lower) -> None:
    """Per row of squared distances ``D``: the nearest centre, the distance to it and, per group, the distance to
    the nearest other centre of the group (a parallel numba pass over the block; written into the outputs)."""
    global _REDUCE
    if _REDUCE is None:
        import numba

        @numba.njit(parallel=True, cache=True)
        def reduce_rows(D, starts, ends, labels, upper, group_lower):
            for r in numba.prange(D.shape[0]):
                best, arg = np.inf, 0
                for c in range(D.shape[1]):
                    if D[r, c] < best:
                        best, arg = D[r, c], c
                labels[r] = arg
                upper[r] = np.sqrt(max(best, 0.0))
                for g in range(starts.shape[0]):
                    low = np.inf
                    for c in range(starts[g], ends[g]):
                        if c != arg and D[r, c] < low:
                            low = D[r, c]
                    group_lower[r, g] = np.sqrt(max(low, 0.0))

        _REDUCE = reduce_rows
    _REDUCE(D, starts, ends, labels, upper, group_lower)


def _centre_groups(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Yinyang's groups: about K / :data:`GROUP_SIZE` groups of nearby centres (a few K-Means iterations on the
    centres); (an order of the centres that makes each group contiguous, the index where each group starts).
    The groups only decide which points are searched, never the result."""
    k = C.shape[0]
    n_groups = max(1, k // GROUP_SIZE)
    if n_groups == 1:
        return np.arange(k), np.zeros(1, dtype=np.int64)
    with warnings.catch_warnings():  # duplicate starting centres make fewer distinct groups: harmless here
        warnings.simplefilter("ignore", ConvergenceWarning)
        grouping = skc.KMeans(n_groups, n_init=1, max_iter=5, random_state=0).fit(np.asarray(C, dtype=np.float64))
    groups = grouping.labels_
    order = np.argsort(groups, kind="stable")
    present = groups[order]
    return order, np.flatnonzero(np.r_[True, present[1:] != present[:-1]])


_BOUNDS = None


def _update_bounds(X, C, starts, upper, labels, moved, bounds, slack, margin):
    """Move every point's bounds by how far the centres moved (the upper bound by its own centre's move, the
    lower ones by :class:`_LowerBounds`' offsets); where they no longer prove that the point keeps its centre,
    recompute the upper bound exactly and check again. Returns, per point, the number of groups it must search
    (0: it provably stays; its own group counts for the others). One parallel numba pass that reads a point's
    group bounds only when its global bound fails."""
    global _BOUNDS
    if _BOUNDS is None:
        import numba

        @numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
        def update(X, C, group_of, upper, labels, moved, stored, offset, glob, glob_offset, slack, margin, out):
            for i in numba.prange(upper.shape[0]):
                own = labels[i]
                u = upper[i] + moved[own]
                out[i] = 0
                if u < (glob[i] - glob_offset) * (1 - slack) - margin:  # Yinyang's global filter
                    upper[i] = u
                    continue
                low = np.inf
                for g in range(stored.shape[1]):
                    low = min(low, stored[i, g] - offset[g])
                glob[i] = low + glob_offset  # the tightest global bound the group bounds give
                if u >= low * (1 - slack) - margin:  # the bounds cross: tighten the upper one
                    acc = 0.0
                    for j in range(X.shape[1]):
                        t = np.float64(X[i, j]) - np.float64(C[own, j])
                        acc += t * t
                    u = np.sqrt(acc)
                    if u >= low * (1 - slack) - margin:
                        n_open = 0
                        for g in range(stored.shape[1]):
                            if g == group_of[own] or (stored[i, g] - offset[g]) * (1 - slack) - margin <= u:
                                n_open += 1
                        out[i] = n_open
                upper[i] = u

        _BOUNDS = update
    k = C.shape[0]
    group_of = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, k]))
    out = np.empty(upper.shape[0], dtype=np.int32)
    _BOUNDS(X, C, group_of, upper, labels, moved, bounds.stored, bounds.offset, bounds.glob, bounds.glob_offset,
            slack, margin, out)
    return out


class _LowerBounds:
    """Yinyang's lower bounds without a pass over all of them per iteration.

    Per point and group of centres, a lower bound on the distance to any centre of the group other than the
    point's own; it drops each iteration by the group's largest centre move (its drift). Instead of lowering
    N x groups values, each group keeps its total drift (``offset``) and a bound is stored as its value plus
    the group's offset at the time: value now = stored - offset. One more bound per point, the smallest of
    its group bounds, drops by the largest drift of any group (``glob``, with ``glob_offset``): a point whose
    upper bound stays below it keeps its centre without its group bounds being read (Ding et al. 2015's
    global filter). At 1M x 768 and K=1000 the pass over all group bounds (400 MB read and written per
    iteration) took 19 of 188 s. Stored as float32, value + offset is rounded by up to 6e-8 of itself; the
    offset grows by at most about twice the largest point norm per iteration, so that error stays inside the
    bounds' absolute margin (about 1.4e-3 of the largest norm) for thousands of iterations.
    """

    def __init__(self, group_lower: np.ndarray):
        self.stored = np.ascontiguousarray(group_lower, dtype=np.float32)
        self.offset = np.zeros(group_lower.shape[1])
        self.glob = self.stored.min(axis=1).astype(np.float64)
        self.glob_offset = 0.0

    def drift(self, drift: np.ndarray) -> None:
        """The centres moved: every group's bounds drop by its drift."""
        self.offset += drift
        self.glob_offset += float(drift.max())

    def set(self, rows: np.ndarray, group_lower: np.ndarray) -> None:
        """Fresh bounds (current values) for ``rows``."""
        self.stored[rows] = group_lower + self.offset
        self.glob[rows] = group_lower.min(axis=1) + self.glob_offset


_NEAR = None


def _search_near(X, C, starts, rows, labels, upper, bounds, moved, drift, slack, margin) -> np.ndarray:
    """Yinyang's local search for ``X[rows]`` (their bounds just moved by ``moved``, their upper bound exact):
    distances only to the centres that could be nearer than the best found so far, by their group's bound
    before the move less their own move; updates ``upper`` and the lower ``bounds`` of those rows in place and
    returns their new labels. A parallel numba loop: per distance slower than a BLAS product, so it pays
    only when few groups are left to search (see ``lloyd``)."""
    global _NEAR
    if _NEAR is None:
        import numba

        # reassociation lets the distance loop vectorise; no 'nnan'/'ninf': empty groups' bounds are inf
        @numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
        def near(X, C, starts, ends, group_of, rows, labels, upper, stored, offset, glob, glob_offset, moved, drift,
                 slack, margin, out):
            n_groups = starts.shape[0]
            for t in numba.prange(rows.shape[0]):
                i = rows[t]
                own = labels[i]
                own_group = group_of[own]
                second = np.empty(n_groups, dtype=np.float32)
                best, best_c, best_g = upper[i], own, own_group
                for g in range(n_groups):
                    bound = stored[i, g] - offset[g]
                    if g != own_group and bound * (1 - slack) - margin > best:
                        continue  # every centre of g is farther than the best so far
                    before = bound + drift[g]  # the group's bound before the centres moved
                    m1, m2, skipped = np.inf, np.inf, np.inf
                    for c in range(starts[g], ends[g]):
                        if c == own:
                            dist = upper[i]
                        else:
                            cb = before - moved[c]
                            if cb * (1 - slack) - margin > best:
                                skipped = min(skipped, cb)
                                continue
                            acc = np.float32(0.0)
                            for j in range(X.shape[1]):
                                d = X[i, j] - C[c, j]
                                acc += d * d
                            dist = np.sqrt(acc)
                        if dist < m1:
                            m2, m1 = m1, dist
                        elif dist < m2:
                            m2 = dist
                        if dist < best:
                            best, best_c, best_g = dist, c, g
                    stored[i, g] = min(m1, skipped) + offset[g]
                    second[g] = min(m2, skipped)
                stored[i, best_g] = second[best_g] + offset[best_g]  # the new own centre bounds nothing
                upper[i] = best
                out[t] = best_c
                low = np.inf
                for g in range(n_groups):
                    low = min(low, stored[i, g] - offset[g])
                glob[i] = low + glob_offset

        _NEAR = near
    k = C.shape[0]
    ends = np.r_[starts[1:], k].astype(np.int64)
    group_of = np.repeat(np.arange(starts.size), ends - starts)
    out = np.empty(rows.size, dtype=np.int64)
    _NEAR(X, np.ascontiguousarray(C, dtype=np.float32), starts.astype(np.int64), ends, group_of,
          rows.astype(np.int64), labels, upper, bounds.stored, bounds.offset, bounds.glob, bounds.glob_offset, moved,
          drift, np.float32(slack), np.float32(margin), out)
    return out


_OWN_DISTANCE = None


def _distance_to(X: np.ndarray, C: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Distance of each ``X[rows]`` to its centre ``C[labels]``, accumulated in float64 (a parallel numba loop:
    no N x D temporaries, and as fast as reading the rows)."""
    global _OWN_DISTANCE
    if _OWN_DISTANCE is None:
        import numba

        @numba.njit(parallel=True, cache=True)
        def own_distance(X, C, rows, labels, out):
            for i in numba.prange(rows.shape[0]):
                r, c = rows[i], labels[i]
                acc = 0.0
                for j in range(X.shape[1]):
                    t = np.float64(X[r, j]) - np.float64(C[c, j])
                    acc += t * t
                out[i] = np.sqrt(acc)

        _OWN_DISTANCE = own_distance
    out = np.empty(rows.size)
    _OWN_DISTANCE(X, np.ascontiguousarray(C), np.asarray(rows, dtype=np.int64), np.asarray(labels, dtype=np.int64),
                  out)
    return out


def _centre_sums(X: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-centre sums (float64) and counts of the points assigned to each centre."""
    import scipy.sparse as sp

    sums = np.zeros((k, X.shape[1]), dtype=np.float64)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    for start in range(0, X.shape[0], _ASSIGN_ROWS):
        lab = labels[start:start + _ASSIGN_ROWS]
        M = sp.csr_matrix((np.ones(lab.size, dtype=np.float32), (lab, np.arange(lab.size))), shape=(k, lab.size))
        sums += M @ X[start:start + _ASSIGN_ROWS]
    return sums, counts


def _move(sums: np.ndarray, counts: np.ndarray, X: np.ndarray, rows: np.ndarray, old: np.ndarray, new: np.ndarray):
    """Points ``rows`` change centre from ``old`` to ``new``: update the sums and counts in place."""
    x = X[rows].astype(np.float64)
    np.subtract.at(sums, old, x)
    np.add.at(sums, new, x)
    np.subtract.at(counts, old, 1.0)
    np.add.at(counts, new, 1.0)


_SLACK = 1e-4  # a bound must win by this relative margin: float32 distances are not exact


def _mean_variance(X: np.ndarray) -> float:
    """``np.mean(np.var(X, axis=0))`` in float64, in blocks: no N x D float64 temporary (6 GiB at 1M x 768)."""
    from zsclust.cluster._gpu import host_tensor
    from zsclust.cluster._torch_kmeans import mean_variance

    return mean_variance(host_tensor(X))


def lloyd(X: np.ndarray, centers: np.ndarray, *, max_iter: int, tol: float, assign: _Assigner, verbose_n: int,
          desc: str = "k-means (faiss)"):
    """Lloyd's algorithm from ``centers`` with scikit-learn's stopping rule; (centres, labels, inertia, n_iter).

    Each assignment step skips the points that provably keep their centre (Yinyang K-Means' global filter,
    Ding et al. 2015: an upper bound on the distance to their own centre and, per group of nearby centres, a
    lower bound on the distance to any other centre of the group, moved by how far the centres moved): the
    same assignments as a full search (up to float32 ties), most points skipped once the centres settle.
    """
    k = centers.shape[0]
    tol_abs = _mean_variance(X) * tol
    order, starts = _centre_groups(centers)  # centres are kept in group order inside the loop
    C = np.asarray(centers, dtype=np.float64)[order]
    # float32 squared distances (|x|^2 + |c|^2 - 2 x.c) may be off by about eps * (|x|^2 + |c|^2): a bound
    # must clear that margin (and a relative one) before a point is skipped
    norm2 = max(float(np.einsum("ij,ij->i", X[i:i + _ASSIGN_ROWS], X[i:i + _ASSIGN_ROWS], dtype=np.float64).max())
                for i in range(0, X.shape[0], _ASSIGN_ROWS))
    margin = float(np.sqrt(16 * np.finfo(np.float32).eps * max(norm2, float((C ** 2).sum(axis=1).max()))))
    labels, upper, group_lower = assign.search(X, C, starts)
    bounds = _LowerBounds(group_lower)
    del group_lower
    sums, counts = _centre_sums(X, labels, k)  # kept up to date as points move
    n_iter = 0
    with bar(max_iter, desc, verbose_n, unit="iter") as progress:
        for n_iter in range(1, max_iter + 1):
            s, c = sums, counts
            empty = np.flatnonzero(counts == 0)
            if empty.size:  # scikit-learn: the points farthest from their centres move to the empty clusters
                s, c = sums.copy(), counts.copy()
                far = np.argsort(upper)[::-1][:empty.size]
                _move(s, c, X, far, labels[far], empty)
            new = s / np.maximum(c, 1.0)[:, None]
            moved = np.sqrt(((new - C) ** 2).sum(axis=1))
            shift = float((moved ** 2).sum())
            C = new
            C32 = C.astype(np.float32)
            progress.update(1)
            # assignment with the new centres: only points whose bounds cross are searched again
            drift = np.maximum.reduceat(moved, starts)
            bounds.drift(drift)
            n_open = _update_bounds(X, C32, starts, upper, labels, moved, bounds, _SLACK, margin)
            search = np.flatnonzero(n_open)
            changed = 0
            if search.size:
                if not assign.gpu and n_open[search].mean() <= LOCAL_SEARCH_MAX * starts.size:
                    new_labels = _search_near(X, C32, starts, search, labels, upper, bounds, moved, drift, _SLACK,
                                              margin)
                else:
                    new_labels, upper[search], group_lower = assign.search(X, C32, starts, search)
                    bounds.set(search, group_lower)
                moving = new_labels != labels[search]
                changed = int(moving.sum())
                if changed:
                    rows = search[moving]
                    _move(sums, counts, X, rows, labels[rows], new_labels[moving])
                    labels[rows] = new_labels[moving]
            if changed == 0 or shift <= tol_abs:  # strict convergence, or scikit-learn's tolerance
                break
    C32 = C.astype(np.float32)
    d_own = _distance_to(X, C32, np.arange(X.shape[0]), labels)
    centres = np.empty_like(C32)
    centres[order] = C32
    return centres, order[labels], float((d_own ** 2).sum()), n_iter


class KMeansBackendMixin(BackendMixin):
    """``backend`` for :class:`~zsclust.cluster.KMeansClusterer` (see the module docstring)."""

    _zs_extra_params = {"backend": "auto"}
    _parameter_constraints: dict = {**skc.KMeans._parameter_constraints, "backend": [StrOptions(set(BACKENDS))]}
    _zs_backend_known_answers = {"kmeans (torch)": {"n_clusters": 4, "random_state": 0, "backend": "torch"},
                                 **({"kmeans (faiss)": {"n_clusters": 4, "random_state": 0, "backend": "faiss"}}
                                    if faiss_available() else {})}

    def validate_config(self) -> None:
        super().validate_config()
        if self.backend == "faiss" and not faiss_available():
            import_faiss()  # raises the install hint
        if self.backend in ("faiss", "torch") and callable(self.init):
            raise ConfigError(f"{self._display_name()}: backend={self.backend!r} takes init 'k-means++', 'random' or "
                              "an array of centres, not a callable.")

    def _choose_backend(self, n: int, d: int) -> str:
        from zsclust.cluster._gpu import cuda_available, gpu_setting, torch_device, want_gpu

        if self.backend not in ("auto", "cuml"):
            return self.backend
        if self.backend == "auto" and callable(self.init):  # a callable start: scikit-learn alone calls it
            return "sklearn"
        if self.backend == "auto" and gpu_setting() != "off" and cuda_available():
            from zsclust.cluster._torch_kmeans import fits_device

            k = int(self.get_params().get("n_clusters") or 8)
            if fits_device(torch_device(), n, d, k):
                return "torch"  # the study's algorithm on the GPU, with nothing more to install
        if want_gpu(self.backend, self._display_name()):
            return "cuml"
        return "faiss" if n >= FAISS_FROM and faiss_available() else "sklearn"

    def _backend_fit_memory(self, n: int, d: int, reference) -> tuple[int, str]:
        backend = self._choose_backend(n, d)
        if backend == "sklearn":
            return reference(n, d)
        k = int(self.get_params().get("n_clusters") or 8)
        if backend == "faiss":
            # a float32 copy of X, labels and bounds (upper, global, one per group of centres), one block of
            # distances and one float64 block for the means, the centres
            groups = max(1, k // GROUP_SIZE)
            return (n * d * _F32 + n * (24 + groups * _F32) + _BLOCK_BYTES + _ASSIGN_ROWS * d * _F64 + 4 * k * d * _F64,
                    "faiss k-means (linear in N)")
        if backend == "torch":
            from zsclust.cluster import _torch_kmeans
            from zsclust.cluster._gpu import torch_device

            if torch_device().type == "cuda":  # the device's memory is checked when the fit starts
                return n * d * _F32 + n * 16, "torch k-means on the GPU (host: the float32 points and the labels)"
            return _torch_kmeans.device_bytes(n, d, k), "torch k-means on the CPU (linear in N)"
        return n * d * _F32, "cuML k-means (host copy; GPU memory not counted)"

    def _fit_backend(self, X: np.ndarray, fit_params: dict) -> str:
        """Sample weights only scikit-learn takes: auto goes there with them, another backend says so."""
        if fit_params.get("sample_weight") is None:
            return self._choose_backend(*X.shape)
        backend = "sklearn" if self.backend == "auto" else self._choose_backend(*X.shape)
        if backend != "sklearn":
            raise ConfigError(f"{self._display_name()}: backend={backend!r} does not take sample_weight; use "
                              "backend: sklearn.")
        return backend

    def _set_fitted(self, X, centers, labels, inertia, n_iter) -> None:
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        self.cluster_centers_ = np.asarray(centers, dtype=X.dtype if X.dtype in (np.float32, np.float64) else np.float64)
        self.labels_ = np.asarray(labels, dtype=np.int32)
        self.inertia_ = float(inertia)
        self.n_iter_ = int(n_iter)
        self.n_features_in_ = X.shape[1]
        self._n_features_out = self.cluster_centers_.shape[0]
        self._n_threads = _openmp_effective_n_threads()

    def _n_starts(self) -> int:
        """``n_init`` as scikit-learn reads it: one start for given centres; 'auto' is one k-means++ start or ten
        random ones."""
        if isinstance(self.init, np.ndarray) or hasattr(self.init, "__array__"):
            return 1
        if isinstance(self.n_init, int):
            return self.n_init
        return 10 if self.init == "random" else 1

    def _seeded_generator(self) -> np.random.Generator:
        return np.random.default_rng(check_random_state(self.random_state).randint(2**31 - 1))

    def _fit_torch(self, X: np.ndarray) -> None:
        from zsclust.cluster import _torch_kmeans

        self._set_fitted(X, *_torch_kmeans.fit(
            X, n_clusters=int(self.n_clusters), init=self.init, n_init=self._n_starts(), max_iter=int(self.max_iter),
            tol=float(self.tol), rng=self._seeded_generator(), owner=self._display_name(),
            sample_per_cluster=INIT_SAMPLE_PER_CLUSTER))

    def _fit_faiss(self, X: np.ndarray) -> None:
        faiss = import_faiss()
        Xf = np.ascontiguousarray(X, dtype=np.float32)
        n, d = Xf.shape
        k = int(self.n_clusters)
        rng = self._seeded_generator()
        gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
        assign = _Assigner(faiss, d, gpu)
        n_init = self._n_starts()
        best = None
        with stage(f"k-means (faiss{', GPU' if gpu else ''}): {n:,} x {d}, K={k}, {n_init} start(s)", n):
            for _ in range(n_init):
                if isinstance(self.init, str):
                    m = min(n, INIT_SAMPLE_PER_CLUSTER * k)
                    refine = n >= REFINE_FROM * m
                    sample = Xf[np.sort(rng.choice(n, m, replace=False))] if m < n and (
                        refine or self.init == "k-means++") else Xf
                    if self.init == "k-means++":
                        start = kmeans_plusplus(sample, k, rng)
                    else:  # random
                        start = Xf[rng.choice(n, k, replace=False)]
                    if refine:  # see the module docstring: far fewer passes over all the points
                        start = lloyd(sample, start, max_iter=int(self.max_iter), tol=float(self.tol), assign=assign,
                                      verbose_n=m, desc="k-means (faiss, on the start's sample)")[0]
                else:
                    start = np.asarray(self.init, dtype=np.float32)
                    if start.shape != (k, d):
                        raise ConfigError(f"{self._display_name()}: init has shape {start.shape}, expected ({k}, {d}).")
                fitted = lloyd(Xf, start, max_iter=int(self.max_iter), tol=float(self.tol), assign=assign,
                               verbose_n=n)
                if best is None or fitted[2] < best[2]:
                    best = fitted
        self._set_fitted(X, *best)

    def _fit_cuml(self, X: np.ndarray) -> None:  # pragma: no cover - needs a GPU
        from cuml.cluster import KMeans

        from zsclust.cluster._gpu import to_numpy

        init = "scalable-k-means++" if self.init == "k-means++" else self.init
        model = KMeans(n_clusters=int(self.n_clusters), init=init, n_init=self.n_init if isinstance(self.n_init, int)
                       else 1, max_iter=int(self.max_iter), tol=float(self.tol),
                       random_state=check_random_state(self.random_state).randint(2**31 - 1))
        with stage(f"k-means (cuML): {X.shape[0]:,} x {X.shape[1]}, K={self.n_clusters}", X.shape[0]):
            model.fit(np.asarray(X, dtype=np.float32))
        self._set_fitted(X, to_numpy(model.cluster_centers_), to_numpy(model.labels_), model.inertia_, model.n_iter_)
