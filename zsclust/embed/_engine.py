"""``embed()``: dataset + encoder → cached embeddings, through ``Trainer.predict`` on any number of devices."""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import __version__
from ._cache import EmbeddingCache, EmbeddingSet
from ._fingerprint import fingerprint_digest, fingerprint_inputs
from ._module import EmbeddingModule
from ._options import EmbedOptions
from ._optimize import fold_batchnorm
from ._plan import Plan, PlannedData, make_plan
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

    if resolve_accelerator(accelerator) == "gpu":
        local = torch.cuda.device_count() if devices in ("auto", -1) else int(devices)
        return {"batch_size": 256, "num_workers": max(1, min(12, available_cores() // max(1, local) - 1)),
                "pin_memory": True}
    per_process = cpu_cores_per_process(devices)
    return {"batch_size": 32, "num_workers": 0 if per_process <= 4 else per_process // 8, "pin_memory": False}


def cpu_cores_per_process(devices) -> int:
    """The cores each of ``devices`` CPU processes may use (at least one). Without loader workers, that many
    threads decode each batch between forward passes (2 cores: 2.0 -> 1.2 ms per image)."""
    from .._ranks import available_cores

    return max(1, available_cores() // max(1, int(devices) if isinstance(devices, int) else 1))


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
    preprocessing: str | None = None,
    options: EmbedOptions | None = None,
    callbacks: Sequence = (),
) -> EmbeddingSet | None:
    """Embed ``dataset``'s ``split`` with ``encoder`` and return the cached :class:`EmbeddingSet`.

    ``encoder`` is a name for :func:`zsclust.encoders.create_encoder` (or an ``Encoder``);
    ``dataset`` a name or folder for :func:`zsclust.data.create_dataset` (or an ``ImageDataset``).
    ``preprocessing`` (default: ``options.preprocessing``) is ``model`` (the encoder's own pretrained
    config) or ``study`` (the protocol of Lowe et al. 2024, see
    :func:`zsclust.data.preprocessing_config`); it is part of the fingerprint. A
    dataset whose transform :func:`zsclust.data.build_transform` made is given this encoder's transform
    for ``preprocessing`` (on a copy); any other transform is used as it is.

    ``callbacks`` are Lightning callbacks for the predict run. The batches they see are float and normalised,
    on the device; with a transform from ``build_transform`` the loader itself yields uint8 images, and
    ``trainer.datamodule.batch_transform`` is the step that normalises them.

    A complete cache entry is returned without running anything; an incomplete one is resumed. One
    process at a time embeds an entry (a lock in its folder): another that starts on it waits, then
    loads or resumes what the first left. In a multi-process run, ranks other than global zero return
    ``None``.
    """
    from ..data import build_transform, create_dataset
    from ..data._transforms import check_preprocessing
    from ..encoders import create_encoder

    options = options or EmbedOptions()
    options.validate()
    preprocessing = preprocessing or options.preprocessing
    check_preprocessing(preprocessing)
    if isinstance(encoder, str):
        encoder = create_encoder(encoder, weights=weights)
    if isinstance(dataset, (str, os.PathLike)):
        dataset = create_dataset(str(dataset), split, root=root, download=download, seed=seed,
                                 skip_corrupt=skip_corrupt)
        own_transform = True
    else:
        own_transform = getattr(getattr(dataset, "transform", None), "preprocessing", None) is not None
        if own_transform:
            dataset = copy.copy(dataset)  # the caller's dataset keeps its transform
    if preprocessing == "study":
        encoder = study_raw_pixels(encoder, getattr(dataset, "native_size", None))
    if own_transform:
        dataset.transform = build_transform(encoder.data_config, preprocessing)
    precision = resolve_precision(options.precision, options.accelerator)
    inputs = fingerprint_inputs(encoder, dataset, precision, preprocessing)
    fingerprint = fingerprint_digest(inputs)
    cache = EmbeddingCache(options.cache_dir)
    entry = cache.entry(fingerprint)
    n = len(dataset)
    meta = {
        "fingerprint_inputs": inputs,
        "encoder": encoder.describe(),
        "preprocessing": preprocessing,
        "dataset": {"name": dataset.name, "split": dataset.split, "group": getattr(dataset, "group", None),
                    "classes": list(getattr(dataset, "classes", [])),
                    "split_record": getattr(dataset, "split_record", None)},
        "zsclust_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_from": 0,
    }
    lock = entry.lock()
    plan = None
    try:
        if runs_alone(options):
            # No other rank waits on this process: it may decide alone, before any trainer exists.
            if entry.is_complete:
                return entry.load()
            lock.acquire()
            plan = make_plan(entry, n)
            if plan.status == "complete":
                return entry.load()
            meta["resumed_from"] = plan.resumed_from
            if plan.status == "merge":  # killed after the last shard but before the merge
                return _merged_only(entry.finalize(n, meta))
        # Otherwise global zero plans inside the trainer, once the process group can broadcast it.
        return _predict(encoder, dataset, entry, lock, plan, meta, options, precision, callbacks)
    finally:
        lock.release()


def _predict(encoder, dataset, entry, lock, plan, meta, options, precision, callbacks) -> EmbeddingSet | None:
    from ..data import ImageDataset, collate_batch
    from ..data._transforms import split_for_batches

    loader_opts = default_loader_options(options.accelerator, options.devices, options.num_nodes)
    if options.batch_size is not None:
        loader_opts["batch_size"] = options.batch_size
    if options.num_workers is not None:
        loader_opts["num_workers"] = options.num_workers
    loader_opts.update(collate_fn=collate_batch, prefetch_factor=4 if loader_opts["num_workers"] else None)
    n = len(dataset)
    writer = ShardWriter(entry, n, meta, shard_size=options.shard_size, after_merge=lock.release)
    trainer = make_trainer(options, precision, callbacks=[writer, *callbacks], root_dir=entry.path.parent)

    def on_plan(p: Plan) -> None:
        meta["resumed_from"] = p.resumed_from
        if trainer.is_global_zero and p.status == "embed" and p.resumed_from:
            print(f"Resuming {entry.fingerprint}: {p.resumed_from} of {n} samples already embedded.")

    batch_transform = None
    halves = split_for_batches(getattr(dataset, "transform", None))
    if halves is not None:  # the loader carries uint8; float + normalise run per batch on the device
        dataset = copy.copy(dataset)
        dataset.transform, batch_transform = halves
    if not loader_opts["num_workers"] and isinstance(dataset, ImageDataset):
        dataset = copy.copy(dataset)
        dataset.decode_threads = cpu_cores_per_process(options.devices)
    data = PlannedData(dataset, loader_opts, entry, lock, plan=plan, on_plan=on_plan,
                       batch_transform=batch_transform)
    start = time.perf_counter()
    model = encoder
    if options.fold_batchnorm:
        probe = torch.rand(2, *encoder.data_config["input_size"])
        model, _ = fold_batchnorm(encoder, check_input=probe)
    # On the CPU with the default batch size, the forward pass's own batch size is tuned on the first batches.
    tune = loader_opts["batch_size"] if options.batch_size is None and resolve_accelerator(
        options.accelerator) == "cpu" else None
    module = EmbeddingModule(model, channels_last=options.channels_last, tune_forward_batch=tune)
    trainer.predict(module, datamodule=data, return_predictions=False)
    if not trainer.is_global_zero:
        return None
    plan = data.plan
    if writer.result is not None:  # merged in on_predict_end
        result = writer.result
    elif plan.status == "complete":
        return entry.load()
    else:  # nothing was left to embed: the predict loop had no batches, hence no hooks
        return _merged_only(entry.finalize(n, meta))
    result.meta["embed_seconds"] = time.perf_counter() - start
    tuner = module.forward_batch
    result.meta["forward_batch"] = tuner.chosen if tuner is not None else loader_opts["batch_size"]
    result.meta["samples_embedded_this_run"] = int(len(plan.remaining))
    return result


def _merged_only(result: EmbeddingSet) -> EmbeddingSet:
    result.meta.update(samples_embedded_this_run=0, embed_seconds=0.0)
    return result


def runs_alone(options: EmbedOptions) -> bool:
    """Whether this process can decide about the cache without asking other ranks.

    True for single-process runs, and for the first process of a multi-device run that Lightning has not
    launched its other ranks from yet (it launches them inside ``trainer.predict``). False in the ranks of
    a launched run (Lightning's children, torchrun, SLURM tasks, and the parent once it has launched):
    there every rank enters the trainer and global zero's plan is broadcast, so no rank can take another
    branch and leave the rest waiting in a collective.
    """
    if expected_world_size(options) == 1:
        return True
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return False
    env = os.environ
    if "LOCAL_RANK" in env or "RANK" in env:
        return False
    if int(env.get("WORLD_SIZE", "1") or 1) > 1 or int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return False
    return True


def expected_world_size(options: EmbedOptions) -> int:
    accelerator = resolve_accelerator(options.accelerator)
    if isinstance(options.devices, int) and options.devices > 0:
        local = options.devices
    elif isinstance(options.devices, str) and options.devices.isdigit():
        local = int(options.devices)
    else:  # "auto" / -1: every visible GPU; one process on the CPU
        local = torch.cuda.device_count() if accelerator == "gpu" else 1
    return max(1, local) * int(options.num_nodes)


def study_raw_pixels(encoder, native_size: tuple[int, int] | None):
    """Raw pixels under the study's preprocessing: the image side is capped at the dataset's native size
    (MNIST and Fashion-MNIST: 28 px, not 32), as the study did; any other encoder is returned as it is."""
    from ..encoders import create_encoder
    from ..encoders._pixels import RawPixels

    if not isinstance(getattr(encoder, "model", None), RawPixels) or native_size is None:
        return encoder
    side = min(native_size)
    if side >= encoder.model.img_size:
        return encoder
    return create_encoder(encoder.arch, img_size=side)


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

    # In a launched multi-process run, a cached entry is a predict loop without batches on every rank.
    warnings.filterwarnings("ignore", message=r".*Total length of .* across ranks is zero.*")

    accelerator = resolve_accelerator(options.accelerator)
    world = expected_world_size(options)
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
