"""A study's summary on its MLflow parent run: best trial, silhouette↔AMI correlation, and plots.

The plots are drawn with matplotlib from the trials themselves (Optuna's matplotlib backend is
experimental and warns); parameter importances come from ``optuna.importance`` and are skipped,
with the reason as a tag, when they are undefined (fewer than 2 completed trials, or one parameter).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from zsclust.cluster import spearman_rho  # noqa: E402

from ._objective import PROXY  # noqa: E402


def silhouette_key_of(cfg) -> str:
    """The silhouette a study compares with AMI: its objective when that is a silhouette, else the study's proxy."""
    return cfg.objective.metric if cfg.objective.metric.startswith("silhouette") else PROXY


def _pairs(trials, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    xs, ys, nums = [], [], []
    for t in trials:
        m = t.user_attrs.get("zsclust.metrics") or {}
        x, y = m.get(x_key), m.get(y_key)
        if x is not None and y is not None and not (math.isnan(x) or math.isnan(y)):
            xs.append(x)
            ys.append(y)
            nums.append(t.number)
    return np.asarray(xs, float), np.asarray(ys, float), nums


def spearman_silhouette_ami(trials, datasets: list[str], sil_key: str) -> dict[str, float]:
    """Spearman's rho between the label-free silhouette and AMI over every trial that has both.

    ``spearman_silhouette_ami`` uses the weighted means over the validation sets (completed trials);
    ``spearman_silhouette_ami.<set>`` each set's scores, pruned trials included. Undefined (fewer
    than 3 trials, or a constant score) is left out.
    """
    out = {}
    if not sil_key:
        return out
    rho = spearman_rho(*_pairs(trials, sil_key, "ami")[:2])
    if not math.isnan(rho):
        out["spearman_silhouette_ami"] = rho
    for name in datasets:
        rho = spearman_rho(*_pairs(trials, f"{name}.{sil_key}", f"{name}.ami")[:2])
        if not math.isnan(rho) and len(datasets) > 1:
            out[f"spearman_silhouette_ami.{name}"] = rho
    return out


def plot_history(trials, path: Path, metric: str) -> Path:
    """Objective value per completed trial, and the best value so far."""
    from optuna.trial import TrialState

    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    x = [t.number for t in done]
    y = [t.value for t in done]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(x, y, s=18, label="trial", color="tab:blue")
    if y:
        ax.step(x, np.maximum.accumulate(y), where="post", color="tab:red", label="best so far")
    pruned = [t.number for t in trials if t.state == TrialState.PRUNED]
    if pruned:
        ax.scatter(pruned, [min(y or [0])] * len(pruned), marker="x", color="grey", s=14, label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("optimisation history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def param_importances(study) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances, or None and the reason they are undefined."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"needs at least 2 completed trials, has {len(complete)}"
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except Exception as e:  # e.g. a conditional space with no parameter common to all trials
        return None, f"{type(e).__name__}: {e}"[:300]
    if len(imp) < 2:
        return None, f"needs more than one parameter common to all completed trials, has {len(imp)}"
    return imp, ""


def plot_importances(importances: dict[str, float], path: Path) -> Path:
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="tab:green")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title("parameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_silhouette_vs_ami(trials, path: Path, sil_key: str, rho: float | None) -> Path | None:
    """The label-free proxy against AMI, one point per trial, coloured by trial number."""
    x, y, nums = _pairs(trials, sil_key, "ami")
    if len(x) == 0:
        return None
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(x, y, c=nums, cmap="viridis", s=20)
    fig.colorbar(sc, ax=ax, label="trial")
    ax.set_xlabel(f"silhouette ({sil_key})")
    ax.set_ylabel("AMI")
    title = "silhouette vs AMI over trials"
    if rho is not None and not math.isnan(rho):
        title += f" (Spearman {rho:.3f})"
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_study(tracker, run_id: str, study, result, sil_key: str, metric: str) -> None:
    """Best params/value, counts, correlations and plots on the parent run.

    The best params go in as tags ``best.<key>`` (updated as the study grows) and, the first time,
    as params ``best.<key>`` (MLflow params cannot change; a study resumed with more trials keeps the
    tags current).
    """
    from omegaconf import OmegaConf

    trials = study.get_trials(deepcopy=False)
    metrics = {"n_trials_complete": result.n_complete, "n_trials_pruned": result.n_pruned,
               "n_trials_failed": result.n_failed, **result.spearman}
    if result.best_trial is not None:
        metrics["best_value"] = result.best_value
        metrics.update({f"best.{k}": v for k, v in result.best_metrics.items() if "seconds" not in k})
    tracker.log_metrics(run_id, metrics, step=result.n_complete + result.n_pruned)
    tags = {"zsclust.study_complete": str(result.n_complete + result.n_pruned >= result.n_trials).lower(),
            "zsclust.n_trials": result.n_trials}
    if result.best_trial is not None:
        tags["best.trial_number"] = result.best_trial
        tags.update({f"best.{k}": v for k, v in result.best_params.items()})
        try:
            tracker.log_params(run_id, {f"best.{k}": v for k, v in result.best_params.items()})
        except Exception:  # the best changed since the params were first logged: the tags are current
            pass
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tracker.log_artifact(run_id, plot_history(trials, tmp / "optimization_history.png", metric), "plots")
        imp, why = param_importances(study)
        if imp is not None:
            tracker.log_artifact(run_id, plot_importances(imp, tmp / "param_importances.png"), "plots")
            metrics_imp = {f"importance.{k}": v for k, v in imp.items()}
            tracker.log_metrics(run_id, metrics_imp, step=result.n_complete)
        else:
            tags["zsclust.importances_skipped"] = why
        p = plot_silhouette_vs_ami(trials, tmp / "silhouette_vs_ami.png", sil_key,
                                   result.spearman.get("spearman_silhouette_ami"))
        if p is not None:
            tracker.log_artifact(run_id, p, "plots")
        if result.best_trial is not None:
            tracker.log_text(run_id, OmegaConf.to_yaml(OmegaConf.create(_nested(result.best_params))), "best_params.yaml")
        tracker.log_text(run_id, _trials_csv(trials), "trials.csv")
    tracker.set_tags(run_id, tags)
    tracker.end_run(run_id, status="FINISHED")


def _nested(dotted: dict) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _trials_csv(trials) -> str:
    keys = sorted({k for t in trials for k in t.params})
    mkeys = sorted({k for t in trials for k in (t.user_attrs.get("zsclust.metrics") or {}) if "seconds" not in k})
    lines = [",".join(["number", "state", "value", *keys, *mkeys])]
    for t in trials:
        m = t.user_attrs.get("zsclust.metrics") or {}
        row = [t.number, t.state.name, "" if t.value is None else t.value]
        row += [t.params.get(k, "") for k in keys] + [m.get(k, "") for k in mkeys]
        lines.append(",".join(str(v) for v in row))
    return "\n".join(lines) + "\n"
