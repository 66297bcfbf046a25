"""``create_encoder``: one entry point, resolving names like ``timm.create_model`` does.

Order: 1) a registered zsclust name, 2) any timm model name (``resnet18``, ``convnext_tiny.fb_in1k``),
3) :class:`UnknownEncoderError` with close matches. Weights never fall back silently: a failed
download is an error, and random init happens only when asked for (``pretrained=False`` or a
baseline entry), seeded so its digest is reproducible.
"""

from __future__ import annotations

import contextlib
import os
import sys
import urllib.error
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from ..errors import (
    CheckpointConversionError,
    ConfigError,
    UnknownEncoderError,
    WeightsDownloadError,
    WeightsNotFoundError,
    did_you_mean,
)
from ._encoder import Encoder
from ._helpers import drop_unused_head, load_checkpoint_file, strip_prefix, unwrap
from ._registry import DATA_CONFIG_KEYS, EncoderSpec, get_encoder_spec, is_registered, list_encoders

__all__ = ["create_encoder", "build_architecture", "RANDOM_INIT_SEED"]

RANDOM_INIT_SEED = 0
_OFFLINE_HINT = "On an offline machine, download the file elsewhere and pass --weights FILE."


@contextlib.contextmanager
def _seeded(seed: int = RANDOM_INIT_SEED):
    """Seed the global torch RNG for a model build, then restore it (callers' streams are untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def create_encoder(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    **model_kwargs,
) -> Encoder:
    """Build the encoder ``name`` in eval mode, frozen, with its weights and preprocessing.

    ``weights`` is a local checkpoint in the entry's upstream layout (or timm's), or a folder that
    holds it under the entry's upstream file name; it always wins over downloading.
    ``pretrained=False`` gives the architecture with seeded random weights.
    ``model_kwargs`` go to the architecture (e.g. ``img_size``, ``depth``); preprocessing stays the
    entry's own.
    """
    if is_registered(name):
        return _create_registered(get_encoder_spec(name), weights, pretrained, model_kwargs)
    if _is_timm_name(name):
        return _create_timm(name, weights, pretrained, model_kwargs)
    candidates = dict.fromkeys([*list_encoders(), *timm.list_models(pretrained=True), *timm.list_models()])
    raise UnknownEncoderError(
        f"Unknown encoder '{name}'.{did_you_mean(name, candidates)} "
        "List the registered encoders with `zsclust encoders`; any timm model name "
        "(timm.list_models()) is accepted too."
    )


# ----------------------------------------------------------------------------------------------
# registered entries


def _create_registered(spec: EncoderSpec, weights, pretrained: bool, model_kwargs: dict) -> Encoder:
    # Resolve the weights first: a missing file or a failed download should not wait for a build.
    state = None
    if weights is not None:
        if not spec.has_weights:
            raise ConfigError(f"Encoder '{spec.name}' has no weights; drop --weights.")
        path = _file_in(Path(weights).expanduser(), spec)
        state, source = load_checkpoint_file(path), f"file:{path.resolve()}"
    elif pretrained and spec.pretrained:
        state, source = _fetch(spec)
    else:
        source = f"random-init(seed={RANDOM_INIT_SEED})" if spec.has_weights else "none"

    kwargs = {**spec.arch_kwargs, **model_kwargs}
    with _seeded():
        model = build_architecture(spec, **model_kwargs)
    if state is not None:
        _load_strict(model, state, spec.checkpoint_filter, source=source, name=spec.name,
                     layout=spec.weights_layout or f"'{spec.arch}'")

    data_config = dict(spec.data_config)
    if "img_size" in kwargs:  # the architecture's input size is the one thing kwargs may move
        size = kwargs["img_size"]
        data_config["input_size"] = (3, *((size, size) if isinstance(size, int) else tuple(size)))
    num_features = _output_dim(model)
    if not model_kwargs and num_features != spec.num_features:
        raise ConfigError(
            f"Encoder '{spec.name}' declares num_features={spec.num_features} but its architecture "
            f"'{spec.arch}' outputs {num_features}. Fix the registry entry."
        )
    _sync_timm_cfg(model, data_config)
    info = {"group": spec.group, "paper_name": spec.paper_name}
    if model_kwargs:
        info["model_kwargs"] = dict(model_kwargs)
    return Encoder(
        model,
        name=spec.name,
        arch=spec.arch,
        data_config=data_config,
        num_features=num_features,
        pooling=spec.pooling,
        weights_source=source,
        info=info,
    )


def build_architecture(spec: EncoderSpec, **model_kwargs) -> nn.Module:
    """The entry's architecture, headless unless the entry keeps a projection, with its own init.

    Under ``torch.device("meta")`` this costs no memory: the registry tests check every entry's
    full-size output width that way, ViT-G and RN50x64 included.
    """
    kwargs = {**spec.arch_kwargs, **model_kwargs}
    if spec.model_fn is not None:
        return spec.model_fn(**kwargs)
    return timm.create_model(spec.arch, pretrained=False, **{"num_classes": 0, **kwargs})


def _file_in(path: Path, spec: EncoderSpec) -> Path:
    """``path`` itself, or, for a folder, the entry's checkpoint inside it (by its upstream file name)."""
    if not path.is_dir():
        return path
    if not spec.local_file_name:
        raise WeightsNotFoundError(
            f"'{path}' is a folder, and encoder '{spec.name}' has no upstream file name to look for in it. "
            "Pass the checkpoint file itself as --weights."
        )
    found = path / spec.local_file_name
    if not found.is_file():
        where = f" (download it from {spec.weights_url})" if spec.weights_url else ""
        raise WeightsNotFoundError(
            f"Folder '{path}' has no '{spec.local_file_name}', the checkpoint of encoder '{spec.name}'{where}. "
            "Put it there under that name, or pass the file itself as --weights."
        )
    return found


