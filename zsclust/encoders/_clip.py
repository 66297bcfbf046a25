"""CLIP image towers (OpenAI weights through timm's hub copies), giving CLIP's image embedding.

Like ``clip.encode_image`` in the study, the features include CLIP's final projection: the
attention-pool output projection for RN50 (1024-d), ``ln_post`` CLS token × ``proj`` for ViT-B/16
(512-d). So these entries keep timm's head (``num_classes`` = embedding width).
"""

from __future__ import annotations

from timm.models.byobnet import checkpoint_filter_fn as _timm_byobnet_filter
from timm.models.vision_transformer import checkpoint_filter_fn as _timm_vit_filter

from ._helpers import strip_prefix, unwrap
from ._registry import CLIP_MEAN, CLIP_STD, EncoderSpec, data_config, register_encoder


def checkpoint_filter_fn(state_dict, model) -> dict:
    """timm hub / OpenCLIP / OpenAI CLIP (``visual.*``) checkpoints → timm keys (timm's own converters)."""
    sd = strip_prefix(unwrap(state_dict), "module.")
    if hasattr(model, "blocks"):
        return _timm_vit_filter(sd, model)
    return _timm_byobnet_filter(sd, model)


# OpenAI's preprocess: Resize(224, bicubic) then CenterCrop(224), i.e. crop_pct 1.0.
_CLIP_DATA = data_config(interpolation="bicubic", crop_pct=1.0, mean=CLIP_MEAN, std=CLIP_STD)
_LAYOUT = "timm hub file (model.safetensors) or OpenAI CLIP state dict ('visual.*' keys)"

register_encoder(EncoderSpec(
    name="resnet50_clip.openai",
    arch="resnet50_clip.openai",
    arch_kwargs={"num_classes": 1024},
    pooling="attn",
    num_features=1024,
    data_config=_CLIP_DATA,
    group="self-supervised",
    paper_name="CLIP RN50",
    description="OpenAI CLIP RN50 image tower: attention-pooled, projected image embedding",
    hf_hub_id="timm/resnet50_clip.openai",
    checkpoint_filter=checkpoint_filter_fn,
    weights_layout=_LAYOUT,
    license="mit",
))

# The OpenAI ViT uses QuickGELU: timm's *_quickgelu_* architecture reproduces it exactly (the plain
# vit_base_patch16_clip_224 with these weights would use GELU). Same hub weights either way.
register_encoder(EncoderSpec(
    name="vit_base_patch16_clip_quickgelu_224.openai",
    arch="vit_base_patch16_clip_quickgelu_224.openai",
    arch_kwargs={"num_classes": 512},
    pooling="cls",
    num_features=512,
    data_config=_CLIP_DATA,
    group="self-supervised",
    paper_name="CLIP ViT-B/16",
    description="OpenAI CLIP ViT-B/16 image tower: projected CLS embedding",
    hf_hub_id="timm/vit_base_patch16_clip_224.openai",
    checkpoint_filter=checkpoint_filter_fn,
    weights_layout=_LAYOUT,
    license="mit",
))
