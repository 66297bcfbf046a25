"""The study's analyses in ``zsclust report``: every number checked against numpy/scipy on the same values.

A synthetic grid of results (8 encoders × 6 datasets in two groups × the six clusterers, one result
missing) goes through the report's own section builder; a small MLflow store built with the tracker's
client goes through ``zsclust report`` end to end.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr, ttest_rel, wilcoxon

from zsclust.report import ResultRow
from zsclust.report._analyses import (DEFAULT_SUPERVISED, architecture, holm, is_clip, is_random_init,
                                      supervised_references)
from zsclust.report._collect import KnnRow
from zsclust.report._study import study_sections
from zsclust.report._tables import Table, dataset_order

ENCODERS = ["resnet50.tv2_in1k", "resnet50.dino", "resnet50.mocov3", "resnet50.random", "resnet50_clip.openai",
            "vit_base_patch16_224.tv_in1k", "vit_base_patch16_224.dino", "raw_pixels"]
GROUPS = {"dsA1": "near-ood", "dsA2": "near-ood", "dsA3": "near-ood", "dsB1": "far-ood", "dsB2": "far-ood",
          "dsB3": "far-ood"}
METHODS = ["kmeans", "spectral", "ac_k", "ac_no_k", "ap", "hdbscan"]
MISSING = ("resnet50.mocov3", "dsB3", "hdbscan")
KS = (1, 10, 20, 100, 200)
MAIN = [e for e in ENCODERS if e != "resnet50_clip.openai"]
RANKED = [e for e in MAIN if e != "resnet50.random"]
REFS = {"resnet50": "resnet50.tv2_in1k", "vit_base_patch16_224": "vit_base_patch16_224.tv_in1k"}


def _grid(seed=0):
    """AMI per (encoder, dataset, method) and kNN accuracy per (encoder, dataset): an encoder and a clusterer
    effect plus noise, so tests and ranks have something to find but nothing is tied."""
    rng = np.random.default_rng(seed)
    ami, knn = {}, {}
    for i, e in enumerate(ENCODERS):
        for d in GROUPS:
            for j, m in enumerate(METHODS):
                if (e, d, m) != MISSING:
                    ami[(e, d, m)] = float(np.clip(0.2 + 0.04 * i + 0.03 * j + rng.normal(0, 0.07), 0.01, 0.99))
            knn[(e, d)] = {k: float(np.clip(0.3 + 0.05 * i + rng.normal(0, 0.05), 0, 1)) for k in KS}
    return ami, knn


def _rows(ami, knn):
    by_method = {m: [] for m in METHODS}
    for (e, d, m), v in ami.items():
        by_method[m].append(ResultRow(f"{e}/{d}/{m}", e, d, GROUPS[d], "test", m, "umap", m, "default", None, None,
                                      {"ami": v}))
    knn_rows = [KnnRow(f"{e}/{d}/knn", e, d, GROUPS[d], "test", None, dict(acc)) for (e, d), acc in knn.items()]
    return by_method, knn_rows


def _read(path: Path) -> dict[str, list[dict]]:
    """A report CSV as row label → its rows (label repeats in long tables), each a column → text dict."""
    out: dict[str, list[dict]] = {}
    with open(path) as f:
        reader = csv.reader(f)
        header = next(reader)
        for row in reader:
            out.setdefault(row[0], []).append(dict(zip(header, row)))
    return out


def _num(text: str) -> float:
    return math.nan if text == "" else float(text)


def _close(got: str, expected: float, rel=2e-5, abs=1e-9) -> bool:
    return (got == "" and math.isnan(expected)) or _num(got) == pytest.approx(expected, rel=rel, abs=abs)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    ami, knn = _grid()
    by_method, knn_rows = _rows(ami, knn)
    datasets, groups = dataset_order([r for rows in by_method.values() for r in rows])

    def write(stem: str, table: Table) -> str:
        for ext, text in (("md", table.to_markdown()), ("csv", table.to_csv()), ("tex", table.to_latex())):
            (out / f"{stem}.{ext}").write_text(text)
        return table.to_markdown()

    res = study_sections(out, by_method, ENCODERS, datasets, groups, "ami", knn_rows, write)
    return {"out": out, "ami": ami, "knn": knn, "res": res, "datasets": datasets}


def _mean_over_clusterers(ami, encoders, dataset):
    """The study's rule, written out: only clusterers every encoder has on the dataset."""
    common = [m for m in METHODS if all((e, dataset, m) in ami for e in encoders)]
    return {e: float(np.mean([ami[(e, dataset, m)] for m in common])) for e in encoders}, common


