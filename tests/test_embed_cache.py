"""The embedding cache under stress: concurrent runs, damaged shards, dead runs' leftovers, edited images,
files that disagree with the manifest, and the plan that every DDP rank follows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, write_image_folder
from zsclust import _atomic
from zsclust.data import build_transform, create_dataset
from zsclust.embed import EmbedOptions, EmbeddingCache, embed, fingerprint_digest, fingerprint_inputs
from zsclust.embed._cache import DUPLICATE_RTOL, CacheEntry
from zsclust.embed._engine import runs_alone
from zsclust.embed._lock import EntryLock
from zsclust.encoders import create_encoder
from zsclust.errors import CacheError

FP32 = dict(precision="32-true", accelerator="cpu", progress=False, num_workers=0)


def reference(encoder, folder, indices=None) -> tuple[np.ndarray, np.ndarray]:
    """A plain fp32 loop, one image at a time, in dataset order."""
    ds = create_dataset(str(folder), "test", transform=build_transform(encoder.data_config))
    indices = range(len(ds)) if indices is None else indices
    with torch.inference_mode():
        feats = [encoder(ds[int(i)]["image"][None]).float() for i in indices]
    return torch.cat(feats).numpy(), np.asarray(ds.labels)[list(indices)]


def entry_with_shards(tmp_path, n=6, dim=4) -> tuple[CacheEntry, np.ndarray]:
    """A cache entry holding two finished shards of a made-up ``n``-sample embedding (no model needed)."""
    entry = EmbeddingCache(tmp_path / "cache").entry("f" * 24)
    rows = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    half = n // 2
    entry.write_shard("r0-a-00000", np.arange(half), rows[:half], np.arange(half) % 2, [])
    entry.write_shard("r0-a-00001", np.arange(half, n), rows[half:], np.arange(half, n) % 2, [])
    return entry, rows


# -- two processes, one cell ------------------------------------------------------------------------
def test_two_embed_processes_started_at_once_share_one_entry(tmp_path, tiny_weights):
    """Two real ``zsclust embed`` runs of one cell: one embeds, the other waits for its lock, then loads.

    The test holds the entry's lock while both start (as a third run would), so they surely overlap:
    both must then wait, and after the release exactly one embeds while the other waits again.
    """
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=16, size=(48, 40))
    cache = tmp_path / "cache"
    enc = create_encoder("test_resnet", weights=tiny_weights)
    ds = create_dataset(str(folder), "test", transform=build_transform(enc.data_config))
    entry = EmbeddingCache(cache).entry(fingerprint_digest(fingerprint_inputs(enc, ds, "32-true")))
    args = ["embed", "--encoder", "test_resnet", "--weights", tiny_weights, "--dataset", folder, "--cache-dir", cache,
            "--accelerator", "cpu", "--precision", "32-true", "--batch-size", "2", "--shard-size", "4",
            "--num-workers", "0", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    held = EntryLock(entry.lock_path)
    assert held.acquire(timeout=0)
    logs = [tmp_path / f"run{k}.log" for k in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "zsclust", *map(str, args)], env=env, stdout=open(log, "w"),
                              stderr=subprocess.STDOUT) for log in logs]
    try:
        deadline = time.time() + 300
        while not all("Waiting for another process" in log.read_text() for log in logs):
            assert time.time() < deadline and all(p.poll() is None for p in procs), [log.read_text() for log in logs]
            time.sleep(0.2)
    finally:
        held.release()
    codes = [p.wait(timeout=600) for p in procs]
    outs = [log.read_text() for log in logs]
    assert codes == [0, 0], outs
    assert sorted("embedded 32 samples" in o for o in outs) == [False, True], outs
    assert sum("cache hit" in o for o in outs) == 1, outs

    result = entry.load()
    np.testing.assert_array_equal(result.indices, np.arange(32))  # every sample once, in order
    assert result.meta["duplicates_merged"] == 0
    assert not entry.shards_dir.exists() and not list(entry.path.glob(".*.npy")) and not list(entry.path.glob(".*.tmp"))
    ref, labels = reference(enc, folder)
    np.testing.assert_allclose(result.embeddings, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(result.labels, labels)
    assert [e["fingerprint"] for e in EmbeddingCache(cache).list()] == [entry.fingerprint]


def test_the_lock_is_released_when_its_process_dies(tmp_path):
    path = tmp_path / "entry" / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from zsclust.embed._lock import EntryLock
        assert EntryLock({str(path)!r}).acquire(timeout=0)
        print("held", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = EntryLock(path)
        assert not lock.acquire(timeout=0.3)
    finally:
        holder.kill()
        holder.wait()
    assert lock.acquire(timeout=5)  # the kernel released it: nothing to delete by hand
    lock.release()


# -- damaged shards -------------------------------------------------------------------------------
def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garbage(p: Path):
    p.write_bytes(b"not a zip file at all")


def _empty(p: Path):
    p.write_bytes(b"")


def _missing_array(p: Path):
    np.savez(p.open("wb"), indices=np.arange(3), labels=np.zeros(3, np.int64), skipped=np.zeros(0, np.int64))


def _short_labels(p: Path):
    np.savez(p.open("wb"), indices=np.arange(3), labels=np.zeros(2, np.int64), skipped=np.zeros(0, np.int64),
             embeddings=np.zeros((3, 4), np.float32))


@pytest.mark.parametrize("damage", [_truncate, _garbage, _empty, _missing_array, _short_labels])
def test_a_damaged_shard_is_moved_aside_not_deleted(tmp_path, damage):
    entry, _ = entry_with_shards(tmp_path)
    bad = entry.shard_files()[0]
    damage(bad)
    np.testing.assert_array_equal(entry.done_indices(), [3, 4, 5])
    assert not bad.exists()
    assert (entry.damaged_dir / bad.name).is_file()  # kept for a look
    assert [p.name for p in entry.shard_files()] == ["shard-r0-a-00001.npz"]


def test_a_bit_flip_found_only_by_the_merge_sets_the_shard_aside_and_says_rerun(tmp_path):
    entry, _ = entry_with_shards(tmp_path, dim=4096)  # 48 kB of rows: planning reads only their header
    shard = entry.shard_files()[0]
    raw = bytearray(shard.read_bytes())
    at = raw.index(b"embeddings.npy") + 40_000  # deep inside the rows: indices and header stay readable
    raw[at] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert len(entry.done_indices()) == 6  # the index arrays are fine
    with pytest.raises(CacheError, match="damaged.*Rerun the same command"):
        entry.finalize(6, {})
    assert (entry.damaged_dir / shard.name).is_file() and not entry.is_complete
    np.testing.assert_array_equal(entry.done_indices(), [3, 4, 5])


def test_an_os_error_reading_a_shard_propagates_and_keeps_the_shard(tmp_path):
    """An I/O error (EIO, as a flaky network file system gives) says nothing about the shard's format: it
    must propagate, and the shard must be neither deleted nor set aside. Reading /proc/self/mem at offset
    0 is a real EIO from read(), behind a file that stat() calls regular."""
    if not os.path.exists("/proc/self/mem"):
        pytest.skip("needs Linux's /proc/self/mem for a real read error")
    entry, _ = entry_with_shards(tmp_path)
    flaky = entry.shards_dir / "shard-r0-a-00002.npz"
    flaky.symlink_to("/proc/self/mem")
    with pytest.raises(OSError):
        entry.done_indices()
    assert flaky.is_symlink() and len(entry.shard_files()) == 3 and not entry.damaged_dir.exists()


# -- the merge --------------------------------------------------------------------------------------
def test_the_merge_keeps_agreeing_duplicates_once(tmp_path):
    entry, rows = entry_with_shards(tmp_path)
    noise = rows[2:5] * (1 + DUPLICATE_RTOL / 10)  # another attempt's rows for samples 2-4: close, not equal
    entry.write_shard("r0-b-00000", [2, 3, 4], noise, [0, 1, 0], [])
    entry.write_shard("r1-b-00000", [], np.zeros((0, 4)), [], [5])  # skipped there, embedded elsewhere
    result = entry.finalize(6, {})
    np.testing.assert_array_equal(result.indices, np.arange(6))
    np.testing.assert_array_equal(result.embeddings, rows)  # the first shard's rows
    assert result.meta["duplicates_merged"] == 3 and len(result.skipped) == 0


def test_the_merge_refuses_duplicates_that_disagree(tmp_path):
    entry, rows = entry_with_shards(tmp_path)
    entry.write_shard("r0-b-00000", [1], rows[1:2] * 1.5, [1], [])
    with pytest.raises(CacheError, match="Sample 1 was embedded twice .* different results"):
        entry.finalize(6, {})
    assert not entry.is_complete


def test_the_merge_refuses_duplicates_with_another_label(tmp_path):
    entry, rows = entry_with_shards(tmp_path)
    entry.write_shard("r0-b-00000", [1], rows[1:2], [0], [])
    with pytest.raises(CacheError, match="Sample 1 has label 0 .* but 1"):
        entry.finalize(6, {})


# -- leftovers of dead runs --------------------------------------------------------------------------
def test_temporaries_of_a_killed_merge_are_removed_at_the_next_start(tmp_path, image_folder, tiny_weights):
    enc = create_encoder("test_resnet", weights=tiny_weights)
    ds = create_dataset(str(image_folder), "test", transform=build_transform(enc.data_config))
    entry = EmbeddingCache(tmp_path / "c").entry(fingerprint_digest(fingerprint_inputs(enc, ds, "32-true")))
    ref, labels = reference(enc, image_folder, range(20))
    entry.write_shard("r0-dead-00000", np.arange(20), ref, labels, [])
    # What a run killed in the merge and in two atomic writes leaves, named as they name them.
    leftovers = [entry.path / ".embeddings.k1ll3d.npy", entry.path / ".labels.npy.k1ll3d.tmp",
                 entry.shards_dir / ".shard-r0-dead-00001.npz.k1ll3d.tmp"]
    np.lib.format.open_memmap(leftovers[0], mode="w+", dtype=np.float32, shape=(24, 96)).flush()
    for p in leftovers[1:]:
        p.write_bytes(b"partial")
    result = embed(enc, str(image_folder), options=EmbedOptions(cache_dir=str(tmp_path / "c"), **FP32))
    assert result.fingerprint == entry.fingerprint
    assert result.meta["resumed_from"] == 20 and result.meta["samples_embedded_this_run"] == 4
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in entry.path.iterdir()) == [
        ".lock", "embeddings.npy", "indices.npy", "labels.npy", "manifest.json", "skipped.npy"]


def test_atomic_writes_fsync_the_folder_after_the_rename(tmp_path, monkeypatch):
    import stat

    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    _atomic.atomic_write_bytes(tmp_path / "x.bin", lambda f: f.write(b"data"))
    assert synced == [False, True]  # the file, then its folder
    entry, _ = entry_with_shards(tmp_path)
    synced.clear()
    entry.finalize(6, {})
    assert synced.count(True) >= 5  # embeddings.npy, labels, indices, skipped and the manifest


# -- load checks the files against the manifest ------------------------------------------------------
def _truncate_embeddings(entry):
    p = entry.path / "embeddings.npy"
    p.write_bytes(p.read_bytes()[:-8])


def _drop_labels(entry):
    (entry.path / "labels.npy").unlink()


def _short_indices(entry):
    np.save(entry.path / "indices.npy", np.arange(5))


def _float64_embeddings(entry):
    np.save(entry.path / "embeddings.npy", np.zeros((6, 4)))


def _wrong_dim(entry):
    np.save(entry.path / "embeddings.npy", np.zeros((6, 3), np.float32))


def _bad_manifest(entry):
    (entry.path / "manifest.json").write_text("{ not json")


@pytest.mark.parametrize("spoil", [_truncate_embeddings, _drop_labels, _short_indices, _float64_embeddings,
                                   _wrong_dim, _bad_manifest])
@pytest.mark.parametrize("mmap", [True, False])
def test_load_checks_the_files_against_the_manifest(tmp_path, spoil, mmap):
    entry, rows = entry_with_shards(tmp_path)
    good = entry.finalize(6, {})
    np.testing.assert_array_equal(good.embeddings, rows)
    del good
    spoil(entry)
    with pytest.raises(CacheError, match="delete .* and re-embed"):
        entry.load(mmap=mmap)


# -- image folders: an edit re-embeds --------------------------------------------------------------
def test_an_edited_image_of_the_same_size_is_embedded_again(tmp_path, tiny_weights):
    from PIL import Image

    folder = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in range(2):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"c{c}" / f"{i}.bmp")
    opts = EmbedOptions(cache_dir=str(tmp_path / "c"), **FP32)
    first = embed("test_resnet", str(folder), weights=tiny_weights, options=opts)
    edited = folder / "c1" / "0.bmp"
    size, mtime = edited.stat().st_size, edited.stat().st_mtime_ns
    Image.fromarray(255 - np.asarray(Image.open(edited))).save(edited)  # BMP: same size, other pixels
    os.utime(edited, ns=(mtime + 10**9, mtime + 10**9))  # as a later edit would stamp it
    assert edited.stat().st_size == size
    second = embed("test_resnet", str(folder), weights=tiny_weights, options=opts)
    assert second.fingerprint != first.fingerprint
    assert second.meta["samples_embedded_this_run"] == 6
    changed = np.abs(np.asarray(second.embeddings) - np.asarray(first.embeddings)).max(axis=1) > 1e-4
    assert changed.tolist() == [False, False, False, True, False, False]


# -- DDP: every rank follows global zero's plan -----------------------------------------------------
def test_who_decides_alone(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    one, two = EmbedOptions(accelerator="cpu", devices=1), EmbedOptions(accelerator="cpu", devices=2)
    assert runs_alone(one) and runs_alone(two)  # before Lightning launches the other ranks
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runs_alone(one) and not runs_alone(two)
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not runs_alone(two)


DDP_EMBED = textwrap.dedent(
    """
    import sys
    import lightning.pytorch as pl
    import numpy as np
    import torch
    from zsclust.embed import EmbedOptions, embed
    from zsclust.encoders import create_encoder

    weights, folder, cache, extra = sys.argv[1:5]
    extra = int(extra)

    class ShardAppears(pl.Callback):
        # A finished shard for sample `extra` shows up once the ranks have started, as ranks on
        # other nodes may see a shard another writer just finished (or not yet).
        def setup(self, trainer, pl_module, stage):
            if not trainer.is_global_zero:
                return
            writer = next(cb for cb in trainer.callbacks if type(cb).__name__ == "ShardWriter")
            data = trainer.datamodule  # its loader yields uint8 images, its batch transform normalises
            item = data.dataset[extra]
            with torch.inference_mode():
                row = pl_module.encoder(data.batch_transform(item["image"][None])).float().numpy()
            writer.entry.write_shard("other-writer", [extra], row, [item["label"]], [])

    enc = create_encoder("test_resnet", weights=weights)
    result = embed(enc, folder, callbacks=[ShardAppears()], options=EmbedOptions(
        cache_dir=cache, devices=2, batch_size=2, shard_size=2, num_workers=0, precision="32-true",
        accelerator="cpu", progress=False))
    if result is not None:
        print("RESULT", result.meta["resumed_from"], result.meta["samples_embedded_this_run"],
              result.meta["duplicates_merged"], flush=True)
    """
)


def test_ddp_ranks_follow_global_zeros_plan(tmp_path, tiny_weights):
    """Seven of eight samples are done; the eighth is planned on global zero, and a shard for it appears
    while the ranks start. Ranks planning alone would split different lists (one rank with nothing to
    do: Lightning refuses, or a hang); following global zero, both ranks embed the one sample (every rank
    gets a batch) and the merge keeps the three agreeing rows once."""
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=4, size=(40, 32))
    enc = create_encoder("test_resnet", weights=tiny_weights)
    ds = create_dataset(str(folder), "test", transform=build_transform(enc.data_config))
    entry = EmbeddingCache(tmp_path / "c").entry(fingerprint_digest(fingerprint_inputs(enc, ds, "32-true")))
    ref, labels = reference(enc, folder)
    entry.write_shard("r0-old-00000", np.arange(7), ref[:7], labels[:7], [])
    script = tmp_path / "ddp_embed.py"
    script.write_text(DDP_EMBED)
    proc = subprocess.run([sys.executable, str(script), str(tiny_weights), str(folder), str(tmp_path / "c"), "7"],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESULT 7 1 2" in proc.stdout, proc.stdout + proc.stderr
    result = entry.load()
    np.testing.assert_array_equal(result.indices, np.arange(8))
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_allclose(result.embeddings, ref, rtol=1e-4, atol=1e-5)
    assert json.loads((entry.path / "manifest.json").read_text())["duplicates_merged"] == 2


DDP_CELLS = textwrap.dedent(
    """
    import os, sys
    import zsclust.embed._plan as plan
    from zsclust.embed import EmbedOptions, embed
    from zsclust.encoders import create_encoder

    plan.KEEPALIVE_SECONDS = 0.5  # several keep-alive rounds while the lock is held
    weights, folder, cache = sys.argv[1:4]
    enc = create_encoder("test_resnet", weights=weights)
    opts = EmbedOptions(cache_dir=cache, devices=2, batch_size=2, shard_size=2, num_workers=0,
                        precision="32-true", accelerator="cpu", progress=False)
    for k, prep in enumerate(["model", "study", "model"]):
        r = embed(enc, folder, preprocessing=prep, options=opts)
        if r is not None:
            print("CELL", k, len(r), r.meta.get("samples_embedded_this_run"), flush=True)
    """
)


def test_ddp_cells_after_the_launch_wait_for_a_lock_and_agree_on_cache_hits(tmp_path, tiny_weights):
    """A DDP script embeds three cells. From the second on, every rank is a launched rank: global zero
    plans inside the trainer. The second cell's lock is held elsewhere for a while (the ranks must keep
    waiting, not time out); the third is the first again, a cache hit that every rank must agree on."""
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=4, size=(40, 32))
    enc = create_encoder("test_resnet", weights=tiny_weights)
    ds = create_dataset(str(folder), "test", transform=build_transform(enc.data_config, "study"))
    study_entry = EmbeddingCache(tmp_path / "c").entry(
        fingerprint_digest(fingerprint_inputs(enc, ds, "32-true", "study")))
    held = EntryLock(study_entry.lock_path)
    assert held.acquire(timeout=0)
    script, log = tmp_path / "ddp_cells.py", tmp_path / "run.log"
    script.write_text(DDP_CELLS)
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_weights), str(folder), str(tmp_path / "c")],
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while "Waiting for another process" not in log.read_text():
            assert time.time() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(3)  # a few keep-alive broadcasts
        assert proc.poll() is None and "CELL 1" not in log.read_text()
    finally:
        held.release()
    assert proc.wait(timeout=600) == 0, log.read_text()
    out = log.read_text()
    assert "CELL 0 8 8" in out and "CELL 1 8 8" in out and "CELL 2 8 None" in out, out
    np.testing.assert_array_equal(study_entry.load().indices, np.arange(8))
