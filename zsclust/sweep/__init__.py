"""Sweeps: the study's grid of encoders × datasets × clusterers, resumable from its MLflow record."""

from ._config import Cell, SweepConfig, SweepSettings, expand_cells, load_sweep_config, resolve_shard, shard_cells
from ._plan import CellPlan, Job, finished_job_keys, plan_cells
from ._runner import SweepSummary, format_status, run_sweep, sweep_status

__all__ = [
    "Cell", "CellPlan", "Job", "SweepConfig", "SweepSettings", "SweepSummary", "expand_cells", "finished_job_keys",
    "format_status", "load_sweep_config", "plan_cells", "resolve_shard", "run_sweep", "shard_cells", "sweep_status",
]
