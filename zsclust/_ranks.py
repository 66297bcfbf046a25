"""Which process of a multi-process run this is (from the launcher's environment), and its cores; torch-free."""

from __future__ import annotations

import os

# torchrun sets RANK, SLURM sets SLURM_PROCID, Lightning sets LOCAL_RANK/NODE_RANK in the processes it launches.
RANK_VARS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


def is_global_zero() -> bool:
    """False in the extra processes of a DDP, SLURM or torchrun run; they embed but neither cluster nor print."""
    for var in RANK_VARS:
        value = os.environ.get(var, "0")
        if value.isdigit() and int(value) != 0:
            return False
    return True


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM allocation), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
