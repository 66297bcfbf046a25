"""DINOv2 ViT-S/14, B/14, L/14 and g/14 (timm hub weights), run at 224 px like the study.

timm's filter resamples the 518-px positional embedding to the 16×16 grid of a 224 input at load
time (bicubic, antialiased); torch.hub's DINOv2 interpolates on the fly instead, so features can
differ from the hub model's in the last decimals. ViT-g's SwiGLU MLP (upstream ``mlp.w12``,
``mlp.w3``) is timm's packed SwiGLU (``mlp.fc1``, ``mlp.fc2``). The original upstream files
(``dinov2_vit*14_pretrain.pth``) load through ``--weights`` (a file, or a folder holding them).
"""

from __future__ import annotations

from timm.models.vision_transformer import checkpoint_filter_fn as _timm_vit_filter

from ._helpers import strip_prefix, unwrap
from ._registry import EncoderSpec, data_config, register_encoder


def checkpoint_filter_fn(state_dict, model) -> dict:
    """timm hub file or the original ``dinov2_vit*14_pretrain.pth`` → timm keys (timm's converter)."""
    return _timm_vit_filter(strip_prefix(unwrap(state_dict), "module."), model)


# DINOv2's linear evaluation: Resize(256, bicubic), CenterCrop(224), ImageNet statistics.
_DATA = data_config(interpolation="bicubic", crop_pct=0.875)
_LAYOUT = "timm hub file (model.safetensors) or DINOv2 hub state dict (dinov2_vit*14_pretrain.pth)"

for _size, _short, _width in (("small", "s", 384), ("base", "b", 768), ("large", "l", 1024), ("giant", "g", 1536)):
    _name = f"vit_{_size}_patch14_dinov2.lvd142m"
    _paper = f"DINOv2 ViT-{_short.upper()}/14"
    register_encoder(EncoderSpec(
        name=_name,
        arch=_name,
        arch_kwargs={"img_size": 224},
        pooling="cls",
        num_features=_width,
        data_config=_DATA,
        group="self-supervised",
        paper_name=_paper,
        description=f"{_paper} on LVD-142M at 224 px, CLS token after the final norm "
        f"(torch.hub facebookresearch/dinov2 dinov2_vit{_short}14)",
        hf_hub_id=f"timm/{_name}",
        file_name=f"dinov2_vit{_short}14_pretrain.pth",
        checkpoint_filter=checkpoint_filter_fn,
        weights_layout=_LAYOUT,
        license="apache-2.0",
    ))
