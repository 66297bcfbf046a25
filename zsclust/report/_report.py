"""``zsclust report``: the study's tables and figures from whatever MLflow holds, written to a folder and logged.

Works on any subset: tables have a dash where a run is missing, and ``missing.md`` lists what the
expected grid (a sweep config's, or every seen encoder × dataset × method) still lacks, with the
error of a failed run where there is one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .._atomic import atomic_write_bytes
from .._secrets import redact_text
from ..cluster import spearman_rho
from ._collect import SETUP_LABELS, ResultRow, collect_knn_rows, collect_rows
from ._figures import plot_heatmap, plot_silhouette_vs_ami, plot_tuned_vs_default
from ._study import study_sections

KNN_JOB = "knn"  # the label of a sweep's kNN jobs (zsclust.sweep._knn.KNN_JOB)
from ._tables import Table, ami_matrix, dataset_order, method_table, summary_table

SILHOUETTE_KEY = "silhouette_umap50"
ALL_CLUSTERERS = "all clusterers"


@dataclass
class ReportResult:
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    spearman: dict[str, float] = field(default_factory=dict)  # silhouette vs the metric, per clusterer and overall
    knn_spearman: dict[tuple[str, int], float] = field(default_factory=dict)  # (clusterer, k) -> rho
    run_id: str | None = None
    n_rows: int = 0


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")


def _write(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, lambda f: f.write(text.encode()))


def _write_table(out: Path, stem: str, table: Table, result: ReportResult) -> str:
    for ext, text in (("md", table.to_markdown()), ("csv", table.to_csv()), ("tex", table.to_latex())):
        result.files.append(_write(out / f"{stem}.{ext}", text))
    return table.to_markdown()


def build_report(tracker, out_dir: str | Path, *, experiments: list[str] | None = None,
                 expected: list[tuple] | None = None, encoder_order: list[str] | None = None,
                 dataset_order_hint: list[str] | None = None, split: str = "test", metric: str = "ami",
                 log: bool = True, supervised=None) -> ReportResult:
    """Collect rows from ``experiments`` (default: the tracker's), write every table and figure, log them.

    ``expected`` is the grid a sweep should have produced: (encoder, dataset, split, job label, job key),
    from :func:`expected_from_sweep`; only runs with those keys count. ``supervised`` maps an
    architecture to its supervised reference (default ``DEFAULT_SUPERVISED``; see docs/report.md).
    """
    out = Path(out_dir)
    result = ReportResult(out)
    client = tracker.client
    exp_ids = [tracker.experiment_id]
    for name in experiments or []:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            result.notes.append(f"experiment '{name}' does not exist in {tracker.display_uri}; left out")
        elif exp.experiment_id not in exp_ids:
            exp_ids.append(exp.experiment_id)
    keys = {job[4] for job in expected if len(job) > 4} if expected else None
    all_rows = collect_rows(client, exp_ids, keys or None)
    check_arguments(all_rows, split, metric)  # a typo must not write (and log) an empty report
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in all_rows if r.split == split]
    knn_keys = {job[4] for job in expected or [] if len(job) > 4 and job[3] == KNN_JOB}
    knn_rows = [r for r in collect_knn_rows(client, exp_ids, knn_keys or None) if r.split == split]
    if expected and not knn_keys:  # a grid without sweep.knn: zsclust knn's runs on its encoders and datasets
        cells = {(r.encoder, r.dataset) for r in rows}
        knn_rows = [r for r in knn_rows if (r.encoder, r.dataset) in cells]
    result.n_rows = len(rows)
    default = [r for r in rows if r.role == "default"]
    tuned = [r for r in rows if r.role == "tuned"]
    sections = [f"# zsclust report: {', '.join(client.get_experiment(i).name for i in exp_ids)} ({split} split)", ""]

    if not default:
        result.notes.append(f"no finished clustering runs on the {split} split: run 'zsclust sweep' first")
    by_method: dict[str, list[ResultRow]] = {}
    order = {}
    for job in expected or []:
        order.setdefault(job[3], len(order))
    for r in sorted(default, key=lambda r: (order.get(r.method, len(order)), r.method)):
        by_method.setdefault(r.method, []).append(r)
    encoders = [e for e in (encoder_order or []) if any(r.encoder == e for r in default)]
    encoders += sorted({r.encoder for r in default} - set(encoders))
    datasets, groups = dataset_order(default, dataset_order_hint)

    # -- tables and heatmaps per method --------------------------------------------------------
    if by_method:
        sections += ["## Summary", "", _write_table(out, "summary", summary_table(by_method, encoders, datasets, metric),
                                                    result)]
    for method, mrows in by_method.items():
        stem = _slug(method)
        reducers = sorted({r.reducer for r in mrows})
        title = (f"{method} ({SETUP_LABELS.get(mrows[0].setup, mrows[0].setup)}, "
                 f"{reducers[0] if len(reducers) == 1 else 'reduction per encoder'})")
        table = method_table(mrows, title, encoders, datasets, groups, metric)
        sections += [f"## {title}", "", _write_table(out, f"{metric}_{stem}", table, result)]
        png = plot_heatmap(ami_matrix(mrows, encoders, datasets, metric), encoders, datasets,
                           out / f"{metric}_heatmap_{stem}.png", f"{metric.upper()}: {title}")
        result.files.append(png)
        sections += [f"![{metric} heatmap {method}]({png.name})", ""]

    # -- the label-free proxy ------------------------------------------------------------------
    panels, sp_rows = {}, []
    for method, mrows in by_method.items():
        pts = [r for r in mrows if SILHOUETTE_KEY in r.metrics and metric in r.metrics]
        if not pts:
            continue
        x = [r.metrics[SILHOUETTE_KEY] for r in pts]
        y = [r.metrics[metric] for r in pts]
        rho = spearman_rho(x, y)
        panels[method] = {"x": x, "y": y, "encoders": [r.encoder for r in pts], "rho": rho}
        result.spearman[method] = rho
        sp_rows.append((method, [rho, float(len(pts))]))
    if len(panels) > 1:  # every clusterer's points together
        x = [v for p in panels.values() for v in p["x"]]
        y = [v for p in panels.values() for v in p["y"]]
        result.spearman[ALL_CLUSTERERS] = spearman_rho(x, y)
        sp_rows.append((ALL_CLUSTERERS, [result.spearman[ALL_CLUSTERERS], float(len(x))]))
    if panels:
        png = plot_silhouette_vs_ami(panels, out / "silhouette_vs_ami.png", SILHOUETTE_KEY)
        result.files.append(png)
        sp = Table(f"Spearman rho between {SILHOUETTE_KEY} and {metric.upper()} per clusterer", "clusterer",
                   ["spearman rho", "points"], sp_rows, counts={"points"})
        sections += ["## Silhouette (UMAP) vs AMI", "", _write_table(out, "spearman", sp, result),
                     f"![silhouette vs AMI]({png.name})", ""]
    elif default:
        result.notes.append(f"no run has {SILHOUETTE_KEY} (evaluation.silhouette_spaces without umap50?): no scatter plot")

    # -- the study's analyses: mean over clusterers, vs supervised, ranks, kNN vs AMI -------------
    study = study_sections(out, by_method, encoders, datasets, groups, metric, knn_rows,
                           lambda stem, table: _write_table(out, stem, table, result), supervised)
    sections += study.sections
    result.files += study.files
    result.notes += study.notes
    result.knn_spearman = study.knn_spearman

    # -- tuned vs default ----------------------------------------------------------------------
    pairs = _tuned_pairs(default, tuned, metric)
    if pairs:
        t = Table(f"{metric.upper()} with tuned vs default hyperparameters", "encoder / dataset / setup",
                  ["default", "tuned", "tuned - default"], [(lab, [d, tu, tu - d]) for lab, d, tu, _ in pairs])
        png = plot_tuned_vs_default([p[1] for p in pairs], [p[2] for p in pairs], [p[3] for p in pairs],
                                    out / "tuned_vs_default.png")
        result.files.append(png)
        sections += ["## Tuned vs default", "", _write_table(out, "tuned_vs_default", t, result),
                     f"![tuned vs default]({png.name})", ""]
    else:
        result.notes.append("no tuned runs to compare with (zsclust tune, then zsclust evaluate --study NAME "
                            "evaluate.experiment=<this experiment>, or pass its experiment with --tuned-experiment)")

    # -- what is missing -----------------------------------------------------------------------
    result.missing = _missing(default, expected, encoders, datasets, by_method, split, tracker, exp_ids,
                              {r.key for r in knn_rows})
    miss = ["# Missing", ""]
    miss += [f"- {m}" for m in result.missing] or ["Nothing: every expected job has a finished run."]
    miss += ["", "# Notes", ""] + ([f"- {n}" for n in result.notes] or ["none"])
    # failure reasons are error messages: any URL in one is shown without its password
    result.files.append(_write(out / "missing.md", redact_text("\n".join(miss) + "\n", tracker.uri)))
    sections += ["## Missing", "", f"{len(result.missing)} expected job(s) without a finished run: see missing.md.", ""]
    result.files.append(_write(out / "report.md", "\n".join(sections)))
    if log:
        result.run_id = _log(tracker, out, result, split)
    return result


def check_arguments(rows: list[ResultRow], split: str, metric: str) -> None:
    """``split`` and ``metric`` must be ones the finished runs have: a ConfigError naming those they do have.

    Nothing is checked against an experiment without finished clustering runs (the report then says so).
    """
    from ..errors import ConfigError, did_you_mean

    if not rows:
        return
    splits = sorted({r.split for r in rows})
    if split not in splits:
        raise ConfigError(f"No finished clustering run has split '{split}'.{did_you_mean(split, splits)} The runs "
                          f"have: {', '.join(splits)}. Pass one of them to --split.")
    metrics = sorted({k for r in rows if r.split == split for k in r.metrics})
    if metric not in metrics:
        scores = [m for m in metrics if "." not in m and "/" not in m and not m.endswith("seconds")] or metrics
        raise ConfigError(f"No finished clustering run on the {split} split has the metric '{metric}'."
                          f"{did_you_mean(metric, metrics)} Pass one the runs have to --metric: "
                          f"{', '.join(scores[:25])}{' ...' if len(scores) > 25 else ''}.")


def _tuned_pairs(default, tuned, metric) -> list[tuple[str, float, float, str]]:
    base: dict[tuple, float] = {}
    for r in default:  # the first reducer seen stands for the setup
        if metric in r.metrics:
            base.setdefault((r.encoder, r.dataset, r.setup), r.metrics[metric])
    out = []
    for r in sorted(tuned, key=lambda r: (r.encoder, r.dataset, r.setup)):
        key = (r.encoder, r.dataset, r.setup)
        if key in base and metric in r.metrics:
            label = SETUP_LABELS.get(r.setup, r.setup)
            out.append((f"{r.encoder} / {r.dataset} / {label}", base[key], r.metrics[metric], label))
    return out


def _missing(default, expected, encoders, datasets, by_method, split, tracker, exp_ids, knn_keys=()) -> list[str]:
    have_names = {(r.encoder, r.dataset, r.split, r.method) for r in default}
    have_keys = {r.key for r in default} | set(knn_keys)
    if expected is None:  # every seen encoder x dataset x method
        methods = {r.method for r in default}
        expected = [(e, d, split, m) for e in encoders for d in datasets for m in sorted(methods)]
    errors = _failure_reasons(tracker, exp_ids)
    out = []
    for job in expected:
        done = job[4] in have_keys if len(job) > 4 else job[:4] in have_names
        if job[2] == split and not done:
            why = errors.get(job[4] if len(job) > 4 else job[:4])
            out.append(f"{job[0]} / {job[1]}:{job[2]} / {job[3]}: "
                       + (f"failed: {why.splitlines()[0][:200]}" if why else "no run"))
    return out


def _failure_reasons(tracker, exp_ids) -> dict:
    """The latest error of each failed job, by its key and by its names."""
    from ..tracking import iter_runs

    reasons = {}
    for run in iter_runs(tracker.client, exp_ids, "attributes.status = 'FAILED'", ["attributes.start_time DESC"]):
        t, p = run.data.tags, run.data.params
        job = p.get("job") or ("knn" if t.get("zsclust.role") == "knn" else None)
        if "encoder" in t and job:
            why = t.get("zsclust.error", "failed")
            reasons.setdefault((t["encoder"], t.get("dataset"), t.get("split"), job), why)
            if t.get("zsclust.job"):
                reasons.setdefault(t["zsclust.job"], why)
    return reasons


def _log(tracker, out: Path, result: ReportResult, split: str) -> str:
    run_id = tracker.start_run(f"report ({split})", tags={"zsclust.role": "report"})
    tracker.log_params(run_id, {"report.split": split, "report.rows": result.n_rows})
    tracker.log_metrics(run_id, {f"spearman_silhouette_ami.{_slug(m)}": v for m, v in result.spearman.items()
                                 if not math.isnan(v)}
                        | {f"spearman_knn_ami.{_slug(m)}.k{k}": v for (m, k), v in result.knn_spearman.items()
                           if not math.isnan(v)}
                        | {"report.missing": float(len(result.missing))})
    for path in result.files:
        tracker.log_artifact(run_id, path, "report")
    tracker.end_run(run_id)
    return run_id


def expected_from_sweep(cfg) -> tuple[list[tuple], list[str], list[str]]:
    """A sweep config's grid as (encoder, dataset, split, job label, job key), and its encoder and dataset
    order. The keys are what ``zsclust sweep`` tags its runs with, so the report counts exactly them
    (the kNN probe's too, with ``sweep.knn: true``)."""
    from ..sweep import expand_cells, plan_cells, shard_cells
    from ..sweep._knn import KnnJobs

    plans = plan_cells(shard_cells(expand_cells(cfg), None), finished=set())
    knn = KnnJobs(plans, set(), cfg.sweep.knn)
    expected = [(p.cell.encoder, p.cell.dataset, p.cell.split, j.name, j.key)
                for p in plans for j in [*p.pending, *([knn.job(p)] if knn.job(p) else [])]]
    encoders = list(dict.fromkeys(p.cell.encoder for p in plans))
    datasets = list(dict.fromkeys(p.cell.dataset for p in plans))
    return expected, encoders, datasets
