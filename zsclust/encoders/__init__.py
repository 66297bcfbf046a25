"""Encoders: a registry of named recipes (architecture + weights + preprocessing) and one factory.

    create_encoder("resnet50.dino")                                   # registered zsclust entry
    create_encoder("convnext_tiny.fb_in1k")                           # any timm model name
    create_encoder("resnet50.mocov3", weights="r-50-1000ep.pth.tar")  # upstream file, offline
    create_encoder("resnet50.swav", weights="~/weights/")             # a folder of upstream files
    create_encoder("vit_base_patch16_224.random")                     # seeded random baseline
"""

from ._encoder import Encoder, weights_digest
from ._factory import create_encoder
from ._listing import encoder_table
from ._registry import EncoderSpec, get_encoder_spec, list_encoders, register_encoder, unregister_encoder

# Family modules register their entries on import (like timm's @register_model).
from . import _resnet, _vit, _convnext, _clip, _dinov2, _efficientnet_lite, _pixels  # noqa: E402,F401  isort: skip
from . import _finetuned  # noqa: E402,F401  isort: skip  (derives from the entries above)

__all__ = [
    "Encoder",
    "EncoderSpec",
    "create_encoder",
    "encoder_table",
    "get_encoder_spec",
    "list_encoders",
    "register_encoder",
    "unregister_encoder",
    "weights_digest",
]
