"""Thin job entry points: each takes a resolved config and returns its results (for the CLI and sweepers).

Everything they build comes from :mod:`zsclust._build`; every clustering goes through
:func:`zsclust.cluster.run_job`.
"""

from __future__ import annotations

from pathlib import Path

from ._build import (embed_options, embeddings_context, make_dataset, make_pipeline, make_tracker, run_context,
                     run_identity)
from ._paths import reduction_cache_dir
from .config import to_container


def run_experiment(cfg):
    """Embed (or load from the cache), then every job; ``None`` on ranks other than 0.

    The jobs are validated (estimators built, smoke-fitted, memory checked) before any embedding.
    """
    from .cluster import ClusteringCallback, count_classes
    from .embed import embed
    from .encoders import create_encoder

    encoder = create_encoder(cfg.encoder.name, weights=cfg.encoder.weights)
    dataset = make_dataset(cfg, encoder)
    pipeline = make_pipeline(cfg, run_context(cfg, dataset_name=dataset.name), identity=run_identity(cfg))
    pipeline.validate(len(dataset), encoder.num_features, count_classes(dataset.labels))
    pipeline.tracker = make_tracker(cfg)  # after validation, so a config error leaves no empty experiment
    callback = ClusteringCallback(pipeline)
    result = embed(encoder, dataset, options=embed_options(cfg), callbacks=[callback])
    if result is None:
        return None
    results = callback.results if callback.results is not None else pipeline.run(result)
    return result, results, pipeline.tracker


def load_embeddings(source: str, cache_dir: str | None = None):
    """An exported ``.npz`` file, or a cache entry by fingerprint (or a unique prefix of it)."""
    from .embed import EmbeddingCache, EmbeddingSet

    if source.endswith(".npz") or Path(source).is_file():
        return EmbeddingSet.from_npz(source)
    return EmbeddingCache(cache_dir).load(source)


def cluster_embeddings(cfg, source: str):
    """The same jobs on an existing cache entry or an exported ``.npz``, named after what made them."""
    from .cluster import count_classes

    emb = load_embeddings(source, cfg.embed.cache_dir)
    context = embeddings_context(emb)
    identity = {"embedding.fingerprint": emb.fingerprint, "evaluation": to_container(cfg.evaluation)}
    pipeline = make_pipeline(cfg, context, identity=identity)
    pipeline.validate(len(emb), int(emb.embeddings.shape[1]), count_classes(emb.labels))
    pipeline.tracker = make_tracker(cfg)
    return emb, pipeline.run(emb), pipeline.tracker


def tune(cfgs, *, progress: bool = True):
    """Embed the val splits once, then run (or join) one Optuna study per config; ``None`` on ranks other than 0.

    ``cfgs`` come from :func:`zsclust.tune.load_tune_config` (one per reducer × clusterer family).
    Spaces and the storage are checked before anything is embedded. Returns a ``StudyResult`` per study.
    """
    from .cluster import ReductionCache, Scoring
    from .tune import Objective, SearchSpace, StudyRunner, load_validation_sets, open_storage, reads_labels
    from .tune._workers import LocalWorkers

    spaces = [SearchSpace(c.space, where=f"space of study '{c.study.name}'") for c in cfgs]
    for c in cfgs:
        open_storage(c.study.storage, retry_stale=0)  # unreachable: a ConfigError now, not after the embedding
    loaded = {}  # a label-free study gets sets loaded without labels, even beside one that reads them
    for mode in dict.fromkeys(reads_labels(c) for c in cfgs):
        loaded[mode] = load_validation_sets(cfgs[0], read_labels=mode, progress=progress)
        if loaded[mode] is None:
            return None
    results = []
    with LocalWorkers(cfgs) as local:  # after the embedding: the other workers read the val sets from the cache
        for cfg, space in zip(cfgs, spaces):
            sets = loaded[reads_labels(cfg)]
            objective = Objective(space, sets, metric=cfg.objective.metric, seed=cfg.seed,
                                  reduction_cache=ReductionCache(reduction_cache_dir(cfg),
                                                                 memory_items=2 * len(sets) + 2),
                                  scoring=Scoring.from_config(cfg.evaluation))
            objective.prepare(progress=progress, reducers=grid_reducers(cfg, space))
            runner = StudyRunner(cfg, space, objective, tracker_factory=lambda cfg=cfg: make_tracker(cfg),
                                 progress=progress)
            results.append(runner.run())
        local.wait()
    return results


def grid_reducers(cfg, space) -> list[dict]:
    """The distinct reductions a grid study's trials will fit (each is fitted before the first trial); none
    for other samplers, or a grid larger than ``study.n_trials``, whose trials may never need some of them."""
    if cfg.study.sampler != "grid":
        return []
    grid = space.grid()
    if int(cfg.study.n_trials) < len(grid):
        return []
    nodes = {}
    for params in grid:
        node = space.build(params)[0]
        if node and dict(node) != {"name": "none"}:
            nodes.setdefault(repr(sorted(dict(node).items())), dict(node))
    return list(nodes.values())


def evaluate_study(study: str, *, storage: str | None = None, overrides=(), embeddings=(), progress: bool = True):
    """A study's best params on the test split of each target (``zsclust.tune.evaluate_study``)."""
    from .tune import evaluate_study as _evaluate

    return _evaluate(study, storage=storage, overrides=overrides, embeddings=embeddings, progress=progress)


def knn_probe(cfg, *, ks=None, temperature: float | None = None, device="auto"):
    """The study's kNN probe for ``cfg``'s encoder × dataset: the train split as the bank, ``cfg.data.split``
    (test) as the queries, both embedded or loaded from the cache; one MLflow run when tracking is on.

    Returns ``(KnnResult, tracker)``; ``None`` on ranks other than 0. ``ks`` and ``temperature``
    default to the study's (1, 10, 20, 100, 200) and 0.07. The run's key is the one a sweep with
    ``sweep.knn: true`` gives the same cell, so either command skips or counts the other's run.
    """
    import copy

    from .embed import embed
    from .encoders import create_encoder
    from .errors import ConfigError
    from .knn import BANK_SPLIT, DEFAULT_KS, DEFAULT_TEMPERATURE, knn_job_key, run_knn_job
    from .knn._inputs import check_ks, check_temperature

    ks = check_ks(DEFAULT_KS if ks is None else ks)
    temperature = check_temperature(DEFAULT_TEMPERATURE if temperature is None else temperature)
    if cfg.data.split == BANK_SPLIT:
        raise ConfigError(f"data.split={BANK_SPLIT}: the kNN probe's queries must be another split than its bank "
                          f"({BANK_SPLIT}); use data.split=test.")
    encoder = create_encoder(cfg.encoder.name, weights=cfg.encoder.weights)
    queries_set = make_dataset(cfg, encoder)
    bank_cfg = copy.deepcopy(cfg)
    bank_cfg.data.split = BANK_SPLIT
    bank_set = make_dataset(bank_cfg, encoder)
    tracker = make_tracker(cfg)  # an unreachable store fails now, before the embedding
    options = embed_options(cfg)
    bank = embed(encoder, bank_set, options=options)
    queries = embed(encoder, queries_set, options=options)
    if bank is None or queries is None:
        return None
    context = run_context(cfg, dataset_name=queries_set.name)
    result = run_knn_job(bank, queries, context=context, key=knn_job_key(run_identity(cfg), ks, temperature),
                         tracker=tracker, ks=ks, temperature=temperature, device=device)
    return result, tracker