def test_mean_over_clusterers_keeps_clip_apart_and_drops_a_clusterer_missing_for_any_encoder(study):
    table = _read(study["out"] / "clusterer_mean.csv")
    assert set(table) == set(MAIN)  # CLIP has its own table
    for d in GROUPS:
        expected, common = _mean_over_clusterers(study["ami"], MAIN, d)
        assert common == (METHODS[:-1] if d == "dsB3" else METHODS)
        for e in MAIN:
            assert _close(table[e][0][d], expected[e])
    for e in MAIN:  # group means and the overall mean of the per-dataset means
        per = {d: _mean_over_clusterers(study["ami"], MAIN, d)[0][e] for d in GROUPS}
        assert _close(table[e][0]["far-ood mean"], np.mean([per[d] for d in ("dsB1", "dsB2", "dsB3")]))
        assert _close(table[e][0]["mean"], np.mean(list(per.values())))
    clip = _read(study["out"] / "clusterer_mean_clip.csv")
    assert list(clip) == ["resnet50_clip.openai"]
    expected, _ = _mean_over_clusterers(study["ami"], ["resnet50_clip.openai"], "dsB3")
    assert _close(clip["resnet50_clip.openai"][0]["dsB3"], expected["resnet50_clip.openai"])  # all six for CLIP
    report = "\n".join(study["res"].sections)
    assert "dsB3: kmeans, spectral, ac_k, ac_no_k, ap" in report  # the reader is told what was dropped


def test_differences_against_supervised_with_paired_t_tests(study):
    ami = study["ami"]
    mean = {d: _mean_over_clusterers(ami, MAIN, d)[0] for d in GROUPS}
    table = _read(study["out"] / "delta_vs_supervised.csv")
    # random init, raw pixels (no reference) and CLIP are not compared; references are not compared to themselves
    assert set(table) == {"resnet50.dino", "resnet50.mocov3", "vit_base_patch16_224.dino"}
    checked = 0
    for enc, rows in table.items():
        ref = REFS[architecture(enc)]
        assert [r["group"] for r in rows] == ["near-ood", "far-ood", "all"] and {r["reference"] for r in rows} == {ref}
        for row in rows:
            ds = [d for d in GROUPS if row["group"] in ("all", GROUPS[d])]
            a = np.array([100 * mean[d][enc] for d in ds])
            b = np.array([100 * mean[d][ref] for d in ds])
            t = ttest_rel(a, b)
            assert row["datasets"] == str(len(ds))
            assert _close(row["difference mean (pp)"], np.mean(a - b), abs=1e-6)
            assert _close(row["difference std (pp)"], np.std(a - b), abs=1e-6)
            assert _close(row["t"], t.statistic) and _close(row["p"], t.pvalue)
            checked += 1
    assert checked == 9
    png = study["out"] / "delta_vs_supervised.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_clusterer_ranks_and_pairwise_wilcoxon_tests(study):
    ami = study["ami"]
    samples = np.array([[ami[(e, d, m)] for m in METHODS] for e in RANKED for d in GROUPS
                        if all((e, d, m) in ami for m in METHODS)])
    assert samples.shape == (6 * 6 - 1, 6)  # ranked encoders x datasets, less the cell missing HDBSCAN
    ranks = rankdata(-samples, axis=1)
    table = _read(study["out"] / "clusterer_ranks.csv")
    for j, m in enumerate(METHODS):
        row = table[m][0]
        assert _close(row["mean rank"], ranks[:, j].mean()) and _close(row["rank std"], ranks[:, j].std())
        assert _close(row["mean AMI"], samples[:, j].mean()) and row["cells"] == "35"
    tests = _read(study["out"] / "clusterer_wilcoxon.csv")
    assert len(tests) == 15
    pvalues = []
    for a in range(6):
        for b in range(a + 1, 6):
            [row] = tests[f"{METHODS[a]} vs {METHODS[b]}"]
            w = wilcoxon(samples[:, a], samples[:, b])
            assert _close(row["W"], w.statistic) and _close(row["p"], w.pvalue)
            assert _close(row["mean difference (pp)"], 100 * np.mean(samples[:, a] - samples[:, b]), abs=1e-6)
            pvalues.append((row, w.pvalue))
    adjusted = holm([p for _, p in pvalues])
    assert all(_close(row["p (Holm)"], adj) for (row, _), adj in zip(pvalues, adjusted))
    assert any(w < 0.05 for _, w in pvalues)  # the grid has a clusterer effect, and the test finds it


