"""AMI per taxonomic level (study §8): lineages read from class names, scored per level, logged with every run,
and tabled by ``zsclust report``."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_mutual_info_score

from zsclust.cli import main
from zsclust.cluster import ClusteringPipeline, JobSpec, Scoring
from zsclust.cluster._taxonomy import taxonomic_ami, taxonomy
from zsclust.embed import EmbeddingSet
from zsclust.tracking import MLflowTracker

# Two families; the first has two genera. Four species, written as iNaturalist-2021's category folders.
INAT = ["00000_Animalia_Arthropoda_Insecta_Diptera_Culicidae_Aedes_aegypti",
        "00001_Animalia_Arthropoda_Insecta_Diptera_Culicidae_Aedes_albopictus",
        "00002_Animalia_Arthropoda_Insecta_Diptera_Culicidae_Culex_pipiens",
        "00003_Animalia_Arthropoda_Insecta_Diptera_Muscidae_Musca_domestica"]


def test_inaturalist_names_give_every_coarser_level_that_groups_classes():
    levels = taxonomy(INAT)
    # kingdom .. order hold all four species in one group (nothing to score); family splits 3 + 1; genus 2 + 1 + 1
    assert list(levels) == ["family", "genus"]
    assert levels["family"].tolist() == [0, 0, 0, 1]
    assert levels["genus"].tolist() == [0, 0, 1, 2]


def test_separated_lineages_and_names_without_one():
    names = ["Insecta > Diptera > Culicidae > sp1", "Insecta > Diptera > Culicidae > sp2",
             "Insecta > Hymenoptera > Apidae > sp3"]
    levels = taxonomy(names)
    assert list(levels) == ["level2", "level3"]  # level1 (Insecta) is one group
    assert levels["level2"].tolist() == [0, 0, 1]
    # a genus name reused under another family is another genus: levels are whole lineages
    assert taxonomy(["A > x > s1", "A > x > s2", "B > x > s3"])["level2"].tolist() == [0, 0, 1]
    assert taxonomy(["cat", "dog"]) is None
    assert taxonomy(["A > s1", "s2"]) is None  # not every class has a lineage
    assert taxonomy(["A > s1", "B > s2"]) is None  # a level as fine as the classes is just `ami`
    assert taxonomy(INAT[:1]) is None


def test_taxonomic_ami_is_the_ami_against_the_mapped_labels():
    y = np.repeat(np.arange(4), 25)
    levels = taxonomy(INAT)
    by_genus = levels["genus"][y]  # clusters that found the genera, not the species
    m = taxonomic_ami(y, by_genus, levels)
    assert m["ami_genus"] == pytest.approx(1.0)
    assert m["ami_family"] == pytest.approx(adjusted_mutual_info_score(levels["family"][y], by_genus))
    assert m["ami_family"] < 1.0 and adjusted_mutual_info_score(y, by_genus) < 1.0
    assert set(m) == {"ami_family", "ami_genus"}


def test_runs_carry_ami_per_level_and_the_report_tables_it(tmp_path):
    """Blobs placed by genus (the two Aedes species share a centre): K-Means with K=3 finds the genera, so its
    ami_genus is 1 while its species AMI is not; the report tables the mean over clusterers per level."""
    centres = [0, 0, 1, 2]  # species → blob
    X, blob = make_blobs(n_samples=300, centers=3, n_features=8, cluster_std=0.3, random_state=0)
    rng = np.random.default_rng(0)
    species = np.array([rng.choice([0, 1]) if b == 0 else (2 if b == 1 else 3) for b in blob])
    assert [centres[s] for s in species] == blob.tolist()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MLflowTracker(uri, experiment="taxonomy")
    jobs = [JobSpec("kmeans", {"name": "none"}, {"name": "kmeans", "n_clusters": 3}),
            JobSpec("ac_k", {"name": "none"}, {"name": "agglomerative", "n_clusters": 3})]
    for encoder in ("enc_a", "enc_b"):
        emb = EmbeddingSet(X.astype(np.float32), species, np.arange(len(species)), np.zeros(0, np.int64),
                           {"fingerprint": f"tax-{encoder}",
                            "dataset": {"name": "inat2021", "split": "test", "group": "fine-grained", "classes": INAT}})
        pipe = ClusteringPipeline(jobs, seed=0, tracker=tracker, plots=False,
                                  scoring=Scoring(silhouette_spaces=("raw",)),
                                  context={"encoder.name": encoder, "data.name": "inat2021", "data.split": "test",
                                           "data.group": "fine-grained"})
        results = pipe.run(emb, progress=False)
        assert not [r.error for r in results if r.error]
        for r in results:
            assert r.metrics["ami_genus"] == pytest.approx(1.0)
            assert r.metrics["ami"] == pytest.approx(adjusted_mutual_info_score(species, blob))
            assert r.metrics["ami"] < 0.95
            assert "ami_family" in r.metrics and "ami_kingdom" not in r.metrics

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("taxonomy").experiment_id])
    assert len(runs) == 4 and all(r.data.metrics["ami_genus"] == pytest.approx(1.0) for r in runs)

    out = tmp_path / "report"
    assert main(["report", "--uri", uri, "--experiment", "taxonomy", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## AMI per taxonomic level" in text
    with open(out / "taxonomic_ami_inat2021.csv") as f:
        rows = {row[0]: row for row in csv.reader(f)}
    header = rows["encoder"]
    assert header[1:] == ["family", "genus", "classes"]
    for encoder in ("enc_a", "enc_b"):
        values = dict(zip(header[1:], map(float, rows[encoder][1:])))
        expected = np.mean([r.data.metrics["ami"] for r in runs if r.data.tags.get("encoder") == encoder])
        assert values["genus"] == pytest.approx(1.0) and values["classes"] == pytest.approx(expected)
    assert (out / "taxonomic_ami_inat2021.png").stat().st_size > 0
