"""Evaluation transforms built from an encoder's timm-style data config.

The preprocessing travels with the weights: data code never hard-codes ImageNet statistics, it asks the
encoder for ``{'input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode'}`` and builds
resize(floor(H / crop_pct)) -> center crop H -> tensor -> normalize from it (timm's own eval pipeline).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from zsclust.data._sources import to_rgb
from zsclust.errors import ConfigError

_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


class ToUint8Tensor:
    """PIL image or uint8 tensor -> 3×H×W uint8 tensor, so resize and crop run on tensors.

    torchvision's antialiased tensor resize is about 5× faster than PIL's on 2 cores and stays
    within PIL's rounding (see BENCHMARKS.md); it keeps decoding from starving the forward pass.
    """

    def __call__(self, img):
        if isinstance(img, Image.Image):
            img = TF.pil_to_tensor(to_rgb(img))
        if img.ndim == 2:
            img = img[None]
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        return img

    def __repr__(self) -> str:
        return "ToUint8Tensor()"


class ToFloat:
    """uint8 [0, 255] -> float32 [0, 1], as ToTensor would have done on a PIL image."""

    def __call__(self, img):
        return img.float().div_(255) if img.dtype == torch.uint8 else img

    def __repr__(self) -> str:
        return "ToFloat()"


class ToRGB:
    """Convert a PIL image to RGB (greyscale -> three channels); encoders expect three channels."""

    def __call__(self, img):
        return to_rgb(img) if isinstance(img, Image.Image) else img

    def __repr__(self) -> str:
        return "ToRGB()"


def _to_v2(step):
    """The same resize/crop in torchvision's v2 API, whose uint8 kernels skip v1's float round trip (7× faster)."""
    from torchvision.transforms import v2

    if isinstance(step, T.Resize):
        return v2.Resize(step.size, interpolation=step.interpolation, max_size=step.max_size, antialias=True)
    return v2.CenterCrop(step.size)


def build_transform(data_config: dict) -> Callable:
    """The eval transform for a timm data config (as from ``timm.data.resolve_model_data_config``)."""
    from timm.data import create_transform

    if "input_size" not in data_config:
        raise ConfigError(f"Data config {data_config!r} has no 'input_size'; expected a timm data config"
                          f" with keys {', '.join(_CONFIG_KEYS)}.")
    unknown = set(data_config) - set(_CONFIG_KEYS)
    cfg = {k: v for k, v in data_config.items() if k in _CONFIG_KEYS}
    if cfg.get("crop_mode") not in (None, "center", "squash", "border"):
        raise ConfigError(f"Unknown crop_mode '{cfg['crop_mode']}'; use center, squash or border.")
    tf = create_transform(**cfg, is_training=False)
    steps = list(tf.transforms) if isinstance(tf, T.Compose) else [tf]
    names = [type(s).__name__ for s in steps]
    if set(names) <= {"Resize", "CenterCrop", "MaybeToTensor", "ToTensor", "Normalize"} and names[-2:] == [
        names[-2], "Normalize"] and names[-2] in ("MaybeToTensor", "ToTensor"):
        # Same steps, on uint8 tensors: the dataset then decodes straight to a tensor.
        out = T.Compose([ToUint8Tensor(), *map(_to_v2, steps[:-2]), ToFloat(), steps[-1]])
        out.decodes_to_tensor = True
    else:  # squash/border crops and other timm steps work on PIL images
        out = T.Compose([ToRGB(), *steps])
        out.decodes_to_tensor = False
    out.ignored_config_keys = sorted(unknown)  # e.g. 'first_conv' from a pretrained_cfg: harmless
    return out


def draft_size_of(transform) -> tuple[int, int] | None:
    """(width, height) that the transform's first resize needs, for JPEG reduce-on-decode; None if unknown.

    Only a resize that comes before anything else that depends on pixel size is trusted. An int size
    resizes the shorter side, so both sides must stay at least that large.
    """
    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    for step in steps:
        if isinstance(step, (ToRGB, ToUint8Tensor)):
            continue
        size = getattr(step, "size", None)
        if type(step).__name__ in ("Resize", "ResizeKeepRatio") and size is not None:
            if isinstance(size, int):
                return (size, size)
            if isinstance(size, (tuple, list)) and len(size) == 1:
                return (int(size[0]), int(size[0]))
            if isinstance(size, (tuple, list)) and len(size) == 2:
                return (int(size[1]), int(size[0]))  # torchvision sizes are (h, w); PIL wants (w, h)
        return None
    return None
