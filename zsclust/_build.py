"""From a resolved config to what a command runs: embed options, dataset, tracker, jobs, pipeline.

The layer between the configs and the commands: ``jobs.py``, ``tune/`` and ``sweep/`` build through
it, and it imports nothing above itself, so no package imports upward.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._paths import reduction_cache_dir
from ._secrets import redact_config
from .config import choice_dirs, find_choice, job_seed, to_container, to_yaml
from .errors import ConfigError, ZsclustError

NODES = ("reducer", "clusterer")


# -- embedding ---------------------------------------------------------------------------------------


def embed_options(cfg):
    """The config's ``embed`` section as :class:`~zsclust.embed.EmbedOptions`."""
    from .embed import EmbedOptions

    return EmbedOptions(**to_container(cfg.embed))


def make_dataset(cfg, encoder):
    """``cfg.data``'s split, preprocessed the way ``encoder`` was trained."""
    from .data import build_transform, create_dataset

    return create_dataset(cfg.data.name, cfg.data.split, root=cfg.data.root,
                          transform=build_transform(encoder.data_config), download=cfg.data.download,
                          seed=cfg.data.seed, skip_corrupt=cfg.data.skip_corrupt)


def make_tracker(cfg):
    """The config's MLflow tracker (None when tracking is off), after closing the runs killed processes left.

    Every command that writes runs starts here (run, cluster, tune, evaluate, sweep), so a RUNNING run
    whose process on this host died is marked KILLED before new work starts.
    """
    if not cfg.tracking.enabled:
        return None
    from .tracking import MLflowTracker

    tracker = MLflowTracker(cfg.tracking.uri, cfg.tracking.experiment)
    closed = tracker.close_orphans()
    if closed:
        print(f"Marked {len(closed)} MLflow run(s) KILLED in experiment '{tracker.experiment_name}': the process "
              "that ran them on this host is gone.", flush=True)
    return tracker


# -- what a run is -----------------------------------------------------------------------------------


def run_identity(cfg) -> dict:
    """What one config embeds and how it scores, from the config alone: half of each job's key.

    A sweep computes it to skip finished jobs before loading anything; ``zsclust run`` tags its runs with
    the same keys, so either command recognises the other's finished work.
    """
    from .embed import resolve_precision

    identity = {"encoder.name": cfg.encoder.name, "encoder.weights": file_digest(cfg.encoder.weights),
                "data.name": cfg.data.name, "data.root": cfg.data.root, "data.split": cfg.data.split,
                "data.seed": cfg.data.seed, "data.skip_corrupt": cfg.data.skip_corrupt,
                "embed.precision": resolve_precision(cfg.embed.precision, cfg.embed.accelerator),
                "embed.preprocessing": cfg.embed.preprocessing, "evaluation": to_container(cfg.evaluation)}
    content = folder_content_digest(cfg)
    if content is not None:  # only when there is one, so the keys of registered datasets stay as they were
        identity["data.content"] = content
    return identity


def folder_content_digest(cfg) -> str | None:
    """An image folder's split by content (the embedding cache's dataset fingerprint: file names, sizes,
    modification times, labels, split); ``None`` for a registered dataset.

    Job keys come from the config before anything is embedded; without this, images replaced in a
    folder would leave the keys unchanged, and a sweep would skip their jobs as finished on the old
    images. It lists and stats the folder's files, nothing is decoded.
    """
    import json
    import os

    from .data import create_dataset, list_datasets

    name = str(cfg.data.name)
    looks_like_path = os.sep in name or name.startswith((".", "~")) or (os.altsep is not None and os.altsep in name)
    if not ((looks_like_path or name not in list_datasets()) and Path(name).expanduser().is_dir()):
        return None
    try:
        dataset = create_dataset(name, cfg.data.split, seed=cfg.data.seed, skip_corrupt=cfg.data.skip_corrupt)
    except (ZsclustError, OSError):  # no such split, no images...: the job fails with it when it runs
        return None
    blob = json.dumps(dataset.fingerprint(), sort_keys=True, default=str).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()[:32]


