"""Thin job entry points: each takes a resolved config and returns its results (for the CLI and sweepers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._paths import reduction_cache_dir
from .config import to_container, to_yaml


def embed_options(cfg):
    from .embed import EmbedOptions

    e = cfg.embed
    return EmbedOptions(accelerator=e.accelerator, devices=e.devices, num_nodes=e.num_nodes, strategy=e.strategy,
                        precision=e.precision, batch_size=e.batch_size, num_workers=e.num_workers,
                        shard_size=e.shard_size, progress=e.progress, cache_dir=e.cache_dir)


def run_identity(cfg) -> dict:
    """What one config embeds, from the config alone (no encoder or data loaded): half of each job's key.

    A sweep computes it to skip finished jobs before loading anything; ``zsclust run`` tags its runs with
    the same keys, so either command recognises the other's finished work.
    """
    from .embed import resolve_precision

    return {"encoder.name": cfg.encoder.name, "encoder.weights": _file_digest(cfg.encoder.weights),
            "data.name": cfg.data.name, "data.root": cfg.data.root, "data.split": cfg.data.split,
            "data.seed": cfg.data.seed, "data.skip_corrupt": cfg.data.skip_corrupt,
            "embed.precision": resolve_precision(cfg.embed.precision, cfg.embed.accelerator),
            "evaluation.umap_silhouette": cfg.evaluation.umap_silhouette}


_DIGESTS: dict[tuple, str] = {}


def _file_digest(path: str | None) -> str | None:
    """A weights file by its content (sha256, memoised per size and mtime): a checkpoint overwritten in
    place makes new job keys, a copy of the same file elsewhere the same ones."""
    if not path or not Path(path).is_file():
        return path
    import hashlib

    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _DIGESTS[key] = f"sha256:{h.hexdigest()}"
    return _DIGESTS[key]


def make_pipeline(cfg, context: dict, tracker=None, identity: dict | None = None):
    from .cluster import ClusteringPipeline, ReductionCache

    return ClusteringPipeline(
        to_container(cfg.reducers), to_container(cfg.clusterers), seed=cfg.seed,
        reduction_cache=ReductionCache(reduction_cache_dir(cfg)), tracker=tracker, context=context,
        silhouette_sample_size=cfg.evaluation.silhouette_sample_size,
        umap_silhouette=cfg.evaluation.umap_silhouette, plots=cfg.tracking.plots, config_yaml=to_yaml(cfg),
        identity=identity,
    )


def make_tracker(cfg):
    if not cfg.tracking.enabled:
        return None
    from .tracking import MLflowTracker

    return MLflowTracker(cfg.tracking.uri, cfg.tracking.experiment)


def make_dataset(cfg, encoder):
    """``cfg.data``'s split, preprocessed the way ``encoder`` was trained."""
    from .data import build_transform, create_dataset

    return create_dataset(cfg.data.name, cfg.data.split, root=cfg.data.root,
                          transform=build_transform(encoder.data_config), download=cfg.data.download,
                          seed=cfg.data.seed, skip_corrupt=cfg.data.skip_corrupt)


def run_experiment(cfg):
    """Embed (or load from the cache), then every reducer × clusterer; ``None`` on ranks other than 0.

    The pipeline is validated (estimators built, smoke-fitted, memory checked) before any embedding.
    """
    from .cluster import ClusteringCallback, count_classes
    from .embed import embed, resolve_precision
    from .encoders import create_encoder

    encoder = create_encoder(cfg.encoder.name, weights=cfg.encoder.weights)
    dataset = make_dataset(cfg, encoder)
    n_classes = count_classes(dataset.labels)
    context = {
        "encoder.name": cfg.encoder.name, "encoder.weights": cfg.encoder.weights,
        "data.name": dataset.name, "data.split": cfg.data.split, "data.seed": cfg.data.seed,
        "embed.precision": resolve_precision(cfg.embed.precision, cfg.embed.accelerator),
    }
    pipeline = make_pipeline(cfg, context, identity=run_identity(cfg))
    pipeline.validate(len(dataset), encoder.num_features, n_classes)
    pipeline.tracker = make_tracker(cfg)  # after validation, so a config error leaves no empty experiment
    callback = ClusteringCallback(pipeline)
    result = embed(encoder, dataset, options=embed_options(cfg), callbacks=[callback])
    if result is None:
        return None
    results = callback.results if callback.results is not None else pipeline.run(result)
    return result, results, pipeline.tracker


def cluster_embeddings(cfg, source: str):
    """The same pipeline on an existing cache entry (fingerprint or prefix) or an exported ``.npz``."""
    from .cluster import count_classes
    from .embed import EmbeddingCache, EmbeddingSet

    if source.endswith(".npz") or Path(source).is_file():
        emb = EmbeddingSet.from_npz(source)
        context = {"encoder.name": "npz", "data.name": Path(source).stem, "data.split": "?"}
    else:
        emb = EmbeddingCache(cfg.embed.cache_dir).load(source)
        fi = emb.meta.get("fingerprint_inputs", {})
        context = {"encoder.name": fi.get("encoder"), "data.name": emb.meta["dataset"]["name"],
                   "data.split": emb.meta["dataset"]["split"], "embed.precision": fi.get("precision")}
    n_classes = count_classes(emb.labels)
    pipeline = make_pipeline(cfg, context)
    pipeline.validate(len(emb), int(np.asarray(emb.embeddings).shape[1]), n_classes)
    pipeline.tracker = make_tracker(cfg)
    return emb, pipeline.run(emb), pipeline.tracker


def tune(cfgs, *, progress: bool = True):
    """Embed the val splits once, then run (or join) one Optuna study per config; ``None`` on ranks other than 0.

    ``cfgs`` come from :func:`zsclust.tune.load_tune_config` (one per reducer × clusterer family).
    Spaces and the storage are checked before anything is embedded. Returns a ``StudyResult`` per study.
    """
    from .cluster import ReductionCache
    from .tune import (LABEL_READING_METRICS, Objective, SearchSpace, StudyRunner, load_validation_sets,
                       open_storage)

    spaces = [SearchSpace(c.space, where=f"space of study '{c.study.name}'") for c in cfgs]
    for c in cfgs:
        open_storage(c.study.storage, retry_stale=0)  # unreachable: a ConfigError now, not after the embedding
    first = cfgs[0]
    o = first.objective
    datasets = load_validation_sets(first, read_labels=o.metric in LABEL_READING_METRICS or o.report_ami,
                                    progress=progress)
    if datasets is None:
        return None
    results = []
    for cfg, space in zip(cfgs, spaces):
        objective = Objective(space, datasets, metric=cfg.objective.metric,
                              silhouette_space=cfg.objective.silhouette_space,
                              reduction_cache=ReductionCache(reduction_cache_dir(cfg), memory_items=2 * len(datasets) + 2),
                              seed=cfg.seed, silhouette_sample_size=cfg.evaluation.silhouette_sample_size)
        objective.prepare(progress=progress)
        runner = StudyRunner(cfg, space, objective, tracker_factory=lambda cfg=cfg: make_tracker(cfg), progress=progress)
        results.append(runner.run())
    return results


def evaluate_study(study: str, *, storage: str | None = None, overrides=(), embeddings=(), progress: bool = True):
    """A study's best params on the test split of each target (``zsclust.tune.evaluate_study``)."""
    from .tune import evaluate_study as _evaluate

    return _evaluate(study, storage=storage, overrides=overrides, embeddings=embeddings, progress=progress)
