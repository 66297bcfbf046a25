"""The study's figures: an AMI heatmap, silhouette (UMAP) vs AMI with Spearman's rho, tuned vs default."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .._atomic import atomic_savefig  # noqa: E402


def plot_heatmap(matrix: np.ndarray, encoders: list[str], datasets: list[str], path: Path, title: str) -> Path:
    """Encoders × datasets coloured by AMI, each cell annotated; missing cells blank."""
    h = max(2.5, 0.45 * len(encoders) + 1.5)
    w = max(4.0, 0.6 * len(datasets) + 2.5)
    fig, ax = plt.subplots(figsize=(w, h))
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0, vmax=max(1e-9, np.nanmax(matrix))
                   if np.isfinite(matrix).any() else 1, aspect="auto")
    ax.set_xticks(range(len(datasets)), datasets, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(encoders)), encoders, fontsize=8)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if not math.isnan(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] < 0.6 * np.nanmax(matrix) else "black")
    fig.colorbar(im, ax=ax, label="AMI")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_silhouette_vs_ami(panels: dict[str, dict], path: Path, silhouette_key: str) -> Path:
    """One panel per method: a point per (encoder, dataset), coloured by encoder, Spearman's rho in the title.

    ``panels`` maps method → ``{"x": [...], "y": [...], "encoders": [...], "rho": float}``.
    """
    n = max(1, len(panels))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    encoders = sorted({e for p in panels.values() for e in p["encoders"]})
    colours = {e: plt.get_cmap("tab10" if len(encoders) <= 10 else "tab20")(i % 20) for i, e in enumerate(encoders)}
    for ax, (method, p) in zip(axes.flat, panels.items()):
        for e in encoders:
            idx = [i for i, pe in enumerate(p["encoders"]) if pe == e]
            if idx:
                ax.scatter(np.asarray(p["x"])[idx], np.asarray(p["y"])[idx], s=22, color=colours[e], label=e)
        rho = p["rho"]
        ax.set_title(f"{method}: Spearman ρ = " + ("n/a" if math.isnan(rho) else f"{rho:.2f}") + f" (n={len(p['x'])})",
                     fontsize=9)
        ax.set_xlabel(f"silhouette ({silhouette_key})", fontsize=8)
        ax.set_ylabel("AMI", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * math.ceil(len(labels) / 4) if handles else 0, 1, 1))
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_tuned_vs_default(default: list[float], tuned: list[float], labels: list[str], path: Path) -> Path:
    """Tuned AMI against default AMI, one point per (encoder, dataset, setup); above the diagonal = tuning helped."""
    fig, ax = plt.subplots(figsize=(5, 5))
    setups = sorted(set(labels))
    for k, s in enumerate(setups):
        idx = [i for i, lab in enumerate(labels) if lab == s]
        ax.scatter(np.asarray(default)[idx], np.asarray(tuned)[idx], s=24, label=s, color=plt.get_cmap("tab10")(k % 10))
    hi = max([1e-3, *default, *tuned])
    ax.plot([0, hi], [0, hi], "k--", lw=0.8)
    ax.set_xlabel("AMI, default hyperparameters")
    ax.set_ylabel("AMI, tuned on validation")
    ax.legend(fontsize=7)
    ax.set_title("Tuned vs default", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path
