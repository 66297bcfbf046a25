"""The study's weighted kNN probe: train embeddings as the bank, test embeddings as queries.

>>> from zsclust.knn import knn_accuracy
>>> acc = knn_accuracy(train.embeddings, train.labels, test.embeddings, test.labels)  # {1: 0.91, 10: 0.93, ...}

See docs/knn.md for the formula, the choices (ties, unlabelled rows, k beyond the bank) and memory.
"""

from zsclust.knn._probe import (
    DEFAULT_KS,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_TEMPERATURE,
    auto_chunk_size,
    knn_accuracy,
    knn_predict,
)

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_TEMPERATURE",
    "auto_chunk_size",
    "knn_accuracy",
    "knn_predict",
]
