"""Image sources: the images and labels of one native split, readable one image at a time.

A source knows its labels without decoding any image (so splits can be carved and caches checked
cheaply) and returns RGB PIL images. Decoding failures become :class:`CorruptImageError` naming the
file. Sources must pickle, because DataLoader workers receive a copy of the dataset.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from zsclust.errors import CorruptImageError, DatasetNotFoundError

#: Image file extensions read from folders (compared case-insensitively).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# What PIL raises on unreadable, truncated or malformed files (DecompressionBombError is a subclass
# of Exception, not OSError).
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
                  Image.DecompressionBombError)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; greyscale becomes three equal channels."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: PIL's convert() would clip at 255, so rescale by the maximum.
        a = np.asarray(img, dtype=np.float64)
        peak = a.max() if a.size and a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a * (255.0 / peak), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def read_image(path: str | os.PathLike, draft_size: tuple[int, int] | None = None, as_tensor: bool = False):
    """Decode an image file fully into RGB, or raise CorruptImageError naming it.

    ``as_tensor`` returns a 3×H×W uint8 tensor, decoded by torchvision (libjpeg-turbo, libpng) where
    it can: about twice as fast as PIL for JPEG and PNG. Large JPEGs that draft mode can shrink, other
    formats and anything torchvision refuses go through PIL, which also names corrupt files.

    ``draft_size`` (width, height) lets JPEG decoding reduce by 1/2, 1/4 or 1/8 in the DCT domain while
    keeping both sides at least that large, so the transform's resize still downsamples. For large
    photos this is several times faster than decoding at full size and then resizing.
    """
    if as_tensor:
        tensor = _decode_tensor(path, draft_size)
        if tensor is not None:
            return tensor
    try:
        with Image.open(path) as img:
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", draft_size)
            img.load()  # force a full decode here, so truncated files fail now and not in a transform
            return to_rgb(img)
    except _DECODE_ERRORS as e:
        raise CorruptImageError(path, f"{type(e).__name__}: {e}") from e


_TENSOR_FORMATS = (".jpg", ".jpeg", ".png")


def jpeg_size(data) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, read from its bytes; None where the header is not found.

    The same numbers PIL's ``Image.open(...).size`` gives, without opening the file a second time:
    the segments before the frame header (APPn, DQT, ...) are skipped by their lengths.
    """
    buf = memoryview(data)
    if len(buf) < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    i = 2
    while i + 9 <= len(buf):
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (not DHT, JPG, DAC)
            height, width = buf[i + 5] << 8 | buf[i + 6], buf[i + 7] << 8 | buf[i + 8]
            return (width, height) if width and height else None
        if marker in (0xDA, 0xD9):  # scan data or the end before any frame header
            return None
        i += 2 + (buf[i + 2] << 8 | buf[i + 3])
    return None


def _decode_tensor(path, draft_size):
    """torchvision's decode for JPEG/PNG that need no draft reduction; None means: use PIL."""
    if not str(path).lower().endswith(_TENSOR_FORMATS):
        return None
    try:
        from torchvision.io import ImageReadMode, decode_image, read_file

        data = read_file(str(path))
    except Exception:  # unreadable: the PIL path names the file
        return None
    if draft_size is not None and str(path).lower().endswith((".jpg", ".jpeg")):
        size = jpeg_size(data.numpy())
        if size is None:
            try:
                with Image.open(path) as img:  # header only
                    size = img.size
            except _DECODE_ERRORS:
                return None  # let the PIL path name the file
        w, h = size
        if w >= 2 * draft_size[0] and h >= 2 * draft_size[1]:
            return None  # PIL's reduce-on-decode wins for photos twice the size needed
    try:
        img = decode_image(data, mode=ImageReadMode.RGB)
    except Exception:  # torchvision's decoders raise RuntimeError on anything odd: PIL decides
        return None
    return img if img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3 else None