def _fetch(spec: EncoderSpec) -> tuple[Mapping, str]:
    """Download (or locate) the entry's pretrained checkpoint; any failure is a WeightsDownloadError."""
    if spec.weights_url:
        url = spec.weights_url
        cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
        cached = cache_dir / spec.local_file_name
        if not cached.is_file():
            # The upstream's published sha256 (CLIP's URLs carry it), else torch.hub's rule:
            # 'name-<sha256 prefix>.pth' files (torchvision) are verified by that prefix.
            match = torch.hub.HASH_REGEX.search(os.path.basename(urlparse(url).path))
            hash_prefix = spec.sha256 or (match.group(1) if match else None)
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(url, str(cached), hash_prefix=hash_prefix, progress=True)
            except Exception as e:  # network, HTTP, disk: all mean "no weights"
                raise WeightsDownloadError(
                    f"Could not download weights for '{spec.name}' from {url} ({_reason(e)}). {_OFFLINE_HINT}"
                ) from e
        return load_checkpoint_file(cached), url
    if spec.hf_hub_id:
        url = f"https://huggingface.co/{spec.hf_hub_id}/resolve/main/model.safetensors"
        try:
            from timm.models import load_state_dict_from_hf

            state = load_state_dict_from_hf(spec.hf_hub_id)
        except Exception as e:
            raise WeightsDownloadError(
                f"Could not download weights for '{spec.name}' from {url} ({_reason(e)}). {_OFFLINE_HINT}"
            ) from e
        return state, f"hf-hub:{spec.hf_hub_id}"
    if spec.weights_file is not None:
        path = spec.weights_file()  # raises WeightsNotFoundError with an install hint
        return load_checkpoint_file(path), f"file:{path}"
    raise ConfigError(f"Encoder '{spec.name}' has no pretrained weights source; pass weights= or pretrained=False.")


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and getattr(e, "reason", None) is not None:
        return f"{type(e).__name__}: {e.reason}"
    return f"{type(e).__name__}: {e}"


def _load_strict(model: nn.Module, state: Mapping, filter_fn: Callable | None, *, source: str, name: str,
                 layout: str) -> None:
    """Filter ``state`` into the model's key layout and load it strictly, or explain the mismatch."""
    try:
        sd = filter_fn(state, model) if filter_fn is not None else unwrap(state)
    except CheckpointConversionError:
        raise
    except Exception as e:
        raise CheckpointConversionError(
            f"Checkpoint '{source}' could not be converted for encoder '{name}' ({type(e).__name__}: {e}). "
            f"Expected the {layout} layout."
        ) from e
    target = model.state_dict()
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in target.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes)):
            if keys:
                more = f", ... ({len(keys)} in all)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise CheckpointConversionError(
            f"Checkpoint '{source}' does not fit encoder '{name}': " + "; ".join(parts)
            + f". Expected the {layout} layout."
        )
    model.load_state_dict(sd, strict=True)


