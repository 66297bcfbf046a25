"""K-Means in PyTorch: the study's algorithm (greedy k-means++, Lloyd, scikit-learn's stopping rule) on a GPU.

``backend: torch`` needs nothing beyond the torch zsclust already installs, so K-Means runs on a CUDA device
wherever the embeddings were computed, without RAPIDS or faiss-gpu. It is scikit-learn's Lloyd, step for
step, in float32 on the device:

- Start: greedy k-means++ (2 + log K candidates per step, the one that lowers the potential most) on a
  seeded subsample of at most :data:`~zsclust.cluster._faiss.INIT_SAMPLE_PER_CLUSTER` points per cluster,
  drawn from NumPy's generator so a seed gives the same start on the CPU and on the GPU; or ``'random'``, or
  an array of centres. ``n_init`` starts, the lowest inertia kept.
- Data: centred on its mean first, as scikit-learn does (the starts too; the mean is added back to the
  centres): far from the origin, |x|^2 would swamp the float32 differences between nearby centres.
- Iteration: every point to the centre with the smallest ``|c|^2 - 2 x.c`` (scikit-learn's argmin; one
  product per block of rows), each centre to its points' mean; a cluster left empty takes the point
  farthest from its centre (scikit-learn's choice and order).
- Stop: labels unchanged, or total squared centre shift at most ``tol`` times the mean feature variance, or
  ``max_iter``; then the labels of the final centres and the exact inertia (float64).

Matrix products run at full float32 precision whatever ``torch.set_float32_matmul_precision`` says (TF32
would move points between near-tied centres). On CUDA the centre sums are products with the block's
one-hot label matrix, accumulated in float64 across blocks: unlike ``index_add_``'s atomics they give the
same bits on every run. Unlike the faiss backend there are no bounds that skip settled points: on a GPU a
full pass over 1M x 768 points and 1000 centres is a few tens of milliseconds.

Where it runs: ``auto`` picks it when torch sees a CUDA device with room for the fit (``ZSCLUST_GPU=off``
keeps the CPU); asked for by name it runs on CUDA when present, on the CPU otherwise (exact, but without
faiss's bounds it is slower there than the faiss backend at large N).
"""

from __future__ import annotations

import math

import numpy as np

from zsclust.cluster import _gpu
from zsclust.cluster._gpu import DEVICE_HEADROOM, full_float32_products, torch_device
from zsclust.cluster._progress import bar, stage
from zsclust.errors import ConfigError, MemoryGuardError

_BLOCK_BYTES = 256 * 2**20
"""Bytes of one block of point-to-centre distances (and of its one-hot matrix on CUDA)."""


