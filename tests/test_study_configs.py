"""The study's configs resolve, cell by cell, to the study's final table (study_protocol.md section 6), and
its defaults (seeds, HDBSCAN bounds, AC-without-K normalisation, z-score before PCA) are zsclust's."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from zsclust.cluster import create_clusterer, create_reducer, registry_defaults
from zsclust.cluster._clusterers import threshold_scale
from zsclust.config import job_seed, load_config
from zsclust.sweep import expand_cells, load_sweep_config

# The table as the protocol file prints it (section 6), verbatim: the test parses it, independently of the
# script that wrote encoders.yaml.
PROTOCOL_TABLE = """
| raw pixels | P.90 | P200 cosine-average / 0.71 | P.80 (.85) | raw (10) | L2 |
| ResNet-50 random | P.95 | P200 chebyshev-average / 10 | P.90 (.90) | P200 (50) | L1 |
| ResNet-50 supervised | U50 | U50 L2-ward / 2 | U50 (.90) | raw (20) | L2 |
| ResNet-50 MoCo-v3 | U50 | U50 L2-ward / 10 | U50 (.75) | raw (30) | L2 |
| ResNet-50 DINO | U50 | U50 L2-average / 0.5 | U50 (.90) | P.80 (10) | L1 |
| ResNet-50 VICReg | U50 | U50 L2-average / 0.5 | U50 (.80) | raw (10) | L1 |
| ResNet-50 CLIP | P.85 | U50 L2-average / 0.5 | U50 (.85) | P.90 (30) | L1 |
| ViT-B random | P100 | P.85 chebyshev-average / 2 | P.90 (.95) | P.95 (50) | L1 |
| ViT-B supervised | U50 | U50 L2-ward / 2 | U50 (.90) | P.70 (30) | chebyshev |
| ViT-B MoCo-v3 | U50 | U50 chebyshev-average / 1 | U50 (.75) | P.85 (50) | L2 |
| ViT-B DINO | U50 | U50 L2-average / 0.2 | U50 (.85) | P.90 (10) | L1 |
| MAE (CLS) | P.95 | P.90 cosine-average / 0.71 | P200 (.60) | Z (10) | P.95, L2 |
| MAE (avg) | P.90 | P.85 cosine-average / 0.71 | U50 (.60) | Z (30) | L1 |
| ViT-B CLIP | P.75 | U50 chebyshev-average / 1 | U50 (.95) | P.70 (20) | L1 |
"""
ENCODERS = {  # the study's names -> zsclust's registry (docs/encoders.md)
    "raw pixels": "raw_pixels", "ResNet-50 random": "resnet50.random", "ResNet-50 supervised": "resnet50.tv2_in1k",
    "ResNet-50 MoCo-v3": "resnet50.mocov3", "ResNet-50 DINO": "resnet50.dino", "ResNet-50 VICReg": "resnet50.vicreg",
    "ResNet-50 CLIP": "resnet50_clip.openai", "ViT-B random": "vit_base_patch16_224.random",
    "ViT-B supervised": "vit_base_patch16_224.tv_in1k", "ViT-B MoCo-v3": "vit_base_patch16_224.mocov3",
    "ViT-B DINO": "vit_base_patch16_224.dino", "MAE (CLS)": "vit_base_patch16_224.mae",
    "MAE (avg)": "vit_base_patch16_224.mae_avg", "ViT-B CLIP": "vit_base_patch16_clip_quickgelu_224.openai",
}
UMAP50 = {"name": "umap", "n_components": 50, "n_neighbors": 30, "min_dist": 0.0}
METRICS = {"L2": "euclidean", "L1": "l1", "chebyshev": "chebyshev", "cosine": "cosine"}


def reduction(code: str) -> dict:
    """U50 / raw / Z / P.x (z-score + PCA keeping x of the variance) / Pn (z-score + PCA to n dims)."""
    if code == "U50":
        return UMAP50
    if code == "raw":
        return {"name": "none"}
    if code == "Z":
        return {"name": "zscore"}
    m = re.fullmatch(r"P(\.\d+|\d+)", code)
    return {"name": "pca", "n_components": float("0" + m.group(1)) if m.group(1).startswith(".") else int(m.group(1))}


def expected_cells() -> dict[str, dict[str, tuple[dict, dict]]]:
    """encoder -> job -> (reducer node, the clusterer parameters the table sets)."""
    out = {}
    for row in PROTOCOL_TABLE.strip().splitlines():
        name, km, ac, ap, sp, hd = [c.strip() for c in row.strip("|").split("|")]
        ac_red, link, thr = re.fullmatch(r"(\S+) (\S+) / ([\d.]+)", ac).groups()
        metric, linkage = link.rsplit("-", 1)
        ap_red, damping = re.fullmatch(r"(\S+) \((\.\d+)\)", ap).groups()
        sp_red, nn = re.fullmatch(r"(\S+) \((\d+)\)", sp).groups()
        hd_red, hd_metric = [x.strip() for x in hd.split(",")] if "," in hd else ("U50", hd)
        ac_params = {"linkage": linkage, "metric": METRICS[metric]}
        out[ENCODERS[name]] = {
            "kmeans": (reduction(km), {"name": "kmeans", "n_clusters": "K"}),
            "ac_k": (reduction(ac_red), {"name": "agglomerative", "n_clusters": "K", **ac_params}),
            "ac_no_k": (reduction(ac_red), {"name": "agglomerative", "n_clusters": None, **ac_params,
                                            "distance_threshold": float(thr), "normalize": True}),
            "ap": (reduction(ap_red), {"name": "affinity_propagation", "damping": float(damping)}),
            "spectral": (reduction(sp_red), {"name": "spectral", "n_clusters": "K", "n_neighbors": int(nn)}),
            "hdbscan": (reduction(hd_red), {"name": "hdbscan", "metric": METRICS[hd_metric], "min_cluster_size": 5,
                                            "max_cluster_size": 0.2}),
        }
    return out


def test_the_embedded_table_is_the_protocols():
    protocol = REPO.parent / "shared" / "study_protocol.md"
    if not protocol.is_file():
        pytest.skip("../shared/study_protocol.md is not beside this checkout")
    rows = [line.strip() for line in protocol.read_text().splitlines() if line.startswith("| ") and "|---" not in line]
    table = rows[rows.index(next(r for r in rows if r.startswith("| raw pixels"))):][:14]
    assert [r.replace("  ", " ") for r in table] == PROTOCOL_TABLE.strip().splitlines()


def test_the_resolved_study_sweep_is_the_final_table_cell_by_cell():
    cells = expand_cells(load_sweep_config(REPO / "experiments/study/sweep.yaml"))
    expected = expected_cells()
    assert {c.encoder for c in cells} == set(expected) and len(cells) == 14 * 26
    for cell in cells:
        jobs = cell.cfg.jobs
        assert set(jobs) == set(expected[cell.encoder]), cell.label
        for label, (reducer, clusterer) in expected[cell.encoder].items():
            got_reducer, got_clusterer = dict(jobs[label].reducer), dict(jobs[label].clusterer)
            assert got_reducer == reducer, (cell.label, label, got_reducer, reducer)
            if label == "hdbscan" and cell.dataset in ("celeba", "utkface", "bioscan1m"):
                clusterer = {**clusterer, "min_cluster_size": 2}  # the study's exceptions
            for key, value in clusterer.items():
                assert got_clusterer.get(key) == value, (cell.label, label, key, got_clusterer.get(key), value)
    assert cells[0].cfg.embed.preprocessing == "study" and cells[0].cfg.embed.precision == "32-true"


def test_the_offline_study_takes_the_studys_raw_pixel_settings():
    offline = {c.encoder: c for c in expand_cells(load_sweep_config(REPO / "experiments/study/offline.yaml"))}
    want = expected_cells()["raw_pixels"]
    for label, (reducer, clusterer) in want.items():
        job = offline["raw_pixels"].cfg.jobs[label]
        assert dict(job.reducer) == reducer and all(job.clusterer.get(k) == v for k, v in clusterer.items())
    lite = offline["tf_efficientnet_lite0.pypi_in1k"].cfg.jobs
    assert all(dict(j.reducer) == UMAP50 for j in lite.values())  # not in the study: the shared setup


# -- the study's defaults -----------------------------------------------------------------------------------


def test_seeds_are_the_studys_unless_set():
    assert job_seed(load_config(None, ["data.split=val"])) == 100
    assert job_seed(load_config(None, ["data.split=test"])) == 1
    assert job_seed(load_config(None, ["data.split=val", "seed=5"])) == 5
    from zsclust.tune import load_tune_config

    [cfg] = load_tune_config(None, ["space.clusterer=kmeans"])
    assert cfg.seed == 100 and cfg.evaluate.seed == 1


def test_registry_and_choice_defaults_follow_the_study():
    assert registry_defaults("kmeans") == {"n_init": 1, "max_iter": 1000}
    km = create_clusterer("kmeans")
    assert km.init == "k-means++" and km.n_init == 1 and km.max_iter == 1000
    sp = create_clusterer("spectral")
    assert (sp.affinity, sp.n_neighbors, sp.assign_labels) == ("nearest_neighbors", 10, "cluster_qr")
    ap = create_clusterer("affinity_propagation")
    assert (ap.convergence_iter, ap.max_iter) == (15, 1000)
    assert create_reducer({"name": "pca", "n_components": 5}).zscore is True  # z-score before PCA by default
    choice = load_config(None, ["clusterer=hdbscan"])
    from zsclust._build import expand_jobs

    [job] = expand_jobs(choice)
    assert job.clusterer == {"name": "hdbscan", "min_cluster_size": 5, "max_cluster_size": 0.2}
    [job] = expand_jobs(load_config(None, ["clusterer=ac_no_k"]))
    assert job.clusterer["normalize"] is True and job.clusterer["n_clusters"] is None


def test_hdbscan_max_cluster_size_is_a_fraction_of_n():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.3, (300, 2)), rng.normal(8, 0.3, (60, 2)), rng.normal(-8, 0.3, (40, 2))])
    capped = create_clusterer("hdbscan", max_cluster_size=0.2).fit(X)
    sizes = np.bincount(capped.labels_[capped.labels_ >= 0])
    assert sizes.max() <= round(0.2 * len(X)) and capped.max_cluster_size == 0.2  # the param stays a fraction
    free = create_clusterer("hdbscan").fit(X)
    assert np.bincount(free.labels_[free.labels_ >= 0]).max() >= 300  # uncapped: the big blob is one cluster


def test_pca_z_scores_first_as_the_study():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6)) * np.array([100, 1, 1, 1, 1, 0])  # one huge dimension, one constant
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    ours = create_reducer({"name": "pca", "n_components": 3}, random_state=0).fit_transform(X)
    ref = PCA(3, random_state=0).fit_transform(StandardScaler().fit_transform(X))
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), atol=1e-8)
    raw = create_reducer({"name": "pca", "n_components": 3, "zscore": False}, random_state=0).fit_transform(X)
    np.testing.assert_allclose(np.abs(raw), np.abs(PCA(3, random_state=0).fit_transform(X)), atol=1e-8)
    assert create_reducer({"name": "pca", "n_components": "mle"}).fit_transform(X).shape[1] < 6


def test_ac_without_k_normalisation_by_hand():
    """Centre, divide by the mean per-dimension std, then by sqrt(d) (euclidean) or d (L1): worked by hand."""
    X = np.array([[0.0, 0.0], [2.0, 4.0], [4.0, 8.0]])
    # mean (2, 4); centred rows (-2,-4), (0,0), (2,4); std per dimension (sqrt(8/3), sqrt(32/3)),
    # their mean m = (sqrt(8/3) + sqrt(32/3)) / 2 = 3 * sqrt(8/3) / 2 = sqrt(6)
    m = np.sqrt(6.0)
    centred = np.array([[-2.0, -4.0], [0.0, 0.0], [2.0, 4.0]])
    np.testing.assert_allclose(threshold_scale(X, "euclidean"), centred / m / np.sqrt(2))
    np.testing.assert_allclose(threshold_scale(X, "l1"), centred / m / 2)
    np.testing.assert_allclose(threshold_scale(X, "cosine"), centred / m)
    # so a threshold means the same at any scale and dimensionality: x100 and duplicated dims change nothing
    ac = dict(n_clusters=None, distance_threshold=3.0, normalize=True, linkage="ward")
    rng = np.random.default_rng(0)
    Y = np.concatenate([rng.normal(0, 1, (30, 4)), rng.normal(6, 1, (30, 4))])
    a = create_clusterer("agglomerative", **ac).fit_predict(Y)
    b = create_clusterer("agglomerative", **ac).fit_predict(np.hstack([Y, Y]) * 100)
    assert len(set(a)) == 2 and np.array_equal(a, b)
    unscaled = create_clusterer("agglomerative", **{**ac, "normalize": False}).fit_predict(Y * 100)
    assert len(set(unscaled)) > 2  # the raw distances make the same threshold mean something else
