"""``create_dataset``: one name (or a directory) and a split in, an :class:`ImageDataset` out."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from torchvision.transforms.functional import to_tensor

from zsclust.data._registry import available_splits, get_dataset_spec, is_registered
from zsclust.data._sources import ImageSource, folder_native_splits, folder_source
from zsclust.data._splits import carve_test, carve_val, indices_sha256, record_sha256
from zsclust.data._transforms import draft_size_of
from zsclust.errors import CorruptImageError, SplitError, did_you_mean

log = logging.getLogger(__name__)

DATA_ENV = "ZSCLUST_DATA"


def default_data_root() -> Path:
    """``$ZSCLUST_DATA`` if set, else ``~/.cache/zsclust/data``."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/zsclust/data").expanduser()


class ImageDataset(Dataset):
    """One split of one dataset: items are ``{"image", "label", "index"}``.

    ``labels`` (int64) and ``classes`` are known without decoding images. ``indices`` are the positions
    of this split's images in the native split they come from (``arange(len)`` unless carved).
    ``root`` is the dataset's absolute directory (``<data root>/<name>`` for torchvision datasets, the
    folder itself for image folders, also when the images sit in its train/ or test/), None for data
    bundled in memory; passing it back to :func:`create_dataset` gives the other splits.
    With ``skip_corrupt``, an unreadable image yields ``image=None`` instead of raising, and
    :func:`collate_batch` drops it and reports its index.
    """

    #: Threads that decode a batch's images when the loader runs in this process (``num_workers=0``). The
    #: embedding engine sets it to the process's cores on the CPU, where decoding runs between forward passes.
    decode_threads: int = 1

    def __init__(self, source: ImageSource, indices: np.ndarray | None, *, name: str, split: str,
                 group: str | None, root: str | None, transform: Callable | None = None,
                 skip_corrupt: bool = False, split_record: dict | None = None,
                 native_split: str | None = None):
        self.source = source
        self.indices = (np.arange(len(source), dtype=np.int64) if indices is None
                        else np.asarray(indices, dtype=np.int64))
        self.labels = source.labels[self.indices]
        self.classes = list(source.classes)
        self.name, self.split, self.group = name, split, group
        self.root = None if root is None else os.path.abspath(root)
        self.native_split = native_split
        self.split_record = split_record
        self.skip_corrupt = skip_corrupt
        self.transform = transform
        self._fingerprint: dict | None = None

    @property
    def transform(self) -> Callable | None:
        return self._transform

    @transform.setter
    def transform(self, tf: Callable | None) -> None:
        # JPEGs decode straight to roughly the resize size when the transform's resize is known.
        self._transform = tf
        self.draft_size = draft_size_of(tf) if tf is not None else None
        self.decode_to_tensor = bool(getattr(tf, "decodes_to_tensor", False))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        n = len(self.indices)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.name}/{self.split} of size {n}")
        i = int(i) % n
        label = int(self.labels[i])
        try:
            img = self.source.load(int(self.indices[i]), self.draft_size, self.decode_to_tensor)
        except CorruptImageError as e:
            if not self.skip_corrupt:
                raise
            log.warning("Skipping item %d of %s/%s: %s", i, self.name, self.split, e)
            return {"image": None, "label": label, "index": i}
        img = self._transform(img) if self._transform is not None else to_tensor(img)
        return {"image": img, "label": label, "index": i}

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """A batch's items, for the DataLoader's batched fetch: decoded by ``decode_threads`` threads in the
        loading process (decoding and resizing run in C and release the GIL), one thread in a loader worker.
        """
        threads = min(int(self.decode_threads), len(indices))
        if threads <= 1 or get_worker_info() is not None:
            return [self[i] for i in indices]
        with ThreadPoolExecutor(threads, thread_name_prefix="zsclust-decode") as pool:
            return list(pool.map(self.__getitem__, indices))

    @property
    def native_size(self) -> tuple[int, int] | None:
        """(height, width) shared by every image, where known without decoding (in-memory arrays), else None."""
        return self.source.native_size

    def path(self, i: int) -> str | None:
        """The file behind item ``i``, when images are files."""
        p = getattr(self.source, "path", None)
        return p(int(self.indices[i])) if p is not None else None

    def fingerprint(self) -> dict:
        """JSON-able identity for the embedding cache: changes when the images, labels or split change."""
        if self._fingerprint is None:
            fp = {
                "name": self.name,
                "split": self.split,
                "root": self.root,
                "len": len(self),
                "labels_sha256": indices_sha256(self.labels),
                "classes_sha256": hashlib.sha256("\n".join(self.classes).encode()).hexdigest(),
            }
            content = self.source.content_digest(self.indices)
            if content is not None:
                fp[content[0]] = content[1]
            if self.split_record is not None:
                fp["split_record_sha256"] = record_sha256(self.split_record)
            self._fingerprint = fp
        return dict(self._fingerprint)

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, split={self.split!r}, len={len(self)},"
                f" classes={len(self.classes)}, root={self.root!r})")


