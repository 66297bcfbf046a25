"""The ``zsclust tune`` config: validation sets, a search space, the objective and the study.

Schema defaults ← YAML file ← ``--embeddings`` ← dotted overrides, as for ``zsclust run``. The
search space is composed from config groups: ``space.clusterer: agglomerative`` loads
``experiments/tune/space/clusterer/agglomerative.yaml`` into ``space.clusterer`` (a mapping given
inline is used as is). A list of group names gives one study per reducer × clusterer family.
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from zsclust.config import EmbedConfig, EncoderConfig, EvalConfig, TrackingConfig
from zsclust.errors import ConfigError, did_you_mean

REPO_SPACE_DIR = Path(__file__).resolve().parents[2] / "experiments" / "tune" / "space"
METRICS = ("ami", "ari", "nmi", "silhouette")
SILHOUETTE_SPACES = ("umap50", "reduced", "raw", "none")
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
    metric: str = "ami"  # ami | ari | nmi (val labels) | silhouette (label-free)
    silhouette_space: str = "umap50"  # the study's UMAP-50 space; reduced | raw | none
    report_ami: bool = False  # label-free search: also compute AMI on val, for analysis only


@dataclass
class StudyConfig:
    name: Optional[str] = None  # default: <encoder>/<reducer>/<clusterer>/<metric>
    storage: Optional[str] = None  # default: sqlite:///<mlruns>/optuna.db; any RDB URL for many workers
    n_trials: int = 50  # in total, over every worker sharing the study
    timeout: Optional[float] = None  # seconds, per worker
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


def _default_datasets() -> dict:
    return {"digits": ValidationData()}


def _default_space() -> dict:
    return {"reducer": "pca", "clusterer": "agglomerative"}


@dataclass
class TuneConfig:
    """Everything ``zsclust tune`` does: embed the val splits once, then one Optuna study per space."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    datasets: dict[str, ValidationData] = field(default_factory=_default_datasets)
    space: dict[str, Any] = field(default_factory=_default_space)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    seed: int = 0
    reduction_cache: Optional[str] = None  # None: <embedding cache>/../reductions
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="zsclust-tune"))
    evaluation: EvalConfig = field(default_factory=EvalConfig)


REPLACED = ("datasets", "space")  # a file that lists these means exactly those, not those plus the defaults


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


def _merge(layers, path=None, replace=True):
    """Merge config layers; with ``replace`` a layer's ``datasets``/``space`` replace the earlier ones."""
    try:
        cfg = layers[0]
        for layer in layers[1:]:
            replaced = {k: layer[k] for k in REPLACED if k in layer} if replace else {}
            cfg = OmegaConf.merge(cfg, layer)
            for key, value in replaced.items():
                cfg[key] = value
        return cfg
    except ConfigKeyError as e:
        key = str(e.full_key or e.key)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.structured(TuneConfig)
        sub = OmegaConf.select(node, parent) if parent else node
        names = list(sub.keys()) if isinstance(sub, DictConfig) else []
        raise ConfigError(f"Unknown config key '{key}'{f' in {path}' if path else ''}."
                          f"{did_you_mean(key.rsplit('.', 1)[-1], names)} Valid keys"
                          f"{' under ' + parent if parent else ''}: {', '.join(names)}.") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"Invalid tune config value{f' in {path}' if path else ''}: {getattr(e, 'msg', e)}") from None


def _space_dirs(cfg, path) -> list[Path]:
    dirs = []
    if cfg.study.space_dir:
        dirs.append(Path(cfg.study.space_dir).expanduser())
    if path is not None:
        dirs.append(Path(path).resolve().parent / "space")
    dirs.append(REPO_SPACE_DIR)
    return dirs


def load_space_group(group: str, name: str, dirs: list[Path]) -> dict:
    """``experiments/tune/space/<group>/<name>.yaml`` (first folder that has it) as a plain dict."""
    for d in dirs:
        f = d / group / f"{name}.yaml"
        if f.is_file():
            try:
                node = OmegaConf.to_container(OmegaConf.load(f), resolve=True)
            except Exception as e:
                raise ConfigError(f"Search space file '{f}' is not valid YAML: {e}") from None
            if not isinstance(node, dict):
                raise ConfigError(f"Search space file '{f}' must hold a mapping ({group} name and parameters).")
            return node
    known = sorted({p.stem for d in dirs if (d / group).is_dir() for p in (d / group).glob("*.yaml")})
    raise ConfigError(f"Unknown {group} search space '{name}'.{did_you_mean(name, known)} Known: "
                      f"{', '.join(known) or '(none)'} (files in {', '.join(str(d / group) for d in dirs)}).")


def _names(node) -> list:
    if isinstance(node, (list, ListConfig)):
        return list(node)
    return [node]


