"""The datasets of Lowe et al. (2024), the tuning datasets and the offline default, one spec each.

Builders return the images and labels of one *native* split (``train``, ``test`` or ``all``); carving
val (and test, for unsplit datasets) happens in ``_dataset.py``. Three kinds of builder:

* torchvision: the dataset's own torchvision class under ``<root>/<name>/``, with its ``download``
  argument passed through; labels come from the class's attributes, never from decoding images.
* folder: ``<root>/<name>/<class>/<image>`` (single native split) or ``<root>/<name>/{train,test}/...``,
  also accepting the directory names the official archives extract to.
* a few readers for official formats torchvision lacks (NABirds, UTKFace, BreakHis) and scikit-learn's
  digits. docs/datasets.md tabulates all of them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from zsclust.data._registry import DatasetSpec, register_dataset
from zsclust.data._sources import (
    ArraySource,
    FileListSource,
    folder_source,
    folder_split_dirs,
    is_image_file,
    source_from_torchvision,
)
from zsclust.errors import DatasetNotFoundError

_ROOT_HINT = "The data root is --root (root= in Python), else $ZSCLUST_DATA, else ~/.cache/zsclust/data."


def _where(data_root: Path) -> str:
    return f"{_ROOT_HINT} It is now '{data_root}'."


def _first_dir(data_root: Path, candidates) -> Path | None:
    for c in candidates:
        p = data_root / c
        if p.is_dir():
            return p
    return None


def _not_found(spec: DatasetSpec, native_split: str, data_root: Path, detail: str = "",
               tried_download: bool = False) -> str:
    """The message for missing files: where we looked, and how to get them."""
    head = f"Dataset '{spec.name}' (native split '{native_split}') not found under '{data_root / spec.name}'"
    head += f" ({detail})." if detail else "."
    if spec.downloadable and tried_download:
        how = (" The download failed: check the network, or fetch it on another machine and copy"
               f" '{spec.name}/' into the data root.")
    elif spec.downloadable:
        how = (" Pass --download (download=True in Python) to fetch it, or point the data root at a copy"
               " that has it.")
    else:
        how = (f" It cannot be downloaded automatically: get it from {spec.url or spec.source} and arrange"
               f" it as {spec.layout}.")
    return head + how + " " + _where(data_root)


# --------------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------------

def torchvision_builder(cls_name: str, split_kwargs: dict[str, dict], *, download_arg: bool = True,
                        folder_fallback: bool = False, install_hint: str = "", **fixed):
    """Build through ``torchvision.datasets.<cls_name>(<root>/<name>, **fixed, **split_kwargs[split])``.

    ``folder_fallback``: a ``<root>/<name>/{train,val|test}/<class>/`` tree is read directly, which is
    how most people keep ImageNet and Stanford Cars (their official downloads are gone or manual).
    """

    def build(spec: DatasetSpec, native_split: str, data_root: Path, download: bool):
        ds_root = data_root / spec.name
        if folder_fallback and native_split in folder_split_dirs(ds_root):
            return folder_source(ds_root, native_split, name=spec.name, layout=spec.layout)
        import torchvision.datasets as tvd

        kwargs = {**fixed, **split_kwargs[native_split]}
        if download_arg:
            kwargs["download"] = download
        elif download and not ds_root.exists():
            raise DatasetNotFoundError(_not_found(spec, native_split, data_root,
                                                  "--download is not supported for it"))
        try:
            ds = getattr(tvd, cls_name)(str(ds_root), **kwargs)
        except ImportError as e:
            raise ImportError(f"Dataset '{spec.name}' needs an optional package: {e}. {install_hint}"
                              .strip()) from e
        except Exception as e:  # torchvision reports missing files as RuntimeError/OSError/ValueError
            verb = "download or read failed" if download else "missing or incomplete"
            raise DatasetNotFoundError(_not_found(spec, native_split, data_root,
                                                  f"{verb}: {type(e).__name__}: {e}",
                                                  tried_download=download)) from e
        return source_from_torchvision(ds, ds_root)

    return build


# --------------------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------------------

def folder_builder(*archive_dirs: str, archive_url: str = "", extract_to: str = ""):
    """Read ``<root>/<name>`` or, first, any of ``archive_dirs`` (as the official archive extracts).

    With ``archive_url``, ``--download`` fetches and extracts it into ``<root>/<extract_to or name>/``.
    """

    def build(spec: DatasetSpec, native_split: str, data_root: Path, download: bool):
        candidates = (*archive_dirs, spec.name)
        base = _first_dir(data_root, candidates)
        if base is None and download and archive_url:
            from torchvision.datasets.utils import download_and_extract_archive

            try:
                dest = data_root / (extract_to or spec.name)
                download_and_extract_archive(archive_url, download_root=str(dest))
            except Exception as e:
                raise DatasetNotFoundError(
                    f"Downloading dataset '{spec.name}' from {archive_url} failed ({type(e).__name__}:"
                    f" {e}). Download it yourself and arrange it as {spec.layout}. {_where(data_root)}"
                ) from e
            base = _first_dir(data_root, candidates)
        if base is None:
            looked = ", ".join(f"'{data_root / c}'" for c in candidates)
            how = " Or pass --download to fetch and extract it." if archive_url else ""
            raise DatasetNotFoundError(
                f"Dataset '{spec.name}' not found: looked in {looked}. Get it from"
                f" {spec.url or spec.source} and arrange it as {spec.layout}.{how} {_where(data_root)}"
            )
        return folder_source(base, native_split, name=spec.name, layout=f"Expected layout: {spec.layout}.")

    return build


# --------------------------------------------------------------------------------------------------
# readers for official formats
# --------------------------------------------------------------------------------------------------

def _digits(spec, native_split, data_root, download):
    """scikit-learn's 8×8 digits, values 0..16, scaled to 0..255 greyscale."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return ArraySource(images, d.target, [str(i) for i in range(10)], root=None)