def run_context(cfg, *, dataset_name: str | None = None, group: str | None = None) -> dict:
    """The params and tags every run of ``cfg`` shares: encoder, dataset, split, precision (and group)."""
    from .embed import resolve_precision

    context = {"encoder.name": cfg.encoder.name, "encoder.weights": cfg.encoder.weights,
               "data.name": dataset_name or cfg.data.name, "data.split": cfg.data.split, "data.seed": cfg.data.seed,
               "embed.precision": resolve_precision(cfg.embed.precision, cfg.embed.accelerator),
               "embed.preprocessing": cfg.embed.preprocessing}
    if group:
        context["data.group"] = group
    return context


def embeddings_context(emb) -> dict:
    """The same context from what an embedding set records about itself (a cache entry, an exported file).

    ``unknown`` only where the set truly has nothing: an ``.npz`` written by other tools.
    """
    meta = emb.meta
    fi, ds, enc = meta.get("fingerprint_inputs") or {}, meta.get("dataset") or {}, meta.get("encoder") or {}
    context = {"encoder.name": enc.get("name") or fi.get("encoder") or "unknown",
               "encoder.weights": enc.get("weights"),
               "encoder.weights_digest": fi.get("weights_digest") or enc.get("weights_digest"),
               "data.name": ds.get("name") or "unknown", "data.split": ds.get("split") or "unknown",
               "embed.precision": fi.get("precision"), "embed.preprocessing": meta.get("preprocessing")}
    if ds.get("group"):
        context["data.group"] = ds["group"]
    if meta.get("source"):
        context["embedding.source"] = meta["source"]
    return {k: v for k, v in context.items() if v is not None}


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | None) -> str | None:
    """A file by its content (sha256, memoised per size and mtime): a checkpoint overwritten in place
    makes new job keys, a copy of the same file elsewhere the same ones."""
    if not path or not Path(path).is_file():
        return path
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _DIGESTS[key] = f"sha256:{h.hexdigest()}"
    return _DIGESTS[key]


# -- jobs --------------------------------------------------------------------------------------------


def expand_jobs(cfg) -> list:
    """The config's jobs: every ``reducer`` choice × every ``clusterer`` choice, patched by ``jobs``,
    then the command-line ``overrides`` of the nodes applied to every job.

    A label is the clusterer choice's (``reducer/clusterer`` when several reducers are crossed); a
    ``jobs`` entry patches the job of that label (``null`` drops it) or adds one.
    """
    from .cluster import JobSpec

    dirs = choice_dirs(cfg)
    choices = {node: _choices(cfg.get(node), node, dirs) for node in NODES}
    jobs: dict[str, dict] = {}
    for r_label, r_node in choices["reducer"] or [("none", {"name": "none"})]:
        for c_label, c_node in choices["clusterer"]:
            label = c_label if len(choices["reducer"]) <= 1 else f"{r_label}/{c_label}"
            jobs[label] = {"reducer": r_node, "clusterer": c_node}
    only_reducer = choices["reducer"][0][1] if len(choices["reducer"]) == 1 else None
    for label, patch in to_container(cfg.get("jobs") or {}).items():
        where = f"jobs.{label}"
        if patch is None:
            jobs.pop(label, None)
            continue
        if not isinstance(patch, Mapping) or not set(patch) <= set(NODES):
            raise ConfigError(f"{where} must map reducer and/or clusterer to a node, a choice name or a patch, "
                              f"got {patch!r}.")
        job = jobs.get(label, {"reducer": only_reducer, "clusterer": None})
        for node in NODES:
            if node in patch:
                job[node] = patched_node(job[node], patch[node], node, dirs, f"{where}.{node}")
        jobs[label] = job
    overrides = to_container(cfg.get("overrides") or {})
    out = []
    for label, job in jobs.items():
        for node in NODES:
            if job[node] is None:
                raise ConfigError(f"Job '{label}' has no {node}: give jobs.{label}.{node} (a node or a choice name).")
            extra = overrides.get(node) or {}
            if "name" in extra:
                job[node] = dict(extra)
                continue
            for key in extra:
                _check_applies(node, job[node], key, label)
            job[node] = {**job[node], **extra}
        out.append(JobSpec(label, job["reducer"], job["clusterer"]))
    if not out:
        raise ConfigError("No jobs: name a clusterer (clusterer: kmeans, or a list of choices).")
    return out