def load_tune_config(path: str | os.PathLike | None = None, overrides=(), embeddings=()) -> list[DictConfig]:
    """One resolved config per study (reducer family × clusterer family), each validated."""
    layers = [OmegaConf.structured(TuneConfig)]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Config file '{p}' does not exist. Tune configs live in experiments/tune/, "
                              "e.g. experiments/tune/default.yaml.")
        try:
            layers.append(OmegaConf.load(p))
        except Exception as e:
            raise ConfigError(f"Config file '{p}' is not valid YAML: {e}") from None
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"Override '{bad[0]}' must look like key=value, e.g. study.n_trials=20.")
    extra = parse_embeddings(embeddings)
    if extra:
        emb_layer = {"datasets": extra}
        if not any(o.startswith("encoder.name=") for o in overrides):  # the file's encoder did not make them
            emb_layer["encoder"] = {"name": "precomputed"}
        layers.append(OmegaConf.create(emb_layer))
    group_keys = ("space.reducer", "space.clusterer")
    firsts = [o for o in overrides if o.split("=", 1)[0] in group_keys]
    rest = [o for o in overrides if o.split("=", 1)[0] not in group_keys]
    base = _merge(layers, path)
    for o in firsts:  # whole-group choices first, so later overrides can reach inside the group
        key, value = o.split("=", 1)
        base.space[key.split(".")[1]] = OmegaConf.from_dotlist([f"v={value}"]).v
    dirs = _space_dirs(base, path)
    reducers = _names(base.space.get("reducer", "none"))
    clusterers = _names(base.space.get("clusterer"))
    if clusterers == [None]:
        raise ConfigError("space.clusterer is missing: name a clusterer space, e.g. space.clusterer=hdbscan.")
    many = len(reducers) * len(clusterers) > 1
    out = []
    for r, c in itertools.product(reducers, clusterers):
        cfg = copy.deepcopy(base)
        space = {}
        for group, node in (("reducer", r), ("clusterer", c)):
            space[group] = load_space_group(group, node, dirs) if isinstance(node, str) else (
                OmegaConf.to_container(node) if isinstance(node, (DictConfig, dict)) else node)
        cfg.space = space
        cfg = _merge([cfg, OmegaConf.from_dotlist(rest)], path, replace=False)
        labels = (_label(r, cfg.space.reducer), _label(c, cfg.space.clusterer))
        if cfg.study.name is None:
            cfg.study.name = f"{cfg.encoder.name}/{labels[0]}/{labels[1]}/{cfg.objective.metric}"
        elif many:
            cfg.study.name = f"{cfg.study.name}/{labels[0]}/{labels[1]}"
        validate(cfg)
        out.append(cfg)
    return out


def _label(group_choice, node) -> str:
    if isinstance(group_choice, str):
        return group_choice
    return str((node or {}).get("name", "custom"))


def validate(cfg: DictConfig) -> None:
    """Checks that need no data: names, ranges, a metric that matches the labels it may read."""
    o, s = cfg.objective, cfg.study
    if o.metric not in METRICS:
        raise ConfigError(f"objective.metric must be one of {', '.join(METRICS)}, got '{o.metric}'."
                          f"{did_you_mean(o.metric, METRICS)}")
    if o.silhouette_space not in SILHOUETTE_SPACES:
        raise ConfigError(f"objective.silhouette_space must be one of {', '.join(SILHOUETTE_SPACES)}, got "
                          f"'{o.silhouette_space}'.")
    if o.metric == "silhouette" and o.silhouette_space == "none":
        raise ConfigError("objective.metric=silhouette needs a silhouette space: set objective.silhouette_space "
                          "to umap50 (the study's), reduced or raw.")
    if s.sampler not in SAMPLERS:
        raise ConfigError(f"study.sampler must be one of {', '.join(SAMPLERS)}, got '{s.sampler}'.")
    if s.pruner not in PRUNERS:
        raise ConfigError(f"study.pruner must be one of {', '.join(PRUNERS)}, got '{s.pruner}'.")
    if s.n_trials < 1:
        raise ConfigError(f"study.n_trials must be at least 1, got {s.n_trials}.")
    if s.heartbeat_interval < 1 or s.grace_period <= s.heartbeat_interval:
        raise ConfigError(f"study.grace_period ({s.grace_period}) must exceed study.heartbeat_interval "
                          f"({s.heartbeat_interval}), which must be at least 1 second.")
    if not cfg.datasets:
        raise ConfigError("No validation datasets: list them under 'datasets', e.g. datasets: {digits: {weight: 1}}.")
    for key, d in cfg.datasets.items():
        if d.weight is None or d.weight <= 0:
            raise ConfigError(f"datasets.{key}.weight must be positive, got {d.weight}.")
