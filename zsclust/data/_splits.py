"""Carving train/val/test out of native splits, reproducibly, and recording how it was done.

As in the study (Lowe et al. 2024), ``val`` is a stratified, seeded subset of ``train`` the same size as
``test``; hyperparameters are tuned on it so the test set is never looked at. ``train`` stays the whole
native train split (val is a subset of it). Datasets with a single unsplit pool first get a test split
carved with a fixed seed, so the evaluation set does not move when ``--seed`` changes.
"""

from __future__ import annotations

from zsclust._atomic import atomic_write_json

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from zsclust.errors import SplitError


def indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()


def record_sha256(record: dict) -> str:
    """Digest of a split record (canonical JSON), used in the dataset fingerprint."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def carve(labels: np.ndarray, pool: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, str]:
    """Pick ``n`` positions of ``pool``, stratified by their labels; returns (sorted picks, strategy).

    Classes with a single member in the pool cannot be split, so they always stay out of the carved
    part (strategy ``stratified``, ``singletons_kept`` noted by the caller). When stratification is
    impossible (fewer picks than classes, or too few multi-member samples) it falls back to a seeded
    uniform random pick, with a warning: strategy ``random``.
    """
    from sklearn.model_selection import train_test_split  # here: scikit-learn and pandas take 0.5 s to import

    pool = np.asarray(pool, dtype=np.int64)
    if not 0 < n < len(pool):
        raise SplitError(f"cannot carve {n} of {len(pool)} samples")
    pool_labels = labels[pool]
    _, inverse, counts = np.unique(pool_labels, return_inverse=True, return_counts=True)
    multi = pool[counts[inverse] >= 2]
    try:
        _, picked = train_test_split(multi, test_size=n, stratify=labels[multi], random_state=seed)
        return np.sort(picked), "stratified"
    except ValueError as e:
        warnings.warn(f"Stratified carving of {n} of {len(pool)} samples is impossible ({e}); using a"
                      f" seeded random subset instead.", stacklevel=3)
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(pool, size=n, replace=False)), "random"


def carve_test(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Split one unsplit pool into (train, test) positions; the record describes the test carving."""
    n_all = len(labels)
    n_test = int(round(n_all * fraction))
    if n_all < 2 or not 0 < n_test < n_all:
        raise SplitError(f"cannot carve a test split of fraction {fraction:.3g} from {n_all} samples")
    test, strategy = carve(labels, np.arange(n_all), n_test, seed)
    train = np.setdiff1d(np.arange(n_all), test, assume_unique=True)
    record = {
        "source_split": "all",
        "seed": seed,
        "size": int(len(test)),
        "source_size": n_all,
        "fraction": fraction,
        "strategy": strategy,
        "singletons": "kept in train",
        "indices_sha256": indices_sha256(test),
    }
    return train, test, record


def carve_val(labels: np.ndarray, train: np.ndarray, test_size: int, seed: int,
              name: str) -> tuple[np.ndarray, dict]:
    """Carve val from the train positions: as large as test, but at most half of train (warned)."""
    n_train = len(train)
    size, capped = test_size, False
    if size > n_train // 2:
        size, capped = n_train // 2, True
        warnings.warn(f"Dataset '{name}': train has {n_train} samples, too few to carve a val split as"
                      f" large as test ({test_size}); val uses half of train ({size}) instead.",
                      stacklevel=3)
    if size < 1:
        raise SplitError(f"Dataset '{name}': cannot carve a val split from a train split of {n_train}.")
    val, strategy = carve(labels, train, size, seed)
    record = {
        "source_split": "train",
        "seed": seed,
        "size": int(size),
        "source_size": int(n_train),
        "requested_size": int(test_size),
        "capped": capped,
        "strategy": strategy,
        "singletons": "kept in train only",
        "indices_sha256": indices_sha256(val),
    }
    return val, record


def save_split_record(dataset, path: str | os.PathLike) -> Path:
    """Write how ``dataset``'s split was made, with its indices, to ``path`` as JSON (atomically).

    ``indices`` are positions in the native split named by ``native_split``. A split that was not carved
    gets a record with strategy ``native``. The file is written to a temporary name and renamed, so a
    crash never leaves a half-written record behind.
    """
    path = Path(path)
    record = dict(dataset.split_record) if dataset.split_record is not None else {
        "dataset": dataset.name, "split": dataset.split, "strategy": "native",
        "size": len(dataset)}
    record["labels_sha256"] = indices_sha256(dataset.labels)
    record["indices"] = [int(i) for i in dataset.indices]
    atomic_write_json(path, record, indent=1)
    return path


def load_split_record(path: str | os.PathLike) -> dict:
    """Read a record written by :func:`save_split_record`."""
    with open(path) as f:
        return json.load(f)
