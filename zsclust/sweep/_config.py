"""A sweep config: the run config's settings, plus lists of encoders and datasets to cross.

``encoders`` is a list of names (or ``{name, weights, jobs}`` with per-encoder ``jobs`` patches);
``datasets`` a list, or a mapping group → list, of names (or ``{name, root, download, seed,
skip_corrupt, group, jobs}``). Every other key is a :class:`~zsclust.config.RunConfig` setting that
applies to every cell: ``embed``, ``reducer``, ``clusterer``, ``jobs``, ``tracking``, ...

A ``jobs`` patch maps a job label to ``{reducer: ..., clusterer: ...}`` (a patch of the job's node,
a whole node, or a choice name; ``null`` drops the job for that item), exactly as in a run config.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from .._build import expand_jobs, patched_node
from ..config import RunConfig, choice_dirs, load_config, merge_config, to_container
from ..errors import ConfigError

ENCODER_KEYS = {"name", "weights", "jobs"}
DATASET_KEYS = {"name", "root", "download", "seed", "skip_corrupt", "group", "jobs"}


@dataclass
class SweepSettings:
    name: str = "sweep"
    splits: list[str] = field(default_factory=lambda: ["test"])
    workers: Optional[int] = None  # clustering processes; None: half the cores (at most 8); 0: in this process
    threads_per_worker: Optional[int] = None  # None: the cores shared out among the workers
    # "i/n": this machine takes cells i, i+n, i+2n, ... (several machines, one grid); "auto": i/n from the
    # SLURM job array this runs in (sbatch --array=0-<n-1>), see resolve_shard
    shard: Optional[str] = None
    knn: bool = False  # also the kNN probe: one job per (encoder, dataset), train split as the bank (sweep/_knn.py)


@dataclass
class SweepConfig(RunConfig):
    """A grid: every encoder × dataset × split is embedded once, then every job runs on it."""

    REPLACE: ClassVar[tuple[str, ...]] = ("encoders", "datasets")

    encoders: list[Any] = field(default_factory=lambda: ["tf_efficientnet_lite0.pypi_in1k"])
    datasets: Any = None  # a list, or group -> list (a list default could not merge with a mapping)
    sweep: SweepSettings = field(default_factory=SweepSettings)


@dataclass
class Cell:
    """One (encoder, dataset, split) of the grid, with the run config that embeds and clusters it."""

    encoder: str
    dataset: str
    split: str
    group: str | None
    cfg: DictConfig  # a RunConfig

    @property
    def label(self) -> str:
        return f"{self.encoder}/{self.dataset}:{self.split}"


def load_sweep_config(path: str | os.PathLike | None, overrides=()) -> DictConfig:
    """The sweep config; ``encoders=[a,b]``/``datasets=[x,y]`` on the command line select from the file's items.

    A bare name that the file lists as an item with settings (weights, per-encoder clusterers, a
    dataset's group or overrides) keeps them, so a subset runs exactly the jobs of the full grid.
    """
    cfg = load_config(path, overrides, schema=SweepConfig)
    picked = {o.split("=", 1)[0].strip() for o in overrides} & {"encoders", "datasets"}
    if path is not None and picked:
        in_file = load_config(path, (), schema=SweepConfig)
        if "encoders" in picked:
            known = {item["name"]: item for item in _items(in_file.encoders, "encoders", ENCODER_KEYS)}
            cfg.encoders = [known.get(i, i) if isinstance(i, str) else i for i in to_container(cfg.encoders)]
        if "datasets" in picked and in_file.datasets is not None:
            known = {item["name"]: item for item in _dataset_items(in_file.datasets)}
            value = to_container(cfg.datasets)

            def pick(items, group=None):
                out = []
                for i in items:
                    item = dict(known[i]) if isinstance(i, str) and i in known else i
                    if group is not None and isinstance(item, dict):
                        item["group"] = group
                    out.append(item)
                return out

            cfg.datasets = ({g: pick(v, g) for g, v in value.items()} if isinstance(value, dict) and "name" not in value
                            else pick(value if isinstance(value, list) else [value]))
    expand_cells(cfg)  # item errors now, before anything runs
    return cfg


def _items(node, what: str, keys: set[str]) -> list[dict]:
    if node is None:
        return []
    if isinstance(node, (str, DictConfig)) and not isinstance(node, ListConfig):
        node = [node]
    out = []
    for i, item in enumerate(node):
        if isinstance(item, str):
            out.append({"name": item})
            continue
        if not isinstance(item, DictConfig) or "name" not in item:
            raise ConfigError(f"{what}[{i}] must be a name or a mapping with a 'name', got {item!r}.")
        unknown = set(item.keys()) - keys
        if unknown:
            raise ConfigError(f"{what}[{i}] ({item.name}) has unknown key(s) {sorted(unknown)}; "
                              f"valid: {', '.join(sorted(keys))}.")
        out.append(to_container(item))
    return out


def _dataset_items(node) -> list[dict]:
    if isinstance(node, DictConfig) and "name" not in node:  # group -> list
        out = []
        for group, items in node.items():
            for item in _items(items, f"datasets.{group}", DATASET_KEYS):
                item.setdefault("group", str(group))
                out.append(item)
        return out
    return _items(node, "datasets", DATASET_KEYS)


def expand_cells(cfg: DictConfig) -> list[Cell]:
    """The grid in run order (encoder-major, so each encoder is loaded once), each cell a full RunConfig."""
    encoders = _items(cfg.encoders, "encoders", ENCODER_KEYS)
    datasets = _dataset_items(cfg.datasets)
    if not encoders:
        raise ConfigError("The sweep lists no encoders; add some under 'encoders', e.g. [resnet50.tv_in1k].")
    if not datasets:
        raise ConfigError("The sweep lists no datasets; add some under 'datasets', e.g. [cifar10, dtd], "
                          "or by group: {far-ood: [dtd, eurosat]}.")
    splits = list(cfg.sweep.splits)
    if not splits:
        raise ConfigError("sweep.splits is empty; use [test] (or [val] to score validation splits).")
    base = merge_config(OmegaConf.structured(RunConfig),
                        OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k not in ("encoders", "datasets", "sweep")]))
    jobs = {j.label: {"reducer": dict(j.reducer), "clusterer": dict(j.clusterer)} for j in expand_jobs(base)}
    base.reducer, base.clusterer, base.overrides = None, None, {}
    cells, seen = [], set()
    for enc in encoders:
        for ds in datasets:
            for split in splits:
                key = (enc["name"], enc.get("weights"), ds["name"], ds.get("root"), split)
                if key in seen:
                    raise ConfigError(f"The sweep lists {enc['name']} × {ds['name']}:{split} twice; "
                                      "each cell must be unique.")
                seen.add(key)
                cells.append(_cell(base, jobs, enc, ds, split))
    return cells


ARRAY_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP")


def resolve_shard(shard: str | None) -> str | None:
    """``sweep.shard`` as ``"i/n"``: ``auto`` becomes this SLURM array task's place in its array.

    An array ``--array=0-3`` (or ``1-4``, ``0-6:2``) has ``SLURM_ARRAY_TASK_COUNT`` tasks; task
    ``SLURM_ARRAY_TASK_ID`` takes shard ``(id - min) / step`` of them. Outside an array, or in one whose
    ids are not evenly spaced (``--array=0,3,7``), ``auto`` is a ConfigError.
    """
    if shard is None or str(shard).strip().lower() != "auto":
        return shard
    env = {v: os.environ.get(v, "") for v in ARRAY_VARS}
    if not (env["SLURM_ARRAY_TASK_ID"].isdigit() and env["SLURM_ARRAY_TASK_COUNT"].isdigit()):
        raise ConfigError("sweep.shard=auto takes the shard from a SLURM job array (SLURM_ARRAY_TASK_ID and "
                          "SLURM_ARRAY_TASK_COUNT), and this process is not an array task: submit it with "
                          "sbatch --array=0-<n-1> (experiments/launch/slurm_sweep_array.sbatch), or give "
                          "sweep.shard=i/n.")
    task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
    low = int(env["SLURM_ARRAY_TASK_MIN"]) if env["SLURM_ARRAY_TASK_MIN"].isdigit() else 0
    step = int(env["SLURM_ARRAY_TASK_STEP"]) if env["SLURM_ARRAY_TASK_STEP"].isdigit() else 1
    index, off = divmod(task - low, max(1, step))
    if off or not 0 <= index < count:
        raise ConfigError(f"sweep.shard=auto: array task {task} is not on the grid min {low} + k * step {step} "
                          f"of a {count}-task array: submit an evenly spaced array such as --array=0-{count - 1}, "
                          "or give sweep.shard=i/n.")
    return f"{index}/{count}"


def shard_cells(cells: list[Cell], shard: str | None) -> list[Cell]:
    """The cells of shard ``"i/n"`` (0-based; ``auto``: from the SLURM job array, see :func:`resolve_shard`), so n
    machines can share one grid without doing a cell twice."""
    shard = resolve_shard(shard)
    if not shard:
        return cells
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError:
        raise ConfigError(f"sweep.shard must look like i/n (e.g. 0/4 for the first of 4 machines) or be auto (from a "
                          f"SLURM job array), got '{shard}'.") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"sweep.shard={shard}: need 0 <= i < n, e.g. 0/4 ... 3/4.")
    return cells[i::n]


def _cell(base, jobs: dict, enc: dict, ds: dict, split: str) -> Cell:
    """One cell's RunConfig: its encoder and dataset, and every job written out in full (items' patches applied)."""
    cfg = copy.deepcopy(base)
    cfg.encoder.name = enc["name"]
    if "weights" in enc:
        cfg.encoder.weights = enc["weights"]
    cfg.data.name = ds["name"]
    cfg.data.split = split
    for key in ("root", "download", "seed", "skip_corrupt"):
        if key in ds:
            cfg.data[key] = ds[key]
    cell_jobs = copy.deepcopy(jobs)
    dirs = choice_dirs(base)
    for source, where in ((enc, f"encoders[{enc['name']}]"), (ds, f"datasets[{ds['name']}]")):
        for label, patch in (source.get("jobs") or {}).items():
            if label not in cell_jobs and patch is not None:
                raise ConfigError(f"{where}.jobs.{label} patches a job the sweep does not run; it runs: "
                                  f"{', '.join(cell_jobs)}.")
            if patch is None:
                cell_jobs.pop(label, None)
                continue
            for node, value in patch.items():
                if node not in cell_jobs[label]:
                    raise ConfigError(f"{where}.jobs.{label}: '{node}' is not a job node; use reducer or clusterer.")
                cell_jobs[label][node] = patched_node(cell_jobs[label][node], value, node, dirs,
                                                      f"{where}.jobs.{label}.{node}")
    cfg.jobs = cell_jobs
    return Cell(enc["name"], display_name(ds["name"]), split, ds.get("group"), cfg)


def display_name(dataset: str) -> str:
    """A registered name as it is; an image folder by its last path component (its full path stays in the params)."""
    return Path(dataset).name if ("/" in dataset or os.sep in dataset) else dataset
