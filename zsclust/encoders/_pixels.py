"""Raw pixels: the study's no-encoder baseline (small image, flattened)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import EncoderSpec, register_encoder


class RawPixels(nn.Module):
    """Flattens an ``img_size``×``img_size`` RGB image into ``3·img_size²`` features in [0, 1].

    The data transform already resizes to ``img_size`` (``data_config``); inputs of another size
    are resized here (bilinear, antialiased) so the feature width never depends on the caller.
    """

    def __init__(self, img_size: int = 32):
        super().__init__()
        self.img_size = int(img_size)
        self.num_features = 3 * self.img_size**2
        self.num_classes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return x.flatten(1)

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}"


register_encoder(EncoderSpec(
    name="raw_pixels",
    arch="raw_pixels",
    model_fn=RawPixels,
    pooling="flatten",
    num_features=3 * 32 * 32,
    # mean 0 / std 1: features are the [0, 1] pixel values themselves. crop_pct 1: whole image.
    data_config={"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.0, 0.0, 0.0),
                 "std": (1.0, 1.0, 1.0), "crop_pct": 1.0, "crop_mode": "center"},
    group="baseline",
    paper_name="Raw pixels",
    description="Images resized to 32×32 (img_size=...) and flattened: the no-encoder baseline",
    pretrained=False,
    has_weights=False,
))
