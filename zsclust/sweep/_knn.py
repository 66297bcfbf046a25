"""The kNN probe as a sweep job kind: ``sweep.knn: true`` adds one job per (encoder, dataset).

The job belongs to the dataset's test cell: its queries are that cell's embeddings, its bank the
train split's, which the main process embeds (or loads from the cache) with the encoder it already
holds. A worker process runs the probe from the cache and records the run; the sweep's pool writes
it to MLflow like a clustering job's. Its key (:func:`zsclust.knn.knn_job_key`) is the run's
``zsclust.job`` tag, so a FINISHED run is skipped on restart, and ``zsclust knn`` with the same
encoder and dataset gives the same key.
"""

from __future__ import annotations

import copy
import tempfile

from ..errors import ConfigError, ZsclustError
from ._plan import CellPlan, Job

KNN_JOB = "knn"  # the job's name in its cell (labels read ``encoder/dataset:test/knn``)
QUERY_SPLIT = "test"


class KnnJobs:
    """The grid's kNN jobs, one per test cell, split into done and pending by the finished keys."""

    def __init__(self, plans: list[CellPlan], finished: set[str], enabled: bool):
        from ..knn import knn_job_key

        self._by_plan: dict[int, Job] = {}
        self.done: list[Job] = []
        self.pending: list[Job] = []
        if not enabled:
            return
        if plans and not any(p.cell.split == QUERY_SPLIT for p in plans):
            raise ConfigError(f"sweep.knn: the kNN probe queries the {QUERY_SPLIT} split, but sweep.splits has "
                              f"{sorted({p.cell.split for p in plans})}; add {QUERY_SPLIT} to sweep.splits.")
        for plan in plans:
            if plan.cell.split != QUERY_SPLIT:
                continue
            job = Job(plan.cell, KNN_JOB, knn_job_key(plan.identity))
            self._by_plan[id(plan)] = job
            (self.done if job.key in finished else self.pending).append(job)

    def job(self, plan: CellPlan) -> Job | None:
        return self._by_plan.get(id(plan))

    def is_pending(self, plan: CellPlan) -> bool:
        job = self.job(plan)
        return job is not None and job in self.pending

    def expected(self) -> list[Job]:
        return self.done + self.pending

    def run(self, plan: CellPlan, encoder, pool, together: bool, rank_zero: bool) -> None:
        """Embed (or load) the cell's train and test splits, then hand the probe to the pool.

        In a multi-process embedding every rank embeds the train split of every kNN cell, finished or
        not, so all ranks call ``embed`` in the same order; only rank 0 submits.
        """
        job = self.job(plan)
        if job is None or not (job in self.pending or together):
            return
        from .._build import embed_options, make_dataset
        from ..embed import embed

        cfg = plan.cell.cfg
        try:
            queries_set = make_dataset(cfg, encoder)
            bank_set = make_dataset(bank_config(cfg), encoder)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - fails the same on every rank: only this job
            self._fail(pool, job, f"kNN probe of {plan.cell.label}: {_reason(e)}")
            return
        try:
            bank = embed(encoder, bank_set, options=embed_options(cfg))
            queries = embed(encoder, queries_set, options=embed_options(cfg))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001
            if together:
                raise ZsclustError(f"embedding the train split of {plan.cell.label} for the kNN probe failed in a "
                                   f"multi-process run ({_reason(e)}); stopping so the processes cannot drift apart. "
                                   "Finished jobs are kept: fix it (or set sweep.knn=false) and rerun.") from e
            self._fail(pool, job, f"kNN probe of {plan.cell.label}: {_reason(e)}")
            return
        if bank is None or queries is None or not rank_zero or job not in self.pending:
            return
        spec = {"cache_dir": cfg.embed.cache_dir, "bank": bank.fingerprint, "queries": queries.fingerprint,
                "context": plan.context, "key": job.key}
        pool._submit(knn_job, spec, pool.staging_root, what=("job", plan, spec, job))

    def _fail(self, pool, job: Job, why: str) -> None:
        if job in self.pending:
            pool.fail_job(job, why)


def bank_config(cfg):
    """The cell's run config with the train split: the same encoder, dataset, seed and embedding settings."""
    from ..knn import BANK_SPLIT

    bank = copy.deepcopy(cfg)
    bank.data.split = BANK_SPLIT
    return bank


def knn_job(spec: dict, staging_root: str) -> tuple:
    """Worker side: the probe on two cache entries, recorded; returns (KnnResult, recorded calls, staging dir)."""
    from ..embed import EmbeddingCache
    from ..knn import run_knn_job
    from ..tracking import RecordingTracker

    staging = tempfile.mkdtemp(prefix="knn-", dir=staging_root)
    tracker = RecordingTracker(staging)
    cache = EmbeddingCache(spec["cache_dir"])
    result = run_knn_job(cache.load(spec["bank"]), cache.load(spec["queries"]), context=spec["context"],
                         key=spec["key"], tracker=tracker, device="cpu")
    return result, tracker.recording(), staging


def _reason(e: BaseException) -> str:
    return str(e) if isinstance(e, ZsclustError) else f"{type(e).__name__}: {e}"