def test_encoder_ranks_and_wilcoxon_against_reference_and_best(study):
    ami = study["ami"]
    mean = np.array([[_mean_over_clusterers(ami, MAIN, d)[0][e] for d in GROUPS] for e in RANKED])  # enc x ds
    ranks = rankdata(-mean.T, axis=1)  # per dataset
    table = _read(study["out"] / "encoder_ranks.csv")
    assert set(table) == set(RANKED)  # neither CLIP nor random init
    for i, e in enumerate(RANKED):
        assert _close(table[e][0]["mean rank"], ranks[:, i].mean()) and _close(table[e][0]["rank std"], ranks[:, i].std())
    best = RANKED[int(np.argmin(ranks.mean(axis=0)))]
    tests = _read(study["out"] / "encoder_wilcoxon.csv")
    families = {"reference": [], "best": []}
    for enc, rows in tests.items():
        for row in rows:
            family, other = row["against"].split(" ", 1)
            assert other == (REFS[architecture(enc)] if family == "reference" else best)
            w = wilcoxon(mean[RANKED.index(enc)], mean[RANKED.index(other)])
            assert _close(row["W"], w.statistic) and _close(row["p"], w.pvalue) and row["datasets"] == "6"
            families[family].append((row, w.pvalue))
    assert len(families["reference"]) == 3 and len(families["best"]) == len(RANKED) - 1
    for pairs in families.values():  # Holm within each family
        assert all(_close(r["p (Holm)"], a) for (r, _), a in zip(pairs, holm([p for _, p in pairs])))


def test_knn_accuracy_vs_ami_spearman_per_k_and_clusterer(study):
    ami, knn = study["ami"], study["knn"]
    table = _read(study["out"] / "knn_vs_ami.csv")
    assert list(table) == [*METHODS, "mean of clusterers"]
    means = {d: _mean_over_clusterers(ami, MAIN, d)[0] for d in GROUPS}
    for m in [*METHODS, "mean of clusterers"]:
        cells = [(e, d) for e in MAIN for d in GROUPS if m == "mean of clusterers" or (e, d, m) in ami]
        y = [means[d][e] if m == "mean of clusterers" else ami[(e, d, m)] for e, d in cells]
        assert table[m][0]["cells"] == str(len(cells)) == ("41" if m == "hdbscan" else "42")  # CLIP left out
        for k in KS:
            assert _close(table[m][0][f"k={k}"], spearmanr([knn[c][k] for c in cells], y).statistic)
    assert study["res"].knn_spearman[("kmeans", 20)] == pytest.approx(_num(table["kmeans"][0]["k=20"]), abs=1e-5)
    assert (study["out"] / "knn_vs_ami.png").read_bytes()[:4] == b"\x89PNG"
    assert (study["out"] / "ranks.png").read_bytes()[:4] == b"\x89PNG"


