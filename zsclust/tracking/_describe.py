"""What a run tells a researcher in the MLflow UI: its description, its origin, its dataset, its machine.

Descriptions and context are plain tags (``mlflow.note.content``, ``mlflow.user``, ``mlflow.source.*``),
so any tracker's ``set_tags`` writes them, the sweep's recording tracker included. The dataset is an
MLflow dataset input (``client.log_inputs``) carrying the embedding fingerprint as its digest and the
number of samples in its profile, which the runs table shows in its "Dataset" column.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NOTE_TAG = "mlflow.note.content"  # the description MLflow's UI shows (and edits) for a run or experiment

HEADLINE = (("ami", "AMI", "{:.3f}"), ("ari", "ARI", "{:.3f}"), ("n_clusters", "clusters", "{:.0f}"),
            ("noise_fraction", "noise", "{:.1%}"), ("silhouette_umap50", "silhouette (UMAP-50)", "{:.3f}"))


def run_description(encoder: str, dataset: str, split: str, reducer: str, clusterer: str,
                    metrics: Mapping[str, float] | None = None, *, n_samples: int | None = None,
                    fingerprint: str | None = None, notes: str | None = None) -> str:
    """A short Markdown description of one clustering run: what ran on what, and its headline scores."""
    lines = [f"**{encoder}** on **{dataset}** ({split} split): {reducer} → {clusterer}"]
    cells = [(name, fmt.format(float(metrics[key]))) for key, name, fmt in HEADLINE
             if metrics and metrics.get(key) is not None]
    if cells:
        lines += ["", "| " + " | ".join(n for n, _ in cells) + " |", "|" + "---|" * len(cells),
                  "| " + " | ".join(v for _, v in cells) + " |"]
    facts = []
    if n_samples is not None:
        facts.append(f"{n_samples} samples")
    if fingerprint:
        facts.append(f"embedding fingerprint `{fingerprint}`")
    if facts:
        lines += ["", ", ".join(facts)]
    if notes:
        lines += ["", notes]
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the zsclust checkout that runs (None for an installed package)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def context_tags(source_name: str | None = None) -> dict[str, str]:
    """MLflow's context tags: who ran it (``mlflow.user``), from what (``mlflow.source.*``), at which commit.

    The UI shows the source name's last path segment, so it is the command (``zsclust sweep``); the
    full command line goes in ``zsclust.command``, its URLs without passwords (``study.storage=...``).
    """
    from .._secrets import redact_text

    try:
        user = getpass.getuser()
    except Exception:  # no user name in the environment or the password database (containers)
        user = os.environ.get("USER", "unknown")
    tags = {"mlflow.user": user, "mlflow.source.type": "LOCAL", "mlflow.source.name": source_name or _command(),
            "zsclust.command": redact_text(" ".join(sys.argv))[:500]}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _command() -> str:
    """``zsclust <subcommand>`` under the CLI, else the script's file name."""
    argv = sys.argv or [""]
    prog = os.path.basename(argv[0]) or "python"
    if prog in ("zsclust", "__main__.py", "cli.py"):
        sub = next((a for a in argv[1:] if not a.startswith("-")), "")
        return f"zsclust {sub}".strip()
    return prog


def dataset_input(name: str, digest: str, n_samples: int, *, context: str | None = None,
                  source: str | None = None, profile: Mapping[str, Any] | None = None):
    """An ``mlflow.entities.DatasetInput`` for ``client.log_inputs``: metadata only, no data copied.

    ``digest`` is the embedding fingerprint (what makes two runs' inputs the same); ``source`` a path
    or URL where the images are, else the zsclust dataset registry name; ``context`` the split.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    where = {"uri": source} if source else {"zsclust.dataset": name}
    full_profile = {"num_rows": int(n_samples), **(profile or {})}
    entity = Dataset(name=name, digest=str(digest), source_type="local" if source else "code",
                     source=json.dumps(where), profile=json.dumps(full_profile, default=str))
    tags = [InputTag("mlflow.data.context", context)] if context else []
    return DatasetInput(dataset=entity, tags=tags)


@contextlib.contextmanager
def system_metrics(run_id: str, tracking_uri: str, interval: float = 10.0):
    """Log CPU, memory, disk, network (and GPU with pynvml) as ``system/*`` metrics of ``run_id`` while inside.

    MLflow's ``SystemMetricsMonitor`` takes a run id and a tracking URI, so it works for runs made
    with ``MlflowClient``. It samples every ``interval`` seconds and logs once per interval: a run
    shorter than one interval gets no system metrics. Without psutil this does nothing.
    """
    try:
        import psutil  # noqa: F401
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        yield None
        return
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.finish()
