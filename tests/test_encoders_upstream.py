"""Converters of the study's extra encoders, each on a checkpoint written here in its upstream layout.

Where timm is not the upstream model itself, the reference is an independent one: torchvision's
ResNets, a small re-implementation of SwAV's/VICReg's wide ResNet and of VICRegL's ConvNeXt (their
upstream module names, so their state dicts are the upstream key layout), and OpenCLIP's copies of
OpenAI's CLIP towers (OpenAI's key names, saved as TorchScript like OpenAI's files). Deep models
are reduced to one or two blocks per stage through create_encoder's model kwargs.
"""

from __future__ import annotations

import argparse
import hashlib
import warnings
from collections import OrderedDict

import pytest
import timm
import torch
import torchvision
from torch import nn

from zsclust.encoders import (
    EncoderSpec,
    create_encoder,
    get_encoder_spec,
    list_encoders,
    register_encoder,
    unregister_encoder,
)
from zsclust.errors import CheckpointConversionError, WeightsDownloadError, WeightsNotFoundError

# Shared helpers and the autouse fixtures (one thread, offline hub, private TORCH_HOME).
from test_encoders import (  # noqa: F401  (fixtures are used by name)
    SMALL_VIT,
    _assert_loaded,
    _image,
    _moco_checkpoint,
    _offline,
    _one_thread,
    _randomize,
    _save,
    tv_resnet50,
)

ONE_BLOCK = {"layers": (1, 1, 1, 1)}


# ----------------------------------------------------------------------------------------------
# ResNets: torchvision, SwAV, Barlow Twins, VICReg, VICRegL


def test_resnet18_torchvision_layout(tmp_path):
    tv = _randomize(torchvision.models.resnet18(weights=None), seed=21)
    enc = create_encoder("resnet18.tv_in1k", weights=_save(tmp_path, tv.state_dict(), "resnet18-f37072fd.pth"))
    _assert_loaded(enc, {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    tv.fc = nn.Identity()
    x = _image(64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), tv(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50.tv2_in1k", "resnet50.barlowtwins", "resnet50.vicregl_alpha0p9",
                                  "resnet50.vicregl_alpha0p75"])
def test_torchvision_key_resnet50_layouts(tmp_path, tv_resnet50, name):
    """torchvision's V2 file (with fc) and the Barlow Twins / VICRegL hub files (torchvision keys, no fc)."""
    sd, tv_path, x, feats = tv_resnet50
    path = tv_path if name == "resnet50.tv2_in1k" else _save(tmp_path, {k: v for k, v in sd.items()
                                                                         if not k.startswith("fc.")})
    enc = create_encoder(name, weights=path)
    _assert_loaded(enc, {k: v for k, v in sd.items() if not k.startswith("fc.")})
    with torch.no_grad():
        torch.testing.assert_close(enc(x), feats, rtol=1e-4, atol=1e-5)


class UpstreamWideResNet(nn.Module):
    """SwAV's src/resnet50.py and VICReg's resnet.py, as they build the backbone: every width (stem
    included) × ``widen``, a zero-pad of 1 before a padding-2 stem conv, torchvision Bottlenecks."""

    def __init__(self, layers, widen):
        super().__init__()
        width = 64 * widen
        self.padding = nn.ConstantPad2d(1, 0.0)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, blocks in enumerate(layers):
            planes, stride, stage = width * 2**i, 1 if i == 0 else 2, []
            for j in range(blocks):
                down = None
                if j == 0 and (stride != 1 or inplanes != planes * 4):
                    down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(planes * 4))
                stage.append(torchvision.models.resnet.Bottleneck(inplanes, planes, stride if j == 0 else 1, down))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.padding(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _swav_file(backbone: dict) -> dict:
    """SwAV's released file: the DDP model's state dict, projector and prototypes included."""
    sd = OrderedDict(("module." + k, v) for k, v in backbone.items())
    width = next(v.shape[0] for k, v in backbone.items() if k.startswith("layer4") and k.endswith("bn3.weight"))
    sd["module.projection_head.0.weight"] = torch.randn(16, width)
    sd["module.projection_head.1.running_mean"] = torch.randn(16)
    sd["module.projection_head.3.weight"] = torch.randn(8, 16)
    sd["module.prototypes.weight"] = torch.randn(30, 8)
    return sd


def test_swav_resnet50_layout(tmp_path):
    tv = _randomize(torchvision.models.resnet50(weights=None), seed=22)
    tv.fc = nn.Identity()
    enc = create_encoder("resnet50.swav", weights=_save(tmp_path, _swav_file(tv.state_dict())))
    _assert_loaded(enc, tv.state_dict())
    x = _image(64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), tv(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,widen,swav", [("resnet50x2.swav", 2, True), ("resnet50x2.vicreg", 2, False),
                                             ("resnet200x2.vicreg", 2, False)])
