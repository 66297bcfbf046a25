"""The embedding fingerprint: a digest of everything that changes the embeddings.

Any change to the encoder, its weights, its preprocessing (the encoder's config and the named choice,
``model`` or ``study``), the dataset (for files: names, sizes and modification times), the split, the
sample count, the precision or the pooling is a different fingerprint, hence a cache miss.
"""

from __future__ import annotations

import hashlib
import json

from .._json import to_jsonable

FINGERPRINT_VERSION = 1


def fingerprint_inputs(encoder, dataset, precision: str, preprocessing: str = "model") -> dict:
    """The JSON-able dict the fingerprint is the digest of (also stored in the cache manifest).

    The transform is the dataset's own: a dataset built by the caller may bring another one.
    ``preprocessing`` other than ``model`` adds its name and the data config it resolves to, so the two
    choices never share an entry; ``model`` adds nothing, so entries made before the choice existed
    stay valid.
    """
    from ..data import preprocessing_config

    transform = getattr(dataset, "transform", None)
    extra = {}
    if preprocessing != "model":
        extra = {"preprocessing_mode": preprocessing,
                 "preprocessing_config": {k: to_jsonable(v) for k, v in
                                          sorted(preprocessing_config(encoder.data_config, preprocessing).items())}}
    return {
        "version": FINGERPRINT_VERSION,
        "encoder": encoder.name,
        "weights_digest": encoder.weights_digest,
        "pooling": encoder.pooling,
        "num_features": encoder.num_features,
        "preprocessing": {k: to_jsonable(v) for k, v in sorted(encoder.data_config.items())},
        "transform": repr(transform) if transform is not None else None,
        "dataset": dataset.fingerprint(),
        "split": dataset.split,
        "num_samples": len(dataset),
        "precision": str(precision),
        **extra,
    }


def fingerprint_digest(inputs: dict) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=to_jsonable).encode()
    return hashlib.sha256(blob).hexdigest()[:24]
