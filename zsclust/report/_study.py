"""The report's sections for the study's analyses (protocol §8): tables and figures from :mod:`._analyses`.

Each section writes its tables (markdown, CSV, LaTeX) and figures into the report folder through
the ``write_table`` callback of :func:`zsclust.report.build_report`, and returns its markdown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._analyses import (ALL_GROUPS, MEAN_OF_CLUSTERERS, Cube, clusterer_mean, clusterer_ranking, deltas_vs_supervised,
                        encoder_ranking, is_clip, is_random_init, knn_vs_clusterers, supervised_references)
from ._collect import KnnRow, ResultRow, group_rank
from ._figures import plot_deltas, plot_heatmap, plot_knn_spearman, plot_ranks, plot_taxonomic_levels
from ..cluster._taxonomy import INAT_LEVELS
from ._tables import Table, matrix_table

P_FORMATS = {"p": ".2g", "p (Holm)": ".2g", "W": ".1f", "t": ".2f"}


@dataclass
class StudyOutput:
    sections: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    knn_spearman: dict[tuple[str, int], float] = field(default_factory=dict)


def study_sections(out: Path, by_method: Mapping[str, list[ResultRow]], encoders: list[str], datasets: list[str],
                   groups: dict[str, str], metric: str, knn_rows: list[KnnRow],
                   write_table: Callable[[str, Table], str], supervised=None) -> StudyOutput:
    """Mean over clusterers (CLIP apart), differences to the supervised encoder, ranks, kNN vs AMI."""
    res = StudyOutput()
    name = metric.upper()
    cube = Cube.from_rows(by_method, encoders, datasets, groups, metric)
    main = [e for e in encoders if not is_clip(e)]
    clip = [e for e in encoders if is_clip(e)]
    ranked = [e for e in main if not is_random_init(e)]
    mean_all, used = clusterer_mean(cube.subset(main)) if main else (np.zeros((0, len(datasets))), {})
    methods_txt = ", ".join(cube.methods)

    # -- mean over the clusterers, CLIP apart ---------------------------------------------------
    if main and cube.methods:
        res.sections += ["## Mean over the clusterers", "",
                         f"Each cell is the mean {name} over the clusterers ({methods_txt}) that every encoder "
                         "with results on the dataset has, so all means on a dataset cover the same clusterers. "
                         "CLIP encoders are reported apart."
                         + _fewer(used, cube.methods), ""]
        res.sections.append(write_table("clusterer_mean", matrix_table(
            mean_all, f"{name} per encoder and dataset: mean over the clusterers", main, datasets, groups)))
        png = plot_heatmap(mean_all, main, datasets, out / "clusterer_mean_heatmap.png",
                           f"{name}: mean over the clusterers")
        res.files.append(png)
        res.sections += [f"![mean over clusterers]({png.name})", ""]
    if clip:
        clip_mean, clip_used = clusterer_mean(cube.subset(clip))
        res.sections += ["### CLIP (reported apart)", "", _fewer(clip_used, cube.methods).strip() or
                         "The same mean over the clusterers, for the CLIP encoders.", ""]
        res.sections.append(write_table("clusterer_mean_clip", matrix_table(
            clip_mean, f"{name} per CLIP encoder and dataset: mean over the clusterers", clip, datasets, groups)))

    # -- differences against the supervised encoder ---------------------------------------------
    refs = supervised_references(main, supervised)
    deltas = deltas_vs_supervised(mean_all, main, datasets, groups, refs, exclude=[e for e in main if is_random_init(e)])
    if deltas:
        rows = [(d.encoder, [d.reference, d.group, float(d.n), d.mean, d.std, d.t, d.p]) for d in deltas]
        table = Table(f"{name} (mean over clusterers) minus the supervised encoder's, in percentage points",
                      "encoder", ["reference", "group", "datasets", "difference mean (pp)", "difference std (pp)",
                                  "t", "p"], rows, counts={"datasets"}, digits=2, formats=P_FORMATS,
                      plain={"difference mean (pp)", "difference std (pp)", "t", "p"})
        group_names = [*sorted({d.group for d in deltas} - {ALL_GROUPS}, key=group_rank), ALL_GROUPS]
        png = plot_deltas(deltas, group_names, out / "delta_vs_supervised.png")
        res.files.append(png)
        res.sections += ["## Against the supervised encoder of the same architecture", "",
                         "Per dataset, the encoder's mean over the clusterers minus its reference's, in percentage "
                         "points; mean and std (ddof=0) over the group's datasets; paired t-test "
                         "`scipy.stats.ttest_rel(encoder, reference)` over those datasets (two-sided, t > 0: "
                         "better than supervised). References: "
                         + ", ".join(f"{a} → {r}" for a, r in refs.items()) + ". Random-init encoders are left out.",
                         "", write_table("delta_vs_supervised", table), f"![differences]({png.name})", ""]
    elif main:
        res.notes.append("no encoder shares an architecture with a supervised reference that ran (e.g. resnet50.dino "
                         "with resnet50.tv2_in1k): no differences against supervised")

    # -- ranks ------------------------------------------------------------------------------------
    rankings = {}
    if len(cube.methods) >= 2:
        cr = clusterer_ranking(cube, ranked)
        if cr.samples:
            rankings["clusterers"] = cr
            res.sections += ["## Clusterer ranks", "",
                             f"Clusterers ranked within each (encoder, dataset) cell that has all of them "
                             f"({_n(cr.samples, 'cell')}; CLIP and random-init encoders left out; 1 = best, "
                             "ties averaged). "
                             f"Wilcoxon signed-rank test of each pair on their {name}, paired by cell, two-sided, "
                             "Holm-corrected over all pairs.", "",
                             write_table("clusterer_ranks", _rank_table(cr, "clusterer", "cells", name)),
                             write_table("clusterer_wilcoxon", _pair_table(cr, "cells", name)), ""]
    if len(ranked) >= 2:
        er = encoder_ranking(mean_all, main, ranked, refs)
        if er.samples:
            rankings["encoders"] = er
            res.sections += ["## Encoder ranks", "",
                             "Encoders ranked within each dataset on their mean over the clusterers "
                             f"({_n(er.samples, 'dataset')} where every ranked encoder has one; CLIP and "
                             "random-init encoders left out). "
                             f"Wilcoxon signed-rank tests on the mean {name}, paired by dataset, two-sided: each "
                             "encoder against its architecture's supervised reference, and against the best-ranked "
                             "encoder; Holm-corrected within each of the two families.", "",
                             write_table("encoder_ranks", _rank_table(er, "encoder", "datasets", name)),
                             write_table("encoder_wilcoxon", _pair_table(er, "datasets", name, refs)), ""]
        else:
            res.notes.append("no dataset has a mean over clusterers for every ranked encoder: no encoder ranks")
    if rankings:
        png = plot_ranks(rankings, out / "ranks.png")
        res.files.append(png)
        res.sections += [f"![ranks]({png.name})", ""]

    # -- kNN accuracy vs AMI ----------------------------------------------------------------------
    knn = {(r.encoder, r.dataset): r.accuracy for r in knn_rows}
    ks = sorted({k for r in knn_rows for k in r.accuracy})
    if knn_rows:
        acc_rows = [(f"{r.encoder} / {r.dataset}", [r.accuracy.get(k) for k in ks])
                    for r in sorted(knn_rows, key=lambda r: (_pos(encoders, r.encoder), _pos(datasets, r.dataset)))]
        acc = Table("kNN probe accuracy (train split as the bank, test split as the queries)", "encoder / dataset",
                    [f"k={k}" for k in ks], acc_rows, plain={f"k={k}" for k in ks})
        res.sections += ["## kNN probe", "", write_table("knn_accuracy", acc)]
        corr = knn_vs_clusterers(knn, cube.subset(main), ks, mean_all) if cube.methods and main else []
        if corr:
            methods = list(dict.fromkeys(c.method for c in corr))
            matrix = np.array([[next(c.rho for c in corr if c.method == m and c.k == k) for k in ks] for m in methods])
            counts = [max(c.n for c in corr if c.method == m) for m in methods]
            rows = [(m, [*matrix[i].tolist(), float(counts[i])]) for i, m in enumerate(methods)]
            table = Table(f"Spearman rho between kNN accuracy and {name}, over encoder × dataset cells", "clusterer",
                          [*[f"k={k}" for k in ks], "cells"], rows, counts={"cells"}, plain={f"k={k}" for k in ks},
                          digits=2)
            res.knn_spearman = {(c.method, c.k): c.rho for c in corr}
            res.sections += ["", f"Spearman's rho between kNN accuracy at each k and {name}, per clusterer and for "
                             f"the mean over clusterers (CLIP left out, as in the study).", "",
                             write_table("knn_vs_ami", table)]
            if np.isfinite(matrix).any():
                png = plot_knn_spearman(matrix, methods, ks, counts, out / "knn_vs_ami.png")
                res.files.append(png)
                res.sections += [f"![kNN vs AMI]({png.name})", ""]
            else:
                res.notes.append("kNN vs AMI: Spearman's rho needs 3+ encoder × dataset cells whose values differ; "
                                 "no figure")
    elif by_method:
        res.notes.append("no kNN probe runs (sweep.knn: true in the sweep config, or zsclust knn): no kNN vs AMI")

    # -- AMI per taxonomic level --------------------------------------------------------------------
    if metric == "ami" and main:
        res.sections += _taxonomic_sections(out, by_method, main, datasets, groups, mean_all, write_table, res)
    return res


def _taxonomic_sections(out: Path, by_method, encoders: list[str], datasets: list[str], groups: dict[str, str],
                        mean_all: np.ndarray, write_table, res: StudyOutput) -> list[str]:
    """For each dataset whose runs carry ``ami_<level>`` (class names with a lineage, e.g. iNat-2021): the mean
    over clusterers at every level, coarsest first, the classes themselves last."""
    sections = []
    for j, dataset in enumerate(datasets):
        levels = list(dict.fromkeys(k[4:] for rows in by_method.values() for r in rows if r.dataset == dataset
                                    for k in r.metrics if k.startswith("ami_") and k[4:] in _LEVEL_ORDER))
        levels.sort(key=_LEVEL_ORDER.index)
        if not levels:
            continue
        columns = np.stack([clusterer_mean(Cube.from_rows(by_method, encoders, datasets, groups, f"ami_{lv}"))[0][:, j]
                            for lv in levels] + [mean_all[:, j]], axis=1)
        names = [*levels, "classes"]
        keep = [i for i in range(len(encoders)) if np.isfinite(columns[i]).any()]
        if not keep:
            continue
        rows = [(encoders[i], [None if np.isnan(v) else float(v) for v in columns[i]]) for i in keep]
        table = Table(f"AMI per taxonomic level on {dataset}: mean over the clusterers", "encoder", names, rows)
        if not sections:
            sections += ["## AMI per taxonomic level", "",
                         "The same predicted clusters scored against the true labels at each coarser level of their "
                         "lineage (read from the class names), as the study does for iNaturalist-2021; each cell is "
                         "the mean over the clusterers, CLIP apart.", ""]
        sections.append(write_table(f"taxonomic_ami_{dataset}", table))
        png = plot_taxonomic_levels(columns[keep], [encoders[i] for i in keep], names,
                                    out / f"taxonomic_ami_{dataset}.png", f"{dataset}: AMI per taxonomic level")
        res.files.append(png)
        sections += [f"![AMI per taxonomic level on {dataset}]({png.name})", ""]
    return sections


_LEVEL_ORDER = [*INAT_LEVELS, *(f"level{i}" for i in range(1, 33))]


def _fewer(used: Mapping[str, list[str]], methods: list[str]) -> str:
    short = {d: m for d, m in used.items() if len(m) < len(methods)}
    if not short:
        return ""
    return " Datasets over fewer clusterers (a clusterer missing for some encoder): " + "; ".join(
        f"{d}: {', '.join(m) or 'none'}" for d, m in short.items()) + "."


def _rank_table(ranking, what: str, samples: str, name: str) -> Table:
    rows = [(s.name, [s.mean_rank, s.std_rank, s.mean_score, float(s.n)]) for s in ranking.stats]
    return Table(f"{what.capitalize()} ranks (1 = best): mean and std over {_n(ranking.samples, samples[:-1])}", what,
                 ["mean rank", "rank std", f"mean {name}", samples], rows, lower_is_better={"mean rank"},
                 counts={samples}, plain={"rank std"})


def _pair_table(ranking, samples: str, name: str, refs: Mapping[str, str] | None = None) -> Table:
    rows = []
    for t in ranking.tests:
        against = f"{t.against} {t.b}"
        label = f"{t.a} vs {t.b}" if refs is None else t.a
        rows.append((label, [*([against] if refs is not None else []), float(t.n), 100 * t.mean_difference,
                             t.statistic, t.p, t.p_holm]))
    cols = [*(["against"] if refs is not None else []), samples, "mean difference (pp)", "W", "p", "p (Holm)"]
    return Table(f"Wilcoxon signed-rank tests on {name} ({ranking.family})", "pair" if refs is None else "encoder",
                 cols, rows, counts={samples}, formats=P_FORMATS, digits=2,
                 plain={"mean difference (pp)", "W", "p", "p (Holm)"})


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _pos(order: list[str], item: str) -> int:
    return order.index(item) if item in order else len(order)


__all__ = ["StudyOutput", "study_sections", "MEAN_OF_CLUSTERERS"]