def test_wide_resnet_layouts(tmp_path, name, widen, swav):
    """SwAV's RN50-w2 and VICReg's x2 files, one block per stage: keys, widths, the stem's padding."""
    ref = _randomize(UpstreamWideResNet([1, 1, 1, 1], widen), seed=23)
    sd = ref.state_dict()
    enc = create_encoder(name, weights=_save(tmp_path, _swav_file(sd) if swav else sd), **ONE_BLOCK)
    _assert_loaded(enc, sd)
    assert enc.model.conv1.weight.shape == (64 * widen, 3, 7, 7) and enc.num_features == 2048 * widen
    x = _image(64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref(x), rtol=1e-4, atol=1e-5)


def test_weights_folder_finds_the_upstream_file(tmp_path, tv_resnet50):
    """--weights DIR: the entry's upstream file name inside it (renamed where two upstreams collide)."""
    sd, _, x, feats = tv_resnet50
    backbone = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    folder = tmp_path / "weights"
    folder.mkdir()
    _save(folder, _swav_file(backbone), "swav_800ep_pretrain.pth.tar")
    _save(folder, backbone, "barlowtwins_resnet50.pth")
    for name in ("resnet50.swav", "resnet50.barlowtwins"):
        enc = create_encoder(name, weights=folder)
        assert enc.weights_source == f"file:{(folder / get_encoder_spec(name).local_file_name).resolve()}"
        with torch.no_grad():
            torch.testing.assert_close(enc(x), feats, rtol=1e-4, atol=1e-5)
    with pytest.raises(WeightsNotFoundError, match=r"has no 'vicreg_resnet50.pth'.*dl.fbaipublicfiles.com/vicreg"):
        create_encoder("resnet50.vicreg", weights=folder)


class UpstreamConvNeXtBlock(nn.Module):
    """VICRegL's convnext.Block without layer scale (layer_scale_init_value=0), its module names."""

    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))))
        return x + y.permute(0, 3, 1, 2)


class ChannelsFirstLayerNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class UpstreamConvNeXt(nn.Module):
    """VICRegL's ConvNeXt: downsample_layers, stages, a final LayerNorm on every position, then the mean."""

    def __init__(self, depths, dims):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), ChannelsFirstLayerNorm(dims[0], eps=1e-6))]
            + [nn.Sequential(ChannelsFirstLayerNorm(dims[i], eps=1e-6), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
               for i in range(3)])
        self.stages = nn.ModuleList(nn.Sequential(*[UpstreamConvNeXtBlock(d) for _ in range(n)])
                                    for n, d in zip(depths, dims))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.flatten(2).transpose(1, 2)).mean(dim=1)  # hub model's forward(x)[-1]


@pytest.mark.parametrize("name,dims", [("convnext_small.vicregl_alpha0p9", (96, 192, 384, 768)),
                                       ("convnext_base.vicregl_alpha0p75", (128, 256, 512, 1024))])
