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


def plot_deltas(deltas, groups: list[str], path: Path) -> Path:
    """AMI difference to the supervised reference (percentage points), mean ± std over a group's datasets.

    One panel per dataset group (rows) and architecture (columns); a bar per encoder, green above
    zero and red below, labelled with the paired t-test's p and the number of datasets.
    """
    archs = list(dict.fromkeys(d.architecture for d in deltas))
    groups = [g for g in groups if any(d.group == g for d in deltas)]
    per_panel = max(len({d.encoder for d in deltas if d.architecture == a}) for a in archs)
    fig, axes = plt.subplots(len(groups), len(archs), figsize=(max(6.5, 5.4 * len(archs)), 0.42 * per_panel * len(groups)
                                                                + 0.9 * len(groups) + 0.6),
                             squeeze=False, sharex=True)
    lim = max([abs(d.mean) + (0 if math.isnan(d.std) else d.std) for d in deltas] + [1.0]) * 1.35
    for c, arch in enumerate(archs):
        encs = list(dict.fromkeys(d.encoder for d in deltas if d.architecture == arch))
        ref = next(d.reference for d in deltas if d.architecture == arch)
        for r, g in enumerate(groups):
            ax = axes[r, c]
            cell = {d.encoder: d for d in deltas if d.architecture == arch and d.group == g}
            for y, e in enumerate(encs):
                d = cell.get(e)
                if d is None:
                    continue
                ax.barh(y, d.mean, xerr=None if math.isnan(d.std) else d.std, color="tab:green" if d.mean >= 0
                        else "tab:red", alpha=0.65, ecolor="black", capsize=3, zorder=3)
                p = "" if math.isnan(d.p) else f"p={d.p:.2g}, "
                ax.text(1.02, y, f"{p}n={d.n}", ha="left", va="center", fontsize=7, color="0.25",
                        transform=ax.get_yaxis_transform(), clip_on=False)
            ax.axvline(0, color="black", lw=0.8, zorder=2)
            ax.set_yticks(range(len(encs)), [e.split(".", 1)[-1] for e in encs], fontsize=8)
            ax.set_ylim(per_panel - 0.5, -0.5)  # the same bar height in every panel
            ax.set_xlim(-lim, lim)
            ax.grid(axis="x", alpha=0.3, zorder=0)
            if c == 0:
                ax.set_ylabel(g, fontsize=9)
            if r == 0:
                ax.set_title(f"{arch}: vs {ref.split('.', 1)[-1]}", fontsize=9)
        axes[-1, c].set_xlabel("AMI − supervised AMI (percentage points)", fontsize=8)
    fig.suptitle("AMI (mean over clusterers) against the supervised encoder\nof the same architecture", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.98, 1))
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_ranks(rankings: dict, path: Path) -> Path:
    """Mean rank ± std (1 = best) per item, one panel per ranking (clusterers, encoders)."""
    n = len(rankings)
    tallest = max(len(r.stats) for r in rankings.values())
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 0.38 * tallest + 1.4), squeeze=False)
    for ax, (title, ranking) in zip(axes.flat, rankings.items()):
        stats = [s for s in ranking.stats if not math.isnan(s.mean_rank)]
        colours = plt.get_cmap("tab10")
        for y, s in enumerate(stats):
            ax.barh(y, s.mean_rank, xerr=s.std_rank, color=colours(y % 10), alpha=0.6, ecolor="black", capsize=3,
                    zorder=3)
            ax.plot(s.mean_rank, y, "ok", markerfacecolor="none", zorder=4)
        ax.set_yticks(range(len(stats)), [s.name for s in stats], fontsize=8)
        ax.set_ylim(len(stats) - 0.5, -0.5)
        ax.set_xlim(0, len(stats) + 0.5)
        ax.set_xticks(range(1, len(stats) + 1))
        ax.grid(axis="x", alpha=0.3, zorder=0)
        ax.set_xlabel("rank (1 = best), mean ± std", fontsize=8)
        ax.set_title(f"{title} ({ranking.samples} sample{'' if ranking.samples == 1 else 's'})", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_knn_spearman(matrix: np.ndarray, methods: list[str], ks: list[int], counts: list[int], path: Path) -> Path:
    """Spearman's rho of kNN accuracy vs AMI: clusterers × k, coloured from -1 to 1, each cell annotated."""
    fig, ax = plt.subplots(figsize=(1.0 * len(ks) + 3.2, 0.45 * len(methods) + 1.6))
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(ks)), [f"k={k}" for k in ks], fontsize=8)
    ax.set_yticks(range(len(methods)), [f"{m} (n={c})" for m, c in zip(methods, counts)], fontsize=8)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            v = matrix[i, j]
            ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if not math.isnan(v) and abs(v) > 0.6 else "black")
    fig.colorbar(im, ax=ax, label="Spearman ρ")
    ax.set_title("kNN accuracy vs AMI over encoder × dataset cells", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_taxonomic_levels(values: np.ndarray, encoders: list[str], levels: list[str], path: Path, title: str) -> Path:
    """AMI per taxonomic level, one line per encoder, from the coarsest level to the classes themselves."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(levels) + 2.5), 4.2))
    x = np.arange(len(levels))
    cmap = plt.get_cmap("tab20" if len(encoders) > 10 else "tab10")
    for i, encoder in enumerate(encoders):
        ax.plot(x, values[i], marker="o", lw=1.5, ms=4, color=cmap(i % cmap.N), label=encoder)
    ax.set_xticks(x, levels, fontsize=8)
    ax.set_ylabel("AMI (mean over clusterers)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path