def natural_class_sort(names: Sequence[str]) -> list[str]:
    """Class folder order: numeric when every name is an integer ('2' before '10'), else lexicographic."""
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def list_images(directory: Path) -> list[str]:
    """Image files under ``directory`` (recursively), as sorted paths relative to it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, directory)
        for f in filenames:
            if is_image_file(f):
                found.append(f if rel == "." else os.path.join(rel, f))
    return sorted(found)


def _has_image(directory: Path) -> bool:
    """Whether a folder holds at least one image (stops at the first one found)."""
    if not directory.is_dir():
        return False
    for _, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(is_image_file(f) for f in filenames):
            return True
    return False


def class_dirs(directory: Path) -> list[str]:
    return [e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")]


def _stat_key(path: str) -> str:
    """``size<TAB>mtime_ns`` of a file, or ``-1`` for one that cannot be read (it then fails to decode)."""
    try:
        st = os.stat(path)
    except OSError:
        return "-1"
    return f"{st.st_size}\t{st.st_mtime_ns}"


def _sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


class ImageSource:
    """Base class. Subclasses set ``labels`` (int64), ``classes`` and ``root``, and implement ``load``.

    ``load(i, draft_size)`` returns image ``i`` as an RGB PIL image or raises CorruptImageError.
    ``content_digest(indices)`` returns ``(key, sha256)`` identifying the bytes behind those images
    cheaply (file names, sizes and modification times, or the pixel arrays), for the embedding cache's
    fingerprint. ``native_size`` is the (height, width) every image shares, where the source knows it
    without decoding (in-memory arrays), else None.
    """

    labels: np.ndarray
    classes: list[str]
    root: str | None = None  # where files are read from
    dataset_root: str | None = None  # the dataset's own directory, when it differs (split folders)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int, draft_size: tuple[int, int] | None = None, as_tensor: bool = False):
        """Image ``i``: a PIL image, or a uint8 tensor where ``as_tensor`` and the source can decode to one."""
        raise NotImplementedError

    def content_digest(self, indices: np.ndarray) -> tuple[str, str] | None:
        return None

    @property
    def native_size(self) -> tuple[int, int] | None:
        return None


class FileListSource(ImageSource):
    """Images stored as files. ``paths`` are relative to ``root`` (or absolute when root is None)."""

    def __init__(self, root: str | os.PathLike | None, paths: Sequence[str], labels, classes):
        self.root = None if root is None else os.path.abspath(root)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = [str(c) for c in classes]
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def path(self, i: int) -> str:
        p = self.paths[i]
        return p if self.root is None else os.path.join(self.root, p)

    def load(self, i, draft_size=None, as_tensor=False):
        return read_image(self.path(i), draft_size, as_tensor)

    def content_digest(self, indices):
        # Relative paths, sizes and modification times (ns), in dataset order (sorted for folders):
        # renaming, adding, removing or editing a file changes it, also an edit that keeps the size.
        # Contents are not hashed, which would mean reading every image; the price is that copying a
        # folder without keeping times (cp without -p) re-embeds it.
        h = hashlib.sha256()
        for i in indices:
            h.update(f"{self.paths[int(i)]}\t{_stat_key(self.path(int(i)))}\n".encode())
        return "files_sha256", h.hexdigest()


class ArraySource(ImageSource):
    """Images held in memory as uint8 arrays, N×H×W (greyscale) or N×H×W×C."""

    def __init__(self, data, labels, classes, root: str | os.PathLike | None = None):
        data = np.asarray(data)
        if data.ndim == 4 and data.shape[1] in (1, 3) and data.shape[-1] not in (1, 3):
            data = data.transpose(0, 2, 3, 1)  # N×C×H×W (SVHN) -> N×H×W×C
        if data.ndim == 4 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.dtype != np.uint8:
            raise TypeError(f"expected uint8 image arrays, got {data.dtype}")
        self.data = data
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = [str(c) for c in classes]
        self.root = None if root is None else os.path.abspath(root)

    def load(self, i, draft_size=None, as_tensor=False):
        return to_rgb(Image.fromarray(self.data[i]))

    def content_digest(self, indices):
        return "data_sha256", _sha256_array(self.data[np.asarray(indices)])

    @property
    def native_size(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])


class TorchvisionItemSource(ImageSource):
    """A torchvision dataset read through ``ds[i]``, for datasets that are not files (LSUN's LMDB)."""

    def __init__(self, ds, labels, classes, root):
        self.ds = ds
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = [str(c) for c in classes]
        self.root = None if root is None else os.path.abspath(root)

    def load(self, i, draft_size=None, as_tensor=False):
        try:
            img = self.ds[i][0]
        except _DECODE_ERRORS as e:
            raise CorruptImageError(f"{self.root}[{i}]", f"{type(e).__name__}: {e}") from e
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img))
        return to_rgb(img)

    def content_digest(self, indices):
        # The database files' names, sizes and modification times stand for their contents.
        if self.root is None:
            return None
        h = hashlib.sha256()
        for rel in list_all_files(Path(self.root)):
            h.update(f"{rel}\t{_stat_key(os.path.join(self.root, rel))}\n".encode())
        h.update(_sha256_array(np.asarray(indices)).encode())
        return "files_sha256", h.hexdigest()


