"""ResNet-50 encoders of the study (timm ``resnet50``: same keys as torchvision's ``resnet50``).

Preprocessing follows each upstream's own linear-evaluation recipe (resize 256, centre-crop 224).
"""

from __future__ import annotations

from ._helpers import drop_unused_head, select_prefix, strip_prefix, timm_model_from_reference, unwrap
from ._registry import EncoderSpec, data_config, register_encoder

_MOCO_PREFIX = "module.base_encoder."


def checkpoint_filter_fn(state_dict, model) -> dict:
    """torchvision / DINO / VICReg / MoCo-v3 ResNet-50 checkpoints → timm ``resnet50`` keys.

    All of them use torchvision's key names; MoCo-v3 nests the backbone under
    ``state_dict['module.base_encoder.']`` next to the momentum encoder and predictor (dropped),
    and its ``fc.*`` is the projection MLP, not a classifier (dropped with the headless model).
    """
    sd = unwrap(state_dict)
    if any(k.startswith(_MOCO_PREFIX) for k in sd):
        sd = select_prefix(sd, _MOCO_PREFIX)
    sd = strip_prefix(sd, "module.")
    return drop_unused_head(sd, model, ("fc.",))


_TV_LAYOUT = "torchvision resnet50 state dict (conv1, bn1, layer1-4, fc)"

_COMMON = dict(
    arch="resnet50",
    pooling="avg",
    num_features=2048,
    checkpoint_filter=checkpoint_filter_fn,
)

register_encoder(EncoderSpec(
    name="resnet50.tv_in1k",
    **_COMMON,
    data_config=data_config(interpolation="bilinear", crop_pct=0.875),
    group="supervised",
    paper_name="Supervised ResNet-50",
    description="ResNet-50 trained on ImageNet-1k with labels (torchvision IMAGENET1K_V1)",
    weights_url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
    weights_layout=_TV_LAYOUT,
    license="bsd-3-clause",
))

register_encoder(EncoderSpec(
    name="resnet50.mocov3",
    **_COMMON,
    data_config=data_config(interpolation="bilinear", crop_pct=0.875),  # moco-v3 main_lincls.py
    group="self-supervised",
    paper_name="MoCo-v3 ResNet-50",
    description="MoCo-v3 ResNet-50, 1000 epochs on ImageNet-1k (base encoder, projector dropped)",
    weights_url="https://dl.fbaipublicfiles.com/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar",
    weights_layout="MoCo-v3 checkpoint {'state_dict': {'module.base_encoder.<torchvision resnet50 key>': ...}}",
    license="cc-by-nc-4.0",
))

register_encoder(EncoderSpec(
    name="resnet50.dino",
    **_COMMON,
    data_config=data_config(interpolation="bicubic", crop_pct=0.875),  # dino eval_linear.py
    group="self-supervised",
    paper_name="DINO ResNet-50",
    description="DINO ResNet-50 on ImageNet-1k (torch.hub facebookresearch/dino dino_resnet50)",
    weights_url="https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
    weights_layout="DINO hub state dict (torchvision resnet50 keys, no fc)",
    license="apache-2.0",
))

register_encoder(EncoderSpec(
    name="resnet50.vicreg",
    **_COMMON,
    data_config=data_config(interpolation="bilinear", crop_pct=0.875),  # vicreg evaluate.py
    group="self-supervised",
    paper_name="VICReg ResNet-50",
    description="VICReg ResNet-50 on ImageNet-1k (torch.hub facebookresearch/vicreg resnet50)",
    weights_url="https://dl.fbaipublicfiles.com/vicreg/resnet50.pth",
    # 'resnet50.pth' is also Barlow Twins' file name: cache it under an unambiguous name.
    url_file_name="vicreg_resnet50.pth",
    # VICReg's ResNet pads 1 then convolves with padding 2: the same as torchvision's padding 3.
    weights_layout="VICReg hub state dict (torchvision resnet50 keys, no fc)",
    license="mit",
))

def _torchvision_init_resnet50(**kwargs):
    """timm ``resnet50`` holding ``torchvision.models.resnet50(weights=None)``'s initial weights.

    The study's random baseline is torchvision's init (timm's differs: it zero-inits the last BN of
    each block). Under the factory's seed this equals ``torch.manual_seed(0); resnet50()``.
    """
    import torchvision

    reference = torchvision.models.resnet50(weights=None)
    return timm_model_from_reference("resnet50", reference, checkpoint_filter_fn, **kwargs)


register_encoder(EncoderSpec(
    name="resnet50.random",
    **{**_COMMON, "model_fn": _torchvision_init_resnet50},
    data_config=data_config(interpolation="bilinear", crop_pct=0.875),
    group="baseline",
    paper_name="Random ResNet-50",
    description="ResNet-50 with random weights (torchvision init, seed 0): the no-learning baseline",
    pretrained=False,
    weights_layout=_TV_LAYOUT,
))
