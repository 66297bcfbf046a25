"""User-facing errors.

Every error a user can cause derives from :class:`ZsclustError`; its message names the thing that is
wrong and says what to do. The CLI prints these without a traceback and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZsclustError(Exception):
    """Base class of errors caused by bad input, with an actionable message."""

    @property
    def user_message(self) -> str:
        """The message without a DataLoader worker's re-raise wrapper ("Caught X in DataLoader worker...")."""
        return unwrap_worker_message(str(self))


def unwrap_worker_message(text: str) -> str:
    """torch's DataLoader re-raises a worker's exception as ``Type(traceback text)``: keep the last line's message."""
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last else last


class ConfigError(ZsclustError, ValueError):
    """A configuration value, option or key is invalid."""


class UnknownEncoderError(ConfigError):
    """An encoder name is neither registered in zsclust nor known to timm."""


class UnknownDatasetError(ConfigError):
    """A dataset name is not registered and is not an existing directory."""


class SplitError(ConfigError):
    """A split that the dataset does not have, or cannot carve."""


class DatasetNotFoundError(ZsclustError, FileNotFoundError):
    """A dataset's files are missing from its root."""


class WeightsNotFoundError(ZsclustError, FileNotFoundError):
    """A local weights file does not exist or cannot be read."""


class WeightsDownloadError(ZsclustError, RuntimeError):
    """Pretrained weights could not be fetched (typically: an offline machine)."""


class CheckpointConversionError(ZsclustError, RuntimeError):
    """A checkpoint does not match the layout its encoder expects."""


class CorruptImageError(ZsclustError, OSError):
    """An image file cannot be decoded."""

    def __init__(self, path, reason: str = ""):
        if "Original Traceback" in str(path):  # re-raised from a DataLoader worker: already a message
            text = unwrap_worker_message(str(path))
            self.path = text.split("'")[1] if text.count("'") >= 2 else text
            super().__init__(str(path))
            return
        self.path = str(path)
        msg = f"Cannot read image '{self.path}'"
        if reason:
            msg += f" ({reason})"
        msg += ". Fix or remove the file, or pass --skip-corrupt to skip unreadable images."
        super().__init__(msg)


class CacheError(ZsclustError, RuntimeError):
    """The embedding cache on disk is inconsistent."""


class InvalidDataError(ZsclustError, ValueError):
    """An input array cannot be used as given: NaN/inf rows, too few samples, wrong shape.

    Distinct from :class:`ConfigError` because the fix is in the data (or the encoder that produced
    it), not in the configuration.
    """


class MemoryGuardError(ZsclustError, MemoryError):
    """A fit was refused because its estimated peak memory exceeds what is available.

    Raised *before* anything large is allocated, so the process (and the machine) stays healthy.
    """


def did_you_mean(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """A ' Did you mean: a, b?' suffix listing close matches, or '' when none are close."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""
