"""ViT encoders: torchvision, MoCo-v3, DINO and MAE (pretrained and fine-tuned), on timm's ViTs.

timm's ViTs use LayerNorm eps 1e-6 and exact GELU, like torchvision, MoCo-v3, DINO and MAE; MoCo-v3's
ViT-S has 12 heads (timm's ViT-S has 6), set through ``num_heads``. Preprocessing follows each
upstream's own linear-evaluation recipe (resize 256, centre-crop 224).
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
    """torchvision / MoCo-v3 / DINO / MAE ViT checkpoints → timm ``VisionTransformer`` keys.

    - torchvision: ``class_token``, ``conv_proj``, ``encoder.layers.encoder_layer_N.*`` (fused
      ``in_proj_weight`` is already timm's ``qkv`` order q, k, v), ``heads.head`` (classifier).
    - MoCo-v3: timm keys under ``state_dict['module.base_encoder.']``; ``head.*`` is the projector.
    - MAE pretraining: ``{'model': ...}`` with ``mask_token`` and ``decoder_*`` (dropped).
    - MAE fine-tuning: ``{'model': ...}`` with ``fc_norm`` and the classifier ``head``, no ``norm``.
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
_LINEAR_EVAL = data_config(interpolation="bilinear", crop_pct=0.875)  # torchvision, moco-v3 main_lincls.py
_BICUBIC_EVAL = data_config(interpolation="bicubic", crop_pct=0.875)  # dino eval_linear.py, mae main_linprobe.py
_WIDTHS = {"small": 384, "base": 768, "large": 1024, "huge": 1280}
_DL = "https://dl.fbaipublicfiles.com/"


def _register(name: str, paper_name: str, description: str, **fields) -> None:
    """One ViT entry: a CLS-token encoder on the timm arch named before the tag, unless ``fields`` say otherwise."""
    arch = name.split(".")[0]
    register_encoder(EncoderSpec(**{
        "name": name,
        "arch": arch,
        "num_features": _WIDTHS[arch.split("_")[1]],
        "pooling": "cls",
        "checkpoint_filter": checkpoint_filter_fn,
        "group": "self-supervised",
        "paper_name": paper_name,
        "description": description,
        **fields,
    }))


def _size(arch: str) -> str:
    """'vit_small_patch8_224' → 'ViT-S/8', as the papers write it."""
    _, size, patch, _ = arch.split("_")
    return f"ViT-{size[0].upper()}/{patch.removeprefix('patch')}"


_register("vit_base_patch16_224.tv_in1k", "Supervised ViT-B/16", "ViT-B/16 trained on ImageNet-1k with labels "
          "(torchvision IMAGENET1K_V1), CLS token", data_config=_LINEAR_EVAL, group="supervised",
          weights_url="https://download.pytorch.org/models/vit_b_16-c867db91.pth", weights_layout=_TV_LAYOUT,
          license="bsd-3-clause")

for _arch, _file in (("vit_small_patch16_224", "vit-s-300ep"), ("vit_base_patch16_224", "vit-b-300ep")):
    _register(f"{_arch}.mocov3", f"MoCo-v3 {_size(_arch)}", f"MoCo-v3 {_size(_arch)}, 300 epochs on ImageNet-1k "
              "(base encoder, CLS token; projector dropped)", data_config=_LINEAR_EVAL,
              weights_url=_DL + f"moco-v3/{_file}/{_file}.pth.tar", license="cc-by-nc-4.0",
              weights_layout="MoCo-v3 checkpoint {'state_dict': {'module.base_encoder.<timm ViT key>': ...}}",
              arch_kwargs={"num_heads": 12} if "small" in _arch else {})

for _arch, _file, _hub in (("vit_small_patch16_224", "dino_deitsmall16", "dino_vits16"),
                           ("vit_small_patch8_224", "dino_deitsmall8", "dino_vits8"),
                           ("vit_base_patch16_224", "dino_vitbase16", "dino_vitb16"),
                           ("vit_base_patch8_224", "dino_vitbase8", "dino_vitb8")):
    _register(f"{_arch}.dino", f"DINO {_size(_arch)}", f"DINO {_size(_arch)} on ImageNet-1k (teacher backbone, "
              f"CLS token; torch.hub facebookresearch/dino {_hub})",
              data_config=_BICUBIC_EVAL, weights_url=_DL + f"dino/{_file}_pretrain/{_file}_pretrain.pth",
              weights_layout="DINO hub state dict (timm ViT keys, no head)", license="apache-2.0")

# MAE, pretrained. The pretraining checkpoint has the final ``norm.*`` but no ``fc_norm.*`` (that
# LayerNorm is only created for fine-tuning). So the mean-pooled encoder keeps the pretrained final
# norm on every token (fc_norm=False) and then averages the patch tokens, CLS excluded
# (global_pool='avg'): it loads strictly and invents no weights. (The study's MAE code instead
# pooled un-normed tokens through a freshly initialised fc_norm, i.e. a LayerNorm without learnt affine.)
# MAE, fine-tuned (MAE's released ImageNet-1k classifiers, fine-tuned with global pooling): the
# checkpoint has ``fc_norm`` and no ``norm``. The mean-pooled encoder is exactly the classifier's
# input; the CLS encoder passes the CLS token through that same fine-tuned fc_norm (the study's
# code used a freshly initialised norm there).
_MAE_POOLS = {
    "mae": ("CLS", "cls", {}, "CLS token after the final norm"),
    "mae_avg": ("avg", "mean_patch", {"global_pool": "avg", "fc_norm": False}, "mean of normed patch tokens"),
    "mae_ft": ("CLS", "cls", {"global_pool": "token", "fc_norm": True}, "CLS token through the fine-tuned fc_norm"),
    "mae_ft_avg": ("avg", "mean_patch", {"global_pool": "avg", "fc_norm": True},
                   "mean of patch tokens through the fine-tuned fc_norm"),
}
for _arch, _size_name in (("vit_base_patch16_224", "base"), ("vit_large_patch16_224", "large"),
                          ("vit_huge_patch14_224", "huge")):
    for _tag, (_pool_name, _pooling, _kwargs, _how) in _MAE_POOLS.items():
        _ft = _tag.startswith("mae_ft")
        _register(
            f"{_arch}.{_tag}", f"MAE ({_pool_name}) {_size(_arch)}" + (" [FT]" if _ft else ""),
            f"MAE {_size(_arch)} " + ("fine-tuned on ImageNet-1k (MAE's released classifier), " if _ft else
                                      "pretrained encoder on ImageNet-1k, ") + _how,
            data_config=_BICUBIC_EVAL, arch_kwargs=_kwargs, pooling=_pooling, license="cc-by-nc-4.0",
            group="fine-tuned" if _ft else "self-supervised",
            weights_url=_DL + (f"mae/finetune/mae_finetuned_vit_{_size_name}.pth" if _ft else
                               f"mae/pretrain/mae_pretrain_vit_{_size_name}.pth"),
            weights_layout="MAE fine-tuning checkpoint {'model': {timm ViT keys + fc_norm + head, no norm}}" if _ft
            else "MAE pretraining checkpoint {'model': {timm ViT keys + mask_token + decoder_*}}",
        )

_register("vit_base_patch16_224.random", "Random ViT-B/16", "ViT-B/16 with random weights (torchvision init, "
          "seed 0): the no-learning baseline", model_fn=_torchvision_init_vit_b_16, data_config=_LINEAR_EVAL,
          group="baseline", pretrained=False, weights_layout=_TV_LAYOUT)
