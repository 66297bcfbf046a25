"""K-Means in PyTorch: the study's algorithm (greedy k-means++, Lloyd, scikit-learn's stopping rule) on a GPU.

``backend: torch`` needs nothing beyond the torch zsclust already installs, so K-Means runs on a CUDA device
wherever the embeddings were computed, without RAPIDS or faiss-gpu. It is scikit-learn's Lloyd, step for
step, in float32 on the device:

- Start: greedy k-means++ (2 + log K candidates per step, the one that lowers the potential most) on a
  seeded subsample of at most :data:`~zsclust.cluster._faiss.INIT_SAMPLE_PER_CLUSTER` points per cluster,
  drawn from NumPy's generator so a seed gives the same start on the CPU and on the GPU; or ``'random'``, or
  an array of centres. ``n_init`` starts, the lowest inertia kept.
- Iteration: every point to its nearest centre (one product per block of rows), each centre to its points'
  mean; a cluster left empty takes the point farthest from its centre, as in scikit-learn.
- Stop: labels unchanged, or total squared centre shift at most ``tol`` times the mean feature variance, or
  ``max_iter``; then the labels of the final centres and the exact inertia (float64).

Matrix products run at full float32 precision whatever ``torch.set_float32_matmul_precision`` says (TF32
would move points between near-tied centres). On CUDA the centre sums are products with the block's
one-hot label matrix, accumulated in float64 across blocks: unlike ``index_add_``'s atomics they give the
same bits on every run. Unlike the faiss backend there are no bounds that skip settled points: on a GPU a
full pass over 1M x 768 points and 1000 centres is a few tens of milliseconds.

Where it runs: ``auto`` picks it when torch sees a CUDA device (``ZSCLUST_GPU=off`` keeps the CPU); asked
for by name it runs on CUDA when present, on the CPU otherwise (exact, but without faiss's bounds it is
slower there than the faiss backend at large N).
"""

from __future__ import annotations

import math

import numpy as np

from zsclust.cluster._gpu import full_float32_products, torch_device
from zsclust.cluster._progress import bar, stage
from zsclust.errors import ConfigError, MemoryGuardError

_BLOCK_BYTES = 256 * 2**20
"""Bytes of one block of point-to-centre distances (and of its one-hot matrix on CUDA)."""
_GPU_HEADROOM = 1.25


