"""GPU clustering through RAPIDS cuML: one import check, one setting.

The ``cuml`` backends (UMAP, HDBSCAN, K-Means, the neighbour graph) run only when cuML is installed
(``pip install zsclust[gpu]``, which names ``cuml-cu12``) and a CUDA device is present. ``backend: auto``
picks them then (K-Means excepted: there ``auto`` takes the torch backend whenever torch sees a GPU, see
:func:`cuda_available`), unless ``ZSCLUST_GPU=off``; ``ZSCLUST_GPU=on`` makes a missing GPU an error instead
of a silent CPU run. Asking for ``backend: cuml`` without cuML is a ConfigError that says what to install.

cuML is imported only when a GPU backend is asked for or ``auto`` looks for one, never by
``import zsclust``. These paths are written against cuML's documented API (25.x) and are
unmeasured here: the development machine has no GPU (see docs/scale.md).
"""

from __future__ import annotations

import contextlib
import functools
import os

from zsclust.errors import ConfigError

ENV_GPU = "ZSCLUST_GPU"
INSTALL_HINT = ("install RAPIDS cuML for your CUDA version (pip install 'zsclust[gpu]', or cuml-cu11 for CUDA 11) "
                "on a machine with an NVIDIA GPU")


def gpu_setting() -> str:
    """``auto`` (default), ``on`` or ``off`` from ``ZSCLUST_GPU``."""
    raw = os.environ.get(ENV_GPU, "auto").strip().lower() or "auto"
    aliases = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off", "cpu": "off"}
    value = aliases.get(raw, raw)
    if value not in ("auto", "on", "off"):
        raise ConfigError(f"{ENV_GPU}={raw!r} must be auto, on or off.")
    return value


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[bool, str]:
    try:
        import cuml  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any failure to load cuML means: no GPU backend
        return False, f"cuML is not importable ({type(err).__name__}: {err})"
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # noqa: BLE001
        return False, f"no CUDA device ({type(err).__name__}: {err})"
    return (count > 0), ("a CUDA device" if count else "no CUDA device")


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """torch sees a CUDA device (checked once per process). Without NVIDIA's driver files torch is not even
    imported, so a CPU-only machine pays nothing for asking."""
    if not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/dxg")):
        return False
    import torch

    return bool(torch.cuda.is_available())


def torch_device():
    """Where zsclust's torch paths (K-Means, the exact neighbour search) compute: the current CUDA device when
    torch sees one and ``ZSCLUST_GPU`` is not ``off``, the CPU otherwise."""
    import torch

    return torch.device("cuda" if gpu_setting() != "off" and cuda_available() else "cpu")


@contextlib.contextmanager
def full_float32_products():
    """float32 products at full precision inside (no TF32, which the embedding job allows for its encoder:
    a 10-bit mantissa would reorder near-tied distances), the caller's setting restored after."""
    import torch

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def free_device_bytes(device) -> int:
    """Free memory on a CUDA device, counting what torch's caching allocator holds but does not use (an
    earlier job in the process, such as the embedding, leaves it reserved)."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


DEVICE_HEADROOM = 1.25
"""A fit goes to a CUDA device only when its estimate times this fits the free memory."""


def fits_on(device, nbytes: int) -> bool:
    """Whether ``nbytes`` (with :data:`DEVICE_HEADROOM`) fit in a CUDA device's free memory; always on the CPU."""
    return device.type != "cuda" or nbytes * DEVICE_HEADROOM <= free_device_bytes(device)


def host_tensor(array):
    """A CPU tensor sharing ``array``'s memory, read-only arrays (memory-mapped embeddings) included: zsclust's
    torch paths never write to their input, so torch's warning about non-writable arrays does not apply."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.as_tensor(array)


def gpu_available() -> bool:
    """cuML importable and a CUDA device present (checked once per process)."""
    return _probe()[0]


def want_gpu(backend: str, owner: str) -> bool:
    """Whether a ``backend`` parameter (``auto``, ``cuml`` or a CPU name) means the GPU here."""
    setting = gpu_setting()
    if backend == "cuml":
        require_gpu(owner)
        return True
    if backend != "auto" or setting == "off":
        return False
    if setting == "on":
        require_gpu(owner)
        return True
    return gpu_available()


def require_gpu(owner: str) -> None:
    ok, why = _probe()
    if not ok:
        raise ConfigError(f"{owner}: the cuml backend needs cuML and a CUDA GPU, but {why}. Either {INSTALL_HINT}, "
                          f"or choose a CPU backend (backend: auto with {ENV_GPU}=off).")


def to_numpy(array):
    """A cuML/CuPy result as a NumPy array."""
    if hasattr(array, "to_numpy"):
        return array.to_numpy()
    if hasattr(array, "get"):
        return array.get()
    import numpy as np

    return np.asarray(array)


__all__ = ["DEVICE_HEADROOM", "ENV_GPU", "cuda_available", "fits_on", "free_device_bytes", "full_float32_products",
           "gpu_available", "gpu_setting", "host_tensor", "require_gpu", "to_numpy", "torch_device", "want_gpu"]