def test_vicregl_convnext_layout(tmp_path, name, dims):
    ref = _randomize(UpstreamConvNeXt((1, 2, 1, 1), dims), seed=24)
    path = _save(tmp_path, ref.state_dict(), name.split(".")[0] + "_alpha0.9.pth")
    enc = create_encoder(name, weights=path, depths=(1, 2, 1, 1))
    loaded = enc.model.state_dict()
    torch.testing.assert_close(loaded["norm_pre.weight"], ref.norm.weight, rtol=0, atol=0)
    torch.testing.assert_close(loaded["stages.1.blocks.1.conv_dw.weight"], ref.stages[1][1].dwconv.weight,
                               rtol=0, atol=0)
    assert not any("gamma" in k for k in loaded)  # no layer scale, like upstream
    x = _image(64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref(x), rtol=1e-4, atol=1e-4)
    # VICRegL's full checkpoint nests the backbone under 'model' / 'module.backbone.'
    full = {"model": {**{f"module.backbone.{k}": v for k, v in ref.state_dict().items()},
                      "module.projector.0.weight": torch.randn(8, dims[-1])}, "epoch": 300}
    again = create_encoder(name, weights=_save(tmp_path, full, "full.pth"), depths=(1, 2, 1, 1))
    assert again.weights_digest == enc.weights_digest


# ----------------------------------------------------------------------------------------------
# ViTs: MoCo-v3 ViT-S, DINO ViT-S/B at patch 8 and 16, MAE L/H, MAE fine-tuned


def test_mocov3_vit_small_has_twelve_heads(tmp_path):
    base = _randomize(timm.create_model("vit_small_patch16_224", num_classes=0, num_heads=12, **SMALL_VIT), seed=25)
    momentum = {k: torch.zeros(1) for k in base.state_dict()}
    enc = create_encoder("vit_small_patch16_224.mocov3",
                         weights=_save(tmp_path, _moco_checkpoint(base.state_dict(), momentum, "head")), **SMALL_VIT)
    _assert_loaded(enc, base.state_dict())
    assert enc.model.blocks[0].attn.num_heads == 12
    x = _image()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), base.forward_features(x)[:, 0])


@pytest.mark.parametrize("name", list_encoders("vit_*.dino"))
def test_dino_vit_layouts(tmp_path, name):
    src = _randomize(timm.create_model(name.split(".")[0], num_classes=0, **SMALL_VIT), seed=26)
    enc = create_encoder(name, weights=_save(tmp_path, src.state_dict()), **SMALL_VIT)
    _assert_loaded(enc, src.state_dict())
    x = _image()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), src.forward_features(x)[:, 0])


@pytest.mark.parametrize("arch", ["vit_large_patch16_224", "vit_huge_patch14_224"])
def test_mae_large_and_huge_pretrained(tmp_path, arch):
    src = _randomize(timm.create_model(arch, num_classes=0, depth=1), seed=27)
    width = src.embed_dim
    sd = OrderedDict(src.state_dict())
    sd.update({"mask_token": torch.randn(1, 1, 512), "decoder_embed.weight": torch.randn(512, width),
               "decoder_pred.weight": torch.randn(3 * src.patch_embed.patch_size[0] ** 2, 512)})
    path = _save(tmp_path, {"model": sd})
    x = _image()
    with torch.no_grad():
        tokens = src.forward_features(x)
        torch.testing.assert_close(create_encoder(f"{arch}.mae", weights=path, depth=1)(x), tokens[:, 0])
        torch.testing.assert_close(create_encoder(f"{arch}.mae_avg", weights=path, depth=1)(x),
                                   tokens[:, 1:].mean(dim=1))


@pytest.mark.parametrize("arch", ["vit_base_patch16_224", "vit_large_patch16_224", "vit_huge_patch14_224"])
def test_mae_finetuned_layout(tmp_path, arch):
    """MAE's released fine-tuned classifiers: {'model': ViT keys + fc_norm + head, no final norm}."""
    depth = {"depth": 2 if "base" in arch else 1}
    src = _randomize(timm.create_model(arch, num_classes=1000, global_pool="avg", fc_norm=True, **depth), seed=28)
    sd = src.state_dict()
    assert "fc_norm.weight" in sd and "norm.weight" not in sd and "head.weight" in sd
    path = _save(tmp_path, {"model": sd, "epoch": 99, "args": argparse.Namespace(global_pool=True)},
                 f"mae_finetuned_{arch}.pth")
    avg = create_encoder(f"{arch}.mae_ft_avg", weights=path, **depth)
    cls = create_encoder(f"{arch}.mae_ft", weights=path, **depth)
    _assert_loaded(avg, {k: v for k, v in sd.items() if not k.startswith("head.")})
    x = _image()
    with torch.no_grad():
        tokens = src.forward_features(x)  # no final norm in a fine-tuned MAE
        torch.testing.assert_close(avg(x), src.forward_head(tokens, pre_logits=True))  # the classifier's input
        torch.testing.assert_close(cls(x), src.fc_norm(tokens[:, 0]))
    assert avg.info["group"] == "fine-tuned"
    # a pretraining file is not a fine-tuned one: the mismatch is named, not patched over
    pre = timm.create_model(arch, num_classes=0, **depth).state_dict()
    with pytest.raises(CheckpointConversionError, match="missing: fc_norm.weight"):
        create_encoder(f"{arch}.mae_ft_avg", weights=_save(tmp_path, {"model": pre}, "pre.pth"), **depth)


