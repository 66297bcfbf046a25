"""Evaluation transforms built from an encoder's timm-style data config, under a named preprocessing.

``model`` (the default): the preprocessing travels with the weights. Data code never hard-codes ImageNet
statistics; it asks the encoder for ``{'input_size', 'interpolation', 'mean', 'std', 'crop_pct',
'crop_mode'}`` and builds resize(floor(H / crop_pct)) -> center crop H -> tensor -> normalize from it
(timm's own eval pipeline).

``study``: the protocol of Lowe et al. (2024) for every encoder alike: resize the shorter side to H
(bilinear), centre crop H (nothing cut from the short side), ImageNet statistics except for encoders
trained with CLIP's, which keep CLIP's. H is the encoder's input size (224 for every encoder of the
study). docs/preprocessing.md says what differs and why.
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

#: The named preprocessing choices: the encoder's own pretrained config, or the study's protocol.
from zsclust.embed._options import PREPROCESSINGS as PREPROCESSING  # noqa: E402  (one list, torch-free)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def check_preprocessing(preprocessing: str) -> str:
    if preprocessing not in PREPROCESSING:
        raise ConfigError(f"preprocessing '{preprocessing}' is not one of {', '.join(PREPROCESSING)}: 'model' is"
                          " the encoder's own pretrained config, 'study' the protocol of Lowe et al. (2024).")
    return preprocessing


def _uses_clip_statistics(data_config: dict) -> bool:
    mean, std = data_config.get("mean"), data_config.get("std")
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        return False
    return all(abs(float(a) - b) < 1e-4 for a, b in zip((*mean, *std), (*CLIP_MEAN, *CLIP_STD)))


def preprocessing_config(data_config: dict, preprocessing: str = "model") -> dict:
    """The data config a transform is built from: the encoder's own (``model``) or the study's (``study``).

    ``study`` keeps only the input size from the encoder, and its normalisation if that is CLIP's (the
    study normalises CLIP models with CLIP's statistics and every other encoder with ImageNet's).
    """
    check_preprocessing(preprocessing)
    if preprocessing == "model":
        return dict(data_config)
    if "input_size" not in data_config:
        raise ConfigError(f"Data config {data_config!r} has no 'input_size'; expected a timm data config"
                          f" with keys {', '.join(_CONFIG_KEYS)}.")
    clip = _uses_clip_statistics(data_config)
    return {"input_size": tuple(data_config["input_size"]), "interpolation": "bilinear", "crop_pct": 1.0,
            "crop_mode": "center", "mean": CLIP_MEAN if clip else IMAGENET_MEAN,
            "std": CLIP_STD if clip else IMAGENET_STD}


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
    """uint8 [0, 255] -> float32 [0, 1], as ToTensor would have done on a PIL image.

    The divisor is a tensor on the image's device: CUDA divides by a Python number by multiplying with its
    rounded reciprocal, one bit off true division for about half the grey levels, so the engine's per-batch
    pass on a GPU would not give the bits the per-image pass gives on the CPU. It is filled on the device
    (``torch.full``), not copied from the host, so a GPU batch waits on no host-to-device copy.
    """

    def __call__(self, img):
        if img.dtype != torch.uint8:
            return img
        return img.float().div_(torch.full((), 255.0, device=img.device))

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


def build_transform(data_config: dict, preprocessing: str = "model") -> Callable:
    """The eval transform for a timm data config (as from ``timm.data.resolve_model_data_config``).

    ``preprocessing`` is ``model`` (the config as given) or ``study`` (see :func:`preprocessing_config`).
    The transform carries ``preprocessing`` and the ``data_config`` it was built from, so the embedding
    engine can tell a transform of its own making from a caller's. ``allows_draft`` says whether JPEG
    reduce-on-decode may feed it: not for ``study``, whose point is to match the study's full decode.
    """
    from timm.data import create_transform

    check_preprocessing(preprocessing)
    if "input_size" not in data_config:
        raise ConfigError(f"Data config {data_config!r} has no 'input_size'; expected a timm data config"
                          f" with keys {', '.join(_CONFIG_KEYS)}.")
    unknown = set(data_config) - set(_CONFIG_KEYS)
    data_config = preprocessing_config(data_config, preprocessing)
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
    out.preprocessing = preprocessing
    out.data_config = cfg
    # PIL's DCT-domain downscale filters differently from the study's full decode + bilinear resize: up to
    # 48 grey levels apart at edges on 1000-2400 px photos (docs/preprocessing.md), so `study` decodes fully.
    out.allows_draft = preprocessing == "model"
    return out


def split_for_batches(transform) -> tuple[Callable, Callable] | None:
    """``(per_item, per_batch)`` halves of a tensor-decoding :func:`build_transform` product, else None.

    The last two steps (uint8 → float, normalise) work elementwise, so they give the same values on a
    stacked batch; run there, the loader moves uint8 images (a quarter of the bytes through workers,
    pinned memory and the host-to-device copy) and the float pass runs once per batch on the device,
    as timm's ``PrefetchLoader`` does. ``per_item`` keeps the attributes the dataset reads
    (``decodes_to_tensor``, ``allows_draft``); ``per_batch`` takes its uint8 output and normalises the
    float copy in place (one pass fewer than torchvision's default, which clones first).
    """
    if not getattr(transform, "decodes_to_tensor", False) or not isinstance(transform, T.Compose):
        return None
    steps = list(transform.transforms)
    if len(steps) < 2 or not isinstance(steps[-2], ToFloat) or not isinstance(steps[-1], T.Normalize):
        return None
    per_item = T.Compose(steps[:-2])
    for attr in ("decodes_to_tensor", "allows_draft", "preprocessing", "data_config"):
        if hasattr(transform, attr):
            setattr(per_item, attr, getattr(transform, attr))
    norm = steps[-1]
    return per_item, T.Compose([steps[-2], T.Normalize(norm.mean, norm.std, inplace=True)])


def draft_size_of(transform) -> tuple[int, int] | None:
    """(width, height) that the transform's first resize needs, for JPEG reduce-on-decode; None if unknown
    or if the transform does not allow it (``allows_draft``).

    Only a resize that comes before anything else that depends on pixel size is trusted. An int size
    resizes the shorter side, so both sides must stay at least that large.
    """
    if not getattr(transform, "allows_draft", True):
        return None
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
