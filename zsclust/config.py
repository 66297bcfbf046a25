"""Configs: typed schemas with defaults, YAML files that override them, and ``key=value`` overrides.

One loader serves every command (:func:`load_config`): schema defaults ← an optional base (e.g. a
study's stored config) ← a YAML file (after the files its ``include:`` lists) ← overrides. A dotted
key names a setting everywhere: ``clusterer.linkage`` is the YAML path of a job's setting, the
command-line override, the Optuna parameter and the MLflow param. A key the schema does not know is
an error that names it.

Two kinds of keys get special treatment, declared on each schema:

``REPLACE``
    A file's value replaces the default (or an included file's) instead of merging into it: a run
    that lists its own validation sets means exactly those.
``NODES``
    Estimator nodes (``reducer``, ``clusterer``; ``space.clusterer`` for tuning). They may name a
    choice from a config group (``clusterer: kmeans`` → ``clusterer/kmeans.yaml``) or a list of
    choices, so a deeper override (``clusterer.n_init=10``) cannot merge into the file's value: it is
    kept under ``overrides.<node>`` and applied to every resolved node, last.

Configs that ship with zsclust (the quickstart, the study, the search spaces) live in the package
(``zsclust/configs``; ``experiments/`` in a source checkout points there) and are found by name
from any directory: ``zsclust sweep study/offline``. ``$ZSCLUST_CONFIG_PATH`` (folders separated by
``:``) adds folders searched first, for configs and for group choices.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .embed._options import EmbedOptions
from .errors import ConfigError, did_you_mean

CONFIG_PATH_ENV = "ZSCLUST_CONFIG_PATH"
K_KNOWN = "K"
"""``n_clusters: K``: the number of classes of each dataset split (the study's K-known setting)."""


# -- schemas -----------------------------------------------------------------------------------------


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
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else SQLite under ./mlruns
    experiment: str = "zsclust"
    plots: bool = True


@dataclass
class EvalConfig:
    """What every clustering job scores, whichever command runs it."""

    silhouette_spaces: list[str] = field(default_factory=lambda: ["raw", "reduced", "umap50"])
    silhouette_sample_size: int = 10_000
    noise: str = "label"  # HDBSCAN's noise in label-free scores: one more label (the study) | exclude
    umap_seed: int = 42  # the label-free UMAP-50 space's own seed (the study's), independent of the job's


STUDY_SEEDS = {"val": 100, "other": 1}
"""The study's seeds: 100 for runs on validation splits (tuning), 1 for runs on test splits."""


def job_seed(cfg, split: str | None = None) -> int:
    """``cfg.seed``, else the study's seed for the split the jobs run on."""
    if cfg.get("seed") is not None:
        return int(cfg.seed)
    split = split or cfg.data.split
    return STUDY_SEEDS["val"] if split == "val" else STUDY_SEEDS["other"]


def _default_clusterers() -> list:
    return ["ac_k", "kmeans", "hdbscan"]


@dataclass
class RunConfig:
    """``zsclust run``: embed one dataset split with one encoder, then run every job on it.

    The jobs are every ``reducer`` choice × every ``clusterer`` choice (a node, a choice name from
    the ``reducer/`` and ``clusterer/`` config groups, or a list of those), patched by ``jobs``
    (label → ``{reducer: ..., clusterer: ...}``; a new label adds a job).
    """

    REPLACE: ClassVar[tuple[str, ...]] = ()
    NODES: ClassVar[tuple[str, ...]] = ("reducer", "clusterer")

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    embed: EmbedOptions = field(default_factory=EmbedOptions)
    reducer: Any = "umap50"
    clusterer: Any = field(default_factory=_default_clusterers)
    jobs: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # command-line settings of every job's nodes
    search_path: list[str] = field(default_factory=list)  # folders with reducer/ and clusterer/ choices
    seed: Optional[int] = None  # None: the study's, 100 for a val split and 1 for any other (see job_seed)
    reduction_cache: Optional[str] = None  # None: <embedding cache>/../reductions
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)


# -- where configs live ------------------------------------------------------------------------------


def packaged_configs() -> Path:
    """The configs that ship inside the package (``zsclust/configs``)."""
    return Path(str(resources.files("zsclust").joinpath("configs")))


