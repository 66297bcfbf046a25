"""What a sweep still has to do: every cell's jobs, minus those with a FINISHED run in MLflow.

A job is identified by its key (:func:`zsclust.cluster.job_key`), the tag ``zsclust.job`` on its run.
The MLflow record is the only ledger, so a sweep can stop anywhere (Ctrl-C, a killed node, a failed
dataset) and a restart, on this machine or another one sharing the tracking server, does the rest.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from ._config import Cell

JOB_TAG = "zsclust.job"
FINGERPRINT_TAG = "embedding.fingerprint"


@dataclass
class Job:
    cell: Cell
    name: str  # the job's label in the cell (``kmeans``, ``ac_k``, ...)
    key: str

    @property
    def label(self) -> str:
        return f"{self.cell.label}/{self.name}"


@dataclass
class CellPlan:
    cell: Cell
    context: dict
    identity: dict
    pending: list[Job] = field(default_factory=list)
    done: list[Job] = field(default_factory=list)


def plan_cells(cells: list[Cell], finished: Collection[str]) -> list[CellPlan]:
    """Each cell's jobs split into done (a FINISHED run has its key) and pending."""
    from .._build import make_pipeline, run_context, run_identity

    plans = []
    for cell in cells:
        identity = run_identity(cell.cfg)
        context = run_context(cell.cfg, dataset_name=cell.dataset, group=cell.group)
        pipeline = make_pipeline(cell.cfg, context, identity=identity)
        plan = CellPlan(cell, context, identity)
        for label in pipeline.jobs:
            job = Job(cell, label, pipeline.job_key(label))
            (plan.done if job.key in finished else plan.pending).append(job)
        plans.append(plan)
    return plans


def finished_job_keys(tracker) -> dict[str, str | None]:
    """Key → embedding fingerprint of every FINISHED run in the tracker's experiment (any command that tags
    ``zsclust.job``; where a job finished twice, the latest run's)."""
    keys: dict[str, str | None] = {}
    for run in _runs(tracker, "attributes.status = 'FINISHED'", ["attributes.start_time ASC"]):
        key = run.data.tags.get(JOB_TAG)
        if key:
            keys[key] = run.data.tags.get(FINGERPRINT_TAG)
    return keys


def stale_jobs(plan: CellPlan, finished: Mapping[str, str | None], fingerprint: str) -> list[Job]:
    """The cell's finished jobs whose run recorded other embeddings than the cell has now.

    Their keys match (same config, same images by name, size and time), yet the embeddings differ:
    other encoder weights behind the same name (a hub's), another library version's preprocessing,
    files of a registered dataset replaced. They stay skipped; the sweep says so.
    """
    return [j for j in plan.done if finished.get(j.key) not in (None, fingerprint)]


def _runs(tracker, filter_string: str, order_by: list[str] | None = None):
    from ..tracking import iter_runs

    return iter_runs(tracker.client, [tracker.experiment_id], filter_string, order_by)