def _read_table(path: Path) -> list[list[str]]:
    with open(path) as f:
        return [line.split(maxsplit=1) for line in f if line.strip()]


def _nabirds(spec, native_split, data_root, download):
    """NABirds in its official layout: images.txt, image_class_labels.txt, train_test_split.txt."""
    base = _first_dir(data_root, ("nabirds/nabirds", "nabirds"))
    needed = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
    if base is None or not all((base / f).is_file() for f in needed):
        raise DatasetNotFoundError(_not_found(spec, native_split, data_root,
                                              f"expected {', '.join(needed)} and images/"))
    paths = dict(_read_table(base / "images.txt"))
    label_of = {k: int(v) for k, v in _read_table(base / "image_class_labels.txt")}
    is_train = {k: v.strip() == "1" for k, v in _read_table(base / "train_test_split.txt")}
    names = {int(k): v.strip() for k, v in _read_table(base / "classes.txt")}
    used = sorted(set(label_of.values()))  # the 555 leaf classes that have images
    dense = {c: i for i, c in enumerate(used)}
    want = native_split == "train"
    rows = sorted((paths[k].strip(), dense[label_of[k]]) for k in paths if is_train[k] == want)
    src = FileListSource(base / "images", [p for p, _ in rows], [t for _, t in rows],
                         [names.get(c, str(c)) for c in used])
    src.dataset_root = str(base.resolve())
    return src


def _utkface(spec, native_split, data_root, download):
    """UTKFace aligned & cropped faces; label = the age in '<age>_<gender>_<race>_<date>.jpg'."""
    base = _first_dir(data_root, ("utkface/UTKFace", "utkface/utkface_aligned_cropped/UTKFace", "utkface"))
    files = sorted(f for f in os.listdir(base) if is_image_file(f)) if base is not None else []
    if not files:
        raise DatasetNotFoundError(_not_found(spec, native_split, data_root))
    kept, ages = [], []
    for f in files:
        parts = f.split(".")[0].split("_")
        if len(parts) == 4 and parts[0].isdigit():  # 3 files lack a field: skipped, as in the study
            kept.append(f)
            ages.append(int(parts[0]))
    if len(kept) < len(files):
        warnings.warn(f"UTKFace: skipped {len(files) - len(kept)} file(s) whose names lack age/gender/"
                      "race/date.", stacklevel=2)
    return FileListSource(base, kept, ages, [str(a) for a in range(max(ages) + 1)])


_BREAKHIS_TYPES = ("A", "F", "PT", "TA", "DC", "LC", "MC", "PC")
_BREAKHIS_MAGS = (40, 100, 200, 400)


