"""Hyperparameter search on validation splits: search spaces from YAML, an objective, and Optuna studies
shared by any number of workers and tracked in MLflow.

>>> from zsclust.tune import load_tune_config
>>> cfgs = load_tune_config("tune/default", ["space.clusterer=hdbscan"])
>>> from zsclust.jobs import tune
>>> results = tune(cfgs)            # one StudyResult per study
"""

from zsclust.tune._dashboard import start_dashboard
from zsclust.tune._config import TuneConfig, load_space_group, load_tune_config, parse_embeddings
from zsclust.tune._evaluate import EvaluationResult, evaluate_study, load_study_config
from zsclust.tune._objective import Objective, ValidationSet, load_validation_sets, reads_labels
from zsclust.tune._space import K_KNOWN, Dimension, SearchSpace
from zsclust.tune._study import (
    StudyResult,
    StudyRunner,
    TrialsFailingError,
    default_storage_url,
    open_storage,
    study_status,
)

__all__ = [
    "Dimension",
    "EvaluationResult",
    "K_KNOWN",
    "Objective",
    "SearchSpace",
    "StudyResult",
    "StudyRunner",
    "TrialsFailingError",
    "TuneConfig",
    "ValidationSet",
    "default_storage_url",
    "evaluate_study",
    "load_space_group",
    "load_study_config",
    "load_tune_config",
    "load_validation_sets",
    "open_storage",
    "parse_embeddings",
    "reads_labels",
    "start_dashboard",
    "study_status",
]
