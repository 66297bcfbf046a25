"""The ``zsclust tune`` config: validation sets, a search space, the objective and the study.

Loaded by the same loader as every config (:func:`zsclust.config.load_config`): schema defaults ←
YAML file (``include:`` works) ← ``--embeddings`` ← dotted overrides. The search space is composed
from config groups: ``space.clusterer: agglomerative`` loads ``space/clusterer/agglomerative.yaml``
from the first folder that has it (``study.space_dir``, whose ``reducer/`` and ``clusterer/`` hold
choices; the config's own folder; ``$ZSCLUST_CONFIG_PATH``; the spaces that ship with zsclust). A
mapping given inline is used as is. A list of choices gives one study per reducer × clusterer
family. Overrides below a space node (``space.clusterer.linkage={choices: [ward]}``) apply to each
resolved space, after the choice is loaded.
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from zsclust.config import (EncoderConfig, EvalConfig, TrackingConfig, apply_overrides, load_config, read_yaml,
                            search_path, to_container)
from zsclust.embed._options import EmbedOptions
from zsclust.errors import ConfigError, did_you_mean

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")


@dataclass
class ValidationData:
    """One validation set: its ``val`` split is embedded (or read from ``embeddings``) and scored."""

    name: Optional[str] = None  # registered dataset or image folder; default: the key
    weight: float = 1.0  # share of the objective (the study: ImageNet 2, Imagenette 1, Imagewoof 1)
    root: Optional[str] = None
    download: bool = False
    seed: int = 0  # carves val out of train
    skip_corrupt: bool = False
    embeddings: Optional[str] = None  # precomputed val embeddings (.npz) instead of embedding
    test_embeddings: Optional[str] = None  # precomputed test embeddings, for `zsclust evaluate`
    n_classes: Optional[int] = None  # K for label-free searches when the dataset lists no classes


@dataclass
class ObjectiveConfig:
    # A job metric to maximise, named as in every run: ami | ari | nmi | ... (read the val labels), or
    # silhouette_umap50 (the study's label-free proxy) | silhouette_reduced | silhouette (read none).
    metric: str = "ami"
    report_ami: bool = False  # label-free search: also compute AMI on val, for analysis only


@dataclass
class StudyConfig:
    name: Optional[str] = None  # default: <encoder>/<reducer>/<clusterer>/<metric>
    storage: Optional[str] = None  # default: sqlite:///<mlruns>/optuna.db; any RDB URL for many workers
    n_trials: int = 50  # in total, over every worker sharing the study
    timeout: Optional[float] = None  # seconds, per worker
    workers: int = 1  # processes on this machine sharing the study: this command starts workers - 1 more
    sampler: str = "tpe"
    pruner: str = "median"
    pruner_startup_trials: int = 5
    heartbeat_interval: int = 10  # seconds; a RUNNING trial silent for grace_period is failed and retried
    grace_period: int = 60
    retry_stale: int = 1  # times a trial of a killed worker is retried with the same params
    enqueue: list[Any] = field(default_factory=list)  # configurations to run first: [{dotted key: value}]
    space_dir: Optional[str] = None  # extra folder of space groups (<dir>/<reducer|clusterer>/<name>.yaml)


@dataclass
class EvaluateConfig:
    targets: Optional[list[str]] = None  # datasets whose test split `zsclust evaluate` scores; default: all
    experiment: str = "zsclust-tuned"
    seed: int = 1  # the study's seed for test runs (trials run on val with `seed`, the study's 100)


def _default_datasets() -> dict:
    return {"digits": ValidationData()}


def _default_space() -> dict:
    return {"reducer": "pca", "clusterer": "agglomerative"}


@dataclass
class TuneConfig:
    """Everything ``zsclust tune`` does: embed the val splits once, then one Optuna study per space."""

    REPLACE: ClassVar[tuple[str, ...]] = ("datasets", "space")
    NODES: ClassVar[tuple[str, ...]] = ("space.reducer", "space.clusterer")

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    datasets: dict[str, ValidationData] = field(default_factory=_default_datasets)
    space: dict[str, Any] = field(default_factory=_default_space)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    embed: EmbedOptions = field(default_factory=EmbedOptions)
    seed: int = 100  # the study's seed for validation runs: every trial's jobs (and the sampler's, per worker)
    reduction_cache: Optional[str] = None  # None: <embedding cache>/../reductions
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="zsclust-tune"))
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    overrides: dict[str, Any] = field(default_factory=dict)  # command-line settings inside the space nodes
    search_path: list[str] = field(default_factory=list)


def parse_embeddings(items) -> dict[str, dict]:
    """``NAME=FILE.npz[:WEIGHT]`` → ``{NAME: {embeddings: FILE, weight: WEIGHT}}``."""
    out: dict[str, dict] = {}
    for item in items or ():
        name, sep, rest = str(item).partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"--embeddings takes NAME=FILE.npz[:WEIGHT], got '{item}'.")
        path, weight = rest, 1.0
        head, colon, tail = rest.rpartition(":")
        if colon and head:
            try:
                weight = float(tail)
                path = head
            except ValueError:
                pass
        if not Path(path).is_file():
            raise ConfigError(f"--embeddings {name}: file '{path}' does not exist.")
        out[name] = {"embeddings": str(Path(path).resolve()), "weight": weight}
    return out


def space_dirs(cfg) -> list[tuple[Path, str]]:
    """(folder, subfolder) pairs searched for a space group's choices, first match wins."""
    dirs = [(Path(cfg.study.space_dir).expanduser(), "")] if cfg.study.space_dir else []
    return dirs + [(d, "space") for d in search_path(*(cfg.search_path or []))]