def _block_rows(n: int, k: int) -> int:
    return max(1, min(n, _BLOCK_BYTES // (4 * max(k, 1))))


def _sq_distances(Xb, x_sq, C, c_sq):
    """Squared distances (rows of ``Xb``, centres), float32, clipped at 0."""
    import torch

    d = torch.addmm(c_sq[None, :], Xb, C.T, alpha=-2.0)
    d += x_sq[:, None]
    return d.clamp_(min=0)


def assign(X, x_sq, C):
    """(nearest centre, squared distance to it) of every row of ``X``, in blocks."""
    import torch

    n, k = X.shape[0], C.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=X.device)
    dist = torch.empty(n, dtype=torch.float32, device=X.device)
    c_sq = (C * C).sum(1)
    step = _block_rows(n, k)
    for s in range(0, n, step):
        best = _sq_distances(X[s:s + step], x_sq[s:s + step], C, c_sq).min(dim=1)
        dist[s:s + step], labels[s:s + step] = best.values, best.indices
    return labels, dist


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


def mean_variance(X) -> float:
    """``np.mean(np.var(X, axis=0))`` in float64, in blocks (scikit-learn's ``tol`` is relative to it)."""
    import torch

    n = X.shape[0]
    step = _block_rows(n, 2 * X.shape[1])
    mean = sum(X[s:s + step].sum(0, dtype=torch.float64) for s in range(0, n, step)) / n
    sq = sum(((X[s:s + step].to(torch.float64) - mean) ** 2).sum(0) for s in range(0, n, step))
    return float((sq / n).mean())


def kmeans_plusplus(X, n_clusters: int, rng: np.random.Generator, n_local_trials: int | None = None, *, x_sq=None):
    """Greedy k-means++ centres of ``X`` (a float32 tensor; ``x_sq`` its rows' squared norms if at hand):
    scikit-learn's procedure, its random draws from ``rng`` (NumPy), every step on the device without waiting
    for it. The faiss backend's starts too (on the CPU: as fast as NumPy there, one implementation)."""
    import torch

    n = X.shape[0]
    if x_sq is None:
        x_sq = (X * X).sum(1)
    trials = n_local_trials or 2 + int(math.log(n_clusters))
    first = int(rng.integers(n))
    u = torch.as_tensor(rng.random((n_clusters, trials)), device=X.device)
    anywhere = torch.as_tensor(rng.integers(n, size=(n_clusters, trials)), device=X.device)
    chosen = torch.empty(n_clusters, dtype=torch.int64, device=X.device)
    chosen[0] = first
    closest = _sq_distances(X, x_sq, X[first:first + 1], x_sq[first:first + 1])[:, 0].to(torch.float64)
    for c in range(1, n_clusters):
        pot = closest.sum()
        cand = torch.searchsorted(torch.cumsum(closest, 0), u[c] * pot).clamp_(max=n - 1)
        cand = torch.where(pot > 0, cand, anywhere[c])  # fewer distinct points than clusters: any point
        d = torch.minimum(_sq_distances(X, x_sq, X[cand], x_sq[cand]).T.to(torch.float64), closest[None, :])
        best = torch.argmin(d.sum(1))
        chosen[c] = cand[best]
        closest = d[best]
    return X[chosen].clone()


def lloyd(X, x_sq, centers, *, max_iter: int, tol_abs: float, desc: str = "k-means (torch)"):
    """scikit-learn's Lloyd from ``centers`` (device tensors); (centres, labels, inertia, n_iter)."""
    import torch

    n, k = X.shape[0], centers.shape[0]
    C = centers.to(torch.float32).clone()
    previous, strict, n_iter = None, False, 0
    with bar(max_iter, f"{desc}, {X.device.type}", n, unit="iter") as progress:
        for n_iter in range(1, max_iter + 1):
            labels, dist = assign(X, x_sq, C)
            sums, counts = centre_sums(X, labels, k)
            empty = torch.nonzero(counts == 0).flatten()
            if empty.numel():  # scikit-learn: the points farthest from their centres start the empty clusters
                far = torch.topk(dist, empty.numel()).indices
                x = X[far].to(torch.float64)
                sums.index_add_(0, labels[far], -x)
                counts.index_add_(0, labels[far], torch.full_like(x[:, 0], -1.0))
                sums[empty], counts[empty] = x, 1.0
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
        labels, _ = assign(X, x_sq, C)
    step = _block_rows(n, 2 * X.shape[1])
    inertia = sum(float(((X[s:s + step].to(torch.float64) - C[labels[s:s + step]].to(torch.float64)) ** 2).sum())
                  for s in range(0, n, step))
    return C, labels, inertia, n_iter


def device_bytes(n: int, d: int, k: int) -> int:
    """Device memory of a fit: the float32 points, two blocks (distances, one-hot), centres and sums."""
    rows = _block_rows(n, k)
    return n * d * 4 + n * 16 + 2 * rows * k * 4 + 4 * k * d * 8


def check_device_memory(device, n: int, d: int, k: int, owner: str) -> None:
    """Refuse, before copying anything, a fit that would not fit in the CUDA device's free memory."""
    if device.type != "cuda":
        return
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    need = int(device_bytes(n, d, k) * _GPU_HEADROOM)
    if need > free:
        raise MemoryGuardError(
            f"{owner}: backend='torch' needs about {need / 2**30:.1f} GiB of GPU memory for {n:,} x {d} points and "
            f"K={k}, but {free / 2**30:.1f} GiB is free on {device}. Use backend: faiss (the CPU, linear memory), "
            "free the GPU, or cluster a subsample.")


def fit(X: np.ndarray, *, n_clusters: int, init, n_init: int, max_iter: int, tol: float, rng: np.random.Generator,
        owner: str, sample_per_cluster: int):
    """K-Means of ``X`` on :func:`torch_device`; (centres, labels, inertia, n_iter) as NumPy, the lowest
    inertia of ``n_init`` starts."""
    import torch

    device = torch_device()
    Xh = np.ascontiguousarray(X, dtype=np.float32)
    n, d = Xh.shape
    k = int(n_clusters)
    check_device_memory(device, n, d, k, owner)
    best = None
    with full_float32_products(), torch.no_grad(), stage(f"k-means (torch, {device}): {n:,} x {d}, K={k}, "
                                                 f"{n_init} start(s)", n):
        Xt = torch.as_tensor(Xh).to(device)
        x_sq = (Xt * Xt).sum(1)
        tol_abs = mean_variance(Xt) * tol
        for _ in range(n_init):
            if isinstance(init, str):
                if init == "k-means++":
                    m = min(n, sample_per_cluster * k)
                    rows = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
                    idx = torch.as_tensor(rows, device=device)
                    start = kmeans_plusplus(Xt[idx], k, rng, x_sq=x_sq[idx])
                else:  # random
                    start = Xt[torch.as_tensor(rng.choice(n, k, replace=False), device=device)]
            else:
                start = torch.as_tensor(np.asarray(init, dtype=np.float32), device=device)
                if tuple(start.shape) != (k, d):
                    raise ConfigError(f"{owner}: init has shape {tuple(start.shape)}, expected ({k}, {d}).")
            C, labels, inertia, n_iter = lloyd(Xt, x_sq, start, max_iter=max_iter, tol_abs=tol_abs)
            if best is None or inertia < best[2]:
                best = (C, labels, inertia, n_iter)
    C, labels, inertia, n_iter = best
    return C.cpu().numpy(), labels.cpu().numpy(), inertia, n_iter


__all__ = ["assign", "centre_sums", "check_device_memory", "device_bytes", "fit", "kmeans_plusplus", "lloyd",
           "mean_variance"]
