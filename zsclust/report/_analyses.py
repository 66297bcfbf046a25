"""The study's analyses (protocol §8) on result rows: the mean over clusterers, AMI differences against the
supervised encoder of the same architecture with paired t-tests, clusterer and encoder ranks with
Wilcoxon signed-rank tests, and Spearman's rho between kNN accuracy and AMI.

They follow the study's notebook (scottclowe/zs-ssl-clustering, notebooks/results.ipynb) and its
analysis/knn_ami_correlation.py; docs/report.md says exactly which test runs on which pairs, and
where zsclust differs on purpose. Everything here is plain numpy/scipy on matrices, so the tests
check each number against scipy run on the same values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._collect import ResultRow, group_rank

#: Architecture → its supervised reference, first match among the encoders that ran. The study's
#: supervised ResNet-50 is torchvision's IMAGENET1K_V2 (tv2_in1k), its ViT-B/16 IMAGENET1K_V1.
DEFAULT_SUPERVISED: dict[str, tuple[str, ...]] = {
    "resnet50": ("resnet50.tv2_in1k", "resnet50.tv_in1k"),
    "vit_base_patch16_224": ("vit_base_patch16_224.tv_in1k",),
}
ALL_GROUPS = "all"


# -- which encoder is which -----------------------------------------------------------------------


def architecture(encoder: str) -> str:
    """The architecture part of a timm-style name: ``resnet50.dino`` → ``resnet50``."""
    return encoder.split(".", 1)[0]


def _spec(encoder: str):
    from ..encoders import get_encoder_spec
    from ..errors import ZsclustError

    try:
        return get_encoder_spec(encoder)
    except ZsclustError:
        return None  # a plain timm name, or an encoder this install does not register


def is_clip(encoder: str) -> bool:
    """CLIP encoders are reported apart from the main tables (study protocol §2).

    The rule: ``clip`` in the name, any case (every registered tower, ``resnet50_clip.openai``,
    ``vit_base_patch16_clip_quickgelu_224.openai``, and timm's ``*_clip_*`` names), or a registered
    encoder whose paper name starts with "CLIP".
    """
    if "clip" in encoder.lower():
        return True
    spec = _spec(encoder)
    return spec is not None and spec.paper_name.upper().startswith("CLIP")


def is_random_init(encoder: str) -> bool:
    """A randomly initialised network (``resnet50.random``): left out of differences and ranks, as the study
    does (``exclude_random``); it stays in the tables."""
    spec = _spec(encoder)
    if spec is not None:
        return spec.has_weights and not spec.pretrained
    return encoder.rsplit(".", 1)[-1] == "random"


def supervised_references(encoders: Sequence[str],
                          supervised: Mapping[str, str | Sequence[str]] | None = None) -> dict[str, str]:
    """Architecture → the supervised encoder the others of that architecture are compared with.

    ``supervised`` (default :data:`DEFAULT_SUPERVISED`) maps an architecture to one name or a list
    tried in order; the first one that ran wins. An architecture it does not name falls back to the
    registry: the one encoder of that architecture registered in the ``supervised`` group, if
    exactly one ran. Architectures with no reference get no differences.
    """
    mapping = DEFAULT_SUPERVISED if supervised is None else supervised
    present = list(dict.fromkeys(encoders))
    out = {}
    for arch in dict.fromkeys(architecture(e) for e in present):
        names = mapping.get(arch)
        if names is not None:
            names = [names] if isinstance(names, str) else list(names)
            found = [n for n in names if n in present]
            if found:
                out[arch] = found[0]
            continue
        candidates = [e for e in present if architecture(e) == arch and (s := _spec(e)) is not None
                      and s.group == "supervised"]
        if len(candidates) == 1:
            out[arch] = candidates[0]
    return out


# -- the cube: encoder × clusterer × dataset --------------------------------------------------------


@dataclass
class Cube:
    """Scores of ``encoders`` × ``methods`` (the sweep's clusterer jobs) × ``datasets``; NaN where no run."""

    encoders: list[str]
    methods: list[str]
    datasets: list[str]
    groups: dict[str, str]
    values: np.ndarray

    @classmethod
    def from_rows(cls, by_method: Mapping[str, list[ResultRow]], encoders: list[str], datasets: list[str],
                  groups: dict[str, str], metric: str = "ami") -> "Cube":
        methods = list(by_method)
        values = np.full((len(encoders), len(methods), len(datasets)), np.nan)
        ei = {e: i for i, e in enumerate(encoders)}
        di = {d: i for i, d in enumerate(datasets)}
        for j, method in enumerate(methods):
            for r in by_method[method]:
                if r.encoder in ei and r.dataset in di and metric in r.metrics:
                    values[ei[r.encoder], j, di[r.dataset]] = r.metrics[metric]
        return cls(list(encoders), methods, list(datasets), dict(groups), values)

    def subset(self, encoders: Sequence[str]) -> "Cube":
        idx = [self.encoders.index(e) for e in encoders]
        return Cube(list(encoders), self.methods, self.datasets, self.groups, self.values[idx])


def clusterer_mean(cube: Cube) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Encoder × dataset: the mean over the clusterers, and for each dataset the clusterers averaged.

    As in the study, a (dataset, clusterer) pair missing for any encoder is dropped for all of them,
    so every encoder's mean on a dataset is over the same clusterers. Only encoders with some result
    on the dataset take part (a partial sweep keeps its other columns); a dataset whose encoders
    share no clusterer stays empty.
    """
    n_enc, _, n_ds = cube.values.shape
    out = np.full((n_enc, n_ds), np.nan)
    used: dict[str, list[str]] = {}
    for d in range(n_ds):
        block = cube.values[:, :, d]
        present = ~np.all(np.isnan(block), axis=1)
        if not present.any():
            continue
        common = ~np.any(np.isnan(block[present]), axis=0)
        used[cube.datasets[d]] = [m for m, c in zip(cube.methods, common) if c]
        if common.any():
            out[present, d] = block[present][:, common].mean(axis=1)
    return out, used


# -- differences against the supervised encoder ------------------------------------------------------


@dataclass
class Delta:
    """One encoder against its architecture's supervised reference, over one dataset group's datasets."""

    encoder: str
    reference: str
    architecture: str
    group: str
    differences: list[float]  # percentage points, one per dataset where both have a mean
    t: float
    p: float

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return float(np.mean(self.differences)) if self.differences else math.nan

    @property
    def std(self) -> float:
        """Population std (numpy's default, ``ddof=0``), as the study's error bars."""
        return float(np.std(self.differences)) if self.differences else math.nan


def deltas_vs_supervised(mean: np.ndarray, encoders: list[str], datasets: list[str], groups: dict[str, str],
                         references: Mapping[str, str], exclude: Sequence[str] = ()) -> list[Delta]:
    """AMI(encoder) − AMI(reference) in percentage points per dataset, by dataset group and over all datasets.

    ``mean`` is :func:`clusterer_mean`'s encoder × dataset matrix. The test is
    ``scipy.stats.ttest_rel(encoder, reference)`` over the datasets of the group where both have a
    value (two-sided; t > 0: the encoder is better); NaN with fewer than two datasets.
    """
    from scipy.stats import ttest_rel

    group_names = sorted(dict.fromkeys(groups[d] for d in datasets), key=group_rank)
    out = []
    for i, e in enumerate(encoders):
        arch = architecture(e)
        ref = references.get(arch)
        if ref is None or ref == e or e in exclude or ref not in encoders:
            continue
        r = encoders.index(ref)
        for g in [*group_names, ALL_GROUPS]:
            cols = [j for j, d in enumerate(datasets) if (g == ALL_GROUPS or groups[d] == g)
                    and np.isfinite(mean[i, j]) and np.isfinite(mean[r, j])]
            if not cols:
                continue
            a, b = 100 * mean[i, cols], 100 * mean[r, cols]
            t = p = math.nan
            if len(cols) >= 2:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # constant differences: scipy's own inf/nan answer stands
                    res = ttest_rel(a, b)
                t, p = float(res.statistic), float(res.pvalue)
            out.append(Delta(e, ref, arch, g, (a - b).tolist(), t, p))
    return out


# -- ranks and Wilcoxon signed-rank tests ------------------------------------------------------------


@dataclass
class RankStat:
    name: str
    mean_rank: float
    std_rank: float
    mean_score: float
    n: int


@dataclass
class PairTest:
    """A two-sided Wilcoxon signed-rank test of ``a`` against ``b`` over ``n`` paired samples."""

    a: str
    b: str
    n: int
    mean_difference: float  # mean of a − b (score units)
    statistic: float
    p: float
    p_holm: float = math.nan
    against: str = ""  # the family: "" for clusterer pairs, "reference" or "best" for encoders


@dataclass
class Ranking:
    stats: list[RankStat]
    tests: list[PairTest] = field(default_factory=list)
    samples: int = 0
    family: str = ""  # what the Holm correction runs over


def wilcoxon_pair(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``scipy.stats.wilcoxon(x, y)`` with scipy's defaults: two-sided, zero differences dropped
    (``zero_method="wilcox"``), ``method="auto"`` (exact up to 50 pairs; with ties or zeros,
    permutations up to 13 pairs, else the normal approximation). (statistic, p); NaN when every
    difference is zero."""
    from scipy.stats import wilcoxon

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 1 or np.all(x == y):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = wilcoxon(x, y)
        except ValueError:
            return math.nan, math.nan
    return float(res.statistic), float(res.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (NaN stays NaN and does not count in the family)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def _ranks(samples: np.ndarray) -> np.ndarray:
    """Rank within each row, 1 = best (highest score), ties averaged."""
    from scipy.stats import rankdata

    return rankdata(-samples, axis=1) if samples.size else samples


def clusterer_ranking(cube: Cube, encoders: Sequence[str]) -> Ranking:
    """Rank the clusterers within each (encoder, dataset) cell of ``encoders`` that has every clusterer.

    Mean and std (ddof=0) of each clusterer's rank over the cells, and a Wilcoxon signed-rank test
    of each pair of clusterers on their scores, paired by cell, Holm-corrected over the pairs.
    """
    sub = cube.subset([e for e in encoders if e in cube.encoders]).values  # encoders × methods × datasets
    samples = np.moveaxis(sub, 1, 2).reshape(-1, len(cube.methods))  # (encoder, dataset) × methods
    samples = samples[~np.any(np.isnan(samples), axis=1)]
    ranks = _ranks(samples)
    stats = [RankStat(m, *_mean_std(ranks[:, j]), float(samples[:, j].mean()) if len(samples) else math.nan,
                      len(samples)) for j, m in enumerate(cube.methods)]
    tests = []
    for a in range(len(cube.methods)):
        for b in range(a + 1, len(cube.methods)):
            stat, p = wilcoxon_pair(samples[:, a], samples[:, b]) if len(samples) else (math.nan, math.nan)
            diff = float(np.mean(samples[:, a] - samples[:, b])) if len(samples) else math.nan
            tests.append(PairTest(cube.methods[a], cube.methods[b], len(samples), diff, stat, p))
    for t, adj in zip(tests, holm([t.p for t in tests])):
        t.p_holm = adj
    return Ranking(stats, tests, len(samples), "all pairs of clusterers")


def encoder_ranking(mean: np.ndarray, encoders: list[str], ranked: Sequence[str],
                    references: Mapping[str, str]) -> Ranking:
    """Rank ``ranked`` encoders within each dataset on their mean over clusterers.

    Only datasets where every ranked encoder has a mean count (so ranks compare like with like).
    Tests: each encoder against its architecture's supervised reference, and each against the
    best-ranked encoder, Wilcoxon signed-rank on the mean AMI paired by dataset; Holm within each
    of the two families.
    """
    idx = [encoders.index(e) for e in ranked if e in encoders]
    names = [encoders[i] for i in idx]
    m = mean[idx]
    complete = np.all(np.isfinite(m), axis=0) if len(idx) else np.zeros(m.shape[1], bool)
    samples = m[:, complete].T  # datasets × encoders
    ranks = _ranks(samples) if len(names) >= 2 else np.full(samples.shape, np.nan)
    stats = [RankStat(e, *_mean_std(ranks[:, j]), float(samples[:, j].mean()) if len(samples) else math.nan,
                      len(samples)) for j, e in enumerate(names)]
    tests_ref, tests_best = [], []
    finite = [s for s in stats if not math.isnan(s.mean_rank)]
    best = min(finite, key=lambda s: s.mean_rank).name if finite else None
    for j, e in enumerate(names):
        ref = references.get(architecture(e))
        for other, bucket, family in ((ref, tests_ref, "reference"), (best, tests_best, "best")):
            if other is None or other == e or other not in names:
                continue
            k = names.index(other)
            stat, p = wilcoxon_pair(samples[:, j], samples[:, k]) if len(samples) else (math.nan, math.nan)
            diff = float(np.mean(samples[:, j] - samples[:, k])) if len(samples) else math.nan
            bucket.append(PairTest(e, other, len(samples), diff, stat, p, against=family))
    for bucket in (tests_ref, tests_best):
        for t, adj in zip(bucket, holm([t.p for t in bucket])):
            t.p_holm = adj
    return Ranking(stats, tests_ref + tests_best, len(samples),
                   "each family apart: vs the supervised reference; vs the best-ranked encoder")


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    x = x[~np.isnan(x)] if x.size else x
    return (float(x.mean()), float(x.std())) if x.size else (math.nan, math.nan)


# -- kNN accuracy vs AMI ----------------------------------------------------------------------------


@dataclass
class KnnCorrelation:
    """Spearman's rho between kNN accuracy at ``k`` and a clusterer's score, over encoder × dataset cells."""

    method: str
    k: int
    rho: float
    n: int


def knn_vs_clusterers(knn: Mapping[tuple[str, str], Mapping[int, float]], cube: Cube, ks: Sequence[int],
                      mean: np.ndarray | None = None) -> list[KnnCorrelation]:
    """One Spearman rho per (clusterer, k) over the (encoder, dataset) cells of ``cube`` that have both numbers.

    ``knn`` maps (encoder, dataset) → {k: accuracy}. With ``mean`` (the cube's encoder × dataset
    mean over clusterers), a "mean of clusterers" row correlates it too.
    """
    from ..cluster import spearman_rho

    keep = range(len(cube.encoders))
    series = [(m, cube.values[:, j, :]) for j, m in enumerate(cube.methods)]
    if mean is not None:
        series.append((MEAN_OF_CLUSTERERS, mean))
    out = []
    for method, matrix in series:
        for k in ks:
            x, y = [], []
            for i in keep:
                for d, ds in enumerate(cube.datasets):
                    acc = knn.get((cube.encoders[i], ds), {}).get(k)
                    if acc is not None and np.isfinite(matrix[i, d]):
                        x.append(acc)
                        y.append(matrix[i, d])
            out.append(KnnCorrelation(method, k, spearman_rho(x, y), len(x)))
    return out


MEAN_OF_CLUSTERERS = "mean of clusterers"