def collate_batch(items: list[dict]) -> dict:
    """Stack items into a batch, dropping skipped (corrupt) ones and listing their indices.

    Returns image B'×C×H×W (a 0×3×0×0 tensor if every item was skipped), label and index (LongTensor B')
    and skipped (LongTensor of the dropped items' indices).
    """
    kept = [it for it in items if it["image"] is not None]
    skipped = [int(it["index"]) for it in items if it["image"] is None]
    if kept:
        images = [it["image"] for it in kept]
        if not all(isinstance(x, torch.Tensor) for x in images):
            raise TypeError("collate_batch needs tensor images: give the dataset a transform that ends in"
                            " a tensor (build_transform does).")
        image = torch.stack(images)
    else:
        image = torch.empty((0, 3, 0, 0))
    return {
        "image": image,
        "label": torch.tensor([int(it["label"]) for it in kept], dtype=torch.long),
        "index": torch.tensor([int(it["index"]) for it in kept], dtype=torch.long),
        "skipped": torch.tensor(skipped, dtype=torch.long),
    }


def _looks_like_path(s: str) -> bool:
    return os.sep in s or (os.altsep is not None and os.altsep in s) or s.startswith((".", "~"))


def create_dataset(name_or_dir: str | os.PathLike, split: str = "test", *,
                   root: str | os.PathLike | None = None, transform: Callable | None = None,
                   download: bool = False, seed: int = 0, skip_corrupt: bool = False) -> ImageDataset:
    """Build one split of a registered dataset or of an image folder.

    Resolution order: a name that looks like a path (contains a separator, starts with '.' or '~') is a
    folder; else a registered name; else an existing directory; else UnknownDatasetError. ``root`` (for
    registered datasets) defaults to :func:`default_data_root`. ``seed`` chooses the carved val split.
    """
    key = os.fspath(name_or_dir)
    folder = None
    if isinstance(name_or_dir, os.PathLike) or _looks_like_path(key) or not is_registered(key):
        if Path(key).expanduser().is_dir():
            folder = Path(key).expanduser().resolve()
    if folder is not None:
        name, group = folder.name, None
        native = folder_native_splits(folder)

        def build_native(native_split: str) -> ImageSource:
            return folder_source(folder, native_split, name=name)

        fraction, test_seed = 1 / 3, 0
    else:
        spec = get_dataset_spec(key)  # raises UnknownDatasetError with suggestions
        data_root = Path(root).expanduser() if root is not None else default_data_root()
        name, group, native = spec.name, spec.group, spec.splits
        fraction, test_seed = spec.test_fraction, spec.test_seed

        def build_native(native_split: str) -> ImageSource:
            return spec.builder(spec, native_split, data_root, download)

    have = available_splits(native)
    if split not in have:
        why = ""
        if split == "val":
            why = " (val is carved from train, and this dataset has no train split)"
        raise SplitError(f"Dataset '{name}' has no split '{split}'{why}; it has: {', '.join(have)}."
                         + did_you_mean(split, have))

    def make(src: ImageSource, indices, record=None, native_split=split) -> ImageDataset:
        return ImageDataset(src, indices, name=name, split=split, group=group,
                            root=src.dataset_root or src.root, transform=transform,
                            skip_corrupt=skip_corrupt, split_record=record, native_split=native_split)

    if "all" in native:
        src = build_native("all")
        train, test, test_rec = carve_test(src.labels, fraction, test_seed)
        test_rec = {"dataset": name, "split": "test", **test_rec}
        if split == "test":
            return make(src, test, test_rec, "all")
        train_rec = {"dataset": name, "split": "train", "source_split": "all", "seed": test_seed,
                     "size": int(len(train)), "strategy": "complement of the carved test split",
                     "test_record_sha256": record_sha256(test_rec),
                     "indices_sha256": indices_sha256(train)}
        if split == "train":
            return make(src, train, train_rec, "all")
        val, val_rec = carve_val(src.labels, train, len(test), seed, name)
        val_rec = {"dataset": name, "split": "val", **val_rec,
                   "train_record_sha256": record_sha256(train_rec)}
        return make(src, val, val_rec, "all")

    if split in ("train", "test"):
        return make(build_native(split), None)

    # val: a stratified subset of the native train split, as large as the native test split.
    src = build_native("train")
    n_test = len(build_native("test"))
    val, val_rec = carve_val(src.labels, np.arange(len(src)), n_test, seed, name)
    return make(src, val, {"dataset": name, "split": "val", **val_rec}, "train")