def _block_rows(n: int, k: int) -> int:
    return max(1, min(n, _BLOCK_BYTES // (4 * max(k, 1))))


def _sq_distances(Xb, x_sq, C, c_sq):
    """Squared distances (rows of ``Xb``, centres), float32, clipped at 0."""
    import torch

    d = torch.addmm(c_sq[None, :], Xb, C.T, alpha=-2.0)
    d += x_sq[:, None]
    return d.clamp_(min=0)


def assign(X, C):
    """Each row's nearest centre: the argmin of ``|c|^2 - 2 x.c`` (as scikit-learn; ``|x|^2`` would only add
    rounding), in blocks."""
    import torch

    n, k = X.shape[0], C.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=X.device)
    c_sq = (C * C).sum(1)
    step = _block_rows(n, k)
    for s in range(0, n, step):
        labels[s:s + step] = torch.addmm(c_sq[None, :], X[s:s + step], C.T, alpha=-2.0).argmin(dim=1)
    return labels


def own_sq_distances(X, C, labels):
    """Each row's squared distance to its own centre, accumulated in float64, in blocks."""
    import torch

    n = X.shape[0]
    out = torch.empty(n, dtype=torch.float64, device=X.device)
    step = _block_rows(n, 2 * X.shape[1])
    for s in range(0, n, step):
        out[s:s + step] = ((X[s:s + step].to(torch.float64) - C[labels[s:s + step]].to(torch.float64)) ** 2).sum(1)
    return out


def centre_sums(X, labels, k: int):
    """Per-centre sums (float64) and counts of the points assigned to each centre; deterministic on CUDA."""
    import torch

    n = X.shape[0]
    counts = torch.bincount(labels, minlength=k).to(torch.float64)
    sums = torch.zeros((k, X.shape[1]), dtype=torch.float64, device=X.device)
    if X.device.type != "cuda":  # sequential on the CPU: index_add_ is deterministic there
        step = _block_rows(n, 2 * X.shape[1])
        for s in range(0, n, step):
            sums.index_add_(0, labels[s:s + step], X[s:s + step].to(torch.float64))
        return sums, counts
    step = _block_rows(n, k)
    for s in range(0, n, step):
        lab = labels[s:s + step]
        one_hot = torch.zeros((k, lab.numel()), dtype=torch.float32, device=X.device)
        one_hot[lab, torch.arange(lab.numel(), device=X.device)] = 1.0
        sums += (one_hot @ X[s:s + step]).to(torch.float64)
    return sums, counts


def _relocate_empty(X, C, labels, sums, counts) -> None:
    """scikit-learn's ``_relocate_empty_clusters_dense``: the points farthest from their centres (exact
    distances, NumPy's ``argpartition`` for the same order) start the empty clusters, in place; nothing
    moves when every point sits on its centre."""
    import torch

    empty = torch.nonzero(counts == 0).flatten()
    if not empty.numel():
        return
    dist = own_sq_distances(X, C, labels).cpu().numpy()
    if dist.max() == 0:  # more clusters than distinct points
        return
    n_empty = empty.numel()
    far = torch.as_tensor(np.argpartition(dist, -n_empty)[:-n_empty - 1:-1].copy(), device=X.device)
    x = X[far].to(torch.float64)
    for i in range(n_empty):  # in scikit-learn's order: which far point starts which empty cluster
        old = labels[far[i]]
        sums[old] -= x[i]
        counts[old] -= 1.0
        sums[empty[i]], counts[empty[i]] = x[i], 1.0


def mean_variance(X) -> float:
    """``np.mean(np.var(X, axis=0))`` in float64 (scikit-learn's ``tol`` is relative to it): in blocks on the
    device, or two parallel numba passes over a CPU tensor (torch's float64 reductions on the CPU took 8.7 s
    for 1M x 768 on two cores, the numba passes 0.25 s)."""
    import torch

    n = X.shape[0]
    if X.device.type == "cpu":
        return _cpu_mean_variance(X.numpy())
    step = _block_rows(n, 2 * X.shape[1])
    mean = sum(X[s:s + step].sum(0, dtype=torch.float64) for s in range(0, n, step)) / n
    sq = sum(((X[s:s + step].to(torch.float64) - mean) ** 2).sum(0) for s in range(0, n, step))
    return float((sq / n).mean())


_COLUMN_SUMS = None
_CHUNKS = 64  # fixed: the sums do not depend on the number of threads


def _cpu_mean_variance(X: np.ndarray) -> float:
    global _COLUMN_SUMS
    if _COLUMN_SUMS is None:
        import numba

        @numba.njit(parallel=True, cache=True)
        def column_sums(X, centre, squares, chunks):
            """Per column: the sum of (x - centre), or of its square, in float64; one chunk of rows per task."""
            n, d = X.shape
            out = np.zeros((chunks, d))
            step = (n + chunks - 1) // chunks
            for c in numba.prange(chunks):
                acc = out[c]
                for i in range(c * step, min(n, (c + 1) * step)):
                    for j in range(d):
                        v = np.float64(X[i, j]) - centre[j]
                        acc[j] += v * v if squares else v
            return out.sum(0)

        _COLUMN_SUMS = column_sums
    n, d = X.shape
    mean = _COLUMN_SUMS(X, np.zeros(d), False, _CHUNKS) / n
    return float((_COLUMN_SUMS(X, mean, True, _CHUNKS) / n).mean())


def kmeans_plusplus(X, n_clusters: int, rng: np.random.Generator, n_local_trials: int | None = None, *,
                    centred: bool = False):
    """Greedy k-means++ centres of ``X`` (a float32 tensor): scikit-learn's procedure, on data centred on its
    mean (a copy, unless ``centred``), its random draws from ``rng`` (NumPy), every step on the device
    without waiting for it. The faiss backend's starts too (on the CPU as fast as NumPy: one implementation)."""
    import torch

    n = X.shape[0]
    mean = None if centred else X.mean(0, dtype=torch.float64).to(X.dtype)
    Xc = X if centred else X - mean
    x_sq = (Xc * Xc).sum(1)
    trials = n_local_trials or 2 + int(math.log(n_clusters))
    first = int(rng.integers(n))
    u = torch.as_tensor(rng.random((n_clusters, trials)), device=X.device)
    anywhere = torch.as_tensor(rng.integers(n, size=(n_clusters, trials)), device=X.device)
    chosen = torch.empty(n_clusters, dtype=torch.int64, device=X.device)
    chosen[0] = first
    closest = _sq_distances(Xc, x_sq, Xc[first:first + 1], x_sq[first:first + 1])[:, 0].to(torch.float64)
    for c in range(1, n_clusters):
        pot = closest.sum()
        cand = torch.searchsorted(torch.cumsum(closest, 0), u[c] * pot).clamp_(max=n - 1)
        cand = torch.where(pot > 0, cand, anywhere[c])  # fewer distinct points than clusters: any point
        d = torch.minimum(_sq_distances(Xc, x_sq, Xc[cand], x_sq[cand]).T.to(torch.float64), closest[None, :])
        best = torch.argmin(d.sum(1))
        chosen[c] = cand[best]
        closest = d[best]
    return X[chosen].clone()


def lloyd(X, centers, *, max_iter: int, tol_abs: float, desc: str = "k-means (torch)"):
    """scikit-learn's Lloyd from ``centers`` (device tensors; ``X`` centred); (centres, labels, inertia, n_iter)."""
    import torch

    n, k = X.shape[0], centers.shape[0]
    C = centers.to(torch.float32).clone()
    previous, strict, n_iter = None, False, 0
    with bar(max_iter, f"{desc}, {X.device.type}", n, unit="iter") as progress:
        for n_iter in range(1, max_iter + 1):
            labels = assign(X, C)
            sums, counts = centre_sums(X, labels, k)
            _relocate_empty(X, C, labels, sums, counts)
            new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], sums).to(torch.float32)
            shift = float(((new.to(torch.float64) - C.to(torch.float64)) ** 2).sum())
            C = new
            progress.update(1)
            if previous is not None and torch.equal(labels, previous):
                strict = True
                break
            if shift <= tol_abs:
                break
            previous = labels
    if not strict:  # the labels of the final centres
        labels = assign(X, C)
    return C, labels, float(own_sq_distances(X, C, labels).sum()), n_iter


