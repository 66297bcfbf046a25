"""The weighted kNN probe of the study (DINO's ``eval_knn.py`` vote), in bounded memory.

For each query its top-k bank neighbours by cosine similarity ``s`` vote for their class with weight
``exp(s / T)``; the prediction is the class with the largest summed vote. Queries are processed in
chunks: one chunk's ``chunk × bank`` similarity block is the only large temporary, every k comes
from the same ``topk(max(ks))`` and the votes of larger ks add to those of smaller ones.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from zsclust.errors import InvalidDataError
from zsclust.knn._inputs import (
    check_features,
    check_ks,
    check_labels,
    check_positive_int,
    check_temperature,
    resolve_device,
    unit_block,
    unit_rows,
)

DEFAULT_KS = (1, 10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
# Bytes one query chunk may use for its similarity block and class votes when chunk_size is None.
DEFAULT_MEMORY_BUDGET = 512 * 2**20


def knn_predict(bank, bank_labels, queries, ks=DEFAULT_KS, temperature: float = DEFAULT_TEMPERATURE,
                chunk_size: int | None = None, device=None,
                memory_budget: int | None = DEFAULT_MEMORY_BUDGET) -> dict[int, np.ndarray]:
    """Predicted class of every query, per k: ``{k: labels}`` with labels drawn from ``bank_labels``.

    bank, queries: ``(n, d)`` float16/32/64 numpy arrays (memmaps welcome) or torch tensors; they are
    L2-normalised here. bank_labels: integer class per bank row; rows with a negative label are
    unlabelled and left out of the bank. A k larger than the labelled bank uses the whole bank (with
    a warning). Vote ties go to the smallest label. chunk_size: queries per chunk; ``None`` picks the
    largest chunk whose similarity block and votes fit in ``memory_budget`` bytes (``None``: 512 MiB).
    device: ``None`` (the bank tensor's device, CPU for numpy), ``"auto"`` (CUDA when available) or a
    torch device.
    """
    return _checked_predict(bank, bank_labels, queries, ks, temperature, chunk_size, device, memory_budget)


def knn_accuracy(bank, bank_labels, queries, query_labels, ks=DEFAULT_KS, temperature: float = DEFAULT_TEMPERATURE,
                 chunk_size: int | None = None, device=None,
                 memory_budget: int | None = DEFAULT_MEMORY_BUDGET) -> dict[int, float]:
    """Top-1 accuracy (a fraction in [0, 1]) of the weighted kNN probe, per k: ``{k: accuracy}``.

    Queries with a negative label (unlabelled) are classified but not scored; a query whose class
    has no labelled bank row counts as wrong. Arguments as in :func:`knn_predict`.
    """
    n_queries = check_features(queries, "queries").shape[0]
    query_labels = check_labels(query_labels, n_queries, "query_labels", "queries")
    scored = query_labels >= 0
    if not scored.any():
        raise InvalidDataError("query_labels: every query is unlabelled (negative label), so there is nothing "
                               "to score; pass the test split's class labels.")
    predictions = _checked_predict(bank, bank_labels, queries, ks, temperature, chunk_size, device, memory_budget)
    truth = query_labels[scored]
    return {k: float(np.mean(pred[scored] == truth)) for k, pred in predictions.items()}


def _checked_predict(bank, bank_labels, queries, ks, temperature, chunk_size, device,
                     memory_budget) -> dict[int, np.ndarray]:
    """Every argument checked (cheap checks first), then the search."""
    ks = check_ks(ks)
    temperature = check_temperature(temperature)
    chunk_size = check_positive_int(chunk_size, "chunk_size", "It is the number of queries per chunk.")
    budget = check_positive_int(memory_budget, "memory_budget", "It is in bytes, e.g. 512 * 2**20.")
    budget = budget or DEFAULT_MEMORY_BUDGET
    bank = check_features(bank, "bank")
    queries = check_features(queries, "queries")
    if queries.shape[1] != bank.shape[1]:
        raise InvalidDataError(f"queries: have {queries.shape[1]} features but the bank has {bank.shape[1]}; "
                               "embed both splits with the same encoder.")
    bank_labels = check_labels(bank_labels, bank.shape[0], "bank_labels", "bank")
    device = resolve_device(device, bank)
    with torch.inference_mode():
        return _predict(bank, bank_labels, queries, ks, temperature, chunk_size, budget, device)


def auto_chunk_size(n_bank: int, n_classes: int, memory_budget: int) -> int:
    """Queries per chunk whose float32 similarity row (n_bank) and vote row (n_classes) fit the budget."""
    return max(1, memory_budget // (4 * (n_bank + n_classes)))


def _predict(bank, bank_labels, queries, ks, temperature, chunk_size, budget, device) -> dict[int, np.ndarray]:
    labelled = bank_labels >= 0
    if not labelled.any():
        raise InvalidDataError(f"bank_labels: all {bank_labels.size} bank rows are unlabelled (negative label); "
                               "the kNN bank needs labelled rows (the train split with its labels).")
    classes, codes = np.unique(bank_labels[labelled], return_inverse=True)
    bank_unit = unit_rows(bank, "bank", device, keep=None if labelled.all() else labelled)
    unit_rows(queries, "queries", device, store=False)  # fail on bad rows before the long search
    n_bank = bank_unit.shape[0]
    effective = {k: min(k, n_bank) for k in ks}
    if any(k > n_bank for k in ks):
        warnings.warn(f"kNN probe: k={[k for k in ks if k > n_bank]} exceeds the {n_bank} labelled bank rows; "
                      f"those ks vote with the whole bank (k={n_bank}).", UserWarning, stacklevel=4)
    steps = sorted(set(effective.values()))
    k_max = steps[-1]
    bank_codes = torch.from_numpy(codes.astype(np.int64)).to(device)
    n_queries = queries.shape[0]
    chunk = min(n_queries, chunk_size or auto_chunk_size(n_bank, len(classes), budget))
    out = {k: np.empty(n_queries, dtype=np.int64) for k in steps}
    for start in range(0, n_queries, chunk):
        stop = min(n_queries, start + chunk)
        similarity = unit_block(queries, start, stop, device) @ bank_unit.T
        top_s, top_i = torch.topk(similarity, k_max, dim=1, largest=True, sorted=True)
        del similarity
        for k, pred in _vote(top_s, bank_codes[top_i], len(classes), steps, temperature).items():
            out[k][start:stop] = pred.cpu().numpy()
    return {k: classes[out[effective[k]]] for k in ks}


def _vote(top_s: torch.Tensor, top_codes: torch.Tensor, n_classes: int, steps: list[int],
          temperature: float) -> dict[int, torch.Tensor]:
    """argmax of the exp(s/T)-weighted class votes of the first k neighbours, for each k in ``steps``.

    The weights are exp((s - s_max)/T): the same ratios (so the same argmax) as exp(s/T), without
    overflow for any T > 0. argmax takes the first maximum, so a tied vote goes to the smallest class.
    """
    weights = torch.exp((top_s - top_s[:, :1]) / temperature)
    votes = torch.zeros((top_s.shape[0], n_classes), dtype=torch.float32, device=top_s.device)
    preds, done = {}, 0
    for k in steps:
        votes.scatter_add_(1, top_codes[:, done:k], weights[:, done:k])
        preds[k] = votes.argmax(dim=1)
        done = k
    return preds