def list_all_files(directory: Path) -> list[str]:
    out = []
    for dirpath, _, filenames in os.walk(directory):
        rel = os.path.relpath(dirpath, directory)
        out.extend(f if rel == "." else os.path.join(rel, f) for f in filenames)
    return sorted(out)


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------

def folder_split_dirs(base: Path) -> dict[str, Path]:
    """Native split folders of an image folder: ``train``, and ``test`` (or ``val`` standing in for it).

    A native ``val/`` folder is used as the test split when there is no ``test/`` (ImageNet, Imagenette
    and IN-9 ship their evaluation images as ``val``); zsclust's own val is always carved from train.
    """
    out = {}
    if (base / "train").is_dir():
        out["train"] = base / "train"
    if (base / "test").is_dir():
        out["test"] = base / "test"
    elif (base / "val").is_dir():
        out["test"] = base / "val"
    return out


def folder_native_splits(base: Path) -> tuple[str, ...]:
    """Native splits of an arbitrary folder: train+test, train only (carved: 'all') or test only."""
    dirs = folder_split_dirs(base)
    if "train" in dirs and "test" in dirs:
        return ("train", "test")
    if "train" in dirs:
        return ("all",)
    return ("test",)


def folder_source(base: Path, native_split: str, *, name: str, layout: str = "") -> FileListSource:
    """Read ``<base>/<class>/<image>`` or ``<base>/<split>/<class>/<image>`` for one native split.

    Classes are the union over the split folders, so train and test labels agree even if a class is
    missing from one of them. Classes without any image are dropped (with a warning).
    """
    split_dirs = folder_split_dirs(base)
    if split_dirs:
        key = "train" if native_split == "all" and "test" not in split_dirs else native_split
        if key not in split_dirs:
            want = "train/" if key == "train" else "test/ (or val/)"
            raise DatasetNotFoundError(
                f"Dataset '{name}' has no '{native_split}' split under '{base}': expected a {want}"
                f" sub-folder. {layout}".strip()
            )
        directory = split_dirs[key]
        class_pool = {c for d in split_dirs.values() for c in class_dirs(d)}
    else:
        directory = base
        class_pool = set(class_dirs(base))

    src = _read_class_folders(directory, class_pool, split_dirs, name, layout)
    src.dataset_root = os.path.abspath(base)
    return src


def _read_class_folders(directory: Path, class_pool: set[str], split_dirs: dict[str, Path], name: str,
                        layout: str) -> FileListSource:
    if not class_pool:
        loose = sorted(f for f in os.listdir(directory) if is_image_file(f))
        if loose:
            # A flat folder of images: no labels, but still worth clustering (evaluate with silhouette).
            warnings.warn(f"Dataset '{name}': '{directory}' has images but no class sub-folders; all"
                          " images get label 0, so label-based metrics are meaningless.", stacklevel=3)
            return FileListSource(directory, loose, np.zeros(len(loose), np.int64), [directory.name])

    files, labels, kept = [], [], []
    for cls in natural_class_sort(list(class_pool)):
        here = directory / cls
        imgs = list_images(here) if here.is_dir() else []
        if not imgs and not any(_has_image(d / cls) for d in split_dirs.values() if d != directory):
            warnings.warn(f"Dataset '{name}': class folder '{here}' has no images; dropped.",
                          stacklevel=3)
            continue
        # A class present only in another split keeps its place, so labels agree across splits.
        label = len(kept)
        kept.append(cls)
        files.extend(os.path.join(cls, f) for f in imgs)
        labels.extend([label] * len(imgs))

    if not files:
        raise DatasetNotFoundError(
            f"Dataset '{name}': no images ({', '.join(IMG_EXTENSIONS)}) found under '{directory}'."
            f" Expected one sub-folder per class: <dir>/<class>/<image>. {layout}".strip()
        )
    return FileListSource(directory, files, labels, kept)