def test_holm_adjusts_like_the_textbook():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, then 0.04*1 = 0.04 -> kept at 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.5, math.nan, 0.4])  # NaN stays NaN and is not counted
    assert math.isnan(out[1]) and out[0] == pytest.approx(0.8) and out[2] == pytest.approx(0.8)
    assert holm([0.9, 0.8]) == [1.0, 1.0]


def test_which_encoder_is_clip_random_or_a_reference():
    assert is_clip("resnet50_clip.openai") and is_clip("vit_base_patch16_clip_quickgelu_224.openai")
    assert is_clip("vit_base_patch16_clip_224.laion2b_s34b_b88k")  # a timm name the registry does not list
    assert not is_clip("resnet50.dino") and not is_clip("raw_pixels")
    assert is_random_init("resnet50.random") and is_random_init("vit_base_patch16_224.random")
    assert is_random_init("convnext_tiny.random")  # unregistered: by its tag
    assert not is_random_init("raw_pixels") and not is_random_init("resnet50.tv_in1k")
    assert architecture("vit_base_patch16_224.mae_avg") == "vit_base_patch16_224" and architecture("raw_pixels") == "raw_pixels"
    both = ["resnet50.tv_in1k", "resnet50.tv2_in1k", "resnet50.dino"]
    assert supervised_references(both) == {"resnet50": "resnet50.tv2_in1k"}  # the study's (IMAGENET1K_V2) first
    assert supervised_references(["resnet50.tv_in1k", "resnet50.dino"]) == {"resnet50": "resnet50.tv_in1k"}
    assert supervised_references(both, {"resnet50": "resnet50.dino"}) == {"resnet50": "resnet50.dino"}
    # an architecture the map does not name: the one encoder registered as supervised, if it ran
    assert supervised_references(["resnet18.tv_in1k", "resnet18.other"]) == {"resnet18": "resnet18.tv_in1k"}
    assert supervised_references(["raw_pixels", "tf_efficientnet_lite0.pypi_in1k"]) == {}
    assert set(DEFAULT_SUPERVISED) == {"resnet50", "vit_base_patch16_224"}


def test_tables_hold_text_cells_in_every_format():
    t = Table("x_y", "encoder", ["reference", "p"], [("a_1", ["b_2", 0.00012]), ("c", [None, 0.5])],
              formats={"p": ".2g"}, plain={"p"})
    md = t.to_markdown()
    assert "| a_1 | b_2 | 0.00012 |" in md and "| c | – | 0.5 |" in md and "**" not in md.split("\n", 1)[1]
    assert t.to_csv().splitlines() == ["encoder,reference,p", "a_1,b_2,0.00012", "c,,0.5"]
    assert r"a\_1 & b\_2 & 0.00012 \\" in t.to_latex()


