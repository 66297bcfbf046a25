"""Input checks shared by every reducer and clusterer.

They run first in ``fit`` so that a bad array fails with a message that names the problem (how many
rows are NaN, how many samples there are) instead of a traceback from deep inside numba, scipy or
scikit-learn.
"""

from __future__ import annotations

import numpy as np

from zsclust.errors import ConfigError, InvalidDataError

# Rows checked per block when looking for NaN/inf: bounds the temporary boolean array to
# _FINITE_BLOCK * n_features bytes instead of one byte per element of X.
_FINITE_BLOCK = 65_536


class _NotNumericError(InvalidDataError, TypeError):
    """Values that are not numbers (also a TypeError, as numpy and scikit-learn raise for them)."""


def check_embeddings(X, *, what: str = "embeddings", min_samples: int = 2) -> np.ndarray:
    """Return ``X`` as a 2-D float array (no copy when it already is one), or raise InvalidDataError.

    Refuses sparse or non-numeric input, anything not 2-D, fewer than ``min_samples`` rows, no
    columns, and rows with NaN or inf (the message says how many and which).
    """
    if hasattr(X, "tocsr") or hasattr(X, "toarray"):
        raise InvalidDataError(f"{what}: sparse input is not supported; pass a dense array.")
    try:
        X = np.asarray(X)
    except Exception as err:  # ragged lists and the like
        raise InvalidDataError(f"{what}: cannot convert the input to an array ({err}).") from err
    if X.dtype.kind == "c":
        raise InvalidDataError(f"{what}: Complex data not supported; pass real-valued embeddings.")
    if X.dtype.kind == "O":
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise _NotNumericError(f"{what}: cannot read the values as numbers: {err}") from err
    if X.dtype.kind not in "fiub":
        raise _NotNumericError(f"{what}: expected numbers, got an array of dtype {X.dtype}.")
    if X.dtype.kind != "f":
        X = X.astype(np.float64)
    if X.ndim != 2:
        hint = (" Reshape your data with X.reshape(-1, 1) for a single feature or X.reshape(1, -1) "
                "for a single sample.") if X.ndim == 1 else ""
        raise InvalidDataError(f"{what}: expected a 2-D array (n_samples, n_features), got shape {X.shape}.{hint}")
    n, d = X.shape
    if n < min_samples:
        raise InvalidDataError(f"{what}: needs at least {min_samples} samples, got n_samples={n}.")
    if d == 0:
        # wording as scikit-learn's, which its estimator checks look for
        raise InvalidDataError(f"{what}: 0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
    bad = nonfinite_rows(X)
    if bad.size:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if bad.size > 5 else "")
        raise InvalidDataError(
            f"{what}: {bad.size} of {n} rows contain NaN or inf (rows {shown}). The encoder probably "
            "overflowed (try float32 precision instead of float16) or the cache is corrupt; "
            "re-embed, or drop those rows before clustering."
        )
    return X


def nonfinite_rows(X: np.ndarray) -> np.ndarray:
    """Indices of rows of a 2-D float array that contain NaN or inf, checked block by block."""
    out = []
    for start in range(0, X.shape[0], _FINITE_BLOCK):
        block = X[start:start + _FINITE_BLOCK]
        rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if rows.size:
            out.append(rows + start)
    return np.concatenate(out) if out else np.empty(0, dtype=np.intp)


def check_at_most_n(value, n_samples: int, *, param: str, owner: str, hint: str = "") -> None:
    """ConfigError when an integer parameter (K, n_neighbors, ...) exceeds the number of samples."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return  # type errors are reported by the estimator's own parameter validation
    if value > n_samples:
        raise ConfigError(
            f"{owner}: {param}={value} is larger than the number of samples N={n_samples}. "
            f"Use {param} <= {n_samples} or pass more samples.{(' ' + hint) if hint else ''}"
        )


def check_param_names(params, valid, *, kind: str, name: str) -> None:
    """ConfigError naming the parameters ``name`` (a ``kind``: reducer, clusterer) does not have, and the valid ones."""
    from zsclust.errors import did_you_mean

    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"Invalid parameter(s) {', '.join(unknown)} for {kind} {name!r}. Valid parameters: "
                          f"{', '.join(valid) or '(none)'}.{did_you_mean(unknown[0], valid)}")


def _validate_sklearn_params(estimator, owner: str) -> None:
    """scikit-learn's declared ``_parameter_constraints``, failing as a ConfigError."""
    from sklearn.utils._param_validation import InvalidParameterError

    validate = getattr(estimator, "_validate_params", None)
    if validate is None:
        return
    try:
        validate()
    except InvalidParameterError as err:
        raise ConfigError(f"{owner}: {err}") from err
