"""The contingency matrix and the UMAP scatter: every point counted, noise labelled, colours matched to classes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from zsclust.errors import InvalidDataError
from zsclust.tracking import (
    contingency_summary,
    match_clusters,
    plot_contingency,
    plot_scatter,
    scatter_colours,
)
from zsclust.tracking._plots import NOISE_COLOUR, contingency_figure, palette, scatter_figure

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def hdbscan_like(n_small: int = 231, seed: int = 0):
    """10 classes; each class mostly in its own big cluster (id 1000 + c), ``n_small`` small mixed
    clusters of 3-8 points (ids 0..n_small-1), and about 59 % of the points left as noise (-1)."""
    rng = np.random.default_rng(seed)
    y, pred = [], []
    for c in range(10):
        y += [c] * 60
        pred += [1000 + c] * 60
    for k in range(n_small):
        size = int(rng.integers(3, 9))
        y += list(rng.integers(0, 10, size))
        pred += [k] * size
    n_noise = int(round(0.59 / 0.41 * len(y)))
    y += list(rng.integers(0, 10, n_noise))
    pred += [-1] * n_noise
    y, pred = np.array(y), np.array(pred)
    perm = rng.permutation(len(y))
    y, pred = y[perm], pred[perm]
    xy = np.column_stack([np.arange(len(y), dtype=float), rng.normal(size=len(y))])  # x identifies the point
    return y, pred, xy


def test_summary_of_many_clusters_counts_every_point_and_says_what_it_summed():
    y, pred, _ = hdbscan_like()
    s = contingency_summary(y, pred, NAMES, max_clusters=50)
    assert s.n_clusters == 241
    assert s.counts.sum() == len(y) == s.n_points  # nothing silently dropped
    assert s.row_labels == NAMES
    assert s.column_kinds.count("matched") == 10
    assert s.column_kinds.count("cluster") == 40
    assert s.column_labels[-2:] == ["other (191)", "noise"] and s.column_kinds[-2:] == ["other", "noise"]
    assert s.n_other == 191
    # noise is its own column: each class's noise points, exactly
    np.testing.assert_array_equal(s.counts[:, -1], np.bincount(y[pred < 0], minlength=10))
    # matched clusters are the big ones, on the diagonal, labelled by their cluster id
    assert s.column_labels[:10] == [str(1000 + c) for c in range(10)]
    np.testing.assert_array_equal(np.diag(s.counts[:, :10]), [60] * 10)
    # the shown unmatched clusters are the largest; "other" holds exactly the rest
    shown = [int(c) for c in s.column_labels[10:50]]
    sizes = {k: int((pred == k).sum()) for k in range(231)}
    rest = set(sizes) - set(shown)
    assert min(sizes[k] for k in shown) >= max(sizes[k] for k in rest)
    assert s.counts[:, -2].sum() == sum(sizes[k] for k in rest)


def test_noise_is_never_matched_to_a_class():
    # class 0: 50 noise points, 10 in cluster 7; class 1: 30 in cluster 7, 25 in cluster 8. Noise as a
    # cluster would take class 0 and leave cluster 7 to class 1; kept out, class 0 gets cluster 7.
    y = np.array([0] * 60 + [1] * 55)
    pred = np.array([-1] * 50 + [7] * 10 + [7] * 30 + [8] * 25)
    m = match_clusters(y, pred)
    assert m.cluster_to_class == {7: 0, 8: 1}
    np.testing.assert_array_equal(m.noise, [50, 0])
    s = contingency_summary(y, pred, ["a", "b"])
    assert s.column_labels == ["7", "8", "noise"]
    assert s.counts.tolist() == [[10, 0, 50], [30, 25, 0]]


def test_unlabelled_points_are_left_out_and_said_so():
    y = np.array([0, 0, 1, 1, -1, -1])
    pred = np.array([0, 0, 1, 1, 1, -1])
    s = contingency_summary(y, pred)
    assert s.counts.sum() == 4 and s.n_unlabelled == 2
    fig = contingency_figure(s)
    assert "2 points without a true label left out" in fig.axes[0].get_title()
    plt.close(fig)


def test_contingency_figure_shows_counts_names_and_the_summary_in_its_title(tmp_path):
    y, pred, _ = hdbscan_like()
    s = contingency_summary(y, pred, NAMES)
    fig = contingency_figure(s, title="resnet50 / cifar10 / hdbscan")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), np.log1p(s.counts))
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_xticklabels()] == s.column_labels
    title = ax.get_title()
    assert "241 clusters" in title and "191" in title and "'other'" in title and "noise 59" in title
    cell_texts = sorted(int(t.get_text()) for t in ax.texts)
    assert cell_texts == sorted(s.counts[s.counts > 0].tolist())  # every non-empty cell carries its count
    plt.close(fig)
    path = plot_contingency(y, pred, tmp_path / "contingency.png", NAMES, title="resnet50 / cifar10 / hdbscan")
    assert Image.open(path).size[0] > 1000


def test_scatter_colours_follow_the_hungarian_matching():
    y, pred, _ = hdbscan_like()
    colours = scatter_colours(y, pred, NAMES)
    pal = palette()
    assert [colours.class_colours[c] for c in range(10)] == pal[:10]  # a class's colour is fixed by its label
    for c in range(10):
        assert colours.cluster_colours[1000 + c] == colours.class_colours[c]
    unmatched = [colours.cluster_colours[k] for k in range(231)]
    assert len(set(unmatched)) == 231  # distinct from each other ...
    assert not set(unmatched) & set(colours.class_colours.values())  # ... and from every class
    assert colours.repeated == 0
    assert colours.colour_of_cluster(-1) == NOISE_COLOUR
    assert NOISE_COLOUR not in pal


def test_scatter_figure_draws_the_assigned_colours_with_a_legend_and_scores(tmp_path):
    y, pred, xy = hdbscan_like()
    fig, colours = scatter_figure(xy, y, pred, "resnet50 / cifar10 / hdbscan", NAMES, {"ami": 0.41234, "ari": 0.2})
    for ax, labels, colour_of in ((fig.axes[0], y, colours.colour_of_class), (fig.axes[1], pred, colours.colour_of_cluster)):
        (points,) = ax.collections
        drawn = points.get_offsets()[:, 0].astype(int)  # x is the point's index
        assert sorted(drawn) == list(range(len(y)))
        expected = np.array([colour_of(int(v)) for v in labels[drawn]])
        np.testing.assert_allclose(points.get_facecolors(), expected)
        # noise (grey) is drawn first, under the clusters
        grey = np.all(np.isclose(points.get_facecolors(), NOISE_COLOUR), axis=1)
        if grey.any():
            assert grey[: grey.sum()].all()
    title = fig._suptitle.get_text()
    assert "AMI 0.412" in title and "ARI 0.200" in title and "241 clusters" in title and "noise 59" in title
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [*NAMES, "noise"]
    plt.close(fig)
    path = plot_scatter(xy, y, pred, tmp_path / "umap2d.png", "resnet50 / cifar10 / hdbscan", NAMES, {"ami": 0.41})
    assert Image.open(path).size == (1430, 748)


def test_colours_repeat_only_past_the_palette_and_the_legend_says_so(tmp_path):
    y, pred, xy = hdbscan_like(n_small=300, seed=1)
    colours = scatter_colours(y, pred, NAMES)
    assert colours.repeated == 10 + 300 - 256
    fig, _ = scatter_figure(xy, y, pred, class_names=NAMES)
    assert "colours repeat for 54 clusters" in fig.legends[0].get_title().get_text()
    plt.close(fig)


def test_the_pipeline_call_forms_still_work(tmp_path):
    """How zsclust/cluster/_pipeline.py calls the plots today (positional names, a plain title)."""
    y, pred, xy = hdbscan_like(n_small=5)
    assert plot_contingency(y, pred, tmp_path / "c.png", NAMES).is_file()
    assert plot_scatter(xy, y, pred, tmp_path / "s.png", "title").is_file()
    # no class names: labels are the classes' numbers
    assert contingency_summary(y, pred).row_labels == [str(c) for c in range(10)]


def test_labels_of_different_points_are_refused():
    with pytest.raises(InvalidDataError, match="same points"):
        contingency_summary([0, 1, 2], [0, 1])
