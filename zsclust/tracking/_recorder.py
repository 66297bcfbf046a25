"""A tracker that records what a run would log, so another process can write it to MLflow later.

Sweep workers cluster in parallel but do not write to MLflow themselves: they hand their recording
back and the sweep's main process replays it. One writer keeps a SQLite store free of lock contention,
and a job counts as done only once its whole run, artifacts included, is in the store.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


class RecordingTracker:
    """Same methods as :class:`MLflowTracker`; calls are kept in ``ops`` and artifacts copied to ``staging``."""

    def __init__(self, staging: str | Path):
        self.staging = Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.ops: list[tuple] = []
        self._runs = 0

    def start_run(self, run_name: str, tags: dict | None = None, parent_run_id: str | None = None) -> str:
        self._runs += 1
        run_id = f"recorded-{self._runs}"
        self.ops.append(("start_run", run_id, run_name, dict(tags or {}), parent_run_id))
        return run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.ops.append(("log_params", run_id, dict(params)))

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self.ops.append(("log_metrics", run_id, dict(metrics), step))

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.ops.append(("set_tags", run_id, dict(tags)))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        src = Path(path)
        dest = self.staging / f"{len(self.ops):05d}" / src.name
        dest.parent.mkdir(parents=True)
        shutil.copy2(src, dest)
        self.ops.append(("log_artifact", run_id, str(dest), artifact_path))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.ops.append(("log_text", run_id, text, artifact_file))

    def log_dataset(self, run_id: str, name: str, digest: str, n_samples: int, **kwargs) -> None:
        self.ops.append(("log_dataset", run_id, name, digest, n_samples, dict(kwargs)))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.ops.append(("end_run", run_id, status))

    def recording(self) -> list[tuple]:
        """The calls, picklable, for :func:`replay` in another process."""
        return list(self.ops)


def replay(ops: list[tuple], tracker, extra_tags: dict | None = None) -> dict[str, str]:
    """Apply recorded calls to ``tracker``; returns recorded run id → real run id.

    ``extra_tags`` go in with each run's creation. A run is ended (FINISHED) only by its own recorded
    ``end_run``, the last call, so a replay cut short leaves a RUNNING run, never a finished one without
    its metrics or artifacts.
    """
    ids: dict[str, str] = {}
    for op in ops:
        kind, rid = op[0], op[1]
        if kind == "start_run":
            _, _, name, tags, parent = op
            ids[rid] = tracker.start_run(name, tags={**tags, **(extra_tags or {})},
                                         parent_run_id=ids.get(parent, parent))
        elif kind == "log_params":
            tracker.log_params(ids[rid], op[2])
        elif kind == "log_metrics":
            tracker.log_metrics(ids[rid], op[2], step=op[3])
        elif kind == "set_tags":
            tracker.set_tags(ids[rid], op[2])
        elif kind == "log_artifact":
            tracker.log_artifact(ids[rid], op[2], op[3])
        elif kind == "log_text":
            tracker.log_text(ids[rid], op[2], op[3])
        elif kind == "log_dataset":
            tracker.log_dataset(ids[rid], op[2], op[3], op[4], **op[5])
        elif kind == "end_run":
            tracker.end_run(ids[rid], status=op[2])
        else:
            raise ValueError(f"unknown recorded call {kind!r}")
    return ids
