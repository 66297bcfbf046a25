"""The embedding cache: one folder per fingerprint, filled by shards, merged once complete.

Layout of an entry ``<cache_dir>/<fingerprint>/``::

    shards/shard-r<rank>-<attempt>-<k>.npz   partial results (indices, embeddings, labels, skipped)
    embeddings.npy  labels.npy  indices.npy  skipped.npy   the merged result, in dataset order
    manifest.json   written last: its presence is what marks the entry complete

Every file is written to a temporary name in the same folder and renamed into place, so a killed
run leaves either a whole file or none. Resume is by sample index: whatever indices the finished
shards hold are not embedded again, whatever the world size of the run that wrote them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


import numpy as np

from .._paths import default_cache_dir
from .._atomic import atomic_save_npy, atomic_write_bytes, atomic_write_json
from ..errors import CacheError, InvalidDataError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class EmbeddingSet:
    """Embeddings of one (encoder, dataset, split), rows in dataset order.

    ``indices[i]`` is the dataset index of row ``i``; indices listed in ``skipped`` (unreadable
    images skipped on request) have no row.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    skipped: np.ndarray
    meta: dict

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def __len__(self) -> int:
        return len(self.indices)

    def export_npz(self, path: str | os.PathLike) -> Path:
        """Write the arrays and where they came from to one ``.npz`` file, atomically.

        Besides ``embeddings``, ``labels``, ``indices`` and ``skipped``, ``meta`` holds the provenance as
        JSON (encoder, weights digest, dataset, split, class names, fingerprint and its inputs), so a
        run on the file is named and tagged after what made it.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        keep = ("fingerprint", "fingerprint_inputs", "encoder", "dataset", "zsclust_version", "created", "num_skipped")
        provenance = json.dumps({k: self.meta[k] for k in keep if k in self.meta}, default=str)
        atomic_write_bytes(
            path,
            lambda f: np.savez(
                f,
                embeddings=np.asarray(self.embeddings),
                labels=np.asarray(self.labels),
                indices=np.asarray(self.indices),
                skipped=np.asarray(self.skipped),
                fingerprint=np.asarray(self.fingerprint),
                meta=np.asarray(provenance),
            ),
        )
        return path

    @classmethod
    def from_npz(cls, path: str | os.PathLike, *, labels: bool = True) -> "EmbeddingSet":
        """Read an exported ``.npz`` (ours, or any with ``embeddings`` and optionally ``labels``/``indices``).

        Every array is checked on load (shape, dtype, lengths), and the error names the file and the
        array. A file without a stored fingerprint is keyed by its content, so re-exporting different
        embeddings to the same path never reuses reductions of the old ones. With ``labels=False`` the
        labels are not even read (a label-free search): every label is -1.
        """
        import zipfile

        path = Path(path)
        if not path.is_file():
            raise CacheError(f"Embedding file '{path}' does not exist. Export one with 'zsclust embed --export'.")
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise CacheError(f"'{path}' is not a NumPy .npz archive ({e}). Export embeddings with "
                             "'zsclust embed --export FILE.npz' or numpy.savez(FILE, embeddings=..., labels=...).") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise CacheError(f"'{path}' holds a single array, not an .npz archive with an 'embeddings' array.")
        with z:
            if "embeddings" not in z.files:
                raise CacheError(f"'{path}' has no 'embeddings' array (it has: {', '.join(z.files) or 'nothing'}).")
            emb = _checked(z, "embeddings", path, ndim=2, kinds="fiu")
            n = len(emb)
            labels = _checked(z, "labels", path, ndim=1, kinds="iu", n=n) if labels and "labels" in z.files \
                else np.full(n, -1, dtype=np.int64)
            indices = _checked(z, "indices", path, ndim=1, kinds="iu", n=n) if "indices" in z.files \
                else np.arange(n, dtype=np.int64)
            skipped = _checked(z, "skipped", path, ndim=1, kinds="iu") if "skipped" in z.files \
                else np.zeros(0, dtype=np.int64)
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            fp = str(z["fingerprint"]) if "fingerprint" in z.files else None
        meta["fingerprint"] = fp or meta.get("fingerprint") or "npz-" + _content_digest(emb)
        meta["source"] = str(path)
        return cls(emb, labels, indices, skipped, meta)


def _checked(z, name: str, path: Path, *, ndim: int, kinds: str, n: int | None = None) -> np.ndarray:
    """One array of an ``.npz`` with the shape and dtype it must have, or an InvalidDataError naming both."""
    try:
        a = z[name]
    except (ValueError, OSError) as e:  # an object array (allow_pickle=False), a truncated member
        raise InvalidDataError(f"'{path}': cannot read array '{name}': {e}") from None
    what = {"fiu": "numbers", "iu": "integers"}[kinds]
    if a.ndim != ndim or a.dtype.kind not in kinds:
        shape = "(N, D)" if ndim == 2 else "(N,)"
        raise InvalidDataError(f"'{path}': array '{name}' must be {ndim}-D {what} of shape {shape}, got shape "
                               f"{a.shape} and dtype {a.dtype}.")
    if n is not None and len(a) != n:
        raise InvalidDataError(f"'{path}': array '{name}' has {len(a)} entries but 'embeddings' has {n} rows; they "
                               "must match one to one.")
    return a


def _content_digest(*arrays: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()[:32]


class CacheEntry:
    """One fingerprint's folder: shard bookkeeping, the merge, and loading."""

    def __init__(self, root: Path, fingerprint: str):
        self.fingerprint = fingerprint
        self.path = Path(root) / fingerprint
        self.shards_dir = self.path / "shards"

    # -- state ---------------------------------------------------------------------------------
    @property
    def is_complete(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def shard_files(self) -> list[Path]:
        if not self.shards_dir.is_dir():
            return []
        return sorted(p for p in self.shards_dir.glob("shard-*.npz") if p.is_file())

    def done_indices(self) -> np.ndarray:
        """Dataset indices that finished shards already cover (embedded or skipped)."""
        done = [np.zeros(0, dtype=np.int64)]
        for shard in self.shard_files():
            try:
                with np.load(shard) as z:
                    done += [z["indices"].astype(np.int64), z["skipped"].astype(np.int64)]
            except Exception:  # a shard can only be partial if written outside atomic_write_bytes
                shard.unlink(missing_ok=True)
        return np.unique(np.concatenate(done))

    # -- writing -------------------------------------------------------------------------------
    def write_shard(self, name: str, indices, embeddings, labels, skipped) -> Path:
        path = self.shards_dir / f"shard-{name}.npz"
        atomic_write_bytes(
            path,
            lambda f: np.savez(
                f,
                indices=np.asarray(indices, dtype=np.int64),
                embeddings=np.asarray(embeddings, dtype=np.float32),
                labels=np.asarray(labels, dtype=np.int64),
                skipped=np.asarray(skipped, dtype=np.int64),
            ),
        )
        return path

    def finalize(self, num_samples: int, meta: dict) -> EmbeddingSet:
        """Merge the shards into dataset-ordered arrays, check every sample appears exactly once, then publish.

        Rows stream from shard to a memory-mapped output, so memory stays at one shard.
        """
        shards = self.shard_files()
        dim = None
        seen = np.zeros(num_samples, dtype=np.int8)
        is_skipped = np.zeros(num_samples, dtype=bool)
        labels_all = np.full(num_samples, -1, dtype=np.int64)
        for shard in shards:
            with np.load(shard) as z:
                idx, sk = z["indices"], z["skipped"]
                if len(idx):
                    d = z["embeddings"].shape[1]
                    if dim is not None and d != dim:
                        raise CacheError(f"Shard '{shard}' has dimension {d}, others {dim}; delete '{self.path}' and rerun.")
                    dim = d
                bad = np.concatenate([idx, sk])
                if len(bad) and (bad.min() < 0 or bad.max() >= num_samples):
                    raise CacheError(f"Shard '{shard}' has indices outside [0, {num_samples}); delete '{self.path}' and rerun.")
                np.add.at(seen, bad, 1)
                labels_all[idx] = z["labels"]
                is_skipped[sk] = True
        if (seen > 1).any():
            dup = np.flatnonzero(seen > 1)
            raise CacheError(f"Samples {dup[:10].tolist()} were embedded more than once in '{self.path}'; delete it and rerun.")
        if (seen == 0).any():
            missing = np.flatnonzero(seen == 0)
            raise CacheError(
                f"{len(missing)} of {num_samples} samples have no embedding in '{self.path}' "
                f"(first: {missing[:10].tolist()}); rerun the same command to resume."
            )
        indices = np.flatnonzero(~is_skipped)
        row_of = np.full(num_samples, -1, dtype=np.int64)
        row_of[indices] = np.arange(len(indices))
        dim = dim or 0
        out = self.path / "embeddings.npy"
        fd, tmp = tempfile.mkstemp(prefix=".embeddings.", suffix=".npy", dir=self.path)
        os.close(fd)
        try:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(indices), dim))
            for shard in shards:
                with np.load(shard) as z:
                    if len(z["indices"]):
                        mm[row_of[z["indices"]]] = z["embeddings"]
            mm.flush()
            del mm
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        atomic_save_npy(self.path / "labels.npy", labels_all[indices])
        atomic_save_npy(self.path / "indices.npy", indices)
        atomic_save_npy(self.path / "skipped.npy", np.flatnonzero(is_skipped))
        manifest = dict(meta, fingerprint=self.fingerprint, format_version=FORMAT_VERSION,
                        num_samples=num_samples, num_embedded=int(len(indices)),
                        num_skipped=int(is_skipped.sum()), dim=int(dim))
        atomic_write_json(self.path / MANIFEST, manifest, default=str)
        shutil.rmtree(self.shards_dir, ignore_errors=True)
        return self.load()

    # -- reading -------------------------------------------------------------------------------
    def load(self, mmap: bool = True) -> EmbeddingSet:
        if not self.is_complete:
            raise CacheError(f"Cache entry '{self.path}' is incomplete; rerun the embedding to resume it.")
        meta = json.loads((self.path / MANIFEST).read_text())
        mode = "r" if mmap else None
        return EmbeddingSet(
            embeddings=np.load(self.path / "embeddings.npy", mmap_mode=mode),
            labels=np.load(self.path / "labels.npy"),
            indices=np.load(self.path / "indices.npy"),
            skipped=np.load(self.path / "skipped.npy"),
            meta=meta,
        )


class EmbeddingCache:
    """A folder of :class:`CacheEntry`, one per embedding fingerprint."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def entry(self, fingerprint: str) -> CacheEntry:
        return CacheEntry(self.root, fingerprint)

    def __contains__(self, fingerprint: str) -> bool:
        return self.entry(fingerprint).is_complete

    def load(self, fingerprint: str) -> EmbeddingSet:
        """Load a complete entry by its fingerprint, or by a unique prefix of it."""
        matches = [p.name for p in self.root.glob(f"{fingerprint}*") if (p / MANIFEST).is_file()] if self.root.is_dir() else []
        if len(matches) != 1:
            what = "no complete entry" if not matches else f"{len(matches)} entries"
            raise CacheError(f"{what} in '{self.root}' match fingerprint '{fingerprint}'. List them with 'zsclust cache'.")
        return self.entry(matches[0]).load()

    def list(self) -> list[dict]:
        if not self.root.is_dir():
            return []
        return [json.loads((p / MANIFEST).read_text()) for p in sorted(self.root.iterdir()) if (p / MANIFEST).is_file()]
