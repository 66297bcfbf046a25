"""What a sweep still has to do: every cell's jobs, minus those with a FINISHED run in MLflow.

A job is identified by its key (:func:`zsclust.cluster.job_key`), the tag ``zsclust.job`` on its run.
The MLflow record is the only ledger, so a sweep can stop anywhere (Ctrl-C, a killed node, a failed
dataset) and a restart, on this machine or another one sharing the tracking server, does the rest.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from ._config import Cell

JOB_TAG = "zsclust.job"
HOST_TAG = "zsclust.sweep.host"
PID_TAG = "zsclust.sweep.pid"


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


def plan_cells(cells: list[Cell], finished: set[str]) -> list[CellPlan]:
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


def finished_job_keys(tracker) -> set[str]:
    """Keys of every FINISHED run in the tracker's experiment (any command that tags ``zsclust.job``)."""
    keys = set()
    for run in _runs(tracker, "attributes.status = 'FINISHED'"):
        key = run.data.tags.get(JOB_TAG)
        if key:
            keys.add(key)
    return keys


def close_orphans(tracker) -> int:
    """Mark KILLED the RUNNING runs a sweep on this host left when its process died mid-write."""
    host = socket.gethostname()
    closed = 0
    for run in _runs(tracker, "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        if not _alive(int(tags[PID_TAG])):
            tracker.end_run(run.info.run_id, status="KILLED")
            closed += 1
    return closed


def _runs(tracker, filter_string: str):
    from ..tracking import iter_runs

    return iter_runs(tracker.client, [tracker.experiment_id], filter_string)


def sweep_tags() -> dict:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

