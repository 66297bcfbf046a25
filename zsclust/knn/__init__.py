"""The study's weighted kNN probe: train embeddings as the bank, test embeddings as queries.

>>> from zsclust.knn import knn_accuracy
>>> acc = knn_accuracy(train.embeddings, train.labels, test.embeddings, test.labels)  # {1: 0.91, 10: 0.93, ...}

See docs/knn.md for the formula, the choices (ties, unlabelled rows, k beyond the bank) and memory.
:func:`run_knn_job` is the probe as a tracked job (one MLflow run per encoder × dataset); ``zsclust knn``
and sweeps with ``sweep.knn: true`` run it.
"""

from zsclust.knn._probe import (
    DEFAULT_KS,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_TEMPERATURE,
    auto_chunk_size,
    knn_accuracy,
    knn_predict,
)
from zsclust.knn._job import BANK_SPLIT, KnnResult, knn_job_key, metric_name, run_knn_job

__all__ = [
    "BANK_SPLIT",
    "KnnResult",
    "DEFAULT_KS",
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_TEMPERATURE",
    "auto_chunk_size",
    "knn_accuracy",
    "knn_job_key",
    "knn_predict",
    "metric_name",
    "run_knn_job",
]
