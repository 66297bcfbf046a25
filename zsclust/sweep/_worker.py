"""What a sweep's clustering worker processes run: fit a cell's reductions, then one job at a time.

Workers read embeddings from the cache by fingerprint (torch is never imported here) and log to a
:class:`~zsclust.tracking.RecordingTracker`; the main process writes the recording to MLflow.
"""

from __future__ import annotations

import os
import tempfile

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def init_worker(threads: int) -> None:
    """Share the cores out: each worker's BLAS/OpenMP/numba pools get ``threads`` (before they load)."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)


def _pipeline(spec: dict, tracker=None):
    from omegaconf import OmegaConf

    from .._build import make_pipeline

    cfg = OmegaConf.create(spec["cfg"])
    return make_pipeline(cfg, spec["context"], tracker=tracker, identity=spec["identity"])


def _embeddings(spec: dict):
    from ..embed import EmbeddingCache

    return EmbeddingCache(spec["cache_dir"]).load(spec["fingerprint"])


def prepare_cell(spec: dict) -> None:
    """Fit the reductions of a cell's pending jobs (and its shared spaces) into the reduction cache."""
    _pipeline(spec).prepare(_embeddings(spec), jobs=spec["jobs"])


def cluster_job(spec: dict, job: str, staging_root: str) -> tuple:
    """Run one job (by label); returns (JobResult without predictions, recorded calls, staging dir)."""
    from ..tracking import RecordingTracker

    staging = tempfile.mkdtemp(prefix="job-", dir=staging_root)
    tracker = RecordingTracker(staging)
    pipeline = _pipeline(spec, tracker=tracker)
    [result] = pipeline.run(_embeddings(spec), jobs=[job], progress=False)
    result.labels_pred = None  # already in the recorded predictions.csv; keep the pickle small
    return result, tracker.recording(), staging