# --------------------------------------------------------------------------------------------------
# torchvision datasets
# --------------------------------------------------------------------------------------------------

def _class_names(ds, n_labels: int) -> list[str]:
    classes = getattr(ds, "classes", None)
    if classes is not None and len(classes) >= n_labels:
        # Imagenette/ImageNet give tuples of synonyms: keep the first.
        return [c[0] if isinstance(c, (tuple, list)) else str(c) for c in classes]
    return [str(i) for i in range(n_labels)]


def _as_int_array(x) -> np.ndarray:
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x, dtype=np.int64).reshape(-1)


def source_from_torchvision(ds, root: str | os.PathLike) -> ImageSource:
    """Wrap a torchvision dataset, reading labels from its attributes rather than decoding images.

    File-based datasets become :class:`FileListSource` sorted by path (some torchvision classes list
    files in directory order, which differs between file systems); in-memory ones keep their order.
    """
    pairs = None
    if hasattr(ds, "index") and hasattr(ds, "all_categories"):  # INaturalist, 'full' target
        pairs = [(os.path.join(ds.root, ds.all_categories[c], f), c) for c, f in ds.index]
        classes = list(ds.all_categories)
    elif hasattr(ds, "filename") and hasattr(ds, "identity"):  # CelebA, identity target
        folder = os.path.join(ds.root, ds.base_folder, "img_align_celeba")
        ids = _as_int_array(ds.identity)
        pairs = [(os.path.join(folder, f), int(t) - 1) for f, t in zip(ds.filename, ids, strict=True)]
        classes = [str(i) for i in range(1, 10178)]  # identities 1..10177, disjoint across splits
    else:
        for attr in ("_samples", "samples", "imgs"):
            if isinstance(getattr(ds, attr, None), list):
                pairs = [(str(p), int(t)) for p, t in getattr(ds, attr)]
                break
        if pairs is None and hasattr(ds, "_image_files") and hasattr(ds, "_labels"):
            pairs = [(str(p), int(t)) for p, t in zip(ds._image_files, ds._labels, strict=True)]
        if pairs is not None:
            classes = _class_names(ds, max((t for _, t in pairs), default=-1) + 1)

    if pairs is not None:
        pairs.sort(key=lambda pt: pt[0])
        base = os.path.abspath(root)
        rel = [os.path.relpath(os.path.abspath(p), base) for p, _ in pairs]
        return FileListSource(base, rel, [t for _, t in pairs], classes)

    labels = None
    for attr in ("targets", "labels", "_labels"):
        if getattr(ds, attr, None) is not None:
            labels = _as_int_array(getattr(ds, attr))
            break
    if labels is None and hasattr(ds, "indices") and hasattr(ds, "dbs"):  # LSUN: cumulative counts
        counts = np.diff(np.concatenate([[0], np.asarray(ds.indices)]))
        labels = np.repeat(np.arange(len(counts)), counts)
        names = [c.rsplit("_", 1)[0] for c in ds.classes]
        return TorchvisionItemSource(ds, labels, names, root)
    data = getattr(ds, "data", None)
    if labels is not None and data is not None:
        if hasattr(data, "numpy"):
            data = data.numpy()
        return ArraySource(data, labels, _class_names(ds, int(labels.max()) + 1), root)
    if labels is None:
        warnings.warn(f"{type(ds).__name__} exposes no label attribute: reading every item once to get"
                      " labels (slow).", stacklevel=2)
        labels = _as_int_array([ds[i][1] for i in range(len(ds))])
    return TorchvisionItemSource(ds, labels, _class_names(ds, int(labels.max()) + 1), root)
