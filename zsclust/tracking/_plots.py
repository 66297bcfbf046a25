"""Figures logged as MLflow artifacts: a contingency matrix and a 2-D UMAP scatter."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from sklearn.metrics.cluster import contingency_matrix  # noqa: E402


def plot_contingency(labels_true, labels_pred, path: Path, class_names=None, max_size: int = 200) -> Path:
    """True classes × predicted clusters, clusters reordered by Hungarian matching so a perfect result is diagonal."""
    t, p = np.asarray(labels_true), np.asarray(labels_pred)
    classes, clusters = np.unique(t), np.unique(p)
    m = contingency_matrix(t, p)
    rows, cols = linear_sum_assignment(-m)
    order = list(cols[np.argsort(rows)]) + [c for c in range(m.shape[1]) if c not in set(cols)]
    m = m[:, order][:max_size, :max_size]
    fig, ax = plt.subplots(figsize=(min(12, 3 + 0.25 * m.shape[1]), min(12, 3 + 0.25 * m.shape[0])))
    im = ax.imshow(np.log1p(m), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("predicted cluster (matched order; -1 = noise)")
    ax.set_ylabel("true class")
    if m.shape[0] <= 40:
        names = [str(class_names[c]) if class_names is not None and 0 <= c < len(class_names) else str(c) for c in classes]
        ax.set_yticks(range(m.shape[0]), names[: m.shape[0]], fontsize=7)
    if m.shape[1] <= 40:
        ax.set_xticks(range(m.shape[1]), [str(clusters[c]) for c in order][: m.shape[1]], fontsize=7, rotation=90)
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scatter(xy: np.ndarray, labels_true, labels_pred, path: Path, title: str = "") -> Path:
    """Side by side: the 2-D UMAP coloured by true label and by predicted cluster (noise in grey)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    size = float(np.clip(4000 / max(len(xy), 1), 1, 20))  # readable for 500 points and for 500k
    for ax, lab, name in ((axes[0], labels_true, "true label"), (axes[1], labels_pred, "predicted cluster")):
        lab = np.asarray(lab)
        noise = lab < 0
        if noise.any():
            ax.scatter(xy[noise, 0], xy[noise, 1], s=size, c="lightgrey", label="noise", linewidths=0)
        ax.scatter(xy[~noise, 0], xy[~noise, 1], s=size, c=lab[~noise], cmap="tab20", linewidths=0)
        ax.set_title(f"coloured by {name}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
