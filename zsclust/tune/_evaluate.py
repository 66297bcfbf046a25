"""``zsclust evaluate``: a study's best configuration on the test split of each target dataset.

The study keeps its resolved config (encoder, validation sets, space) in its user attributes, so a
study name is all that is needed. The test runs go through :class:`ClusteringPipeline` (one MLflow run
per target, with the full metric set) and are tagged ``zsclust.study``, so the MLflow UI can compare
tuned test results across encoders and clusterers.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

from zsclust.errors import ConfigError

__all__ = ["EvaluationResult", "evaluate_study", "load_study_config"]


@dataclass
class EvaluationResult:
    target: str
    embeddings: object
    results: list = field(default_factory=list)


def load_study_config(study_name: str, storage: str | None, overrides=(), embeddings=()):
    """(study, its config with ``overrides`` applied, the test ``--embeddings``) from the storage."""
    import optuna

    from zsclust.config import load_config

    from ._config import TuneConfig, parse_embeddings
    from zsclust._secrets import redact, with_password_from

    from ._study import open_storage

    st = open_storage(storage, retry_stale=0)
    try:
        study = optuna.load_study(study_name=study_name, storage=st)
    except KeyError:
        names = optuna.study.get_all_study_names(st)
        from zsclust.errors import did_you_mean

        raise ConfigError(f"No study '{study_name}' in {redact(st.url)}.{did_you_mean(study_name, names)} Studies there: "
                          f"{', '.join(names) or '(none)'}.") from None
    stored = study.user_attrs.get("zsclust.config")
    if stored is None:
        raise ConfigError(f"Study '{study_name}' was not created by 'zsclust tune' (it has no zsclust.config).")
    cfg = load_config(None, overrides, schema=TuneConfig, base=stored)
    # The study stores its URLs without passwords: the same URLs given in full here (--storage,
    # $MLFLOW_TRACKING_URI) bring them back; otherwise libpq reads PGPASSWORD or ~/.pgpass.
    cfg.study.storage = with_password_from(cfg.study.storage, [storage, st.url])
    cfg.tracking.uri = with_password_from(cfg.tracking.uri, [os.environ.get("MLFLOW_TRACKING_URI")])
    return study, cfg, parse_embeddings(embeddings)


def evaluate_study(study_name: str, *, storage: str | None = None, overrides=(), embeddings=(),
                   progress: bool = True) -> list[EvaluationResult] | None:
    """Apply the study's best params to the test split of every target; returns the pipeline results."""
    from zsclust._build import embed_options, embeddings_context, make_pipeline, make_tracker
    from zsclust.cluster import JobSpec, count_classes
    from zsclust.embed import EmbeddingSet

    from ._space import SearchSpace

    study, cfg, test_embeddings = load_study_config(study_name, storage, overrides, embeddings)
    space = SearchSpace(cfg.space, where=f"study '{study_name}' space")
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"Study '{study_name}' has no completed trial yet; run 'zsclust tune' first.") from None
    reducer, clusterer = space.build(best.params)
    job = JobSpec(space.family("clusterer"), reducer, clusterer)
    targets = list(cfg.evaluate.targets or []) or list(test_embeddings) or list(cfg.datasets)
    tracking_cfg = copy.deepcopy(cfg)
    tracking_cfg.tracking.experiment = cfg.evaluate.experiment
    tracker = None
    out = []
    encoder = None
    best_params = space.resolve(best.params)
    for target in targets:
        d = cfg.datasets.get(target)
        npz = test_embeddings.get(target, {}).get("embeddings") or (d.test_embeddings if d is not None else None)
        if npz:
            emb = EmbeddingSet.from_npz(npz)
        else:
            from zsclust.embed import embed
            from zsclust.encoders import create_encoder

            if cfg.encoder.name == "precomputed":
                raise ConfigError(f"Study '{study_name}' was tuned on precomputed embeddings: pass the test split of "
                                  f"'{target}' with --embeddings {target}=FILE.npz.")
            if encoder is None:
                encoder = create_encoder(cfg.encoder.name, weights=cfg.encoder.weights)
            emb = embed(encoder, (d.name if d is not None and d.name else target), split="test",
                        root=d.root if d is not None else None, download=bool(d.download) if d is not None else False,
                        seed=d.seed if d is not None else 0, skip_corrupt=bool(d.skip_corrupt) if d is not None else False,
                        options=embed_options(cfg))
            if emb is None:
                return None
        context = {**embeddings_context(emb), "zsclust.study": study_name}
        if context["data.name"] == "unknown":  # an .npz from elsewhere: what it stands for is the target's test split
            context["data.name"] = target
        if context["data.split"] == "unknown":
            context["data.split"] = "test"
        if cfg.encoder.name != "precomputed" and context["encoder.name"] == "unknown":
            context["encoder.name"] = cfg.encoder.name
        context.update({f"study.best.{k}": v for k, v in best_params.items()})
        test_cfg = copy.deepcopy(cfg)
        test_cfg.seed = cfg.evaluate.seed
        pipeline = make_pipeline(test_cfg, context, jobs=[job])
        pipeline.validate(len(emb), int(emb.embeddings.shape[1]), count_classes(emb.labels))
        if tracker is None:
            tracker = make_tracker(tracking_cfg)
        pipeline.tracker = tracker
        results = pipeline.run(emb, progress=progress)
        if tracker is not None:
            tags = {"zsclust.study": study_name, "zsclust.role": "evaluate", "zsclust.study.best_trial": best.number,
                    "zsclust.study.best_value": f"{best.value:.6g}", "zsclust.study.metric": cfg.objective.metric}
            for r in results:
                if r.run_id:
                    tracker.set_tags(r.run_id, tags)
        out.append(EvaluationResult(target, emb, results))
    return out
