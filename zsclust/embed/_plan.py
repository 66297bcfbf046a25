"""Which samples a run embeds: decided once, by global zero holding the entry's lock, for every rank.

Ranks that listed the shard folder themselves could see different work (shards appearing or set aside
between their looks, a network file system's caches), and the sampler would then split two different
lists: samples embedded twice or not at all. So the plan is made by one process and broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import lightning.pytorch as pl
from torch.utils.data import DataLoader, Subset

from ._cache import CacheEntry
from ._lock import EntryLock

#: How often global zero, while it waits for another job's lock, tells the other ranks to keep waiting
#: (a broadcast each time), so that no collective times out during a long wait.
KEEPALIVE_SECONDS = 10.0


@dataclass
class Plan:
    """``complete``: load the entry; ``merge``: nothing left to embed, merge the shards; ``embed``: embed
    ``remaining`` (dataset indices), then merge. ``resumed_from``: samples earlier runs already embedded."""

    status: str
    remaining: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    resumed_from: int = 0


def make_plan(entry: CacheEntry, num_samples: int) -> Plan:
    """The work left in ``entry``; the caller holds its lock (this deletes dead runs' temporaries and sets
    damaged shards aside)."""
    if entry.is_complete:
        return Plan("complete")
    entry.clean_stale_temporaries()
    done = entry.done_indices()
    remaining = np.setdiff1d(np.arange(num_samples, dtype=np.int64), done)
    return Plan("embed" if len(remaining) else "merge", remaining, int(num_samples - len(remaining)))


def spread_over_ranks(remaining: np.ndarray, world_size: int) -> np.ndarray:
    """``remaining``, repeated up to ``world_size`` items when shorter, so that every rank gets a batch.

    A rank without batches would skip the predict hooks, and with them the barriers around the merge
    that the others wait in; the repeated samples are embedded twice and merged once.
    """
    if 0 < len(remaining) < world_size:
        return np.resize(remaining, world_size)
    return remaining


class PlannedData(pl.LightningDataModule):
    """The predict loader over the planned samples, every rank alike.

    ``plan`` is given when global zero planned before the trainer (holding ``lock``); otherwise global
    zero takes ``lock`` and plans when Lightning asks for the loader, after the process group is up.
    Either way the plan is broadcast, so every rank builds the same list.

    ``batch_transform`` runs on each batch's images once they are on the device (see
    :func:`zsclust.data._transforms.split_for_batches`); the precision plugin's input conversion, which
    Lightning applied before the transfer, is applied again to its output.
    """

    def __init__(self, dataset, loader_kwargs: dict, entry: CacheEntry, lock: EntryLock, plan: Plan | None = None,
                 on_plan=None, batch_transform=None):
        super().__init__()
        self.dataset = dataset
        self.batch_transform = batch_transform
        self.loader_kwargs = loader_kwargs
        self.entry = entry
        self.lock = lock
        self.plan = plan
        self.on_plan = on_plan

    def _plan_on_global_zero(self, timeout: float) -> Plan | None:
        if self.plan is not None:
            return self.plan
        if self.entry.is_complete:  # finished entries never change: no lock needed
            return Plan("complete")
        if not self.lock.acquire(timeout=timeout):
            return None
        return make_plan(self.entry, len(self.dataset))

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        plan = None
        while plan is None:
            mine = None
            if trainer.is_global_zero:
                try:
                    mine = self._plan_on_global_zero(KEEPALIVE_SECONDS)
                except Exception as e:  # sent on, so the other ranks fail too instead of waiting for a plan
                    mine = e
            plan = trainer.strategy.broadcast(mine, src=0)
        if isinstance(plan, BaseException):
            if trainer.is_global_zero:
                raise plan
            raise RuntimeError(f"Global zero could not plan the embedding of '{self.entry.path}': {plan}")
        self.plan = plan
        if self.on_plan is not None:
            self.on_plan(plan)
        indices = spread_over_ranks(plan.remaining, trainer.world_size)
        n = len(self.dataset)
        data = self.dataset if len(indices) == n and np.array_equal(indices, np.arange(n)) else Subset(
            self.dataset, indices.tolist())
        return DataLoader(data, shuffle=False, **self.loader_kwargs)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.batch_transform is None or not len(batch["image"]):
            return batch
        images = self.batch_transform(batch["image"])
        return {**batch, "image": self.trainer.precision_plugin.convert_input(images)}