@pytest.fixture(scope="module")
def store_report(tmp_path_factory):
    """A few runs written with the tracker's client, as sweeps and ``zsclust knn`` write them, then the report."""
    from mlflow.entities import Metric, Param

    from zsclust.cli import main
    from zsclust.tracking import MLflowTracker

    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tracker = MLflowTracker(uri, "store")
    client, rng = tracker.client, np.random.default_rng(1)
    encoders = ["resnet50.tv2_in1k", "resnet50.dino", "resnet50_clip.openai", "raw_pixels"]
    datasets = {"dsA1": "near-ood", "dsA2": "near-ood", "dsB1": "far-ood"}
    setups = {"kmeans": {"clusterer.name": "kmeans"}, "ac_no_k": {"clusterer.name": "agglomerative",
                                                                  "clusterer.distance_threshold": "0.5"}}
    points, knn = [], {}
    for e in encoders:
        for d, g in datasets.items():
            tags = {"encoder": e, "dataset": d, "split": "test", "dataset.group": g}
            for m, params in setups.items():
                ami, sil = float(rng.uniform(0.1, 0.9)), float(rng.uniform(0, 0.5))
                run = client.create_run(tracker.experiment_id, tags=tags)
                now = int(time.time() * 1000)
                client.log_batch(run.info.run_id, metrics=[Metric("ami", ami, now, 0),
                                                           Metric("silhouette_umap50", sil, now, 0)],
                                 params=[Param("job", m), Param("reducer.name", "umap"),
                                         *[Param(k, v) for k, v in params.items()]])
                client.set_terminated(run.info.run_id)
                points.append((e, d, m, ami, sil))
            knn[(e, d)] = float(rng.uniform(0.2, 1.0))
            run = client.create_run(tracker.experiment_id, tags={**tags, "zsclust.role": "knn"})
            client.log_batch(run.info.run_id, metrics=[Metric("knn_accuracy_k20", knn[(e, d)], 0, 0)])
            client.set_terminated(run.info.run_id)
    out = tmp / "report"
    code = main(["report", "--uri", uri, "--experiment", "store", "--out", str(out)])
    return {"out": out, "points": points, "knn": knn, "client": client, "tracker": tracker, "code": code}


def test_report_command_adds_the_analyses_to_its_folder_and_run(store_report):
    out, points = store_report["out"], store_report["points"]
    assert store_report["code"] == 0
    sp = {row[0]: row for row in csv.reader(open(out / "spearman.csv"))}
    expected = spearmanr([p[4] for p in points], [p[3] for p in points]).statistic  # every clusterer's points
    assert _close(sp["all clusterers"][1], expected) and sp["all clusterers"][2] == str(len(points))
    assert "resnet50_clip.openai" not in (out / "clusterer_mean.csv").read_text()
    assert "resnet50_clip.openai" in (out / "clusterer_mean_clip.csv").read_text()
    [delta] = [r for r in _read(out / "delta_vs_supervised.csv")["resnet50.dino"] if r["group"] == "all"]
    ami = {(e, d, m): a for e, d, m, a, _ in points}
    diff = [100 * (np.mean([ami[("resnet50.dino", d, m)] for m in ("kmeans", "ac_no_k")])
                   - np.mean([ami[("resnet50.tv2_in1k", d, m)] for m in ("kmeans", "ac_no_k")])) for d in ("dsA1", "dsA2", "dsB1")]
    assert _close(delta["difference mean (pp)"], np.mean(diff), abs=1e-6) and delta["datasets"] == "3"
    knn = _read(out / "knn_vs_ami.csv")
    cells = [(e, d) for e in ("resnet50.tv2_in1k", "resnet50.dino", "raw_pixels") for d in ("dsA1", "dsA2", "dsB1")]
    rho = spearmanr([store_report["knn"][c] for c in cells], [ami[c + ("kmeans",)] for c in cells]).statistic
    assert _close(knn["kmeans"][0]["k=20"], rho) and knn["kmeans"][0]["cells"] == "9"
    report = (out / "report.md").read_text()
    for heading in ("## Mean over the clusterers", "### CLIP (reported apart)", "## Against the supervised encoder",
                    "## Clusterer ranks", "## Encoder ranks", "## kNN probe"):
        assert heading in report
    client, tracker = store_report["client"], store_report["tracker"]
    [run] = client.search_runs([tracker.experiment_id], "tags.`zsclust.role` = 'report'")
    assert run.data.metrics["spearman_knn_ami.kmeans.k20"] == pytest.approx(rho, abs=1e-6)
    names = {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"clusterer_mean.tex", "delta_vs_supervised.png", "ranks.png", "knn_vs_ami.csv"} <= names