def load_space_group(group: str, name: str, cfg) -> dict:
    """A search space choice (``space/<group>/<name>.yaml``) as a plain dict."""
    pairs = space_dirs(cfg)
    for d, sub in pairs:
        f = d / sub / group / f"{name}.yaml"
        if f.is_file():
            node = to_container(read_yaml(f))
            if not isinstance(node, dict):
                raise ConfigError(f"Search space file '{f}' must hold a mapping ({group} name and parameters).")
            return node
    known = sorted({p.stem for d, sub in pairs if (d / sub / group).is_dir() for p in (d / sub / group).glob("*.yaml")})
    raise ConfigError(f"Unknown {group} search space '{name}'.{did_you_mean(name, known)} Known: "
                      f"{', '.join(known) or '(none)'} (files in {', '.join(str(d / sub / group) for d, sub in pairs)}).")


def _names(node) -> list:
    if isinstance(node, (list, ListConfig)):
        return list(node)
    return [node]


def load_tune_config(path: str | os.PathLike | None = None, overrides=(), embeddings=()) -> list[DictConfig]:
    """One resolved config per study (reducer family × clusterer family), each validated."""
    cfg = load_config(path, (), schema=TuneConfig)
    extra = parse_embeddings(embeddings)
    if extra:  # --embeddings replace the file's validation sets
        cfg.datasets = {}
        cfg = OmegaConf.merge(cfg, {"datasets": extra})
        if not any(o.split("=", 1)[0].strip() == "encoder.name" for o in overrides):
            cfg.encoder.name = "precomputed"  # the file's encoder did not make them
    cfg = apply_overrides(cfg, overrides, TuneConfig)
    patches = to_container(cfg.overrides).get("space") or {}
    reducers = _names(cfg.space.get("reducer", "none"))
    clusterers = _names(cfg.space.get("clusterer"))
    if clusterers == [None]:
        raise ConfigError("space.clusterer is missing: name a clusterer space, e.g. space.clusterer=hdbscan.")
    many = len(reducers) * len(clusterers) > 1
    out = []
    for r, c in itertools.product(reducers, clusterers):
        one = copy.deepcopy(cfg)
        space = {}
        for group, node in (("reducer", r), ("clusterer", c)):
            node = load_space_group(group, node, cfg) if isinstance(node, str) else to_container(node)
            if patches.get(group):
                node = to_container(OmegaConf.merge(node, patches[group]))
            space[group] = node
        one.space = space
        one.overrides = {}
        labels = (_label(r, one.space.reducer), _label(c, one.space.clusterer))
        if one.study.name is None:
            one.study.name = f"{one.encoder.name}/{labels[0]}/{labels[1]}/{one.objective.metric}"
        elif many:
            one.study.name = f"{one.study.name}/{labels[0]}/{labels[1]}"
        validate(one)
        out.append(one)
    return out


def _label(group_choice, node) -> str:
    if isinstance(group_choice, str):
        return group_choice
    return str((node or {}).get("name", "custom"))


def objective_metrics() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(metrics that read labels, label-free metrics) a study may maximise: job metric names."""
    from zsclust.cluster import LABEL_METRICS, SILHOUETTE_KEYS

    label = tuple(LABEL_METRICS) + tuple(f"{m}_clustered" for m in LABEL_METRICS)
    return label, tuple(SILHOUETTE_KEYS.values()) + ("calinski_harabasz",)


def validate(cfg: DictConfig) -> None:
    """Checks that need no data: names, ranges, a metric that matches the labels it may read."""
    o, s = cfg.objective, cfg.study
    label, free = objective_metrics()
    if o.metric not in label + free:
        hint = (" The label-free proxy is silhouette_umap50 (objective.silhouette_space is gone: the space is "
                "part of the metric's name)." if o.metric.startswith("silhouette") else "")
        raise ConfigError(f"objective.metric must be a job metric to maximise: {', '.join(label + free)}; got "
                          f"'{o.metric}'.{did_you_mean(o.metric, label + free)}{hint}")
    if s.sampler not in SAMPLERS:
        raise ConfigError(f"study.sampler must be one of {', '.join(SAMPLERS)}, got '{s.sampler}'.")
    if s.pruner not in PRUNERS:
        raise ConfigError(f"study.pruner must be one of {', '.join(PRUNERS)}, got '{s.pruner}'.")
    if s.n_trials < 1:
        raise ConfigError(f"study.n_trials must be at least 1, got {s.n_trials}.")
    if s.workers < 1:
        raise ConfigError(f"study.workers (processes on this machine sharing the study) must be at least 1, got "
                          f"{s.workers}.")
    if s.heartbeat_interval < 1 or s.grace_period <= s.heartbeat_interval:
        raise ConfigError(f"study.grace_period ({s.grace_period}) must exceed study.heartbeat_interval "
                          f"({s.heartbeat_interval}), which must be at least 1 second.")
    if not cfg.datasets:
        raise ConfigError("No validation datasets: list them under 'datasets', e.g. datasets: {digits: {weight: 1}}.")
    for key, d in cfg.datasets.items():
        if d.weight is None or d.weight <= 0:
            raise ConfigError(f"datasets.{key}.weight must be positive, got {d.weight}.")
