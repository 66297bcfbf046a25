"""Datasets: a registry of the study's datasets, image folders, split carving and eval transforms.

``create_dataset(name_or_dir, split)`` returns an :class:`ImageDataset` whose items are
``{"image": tensor, "label": int, "index": int}``; :func:`collate_batch` stacks them and drops images
that could not be decoded (with ``skip_corrupt=True``).

New datasets: ``register_dataset(DatasetSpec(name, group, builder, splits, source, layout, ...))``
with ``builder=folder_builder()`` or ``torchvision_builder("ClassName", {"train": {...}, "test": {...}})``.

Where the files go
------------------
The data root is ``root=`` (``--root``), else ``$ZSCLUST_DATA``, else ``~/.cache/zsclust/data``.
Each registered dataset lives in ``<root>/<name>/``:

* torchvision datasets (cifar10, mnist, dtd, ...) in torchvision's own layout; ``download=True``
  (``--download``) lets torchvision fetch them, and nothing is downloaded otherwise.
* folder datasets with one native split (imagenet_r, imagenet_o, imagenet_sketch, imagenetv2, in9*):
  ``<root>/<name>/<class>/<image>``.
* folder datasets with train and test (imagewoof, bioscan1m; imagenet and cars optionally):
  ``<root>/<name>/train/<class>/<image>`` and ``<root>/<name>/test/<class>/<image>``; a ``val/``
  folder stands in for ``test/`` when there is none (ImageNet, Imagenette and IN-9 name it so).
* the directory names the official archives extract to are also accepted (e.g.
  ``<root>/imagenet_r/imagenet-r/``); ``docs/datasets.md`` lists every dataset's layout.

Any directory works too: ``create_dataset("/data/my_images")`` reads ``<dir>/<class>/<image>`` (all
images form the test split), or ``<dir>/{train,test|val}/<class>/<image>``, or ``<dir>/train/...``
alone (test is then carved). Class order is sorted (numerically when all names are integers), files
are sorted; extensions .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp .gif, in any case.
A class folder literally named train, test or val at the top level is taken for a split folder.

Splits
------
``test`` is the native test split (ImageNet-style datasets: the official val images). ``train`` is the
whole native train split. ``val`` is carved from train, stratified and seeded by ``seed``, as large as
test but at most half of train; it is a subset of train, which is not shrunk. Datasets without a
native test split (digits, EuroSAT, UTKFace, BreakHis) get test carved first with a fixed seed (0) and
a per-dataset fraction (1/3 for digits, as in the study for the others), and train is the rest.
Singleton classes are never carved out (they stay in train); if stratification is impossible the
carving falls back to a seeded random subset, with a warning. ``split_record`` says how a split was
made; :func:`save_split_record` writes it with the indices.

Speed
-----
With a transform from :func:`build_transform`, JPEGs are decoded with PIL's draft mode at the smallest
1/2, 1/4 or 1/8 scale that still covers the resize size, which is several times faster for large
photos. The result differs from a full decode followed by the resize only slightly (the DCT-domain
downscale acts as an extra box filter); set ``dataset.draft_size = None`` to decode at full size.
Transforms built with ``preprocessing="study"`` always decode at full size (docs/preprocessing.md).

Preprocessing
-------------
``build_transform(data_config, preprocessing="model"|"study")``: ``model`` is the encoder's own pretrained
config, ``study`` the protocol of Lowe et al. (2024): shorter side to the input size (bilinear), centre crop,
ImageNet statistics (CLIP's for CLIP encoders). See :func:`preprocessing_config`.
"""

from zsclust.data._catalog import folder_builder, torchvision_builder  # registers the study's datasets
from zsclust.data._dataset import (
    DATA_ENV,
    ImageDataset,
    collate_batch,
    create_dataset,
    default_data_root,
)
from zsclust.data._registry import (
    GROUPS,
    NATIVE_SPLITS,
    SPLITS,
    DatasetSpec,
    get_dataset_spec,
    list_datasets,
    register_dataset,
)
from zsclust.data._sources import IMG_EXTENSIONS, read_image
from zsclust.data._splits import load_split_record, save_split_record
from zsclust.data._transforms import PREPROCESSING, build_transform, preprocessing_config

__all__ = [
    "DATA_ENV",
    "GROUPS",
    "IMG_EXTENSIONS",
    "NATIVE_SPLITS",
    "PREPROCESSING",
    "SPLITS",
    "DatasetSpec",
    "ImageDataset",
    "build_transform",
    "collate_batch",
    "create_dataset",
    "default_data_root",
    "folder_builder",
    "get_dataset_spec",
    "list_datasets",
    "load_split_record",
    "preprocessing_config",
    "read_image",
    "register_dataset",
    "save_split_record",
    "torchvision_builder",
]
