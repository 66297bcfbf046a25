"""The :class:`Encoder` module that every encoder name resolves to."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from zsclust._json import to_jsonable

__all__ = ["Encoder", "weights_digest"]


def weights_digest(module: nn.Module) -> str:
    """sha256 over the state dict (names, shapes, dtypes, bytes, in order).

    It depends only on the tensors, so the same weights give the same digest whether they came
    from a URL, the hub or a local file. A module without tensors (raw pixels) is identified by
    its class and ``extra_repr()`` instead.
    """
    h = hashlib.sha256()
    state = module.state_dict()
    if not state:
        h.update(f"no-weights:{type(module).__name__}({module.extra_repr()})".encode())
        return h.hexdigest()
    for name, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


class Encoder(nn.Module):
    """A frozen backbone: ``forward(x)`` maps preprocessed ``B×3×H×W`` images to ``B×num_features``.

    ``data_config`` is the preprocessing the weights expect (timm keys); data code builds its
    transform from it and never assumes ImageNet statistics. The module stays in eval mode and
    its parameters do not require gradients: zsclust only reads features.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        arch: str,
        data_config: dict,
        num_features: int,
        pooling: str,
        weights_source: str,
        info: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.name = name
        self.arch = arch
        self.data_config = dict(data_config)
        self.num_features = int(num_features)
        self.pooling = pooling
        self.weights_source = weights_source
        self.info = dict(info or {})
        self.requires_grad_(False)
        self.eval()
        self.weights_digest = weights_digest(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def train(self, mode: bool = True) -> Encoder:
        # Frozen feature extractor: BatchNorm statistics must never update, whoever calls .train().
        return super().train(False)

    def describe(self) -> dict:
        """A JSON-able record of what produced the features (for caches, MLflow and reports)."""
        return to_jsonable(
            {
                "name": self.name,
                "arch": self.arch,
                "pooling": self.pooling,
                "num_features": self.num_features,
                "data_config": self.data_config,
                "weights": self.weights_source,
                "weights_digest": self.weights_digest,
                **self.info,
            }
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_features={self.num_features}, pooling={self.pooling!r}"
