"""Embedding throughput: zsclust's engine against a plain fp32 loop, on the same image folder, in one run.

    python benchmarks/embed_throughput.py [--images 512] [--folder DIR] [--encoder NAME]
    python benchmarks/embed_throughput.py --images 2000 --whole-process   # each side a whole process
    python benchmarks/embed_throughput.py --images 2000 --loader          # the loader alone, per image

The plain loop is what people write first: a timm model, torchvision's ImageFolder, a DataLoader
with default settings, fp32, no AMP. zsclust runs ``embed()`` end to end (trainer set-up, loader,
bf16 autocast + channels_last where the CPU/GPU supports it, shard writes and the merge). It prints
both images/s, their ratio, the model's pure forward throughput in the engine's precision, and the
cosine similarity of zsclust's embeddings to the fp32 ones (faithfulness).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_folder(root: Path, n: int, classes: int = 8, size=(500, 375), seed=0) -> Path:
    """ImageNet-like JPEGs (about 500×375, smooth textures) in ``classes`` folders; reused if present."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == n:
        return root
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % classes
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        low = rng.random((size[1] // 25, size[0] // 25, 3)) * 255
        img = Image.fromarray(low.astype(np.uint8)).resize(size, Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 12, (size[1], size[0], 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(d / f"{i:05d}.jpg", quality=90)
    return root


def plain_loop(model: torch.nn.Module, folder: Path, data_config: dict, batch_size: int) -> tuple[float, np.ndarray]:
    from torchvision import datasets, transforms

    h = data_config["input_size"][-1]
    tf = transforms.Compose([
        transforms.Resize(int(h / data_config["crop_pct"]),
                          interpolation=transforms.InterpolationMode(data_config["interpolation"])),
        transforms.CenterCrop(h),
        transforms.ToTensor(),
        transforms.Normalize(data_config["mean"], data_config["std"]),
    ])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(folder), tf), batch_size=batch_size)
    model = model.eval().float()
    with torch.no_grad():
        model(torch.zeros(2, *data_config["input_size"]))  # warm-up, not timed
    start = time.perf_counter()
    out = []
    with torch.no_grad():
        for x, _ in loader:
            out.append(model(x))
    secs = time.perf_counter() - start
    return len(loader.dataset) / secs, torch.cat(out).numpy()


def pure_forward(model: torch.nn.Module, data_config: dict, batch_size: int, precision: str, device: str) -> float:
    x = torch.randn(batch_size, *data_config["input_size"], device=device).contiguous(memory_format=torch.channels_last)
    model = model.to(device, memory_format=torch.channels_last)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=precision.endswith("mixed")):
        for _ in range(2):
            model(x)
        sync()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 10 or n < 3:
            model(x)
            n += 1
        sync()
    return n * batch_size / (time.perf_counter() - start)


PLAIN_PROCESS = """
import sys, time, torch
from torchvision import datasets, transforms
from zsclust.encoders import create_encoder  # the same weights as zsclust's side (timm + a local file)
model, folder = create_encoder(sys.argv[1]), sys.argv[2]
c = model.data_config
h = c["input_size"][-1]
tf = transforms.Compose([transforms.Resize(int(h / c["crop_pct"]), interpolation=transforms.InterpolationMode(
    c["interpolation"])), transforms.CenterCrop(h), transforms.ToTensor(), transforms.Normalize(c["mean"], c["std"])])
loader = torch.utils.data.DataLoader(datasets.ImageFolder(folder, tf), batch_size=32)
model.eval()
with torch.no_grad():
    out = torch.cat([model(x) for x, _ in loader])
print(out.shape)
"""


def whole_process(args, folder: Path, n: int) -> None:
    """The issue's measure: each side as a whole process (imports, model set-up, the loop), timed from outside."""
    import subprocess
    import sys

    def timed(argv) -> float:
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        return time.perf_counter() - start

    plain, ours = [], []
    for _ in range(args.repeat):
        plain.append(timed([sys.executable, "-c", PLAIN_PROCESS, args.encoder, str(folder)]))
        with tempfile.TemporaryDirectory() as cache:
            ours.append(timed([sys.executable, "-m", "zsclust", "embed", "--encoder", args.encoder, "--dataset",
                               str(folder), "--cache-dir", cache, "--no-progress", "--accelerator", args.accelerator]))
    print(f"whole process, {n} images (best of {args.repeat}; all runs in s: plain {', '.join(f'{s:.1f}' for s in plain)}"
          f"; zsclust {', '.join(f'{s:.1f}' for s in ours)})")
    print(f"plain fp32 script:      {min(plain):8.1f} s  ({n / min(plain):.1f} img/s)")
    print(f"zsclust embed:          {min(ours):8.1f} s  ({n / min(ours):.1f} img/s)")
    print(f"ratio zsclust / plain:  {min(plain) / min(ours):8.2f}x")


def loader_cost(args, folder: Path) -> None:
    """The loader alone (decode, resize, crop, float, normalise, channels_last), per image: normalising each
    image in the loader against normalising each batch after it (what the engine does)."""
    import copy

    from torch.utils.data import DataLoader

    from zsclust.data import build_transform, collate_batch, create_dataset
    from zsclust.data._transforms import split_for_batches
    from zsclust.encoders import create_encoder

    whole = build_transform(create_encoder(args.encoder, weights=args.weights).data_config)
    per_image = create_dataset(str(folder), "test", transform=whole)
    per_batch = copy.copy(per_image)
    per_batch.transform, batch_transform = split_for_batches(whole)

    def ms_per_image(dataset, on_batch) -> float:
        start, n = time.perf_counter(), 0
        for batch in DataLoader(dataset, batch_size=32, collate_fn=collate_batch):
            n += len(on_batch(batch["image"]).contiguous(memory_format=torch.channels_last))
        return (time.perf_counter() - start) / n * 1e3

    a = [ms_per_image(per_image, lambda x: x) for _ in range(args.repeat)]
    b = [ms_per_image(per_batch, batch_transform) for _ in range(args.repeat)]
    print(f"loader, main process, {len(per_image)} images (runs in ms/image: {', '.join(f'{v:.3f}' for v in a)}"
          f" | {', '.join(f'{v:.3f}' for v in b)})")
    print(f"normalised per image (in the loader): {min(a):.3f} ms/image")
    print(f"normalised per batch (the engine):    {min(b):.3f} ms/image")


def main() -> None:
    from zsclust.embed import EmbedOptions, embed, resolve_precision
    from zsclust.embed._optimize import fold_batchnorm
    from zsclust.encoders import create_encoder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--folder", type=Path, default=None, help="an existing image folder (class/xxx.jpg)")
    p.add_argument("--encoder", default="tf_efficientnet_lite0.pypi_in1k")
    p.add_argument("--weights", default=None)
    p.add_argument("--batch-size", type=int, default=None, help="zsclust's batch size [its default]")
    p.add_argument("--plain-batch-size", type=int, default=32)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--skip-plain", action="store_true", help="only zsclust and the pure forward pass (GPU runs)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each side; the best is reported [2]")
    p.add_argument("--whole-process", action="store_true",
                   help="time `zsclust embed` and a plain script as whole processes from outside (imports included)")
    p.add_argument("--loader", action="store_true", help="time the loader alone: per-image against per-batch normalising")
    args = p.parse_args()

    folder = args.folder or make_folder(Path(tempfile.gettempdir()) / f"zsclust-bench-{args.images}", args.images)
    if args.whole_process:
        whole_process(args, folder, sum(1 for _ in folder.rglob("*.jpg")))
        return
    if args.loader:
        loader_cost(args, folder)
        return
    encoder = create_encoder(args.encoder, weights=args.weights)
    cfg = encoder.data_config
    device = "cuda" if args.accelerator in ("gpu", "cuda") or (args.accelerator == "auto" and torch.cuda.is_available()) else "cpu"
    precision = resolve_precision("auto", "gpu" if device == "cuda" else "cpu")
    n = sum(1 for _ in folder.rglob("*.jpg"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    print(f"encoder: {encoder.name} input {cfg['input_size']}  images: {n} in {folder}")

    plain_ips, plain_emb = (None, None)
    if not args.skip_plain:
        runs = [plain_loop(encoder, folder, cfg, args.plain_batch_size) for _ in range(args.repeat)]
        plain_ips, plain_emb = max(runs, key=lambda r: r[0])
        print(f"plain fp32 loop:        {plain_ips:8.1f} img/s  (runs: {', '.join(f'{r[0]:.1f}' for r in runs)})")

    secs_all = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as cache:  # a fresh cache: every run embeds everything
            opts = EmbedOptions(cache_dir=cache, progress=False, accelerator=args.accelerator, batch_size=args.batch_size)
            start = time.perf_counter()
            result = embed(encoder, str(folder), options=opts)
            secs_all.append(time.perf_counter() - start)
            z_emb = np.array(result.embeddings)
    secs = min(secs_all)
    z_ips = n / secs
    print(f"zsclust embed ({precision}): {z_ips:8.1f} img/s  ({secs:.1f} s end to end; runs: "
          f"{', '.join(f'{n / s:.1f}' for s in secs_all)})")
    bs = args.batch_size or (256 if device == "cuda" else 32)
    fwd = pure_forward(encoder, cfg, bs, precision, device)
    print(f"pure forward ({precision}, channels_last): {fwd:8.1f} img/s  -> zsclust reaches {z_ips / fwd:.0%} of it")
    folded, n_folded = fold_batchnorm(encoder, check_input=torch.rand(2, *cfg["input_size"]))
    if n_folded:
        f_fwd = pure_forward(folded, cfg, bs, precision, device)
        print(f"pure forward, {n_folded} BatchNorms folded (what the engine runs): {f_fwd:8.1f} img/s "
              f"-> zsclust reaches {z_ips / f_fwd:.0%} of it")
    if plain_ips:
        print(f"ratio zsclust / plain:  {z_ips / plain_ips:8.2f}x")
        cos = (z_emb * plain_emb).sum(1) / (np.linalg.norm(z_emb, axis=1) * np.linalg.norm(plain_emb, axis=1))
        print(f"cosine vs fp32: min {cos.min():.5f}  mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
