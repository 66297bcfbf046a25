"""The functions ``import zsclust`` offers a notebook: the same jobs as the commands, from Python objects.

Each builds a config with the one loader (so names, defaults and checks are the commands') and runs the
same code path as its command; nothing here has logic of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any


def load_config(config: str | os.PathLike | None = None, overrides: Sequence[str] = (), *, kind: str = "run"):
    """A resolved config: a file, or the name of one that ships with zsclust (``quickstart``, ``study/offline``,
    ``tune/default``), with ``key=value`` overrides. ``kind`` is ``run``, ``sweep`` or ``tune`` (a tune config
    resolves to one config per study: a list)."""
    from .errors import ConfigError

    if kind == "run":
        from .config import load_config as load

        return load(config, overrides)
    if kind == "sweep":
        from .sweep import load_sweep_config

        return load_sweep_config(config, overrides)
    if kind == "tune":
        from .tune import load_tune_config

        return load_tune_config(config, overrides)
    raise ConfigError(f"kind must be run, sweep or tune, got '{kind}'.")


def embed_split(encoder: str, dataset: str, *, split: str = "test", **options):
    """Embed a dataset split with an encoder (cached, resumable) and return the :class:`~zsclust.embed.EmbeddingSet`.

    ``options`` are :class:`~zsclust.embed.EmbedOptions` fields (``preprocessing``, ``precision``,
    ``devices``, ...) or ``embed()``'s own (``root``, ``weights``, ``seed``, ``download``).
    """
    import dataclasses

    from .embed import EmbedOptions
    from .embed import embed as run_embed

    fields = {f.name for f in dataclasses.fields(EmbedOptions)}
    opts = EmbedOptions(**{k: v for k, v in options.items() if k in fields})
    rest = {k: v for k, v in options.items() if k not in fields}
    return run_embed(encoder, dataset, split=split, options=opts, **rest)


def cluster_embeddings(embeddings, labels=None, *, reducer: Any = "umap50",
                       clusterer: Any = ("ac_k", "kmeans", "hdbscan"), jobs: Mapping | None = None,
                       overrides: Sequence[str] = (), experiment: str | None = None, progress: bool = False):
    """Run jobs on embeddings: an :class:`~zsclust.embed.EmbeddingSet` (from :func:`embed_split`, a cache entry,
    an exported ``.npz`` path) or an array with optional ``labels``. Returns one
    :class:`~zsclust.cluster.JobResult` per job (``.job``, ``.metrics``, ``.labels_pred``).

    ``reducer``/``clusterer`` take what a config does: a choice name, a node ``{"name": ..., **params}``, or a
    list (every reducer x every clusterer). With ``experiment`` each job is an MLflow run there.
    """
    import numpy as np

    from ._build import embeddings_context, make_pipeline, make_tracker
    from .cluster import count_classes
    from .config import load_config as load
    from .embed import EmbeddingSet
    from .jobs import load_embeddings

    if isinstance(embeddings, (str, os.PathLike)):
        embeddings = load_embeddings(str(embeddings))
    elif not isinstance(embeddings, EmbeddingSet):
        X = np.asarray(embeddings, dtype=np.float32)
        y = np.full(len(X), -1, dtype=np.int64) if labels is None else np.asarray(labels)
        from .embed._cache import _content_digest

        embeddings = EmbeddingSet(X, y, np.arange(len(X)), np.zeros(0, np.int64),
                                  {"fingerprint": "array-" + _content_digest(X), "source": "array"})
    cfg = load(None, [f"tracking.enabled={experiment is not None}", *overrides])
    cfg.reducer, cfg.clusterer = _plain(reducer), _plain(clusterer)
    cfg.jobs = dict(jobs or {})
    if experiment is not None:
        cfg.tracking.experiment = experiment
    pipeline = make_pipeline(cfg, embeddings_context(embeddings))
    pipeline.validate(len(embeddings), int(embeddings.embeddings.shape[1]), count_classes(embeddings.labels))
    pipeline.tracker = make_tracker(cfg)
    return pipeline.run(embeddings, progress=progress)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def run_config(config: str | os.PathLike | None = "quickstart", overrides: Sequence[str] = ()):
    """``zsclust run``: embed (or load) one dataset split, then every job, tracked in MLflow.

    Returns ``(embeddings, results, tracker)``, or ``None`` on ranks other than 0 of a DDP run."""
    from .config import load_config as load
    from .jobs import run_experiment

    return run_experiment(load(config, overrides))


def tune_studies(config: str | os.PathLike | None = "tune/default", overrides: Sequence[str] = (), *,
         embeddings: Sequence[str] = (), progress: bool = False):
    """``zsclust tune``: one Optuna study per reducer x clusterer family on the validation splits.

    ``embeddings`` are ``NAME=FILE.npz[:WEIGHT]`` exported val splits. Returns a ``StudyResult`` per study
    (``best_params``, ``best_value``, ``best_metrics``, ``spearman``)."""
    from .jobs import tune as run_tune
    from .tune import load_tune_config

    return run_tune(load_tune_config(config, overrides, embeddings=embeddings), progress=progress)


def evaluate_study(study: str, *, storage: str | None = None, overrides: Sequence[str] = (),
                   embeddings: Sequence[str] = (), progress: bool = False):
    """``zsclust evaluate``: a study's best params on the test split of each target."""
    from .jobs import evaluate_study as run_evaluate

    return run_evaluate(study, storage=storage, overrides=overrides, embeddings=embeddings, progress=progress)


def run_sweep(config: str | os.PathLike = "study/offline", overrides: Sequence[str] = (), *, progress: bool = False):
    """``zsclust sweep``: every encoder x dataset x job of a grid, resumable; returns its summary."""
    from .sweep import load_sweep_config
    from .sweep import run_sweep as run

    return run(load_sweep_config(config, overrides), progress=progress)


def build_report(config: str | os.PathLike = "study/offline", out: str | os.PathLike | None = None, *,
           split: str = "test", metric: str = "ami"):
    """``zsclust report``: the study's tables and figures from a sweep's MLflow record, into ``out``."""
    from ._build import make_tracker
    from .report import build_report as build, expected_from_sweep
    from .sweep import load_sweep_config

    cfg = load_sweep_config(config)
    expected, encoders, datasets = expected_from_sweep(cfg)
    tracker = make_tracker(cfg)
    out = out or os.path.join("reports", cfg.tracking.experiment)
    return build(tracker, out, expected=expected, encoder_order=encoders, dataset_order_hint=datasets,
                        split=split, metric=metric)
