"""The forward pass's batch size on the CPU, picked from the first batches' timings."""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch

log = logging.getLogger(__name__)


def forward_in_chunks(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, size: int) -> torch.Tensor:
    if size >= len(images):
        return forward(images)
    return torch.cat([forward(images[i:i + size]) for i in range(0, len(images), size)])


class ForwardBatchTuner:
    """Runs each loader batch through the encoder in chunks, of the size that ran fastest on the first batches.

    On a CPU the best batch depends on the model and the caches: EfficientNet-Lite0 in bf16 on two
    EPYC cores runs 165 img/s in batches of 8 and 113 in batches of 32, ResNet-50 is fastest at 16,
    and none of it can be known before running (``cudnn.benchmark`` does the same for GPU kernels).
    Every size from ``smallest`` up to the loader's batch, in powers of two, runs whole loader batches
    for ``rounds`` rounds; the first round only warms each shape up, the fastest time per image over the
    others decides. No work is thrown away: the tuning batches are the run's own. A sample's features do
    not depend on the batch it runs in (checked bit for bit in the tests), so the choice changes only speed.
    """

    def __init__(self, batch_size: int, smallest: int = 4, rounds: int = 2):
        self.batch_size = int(batch_size)
        sizes, size = [], self.batch_size
        while size >= smallest:
            sizes.append(size)
            size //= 2
        self.sizes = sorted(sizes) or [self.batch_size]
        self.seconds_per_image: dict[int, list[float]] = {s: [] for s in self.sizes}
        self._queue = [s for _ in range(max(2, rounds)) for s in self.sizes]
        self.chosen: int | None = self.sizes[0] if len(self.sizes) == 1 else None

    def __call__(self, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        if self.chosen is not None:
            return forward_in_chunks(forward, images, self.chosen)
        size = self._queue[0]
        start = time.perf_counter()
        out = forward_in_chunks(forward, images, size)
        if len(images) == self.batch_size:  # a short last batch is not comparable
            self.seconds_per_image[size].append((time.perf_counter() - start) / len(images))
            self._queue.pop(0)
            if not self._queue:
                self._choose()
        return out

    def _choose(self) -> None:
        warm = {s: min(t[1:]) for s, t in self.seconds_per_image.items()}
        self.chosen = min(warm, key=warm.get)
        log.info("Forward batch on the CPU: %d (img/s by size: %s).", self.chosen,
                 ", ".join(f"{s}: {1 / t:.1f}" for s, t in sorted(warm.items())))