def search_path(*first: str | os.PathLike | None) -> list[Path]:
    """Folders searched for configs and group choices: ``first``, ``$ZSCLUST_CONFIG_PATH``, the package's."""
    dirs = [Path(d).expanduser() for d in first if d]
    dirs += [Path(d).expanduser() for d in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if d]
    dirs.append(packaged_configs())
    return list(dict.fromkeys(dirs))


def find_config(name: str | os.PathLike) -> Path:
    """A config file: an existing path, else ``name`` (``.yaml`` optional) in the search path."""
    p = Path(name)
    if p.is_file():
        return p
    if not p.is_absolute():
        for root in search_path():
            for candidate in (root / p, root / f"{p}.yaml"):
                if candidate.is_file():
                    return candidate
    shipped = sorted(str(f.relative_to(packaged_configs()).with_suffix(""))
                     for f in packaged_configs().rglob("*.yaml")
                     if f.parent.name not in ("reducer", "clusterer"))
    raise ConfigError(f"Config file '{p}' does not exist.{did_you_mean(str(p), shipped)} Configs that ship with "
                      f"zsclust (usable by name from any folder): {', '.join(shipped)}.")


def find_choice(group: str, name: str, dirs: list[Path]) -> tuple[dict, Path]:
    """Group choice ``<dir>/<group>/<name>.yaml`` from the first folder that has it, as a plain dict."""
    for d in dirs:
        f = d / group / f"{name}.yaml"
        if f.is_file():
            node = to_container(read_yaml(f))
            return node, f
    known = sorted({p.stem for d in dirs if (d / group).is_dir() for p in (d / group).glob("*.yaml")})
    raise ConfigError(f"Unknown {group.replace('/', ' ')} choice '{name}'.{did_you_mean(name, known)} Known: "
                      f"{', '.join(known) or '(none)'} (files in {', '.join(str(d / group) for d in dirs)}).")


# -- loading -----------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike | None = None, overrides=(), schema: type = RunConfig, *,
                base: dict | DictConfig | None = None) -> DictConfig:
    """Schema defaults ← ``base`` ← YAML file (after its ``include:``) ← ``key=value`` overrides.

    ``path`` may be a file or the name of a config that ships with zsclust. The file's folder goes
    first into ``search_path`` (where schemas have one), so group choices next to it are found.
    """
    replace = tuple(getattr(schema, "REPLACE", ()))
    layers = [OmegaConf.structured(schema)]
    if base is not None:
        layers.append(OmegaConf.create(to_container(base) if isinstance(base, DictConfig) else base))
    file = find_config(path) if path is not None else None
    if file is not None:
        layers.append(read_yaml(file, replace=replace))
    where = f" in {file}" if file else ""
    try:
        cfg = layers[0]
        for layer in layers[1:]:
            cfg = merge_config(cfg, layer, replace)
    except ConfigKeyError as e:
        raise ConfigError(f"Unknown config key '{_key_of(e)}'{where}. {_valid_keys_hint(_key_of(e), schema)}") from None
    except (OmegaConfBaseException, TypeError) as e:
        raise ConfigError(f"Invalid config value{where}: {getattr(e, 'msg', e)}") from None
    cfg = apply_overrides(cfg, overrides, schema)
    if file is not None and "search_path" in cfg:
        here = str(file.resolve().parent)
        cfg.search_path = [*cfg.search_path, *([here] if here not in cfg.search_path else [])]
    return cfg


def choice_dirs(cfg) -> list[Path]:
    """Where ``cfg``'s group choices are looked up: its ``search_path``, then the usual search path."""
    return search_path(*(cfg.get("search_path") or []))


