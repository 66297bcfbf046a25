"""Figures logged as MLflow artifacts: a contingency matrix and a 2-D UMAP scatter.

Both read the same Hungarian matching of clusters to classes (:func:`match_clusters`), computed on
clustered points only: HDBSCAN's noise (label < 0) is shown, labelled, but never matched like a
cluster. A cluster matched to class *c* is drawn in class *c*'s colour, so the two scatter panels
correspond; every other cluster gets its own colour from a Glasbey palette (colorcet), which stays
distinct for 256 colours. Points without a true label (label < 0) are left out of the matching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

NOISE_COLOUR = to_rgba("#c4c4c4")
UNLABELLED_COLOUR = to_rgba("#8a8a8a")
MAX_CLUSTER_COLUMNS = 50  # columns of the contingency matrix before the rest go to "other"
MAX_LEGEND_CLASSES = 40


def palette() -> list[tuple]:
    """256 mutually distinct colours without greys (colorcet's ``glasbey_bw_minc_20``): grey means noise."""
    import colorcet

    return [to_rgba(c) for c in colorcet.glasbey_bw_minc_20]


@dataclass(frozen=True)
class ClusterMatch:
    """The Hungarian matching of clusters to classes on labelled, clustered points.

    ``counts[i, j]`` is the number of points of class ``classes[i]`` in cluster ``clusters[j]``;
    ``noise[i]`` the number of class ``classes[i]`` points left as noise.
    """

    classes: np.ndarray
    clusters: np.ndarray
    counts: np.ndarray
    noise: np.ndarray
    cluster_to_class: dict[int, int]
    n_unlabelled: int

    @property
    def n_points(self) -> int:
        return int(self.counts.sum() + self.noise.sum())


def match_clusters(labels_true, labels_pred) -> ClusterMatch:
    """Match each class to at most one cluster (and back) maximising the points they share."""
    t, p = _labels(labels_true, labels_pred)
    labelled = t >= 0
    t, p = t[labelled], p[labelled]
    classes = np.unique(t)
    clusters = np.unique(p[p >= 0])
    row = np.searchsorted(classes, t)
    counts = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    clustered = p >= 0
    np.add.at(counts, (row[clustered], np.searchsorted(clusters, p[clustered])), 1)
    noise = np.bincount(row[~clustered], minlength=len(classes)).astype(np.int64)
    mapping: dict[int, int] = {}
    if counts.size:
        rows, cols = linear_sum_assignment(-counts)
        mapping = {int(clusters[c]): int(classes[r]) for r, c in zip(rows, cols) if counts[r, c] > 0}
    return ClusterMatch(classes, clusters, counts, noise, mapping, int((~labelled).sum()))


@dataclass(frozen=True)
class ContingencySummary:
    """What the contingency plot shows: every labelled point counted once, in exactly one cell.

    Columns are the matched clusters in their class's row order (a perfect clustering is diagonal),
    then the largest unmatched clusters grouped by their majority class, then ``other`` (the clusters
    beyond ``max_clusters``, summed), then ``noise``. ``column_kinds`` says which is which:
    ``matched``, ``cluster``, ``other``, ``noise``.
    """

    counts: np.ndarray
    row_labels: list[str]
    column_labels: list[str]
    column_kinds: list[str]
    n_clusters: int
    n_other: int
    n_unlabelled: int

    @property
    def n_points(self) -> int:
        return int(self.counts.sum())


def contingency_summary(labels_true, labels_pred, class_names: Sequence[str] | None = None,
                        max_clusters: int = MAX_CLUSTER_COLUMNS) -> ContingencySummary:
    """True classes × predicted clusters, with the clusters beyond ``max_clusters`` in one ``other`` column.

    Matched clusters are always shown, even when there are more than ``max_clusters`` of them.
    """
    m = match_clusters(labels_true, labels_pred)
    col_of = {int(c): j for j, c in enumerate(m.clusters)}
    row_of = {int(c): i for i, c in enumerate(m.classes)}
    matched = sorted(m.cluster_to_class, key=lambda k: row_of[m.cluster_to_class[k]])
    sizes = m.counts.sum(axis=0)
    unmatched = sorted((int(c) for c in m.clusters if int(c) not in m.cluster_to_class),
                       key=lambda c: (-sizes[col_of[c]], c))
    n_shown = max(max_clusters, len(matched))
    top = unmatched[: max(0, n_shown - len(matched))]
    rest = unmatched[len(top):]
    # the shown unmatched clusters grouped under the class most of their points have, largest first
    top.sort(key=lambda c: (int(np.argmax(m.counts[:, col_of[c]])), -sizes[col_of[c]], c))
    shown = matched + top
    columns = [m.counts[:, col_of[c]] for c in shown]
    labels = [str(c) for c in shown]
    kinds = ["matched"] * len(matched) + ["cluster"] * (len(shown) - len(matched))
    if rest:
        columns.append(m.counts[:, [col_of[c] for c in rest]].sum(axis=1))
        labels.append(f"other ({len(rest)})")
        kinds.append("other")
    if m.noise.any():
        columns.append(m.noise)
        labels.append("noise")
        kinds.append("noise")
    counts = np.stack(columns, axis=1) if columns else np.zeros((len(m.classes), 0), dtype=np.int64)
    return ContingencySummary(counts, [class_name(c, class_names) for c in m.classes], labels, kinds,
                              len(m.clusters), len(rest), m.n_unlabelled)


def contingency_figure(summary: ContingencySummary, title: str = ""):
    """The figure of :func:`contingency_summary`'s table: log-scaled colours, counts in cells that fit them."""
    n_rows, n_cols = summary.counts.shape
    cell = 0.34 if n_cols <= 60 and n_rows <= 60 else max(0.06, min(0.34, 20 / max(n_cols, n_rows)))
    width = min(22.0, 3.0 + max(n_cols, 4) * cell)
    height = min(20.0, 2.6 + max(n_rows, 3) * cell)
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    shown = np.log1p(summary.counts)
    im = ax.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
    cell_pts = 72 * min((width - 3.0) / max(n_cols, 1), (height - 2.6) / max(n_rows, 1))
    digits = len(str(int(summary.counts.max()))) if summary.counts.size else 1
    if cell_pts >= 12 and n_cols * n_rows <= 4000:
        size = float(np.clip(cell_pts / (0.62 * max(digits, 2)), 4, 9))
        threshold = shown.max() * 0.6 if shown.size else 0
        for i, j in zip(*np.nonzero(summary.counts)):
            ax.text(j, i, str(summary.counts[i, j]), ha="center", va="center", fontsize=size,
                    color="black" if shown[i, j] > threshold else "white")
    for j, kind in enumerate(summary.column_kinds):
        if kind in ("other", "noise") and j > 0 and summary.column_kinds[j - 1] not in ("other", "noise"):
            ax.axvline(j - 0.5, color="white", linewidth=2)
    tick_size = 8 if cell_pts >= 14 else 6
    rows = _tick_positions(n_rows, [])
    ax.set_yticks(rows, [summary.row_labels[i] for i in rows], fontsize=tick_size)
    cols = _tick_positions(n_cols, [j for j, k in enumerate(summary.column_kinds) if k in ("other", "noise")])
    ax.set_xticks(cols, [summary.column_labels[j] for j in cols], fontsize=tick_size, rotation=90)
    for tick, j in zip(ax.get_xticklabels(), cols):
        if summary.column_kinds[j] in ("other", "noise"):
            tick.set_fontweight("bold")
    ax.set_xlabel("predicted cluster id\n(Hungarian-matched clusters first, each in its class's row)", fontsize=9)
    ax.set_ylabel("true class")
    fig.colorbar(im, ax=ax, label="log(1 + count)", shrink=0.9)
    lines = [title] if title else []
    noise = summary.counts[:, [k == "noise" for k in summary.column_kinds]].sum()
    head = f"{summary.n_points} points, {summary.n_clusters} clusters"
    if noise:
        head += f", noise {100 * noise / max(summary.n_points, 1):.1f} % (own column, not matched)"
    lines.append(head)
    if summary.n_other:
        lines.append(f"{summary.n_clusters - summary.n_other} clusters shown; the {summary.n_other} smallest "
                     "unmatched ones summed in 'other'")
    if summary.n_unlabelled:
        lines.append(f"{summary.n_unlabelled} points without a true label left out")
    ax.set_title("\n".join(lines), fontsize=10)
    return fig


def _tick_positions(n: int, always: list[int], most: int = 80) -> list[int]:
    """Every position when they fit, else every k-th (labels always name the cluster or class, never the position)."""
    step = max(1, -(-n // most))
    return sorted(set(range(0, n, step)) | set(always))


def plot_contingency(labels_true, labels_pred, path: Path, class_names=None,
                     max_clusters: int = MAX_CLUSTER_COLUMNS, title: str = "") -> Path:
    """Write the contingency matrix PNG to ``path`` (see :func:`contingency_summary`)."""
    fig = contingency_figure(contingency_summary(labels_true, labels_pred, class_names, max_clusters), title)
    return _save(fig, path)


@dataclass(frozen=True)
class ColourAssignment:
    """Scatter colours: each class its own; a cluster matched to class c takes c's; noise grey.

    Unmatched clusters take the palette's next colours, largest cluster first; past the palette's
    256 colours they repeat (``repeated`` says how many clusters share a colour with another).
    """

    class_colours: dict[int, tuple]
    cluster_colours: dict[int, tuple]
    match: ClusterMatch = field(repr=False)
    repeated: int = 0

    def colour_of_cluster(self, cluster: int) -> tuple:
        return NOISE_COLOUR if cluster < 0 else self.cluster_colours[int(cluster)]

    def colour_of_class(self, label: int) -> tuple:
        return UNLABELLED_COLOUR if label < 0 else self.class_colours[int(label)]


def scatter_colours(labels_true, labels_pred, class_names: Sequence[str] | None = None) -> ColourAssignment:
    """The colour of every class and cluster; with ``class_names``, a class's colour is fixed by its label."""
    m = match_clusters(labels_true, labels_pred)
    t, p = _labels(labels_true, labels_pred)
    colours = palette()
    classes = np.unique(t[t >= 0])
    by_label = class_names is not None and (not classes.size or classes.max() < len(class_names))
    slot = {int(c): (int(c) if by_label else i) for i, c in enumerate(classes)}
    n_slots = len(class_names) if by_label else len(classes)
    class_colours = {c: colours[s % len(colours)] for c, s in slot.items()}
    clusters, sizes = np.unique(p[p >= 0], return_counts=True)
    cluster_colours = {int(k): class_colours[c] for k, c in m.cluster_to_class.items()}
    unmatched = sorted((int(k) for k in clusters if int(k) not in cluster_colours),
                       key=lambda k: (-sizes[np.searchsorted(clusters, k)], k))
    used = {s % len(colours) for s in slot.values()}
    free = [i for i in range(len(colours)) if i not in used]  # a class's colour is never a cluster's
    for i, k in enumerate(unmatched):
        cluster_colours[k] = colours[free[i % len(free)]] if free else colours[(n_slots + i) % len(colours)]
    repeated = max(0, len(class_colours) + len(unmatched) - len(colours))
    return ColourAssignment(class_colours, cluster_colours, m, repeated)


def scatter_figure(xy: np.ndarray, labels_true, labels_pred, title: str = "", class_names=None,
                   metrics: Mapping[str, float] | None = None):
    """Side by side, the 2-D embedding coloured by true class and by predicted cluster; returns (figure, colours)."""
    from matplotlib.lines import Line2D

    xy = np.asarray(xy, dtype=float)
    t, p = _labels(labels_true, labels_pred)
    colours = scatter_colours(t, p, class_names)
    size = float(np.clip(4000 / max(len(xy), 1), 1, 20))  # readable for 500 points and for 500k
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.8), layout="constrained")
    order = np.random.default_rng(0).permutation(len(xy))  # no class systematically painted over another
    n_clusters = int(np.unique(p[p >= 0]).size)
    n_unmatched = n_clusters - len(colours.match.cluster_to_class)
    panels = ((axes[0], t, colours.colour_of_class, "true class"),
              (axes[1], p, colours.colour_of_cluster, "predicted cluster: a matched cluster in its class's colour"
               + (f", {n_unmatched} unmatched in other colours" if n_unmatched else "")))
    for ax, lab, colour_of, name in panels:
        grey = lab[order] < 0
        lut = {int(v): colour_of(int(v)) for v in np.unique(lab)}
        face = np.array([lut[int(v)] for v in lab[order]]).reshape(-1, 4)
        # grey first (underneath), then the coloured points in random order
        idx = np.concatenate([order[grey], order[~grey]])
        face = np.concatenate([face[grey], face[~grey]])
        ax.scatter(xy[idx, 0], xy[idx, 1], s=size, c=face, linewidths=0)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    noise = float((p < 0).mean()) if len(p) else 0.0
    stats = [f"{name} {metrics[key]:.3f}" for key, name in (("ami", "AMI"), ("ari", "ARI"))
             if metrics and metrics.get(key) is not None]
    stats.append(f"{n_clusters} clusters")
    if noise:
        stats.append(f"noise {100 * noise:.1f} %")
    fig.suptitle((f"{title}\n" if title else "") + " · ".join(stats), fontsize=11)
    handles = []
    if len(colours.class_colours) <= MAX_LEGEND_CLASSES:
        handles = [Line2D([], [], ls="", marker="o", markersize=7, color=c, label=class_name(k, class_names))
                   for k, c in sorted(colours.class_colours.items())]
    if noise:
        handles.append(Line2D([], [], ls="", marker="o", markersize=7, color=NOISE_COLOUR, label="noise"))
    if (t < 0).any():
        handles.append(Line2D([], [], ls="", marker="o", markersize=7, color=UNLABELLED_COLOUR, label="no label"))
    if handles:
        n_classes = len(colours.class_colours)
        legend_title = ("class" if n_classes <= MAX_LEGEND_CLASSES else f"{n_classes} classes, too many to list;")
        legend_title += " (a matched cluster takes its class's colour)"
        if colours.repeated:
            legend_title += f"; colours repeat for {colours.repeated} clusters"
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8), fontsize=8,
                   title=legend_title, title_fontsize=8, frameon=False)
    return fig, colours


def plot_scatter(xy: np.ndarray, labels_true, labels_pred, path: Path, title: str = "", class_names=None,
                 metrics: Mapping[str, float] | None = None) -> Path:
    """Write the scatter PNG to ``path``; ``metrics`` (``ami``, ``ari``) go in the title."""
    fig, _ = scatter_figure(xy, labels_true, labels_pred, title, class_names, metrics)
    return _save(fig, path)


def class_name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= int(label) < len(class_names):
        return str(class_names[int(label)])
    return str(int(label))


def _labels(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(labels_true).astype(np.int64).ravel(), np.asarray(labels_pred).astype(np.int64).ravel()
    if t.shape != p.shape:
        from ..errors import InvalidDataError

        raise InvalidDataError(f"labels_true has {t.size} labels but labels_pred {p.size}: pass the true and "
                               "predicted labels of the same points")
    return t, p


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
