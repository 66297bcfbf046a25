"""The embedding engine: a LightningModule's predict steps, a shard writer, and a fingerprinted cache."""

from ._cache import CacheEntry, EmbeddingCache, EmbeddingSet, default_cache_dir
from ._engine import EmbedOptions, cpu_supports_bf16, embed, resolve_precision
from ._fingerprint import fingerprint_digest, fingerprint_inputs
from ._module import EmbeddingModule
from ._writer import ShardWriter

__all__ = [
    "CacheEntry", "EmbeddingCache", "EmbeddingSet", "EmbedOptions", "EmbeddingModule", "ShardWriter",
    "cpu_supports_bf16", "default_cache_dir", "embed", "fingerprint_digest", "fingerprint_inputs",
    "resolve_precision",
]
