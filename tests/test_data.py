"""zsclust.data: image folders, torchvision-backed datasets, split carving, registry contract.

Everything runs offline on files the tests write (and scikit-learn's bundled digits).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zsclust.data as D
from zsclust.errors import (
    ConfigError,
    CorruptImageError,
    DatasetNotFoundError,
    SplitError,
    UnknownDatasetError,
)

REPO = Path(__file__).resolve().parents[1]
STUDY_GROUPS = {"in-domain", "domain-shift", "near-ood", "fine-grained", "far-ood"}

TF_CFG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
          "std": (0.5, 0.5, 0.5), "crop_pct": 0.875, "crop_mode": "center"}


def write_image(path: Path, seed: int = 0, size=(20, 16), mode="RGB", fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path, format=fmt)
    return path


def make_folder(base: Path, classes: dict[str, int], ext=".png", seed=0) -> Path:
    for c, (name, n) in enumerate(classes.items()):
        for k in range(n):
            write_image(base / name / f"img{k:02d}{ext}", seed=seed + 100 * c + k)
    return base


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv(D.DATA_ENV, str(root))
    return root


# ---------------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------------

def test_flat_folder_is_one_test_split_with_sorted_classes(tmp_path):
    base = make_folder(tmp_path / "pets", {"dog": 3, "cat": 2})
    write_image(base / "cat" / "UPPER.JPG", seed=9, fmt="JPEG")  # extension case does not matter
    (base / "cat" / "notes.txt").write_text("not an image")
    write_image(base / "cat" / ".hidden.png")

    ds = D.create_dataset(str(base))
    assert (ds.name, ds.split, ds.group, ds.root) == ("pets", "test", None, str(base))
    assert ds.classes == ["cat", "dog"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert [os.path.basename(ds.path(i)) for i in range(3)] == ["UPPER.JPG", "img00.png", "img01.png"]
    item = ds[4]
    assert item["label"] == 1 and item["index"] == 4
    assert item["image"].shape == (3, 16, 20) and item["image"].dtype == torch.float32
    with pytest.raises(SplitError, match=r"pets.*it has: test"):
        D.create_dataset(str(base), "train")
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_numeric_class_names_sort_numerically(tmp_path):
    ds = D.create_dataset(str(make_folder(tmp_path / "n", {"10": 1, "2": 1, "1": 1})))
    assert ds.classes == ["1", "2", "10"]


def test_folder_with_train_and_test_subfolders(tmp_path):
    base = tmp_path / "ds"
    make_folder(base / "train", {"a": 6, "b": 6, "only_train": 2})
    make_folder(base / "test", {"a": 2, "b": 3}, seed=50)
    (base / "train" / "empty").mkdir()

    with pytest.warns(UserWarning, match="no images"):
        test = D.create_dataset(base, "test")
    with pytest.warns(UserWarning, match="no images"):
        train = D.create_dataset(base, "train")
    # Classes are the union over splits, so labels agree between train and test.
    assert test.classes == train.classes == ["a", "b", "only_train"]
    assert np.bincount(test.labels).tolist() == [2, 3]
    assert np.bincount(train.labels).tolist() == [6, 6, 2]
    with pytest.warns(UserWarning):
        val = D.create_dataset(base, "val", seed=3)
    assert len(val) == len(test) == 5
    assert set(val.indices) <= set(train.indices)
    assert val.split_record["source_split"] == "train" and val.split_record["seed"] == 3
    assert val.path(0).startswith(str(base / "train"))
    # root is the dataset's directory, so it gives back the other splits.
    assert test.root == train.root == str(base)
    with pytest.warns(UserWarning):
        assert np.array_equal(D.create_dataset(test.root, "train").labels, train.labels)


def test_val_folder_stands_in_for_test_and_train_only_is_carved(tmp_path):
    a = tmp_path / "a"
    make_folder(a / "val", {"x": 2, "y": 2})
    assert D.create_dataset(a, "test").path(0).startswith(str(a / "val"))
    with pytest.raises(SplitError, match="has no split 'val'.*it has: test"):
        D.create_dataset(a, "val")

    b = tmp_path / "b"
    make_folder(b / "train", {"x": 6, "y": 6})
    test, train = D.create_dataset(b, "test"), D.create_dataset(b, "train")
    assert len(test) == 4 and len(train) == 8
    assert not set(test.indices) & set(train.indices)
    assert test.split_record["strategy"] == "stratified"


def test_greyscale_and_palette_images_become_three_channels(tmp_path):
    base = tmp_path / "g"
    write_image(base / "c" / "grey.png", mode="L")
    Image.new("P", (8, 8), 3).save(base / "c" / "pal.gif")
    ds = D.create_dataset(base, transform=D.build_transform(TF_CFG))
    for i in range(len(ds)):
        img = ds[i]["image"]
        assert img.shape == (3, 32, 32)
    grey = ds[[os.path.basename(ds.path(i)) for i in range(2)].index("grey.png")]["image"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_corrupt_image_raises_naming_the_file(tmp_path):
    base = make_folder(tmp_path / "c", {"a": 2})
    bad = base / "a" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    good = write_image(base / "a" / "trunc.jpg", size=(64, 64), fmt="JPEG")
    good.write_bytes(good.read_bytes()[:300])  # truncated: header fine, data missing

    ds = D.create_dataset(base)
    names = [os.path.basename(ds.path(i)) for i in range(len(ds))]
    for fname in ("broken.jpg", "trunc.jpg"):
        with pytest.raises(CorruptImageError, match=fname) as info:
            ds[names.index(fname)]
        assert info.value.path == str(base / "a" / fname)
        assert "--skip-corrupt" in str(info.value)


def test_skip_corrupt_flags_item_and_collate_drops_it(tmp_path):
    base = make_folder(tmp_path / "c", {"a": 2, "b": 1})
    (base / "a" / "bad.png").write_bytes(b"\x89PNG broken")
    ds = D.create_dataset(base, transform=D.build_transform(TF_CFG), skip_corrupt=True)
    bad = [os.path.basename(ds.path(i)) for i in range(len(ds))].index("bad.png")
    item = ds[bad]
    assert item["image"] is None and item["label"] == 0 and item["index"] == bad

    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), collate_fn=D.collate_batch)
    batch = next(iter(loader))
    assert batch["image"].shape == (len(ds) - 1, 3, 32, 32)
    assert batch["skipped"].tolist() == [bad]
    assert bad not in batch["index"].tolist()
    assert batch["label"].dtype == batch["index"].dtype == torch.long

    empty = D.collate_batch([item])
    assert empty["image"].shape[0] == 0 and empty["label"].numel() == 0
    assert empty["skipped"].tolist() == [bad]
    pickle.loads(pickle.dumps(ds))  # DataLoader workers get a copy


def test_jpeg_draft_decoding_stays_close_to_full_decode(tmp_path):
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    path = tmp_path / "big" / "c" / "photo.jpg"
    path.parent.mkdir(parents=True)
    small.resize((1000, 750), Image.BICUBIC).save(path, quality=92)
    cfg = dict(TF_CFG, input_size=(3, 112, 112))
    ds = D.create_dataset(path.parents[1], transform=D.build_transform(cfg))
    assert ds.draft_size == (128, 128)  # floor(112 / 0.875)
    fast = ds[0]["image"]
    ds.draft_size = None
    full = ds[0]["image"]
    assert fast.shape == full.shape == (3, 112, 112)
    assert (fast - full).abs().mean() < 0.03


def test_jpeg_size_reads_the_frame_header_like_pil(tmp_path):
    from zsclust.data._sources import jpeg_size

    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010E] = "x" * 5000  # a long APP1 segment before the frame header
    variants = {
        "baseline": (rgb, {}),
        "progressive": (rgb, {"progressive": True}),
        "exif_and_icc": (rgb, {"exif": exif.tobytes(), "icc_profile": b"\0" * 3000}),
        "grey": (rgb.convert("L"), {}),
        "cmyk": (rgb.convert("CMYK"), {}),
        "subsampled": (rgb.resize((301, 1207)), {"subsampling": 2, "optimize": True}),
    }
    for name, (img, kwargs) in variants.items():
        path = tmp_path / f"{name}.jpg"
        img.save(path, quality=85, **kwargs)
        with Image.open(path) as opened:
            assert jpeg_size(path.read_bytes()) == opened.size, name
    assert jpeg_size(b"") is None and jpeg_size(b"\x89PNG\r\n\x1a\n" + bytes(20)) is None
    cut = (tmp_path / "baseline.jpg").read_bytes()[:20]  # ends inside the first segment
    assert jpeg_size(cut) is None


def test_batches_decode_in_threads_in_the_loading_process_only(tmp_path):
    import threading

    from torch.utils.data import DataLoader, Subset

    from conftest import write_image_folder

    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=10, size=(90, 70))
    ds = D.create_dataset(folder, transform=D.build_transform(dict(TF_CFG, input_size=(3, 48, 48))))

    def batches(dataset, threads, workers=0):
        ds.decode_threads = threads
        seen = set()
        load = ds.source.load

        def recording_load(*args):
            seen.add(threading.current_thread().name.split("_")[0])
            return load(*args)

        ds.source.load = recording_load
        try:
            loader = DataLoader(dataset, batch_size=8, collate_fn=D.collate_batch, num_workers=workers)
            return [b for b in loader], seen
        finally:
            del ds.source.load

    one, seen_one = batches(ds, 1)
    many, seen_many = batches(ds, 3)
    assert seen_one == {"MainThread"} and seen_many == {"zsclust-decode"}
    assert len(one) == len(many) == 4
    for a, b in zip(one, many):  # same images, labels and indices, in the same order
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])
        assert torch.equal(a["label"], b["label"])
    sub, seen_sub = batches(Subset(ds, [5, 1, 29, 0]), 2)  # what a resumed embedding loads
    assert seen_sub == {"zsclust-decode"}
    assert sub[0]["index"].tolist() == [5, 1, 29, 0]
    assert torch.equal(sub[0]["image"][1], one[0]["image"][1])
    ds.decode_threads = 4
    in_worker = DataLoader(ds, batch_size=8, collate_fn=D.collate_batch, num_workers=1)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(one, in_worker))


# ---------------------------------------------------------------------------------------------------
# digits: carving
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return {s: D.create_dataset("digits", s) for s in D.SPLITS}


def test_digits_split_sizes_and_disjointness(digits):
    train, val, test = digits["train"], digits["val"], digits["test"]
    assert (len(train), len(val), len(test)) == (1198, 599, 599)
    assert set(val.indices) <= set(train.indices)
    assert not set(val.indices) & set(test.indices)
    assert not set(train.indices) & set(test.indices)
    assert len(set(train.indices) | set(test.indices)) == 1797
    assert train.group == "offline" and train.root is None and len(train.classes) == 10
    img = test[0]["image"]
    assert img.shape == (3, 8, 8) and torch.equal(img[0], img[2]) and img.max() <= 1.0


def test_digits_splits_are_stratified(digits):
    full = np.bincount(D.create_dataset("digits", "train").source.labels, minlength=10) / 1797
    for split in D.SPLITS:
        frac = np.bincount(digits[split].labels, minlength=10) / len(digits[split])
        assert np.abs(frac - full).max() < 0.01, split


def test_carving_is_reproducible_per_seed(digits):
    again = D.create_dataset("digits", "val", seed=0)
    other = D.create_dataset("digits", "val", seed=1)
    assert np.array_equal(again.indices, digits["val"].indices)
    assert not np.array_equal(other.indices, digits["val"].indices)
    # The test set does not move with the seed: it is carved with a fixed one.
    assert np.array_equal(D.create_dataset("digits", "test", seed=1).indices, digits["test"].indices)
    rec = other.split_record
    assert rec["seed"] == 1 and rec["size"] == 599 and rec["source_split"] == "train"
    assert rec["strategy"] == "stratified" and len(rec["indices_sha256"]) == 64


def test_split_record_is_written_atomically_and_reloads(digits, tmp_path):
    path = tmp_path / "records" / "digits_val.json"
    D.save_split_record(digits["val"], path)
    loaded = D.load_split_record(path)
    assert loaded["indices"] == digits["val"].indices.tolist()
    assert {k: loaded[k] for k in digits["val"].split_record} == digits["val"].split_record
    assert np.array_equal(D.create_dataset("digits", "val", seed=0).indices, loaded["indices"])

    # A failed write leaves the previous record intact and no temporary file behind.
    broken = D.create_dataset("digits", "val", seed=1)
    broken.split_record["unserialisable"] = object()
    with pytest.raises(TypeError):
        D.save_split_record(broken, path)
    assert D.load_split_record(path) == loaded
    assert os.listdir(path.parent) == ["digits_val.json"]

    native = tmp_path / "native.json"
    folder = D.create_dataset(make_folder(tmp_path / "f", {"a": 2}))
    D.save_split_record(folder, native)
    assert json.loads(native.read_text())["strategy"] == "native"


def test_val_is_capped_at_half_of_a_small_train(tmp_path):
    base = tmp_path / "small"
    make_folder(base / "train", {"a": 4, "b": 4})
    make_folder(base / "test", {"a": 5, "b": 5}, seed=7)
    with pytest.warns(UserWarning, match="half of train"):
        val = D.create_dataset(base, "val")
    assert len(val) == 4
    assert val.split_record["capped"] is True and val.split_record["requested_size"] == 10


def test_singleton_classes_do_not_break_carving(tmp_path):
    base = tmp_path / "single"
    make_folder(base / "train", {"a": 8, "b": 8, "lonely": 1})
    test, train = D.create_dataset(base, "test"), D.create_dataset(base, "train")
    lonely = train.classes.index("lonely")
    assert lonely in train.labels and lonely not in test.labels
    assert test.split_record["strategy"] == "stratified"
    with pytest.warns(UserWarning, match="random subset"):  # 2 picks cannot cover 3 classes
        tiny = D.create_dataset(make_folder(tmp_path / "tiny" / "train", {"a": 2, "b": 2, "c": 2}).parent,
                                "test")
    assert tiny.split_record["strategy"] == "random" and len(tiny) == 2


# ---------------------------------------------------------------------------------------------------
# registered datasets: errors and torchvision-backed reading
# ---------------------------------------------------------------------------------------------------

def test_unknown_dataset_suggests_close_names(data_root):
    with pytest.raises(UnknownDatasetError, match="Did you mean: cifar10") as info:
        D.create_dataset("cifar11")
    assert "zsclust datasets" in str(info.value)
    with pytest.raises(UnknownDatasetError, match="in9_only_fg"):
        D.create_dataset("in9_fg")


def test_missing_torchvision_dataset_says_to_download(data_root):
    with pytest.raises(DatasetNotFoundError, match="--download") as info:
        D.create_dataset("cifar10", root=data_root)
    assert str(data_root / "cifar10") in str(info.value)


def test_missing_folder_dataset_gives_layout_and_url(data_root):
    with pytest.raises(DatasetNotFoundError) as info:
        D.create_dataset("imagenet_r")
    msg = str(info.value)
    assert "<root>/imagenet_r/<class>/<image>" in msg
    assert str(data_root / "imagenet_r") in msg and "github.com/hendrycks/imagenet-r" in msg
    with pytest.raises(DatasetNotFoundError, match="cannot be downloaded automatically"):
        D.create_dataset("nabirds")


def test_bad_split_lists_available_splits(data_root):
    with pytest.raises(SplitError, match=r"'cifar10' has no split 'validation'; it has: train, val, test"):
        D.create_dataset("cifar10", "validation")
    with pytest.raises(SplitError, match=r"'imagenet_r' has no split 'val'.*it has: test"):
        D.create_dataset("imagenet_r", "val")


def test_registered_folder_dataset_reads_the_archive_layout(data_root):
    # As the backgrounds-challenge archive extracts: <root>/in9_bg_challenge/bg_challenge/<variant>/val/
    make_folder(data_root / "in9_bg_challenge" / "bg_challenge" / "mixed_rand" / "val",
                {"00_dog": 2, "01_bird": 2})
    ds = D.create_dataset("in9_mixed_rand")
    assert ds.group == "domain-shift" and ds.classes == ["00_dog", "01_bird"] and len(ds) == 4
    make_folder(data_root / "in9_only_fg", {"00_dog": 1})  # the canonical layout
    assert len(D.create_dataset("in9_only_fg")) == 1


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack(">" + "I" * (1 + array.ndim), magic, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_torchvision_mnist_labels_come_from_attributes(data_root):
    rng = np.random.default_rng(0)
    raw = data_root / "mnist" / "MNIST" / "raw"
    for prefix, n in (("train", 40), ("t10k", 12)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 4, 2049)
    test = D.create_dataset("mnist")
    assert len(test) == 12 and test.labels.tolist() == (np.arange(12) % 4).tolist()
    assert test.classes[0].startswith("0") and test.root == str(data_root / "mnist")
    img = test[5]["image"]
    assert img.shape == (3, 28, 28) and torch.equal(img[0], img[1])
    val = D.create_dataset("mnist", "val")
    assert len(val) == 12 and set(val.indices) < set(range(40))


def test_torchvision_file_dataset_and_imagenet_folder(data_root):
    dtd = data_root / "dtd" / "dtd" / "dtd"
    for cls in ("banded", "zigzagged"):
        for k in range(3):
            write_image(dtd / "images" / cls / f"{cls}_{k}.jpg", seed=k, fmt="JPEG")
    (dtd / "labels").mkdir()
    (dtd / "labels" / "train1.txt").write_text("zigzagged/zigzagged_0.jpg\nbanded/banded_0.jpg\n"
                                                 "banded/banded_1.jpg\nzigzagged/zigzagged_1.jpg\n")
    (dtd / "labels" / "test1.txt").write_text("zigzagged/zigzagged_2.jpg\nbanded/banded_2.jpg\n")
    test = D.create_dataset("dtd")
    assert test.labels.tolist() == [0, 1] and test.classes == ["banded", "zigzagged"]
    assert test.path(0).endswith("banded_2.jpg") and test[1]["image"].shape[0] == 3
    assert "files_sha256" in test.fingerprint()

    make_folder(data_root / "imagenet" / "val", {"n01440764": 2, "n01443537": 1})
    inet = D.create_dataset("imagenet")
    assert inet.classes == ["n01440764", "n01443537"] and len(inet) == 3
    with pytest.raises(DatasetNotFoundError, match="'train'"):
        D.create_dataset("imagenet", "train")


# ---------------------------------------------------------------------------------------------------
# registry contract: every registered dataset, without anyone adding a test by hand
# ---------------------------------------------------------------------------------------------------

DOCS = (REPO / "docs" / "datasets.md").read_text() if (REPO / "docs" / "datasets.md").exists() else ""


@pytest.mark.parametrize("name", D.list_datasets())
def test_registry_contract(name):
    spec = D.get_dataset_spec(name)
    assert spec.name == name
    assert spec.group in STUDY_GROUPS | {"offline", "validation"}
    assert spec.source.strip() and spec.layout.strip() and spec.description.strip()
    assert spec.splits and set(spec.splits) <= set(D.NATIVE_SPLITS)
    assert "test" in spec.available_splits()
    assert set(spec.available_splits()) <= set(D.SPLITS)
    assert spec.group == "offline" or spec.url.startswith("http")
    assert f"`{name}`" in DOCS, "docs/datasets.md lists every registered dataset"
    if spec.downloadable:
        assert "--download" in spec.source


def test_registry_covers_the_study_and_rejects_bad_specs():
    for group in STUDY_GROUPS:
        assert D.list_datasets(group)
    assert len(D.list_datasets("domain-shift")) == 9
    assert D.list_datasets("validation") == ["imagenette", "imagewoof"]
    spec = D.get_dataset_spec("digits")
    with pytest.raises(ConfigError, match="already registered"):
        D.register_dataset(spec)
    bad = D.DatasetSpec(name="x", group="far-far-ood", builder=spec.builder, splits=("test",),
                        source="s", layout="l")
    with pytest.raises(ConfigError, match="group"):
        D.register_dataset(bad)
    with pytest.raises(ConfigError, match="Unknown dataset group"):
        D.list_datasets("far_ood")


def test_register_dataset_extension_point(data_root):
    from zsclust.data import _registry

    spec = D.DatasetSpec(name="my_scans", group="far-ood", builder=D.folder_builder(),
                         splits=("train", "test"), source="our lab",
                         layout="<root>/my_scans/{train,test}/<class>/<image>",
                         url="https://example.org", description="in-house scans")
    assert D.register_dataset(spec) is spec
    try:
        assert "my_scans" in D.list_datasets("far-ood")
        with pytest.raises(DatasetNotFoundError, match=r"<root>/my_scans/\{train,test\}"):
            D.create_dataset("my_scans")
        make_folder(data_root / "my_scans" / "train", {"a": 4, "b": 4})
        make_folder(data_root / "my_scans" / "test", {"a": 2, "b": 2}, seed=9)
        val = D.create_dataset("my_scans", "val", seed=5)
        assert (val.name, val.group, len(val)) == ("my_scans", "far-ood", 4)
        assert val.root == str(data_root / "my_scans")
    finally:
        _registry._REGISTRY.pop("my_scans", None)


# ---------------------------------------------------------------------------------------------------
# fingerprint and transform
# ---------------------------------------------------------------------------------------------------

def test_fingerprint_tracks_split_seed_files_and_labels(digits, tmp_path):
    fp = digits["val"].fingerprint()
    json.dumps(fp)
    assert fp == D.create_dataset("digits", "val").fingerprint()
    assert fp != D.create_dataset("digits", "val", seed=1).fingerprint()
    assert fp["split_record_sha256"] != digits["test"].fingerprint()["split_record_sha256"]
    assert digits["train"].fingerprint() != fp

    base = make_folder(tmp_path / "f", {"a": 2, "b": 2})
    before = D.create_dataset(base).fingerprint()
    assert before["root"] == str(base) and before["len"] == 4 and "files_sha256" in before
    write_image(base / "a" / "img02.png", seed=77)  # a new file
    added = D.create_dataset(base).fingerprint()
    assert added["files_sha256"] != before["files_sha256"]
    (base / "a" / "img02.png").unlink()
    assert D.create_dataset(base).fingerprint() == before
    write_image(base / "a" / "img00.png", seed=1, size=(30, 30))  # same name, other contents/size
    assert D.create_dataset(base).fingerprint()["files_sha256"] != before["files_sha256"]
    write_image(base / "a" / "img00.png", seed=0)
    (base / "b" / "img01.png").rename(base / "a" / "img01b.png")  # labels change
    moved = D.create_dataset(base).fingerprint()
    assert moved["labels_sha256"] != before["labels_sha256"]


def test_fingerprint_tracks_an_edit_that_keeps_name_and_size(tmp_path):
    base = make_folder(tmp_path / "f", {"a": 2, "b": 2}, ext=".bmp")
    before = D.create_dataset(base).fingerprint()
    path = base / "a" / "img00.bmp"
    st = path.stat()
    write_image(path, seed=99)  # same size (uncompressed BMP), other pixels
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert path.stat().st_size == st.st_size
    assert D.create_dataset(base).fingerprint()["files_sha256"] != before["files_sha256"]
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the stamp is what tells: same stamp, same key
    assert D.create_dataset(base).fingerprint() == before


def test_native_size_is_known_for_arrays_only(digits, tmp_path):
    assert digits["test"].native_size == (8, 8)
    assert D.create_dataset(make_folder(tmp_path / "f", {"a": 1})).native_size is None


def test_build_transform_follows_the_data_config():
    tf = D.build_transform(dict(TF_CFG, input_size=(3, 48, 48), crop_pct=1.0, first_conv="x"))
    out = tf(Image.new("L", (100, 60), 128))
    assert out.shape == (3, 48, 48)
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.5) / 0.5), atol=1e-4)
    with pytest.raises(ConfigError, match="input_size"):
        D.build_transform({"mean": (0, 0, 0)})
