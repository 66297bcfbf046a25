"""``zsclust sweep``: embed every cell of the grid once, cluster its jobs in worker processes, log to MLflow.

The main process embeds cells one after another (on every GPU of a DDP run: each cell is one
``Trainer.predict``), and as soon as a cell's embeddings are cached it hands the cell to a pool of
clustering processes, so clustering overlaps the next cell's embedding. Workers fit the cell's
reductions once, then run its jobs in parallel; each job's MLflow run is written by the main process
from the worker's recording. Errors stay with their cell or job: the sweep goes on and says why.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import groupby

from .._ranks import available_cores, configured_world, is_global_zero, launch, say_helper
from ..errors import ConfigError, ZsclustError
from ._config import Cell, expand_cells, resolve_shard, shard_cells
from ._knn import KnnJobs
from ._plan import CellPlan, Job, finished_job_keys, plan_cells, stale_jobs
from ._worker import cluster_job, init_worker, prepare_cell


@dataclass
class SweepSummary:
    """What one ``zsclust sweep`` invocation did: every job of the grid is in exactly one list."""

    name: str
    ran: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    run_ids: dict[str, str] = field(default_factory=dict)  # job key -> MLflow run id
    metrics: dict[str, dict] = field(default_factory=dict)  # job key -> metrics
    seconds: float = 0.0
    interrupted: bool = False

    def format(self) -> str:
        total = len(self.ran) + len(self.skipped) + len(self.failed)
        head = (f"Sweep '{self.name}': {total} jobs: {len(self.ran)} ran, {len(self.skipped)} skipped "
                f"(finished before), {len(self.failed)} failed, in {self.seconds:.0f} s"
                + (" (interrupted: rerun the same command to finish)" if self.interrupted else "."))
        lines = [head]
        for job, why in self.failed:
            lines.append(f"  FAILED {job.label}: {why.splitlines()[0][:300] if why else '?'}")
        if self.failed:
            lines.append("Failed jobs have no FINISHED run, so rerunning the sweep retries them.")
        return "\n".join(lines)


def sweep_status(cfg) -> list[CellPlan]:
    """Each cell of the sweep (this shard) with its done and pending jobs (kNN jobs included), from the MLflow
    record; runs nothing."""
    from .._build import make_tracker

    cells = shard_cells(expand_cells(cfg), cfg.sweep.shard)
    finished = finished_job_keys(make_tracker(cfg))
    plans = plan_cells(cells, finished)
    knn = KnnJobs(plans, finished, cfg.sweep.knn)
    for plan in plans:  # for display only: run_sweep keeps kNN jobs apart from the cells' clustering jobs
        job = knn.job(plan)
        if job is not None:
            (plan.pending if knn.is_pending(plan) else plan.done).append(job)
    return plans


def format_status(plans: list[CellPlan]) -> str:
    width = max([len(p.cell.label) for p in plans] + [4])
    lines = [f"{'cell':<{width}}  done  pending", "-" * (width + 15)]
    for p in plans:
        lines.append(f"{p.cell.label:<{width}}  {len(p.done):>4}  {len(p.pending):>7}"
                     + (f"  ({', '.join(j.name for j in p.pending)})" if p.done and p.pending else ""))
    done, pending = sum(len(p.done) for p in plans), sum(len(p.pending) for p in plans)
    lines.append(f"{len(plans)} cells, {done + pending} jobs: {done} finished, {pending} to run.")
    return "\n".join(lines)


def run_sweep(cfg, *, progress: bool = True) -> SweepSummary | None:
    """Run (or finish) the sweep ``cfg`` from :func:`load_sweep_config`; ``None`` on ranks other than 0."""
    from .._build import make_tracker

    start = time.perf_counter()
    shard = resolve_shard(cfg.sweep.shard)
    cells = shard_cells(expand_cells(cfg), shard)
    if not cfg.tracking.enabled:
        raise ConfigError("A sweep records finished jobs in MLflow to skip them on restart; "
                          "set tracking.enabled=true (and tracking.uri for a team server).")
    rank_zero = is_global_zero(configured_world(cfg.embed.devices, cfg.embed.num_nodes))
    if not rank_zero:
        say_helper()
    # Several processes embed together (DDP, SLURM, torchrun): all of them must call embed() for the same
    # cells in the same order, whatever their view of MLflow, so they embed every cell (cached ones are
    # loaded, not recomputed) and only rank 0 reads MLflow, skips finished jobs and clusters.
    together = _embeds_in_several_processes(cfg)
    tracker = make_tracker(cfg) if rank_zero else None  # closes the runs a killed sweep left RUNNING
    finished = finished_job_keys(tracker) if rank_zero else {}
    plans = plan_cells(cells, finished)
    knn = KnnJobs(plans, finished, cfg.sweep.knn)
    todo = [p.cell for p in plans if p.pending]
    if todo:  # a typo fails now, before any embedding; a finished sweep has nothing to check
        _validate_pipelines(todo)
    summary = SweepSummary(cfg.sweep.name)
    for plan in plans:
        summary.skipped.extend(plan.done)
    summary.skipped.extend(knn.done)
    n_pending = sum(len(p.pending) for p in plans) + len(knn.pending)
    to_embed = [p for p in plans if p.pending or knn.is_pending(p) or together]
    workers, threads = _worker_counts(cfg)
    if rank_zero:
        where = f" shard {shard}" if shard else ""
        if shard and str(cfg.sweep.shard).strip().lower() == "auto":
            where += " (from the SLURM job array)"
        print(f"Sweep '{cfg.sweep.name}'{where}: {len(cells)} cells (encoder × dataset × split), "
              f"{n_pending + len(summary.skipped)} jobs, {len(summary.skipped)} already finished; "
              f"{len(to_embed)} cells to embed or load; clustering "
              + (f"in {workers} worker process(es) × {threads} thread(s)" if workers else "in this process")
              + f". MLflow: {tracker.display_uri}, experiment '{tracker.experiment_name}'.",
              flush=True)
    pool = _ClusterPool(tracker, summary, workers, threads, n_pending, progress and rank_zero,
                        extra_tags={"zsclust.sweep": cfg.sweep.name}, quiet=not rank_zero)
    try:
        for (enc_name, enc_weights), group in groupby(to_embed,
                                                      key=lambda p: (p.cell.encoder, p.cell.cfg.encoder.weights)):
            group = list(group)
            try:
                encoder = _create_encoder(enc_name, enc_weights)
            except Exception as e:  # noqa: BLE001 - a missing checkpoint fails this encoder's cells only
                for plan in group:
                    pool.fail_cell(plan, f"encoder {enc_name}: {_reason(e)}")
                    if knn.is_pending(plan):
                        pool.fail_job(knn.job(plan), f"encoder {enc_name}: {_reason(e)}")
                continue
            for plan in group:
                with pool.in_process():  # workers=0: jobs run in this process, never during an embedding
                    emb = _embed_cell(plan, encoder, pool, together)
                if emb is not None and rank_zero:
                    _warn_stale(plan, finished, emb.fingerprint)
                if emb is not None and rank_zero and plan.pending:
                    pool.submit_cell(plan, emb.fingerprint)
                knn.run(plan, encoder, pool, together, rank_zero)
            del encoder
        if not rank_zero:
            return None
        pool.drain()
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C; Lightning turns one during predict into SystemExit
        summary.interrupted = True
        pool.abandon()
    finally:
        pool.close()
        summary.seconds = time.perf_counter() - start
    return summary


def _embeds_in_several_processes(cfg) -> bool:
    devices = cfg.embed.devices
    return (launch()[1] > 1 or cfg.embed.num_nodes > 1 or devices in ("auto", -1, "-1")
            or (isinstance(devices, int) and devices > 1))


def _warn_stale(plan: CellPlan, finished: dict, fingerprint: str) -> None:
    """Say which finished jobs of the cell were scored on other embeddings than the cell has now."""
    stale = stale_jobs(plan, finished, fingerprint)
    if stale:
        before = sorted({str(finished[j.key]) for j in stale})
        print(f"warning: {len(stale)} finished job(s) of {plan.cell.label} ran on other embeddings "
              f"({', '.join(before)}) than the cell has now ({fingerprint}): "
              f"{', '.join(j.name for j in stale)}. They are skipped as finished; to score them on the current "
              "embeddings, delete their runs (or use another tracking.experiment) and rerun.", flush=True)


def _worker_counts(cfg) -> tuple[int, int]:
    """(clustering processes, threads each): by default half the cores (at most 8), the cores shared out."""
    cores = available_cores()
    workers = cfg.sweep.workers if cfg.sweep.workers is not None else max(1, min(8, cores // 2))
    if workers < 0:
        raise ConfigError(f"sweep.workers must be >= 0 (0 clusters in this process), got {workers}.")
    threads = cfg.sweep.threads_per_worker or max(1, cores // max(1, workers))
    return workers, threads


def _validate_pipelines(cells: list[Cell]) -> None:
    """Smoke-fit every distinct job of the grid once: a typo stops the sweep before any embedding.

    Per-encoder or per-dataset patches make several variants of a job; each distinct one is checked
    once, labelled by the first cell that has it.
    """
    import json

    from .._build import expand_jobs
    from .._json import to_jsonable
    from ..cluster import ClusteringPipeline, JobSpec

    found: dict[str, JobSpec] = {}
    for cell in cells:
        for job in expand_jobs(cell.cfg):
            key = json.dumps(to_jsonable([job.reducer, job.clusterer]), sort_keys=True)
            if key not in found:
                found[key] = JobSpec(f"{job.label} (as {cell.label} has it)", job.reducer, job.clusterer)
    ClusteringPipeline(list(found.values())).validate(1000, 128, None, memory=False)


def _create_encoder(name, weights):
    from ..encoders import create_encoder

    return create_encoder(name, weights=weights)


def _embed_cell(plan: CellPlan, encoder, pool: "_ClusterPool", together: bool):
    """The cell's embeddings (cached or computed now); ``None`` (with its jobs failed) when they cannot be had.

    What fails before embedding (a missing dataset, a job over the memory budget) fails the same way
    on every rank and only costs this cell. A failure inside a multi-process embedding stops the
    sweep: the ranks could not agree on which cell comes next. Finished jobs are kept either way.
    """
    from .._build import embed_options, make_dataset, make_pipeline
    from ..cluster import count_classes
    from ..embed import embed

    cfg = plan.cell.cfg
    try:
        dataset = make_dataset(cfg, encoder)
        n_classes = count_classes(dataset.labels)
        problems = make_pipeline(cfg, plan.context).memory_problems(len(dataset), encoder.num_features, n_classes)
        for job in [j for j in plan.pending if j.name in problems]:
            pool.fail_job(job, problems[job.name])
            plan.pending.remove(job)
        if not plan.pending and not together:
            return None
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - one dataset failing must not stop the sweep
        pool.fail_cell(plan, f"embedding {plan.cell.label}: {_reason(e)}")
        return None
    try:
        return embed(encoder, dataset, options=embed_options(cfg))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001
        if together:
            raise ZsclustError(f"embedding {plan.cell.label} failed in a multi-process run ({_reason(e)}); "
                               "stopping so the processes cannot drift apart. Finished jobs are kept: fix it "
                               "(or drop the cell) and rerun.") from e
        pool.fail_cell(plan, f"embedding {plan.cell.label}: {_reason(e)}")
        return None


def _reason(e: BaseException) -> str:
    return str(e) if isinstance(e, ZsclustError) else f"{type(e).__name__}: {e}"


class _ClusterPool:
    """Worker processes that prepare cells and run jobs.

    A thread of the main process collects what they finish and writes it to MLflow as it arrives, so
    runs appear (and count as done) while the main thread is busy embedding the next cell.
    """

    def __init__(self, tracker, summary: SweepSummary, workers: int, threads: int, total: int, progress: bool,
                 extra_tags: dict, quiet: bool = False):
        self.tracker, self.summary = tracker, summary
        self.workers, self.threads = workers, threads
        self.extra_tags = extra_tags
        self.staging_root = tempfile.mkdtemp(prefix="zsclust-sweep-")
        self.executor: ProcessPoolExecutor | None = None
        self.futures: dict[Future, tuple] = {}
        self.owners: dict[Future, ProcessPoolExecutor | None] = {}  # the pool each future ran in
        self.quiet = quiet  # ranks other than 0 keep their output to themselves
        self.lock = threading.RLock()
        # With workers=0 the collector thread runs jobs in this process. Scoring switches torch's process-wide
        # default dtype to float64 (cluster/_metrics.py), so a job must not run while this process embeds:
        # tensors made meanwhile would be float64 ("expected scalar type Double but found Float").
        self.inline = threading.Lock()
        self.stop = threading.Event()
        self.collector: threading.Thread | None = None
        self.bar = None
        if progress and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="clustering jobs", unit="job", dynamic_ncols=True, disable=None)

    # -- bookkeeping -------------------------------------------------------------------------
    def _say(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def _tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(ran=len(self.summary.ran), failed=len(self.summary.failed), refresh=False)

    def fail_job(self, job: Job, why: str) -> None:
        with self.lock:
            self.summary.failed.append((job, why))
            self._say(f"FAILED {job.label}: {why.splitlines()[0][:300] if why else '?'}")
            self._tick()

    def fail_cell(self, plan: CellPlan, why: str) -> None:
        for job in list(plan.pending):
            self.fail_job(job, why)
        plan.pending = []

    # -- work ----------------------------------------------------------------------------------
    def _spec(self, plan: CellPlan, fingerprint: str) -> dict:
        from ..config import to_container

        return {"cfg": to_container(plan.cell.cfg), "context": plan.context, "identity": plan.identity,
                "fingerprint": fingerprint, "cache_dir": plan.cell.cfg.embed.cache_dir,
                "jobs": [j.name for j in plan.pending]}

    def in_process(self):
        """Held around each embedding when jobs run in this process (workers=0), so the two never overlap."""
        import contextlib

        return self.inline if self.workers == 0 else contextlib.nullcontext()

    def _submit(self, fn, *args, what: tuple) -> None:
        owner = None
        if self.workers == 0:  # in this process (the collector thread runs a cell's jobs), outside the lock
            future: Future = Future()
            try:
                with self.inline:
                    future.set_result(fn(*args))
            except Exception as e:  # noqa: BLE001
                future.set_exception(e)
            if what[0] == "job":  # written now, not after the cell's other jobs (one may run for hours)
                self._finish_safely(future, what)
                return
        else:
            for attempt in (0, 1):  # a pool a dead worker broke takes nothing more: one retry on a new pool
                with self.lock:
                    if self.executor is None:
                        import multiprocessing as mp

                        self.executor = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                                            initializer=init_worker, initargs=(self.threads,))
                    owner = self.executor
                    try:
                        future = owner.submit(fn, *args)
                        break
                    except BrokenProcessPool:
                        if self.executor is owner:
                            self.executor = None
                        if attempt:
                            raise
        with self.lock:
            self.futures[future] = what
            self.owners[future] = owner
            if self.collector is None:
                self.collector = threading.Thread(target=self._collect, name="zsclust-sweep-collector", daemon=True)
                self.collector.start()

    def submit_cell(self, plan: CellPlan, fingerprint: str) -> None:
        spec = self._spec(plan, fingerprint)
        self._submit(prepare_cell, spec, what=("prepare", plan, spec))

    def _collect(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                pending = list(self.futures)
            if not pending:
                self.stop.wait(0.1)
                continue
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                with self.lock:
                    what = self.futures.get(future)
                if what is None:  # abandoned
                    continue
                try:
                    self._finish_safely(future, what)
                finally:  # popped only now, so drain() never sees a gap between a cell and its jobs
                    with self.lock:
                        self.futures.pop(future, None)
                        self.owners.pop(future, None)

    def _finish_safely(self, future: Future, what: tuple) -> None:
        try:
            self._finish(future, *what)
        except Exception as e:  # noqa: BLE001 - a bug here must not hang the sweep
            if what[0] == "job":
                self.fail_job(what[3], f"collecting its result failed: {_reason(e)}")
            else:
                self.fail_cell(what[1], f"collecting its reductions failed: {_reason(e)}")

    def drain(self) -> None:
        """Wait until every submitted cell and job is finished and written."""
        while True:
            with self.lock:
                if not self.futures:
                    return
            time.sleep(0.1)

    def _finish(self, future: Future, kind: str, plan: CellPlan, spec: dict, job: Job | None = None) -> None:
        try:
            value = future.result()
        except BrokenProcessPool:
            with self.lock:  # a worker died (killed, out of memory): a new pool for what is left
                if self.executor is self.owners.get(future):
                    self.executor = None
            why = "a clustering worker process died (killed, or out of memory?)"
            if kind == "prepare":
                self.fail_cell(plan, why)
            else:
                self.fail_job(job, why)
            return
        except Exception as e:  # noqa: BLE001
            if kind == "prepare":  # each job will fit what it needs and report its own error
                self._say(f"preparing {plan.cell.label} failed ({_reason(e)}); running its jobs anyway")
            else:
                self.fail_job(job, _reason(e))
                return
        if kind == "prepare":
            for j in plan.pending:
                if self.stop.is_set():
                    return
                try:
                    self._submit(cluster_job, spec, j.name, self.staging_root, what=("job", plan, spec, j))
                except Exception as e:  # noqa: BLE001 - e.g. no pool can be started any more
                    self.fail_job(j, f"could not start it: {_reason(e)}")
            return
        result, ops, staging = value
        try:
            ids = _replay(ops, self.tracker, {**self.extra_tags})
        except Exception as e:  # noqa: BLE001 - the tracking server went away: retry on the next sweep
            self.fail_job(job, f"could not write its MLflow run: {_reason(e)}")
            return
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if result.error:
            self.fail_job(job, result.error)
            return
        with self.lock:
            self.summary.ran.append(job)
            self.summary.run_ids[job.key] = next(iter(ids.values()), None)
            self.summary.metrics[job.key] = result.metrics
            ami = result.metrics.get("ami")
            self._say(f"done {job.label}" + (f": AMI {ami:.3f}" if ami is not None else ""))
            self._tick()

    def abandon(self) -> None:
        self.stop.set()
        with self.lock:
            for future in self.futures:
                future.cancel()
            self.futures.clear()
            if self.executor is not None:
                self.executor.shutdown(wait=False, cancel_futures=True)
                self.executor = None

    def close(self) -> None:
        self.stop.set()
        if self.collector is not None:
            self.collector.join(timeout=10)
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        if self.bar is not None:
            self.bar.close()
        shutil.rmtree(self.staging_root, ignore_errors=True)


def _replay(ops, tracker, extra_tags):
    from ..tracking import replay

    return replay(ops, tracker, extra_tags=extra_tags)

