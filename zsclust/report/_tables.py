"""The study's tables from result rows: AMI per encoder × dataset with group means and mean ranks.

A :class:`Table` is a row label column plus cells (numbers, or text such as a reference's name;
missing = ``None``); it writes itself as markdown, CSV and LaTeX (booktabs), the best value of each
numeric column in bold.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np

from ._collect import ResultRow, group_rank


@dataclass
class Table:
    title: str
    row_header: str
    columns: list[str]
    rows: list[tuple[str, list[float | str | None]]]
    lower_is_better: set[str] = field(default_factory=set)  # e.g. mean rank
    counts: set[str] = field(default_factory=set)  # integer columns, never bold
    digits: int = 3
    formats: dict[str, str] = field(default_factory=dict)  # column -> format spec, e.g. {"p": ".2g"}
    plain: set[str] = field(default_factory=set)  # columns never in bold (statistics, p-values)

    def _best(self) -> dict[int, float]:
        best = {}
        for j, col in enumerate(self.columns):
            vals = [v[j] for _, v in self.rows if _number(v[j])]
            if len(vals) > 1 and col not in self.counts and col not in self.plain:
                best[j] = min(vals) if col in self.lower_is_better else max(vals)
        return best

    def _cells(self, bold) -> list[list[str]]:
        best = self._best()
        out = []
        for label, vals in self.rows:
            cells = [label]
            for j, v in enumerate(vals):
                if isinstance(v, str):
                    cells.append(v)
                elif v is None or math.isnan(v):
                    cells.append("–")
                else:
                    col = self.columns[j]
                    s = (format(v, self.formats[col]) if col in self.formats else f"{v:.0f}" if col in self.counts
                         else f"{v:.2f}" if col == "mean rank" else f"{v:.{self.digits}f}")
                    cells.append(bold(s) if j in best and v == best[j] else s)
            out.append(cells)
        return out

    def to_markdown(self) -> str:
        head = [self.row_header, *self.columns]
        lines = [f"**{self.title}**", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join([":---"] + ["---:"] * len(self.columns)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in self._cells(lambda s: f"**{s}**")]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow([self.row_header, *self.columns])
        for label, vals in self.rows:
            w.writerow([label, *[v if isinstance(v, str) else "" if v is None or math.isnan(v) else f"{v:.6g}"
                                 for v in vals]])
        return buf.getvalue()

    def to_latex(self) -> str:
        def esc(s: str) -> str:
            for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                         ("–", "--")):
                s = s.replace(a, b)
            return s

        lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{esc(self.title)}}}",
                 r"\begin{tabular}{l" + "r" * len(self.columns) + "}", r"\toprule",
                 " & ".join(esc(c) for c in [self.row_header, *self.columns]) + r" \\", r"\midrule"]
        for cells in self._cells(lambda s: rf"\textbf{{{s}}}"):
            lines.append(" & ".join([esc(cells[0]), *[c if c.startswith(r"\textbf") else esc(c) for c in cells[1:]]])
                         + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"


def _number(v) -> bool:
    return v is not None and not isinstance(v, str) and not math.isnan(v)


def mean_ranks(matrix: np.ndarray) -> np.ndarray:
    """Rank encoders (rows) within each dataset (column), 1 = best AMI, ties averaged; mean over datasets.

    Each column ranks the encoders that have a score there (at least two); an encoder's mean is over
    the columns it was ranked in, so a partial sweep still ranks what it has (the tables show how many
    datasets each mean covers when that differs).
    """
    from scipy.stats import rankdata

    ranks = np.full(matrix.shape, np.nan)
    for j in range(matrix.shape[1]):
        present = ~np.isnan(matrix[:, j])
        if present.sum() >= 2:
            ranks[present, j] = rankdata(-matrix[present, j])
    return _nanmean(ranks)


def ami_matrix(rows: list[ResultRow], encoders: list[str], datasets: list[str], metric: str = "ami") -> np.ndarray:
    index = {(r.encoder, r.dataset): r.metrics.get(metric, np.nan) for r in rows}
    return np.array([[index.get((e, d), np.nan) for d in datasets] for e in encoders], dtype=float).reshape(
        len(encoders), len(datasets))


def dataset_order(rows: list[ResultRow], preferred: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Datasets grouped in the study's group order (then the preferred or alphabetical order), and their groups."""
    groups = {r.dataset: r.group for r in rows}
    pos = {d: i for i, d in enumerate(preferred or [])}
    ordered = sorted(groups, key=lambda d: (group_rank(groups[d]), pos.get(d, len(pos)), d))
    return ordered, groups