def test_dinov2_giant_swiglu_layout(tmp_path):
    """dinov2_vitg14_pretrain.pth: SwiGLU MLP as mlp.w12 / mlp.w3, 518-px pos_embed, mask_token."""
    src = _randomize(timm.create_model("vit_giant_patch14_dinov2", num_classes=0, depth=1), seed=29)
    sd = OrderedDict((k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"), v)
                     for k, v in src.state_dict().items())
    sd["mask_token"] = torch.zeros(1, 1536)
    folder = tmp_path / "dinov2"
    folder.mkdir()
    _save(folder, sd, "dinov2_vitg14_pretrain.pth")
    enc = create_encoder("vit_giant_patch14_dinov2.lvd142m", weights=folder, depth=1)
    loaded = enc.model.state_dict()
    torch.testing.assert_close(loaded["blocks.0.mlp.fc1.weight"], sd["blocks.0.mlp.w12.weight"], rtol=0, atol=0)
    torch.testing.assert_close(loaded["blocks.0.mlp.fc2.bias"], sd["blocks.0.mlp.w3.bias"], rtol=0, atol=0)
    assert loaded["pos_embed"].shape == (1, 1 + 16 * 16, 1536)
    with torch.no_grad():
        assert torch.isfinite(enc(_image())).all()


# ----------------------------------------------------------------------------------------------
# CLIP: OpenAI's layout, from OpenCLIP's copies of OpenAI's towers, saved as TorchScript


class _OpenAIFile(nn.Module):
    """What OpenAI's CLIP .pt holds around the image tower: 'visual.*' next to the text tower."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual
        self.token_embedding = nn.Embedding(10, 8)
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, x):
        return self.visual(x)


def _openai_torchscript(tmp_path, visual, size, file_name):
    visual = _randomize(visual, seed=30)
    holder = _OpenAIFile(visual).eval()
    path = tmp_path / file_name
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on MultiheadAttention's shape checks, jit deprecation
        torch.jit.save(torch.jit.trace(holder, torch.zeros(1, 3, size, size), check_trace=False), str(path))
    return visual, path


def test_clip_resnet_openai_torchscript(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    tower = open_clip.modified_resnet.ModifiedResNet(layers=(3, 4, 6, 3), output_dim=1024, heads=32, width=64)
    visual, path = _openai_torchscript(tmp_path, tower, 224, "RN50.pt")
    enc = create_encoder("resnet50_clip.openai", weights=path)
    assert enc.weights_source == f"file:{path.resolve()}"
    x = _image()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), visual(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,patch,width,heads,out,size,depth", [
    ("vit_base_patch32_clip_quickgelu_224.openai", 32, 768, 12, 512, 224, 2),
    ("vit_large_patch14_clip_quickgelu_336.openai", 14, 1024, 16, 768, 336, 1),
])
def test_clip_vit_openai_torchscript(tmp_path, name, patch, width, heads, out, size, depth):
    open_clip = pytest.importorskip("open_clip")
    tower = open_clip.transformer.VisionTransformer(
        image_size=size, patch_size=patch, width=width, layers=depth, heads=heads, mlp_ratio=4.0, output_dim=out,
        act_layer=open_clip.transformer.QuickGELU)
    visual, path = _openai_torchscript(tmp_path, tower, size, "clip.pt")
    enc = create_encoder(name, weights=path, depth=depth)
    assert enc.data_config["input_size"] == (3, size, size) and enc.num_features == out
    x = _image(size)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), visual(x), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# the study's fine-tuned checkpoints, from a folder


@pytest.fixture
def ft_folder(tmp_path):
    folder = tmp_path / "ft-models"
    folder.mkdir()
    return folder


def test_finetuned_resnet_from_folder(ft_folder, tv_resnet50):
    sd, _, x, feats = tv_resnet50  # fine-tuned torchvision ResNet-50: backbone + 1000-class fc
    _save(ft_folder, {"model": sd, "epoch": 100}, "ft_dino_resnet50.pth")
    enc = create_encoder("resnet50.dino_ft", weights=ft_folder)
    _assert_loaded(enc, {k: v for k, v in sd.items() if not k.startswith("fc.")})
    with torch.no_grad():
        torch.testing.assert_close(enc(x), feats, rtol=1e-4, atol=1e-5)
    assert enc.info["group"] == "fine-tuned"
    assert enc.data_config == dict(get_encoder_spec("resnet50.dino").data_config)


def test_finetuned_vicreg_sequential_layout(ft_folder, tv_resnet50, monkeypatch):
    """VICReg's fine-tuning wraps nn.Sequential(backbone, head): '0.<key>' and '1.weight'; found via the env var."""
    sd, _, x, feats = tv_resnet50
    model = {**{f"0.{k}": v for k, v in sd.items() if not k.startswith("fc.")},
             "1.weight": torch.randn(1000, 2048), "1.bias": torch.randn(1000)}
    _save(ft_folder, {"model": model}, "ft_vicreg_resnet50.pth")
    monkeypatch.setenv("ZSCLUST_FINETUNED_DIR", str(ft_folder))
    enc = create_encoder("resnet50.vicreg_ft")
    with torch.no_grad():
        torch.testing.assert_close(enc(x), feats, rtol=1e-4, atol=1e-5)
    assert enc.weights_source.endswith("ft_vicreg_resnet50.pth")


def test_finetuned_vit_file_and_missing_folder(tmp_path, ft_folder, monkeypatch):
    src = _randomize(timm.create_model("vit_base_patch16_224", num_classes=1000, **SMALL_VIT), seed=31)
    path = _save(tmp_path, {"model": src.state_dict()}, "ft_mocov3_vit_base.pth")
    enc = create_encoder("vit_base_patch16_224.mocov3_ft", weights=path, **SMALL_VIT)
    x = _image()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), src.forward_features(x)[:, 0])
    monkeypatch.setenv("ZSCLUST_FINETUNED_DIR", str(ft_folder))
    with pytest.raises(WeightsNotFoundError, match=r"ft_dino_vitb16.pth.*not published.*weights=DIR"):
        create_encoder("vit_base_patch16_224.dino_ft")


