"""The embedding engine: a LightningModule's predict steps, a shard writer, and a fingerprinted cache.

The cache (``EmbeddingCache``, ``EmbeddingSet``) is torch-free, so clustering worker processes can read
embeddings without importing torch; the engine's names load torch and Lightning on first use.
"""

from ._cache import CacheEntry, EmbeddingCache, EmbeddingSet, default_cache_dir
from ._options import EmbedOptions

__all__ = [
    "CacheEntry", "EmbeddingCache", "EmbeddingSet", "EmbedOptions", "EmbeddingModule", "ShardWriter",
    "cpu_supports_bf16", "default_cache_dir", "embed", "fingerprint_digest", "fingerprint_inputs",
    "resolve_precision",
]

_LAZY = {
    "cpu_supports_bf16": "_engine", "embed": "_engine", "resolve_precision": "_engine",
    "fingerprint_digest": "_fingerprint", "fingerprint_inputs": "_fingerprint",
    "EmbeddingModule": "_module", "ShardWriter": "_writer",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'zsclust.embed' has no attribute {name!r}")
