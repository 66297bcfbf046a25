"""Dataset registry: one :class:`DatasetSpec` per named dataset.

A spec says everything a user needs to know about a dataset (group in the study, where to get it, the
layout on disk, its native splits) and holds the builder that reads it. The catalogue of the study's
datasets lives in ``_catalog.py``; adding a dataset means adding one spec there (or calling
:func:`register_dataset` from user code), and the contract tests pick it up on their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zsclust.errors import ConfigError, UnknownDatasetError, did_you_mean

if TYPE_CHECKING:
    from zsclust.data._sources import ImageSource

#: The splits a user can ask for. ``val`` is always carved from ``train``.
SPLITS = ("train", "val", "test")

#: Native splits a spec may declare. ``all`` is one unsplit pool, from which test and train are carved.
NATIVE_SPLITS = ("train", "test", "all")

#: Dataset groups, as in Lowe et al. (2024), plus the tuning datasets and the offline default.
GROUPS = ("in-domain", "domain-shift", "near-ood", "fine-grained", "far-ood", "validation", "offline")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

Builder = Callable[["DatasetSpec", str, Path, bool], "ImageSource"]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything zsclust knows about one named dataset.

    ``builder(spec, native_split, data_root, download)`` returns the images and labels of one native
    split (one of ``splits``); it raises :class:`~zsclust.errors.DatasetNotFoundError` with download
    instructions when the files are missing. Splitting into train/val/test is done generically on top.
    """

    name: str
    group: str
    builder: Builder
    splits: tuple[str, ...]  # native splits: ("train", "test"), ("test",) or ("all",)
    source: str  # how to get it, in words ("torchvision.datasets.CIFAR10, --download")
    layout: str  # where the files go, relative to the data root
    description: str = ""
    paper_name: str = ""  # the name used in the study's tables
    url: str = ""
    downloadable: bool = False  # whether --download can fetch it
    test_fraction: float = 1 / 3  # for splits == ("all",): fraction carved out as test
    test_seed: int = 0  # for splits == ("all",): fixed, so the test set does not move with --seed

    def available_splits(self) -> tuple[str, ...]:
        """The splits :func:`create_dataset` accepts for this dataset."""
        return available_splits(self.splits)


def available_splits(native: tuple[str, ...]) -> tuple[str, ...]:
    """User-facing splits given native ones: val needs a train split to carve it from."""
    if "train" in native or "all" in native:
        return SPLITS
    return ("test",) if "test" in native else ()


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec, *, overwrite: bool = False) -> DatasetSpec:
    """Add a dataset to the registry (the extension point); returns the spec so it can be used inline."""
    problems = []
    if not _NAME_RE.match(spec.name):
        problems.append(f"name '{spec.name}' must be lower-case letters, digits and underscores")
    if spec.group not in GROUPS:
        problems.append(f"group '{spec.group}' is not one of {', '.join(GROUPS)}")
    if not spec.splits or any(s not in NATIVE_SPLITS for s in spec.splits):
        problems.append(f"native splits {spec.splits} must be a non-empty subset of {NATIVE_SPLITS}")
    if "all" in spec.splits and len(spec.splits) > 1:
        problems.append("native split 'all' (one unsplit pool) cannot be combined with others")
    if "all" in spec.splits and not 0 < spec.test_fraction < 1:
        problems.append(f"test_fraction {spec.test_fraction} must be in (0, 1)")
    if not callable(spec.builder):
        problems.append("builder is not callable")
    if problems:
        raise ConfigError(f"Cannot register dataset '{spec.name}': " + "; ".join(problems) + ".")
    if spec.name in _REGISTRY and not overwrite:
        raise ConfigError(
            f"Dataset '{spec.name}' is already registered; pass overwrite=True to replace it."
        )
    _REGISTRY[spec.name] = spec
    return spec


def list_datasets(group: str | None = None) -> list[str]:
    """Sorted names of the registered datasets, optionally of one group only."""
    if group is not None and group not in GROUPS:
        raise ConfigError(f"Unknown dataset group '{group}'; groups are: {', '.join(GROUPS)}."
                          + did_you_mean(group, GROUPS))
    return sorted(n for n, s in _REGISTRY.items() if group is None or s.group == group)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec registered under ``name``; an unknown name raises with close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownDatasetError(
            f"Unknown dataset '{name}': it is neither a registered dataset nor an existing directory."
            + did_you_mean(name, _REGISTRY)
            + " List the registered datasets with `zsclust datasets`, or pass a directory of images"
            " laid out as <dir>/<class>/<image>."
        ) from None


def is_registered(name: str) -> bool:
    return name in _REGISTRY
