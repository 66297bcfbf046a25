"""VICRegL ConvNeXt-S and ConvNeXt-B (α 0.9 and 0.75) on timm's ConvNeXt.

VICRegL's ConvNeXt has no layer scale (``layer_scale_init_value=0``, timm's ``ls_init_value=None``)
and its feature is the mean over positions of the final LayerNorm applied to every position, not
timm's default 'pool, then norm'. timm's ``head_norm_first=True`` is exactly that: ``norm_pre``
normalises every position, then the head averages. The torch.hub model returns
``(tokens, mean)``; the study took the mean (``forward(x)[-1]``), as these entries do.
"""

from __future__ import annotations

from functools import partial

from timm.models.convnext import checkpoint_filter_fn as _timm_convnext_filter

from ._helpers import select_prefix, strip_prefix, unwrap
from ._registry import EncoderSpec, data_config, register_encoder

__all__ = ["checkpoint_filter_fn", "vicregl_convnext"]


def checkpoint_filter_fn(state_dict, model) -> dict:
    """VICRegL (Facebook ConvNeXt layout: ``downsample_layers``, ``stages.N.M.dwconv``, ``norm``) → timm.

    timm's own filter renames the blocks; the final ``norm`` it maps to ``head.norm`` becomes
    ``norm_pre`` here, where a head-norm-first ConvNeXt keeps it. VICRegL's full checkpoints
    (``*_fullckpt.pth``) nest the backbone under ``model`` / ``module.backbone.``.
    """
    sd = strip_prefix(unwrap(state_dict), "module.")
    if any(k.startswith("backbone.") for k in sd):
        sd = select_prefix(sd, "backbone.")
    sd = _timm_convnext_filter(sd, model)
    return {("norm_pre." + k[len("head.norm."):] if k.startswith("head.norm.") else k): v for k, v in sd.items()}


def vicregl_convnext(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), **kwargs):
    """timm ConvNeXt as VICRegL builds it: no layer scale, norm on every position before the mean.

    Built from timm's class: ``timm.create_model`` drops ``None`` kwargs, and ``ls_init_value=None``
    is how timm says 'no layer scale'. ``depths=(1, 1, 1, 1)`` gives a reduced copy (the tests' hook).
    """
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(**{"depths": depths, "dims": dims, "num_classes": 0, "head_norm_first": True, **kwargs,
                       "ls_init_value": None})


# timm arch → paper name, widths (VICRegL's convnext_small / convnext_base: depths 3, 3, 27, 3)
_ARCHS = {"convnext_small": ("ConvNeXt-S", (96, 192, 384, 768)), "convnext_base": ("ConvNeXt-B", (128, 256, 512, 1024))}
for _arch, (_paper, _dims) in _ARCHS.items():
    for _alpha in ("0.9", "0.75"):
        _tag = f"vicregl_alpha{_alpha.replace('.', 'p')}"
        _hub = f"{_arch}_alpha{_alpha.replace('.', 'p')}"
        register_encoder(EncoderSpec(
            name=f"{_arch}.{_tag}",
            arch=_arch,
            model_fn=partial(vicregl_convnext, dims=_dims),
            pooling="avg",
            num_features=_dims[-1],
            data_config=data_config(interpolation="bilinear", crop_pct=0.875),  # VICRegL evaluate.py
            group="self-supervised",
            paper_name=f"VICRegL {_paper} (alpha {_alpha})",
            description=f"VICRegL {_paper} on ImageNet-1k, alpha {_alpha}: mean of the final-normed positions "
            f"(torch.hub facebookresearch/VICRegL {_hub})",
            weights_url=f"https://dl.fbaipublicfiles.com/vicregl/{_arch}_alpha{_alpha}.pth",
            checkpoint_filter=checkpoint_filter_fn,
            weights_layout="VICRegL hub state dict (ConvNeXt: downsample_layers.*, stages.N.M.{dwconv,norm,pwconv1,"
            "pwconv2}, norm)",
            license="cc-by-nc-4.0",
        ))
