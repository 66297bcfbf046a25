"""The embedding cache: one folder per fingerprint, filled by shards, merged once complete.

Layout of an entry ``<cache_dir>/<fingerprint>/``::

    .lock           flock held by the one process that plans, embeds and merges this entry
    shards/shard-r<rank>-<attempt>-<k>.npz   partial results (indices, embeddings, labels, skipped)
    shards/damaged/ shards that could not be read, set aside (kept for a look)
    embeddings.npy  labels.npy  indices.npy  skipped.npy   the merged result, in dataset order
    manifest.json   written last: its presence is what marks the entry complete

Every file is written to a temporary name in the same folder and renamed into place, so a killed
run leaves either a whole file or none; the next run to take the lock deletes such temporaries.
Resume is by sample index: whatever indices the finished shards hold are not embedded again,
whatever the world size of the run that wrote them. A second process that starts on the same
entry waits for the lock, then resumes from (or loads) what the first one left.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


import numpy as np

from .._paths import default_cache_dir
from .._atomic import atomic_save_npy, atomic_write_bytes, atomic_write_json, replace_durably
from ..errors import CacheError, InvalidDataError
from ._lock import EntryLock

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1
#: What reading a shard that is not a whole shard of ours raises (truncated, garbage, an array missing).
SHARD_FORMAT_ERRORS = (zipfile.BadZipFile, ValueError, EOFError, KeyError)
#: Two rows of one sample from overlapping attempts agree when their difference is at most this
#: fraction of their norm: batch composition and kernels move fp32 rows by ~1e-6 and bf16 ones by ~1e-3.
DUPLICATE_RTOL = 1e-2


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
    """One fingerprint's folder: shard bookkeeping, the merge, and loading.

    Writers hold :meth:`lock` from planning to the merge; :meth:`done_indices`,
    :meth:`clean_stale_temporaries` and :meth:`finalize` move or delete files and expect it held.
    """

    def __init__(self, root: Path, fingerprint: str):
        self.fingerprint = fingerprint
        self.path = Path(root) / fingerprint
        self.shards_dir = self.path / "shards"
        self.damaged_dir = self.shards_dir / "damaged"
        self.lock_path = self.path / LOCK_FILE

    def lock(self) -> EntryLock:
        return EntryLock(self.lock_path, what=f"cache entry '{self.path}'")

    # -- state ---------------------------------------------------------------------------------
    @property
    def is_complete(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def shard_files(self) -> list[Path]:
        if not self.shards_dir.is_dir():
            return []
        return sorted(p for p in self.shards_dir.glob("shard-*.npz") if p.is_file())

    def done_indices(self) -> np.ndarray:
        """Dataset indices that finished shards already cover (embedded or skipped).

        A shard that is not a whole shard of ours (truncated, garbage, an array missing or of the wrong
        length) is moved to ``shards/damaged/`` and its samples count as not done. Errors of the file
        system itself (OSError: a passing NFS error, too many open files) propagate: they say nothing
        about the shard, which stays where it is.
        """
        done = [np.zeros(0, dtype=np.int64)]
        for shard in self.shard_files():
            try:
                with np.load(shard, allow_pickle=False) as z:
                    idx, sk = _shard_index(z)
            except OSError:
                raise
            except SHARD_FORMAT_ERRORS as e:
                self.set_aside(shard, e)
                continue
            done += [idx, sk]
        return np.unique(np.concatenate(done))

    def set_aside(self, shard: Path, reason: BaseException | str) -> Path:
        """Move a damaged shard to ``shards/damaged/`` (kept for a look, never read again)."""
        self.damaged_dir.mkdir(parents=True, exist_ok=True)
        dest = self.damaged_dir / shard.name
        replace_durably(shard, dest)
        why = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else reason
        log.warning("Shard '%s' is damaged (%s); moved to '%s'. Its samples will be embedded again.", shard, why, dest)
        return dest

    def clean_stale_temporaries(self) -> list[Path]:
        """Delete the temporaries of runs that died writing: a merge's ``.embeddings.*.npy`` (as large as the
        whole result) and the ``.*.tmp`` files of atomic writes. Only the lock holder writes, so while it is
        held every temporary is a dead run's."""
        found = [*self.path.glob(".embeddings.*.npy"), *self.path.glob(".*.tmp"), *self.shards_dir.glob(".*.tmp")]
        for p in found:
            p.unlink(missing_ok=True)
        if found:
            log.info("Removed %d temporary file(s) left in '%s' by a run that died.", len(found), self.path)
        return found

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

    def _damaged(self, shard: Path, e: BaseException) -> CacheError:
        dest = self.set_aside(shard, e)
        return CacheError(f"Shard '{shard.name}' of '{self.path}' is damaged ({type(e).__name__}: {e}); it was moved"
                          f" to '{dest}'. Rerun the same command to embed its samples again.")

    def finalize(self, num_samples: int, meta: dict) -> EmbeddingSet:
        """Merge the shards into dataset-ordered arrays, check every sample is there, then publish.

        Rows stream from shard to a memory-mapped output, so memory stays at one shard. A sample that
        two shards hold (two attempts that overlapped) is kept once if both rows agree to
        ``DUPLICATE_RTOL`` and have the same label; rows that disagree mean the inputs changed between
        the attempts, and the merge refuses them. A sample skipped (unreadable) by one attempt and
        embedded by another keeps its embedding.
        """
        shards = self.shard_files()
        dim = None
        embedded = np.zeros(num_samples, dtype=np.int32)
        skipped_any = np.zeros(num_samples, dtype=bool)
        labels_all = np.full(num_samples, -1, dtype=np.int64)
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as z:
                    idx, sk = _shard_index(z)
                    labels = z["labels"]
                    d = _header_shape(z, "embeddings")[1] if len(idx) else None
            except OSError:
                raise
            except SHARD_FORMAT_ERRORS as e:
                raise self._damaged(shard, e) from e
            if d is not None:
                if dim is not None and d != dim:
                    raise CacheError(f"Shard '{shard}' has dimension {d}, others {dim}; delete '{self.path}' and rerun.")
                dim = d
            both = np.concatenate([idx, sk])
            if len(both) and (both.min() < 0 or both.max() >= num_samples):
                raise CacheError(f"Shard '{shard}' has indices outside [0, {num_samples}); delete '{self.path}' and rerun.")
            clash = (embedded[idx] > 0) & (labels_all[idx] != labels)
            if clash.any():
                i = int(idx[clash][0])
                raise CacheError(f"Sample {i} has label {int(labels[clash][0])} in shard '{shard.name}' but"
                                 f" {int(labels_all[i])} in another shard of '{self.path}': the dataset changed between"
                                 " two attempts. Delete the folder and re-embed.")
            np.add.at(embedded, idx, 1)
            labels_all[idx] = labels
            skipped_any[sk] = True
        missing = np.flatnonzero((embedded == 0) & ~skipped_any)
        if len(missing):
            raise CacheError(
                f"{len(missing)} of {num_samples} samples have no embedding in '{self.path}' "
                f"(first: {missing[:10].tolist()}); rerun the same command to resume."
            )
        is_skipped = embedded == 0
        indices = np.flatnonzero(~is_skipped)
        row_of = np.full(num_samples, -1, dtype=np.int64)
        row_of[indices] = np.arange(len(indices))
        dim = dim or 0
        duplicates = 0
        fd, tmp = tempfile.mkstemp(prefix=".embeddings.", suffix=".npy", dir=self.path)
        os.close(fd)
        try:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(indices), dim))
            written = np.zeros(num_samples, dtype=bool)
            for shard in shards:
                try:
                    with np.load(shard, allow_pickle=False) as z:
                        idx, emb = z["indices"].astype(np.int64), z["embeddings"]
                except OSError:
                    raise
                except SHARD_FORMAT_ERRORS as e:  # a bit flip inside the embeddings (CRC) shows only here
                    raise self._damaged(shard, e) from e
                if not len(idx):
                    continue
                new = np.zeros(len(idx), dtype=bool)
                new[np.unique(idx, return_index=True)[1]] = True
                new &= ~written[idx]
                mm[row_of[idx[new]]] = emb[new]
                written[idx[new]] = True
                if not new.all():
                    duplicates += _check_duplicates(mm, row_of, idx[~new], emb[~new], shard, self.path)
            mm.flush()
            del mm
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            replace_durably(tmp, self.path / "embeddings.npy")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        atomic_save_npy(self.path / "labels.npy", labels_all[indices])
        atomic_save_npy(self.path / "indices.npy", indices)
        atomic_save_npy(self.path / "skipped.npy", np.flatnonzero(is_skipped))
        if duplicates:
            log.warning("%d sample(s) were embedded twice in '%s' (overlapping attempts); the rows agreed and were"
                        " kept once.", duplicates, self.path)
        manifest = dict(meta, fingerprint=self.fingerprint, format_version=FORMAT_VERSION,
                        num_samples=num_samples, num_embedded=int(len(indices)),
                        num_skipped=int(is_skipped.sum()), dim=int(dim), duplicates_merged=int(duplicates))
        atomic_write_json(self.path / MANIFEST, manifest, default=str)
        for shard in shards:
            shard.unlink(missing_ok=True)
        if not self.damaged_dir.exists():
            shutil.rmtree(self.shards_dir, ignore_errors=True)
        return self.load()

    # -- reading -------------------------------------------------------------------------------
    def load(self, mmap: bool = True) -> EmbeddingSet:
        """The merged result, checked against the manifest (file present, shape, dtype, row counts)."""
        if not self.is_complete:
            raise CacheError(f"Cache entry '{self.path}' is incomplete; rerun the embedding to resume it.")
        fix = f"delete '{self.path}' and re-embed (the same command rebuilds it)"
        try:
            meta = json.loads((self.path / MANIFEST).read_text())
        except ValueError as e:
            raise CacheError(f"The manifest of cache entry '{self.path}' is not valid JSON ({e}); {fix}.") from e
        n = meta.get("num_embedded")
        expect = {"embeddings.npy": ((n, meta.get("dim")), np.float32), "labels.npy": ((n,), np.int64),
                  "indices.npy": ((n,), np.int64), "skipped.npy": ((meta.get("num_skipped"),), np.int64)}
        arrays = {}
        for name, (shape, dtype) in expect.items():
            path = self.path / name
            try:
                a = np.load(path, mmap_mode="r" if (mmap and name == "embeddings.npy") else None, allow_pickle=False)
            except FileNotFoundError as e:
                raise CacheError(f"Cache entry '{self.path}' has a manifest but no '{name}'; {fix}.") from e
            except (ValueError, EOFError) as e:
                raise CacheError(f"'{path}' is damaged ({type(e).__name__}: {e}); {fix}.") from e
            bad_shape = len(a.shape) != len(shape) or any(w is not None and s != w for s, w in zip(a.shape, shape))
            if bad_shape or a.dtype != dtype:
                want = "x".join("?" if w is None else str(w) for w in shape)
                raise CacheError(f"'{path}' holds {a.dtype} {'x'.join(map(str, a.shape))} but the manifest says"
                                 f" {np.dtype(dtype)} {want}; {fix}.")
            arrays[name] = a
        return EmbeddingSet(
            embeddings=arrays["embeddings.npy"],
            labels=arrays["labels.npy"],
            indices=arrays["indices.npy"],
            skipped=arrays["skipped.npy"],
            meta=meta,
        )


