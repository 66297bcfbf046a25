"""``study.workers``: more ``zsclust tune`` processes on this machine, started by the command itself.

Workers on several machines are started by hand (or by a job array) and meet in the study's storage;
these are the same thing on one machine, started once the val sets are embedded (the others read them
from the cache) with the command's own resolved configs, so one command uses every core.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import tempfile

from zsclust.errors import ZsclustError

__all__ = ["LocalWorkers", "load_configs"]


class LocalWorkers:
    """``study.workers - 1`` more processes on this machine, each running the same studies (see
    :mod:`zsclust.tune._study`: they share the storage, so the trial total stays exact, and the reduction
    cache, so each reduction is fitted once). A worker that fails fails the command; leaving early stops them.
    """

    def __init__(self, cfgs):
        self.cfgs, self.procs, self.tmp = cfgs, [], None

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
        self.procs = [subprocess.Popen([sys.executable, "-c", code, self.tmp]) for _ in range(extra)]
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
        if self.tmp:
            os.unlink(self.tmp)
        return False


def load_configs(path: str) -> list:
    """The configs :class:`LocalWorkers` handed to its processes."""
    with open(path, "rb") as f:
        return pickle.load(f)