def _breakhis(spec, native_split, data_root, download):
    """BreakHis histology slides; label = tumour type × magnification (32 classes), as in the study."""
    base = _first_dir(data_root, ("breakhis/BreaKHis_v1/histology_slides/breast",
                                  "breakhis/histology_slides/breast", "breakhis"))
    rel, labels = [], []
    if base is not None:
        for dirpath, _, filenames in os.walk(base):
            for f in filenames:
                if not (f.startswith("SOB_") and f.lower().endswith(".png")):
                    continue
                # SOB_<B|M>_<type>-<year>-<slide>-<magnification>-<seq>.png
                fields = f.split("_")[-1].split("-")
                try:
                    t = _BREAKHIS_TYPES.index(fields[0])
                    m = _BREAKHIS_MAGS.index(int(fields[3]))
                except (ValueError, IndexError):
                    continue
                rel.append(os.path.relpath(os.path.join(dirpath, f), base))
                labels.append(m * len(_BREAKHIS_TYPES) + t)
    if not rel:
        raise DatasetNotFoundError(_not_found(spec, native_split, data_root))
    order = np.argsort(rel, kind="stable")
    classes = [f"{t}-{m}X" for m in _BREAKHIS_MAGS for t in _BREAKHIS_TYPES]
    return FileListSource(base, [rel[i] for i in order], np.asarray(labels)[order], classes)


# --------------------------------------------------------------------------------------------------
# the catalogue
# --------------------------------------------------------------------------------------------------

_TT = {"train": {"train": True}, "test": {"train": False}}  # CIFAR / MNIST style
_SPLIT = {"train": {"split": "train"}, "test": {"split": "test"}}


def _tv_layout(name: str, cls: str) -> str:
    return f"<root>/{name}/ in torchvision's {cls} layout"