# ----------------------------------------------------------------------------------------------
# plain timm names


def _is_timm_name(name: str) -> bool:
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return True
    if not timm.is_model(name):
        return False
    if "." in name:  # arch.tag: the tag must be one timm knows
        try:
            return timm.models.get_pretrained_cfg(name) is not None
        except RuntimeError:
            return False
    return True


def _create_timm(name: str, weights, pretrained: bool, model_kwargs: dict) -> Encoder:
    kwargs = {"num_classes": 0, **model_kwargs}
    if weights is not None:
        path = Path(weights).expanduser()
        state, source = load_checkpoint_file(path), f"file:{path.resolve()}"
        with _seeded():
            model = timm.create_model(name, pretrained=False, **kwargs)
        _load_strict(model, state, _timm_family_filter, source=source, name=name, layout=f"timm '{name}'")
    elif pretrained:
        _check_timm_has_weights(name)
        try:
            with _seeded():
                model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:
            if not _is_download_error(e):
                raise
            where = "the timm hub"
            with contextlib.suppress(Exception):
                cfg = timm.models.get_pretrained_cfg(name)
                where = f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else (cfg.url or where)
            raise WeightsDownloadError(
                f"Could not download weights for '{name}' from {where} ({_reason(e)}). {_OFFLINE_HINT}"
            ) from e
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        source = f"timm:{cfg.get('hf_hub_id') or cfg.get('url') or name}"
    else:
        with _seeded():
            model = timm.create_model(name, pretrained=False, **kwargs)
        source = f"random-init(seed={RANDOM_INIT_SEED})"
    data_config = dict(timm.data.resolve_model_data_config(model))
    data_config = {k: data_config[k] for k in DATA_CONFIG_KEYS if k in data_config}
    info = {"group": "extra", "paper_name": None}
    if model_kwargs:
        info["model_kwargs"] = dict(model_kwargs)
    return Encoder(
        model,
        name=name,
        arch=name,
        data_config=data_config,
        num_features=_output_dim(model),
        pooling=_infer_pooling(model),
        weights_source=source,
        info=info,
    )


def _check_timm_has_weights(name: str) -> None:
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        tagged = timm.list_models(name.split(".")[0], pretrained=True)
        hint = f" Tags with weights: {', '.join(tagged[:5])}." if tagged else ""
        raise ConfigError(
            f"timm has no pretrained weights for '{name}'.{hint} Pass pretrained=False for a random "
            "init, or --weights FILE."
        )


def _timm_family_filter(state: Mapping, model: nn.Module) -> dict:
    """A local file for a plain timm name: unwrap, drop DDP prefix, then timm's own family filter."""
    sd = strip_prefix(unwrap(state), "module.")
    family_filter = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if family_filter is not None:
        sd = family_filter(sd, model)
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    return drop_unused_head(sd, model, tuple(f"{h}." for h in heads))


def _is_download_error(e: BaseException) -> bool:
    """True when ``e`` (or what caused it) is a network/hub failure rather than a bad argument."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        root = type(e).__module__.split(".")[0]
        if isinstance(e, (OSError, ConnectionError, TimeoutError)) or root in {
            "huggingface_hub", "httpx", "httpcore", "requests", "urllib3", "urllib"
        }:
            return True
        e = e.__cause__ or e.__context__
    return False


# ----------------------------------------------------------------------------------------------
# introspection


def _output_dim(model: nn.Module) -> int:
    """Width of ``model(x)``: the classifier/projection if the model keeps one, else the pooled features."""
    num_classes = getattr(model, "num_classes", 0)
    if num_classes:
        return int(num_classes)
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _infer_pooling(model: nn.Module) -> str:
    gp = getattr(model, "global_pool", None)
    if isinstance(gp, str):  # ViT-style models
        return {"token": "cls", "avg": "mean_patch", "map": "attn", "": "flatten"}.get(gp, gp)
    pool_type = getattr(gp, "pool_type", "avg") if gp is not None else "avg"
    return "flatten" if pool_type == "" else "avg"


def _sync_timm_cfg(model: nn.Module, data_config: dict) -> None:
    """Make ``timm.data.resolve_model_data_config(model)`` agree with the entry's preprocessing."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        model.pretrained_cfg = {**cfg, **data_config}
