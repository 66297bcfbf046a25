"""``embed()``: dataset + encoder → cached embeddings, through ``Trainer.predict`` on any number of devices."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from .. import __version__
from ._cache import EmbeddingCache, EmbeddingSet
from ._fingerprint import fingerprint_digest, fingerprint_inputs
from ._module import EmbeddingModule
from ._options import EmbedOptions
from ._optimize import fold_batchnorm
from ._writer import ShardWriter

def resolve_accelerator(accelerator: str) -> str:
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if accelerator == "cuda" else accelerator


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 / AMX); elsewhere bf16 is slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` → bf16 autocast on GPUs that have it (else fp16), bf16 on CPUs that have it (else fp32)."""
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    if resolve_accelerator(accelerator) == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"


def default_loader_options(accelerator: str, devices, num_nodes: int) -> dict:
    """A loader tuned for inference: big batches and a few workers per device on GPU.

    On the CPU the forward pass already keeps every core busy, so a decoding worker does not overlap
    with it but preempts one of its threads, and every parallel kernel waits for that thread: on 2
    cores one worker made the forward pass 35% slower and the whole run 15% slower than decoding in
    the main process between batches (BENCHMARKS.md). Workers pay off only where cores are plenty.
    """
    from .._ranks import available_cores

    cpus = available_cores()
    if resolve_accelerator(accelerator) == "gpu":
        local = torch.cuda.device_count() if devices in ("auto", -1) else int(devices)
        return {"batch_size": 256, "num_workers": max(1, min(12, cpus // max(1, local) - 1)), "pin_memory": True}
    per_process = cpus // max(1, int(devices) if isinstance(devices, int) else 1)
    return {"batch_size": 32, "num_workers": 0 if per_process <= 4 else per_process // 8, "pin_memory": False}


def embed(
    encoder,
    dataset,
    *,
    split: str = "test",
    root: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    skip_corrupt: bool = False,
    options: EmbedOptions | None = None,
    callbacks: Sequence = (),
) -> EmbeddingSet | None:
    """Embed ``dataset``'s ``split`` with ``encoder`` and return the cached :class:`EmbeddingSet`.

    ``encoder`` is a name for :func:`zsclust.encoders.create_encoder` (or an ``Encoder``);
    ``dataset`` a name or folder for :func:`zsclust.data.create_dataset` (or an ``ImageDataset``
    already built with this encoder's transform). A complete cache entry is returned without running
    anything; an incomplete one is resumed. In a multi-process run, ranks other than global zero
    return ``None``.
    """
    from ..data import build_transform, create_dataset
    from ..encoders import create_encoder

    options = options or EmbedOptions()
    options.validate()
    if isinstance(encoder, str):
        encoder = create_encoder(encoder, weights=weights)
    transform = build_transform(encoder.data_config)
    if isinstance(dataset, (str, os.PathLike)):
        dataset = create_dataset(str(dataset), split, root=root, transform=transform, download=download,
                                 seed=seed, skip_corrupt=skip_corrupt)
    precision = resolve_precision(options.precision, options.accelerator)
    inputs = fingerprint_inputs(encoder, dataset, precision)
    fingerprint = fingerprint_digest(inputs)
    cache = EmbeddingCache(options.cache_dir)
    entry = cache.entry(fingerprint)
    if entry.is_complete:
        return entry.load()

    n = len(dataset)
    done = entry.done_indices()
    remaining = sorted(set(range(n)) - set(done.tolist()))
    meta = {
        "fingerprint_inputs": inputs,
        "encoder": encoder.describe(),
        "dataset": {"name": dataset.name, "split": dataset.split, "group": getattr(dataset, "group", None),
                    "classes": list(getattr(dataset, "classes", [])),
                    "split_record": getattr(dataset, "split_record", None)},
        "zsclust_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_from": int(len(done)),
    }
    writer = ShardWriter(entry, n, meta, shard_size=options.shard_size)
    if not remaining:  # killed after the last shard but before the merge
        return entry.finalize(n, meta)

    loader_opts = default_loader_options(options.accelerator, options.devices, options.num_nodes)
    if options.batch_size is not None:
        loader_opts["batch_size"] = options.batch_size
    if options.num_workers is not None:
        loader_opts["num_workers"] = options.num_workers
    from ..data import collate_batch

    loader = DataLoader(
        Subset(dataset, remaining) if len(remaining) < n else dataset,
        shuffle=False,
        collate_fn=collate_batch,
        prefetch_factor=4 if loader_opts["num_workers"] else None,
        **loader_opts,
    )
    trainer = make_trainer(options, precision, callbacks=[writer, *callbacks], root_dir=cache.root)
    if trainer.is_global_zero and done.size:
        print(f"Resuming {fingerprint}: {len(done)} of {n} samples already embedded.")
    start = time.perf_counter()
    model = encoder
    if options.fold_batchnorm:
        probe = torch.rand(2, *encoder.data_config["input_size"])
        model, _ = fold_batchnorm(encoder, check_input=probe)
    trainer.predict(EmbeddingModule(model, channels_last=options.channels_last), dataloaders=loader,
                    return_predictions=False)
    if not trainer.is_global_zero:
        return None
    result = writer.result
    result.meta["embed_seconds"] = time.perf_counter() - start
    result.meta["samples_embedded_this_run"] = len(remaining)
    return result


class _DropAdverts(logging.Filter):
    """Lightning prints a cloud-logger advert at every Trainer start; it is noise in a CLI's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


def make_trainer(options: EmbedOptions, precision: str, callbacks: Sequence = (), root_dir: Path | None = None):
    import lightning.pytorch as pl

    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropAdverts())
    # A deprecation inside Lightning 2.6's own pytree helper, not ours to fix.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

    accelerator = resolve_accelerator(options.accelerator)
    if isinstance(options.devices, int) and options.devices > 0:
        local = options.devices
    else:  # "auto" / -1: every visible GPU; one process on the CPU
        local = torch.cuda.device_count() if accelerator == "gpu" else 1
    world = local * options.num_nodes
    strategy = options.strategy
    if strategy == "auto" and world > 1:
        strategy = "ddp"
    if accelerator == "gpu":
        torch.set_float32_matmul_precision("high")
    kwargs = dict(
        accelerator=accelerator,
        devices=options.devices,
        num_nodes=options.num_nodes,
        strategy=strategy,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=options.progress,
        inference_mode=True,
        callbacks=list(callbacks),
        default_root_dir=str(root_dir) if root_dir else None,
    )
    kwargs.update(options.trainer_kwargs)
    return pl.Trainer(**kwargs)
