"""One conversion to JSON-able values, shared by cache keys, fingerprints and run descriptions."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any


def to_jsonable(value: Any) -> Any:
    """Numbers (numpy's too) as int/float, sequences as lists, mappings with sorted string keys, the rest as repr."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return repr(value)