# ----------------------------------------------------------------------------------------------
# downloads: the published checksum is checked


@pytest.fixture
def file_url_entry(tmp_path, tv_resnet50):
    """An entry whose 'upstream' is a file:// URL (urllib serves it offline), with its real sha256."""
    sd = {k: v for k, v in tv_resnet50[0].items() if not k.startswith("fc.")}
    path = _save(tmp_path, sd, "upstream.pth")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    base = get_encoder_spec("resnet50.vicreg")
    created = []

    def make(sha256):
        name = f"resnet50.file_url_test{len(created)}"
        created.append(name)
        return register_encoder(EncoderSpec(
            name=name, arch="resnet50", pooling="avg", num_features=2048, group="extra", paper_name="test",
            description="download test", weights_url=path.as_uri(), sha256=sha256, file_name=f"{name}.pth",
            checkpoint_filter=base.checkpoint_filter, data_config=dict(base.data_config),
        ))

    yield make, digest
    for name in created:
        unregister_encoder(name)


def test_download_checks_the_published_sha256(file_url_entry, tv_resnet50):
    make, digest = file_url_entry
    good = make(digest)
    enc = create_encoder(good.name)
    assert enc.weights_source == good.weights_url
    with torch.no_grad():
        torch.testing.assert_close(enc(tv_resnet50[2]), tv_resnet50[3], rtol=1e-4, atol=1e-5)
    bad = make("0" * 64)
    with pytest.raises(WeightsDownloadError, match=r"Could not download weights .*hash"):
        create_encoder(bad.name)