def device_bytes(n: int, d: int, k: int) -> int:
    """Memory of a fit where it runs: the centred float32 points, labels and distances, two blocks (distances,
    one-hot labels) and two float64 blocks of rows, centres and sums."""
    return n * d * 4 + n * 24 + 2 * _block_rows(n, k) * k * 4 + 2 * _BLOCK_BYTES + 4 * k * d * 8


def fits_device(device, n: int, d: int, k: int) -> bool:
    return _gpu.fits_on(device, device_bytes(n, d, k))


def check_device_memory(device, n: int, d: int, k: int, owner: str) -> None:
    """Refuse, before copying anything, a fit that would not fit in the CUDA device's free memory."""
    if fits_device(device, n, d, k):
        return
    need = int(device_bytes(n, d, k) * DEVICE_HEADROOM)
    raise MemoryGuardError(
        f"{owner}: backend='torch' needs about {need / 2**30:.1f} GiB of GPU memory for {n:,} x {d} points and "
        f"K={k}, but {_gpu.free_device_bytes(device) / 2**30:.1f} GiB is free on {device}. Use backend: faiss (the CPU, "
        "linear memory), free the GPU, or cluster a subsample.")


def fit(X: np.ndarray, *, n_clusters: int, init, n_init: int, max_iter: int, tol: float, rng: np.random.Generator,
        owner: str, sample_per_cluster: int):
    """K-Means of ``X`` on :func:`torch_device`; (centres, labels, inertia, n_iter) as NumPy, the lowest
    inertia of ``n_init`` starts."""
    import torch

    from zsclust.cluster._gpu import host_tensor

    device = torch_device()
    Xh = np.ascontiguousarray(X, dtype=np.float32)
    n, d = Xh.shape
    k = int(n_clusters)
    check_device_memory(device, n, d, k, owner)
    best = None
    with full_float32_products(), torch.no_grad(), stage(f"k-means (torch, {device}): {n:,} x {d}, K={k}, "
                                                         f"{n_init} start(s)", n):
        Xt = host_tensor(Xh)
        mean = Xt.mean(0, dtype=torch.float64).to(torch.float32).to(device)
        if device.type == "cuda":
            Xt = Xt.to(device)
            Xt -= mean  # the device's copy
        else:
            Xt = Xt - mean  # never the caller's array
        tol_abs = mean_variance(Xt) * tol
        for _ in range(n_init):
            if isinstance(init, str):
                if init == "k-means++":
                    m = min(n, sample_per_cluster * k)
                    sample = Xt[torch.as_tensor(np.sort(rng.choice(n, m, replace=False)), device=device)] \
                        if m < n else Xt
                    start = kmeans_plusplus(sample, k, rng, centred=True)
                else:  # random
                    start = Xt[torch.as_tensor(rng.choice(n, k, replace=False), device=device)]
            else:
                start = torch.as_tensor(np.asarray(init, dtype=np.float32), device=device)
                if tuple(start.shape) != (k, d):
                    raise ConfigError(f"{owner}: init has shape {tuple(start.shape)}, expected ({k}, {d}).")
                start = start - mean
            C, labels, inertia, n_iter = lloyd(Xt, start, max_iter=max_iter, tol_abs=tol_abs)
            if best is None or inertia < best[2]:
                best = (C, labels, inertia, n_iter)
    C, labels, inertia, n_iter = best
    return (C + mean).cpu().numpy(), labels.cpu().numpy(), inertia, n_iter


__all__ = ["assign", "centre_sums", "check_device_memory", "device_bytes", "fit", "fits_device", "kmeans_plusplus",
           "lloyd", "mean_variance", "own_sq_distances"]
