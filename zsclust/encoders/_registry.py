"""The encoder registry: one name → architecture, weights source and preprocessing.

Family modules (``_resnet.py``, ``_vit.py``, ...) register their entries at import time, like
timm's ``@register_model``. A registered name wins over a timm name of the same spelling.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlparse

from ..errors import ConfigError, UnknownEncoderError, did_you_mean

__all__ = ["EncoderSpec", "register_encoder", "list_encoders", "get_encoder_spec", "is_registered"]

#: Keys a complete ``data_config`` must have (what ``timm.data.create_transform`` consumes).
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
GROUPS = ("supervised", "self-supervised", "fine-tuned", "baseline", "extra")
POOLINGS = ("avg", "cls", "mean_patch", "flatten", "attn")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def data_config(
    *,
    input_size: int = 224,
    interpolation: str = "bilinear",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    crop_pct: float = 0.875,
    crop_mode: str = "center",
) -> dict:
    """A complete timm-style data config; defaults are the classic 'resize 256, crop 224' recipe."""
    return {
        "input_size": (3, input_size, input_size),
        "interpolation": interpolation,
        "mean": tuple(mean),
        "std": tuple(std),
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
    }


@dataclass(frozen=True)
class EncoderSpec:
    """Everything one registered encoder name stands for.

    Exactly one weights source is expected: ``weights_url`` (upstream file, loaded through
    ``checkpoint_filter``), ``hf_hub_id`` (timm's hub copy), ``weights_file`` (a callable returning
    a local path, e.g. from an installed package or a folder), or ``pretrained=False`` (seeded
    random init). ``model_fn`` replaces ``timm.create_model`` for architectures timm does not have.
    ``file_name`` is the checkpoint's local name: the one looked for when ``weights=`` is a folder,
    and the download's name in the torch hub cache (it defaults to the URL's basename; set it where
    two upstreams publish the same basename). ``sha256`` is the upstream's published checksum,
    verified on download.
    """

    name: str
    arch: str
    data_config: Mapping[str, Any]
    pooling: str
    num_features: int
    group: str
    paper_name: str
    description: str = ""
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights_url: str | None = None
    sha256: str | None = None
    file_name: str | None = None
    hf_hub_id: str | None = None
    weights_file: Callable[[], str] | None = None
    checkpoint_filter: Callable[[dict, Any], dict] | None = None
    weights_layout: str = ""  # the upstream key layout, quoted in conversion errors
    pretrained: bool = True
    has_weights: bool = True  # False for weight-free encoders (raw pixels)
    model_fn: Callable[..., Any] | None = None
    license: str | None = None

    def __hash__(self):  # the frozen mappings are unhashable; the name identifies the entry
        return hash(self.name)

    def __post_init__(self):
        # Freeze the mappings so a spec cannot be changed behind the registry's back.
        object.__setattr__(self, "data_config", MappingProxyType(dict(self.data_config)))
        object.__setattr__(self, "arch_kwargs", MappingProxyType(dict(self.arch_kwargs)))

    @property
    def weights_source(self) -> str:
        """Where the pretrained weights come from, as one string (for listings and describe())."""
        if not self.has_weights:
            return "none"
        if not self.pretrained:
            return "random-init"
        if self.weights_url:
            return self.weights_url
        if self.hf_hub_id:
            return f"hf-hub:{self.hf_hub_id}"
        if self.weights_file is not None:
            return f"local:{self.file_name}" if self.file_name else "local-file"
        return "none"

    @property
    def local_file_name(self) -> str | None:
        """The checkpoint's file name in a weights folder (``file_name``, else the URL's basename)."""
        if self.file_name:
            return self.file_name
        return os.path.basename(urlparse(self.weights_url).path) if self.weights_url else None

    @property
    def preprocessing(self) -> str:
        """The data config in a few words, e.g. 'resize 256 bicubic, crop 224, ImageNet mean/std'."""
        c = self.data_config
        size = c["input_size"][-1]
        mean, std = tuple(c["mean"]), tuple(c["std"])
        if (mean, std) in ((IMAGENET_MEAN, IMAGENET_STD), (CLIP_MEAN, CLIP_STD)):
            norm = ("ImageNet" if mean == IMAGENET_MEAN else "CLIP") + " mean/std"
        elif set(mean) == {0.0} and set(std) == {1.0}:
            norm = "pixels in [0, 1]"
        else:
            norm = f"mean {mean}, std {std}"
        resize = round(size / c["crop_pct"])
        crop = f"resize {resize} {c['interpolation']}, crop {size}" if resize != size else \
            f"resize {size} {c['interpolation']} (whole short side)"
        return f"{crop}, {norm}"


_REGISTRY: dict[str, EncoderSpec] = {}


def _validate(spec: EncoderSpec) -> None:
    problems = []
    missing = [k for k in DATA_CONFIG_KEYS if k not in spec.data_config]
    if missing:
        problems.append(f"data_config lacks {missing}")
    if not isinstance(spec.num_features, int) or spec.num_features <= 0:
        problems.append(f"num_features must be a positive int, got {spec.num_features!r}")
    if spec.group not in GROUPS:
        problems.append(f"group must be one of {GROUPS}, got {spec.group!r}")
    if spec.pooling not in POOLINGS:
        problems.append(f"pooling must be one of {POOLINGS}, got {spec.pooling!r}")
    sources = [s for s in (spec.weights_url, spec.hf_hub_id, spec.weights_file) if s]
    if spec.pretrained and len(sources) != 1:
        problems.append("a pretrained entry needs exactly one of weights_url, hf_hub_id, weights_file")
    if not spec.has_weights and spec.pretrained:
        problems.append("an entry without weights must set pretrained=False")
    if spec.weights_url and spec.checkpoint_filter is None:
        problems.append("an entry with weights_url needs a checkpoint_filter")
    if spec.sha256 is not None and not (spec.weights_url and re.fullmatch(r"[0-9a-f]{64}", spec.sha256)):
        problems.append("sha256 must be 64 lowercase hex digits, on an entry with weights_url")
    if problems:
        raise ConfigError(f"Invalid encoder spec '{spec.name}': " + "; ".join(problems) + ".")


def register_encoder(spec: EncoderSpec, *, overwrite: bool = False) -> EncoderSpec:
    """Add ``spec`` to the registry (validated) and return it; the extension point for new encoders."""
    _validate(spec)
    if spec.name in _REGISTRY and not overwrite and _REGISTRY[spec.name] != spec:
        raise ConfigError(f"Encoder '{spec.name}' is already registered; pass overwrite=True to replace it.")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_encoder(name: str) -> None:
    """Remove a registered name (tests and notebooks that register temporary entries)."""
    _REGISTRY.pop(name, None)


def list_encoders(pattern: str | None = None) -> list[str]:
    """Registered encoder names, sorted, optionally filtered by an fnmatch ``pattern``."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def get_encoder_spec(name: str) -> EncoderSpec:
    """The spec of a registered name; unknown names raise :class:`UnknownEncoderError`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEncoderError(
            f"Unknown encoder '{name}'.{did_you_mean(name, _REGISTRY)} "
            "List the registered encoders with `zsclust encoders`."
        ) from None
