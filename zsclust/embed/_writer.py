"""A prediction writer that streams per-rank shards into the embedding cache."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from ._cache import CacheEntry


class ShardWriter(BasePredictionWriter):
    """Buffers predict outputs per rank and writes a shard every ``shard_size`` samples.

    Shards carry their dataset indices, so rank 0 can merge them in dataset order whatever the
    world size, and a resumed run can skip the indices they already hold. At most one shard per
    rank is held in memory. Multi-node runs need ``cache_dir`` on a filesystem all nodes share.
    ``on_predict_end`` flushes, waits for every rank, merges on global zero, then calls ``after_merge``
    there (``embed()`` releases the entry's lock with it). A merge error is raised after the last barrier.
    """

    def __init__(self, entry: CacheEntry, num_samples: int, meta: dict, shard_size: int = 4096,
                 after_merge: Callable[[], None] | None = None):
        super().__init__(write_interval="batch")
        self.entry = entry
        self.after_merge = after_merge
        self.num_samples = num_samples
        self.meta = meta
        self.shard_size = shard_size
        self.attempt = uuid.uuid4().hex[:8]
        self.result = None
        self._buf: list[dict] = []
        self._buffered = 0
        self._count = 0
        self.samples_written = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self._buf.append({k: v.numpy() for k, v in prediction.items()})
        self._buffered += len(prediction["indices"]) + len(prediction["skipped"])
        if self._buffered >= self.shard_size:
            self._flush(trainer.global_rank)

    def _flush(self, rank: int) -> None:
        if not self._buf:
            return
        cat = {k: np.concatenate([b[k] for b in self._buf]) for k in self._buf[0]}
        self.entry.write_shard(f"r{rank}-{self.attempt}-{self._count:05d}", **cat)
        self.samples_written += len(cat["indices"]) + len(cat["skipped"])
        self._count += 1
        self._buf, self._buffered = [], 0

    def on_predict_epoch_end(self, trainer, pl_module):
        self._flush(trainer.global_rank)

    def on_predict_end(self, trainer, pl_module):
        self._flush(trainer.global_rank)
        trainer.strategy.barrier("zsclust-shards-written")
        error = None
        if trainer.is_global_zero:
            try:
                self.result = self.entry.finalize(self.num_samples, self.meta)
            except Exception as e:  # raised after the barrier, so the other ranks are not left waiting in it
                error = e
            finally:
                if self.after_merge is not None:
                    self.after_merge()  # e.g. release the entry's lock before any clustering callback runs
        trainer.strategy.barrier("zsclust-merged")
        if error is not None:
            raise error