def apply_overrides(cfg: DictConfig, overrides, schema: type = RunConfig) -> DictConfig:
    """Merge ``key=value`` overrides (command-line syntax) into ``cfg``; errors say "on the command line".

    A whole list or mapping given for a top-level key (``datasets=[cifar10,dtd]``) replaces it; a
    dotted key merges into it. An override below a node key goes to ``overrides.<node>``.
    """
    overrides = list(overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"Override '{bad[0]}' must look like key=value, e.g. clusterer.n_init=10.")
    nodes = tuple(getattr(schema, "NODES", ()))
    plain, deferred = [], []
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        node = next((n for n in sorted(nodes, key=len, reverse=True) if key.startswith(n + ".")), None)
        (deferred if node else plain).append(f"overrides.{o.strip()}" if node else o)
    try:
        dotlist = OmegaConf.from_dotlist(plain + deferred)
    except OmegaConfBaseException as e:
        raise ConfigError(f"Cannot read the command-line overrides: {getattr(e, 'msg', e)}") from None
    whole = {k for k in dotlist if isinstance(dotlist[k], (DictConfig, ListConfig))
             and any(o.split("=", 1)[0].strip() == k for o in plain) and not _is_section(schema, k)}
    try:
        cfg = copy.deepcopy(cfg)
        for key in whole:
            if key not in cfg:
                raise ConfigKeyError(f"Key '{key}' is not in struct")
            cfg[key] = dotlist.pop(key)
        cfg = OmegaConf.merge(cfg, dotlist)
    except ConfigKeyError as e:
        raise ConfigError(f"Unknown config key '{_key_of(e)}' on the command line. "
                          f"{_valid_keys_hint(_key_of(e), schema)}") from None
    except (OmegaConfBaseException, TypeError) as e:
        raise ConfigError(f"Invalid value on the command line: {getattr(e, 'msg', e)} (a list where a mapping is "
                          "expected, or the other way round? give the whole value, e.g. 'datasets=[cifar10,dtd]').") from None
    return cfg


def read_yaml(path: str | os.PathLike, _seen: tuple = (), replace: tuple = ()) -> DictConfig:
    """One YAML file, merged over the files its top-level ``include:`` names (paths relative to it).

    Lets an experiment reuse shared pieces (the study's encoders, datasets, clusterers) and override
    only what differs; later files and the including file win. ``replace`` keys, and a key whose
    type differs from the included one (a list where a mapping was), are replaced, not merged.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file '{p}' does not exist.")
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
    parts = [read_yaml(_include_path(p, str(inc)), _seen + (p.resolve(),), replace) for inc in includes]
    if not parts:
        return node
    try:
        merged = parts[0]
        for part in parts[1:] + [node]:
            merged = merge_config(merged, part, replace)
        return merged
    except (OmegaConfBaseException, TypeError) as e:
        raise ConfigError(f"Config file '{p}' does not merge with what it includes: {e}") from None


def _include_path(including: Path, name: str) -> Path:
    """An include relative to the including file, else a config that ships with zsclust."""
    local = including.parent / name
    return local if local.is_file() else find_config(name)


def merge_config(cfg, layer, replace: tuple = ()):
    """``OmegaConf.merge``, except that ``replace`` keys and keys that change shape (a mapping where a list
    was) take ``layer``'s value."""
    swap = {}
    for key in list(layer.keys()):
        if key in cfg and (key in replace or _shape(layer[key]) != _shape(cfg[key])):
            swap[key] = layer[key]
    merged = OmegaConf.merge(cfg, {k: v for k, v in layer.items() if k not in swap}) if len(swap) < len(layer) else cfg
    for key, value in swap.items():
        merged[key] = value
    return merged


def _shape(value) -> str:
    return "list" if isinstance(value, (ListConfig, list)) else "map" if isinstance(value, (DictConfig, dict)) else "leaf"


def _key_of(e: ConfigKeyError) -> str:
    key = e.full_key or e.key
    if not key:
        text = str(e)
        key = text.split("'")[1] if "'" in text else text
    return str(key)


def _is_section(schema: type, key: str) -> bool:
    """A typed block of the schema (``tracking``, ``embed``, ...): overrides merge into it, never replace it."""
    return dataclasses.is_dataclass(typing.get_type_hints(schema).get(key))


def _valid_keys_hint(full_key: str, schema: type = RunConfig) -> str:
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    node = OmegaConf.structured(schema)
    try:
        sub = OmegaConf.select(node, parent) if parent else node
        names = list(sub.keys()) if isinstance(sub, DictConfig) else []
    except Exception:
        names = []
    leaf = full_key.rsplit(".", 1)[-1]
    return (did_you_mean(leaf, names) + f" Valid keys{' under ' + parent if parent else ''}: {', '.join(names)}.").strip()


# -- output ------------------------------------------------------------------------------------------


def to_container(cfg) -> Any:
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return copy.deepcopy(cfg)


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(cfg if isinstance(cfg, (DictConfig, ListConfig)) else OmegaConf.create(cfg), resolve=True)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists index their items (``reducer.steps.0.name``)."""
    out: dict[str, Any] = {}
    items = d.items() if isinstance(d, dict) else enumerate(d)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list)) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
