"""ResNet encoders: torchvision, MoCo-v3, DINO, SwAV, Barlow Twins, VICReg and VICRegL.

All of these upstreams use torchvision's key names (``conv1``, ``bn1``, ``layer1-4``, ``fc``), so
one filter serves them, and timm's ``resnet18``/``resnet50``/``resnet200`` hold them. SwAV's and
VICReg's wide ResNets (``resnet50x2`` ...) widen the stem as well as every stage, which timm's
ResNet cannot express: :func:`wide_resnet` builds them. SwAV's and VICReg's ResNets pad the input
by 1 and convolve with padding 2, the same as torchvision's padding 3.

Preprocessing follows each upstream's own linear-evaluation recipe: resize 256, centre-crop 224.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from ._helpers import drop_unused_head, select_prefix, strip_prefix, timm_model_from_reference, unwrap
from ._registry import EncoderSpec, data_config, register_encoder

__all__ = ["checkpoint_filter_fn", "wide_resnet"]

_MOCO_PREFIX = "module.base_encoder."
_SSL_HEADS = ("projection_head.", "prototypes.")  # SwAV's projector and prototypes


def checkpoint_filter_fn(state_dict, model) -> dict:
    """torchvision-layout ResNet checkpoints of every upstream here → timm ResNet keys.

    MoCo-v3 nests the backbone under ``state_dict['module.base_encoder.']`` next to the momentum
    encoder and predictor (dropped), and its ``fc.*`` is the projection MLP; SwAV's file is
    ``module.``-prefixed and holds ``projection_head.*`` and ``prototypes.*``. Projectors and
    classifiers are not features: they are dropped for the headless model.
    """
    sd = unwrap(state_dict)
    if any(k.startswith(_MOCO_PREFIX) for k in sd):
        sd = select_prefix(sd, _MOCO_PREFIX)
    sd = strip_prefix(sd, "module.")
    sd = {k: v for k, v in sd.items() if not k.startswith(_SSL_HEADS)}
    return drop_unused_head(sd, model, ("fc.",))


def wide_resnet(depth_arch: str = "resnet50", widen: int = 2, **kwargs) -> nn.Module:
    """A timm ResNet with every width, the stem's included, multiplied by ``widen`` (SwAV/VICReg).

    SwAV's 'RN50-w2' and VICReg's 'ResNet-50 (x2)' are this: stem ``64·w`` channels, stages of
    ``64·w ... 512·w`` planes, ``2048·w`` features. timm's ResNet widens the stages through
    ``channels`` but hard-codes a 64-channel stem, so the stem and the first block's two
    stem-facing convolutions are rebuilt at the wider width; the keys stay torchvision's.
    ``layers=(1, 1, 1, 1)`` gives a one-block-per-stage copy (what the registry tests build).
    """
    import timm

    model = timm.create_model(
        depth_arch, pretrained=False, **{"num_classes": 0, **kwargs},
        channels=tuple(c * widen for c in (64, 128, 256, 512)),
    )
    stem = 64 * widen
    first = model.layer1[0]
    model.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(stem)
    first.conv1 = nn.Conv2d(stem, first.conv1.out_channels, kernel_size=1, bias=False)
    first.downsample[0] = nn.Conv2d(stem, first.downsample[0].out_channels, kernel_size=1, bias=False)
    model.feature_info[0]["num_chs"] = stem
    for conv in (model.conv1, first.conv1, first.downsample[0]):  # timm's own init for the rebuilt convs
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return model


def _torchvision_init_resnet50(**kwargs):
    """timm ``resnet50`` holding ``torchvision.models.resnet50(weights=None)``'s initial weights.

    The study's random baseline is torchvision's init (timm's differs: it zero-inits the last BN of
    each block). Under the factory's seed this equals ``torch.manual_seed(0); resnet50()``.
    """
    import torchvision

    reference = torchvision.models.resnet50(weights=None)
    return timm_model_from_reference("resnet50", reference, checkpoint_filter_fn, **kwargs)


# Resize 256 (bilinear) + centre-crop 224: the linear-evaluation transform of torchvision's V1
# weights, MoCo-v3 (main_lincls.py), SwAV (eval_linear.py), Barlow Twins and VICReg(L) (evaluate.py).
_LINEAR_EVAL = data_config(interpolation="bilinear", crop_pct=0.875)
_TV_LAYOUT = "torchvision ResNet state dict (conv1, bn1, layer1-4, fc)"
_SWAV_LAYOUT = "SwAV state dict ('module.' + torchvision keys, projection_head.*, prototypes.*)"
_MOCO_LAYOUT = "MoCo-v3 checkpoint {'state_dict': {'module.base_encoder.<torchvision key>': ...}}"
_DL = "https://dl.fbaipublicfiles.com/"
_TV = "https://download.pytorch.org/models/"
# arch → (timm depth arch, widen): SwAV's RN50-w2/w4/w5 and VICReg's ResNet-50/200 x2.
_WIDE = {"resnet50x2": ("resnet50", 2), "resnet50x4": ("resnet50", 4), "resnet50x5": ("resnet50", 5),
         "resnet200x2": ("resnet200", 2)}


def _register(name: str, paper_name: str, description: str, url: str, **overrides) -> None:
    """One ResNet entry; ``overrides`` are what differs from a self-supervised torchvision-layout one."""
    arch = name.split(".")[0]
    depth_arch, widen = _WIDE.get(arch, (arch, 1))
    register_encoder(EncoderSpec(**{
        "name": name,
        "arch": arch,
        "pooling": "avg",
        "num_features": (512 if arch == "resnet18" else 2048) * widen,
        "data_config": _LINEAR_EVAL,
        "group": "self-supervised",
        "paper_name": paper_name,
        "description": description,
        "weights_url": url,
        "checkpoint_filter": checkpoint_filter_fn,
        "weights_layout": "torch.hub state dict (torchvision ResNet keys, no fc)",
        "model_fn": partial(wide_resnet, depth_arch, widen) if widen > 1 else None,
        "license": "mit",
        **overrides,
    }))


_SUPERVISED = dict(group="supervised", weights_layout=_TV_LAYOUT, license="bsd-3-clause")
_register("resnet18.tv_in1k", "Supervised ResNet-18", "ResNet-18 trained on ImageNet-1k with labels "
          "(torchvision IMAGENET1K_V1)", _TV + "resnet18-f37072fd.pth", **_SUPERVISED)
_register("resnet50.tv_in1k", "Supervised ResNet-50", "ResNet-50 trained on ImageNet-1k with labels "
          "(torchvision IMAGENET1K_V1)", _TV + "resnet50-0676ba61.pth", **_SUPERVISED)
# torchvision's V2 weights are evaluated at resize 232, crop 224; the study's main tables used them.
_register("resnet50.tv2_in1k", "Supervised ResNet-50 (V2)", "ResNet-50 trained on ImageNet-1k with labels, "
          "torchvision's improved recipe (IMAGENET1K_V2)", _TV + "resnet50-11ad3fa6.pth", **_SUPERVISED,
          data_config=data_config(interpolation="bilinear", crop_pct=224 / 232))
_register("resnet50.mocov3", "MoCo-v3 ResNet-50", "MoCo-v3 ResNet-50, 1000 epochs on ImageNet-1k (base encoder, "
          "projector dropped)", _DL + "moco-v3/r-50-1000ep/r-50-1000ep.pth.tar", weights_layout=_MOCO_LAYOUT,
          license="cc-by-nc-4.0")
_register("resnet50.dino", "DINO ResNet-50", "DINO ResNet-50 on ImageNet-1k (torch.hub facebookresearch/dino "
          "dino_resnet50)", _DL + "dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth", license="apache-2.0",
          data_config=data_config(interpolation="bicubic", crop_pct=0.875))  # dino eval_linear.py
# arch, the hub's name (and the paper's), the file, training
for _arch, _hub, _file, _what in (("resnet50", "resnet50", "swav_800ep_pretrain", "800 epochs"),
                                  ("resnet50x2", "resnet50w2", "swav_RN50w2_400ep_pretrain", "400 epochs"),
                                  ("resnet50x4", "resnet50w4", "swav_RN50w4_400ep_pretrain", "400 epochs"),
                                  ("resnet50x5", "resnet50w5", "swav_RN50w5_400ep_pretrain", "400 epochs")):
    _paper = "SwAV " + _hub.replace("resnet50", "ResNet-50 ").strip()
    _register(f"{_arch}.swav", _paper, f"{_paper}, {_what} on ImageNet-1k (torch.hub facebookresearch/swav "
              f"{_hub}; projector and prototypes dropped)", _DL + f"deepcluster/{_file}.pth.tar",
              weights_layout=_SWAV_LAYOUT, license="cc-by-nc-4.0")
# 'resnet50.pth' is both Barlow Twins' and VICReg's file name: cache and look them up under distinct names.
_register("resnet50.barlowtwins", "Barlow Twins ResNet-50", "Barlow Twins ResNet-50, 1000 epochs on ImageNet-1k "
          "(torch.hub facebookresearch/barlowtwins resnet50)",
          _DL + "barlowtwins/ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051/resnet50.pth",
          file_name="barlowtwins_resnet50.pth")
for _arch, _paper in (("resnet50", "VICReg ResNet-50"), ("resnet50x2", "VICReg ResNet-50 x2"),
                      ("resnet200x2", "VICReg ResNet-200 x2")):
    _register(f"{_arch}.vicreg", _paper, f"{_paper} on ImageNet-1k (torch.hub facebookresearch/vicreg {_arch})",
              _DL + f"vicreg/{_arch}.pth", file_name=f"vicreg_{_arch}.pth")
for _alpha in ("0.9", "0.75"):
    _tag = _alpha.replace(".", "p")
    _register(f"resnet50.vicregl_alpha{_tag}", f"VICRegL ResNet-50 (alpha {_alpha})",
              f"VICRegL ResNet-50 on ImageNet-1k, alpha {_alpha} (torch.hub facebookresearch/VICRegL "
              f"resnet50_alpha{_tag}; pooled features)", _DL + f"vicregl/resnet50_alpha{_alpha}.pth",
              license="cc-by-nc-4.0")

register_encoder(EncoderSpec(
    name="resnet50.random",
    arch="resnet50",
    model_fn=_torchvision_init_resnet50,
    pooling="avg",
    num_features=2048,
    checkpoint_filter=checkpoint_filter_fn,
    data_config=_LINEAR_EVAL,
    group="baseline",
    paper_name="Random ResNet-50",
    description="ResNet-50 with random weights (torchvision init, seed 0): the no-learning baseline",
    pretrained=False,
    weights_layout=_TV_LAYOUT,
))
