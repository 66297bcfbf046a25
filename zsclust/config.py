"""Run configuration: a typed schema with the defaults, YAML files that override it, and dotted overrides.

One dotted key names a setting everywhere: ``clusterers.kmeans.n_init`` is the YAML path, the
command-line override and (under ``clusterer.``) the MLflow param. A key the schema does not know
is an error that names it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .errors import ConfigError

STUDY_UMAP = {"name": "umap", "n_components": 50, "n_neighbors": 30, "min_dist": 0.0}


@dataclass
class EncoderConfig:
    name: str = "tf_efficientnet_lite0.pypi_in1k"
    weights: Optional[str] = None


@dataclass
class DataConfig:
    name: str = "digits"
    split: str = "test"
    root: Optional[str] = None
    download: bool = False
    seed: int = 0
    skip_corrupt: bool = False


@dataclass
class EmbedConfig:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    batch_size: Optional[int] = None
    num_workers: Optional[int] = None
    shard_size: int = 4096
    cache_dir: Optional[str] = None
    progress: bool = True


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else SQLite under ./mlruns
    experiment: str = "zsclust"
    plots: bool = True


@dataclass
class EvalConfig:
    silhouette_sample_size: int = 10_000
    umap_silhouette: bool = True  # the study's label-free proxy: silhouette in a UMAP-50 space


def _default_reducers() -> dict:
    return {"umap50": [dict(STUDY_UMAP)]}


def _default_clusterers() -> dict:
    # n_clusters: null means "the number of classes in the labels" (the study's K-known setting).
    return {
        "kmeans": {"name": "kmeans", "n_clusters": None},
        "ac_ward": {"name": "agglomerative", "n_clusters": None, "linkage": "ward"},
        "hdbscan": {"name": "hdbscan", "min_cluster_size": 5},
    }


@dataclass
class RunConfig:
    """Everything ``zsclust run`` does: embed one dataset split with one encoder, then reducers × clusterers."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    reducers: dict[str, Any] = field(default_factory=_default_reducers)
    clusterers: dict[str, Any] = field(default_factory=_default_clusterers)
    seed: int = 0
    reduction_cache: Optional[str] = None  # None: <embedding cache>/../reductions
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (),
                schema: type = RunConfig) -> DictConfig:
    """Schema defaults ← YAML file (after the files its ``include:`` lists) ← ``key=value`` overrides."""
    layers = [OmegaConf.structured(schema)]
    file_layer = read_yaml(path) if path is not None else None
    if file_layer is not None:
        layers.append(file_layer)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"Override '{bad[0]}' must look like key=value, e.g. clusterers.kmeans.n_init=10.")
    # A whole list or mapping given for a top-level key (`datasets=[cifar10,dtd]`) replaces it: a subset
    # of the grid, not the grid plus these; a dotted key (`clusterers.kmeans.n_init=3`) merges into it.
    dotlist = OmegaConf.from_dotlist(list(overrides))
    whole = {k for k in dotlist if isinstance(dotlist[k], (DictConfig, ListConfig))
             and any(o.split("=", 1)[0].strip() == k for o in overrides) and not _is_section(schema, k)}
    try:
        cfg = OmegaConf.merge(*layers)
        # A file that lists its own reducers/clusterers means exactly those, not those plus the
        # defaults; command-line overrides still merge into them key by key.
        if file_layer is not None:
            for key in ("reducers", "clusterers"):
                if key in file_layer:
                    cfg[key] = file_layer[key]
        for key in whole:
            if key not in cfg:
                raise ConfigKeyError(f"Key '{key}' is not in struct")
            cfg[key] = dotlist.pop(key)
        cfg = OmegaConf.merge(cfg, dotlist)
    except ConfigKeyError as e:
        key = e.full_key or e.key or str(e).split("'")[1]
        raise ConfigError(f"Unknown config key '{key}'{_where(path)}. {_valid_keys_hint(str(key), schema)}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"Invalid config value{_where(path)}: {e.msg if hasattr(e, 'msg') else e}") from None
    except TypeError as e:  # a list where the config has a mapping, or the other way round
        raise ConfigError(f"Invalid config value{_where(path)}: {e} (a list where a mapping is expected, "
                          "or the other way round); give the whole value, e.g. 'datasets=[cifar10,dtd]'.") from None
    return cfg


def read_yaml(path: str | os.PathLike, _seen: tuple = ()) -> DictConfig:
    """One YAML file, merged over the files its top-level ``include:`` names (paths relative to it).

    Lets an experiment reuse shared pieces (the study's encoders, datasets, clusterers) and override
    only what differs; later files and the including file win.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file '{p}' does not exist. Configs live in experiments/, e.g. experiments/quickstart.yaml.")
    if p.resolve() in _seen:
        raise ConfigError(f"Config file '{p}' includes itself (through {' -> '.join(str(s) for s in _seen)}).")
    try:
        node = OmegaConf.load(p)
    except Exception as e:  # yaml errors
        raise ConfigError(f"Config file '{p}' is not valid YAML: {e}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"Config file '{p}' must hold a mapping of settings, not a {type(node).__name__}.")
    includes = node.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    parts = [read_yaml(p.parent / str(inc), _seen + (p.resolve(),)) for inc in includes]
    if not parts:
        return node
    try:
        merged = OmegaConf.merge(*parts)
        for key in list(node.keys()):  # a file's own reducers/clusterers, or a list where an include
            if key in merged and (key in ("reducers", "clusterers")  # has a mapping, replace the included
                                  or isinstance(node[key], ListConfig) != isinstance(merged[key], ListConfig)):
                merged.pop(key)
        return OmegaConf.merge(merged, node)
    except (OmegaConfBaseException, TypeError) as e:
        raise ConfigError(f"Config file '{p}' does not merge with what it includes: {e}") from None


def _is_section(schema: type, key: str) -> bool:
    """A typed block of the schema (``tracking``, ``embed``, ...): overrides merge into it, never replace it."""
    import dataclasses
    import typing

    return dataclasses.is_dataclass(typing.get_type_hints(schema).get(key))


def _where(path) -> str:
    return f" in {path}" if path else ""


def _valid_keys_hint(full_key: str, schema: type = RunConfig) -> str:
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    node = OmegaConf.structured(schema)
    try:
        sub = OmegaConf.select(node, parent) if parent else node
        names = list(sub.keys()) if isinstance(sub, DictConfig) else []
    except Exception:
        names = []
    from .errors import did_you_mean

    leaf = full_key.rsplit(".", 1)[-1]
    return (did_you_mean(leaf, names) + f" Valid keys{' under ' + parent if parent else ''}: {', '.join(names)}.").strip()


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists index their items (``reducer.0.name``)."""
    out: dict[str, Any] = {}
    items = d.items() if isinstance(d, dict) else enumerate(d)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list)) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
