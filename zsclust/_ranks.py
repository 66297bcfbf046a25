"""Which process of a multi-process run this is (from the launcher's environment), and its cores; torch-free.

A process is a helper (a rank other than 0 of one embedding) only inside a real multi-process world:
``WORLD_SIZE`` > 1 (torchrun, and the processes Lightning launches), or ``SLURM_NTASKS`` > 1 under
``srun`` when the config itself asks for that many processes (``embed.devices`` × ``embed.num_nodes``).
A rank variable alone proves nothing: ``srun -n 4 zsclust sweep ...`` with one device per process
starts four independent runs, and a task that took itself for a helper would embed, never cluster,
and exit 0. That launch is refused with a ConfigError saying how to launch instead.
"""

from __future__ import annotations

import os
import sys

from .errors import ConfigError

# torchrun sets RANK, SLURM sets SLURM_PROCID, Lightning sets LOCAL_RANK/NODE_RANK in the processes it launches.
RANK_VARS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


def _int(var: str) -> int | None:
    value = os.environ.get(var, "").strip()
    return int(value) if value.isdigit() else None


def launch() -> tuple[int, int, str]:
    """``(rank, world size, launcher)`` of this process as its launcher set them; ``(0, 1, "")`` when alone.

    ``WORLD_SIZE`` (torchrun, Lightning's launched processes) wins over SLURM's variables: torchrun
    may itself run as a SLURM task, with ranks of its own. Lightning's launched processes carry no
    ``RANK``, only ``NODE_RANK`` and ``LOCAL_RANK``; their rank here is exact on the first node and
    only non-zero elsewhere, which is all that decides.
    """
    world = _int("WORLD_SIZE")
    if world is not None and world > 1:
        rank = _int("RANK")
        if rank is None:
            node, local = _int("NODE_RANK") or 0, _int("LOCAL_RANK") or 0
            rank = local if node == 0 else max(1, node * world + local)
        return rank, world, "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "WORLD_SIZE"
    # Only a task of an srun step is one of several processes; the batch script itself has SLURM_PROCID=0 too.
    ntasks = _int("SLURM_STEP_NUM_TASKS") or _int("SLURM_NTASKS") or _int("SLURM_NPROCS")
    procid = _int("SLURM_PROCID")
    if ntasks is not None and ntasks > 1 and procid is not None and "SLURM_STEP_ID" in os.environ:
        return procid, ntasks, "SLURM"
    return 0, 1, ""


def configured_world(devices, num_nodes) -> int | None:
    """The processes a config's ``embed.devices`` × ``embed.num_nodes`` asks for; None for ``auto``/-1."""
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or devices < 1:
        return None
    return devices * max(1, int(num_nodes or 1))


def is_global_zero(expected_world: int | None = None) -> bool:
    """False in the other processes of a real DDP, SLURM or torchrun run: they embed but neither cluster nor print.

    ``expected_world``: the processes the config asks for (:func:`configured_world`). Under ``srun``
    with several tasks, a config asking for one process is not a DDP launch: a ConfigError that says
    how to launch it, on every task alike (so none of them runs the grid on its own).
    """
    rank, world, launcher = launch()
    if world <= 1:
        return True
    if launcher == "SLURM" and expected_world == 1:
        raise ConfigError(
            f"SLURM started {world} tasks of this command (this is task {rank}), but the config embeds in one "
            "process (embed.devices=1, embed.num_nodes=1), so every task would run the whole grid on its own. "
            "Run one task (srun -n 1, or no srun), or embed with DDP over the tasks (embed.devices="
            "$SLURM_NTASKS_PER_NODE embed.num_nodes=$SLURM_NNODES, as experiments/launch/slurm_sweep.sbatch "
            "does), or share the grid out with a job array and sweep.shard=auto "
            "(experiments/launch/slurm_sweep_array.sbatch).")
    return rank == 0


def say_helper() -> None:
    """Say once, on stderr, that this process only helps embed (a helper exits 0 with no runs of its own)."""
    rank, world, launcher = launch()
    print(f"zsclust: process {rank} of {world} ({launcher}): helping embed; process 0 reads MLflow, clusters and "
          "writes the runs.", file=sys.stderr, flush=True)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM allocation), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
