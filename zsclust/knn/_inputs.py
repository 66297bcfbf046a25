"""Input checks and conversions for the kNN probe.

Features become unit-norm float32 torch tensors, read block by block so that a float16 memmap of a
million rows is never copied whole into float32 more than once. Labels become int64 numpy arrays;
negative labels mean "unlabelled", as everywhere in zsclust.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from zsclust.errors import ConfigError, InvalidDataError

# Rows converted per block: bounds the float32 temporary to about this many bytes.
_BLOCK_BYTES = 64 * 2**20


def resolve_device(device, bank) -> torch.device:
    """``None``: the bank tensor's device (CPU for numpy); ``"auto"``: CUDA when available; else as given."""
    if device is None:
        return bank.device if isinstance(bank, torch.Tensor) else torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device: cannot read {device!r} as a torch device ({err}); "
                          "use 'cpu', 'cuda', 'cuda:1' or 'auto'.") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} asks for CUDA, but torch sees no CUDA device here; "
                          "use device='cpu' or device='auto'.")
    return resolved


def check_features(x, what: str):
    """``x`` as a 2-D floating numpy array or torch tensor with at least one row and one column."""
    if not isinstance(x, torch.Tensor):
        if hasattr(x, "tocsr") or hasattr(x, "toarray"):
            raise InvalidDataError(f"{what}: sparse input is not supported; pass a dense array.")
        x = np.asarray(x)
    floating = x.is_floating_point() if isinstance(x, torch.Tensor) else x.dtype.kind == "f"
    if not floating:
        raise InvalidDataError(f"{what}: expected floating-point features, got dtype {x.dtype}; "
                               "pass the embeddings (float16/float32), e.g. x.astype(np.float32).")
    if x.ndim != 2:
        raise InvalidDataError(f"{what}: expected a 2-D array (n_samples, n_features), got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:
        raise InvalidDataError(f"{what}: is empty (0 rows); the kNN probe needs at least one.")
    if x.shape[1] == 0:
        raise InvalidDataError(f"{what}: has 0 features (shape {tuple(x.shape)}).")
    return x


def check_labels(y, n: int, what: str, rows_of: str) -> np.ndarray:
    """``y`` as a 1-D int64 array with one label per row of ``rows_of``; negative = unlabelled."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise InvalidDataError(f"{what}: expected a 1-D array of labels, got shape {y.shape}.")
    if y.dtype.kind not in "iu":
        raise InvalidDataError(f"{what}: expected integer class labels, got dtype {y.dtype}; "
                               "encode classes as integers (negative = unlabelled).")
    if y.shape[0] != n:
        raise InvalidDataError(f"{what}: has {y.shape[0]} labels but {rows_of} has {n} rows; pass one label per row.")
    return y.astype(np.int64, copy=False)


def check_ks(ks) -> tuple[int, ...]:
    """The distinct ks in the order given; each an integer >= 1."""
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
        ks = (ks,)
    if not isinstance(ks, Iterable) or isinstance(ks, (str, bytes)):
        raise ConfigError(f"ks: expected an integer or a list of integers, got {ks!r}.")
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"ks: every k must be an integer >= 1, got {k!r}.")
        if int(k) not in out:
            out.append(int(k))
    if not out:
        raise ConfigError("ks: is empty; pass at least one k, e.g. ks=(1, 10, 20, 100, 200).")
    return tuple(out)


def check_temperature(temperature) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = math.nan
    if isinstance(temperature, bool) or not math.isfinite(t) or t <= 0:
        raise ConfigError(f"temperature: must be a finite number > 0 (the study uses 0.07), got {temperature!r}.")
    return t


def check_positive_int(value, name: str, hint: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name}: must be an integer >= 1 or None, got {value!r}. {hint}")
    return int(value)


def unit_rows(x, what: str, device: torch.device, *, keep: np.ndarray | None = None,
              store: bool = True) -> torch.Tensor | None:
    """The rows of ``x`` (those where ``keep`` is true) L2-normalised to float32 on ``device``.

    Every row is checked; rows with NaN/inf or with zero norm raise one InvalidDataError that counts
    them and names the first few. With ``store=False`` the rows are only checked (nothing is kept).
    """
    n, d = x.shape
    n_out = int(keep.sum()) if keep is not None else n
    out = torch.empty((n_out, d), dtype=torch.float32, device=device) if store else None
    nonfinite: list[np.ndarray] = []
    zero: list[np.ndarray] = []
    at = 0
    for rows, block in _blocks(x, device, keep):
        unit, bad_values, bad_norm = _normalise(block, divide=store)
        if bad_values.any():
            nonfinite.append(rows[bad_values.cpu().numpy()])
        if bad_norm.any():
            zero.append(rows[bad_norm.cpu().numpy()])
        if out is not None:
            out[at:at + block.shape[0]] = unit
        at += block.shape[0]
    _raise_bad_rows(what, n, nonfinite, zero)
    return out


def unit_block(x, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Rows ``start:stop`` of already-checked features, L2-normalised to float32 on ``device``."""
    return _normalise(_as_float32(x[start:stop], device))[0]


def _blocks(x, device: torch.device, keep: np.ndarray | None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(original row numbers, float32 block on ``device``) over ``x``, skipping rows not kept."""
    n, d = x.shape
    step = max(1, _BLOCK_BYTES // (4 * d))
    for start in range(0, n, step):
        stop = min(n, start + step)
        rows = np.arange(start, stop)
        if keep is not None:
            mask = keep[start:stop]
            if not mask.any():
                continue
            rows = rows[mask]
            block = x[start:stop]
            if isinstance(block, torch.Tensor):
                block = block[torch.from_numpy(mask).to(block.device)]
            else:
                block = block[mask]
        else:
            block = x[start:stop]
        yield rows, _as_float32(block, device)


def _as_float32(block, device: torch.device) -> torch.Tensor:
    if isinstance(block, torch.Tensor):
        return block.detach().to(device=device, dtype=torch.float32)
    # A copy: converts float16 once, and keeps read-only memmaps (the embedding cache) read-only.
    return torch.from_numpy(np.array(block, dtype=np.float32)).to(device)


def _normalise(block: torch.Tensor, divide: bool = True) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(unit rows or None, rows with NaN/inf, finite rows with zero or overflowing norm); ``block`` is not modified.

    NaN/inf anywhere in a row makes its norm NaN/inf, so only rows with a bad norm are looked at twice.
    """
    norm = torch.linalg.vector_norm(block, dim=1, keepdim=True)
    bad_norm = ~torch.isfinite(norm[:, 0]) | (norm[:, 0] == 0)
    bad_values = torch.zeros_like(bad_norm)
    if bad_norm.any():
        bad_values[bad_norm] = ~torch.isfinite(block[bad_norm]).all(dim=1)
    return (block / norm if divide else None), bad_values, bad_norm & ~bad_values


def _raise_bad_rows(what: str, n: int, nonfinite: list[np.ndarray], zero: list[np.ndarray]) -> None:
    if nonfinite:
        bad = np.concatenate(nonfinite)
        raise InvalidDataError(
            f"{what}: {bad.size} of {n} rows contain NaN or inf (rows {_first(bad)}). The encoder probably "
            "overflowed (try float32 precision instead of float16) or the cache is corrupt; "
            "re-embed, or drop those rows."
        )
    if zero:
        bad = np.concatenate(zero)
        raise InvalidDataError(
            f"{what}: {bad.size} of {n} rows have zero norm or a norm that overflows float32 (rows {_first(bad)}), "
            "so their cosine similarity is undefined; re-embed, or drop those rows."
        )


def _first(rows: np.ndarray, n: int = 5) -> str:
    return ", ".join(map(str, rows[:n].tolist())) + (", ..." if rows.size > n else "")
