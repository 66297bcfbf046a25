"""Where zsclust keeps its caches by default; torch-free, so tuning workers can ask without importing it."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """The embedding cache: ``$ZSCLUST_CACHE_DIR``, else ``~/.cache/zsclust/embeddings``."""
    env = os.environ.get("ZSCLUST_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "zsclust" / "embeddings"


def reduction_cache_dir(cfg) -> Path:
    """``cfg.reduction_cache``, else ``reductions/`` beside the embedding cache."""
    if cfg.reduction_cache:
        return Path(cfg.reduction_cache)
    root = Path(cfg.embed.cache_dir) if cfg.embed.cache_dir else default_cache_dir()
    return root.parent / "reductions"