def method_table(rows: list[ResultRow], method: str, encoders: list[str], datasets: list[str],
                 groups: dict[str, str], metric: str = "ami") -> Table:
    """Encoder × dataset, then a mean per group, the mean over all datasets and the mean rank."""
    return matrix_table(ami_matrix(rows, encoders, datasets, metric), f"{metric.upper()} per encoder and dataset: "
                        f"{method}", encoders, datasets, groups)


def matrix_table(m: np.ndarray, title: str, encoders: list[str], datasets: list[str], groups: dict[str, str]) -> Table:
    """An encoder × dataset matrix as a table, with a mean per dataset group, the mean and the mean rank."""
    group_names = sorted(dict.fromkeys(groups[d] for d in datasets), key=group_rank)
    group_means = []
    for g in group_names:
        cols = [j for j, d in enumerate(datasets) if groups[d] == g]
        group_means.append(_nanmean(m[:, cols]))
    ranks = mean_ranks(m)
    covered = (~np.isnan(m)).sum(axis=1)
    partial = len(set(covered.tolist())) > 1  # say over how many datasets each mean is taken
    columns = [*datasets, *[f"{g} mean" for g in group_names], "mean", *(["datasets"] if partial else []), "mean rank"]
    table_rows = []
    for i, e in enumerate(encoders):
        vals = [*m[i].tolist(), *[gm[i] for gm in group_means], _nanmean(m[i : i + 1, :])[0],
                *([float(covered[i])] if partial else []), ranks[i]]
        table_rows.append((e, [None if (v is None or math.isnan(v)) else float(v) for v in vals]))
    return Table(title, "encoder", columns, table_rows, lower_is_better={"mean rank"}, counts={"datasets"})


def summary_table(rows_by_method: dict[str, list[ResultRow]], encoders: list[str], datasets: list[str],
                  metric: str = "ami") -> Table:
    """Encoder × method: mean AMI over the datasets, and the mean rank over every (dataset, method) cell."""
    columns, means, all_ranks = [], [], []
    for method, rows in rows_by_method.items():
        m = ami_matrix(rows, encoders, datasets, metric)
        columns.append(method)
        means.append(_nanmean(m))
        all_ranks.append(m)
    stacked = np.concatenate(all_ranks, axis=1) if all_ranks else np.zeros((len(encoders), 0))
    ranks = mean_ranks(stacked)
    covered = (~np.isnan(stacked)).sum(axis=1)
    partial = len(set(covered.tolist())) > 1
    table_rows = []
    for i, e in enumerate(encoders):
        vals = [mm[i] for mm in means] + [_nanmean(stacked[i : i + 1, :])[0], *([float(covered[i])] if partial else []),
                                          ranks[i]]
        table_rows.append((e, [None if math.isnan(v) else float(v) for v in vals]))
    return Table(f"Mean {metric.upper()} per encoder and clusterer over the datasets", "encoder",
                 [*columns, "mean", *(["results"] if partial else []), "mean rank"], table_rows,
                 lower_is_better={"mean rank"}, counts={"results"})


def _nanmean(m: np.ndarray) -> np.ndarray:
    out = np.full(m.shape[0], np.nan)
    for i in range(m.shape[0]):
        vals = m[i][~np.isnan(m[i])]
        if vals.size:
            out[i] = vals.mean()
    return out