def _check_applies(node: str, spec: dict, key: str, label: str) -> None:
    """A command-line ``clusterer.<key>`` must be a parameter of every job's clusterer (registered ones checked)."""
    from .cluster import list_clusterers, list_reducers, registered_class
    from .cluster._reducers import _resolve

    name = spec.get("name")
    if node == "clusterer" and name in list_clusterers():
        valid = registered_class(name)._get_param_names()
    elif node == "reducer" and name in list_reducers():
        valid = _resolve(name)[0]._get_param_names()
    else:
        return
    if key not in valid:
        raise ConfigError(f"{node}.{key} (on the command line) does not apply to job '{label}': {name} has no "
                          f"parameter '{key}'. Set it for one job with jobs.<label>.{node}.{key}=..., or pick the "
                          f"jobs it applies to with {node}=[...].")


def _choice(value, group: str, dirs, where: str) -> tuple[str, dict]:
    if isinstance(value, str):
        return value, find_choice(group, value, dirs)[0]
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return value["name"], dict(value)
    raise ConfigError(f"{where} must be a {group} node {{name: ..., params}} or the name of a choice in "
                      f"{group}/, got {value!r}.")


def _choices(value, group: str, dirs) -> list[tuple[str, dict]]:
    value = to_container(value)
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = [_choice(v, group, dirs, group) for v in items]
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{group} lists the same name twice ({labels}): give each variant its own label under "
                          f"jobs, e.g. jobs: {{km10: {{{group}: {{name: kmeans, n_init: 10}}}}}}.")
    return out


def patched_node(base: dict | None, patch, group: str, dirs, where: str) -> dict:
    """A choice name or a node with another ``name`` replaces ``base``; a node without one (or with the same)
    merges into it."""
    if isinstance(patch, str) or (isinstance(patch, Mapping) and patch.get("name") not in (None, (base or {}).get("name"))):
        return _choice(patch, group, dirs, where)[1]
    if not isinstance(patch, Mapping):
        raise ConfigError(f"{where} must be a node, a choice name or a patch of the job's {group}, got {patch!r}.")
    if base is None:
        raise ConfigError(f"{where} patches a {group} the job does not have: give a whole node with a name.")
    return {**base, **patch}


def job_config_text(cfg, context: Mapping):
    """``job → YAML``: the run config that reruns exactly that job on the same data (its nodes in place of
    the choices, the encoder and dataset the embeddings came from)."""
    import dataclasses

    from .config import RunConfig

    keys = {f.name for f in dataclasses.fields(RunConfig)}
    # tracking.uri may hold a database password: the artifact keeps the URL without it
    base = redact_config({k: v for k, v in to_container(cfg).items() if k in keys})
    base["encoder"] = {**(base.get("encoder") or {}), "name": context.get("encoder.name"),
                       "weights": context.get("encoder.weights")}
    base["data"] = {**(base.get("data") or {}), "name": context.get("data.name"), "split": context.get("data.split")}

    def text(job) -> str:
        return to_yaml(dict(base, reducer=dict(job.reducer), clusterer=dict(job.clusterer), jobs={}, overrides={}))

    return text


def make_pipeline(cfg, context: dict, *, tracker=None, identity: dict | None = None, jobs=None):
    from .cluster import ClusteringPipeline, ReductionCache, Scoring

    return ClusteringPipeline(
        expand_jobs(cfg) if jobs is None else jobs, seed=job_seed(cfg, context.get("data.split")),
        reduction_cache=ReductionCache(reduction_cache_dir(cfg)), tracker=tracker, context=context,
        scoring=Scoring.from_config(cfg.evaluation), plots=cfg.tracking.plots, job_config=job_config_text(cfg, context),
        identity=identity,
    )


def describe_jobs(jobs) -> str:
    """One line per job (for ``--print-config``): label, reducer node, clusterer node."""
    width = max(len(j.label) for j in jobs)
    return "\n".join(f"  {j.label:<{width}}  reducer: {_inline(j.reducer)}  clusterer: {_inline(j.clusterer)}"
                     for j in jobs)


def _inline(node: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in node.items()) + "}"
