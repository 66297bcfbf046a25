"""Small state-dict helpers shared by the family ``checkpoint_filter_fn``s (renames only)."""

from __future__ import annotations

import argparse
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointConversionError, WeightsNotFoundError

__all__ = ["unwrap", "select_prefix", "strip_prefix", "drop_unused_head", "load_checkpoint_file",
           "timm_model_from_reference"]

# Training checkpoints often carry their argparse config; it is plain data, so allow it in
# weights_only loads instead of falling back to full (code-executing) unpickling.
_SAFE_GLOBALS = [argparse.Namespace]


def _is_flat(d: Mapping) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def unwrap(checkpoint: Mapping, keys: tuple[str, ...] = ("state_dict", "model")) -> dict:
    """Descend through wrapper keys (``{'state_dict': ...}``, ``{'model': ...}``) to the flat state dict."""
    sd = checkpoint
    while isinstance(sd, Mapping) and not _is_flat(sd):
        inner = next((sd[k] for k in keys if isinstance(sd.get(k), Mapping)), None)
        if inner is None:
            break
        sd = inner
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def select_prefix(sd: Mapping, prefix: str) -> dict:
    """Keep only the keys under ``prefix`` (a sub-module of a training wrapper), prefix removed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def strip_prefix(sd: Mapping, prefix: str) -> dict:
    """Remove ``prefix`` where present (DDP's ``module.``), keeping the other keys."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def drop_unused_head(sd: Mapping, model: nn.Module, prefixes: tuple[str, ...]) -> dict:
    """Drop classifier/projection keys under ``prefixes`` when the model has no such sub-module.

    Encoders are built headless (``num_classes=0``); an upstream classifier or SSL projector is not
    part of the features. If the model does have the head (``num_classes>0``), the keys are kept.
    """
    model_keys = model.state_dict().keys()
    unused = [p for p in prefixes if not any(k.startswith(p) for k in model_keys)]
    return {k: v for k, v in sd.items() if not any(k.startswith(p) for p in unused)}


def load_checkpoint_file(path) -> Mapping:
    """Read a local checkpoint (.pth/.pth.tar/.pt/.bin with ``weights_only=True``, or .safetensors)."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise WeightsNotFoundError(f"Weights file '{p}' {what}. Check the path passed as --weights.")
    if p.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as e:
            raise WeightsNotFoundError(f"Weights file '{p}' cannot be read as safetensors ({e}).") from e
    if _is_torchscript(p):  # OpenAI's CLIP files: a TorchScript archive, read without unpickling code
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # 'torch.jit.load is deprecated': it is the format
                return dict(torch.jit.load(str(p), map_location="cpu").state_dict())
        except Exception as e:
            raise WeightsNotFoundError(f"Weights file '{p}' cannot be read as a TorchScript archive ({e}).") from e
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsNotFoundError(
            f"Weights file '{p}' holds Python objects that a safe load (weights_only=True) refuses: "
            f"{first}. If you trust the file, re-save only its tensors, e.g. "
            "torch.save(torch.load(f, weights_only=False)['state_dict'], 'clean.pth'), and pass that."
        ) from e
    except Exception as e:
        raise WeightsNotFoundError(f"Weights file '{p}' cannot be read as a PyTorch checkpoint ({e}).") from e
    if not isinstance(obj, Mapping):
        raise CheckpointConversionError(f"Weights file '{p}' holds a {type(obj).__name__}, not a state dict.")
    return obj


def _is_torchscript(path: Path) -> bool:
    """A zip whose records hold compiled code (``<archive>/code/``): what ``torch.jit.save`` writes."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 2)[1:2] == ["code"] for n in z.namelist())


def timm_model_from_reference(arch: str, reference: nn.Module, filter_fn, **kwargs) -> nn.Module:
    """timm ``arch`` holding ``reference``'s tensors, converted by ``filter_fn``.

    The timm model is built on the meta device, so its own (discarded) init costs nothing, and the
    reference's tensors are assigned to it.
    """
    import timm

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, **{"num_classes": 0, **kwargs})
    model.load_state_dict(filter_fn(reference.state_dict(), model), strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    reference_is_real = not any(t.is_meta for t in reference.state_dict().values())
    if left and reference_is_real:  # a non-persistent buffer the state dict cannot fill
        raise RuntimeError(f"{arch}: tensors left uninitialised on the meta device: {left[:5]}")
    return model
