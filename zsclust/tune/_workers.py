"""``study.workers``: more ``zsclust tune`` processes on this machine, started by the command itself.

Workers on several machines are started by hand (or by a job array) and meet in the study's storage;
these are the same thing on one machine, started once the val sets are embedded (the others read them
from the cache) with the command's own resolved configs, so one command uses every core.
"""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import subprocess
import sys
import tempfile

from zsclust.errors import ZsclustError

__all__ = ["ENV_LOCAL_WORKERS", "LocalWorkers", "load_configs", "shared_cores"]

ENV_LOCAL_WORKERS = "ZSCLUST_LOCAL_WORKERS"
"""How many ``study.workers`` processes share this machine (set by :class:`LocalWorkers` for itself and them)."""


class LocalWorkers:
    """``study.workers - 1`` more processes on this machine, each running the same studies (see
    :mod:`zsclust.tune._study`: they share the storage, so the trial total stays exact, and the reduction
    cache, so each reduction is fitted once). A worker that fails fails the command; leaving early stops them.
    """

    def __init__(self, cfgs):
        self.cfgs, self.procs, self.tmp = cfgs, [], None
        self._env_before, self._env_set = None, False

    def __enter__(self):
        from omegaconf import open_dict

        extra = max((int(c.study.workers) for c in self.cfgs), default=1) - 1
        if extra <= 0:
            return self
        cfgs = [copy.deepcopy(c) for c in self.cfgs]
        for c in cfgs:
            with open_dict(c):
                c.study.workers = 1
                c.embed.progress = False
        fd, self.tmp = tempfile.mkstemp(prefix="zsclust-tune-", suffix=".pkl")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(cfgs, f)
        code = ("import sys, optuna; from zsclust.jobs import tune; from zsclust.tune._workers import load_configs; "
                "optuna.logging.set_verbosity(optuna.logging.WARNING); tune(load_configs(sys.argv[1]), progress=False)")
        print(f"study.workers={extra + 1}: starting {extra} more worker process(es) on this machine", flush=True)
        env = {**os.environ, ENV_LOCAL_WORKERS: str(extra + 1)}
        self.procs = [subprocess.Popen([sys.executable, "-c", code, self.tmp], env=env) for _ in range(extra)]
        self._env_before, self._env_set = os.environ.get(ENV_LOCAL_WORKERS), True
        os.environ[ENV_LOCAL_WORKERS] = str(extra + 1)  # this process's trials share the cores too
        return self

    def wait(self) -> None:
        codes = [p.wait() for p in self.procs]
        failed = [f"worker {i + 2} (pid {p.pid}): exit {c}" for i, (p, c) in enumerate(zip(self.procs, codes)) if c]
        if failed:
            raise ZsclustError(f"{len(failed)} of the study.workers processes failed ({'; '.join(failed)}); their "
                               "output is above. Run the same command again to finish the studies.")

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except Exception:
                p.kill()
        if self._env_set:
            if self._env_before is None:
                os.environ.pop(ENV_LOCAL_WORKERS, None)
            else:
                os.environ[ENV_LOCAL_WORKERS] = self._env_before
        if self.tmp:
            os.unlink(self.tmp)
        return False


@contextlib.contextmanager
def shared_cores():
    """Run a trial on this process's share of the cores when ``study.workers`` processes share the machine:
    at most ``cores // workers`` threads (the cores this process may run on) for BLAS and OpenMP
    (threadpoolctl), numba and torch, never more than each had; restored afterwards. A trial that imports
    torch for the first time runs torch's part on torch's default.

    A worker's reductions are fitted by umap-learn's seeded layout on one thread; a trial of another worker
    beside it ran its products and numba loops on every core, and on two cores slowed that layout (the
    study's critical path) by half: a 10k-point UMAP-5 took 20 s instead of 13 s. Outside trials (the shared
    neighbour graph, which the other workers wait for) a process keeps every core.
    """
    workers = int(os.environ.get(ENV_LOCAL_WORKERS) or 1)
    if workers <= 1:
        yield
        return
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    from zsclust._ranks import available_cores

    threads = max(1, available_cores() // workers)
    torch = sys.modules.get("torch")  # never imported for this
    before = numba.get_num_threads(), (torch.get_num_threads() if torch is not None else None)
    numba.set_num_threads(min(threads, before[0]))  # lowered, never raised
    if torch is not None:
        torch.set_num_threads(min(threads, before[1]))
    limits = {pool["filepath"]: min(threads, pool["num_threads"]) for pool in threadpool_info()}
    try:
        with threadpool_limits(limits=limits):
            yield
    finally:
        numba.set_num_threads(before[0])
        if torch is not None:
            torch.set_num_threads(before[1])


def load_configs(path: str) -> list:
    """The configs :class:`LocalWorkers` handed to its processes."""
    with open(path, "rb") as f:
        return pickle.load(f)
