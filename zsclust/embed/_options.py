"""How to run an embedding (not what: that is the encoder and the dataset); torch-free.

One schema serves ``embed()``, the ``embed:`` section of every config and ``zsclust embed``'s flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import ConfigError

PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
PREPROCESSINGS = ("model", "study")


@dataclass
class EmbedOptions:
    """Devices, precision, loader and cache of an embedding run; ``None`` picks a value tuned per device."""

    accelerator: str = "auto"
    devices: Any = 1  # a number per node, or "auto" (every visible GPU)
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    preprocessing: str = "model"  # model: the encoder's own pretrained config | study: Lowe et al. 2024's
    batch_size: Optional[int] = None  # None: 256 on GPU; 32 on CPU, forward chunks tuned (ForwardBatchTuner)
    num_workers: Optional[int] = None
    shard_size: int = 4096
    channels_last: bool = True
    fold_batchnorm: bool = True  # fold eval-mode BN into the preceding conv (outputs checked unchanged)
    progress: bool = True
    cache_dir: Optional[str] = None
    trainer_kwargs: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"embed.accelerator '{self.accelerator}' is not one of {', '.join(ACCELERATORS)}.")
        if self.preprocessing not in PREPROCESSINGS:
            raise ConfigError(f"embed.preprocessing '{self.preprocessing}' is not one of {', '.join(PREPROCESSINGS)} "
                              "(model: the encoder's own resize/crop/statistics; study: Lowe et al. 2024's).")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"embed.precision '{self.precision}' is not one of {', '.join(PRECISIONS)}.")
        for name in ("num_nodes", "shard_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"embed.{name} must be at least 1, got {getattr(self, name)}.")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"embed.batch_size must be at least 1, got {self.batch_size}.")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"embed.num_workers must be 0 or more, got {self.num_workers}.")
        if isinstance(self.devices, int) and self.devices < 1 and self.devices != -1:
            raise ConfigError(f"embed.devices must be at least 1 (or 'auto'), got {self.devices}.")
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ConfigError(f"embed.devices must be a number or 'auto', got '{self.devices}'.")
        if self.accelerator in ("gpu", "cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("embed.accelerator 'gpu' was asked for, but no CUDA device is visible. "
                                  "Use --accelerator cpu.")
