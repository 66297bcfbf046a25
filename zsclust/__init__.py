"""zsclust: can a pretrained image encoder cluster a dataset it never saw?

From Python, the same jobs as the commands (each function's docstring says which)::

    import zsclust

    emb = zsclust.embed_split("tf_efficientnet_lite0.pypi_in1k", "digits", split="test")  # cached, resumable
    results = zsclust.cluster_embeddings(emb, reducer="umap50", clusterer=["kmeans", "ac_k"])  # one per job
    {r.job: r.metrics["ami"] for r in results}
    zsclust.tune_studies("tune/default", ["space.clusterer=kmeans", "study.n_trials=10"])  # Optuna, val splits

Building blocks: ``zsclust.create_encoder``, ``zsclust.create_reducer``, ``zsclust.create_clusterer``,
``zsclust.run_job`` (one reduce -> cluster -> score), ``zsclust.score_labels``. Imports are lazy, so
``import zsclust`` stays light. (The function names differ from the subpackages ``zsclust.embed``,
``zsclust.cluster``, ``zsclust.tune``, ... so importing those never hides them.)
"""

__version__ = "0.1.0"

_API = {
    "load_config": "zsclust._api", "embed_split": "zsclust._api", "cluster_embeddings": "zsclust._api",
    "run_config": "zsclust._api", "tune_studies": "zsclust._api", "evaluate_study": "zsclust._api",
    "run_sweep": "zsclust._api", "build_report": "zsclust._api",
    "create_encoder": "zsclust.encoders", "list_encoders": "zsclust.encoders",
    "create_dataset": "zsclust.data", "list_datasets": "zsclust.data",
    "create_reducer": "zsclust.cluster", "create_clusterer": "zsclust.cluster", "run_job": "zsclust.cluster",
    "JobSpec": "zsclust.cluster", "JobData": "zsclust.cluster", "score_labels": "zsclust.cluster",
    "EmbedOptions": "zsclust.embed", "EmbeddingSet": "zsclust.embed",
}
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'zsclust' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
