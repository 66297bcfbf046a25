"""OpenAI CLIP image towers (RN50 ... RN50x64, ViT-B/32 ... ViT-L/14@336), giving CLIP's image embedding.

Like ``clip.encode_image`` in the study, the features include CLIP's final projection: the
attention-pool output projection for the ResNets, ``ln_post`` CLS token × ``proj`` for the ViTs.
So these entries keep timm's head (``num_classes`` = embedding width). timm has every tower:
``resnet*_clip`` (CLIP's modified ResNet with attention pooling) and ``vit_*_clip_quickgelu_*`` (the
OpenAI ViTs use QuickGELU; the plain ``vit_*_clip_*`` with these weights would use GELU).

The weights are OpenAI's own files (what ``clip.load`` downloads), checked against the sha256 that
each URL carries. They are TorchScript archives with ``visual.*`` keys; timm's hub copies
(``model.safetensors``) load as well through ``--weights``.
"""

from __future__ import annotations

from timm.models.byobnet import checkpoint_filter_fn as _timm_byobnet_filter
from timm.models.vision_transformer import checkpoint_filter_fn as _timm_vit_filter

from ._helpers import strip_prefix, unwrap
from ._registry import CLIP_MEAN, CLIP_STD, EncoderSpec, data_config, register_encoder


def checkpoint_filter_fn(state_dict, model) -> dict:
    """OpenAI CLIP (``visual.*``) / OpenCLIP / timm hub checkpoints → timm keys (timm's own converters)."""
    sd = strip_prefix(unwrap(state_dict), "module.")
    if hasattr(model, "blocks"):
        return _timm_vit_filter(sd, model)
    return _timm_byobnet_filter(sd, model)


_OPENAI = "https://openaipublic.azureedge.net/clip/models/{sha256}/{file}"
_LAYOUT = "OpenAI CLIP file (TorchScript, 'visual.*' keys), or timm's hub file (model.safetensors)"

# clip.available_models() name, timm arch, embedding width, input size, sha256 (from clip/clip.py's URLs).
_TOWERS = [
    ("RN50", "resnet50_clip.openai", 1024, 224, "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"),
    ("RN101", "resnet101_clip.openai", 512, 224, "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599"),
    ("RN50x4", "resnet50x4_clip.openai", 640, 288, "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd"),
    ("RN50x16", "resnet50x16_clip.openai", 768, 384, "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa"),
    ("RN50x64", "resnet50x64_clip.openai", 1024, 448, "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c"),
    ("ViT-B/32", "vit_base_patch32_clip_quickgelu_224.openai", 512, 224,
     "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
    ("ViT-B/16", "vit_base_patch16_clip_quickgelu_224.openai", 512, 224,
     "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"),
    ("ViT-L/14", "vit_large_patch14_clip_quickgelu_224.openai", 768, 224,
     "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"),
    ("ViT-L/14@336px", "vit_large_patch14_clip_quickgelu_336.openai", 768, 336,
     "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"),
]

for _model, _arch, _width, _size, _sha256 in _TOWERS:
    _resnet = _model.startswith("RN")
    register_encoder(EncoderSpec(
        name=_arch,
        arch=_arch,
        arch_kwargs={"num_classes": _width},
        pooling="attn" if _resnet else "cls",
        num_features=_width,
        # OpenAI's preprocess: Resize(n_px, bicubic) then CenterCrop(n_px), i.e. crop_pct 1.0.
        data_config=data_config(input_size=_size, interpolation="bicubic", crop_pct=1.0, mean=CLIP_MEAN, std=CLIP_STD),
        group="self-supervised",
        paper_name=f"CLIP {_model.removesuffix('px')}",
        description=f"OpenAI CLIP {_model} image tower: "
        + ("attention-pooled, projected image embedding" if _resnet else "projected CLS embedding"),
        weights_url=_OPENAI.format(sha256=_sha256, file=_model.replace("/", "-").replace("@", "-") + ".pt"),
        sha256=_sha256,
        checkpoint_filter=checkpoint_filter_fn,
        weights_layout=_LAYOUT,
        license="mit",
    ))
