"""ViT-B/16 encoders of the study, all on timm's ``vit_base_patch16_224``.

timm's ViT-B/16 uses LayerNorm eps 1e-6 and exact GELU, like torchvision, MoCo-v3, DINO and MAE.
Preprocessing follows each upstream's own linear-evaluation recipe (resize 256, centre-crop 224).
"""

from __future__ import annotations

import re

from timm.models.vision_transformer import checkpoint_filter_fn as _timm_vit_filter

from ._helpers import drop_unused_head, select_prefix, strip_prefix, timm_model_from_reference, unwrap
from ._registry import EncoderSpec, data_config, register_encoder

_MOCO_PREFIX = "module.base_encoder."

# torchvision VisionTransformer → timm VisionTransformer (applied in order, first match wins).
_TV_RENAMES = [
    (r"^class_token$", "cls_token"),
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_weight$", r"blocks.\1.attn.qkv.weight"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_bias$", r"blocks.\1.attn.qkv.bias"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
    # MLPBlock is MLP(Sequential) = [Linear, GELU, Dropout, Linear, Dropout]; torchvision < 0.13
    # named the linears linear_1 / linear_2.
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:0|linear_1)\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:3|linear_2)\.", r"blocks.\1.mlp.fc2."),
]


def _convert_torchvision(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        for pattern, repl in _TV_RENAMES:
            new, n = re.subn(pattern, repl, k)
            if n:
                k = new
                break
        out[k] = v
    return out


def checkpoint_filter_fn(state_dict, model) -> dict:
    """torchvision / MoCo-v3 / DINO / MAE ViT-B/16 checkpoints → timm ``vit_base_patch16_224`` keys.

    - torchvision: ``class_token``, ``conv_proj``, ``encoder.layers.encoder_layer_N.*`` (fused
      ``in_proj_weight`` is already timm's ``qkv`` order q, k, v), ``heads.head`` (classifier).
    - MoCo-v3: timm keys under ``state_dict['module.base_encoder.']``; ``head.*`` is the projector.
    - MAE pretraining: ``{'model': ...}`` with ``mask_token`` and ``decoder_*`` (dropped).
    - DINO: timm keys already.
    Positional-embedding resampling (another ``img_size``) is left to timm's own ViT filter.
    """
    sd = unwrap(state_dict)
    if "class_token" in sd or "conv_proj.weight" in sd:
        sd = _convert_torchvision(sd)
    elif any(k.startswith(_MOCO_PREFIX) for k in sd):
        sd = select_prefix(sd, _MOCO_PREFIX)
    sd = strip_prefix(sd, "module.")
    sd = {k: v for k, v in sd.items() if not (k.startswith("decoder_") or k == "mask_token")}
    sd = drop_unused_head(sd, model, ("head.",))
    return _timm_vit_filter(sd, model)


def _torchvision_init_vit_b_16(**kwargs):
    """timm ViT-B/16 holding ``torchvision.models.vit_b_16(weights=None)``'s initial weights.

    The study's random baseline is torchvision's init (zero class token, xavier MLPs), which differs
    from timm's truncated-normal init. ``depth``/``img_size`` map onto torchvision's arguments.
    """
    import torchvision

    reference = torchvision.models.VisionTransformer(
        image_size=kwargs.get("img_size", 224), patch_size=16, num_layers=kwargs.get("depth", 12),
        num_heads=12, hidden_dim=768, mlp_dim=3072,
    )
    return timm_model_from_reference("vit_base_patch16_224", reference, checkpoint_filter_fn, **kwargs)


_TV_LAYOUT = ("torchvision vit_b_16 state dict (class_token, conv_proj, encoder.pos_embedding, "
              "encoder.layers.encoder_layer_N.{ln_1,self_attention,ln_2,mlp}, encoder.ln, heads.head)")

_COMMON = dict(
    arch="vit_base_patch16_224",
    num_features=768,
    checkpoint_filter=checkpoint_filter_fn,
)

register_encoder(EncoderSpec(
    name="vit_base_patch16_224.tv_in1k",
    **_COMMON,
    pooling="cls",
    data_config=data_config(interpolation="bilinear", crop_pct=0.875),
    group="supervised",
    paper_name="Supervised ViT-B/16",
    description="ViT-B/16 trained on ImageNet-1k with labels (torchvision IMAGENET1K_V1), CLS token",
    weights_url="https://download.pytorch.org/models/vit_b_16-c867db91.pth",
    weights_layout=_TV_LAYOUT,
    license="bsd-3-clause",
))

register_encoder(EncoderSpec(
    name="vit_base_patch16_224.mocov3",
    **_COMMON,
    pooling="cls",
    data_config=data_config(interpolation="bilinear", crop_pct=0.875),  # moco-v3 main_lincls.py
    group="self-supervised",
    paper_name="MoCo-v3 ViT-B/16",
    description="MoCo-v3 ViT-B/16, 300 epochs on ImageNet-1k (base encoder, CLS token; projector dropped)",
    weights_url="https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
    weights_layout="MoCo-v3 checkpoint {'state_dict': {'module.base_encoder.<timm ViT key>': ...}}",
    license="cc-by-nc-4.0",
))

register_encoder(EncoderSpec(
    name="vit_base_patch16_224.dino",
    **_COMMON,
    pooling="cls",
    data_config=data_config(interpolation="bicubic", crop_pct=0.875),  # dino eval_linear.py
    group="self-supervised",
    paper_name="DINO ViT-B/16",
    description="DINO ViT-B/16 on ImageNet-1k (teacher backbone, CLS token); also timm's hub tag .dino",
    weights_url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    weights_layout="DINO hub state dict (timm ViT keys, no head)",
    license="apache-2.0",
))

_MAE = dict(
    weights_url="https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth",
    weights_layout="MAE pretraining checkpoint {'model': {timm ViT keys + mask_token + decoder_*}}",
    data_config=data_config(interpolation="bicubic", crop_pct=0.875),  # mae main_linprobe.py
    group="self-supervised",
    license="cc-by-nc-4.0",
)

register_encoder(EncoderSpec(
    name="vit_base_patch16_224.mae",
    **_COMMON,
    **_MAE,
    pooling="cls",
    paper_name="MAE (CLS) ViT-B/16",
    description="MAE ViT-B/16 pretrained encoder on ImageNet-1k, CLS token after the final norm",
))

# The MAE pretraining checkpoint has the final ``norm.*`` but no ``fc_norm.*`` (that LayerNorm is
# only created for fine-tuning). So the mean-pooled encoder keeps the pretrained final norm on every
# token (fc_norm=False) and then averages the patch tokens, CLS excluded (global_pool='avg'): it
# loads strictly and invents no weights. (The study's MAE code instead pooled un-normed tokens
# through a freshly initialised fc_norm, i.e. a LayerNorm without learnt affine.)
register_encoder(EncoderSpec(
    name="vit_base_patch16_224.mae_avg",
    **_COMMON,
    **_MAE,
    arch_kwargs={"global_pool": "avg", "fc_norm": False},
    pooling="mean_patch",
    paper_name="MAE (avg) ViT-B/16",
    description="MAE ViT-B/16 pretrained encoder on ImageNet-1k, mean of normed patch tokens",
))

register_encoder(EncoderSpec(
    name="vit_base_patch16_224.random",
    **{**_COMMON, "model_fn": _torchvision_init_vit_b_16},
    pooling="cls",
    data_config=data_config(interpolation="bilinear", crop_pct=0.875),
    group="baseline",
    paper_name="Random ViT-B/16",
    description="ViT-B/16 with random weights (torchvision init, seed 0): the no-learning baseline",
    pretrained=False,
    weights_layout=_TV_LAYOUT,
))