def _register_all() -> None:
    def tv(name, group, cls, split_kwargs, *, paper, desc, url, downloadable=True, layout=None,
           splits=("train", "test"), test_fraction=1 / 3, **kw):
        src = f"torchvision.datasets.{cls}" + (" (--download)" if downloadable else " (manual download)")
        register_dataset(DatasetSpec(
            name=name, group=group, splits=splits, source=src, url=url, paper_name=paper,
            description=desc, downloadable=downloadable, test_fraction=test_fraction,
            layout=layout or _tv_layout(name, cls),
            builder=torchvision_builder(cls, split_kwargs, download_arg=downloadable, **kw)))

    def folder(name, group, *, paper, desc, url, splits=("test",), archive_dirs=(), archive_url="",
               extract_to=""):
        if splits == ("test",):
            layout = f"<root>/{name}/<class>/<image>"
        else:
            layout = f"<root>/{name}/{{train,test}}/<class>/<image> (val/ is accepted for test)"
        register_dataset(DatasetSpec(
            name=name, group=group, splits=splits, url=url, paper_name=paper, description=desc,
            source=f"image folder from {url}" + (" (--download)" if archive_url else ""),
            downloadable=bool(archive_url), layout=layout,
            builder=folder_builder(*archive_dirs, archive_url=archive_url, extract_to=extract_to)))

    # --- in-domain -------------------------------------------------------------------------------
    tv("imagenet", "in-domain", "ImageNet", {"train": {"split": "train"}, "test": {"split": "val"}},
       paper="ImageNet-1k", desc="ILSVRC-2012, 1000 classes; test = the 50k validation images",
       url="https://image-net.org/download.php", downloadable=False, folder_fallback=True,
       layout="<root>/imagenet/{train,val}/<wnid>/<image>, or ILSVRC2012_devkit_t12.tar.gz plus"
              " ILSVRC2012_img_{train,val}.tar in <root>/imagenet/ (torchvision extracts them)")
    folder("imagenetv2", "in-domain", paper="ImageNet-v2",
           desc="ImageNetV2 matched-frequency, 10k images; class folders 0..999 in ImageNet order",
           url="https://github.com/modestyachts/ImageNetV2",
           archive_dirs=("imagenetv2/imagenetv2-matched-frequency-format-val",),
           archive_url="https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/"
                       "imagenetv2-matched-frequency.tar.gz")
    tv("cifar10", "in-domain", "CIFAR10", _TT, paper="CIFAR-10", desc="10 classes, 32×32",
       url="https://www.cs.toronto.edu/~kriz/cifar.html")
    tv("cifar100", "in-domain", "CIFAR100", _TT, paper="CIFAR-100", desc="100 fine classes, 32×32",
       url="https://www.cs.toronto.edu/~kriz/cifar.html")

    # ImageNet-9 backgrounds challenge (Xiao et al. 2021): 9 superclasses, 4050 test images per variant.
    bg_url = "https://github.com/MadryLab/backgrounds_challenge"
    bg_archive = f"{bg_url}/releases/download/data/backgrounds_challenge_data.tar.gz"
    in9 = {
        "original": ("in9", "in-domain", "IN9", "unmodified images"),
        "only_fg": ("in9_only_fg", "domain-shift", "IN9 Only-FG", "foreground on a black background"),
        "no_fg": ("in9_no_fg", "domain-shift", "IN9 No-FG", "foreground cut out, background kept"),
        "only_bg_b": ("in9_only_bg_b", "domain-shift", "IN9 Only-BG-B", "background, foreground blacked"),
        "only_bg_t": ("in9_only_bg_t", "domain-shift", "IN9 Only-BG-T", "background, foreground tiled"),
        "mixed_same": ("in9_mixed_same", "domain-shift", "IN9 Mixed-Same",
                       "foreground on a background of the same class"),
        "mixed_rand": ("in9_mixed_rand", "domain-shift", "IN9 Mixed-Rand",
                       "foreground on a random background"),
        "mixed_next": ("in9_mixed_next", "domain-shift", "IN9 Mixed-Next",
                       "foreground on a background of the next class"),
    }
    for variant, (name, group, paper, what) in in9.items():
        folder(name, group, paper=paper, url=bg_url,
               desc=f"ImageNet-9 backgrounds challenge '{variant}': {what}",
               archive_dirs=(f"in9_bg_challenge/bg_challenge/{variant}", f"in9_bg_challenge/{variant}",
                             f"bg_challenge/{variant}"),
               archive_url=bg_archive, extract_to="in9_bg_challenge")  # one archive for all variants

    # --- domain shift ----------------------------------------------------------------------------
    folder("imagenet_r", "domain-shift", paper="ImageNet-R",
           desc="renditions (art, cartoons, ...) of 200 ImageNet classes, 30k images",
           url="https://github.com/hendrycks/imagenet-r", archive_dirs=("imagenet_r/imagenet-r",),
           archive_url="https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar")
    folder("imagenet_sketch", "domain-shift", paper="ImageNet-Sketch",
           desc="50k black-and-white sketches of the 1000 ImageNet classes",
           url="https://github.com/HaohanWang/ImageNet-Sketch", archive_dirs=("imagenet_sketch/sketch",))

    # --- near OOD --------------------------------------------------------------------------------
    folder("imagenet_o", "near-ood", paper="ImageNet-O",
           desc="2k adversarially filtered out-of-distribution images in 200 ImageNet-22k classes",
           url="https://github.com/hendrycks/natural-adv-examples", archive_dirs=("imagenet_o/imagenet-o",),
           archive_url="https://people.eecs.berkeley.edu/~hendrycks/imagenet-o.tar")
    tv("lsun", "near-ood", "LSUN", {"train": {"classes": "train"}, "test": {"classes": "val"}},
       paper="LSUN", desc="10 scene categories; test = the 300-per-class validation LMDBs",
       url="https://github.com/fyu/lsun", downloadable=False, install_hint="Install it: pip install lmdb",
       layout="<root>/lsun/<category>_{train,val}_lmdb/ (download with the LSUN repository's script)")
    tv("places365", "near-ood", "Places365",
       {"train": {"split": "train-standard"}, "test": {"split": "val"}}, small=False,
       paper="Places365", desc="365 scene classes; test = the 36.5k validation images",
       url="http://places2.csail.mit.edu/download.html")

    # --- fine-grained ----------------------------------------------------------------------------
    tv("aircraft", "fine-grained", "FGVCAircraft", _SPLIT, annotation_level="variant",
       paper="Aircraft", desc="FGVC-Aircraft, 100 variants", url="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/")
    tv("cars", "fine-grained", "StanfordCars", _SPLIT, downloadable=False, folder_fallback=True,
       paper="Stanford Cars", desc="196 car models (the official download is gone; use a mirror)",
       url="https://www.kaggle.com/datasets/jessicali9530/stanford-cars-dataset",
       layout="<root>/cars/{train,test}/<class>/<image>, or torchvision's <root>/cars/stanford_cars/"
              " (devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat)")
    tv("flowers102", "fine-grained", "Flowers102", _SPLIT, paper="Oxford Flowers-102",
       desc="102 flower species", url="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/")
    folder("bioscan1m", "fine-grained", splits=("train", "test"), paper="BIOSCAN-1M",
           desc="insect images; arrange one folder per species from the metadata's split column",
           url="https://github.com/bioscan-ml/BIOSCAN-1M")
    register_dataset(DatasetSpec(
        name="nabirds", group="fine-grained", splits=("train", "test"), builder=_nabirds,
        source="NABirds official archive (manual download)", url="https://dl.allaboutbirds.org/nabirds",
        layout="<root>/nabirds/ with images.txt, image_class_labels.txt, train_test_split.txt,"
               " classes.txt and images/",
        paper_name="NABirds", description="555 North American bird classes"))
    tv("inat2021", "fine-grained", "INaturalist",
       {"train": {"version": "2021_train"}, "test": {"version": "2021_valid"}}, target_type="full",
       paper="iNaturalist-2021", desc="10k species; test = the 100k validation images",
       url="https://github.com/visipedia/inat_comp/tree/master/2021",
       layout="<root>/inat2021/2021_{train,valid}/ in torchvision's INaturalist layout")

    # --- far OOD ---------------------------------------------------------------------------------
    tv("celeba", "far-ood", "CelebA", _SPLIT, target_type="identity", paper="CelebA",
       desc="faces; label = identity (identities are disjoint between train and test)",
       url="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html")
    register_dataset(DatasetSpec(
        name="utkface", group="far-ood", splits=("all",), test_fraction=0.25, builder=_utkface,
        source="UTKFace aligned & cropped archive (manual download)",
        url="https://susanqq.github.io/UTKFace/",
        layout="<root>/utkface/UTKFace/<age>_<gender>_<race>_<datetime>.jpg.chip.jpg",
        paper_name="UTKFace", description="faces; label = age in years; test = 25% carved"))
    register_dataset(DatasetSpec(
        name="breakhis", group="far-ood", splits=("all",), test_fraction=0.40, builder=_breakhis,
        source="BreakHis archive (manual download)",
        url="https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/",
        layout="<root>/breakhis/BreaKHis_v1/histology_slides/breast/.../SOB_*.png",
        paper_name="BreakHis",
        description="breast histology; label = tumour type × magnification (32); test = 40% carved"))
    tv("dtd", "far-ood", "DTD", _SPLIT, partition=1, paper="DTD", desc="47 texture classes (partition 1)",
       url="https://www.robots.ox.ac.uk/~vgg/data/dtd/")
    tv("eurosat", "far-ood", "EuroSAT", {"all": {}}, splits=("all",), test_fraction=0.15,
       paper="EuroSAT", desc="Sentinel-2 RGB land cover, 10 classes; test = 15% carved",
       url="https://github.com/phelber/EuroSAT")
    tv("mnist", "far-ood", "MNIST", _TT, paper="MNIST", desc="handwritten digits, 28×28 grey",
       url="https://yann.lecun.com/exdb/mnist/")
    tv("fashion_mnist", "far-ood", "FashionMNIST", _TT, paper="Fashion-MNIST",
       desc="10 clothing classes, 28×28 grey", url="https://github.com/zalandoresearch/fashion-mnist")
    tv("svhn", "far-ood", "SVHN", _SPLIT, paper="SVHN", desc="house-number digits, 32×32 (no 'extra')",
       url="http://ufldl.stanford.edu/housenumbers/")

    # --- tuning (validation) datasets ------------------------------------------------------------
    tv("imagenette", "validation", "Imagenette", {"train": {"split": "train"}, "test": {"split": "val"}},
       size="full", paper="Imagenette", desc="10 easy ImageNet classes; test = its val folder",
       url="https://github.com/fastai/imagenette")
    folder("imagewoof", "validation", splits=("train", "test"), paper="Imagewoof",
           desc="10 dog breeds from ImageNet; test = its val folder", url="https://github.com/fastai/imagenette",
           archive_dirs=("imagewoof/imagewoof2",),
           archive_url="https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2.tgz")

    # --- offline ---------------------------------------------------------------------------------
    register_dataset(DatasetSpec(
        name="digits", group="offline", splits=("all",), builder=_digits,
        source="scikit-learn's load_digits (ships with scikit-learn; no download)",
        layout="none: bundled with scikit-learn", paper_name="",
        description="1797 8×8 grey digits, 10 classes; test = 1/3 carved (599); for offline runs and tests"))


_register_all()
