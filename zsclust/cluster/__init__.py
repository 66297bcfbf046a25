"""Reduce -> cluster -> score: registered reducers and clusterers (scikit-learn estimators),
metrics, the memory guard and the reduction cache.

>>> from zsclust.cluster import create_reducer, create_clusterer, score_labels
>>> reducer = create_reducer(["zscore", {"name": "pca", "n_components": 0.9}])
>>> clusterer = create_clusterer("hdbscan", min_cluster_size=10)

Every command clusters through :func:`run_job` (one job: reduce, cluster, score).
"""

from zsclust.cluster._cache import ReductionCache
from zsclust.cluster._gpu import gpu_available
from zsclust.cluster._knn_graph import KnnGraph, KnnGraphStore, compute_knn_graph, exact_knn
from zsclust.cluster._job import (
    K_KNOWN,
    SILHOUETTE_KEYS,
    STUDY_UMAP_NODE,
    JobData,
    JobOutput,
    JobSpec,
    Scoring,
    count_classes,
    job_params,
    label_free_space,
    run_job,
)
from zsclust.cluster._pipeline import ClusteringPipeline, JobResult, format_table, job_key
from zsclust.cluster._clusterers import (
    AffinityPropagationClusterer,
    AgglomerativeClusterer,
    GuardedClusterMixin,
    HDBSCANClusterer,
    ImportedClusterer,
    KMeansClusterer,
    SpectralClusterer,
    create_clusterer,
    list_clusterers,
    register_clusterer,
    registered_class,
    registry_defaults,
)
from zsclust.cluster._memory import (
    MemoryBudget,
    available_memory,
    check_fit_memory,
    estimate_fit_bytes,
    memory_budget,
    parse_bytes,
)
from zsclust.cluster._metrics import (
    DEFAULT_SILHOUETTE_SAMPLE_SIZE,
    LABEL_METRICS,
    clustering_accuracy,
    score_embedding,
    score_labels,
    spearman_rho,
    umap_silhouette,
)
from zsclust.cluster._reducers import (
    STUDY_UMAP,
    IdentityReducer,
    L2Reducer,
    PCAReducer,
    UMAPReducer,
    ZScoreReducer,
    create_reducer,
    list_reducers,
    reducer_key,
    register_reducer,
)
from zsclust.cluster._validation import check_embeddings
from zsclust.cluster._extra_reducers import EXACT_TSNE_MAX_SAMPLES, KernelPCAReducer, PaCMAPReducer, TSNEReducer
from zsclust.cluster._graph_clusterers import LeidenClusterer, LouvainClusterer, OPTICSClusterer, affinity_graph

__all__ = [
    "ClusteringPipeline",
    "JobData",
    "JobOutput",
    "JobResult",
    "JobSpec",
    "K_KNOWN",
    "SILHOUETTE_KEYS",
    "STUDY_UMAP_NODE",
    "Scoring",
    "count_classes",
    "format_table",
    "job_key",
    "job_params",
    "label_free_space",
    "run_job",
    "DEFAULT_SILHOUETTE_SAMPLE_SIZE",
    "EXACT_TSNE_MAX_SAMPLES",
    "LABEL_METRICS",
    "STUDY_UMAP",
    "AffinityPropagationClusterer",
    "AgglomerativeClusterer",
    "GuardedClusterMixin",
    "HDBSCANClusterer",
    "IdentityReducer",
    "KernelPCAReducer",
    "LeidenClusterer",
    "LouvainClusterer",
    "OPTICSClusterer",
    "PaCMAPReducer",
    "TSNEReducer",
    "affinity_graph",
    "KnnGraph",
    "KnnGraphStore",
    "ImportedClusterer",
    "KMeansClusterer",
    "L2Reducer",
    "MemoryBudget",
    "PCAReducer",
    "ReductionCache",
    "SpectralClusterer",
    "UMAPReducer",
    "ZScoreReducer",
    "available_memory",
    "check_embeddings",
    "check_fit_memory",
    "clustering_accuracy",
    "compute_knn_graph",
    "create_clusterer",
    "create_reducer",
    "estimate_fit_bytes",
    "exact_knn",
    "gpu_available",
    "list_clusterers",
    "list_reducers",
    "memory_budget",
    "parse_bytes",
    "reducer_key",
    "register_clusterer",
    "register_reducer",
    "registered_class",
    "registry_defaults",
    "score_embedding",
    "score_labels",
    "spearman_rho",
    "umap_silhouette",
]


def __getattr__(name):
    # The callback imports Lightning (and torch); keep `import zsclust.cluster` light without it.
    if name == "ClusteringCallback":
        from zsclust.cluster._callback import ClusteringCallback

        return ClusteringCallback
    raise AttributeError(f"module 'zsclust.cluster' has no attribute {name!r}")