def _header_shape(z, name: str) -> tuple:
    """Shape of array ``name`` of an open ``.npz``, read from its header only (no data)."""
    with z.zip.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
    return shape


def _shard_index(z) -> tuple[np.ndarray, np.ndarray]:
    """A shard's indices and skipped indices, after checking it has every array at matching lengths."""
    idx, sk = z["indices"].astype(np.int64), z["skipped"].astype(np.int64)
    n_labels, emb = len(z["labels"]), _header_shape(z, "embeddings")
    if idx.ndim != 1 or sk.ndim != 1 or n_labels != len(idx) or (len(idx) and (len(emb) != 2 or emb[0] != len(idx))):
        raise ValueError(f"arrays of mismatched lengths (indices {idx.shape}, labels {n_labels}, embeddings {emb})")
    return idx, sk


def _check_duplicates(mm, row_of, idx, emb, shard: Path, entry: Path) -> int:
    """Compare rows of samples already merged with this shard's copies; raise if any pair disagrees."""
    kept = np.asarray(mm[row_of[idx]], dtype=np.float64)
    new = np.asarray(emb, dtype=np.float64)
    scale = np.maximum(np.maximum(np.linalg.norm(kept, axis=1), np.linalg.norm(new, axis=1)), 1e-12)
    err = np.linalg.norm(kept - new, axis=1) / scale
    if (err > DUPLICATE_RTOL).any():
        i = int(np.argmax(err))
        raise CacheError(f"Sample {int(idx[i])} was embedded twice in '{entry}' with different results (relative"
                         f" difference {err[i]:.3g} > {DUPLICATE_RTOL:g}; shard '{shard.name}'): the inputs changed"
                         " between two attempts. Delete the folder and re-embed.")
    return len(idx)


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
