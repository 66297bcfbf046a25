"""Studies: the Optuna storage, one worker's trial loop, and the MLflow parent/child runs.

Several ``zsclust tune`` processes share a study through its storage (SQLite by default, any RDB URL
for workers on many hosts). A worker claims a trial only while fewer than ``study.n_trials`` trials
are finished or running, and the claim (count, then ``study.ask()``) is serialised by a lock file
beside a SQLite database or a PostgreSQL advisory lock (:func:`storage_lock`), so the total is exact;
``MaxTrialsCallback`` only checks after a trial ends, which lets two workers that finish together both
start one more. (Other server RDBs get no lock: there the total may overshoot by at most the number
of workers minus one.)

A killed worker's RUNNING trial stops sending heartbeats; after ``grace_period`` seconds any worker
marks it FAIL (``fail_stale_trials``) and re-enqueues its params (``RetryHeartbeatStaleTrialCallback``).
Workers wait for running trials before they stop, so a rerun after a kill completes the total.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsclust.errors import ConfigError, ZsclustError

from zsclust._locks import AdvisoryLock, FileLock
from zsclust._secrets import redact, redact_config, redact_text

__all__ = ["StudyResult", "StudyRunner", "default_storage_url", "open_storage", "study_status", "TrialsFailingError"]

MAX_CONSECUTIVE_FAILURES = 5
SUMMARY_ATTR = "zsclust.summary"
"""Study attribute: which worker writes (or wrote) the parent run's summary of which state."""
SUMMARY_STALE_S = 600
"""An unfinished summary claimed by another host this long ago is written again."""


class TrialsFailingError(ZsclustError, RuntimeError):
    """Trials of this worker keep failing with an unexpected error: stop instead of looping forever."""


def default_storage_url() -> str:
    """``sqlite:///<mlruns>/optuna.db``, beside the default MLflow store."""
    from zsclust.tracking import default_store_dir

    return f"sqlite:///{default_store_dir() / 'optuna.db'}"


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url[len("sqlite:///"):])
    return None


def open_storage(url: str | None, *, heartbeat_interval: int = 10, grace_period: int = 60, retry_stale: int = 1):
    """An ``RDBStorage`` with heartbeats, or a ConfigError that names the URL when it cannot be opened."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    url = url or default_storage_url()
    engine_kwargs = {}
    path = _sqlite_path(url)
    if path is not None:
        if not path.parent.exists():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"Optuna storage '{url}' is unreachable: cannot create {path.parent} ({e}).") from None
        engine_kwargs = {"connect_args": {"timeout": 120}}  # workers queue on SQLite's write lock
    try:
        # Two workers creating one SQLite database at once race on its tables: one at a time.
        with warnings.catch_warnings(), storage_lock(url):
            warnings.simplefilter("ignore", ExperimentalWarning)
            # Optuna 4.9 renamed RetryFailedTrialCallback / failed_trial_callback; accept both spellings.
            retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
            kw = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in
                  inspect.signature(optuna.storages.RDBStorage).parameters else "failed_trial_callback")
            callbacks = {kw: retry(max_retry=retry_stale)} if retry_stale else {}
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                              grace_period=grace_period, **callbacks)
    except ModuleNotFoundError as e:  # SQLAlchemy 2.1 reads postgresql:// as psycopg 3, for one
        raise ConfigError(f"Optuna storage '{redact(url)}' needs the Python module '{e.name}', which is not "
                          "installed: pip install 'zsclust[postgres]' (psycopg 3 for postgresql://, psycopg2 for "
                          "postgresql+psycopg2://), or the driver your URL names.") from None
    except Exception as e:  # sqlalchemy: OperationalError, ArgumentError, ...
        msg = redact_text(str(e).splitlines()[0][:300] if str(e) else "", url)
        raise ConfigError(f"Optuna storage '{redact(url)}' is unreachable ({type(e).__name__}: {msg}). Check "
                          "study.storage (an RDB URL such as sqlite:///path/optuna.db or "
                          "postgresql://user@host/db, the password in PGPASSWORD or ~/.pgpass), or leave it unset "
                          "for mlruns/optuna.db.") from None


def storage_lock(url: str | None, study: str | None = None):
    """What serialises workers of one storage: a lock file beside SQLite, an advisory lock on PostgreSQL.

    Study setup (worker count, sampler seed, MLflow parent run) and each trial claim happen under it,
    so workers never repeat each other and the trial total is exact. On PostgreSQL the lock is per
    ``study`` (creating the tables takes the storage-wide one), so unrelated studies never wait on
    each other. Other server RDBs get no lock.
    """
    url = url or default_storage_url()
    path = _sqlite_path(url)
    if path is not None:
        return FileLock(path.with_name(path.name + ".lock"))
    if url.startswith(("postgresql", "postgres:")):
        return AdvisoryLock(url, "zsclust.optuna" + (f":{study}" if study else ""))
    return FileLock(None)


def create_sampler(name: str, seed: int | None):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # random, and grid (its points are enqueued)


def create_pruner(name: str, startup_trials: int):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


@dataclass
class StudyResult:
    """What a worker leaves behind: the study's counts, its best trial, and where it is recorded."""

    name: str
    storage: str
    n_trials: int
    n_complete: int = 0
    n_pruned: int = 0
    n_failed: int = 0
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)
    spearman: dict[str, float] = field(default_factory=dict)
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    trials_this_worker: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self, metric: str = "value") -> str:
        lines = [f"study '{self.name}' ({self.storage}): {self.n_complete} complete, {self.n_pruned} pruned, "
                 f"{self.n_failed} failed of {self.n_trials}; {self.trials_this_worker} run by this worker in "
                 f"{self.seconds:.1f} s"]
        if self.best_trial is None:
            lines.append("no completed trial yet")
            return "\n".join(lines)
        lines.append(f"best trial #{self.best_trial}: {metric} = {self.best_value:.4f}")
        per = {k: v for k, v in sorted(self.best_metrics.items()) if k.count(".") == 1 and
               k.split(".", 1)[1] in ("ami", "silhouette_umap50", "silhouette_reduced", "silhouette", "n_clusters")}
        if per:
            lines.append("  " + "  ".join(f"{k} {v:.4g}" for k, v in per.items()))
        lines += [f"  {k} = {v}" for k, v in self.best_params.items()]
        for k, v in self.spearman.items():
            lines.append(f"{k}: {v:.3f}")
        if self.parent_run_id:
            lines.append(f"MLflow: parent run {self.parent_run_id} in experiment '{self.experiment}' at {self.tracking_uri}")
        lines.append(f"test split: zsclust evaluate --study '{self.name}'"
                     + ("" if self.storage == redact(default_storage_url()) else f" --storage '{self.storage}'"))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


class _Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds while the objective runs."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a busy database: try again next beat
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def signature(cfg, space, datasets) -> dict:
    """What makes two workers' trials comparable: space, objective, scoring, validation sets, seed."""
    from omegaconf import OmegaConf

    sig = {"space": space.describe(), "metric": cfg.objective.metric, "seed": int(cfg.seed),
           "evaluation": OmegaConf.to_container(cfg.evaluation, resolve=True),
           "datasets": {d.name: [d.data.fingerprint, d.weight] for d in datasets}}
    return json.loads(json.dumps(sig, default=str))


class StudyRunner:
    """One worker of one study: set up (or join) the study, run trials until the total is reached, report.

    ``objective`` is a plain function of the trial; the runner owns the storage, the claim of each
    trial, heartbeats, and the MLflow runs (a child per trial, written after the trial from its
    user attributes, and the study's parent run).
    """

    def __init__(self, cfg, space, objective, *, tracker_factory=None, progress: bool = True):
        self.cfg = cfg
        self.space = space
        self.objective = objective
        self.tracker_factory = tracker_factory
        self.progress = progress
        s = cfg.study
        self.url = s.storage or default_storage_url()
        self.n_trials = int(s.n_trials)
        self.tracker = None
        self.parent_run_id = None
        self.notes: list[str] = []

    # -- setup -----------------------------------------------------------------------------------------
    def setup(self):
        import optuna
        from omegaconf import OmegaConf

        s = self.cfg.study
        self.storage = open_storage(self.url, heartbeat_interval=s.heartbeat_interval, grace_period=s.grace_period,
                                    retry_stale=s.retry_stale)
        self.lock = storage_lock(self.url, s.name)
        grid = self.space.grid() if s.sampler == "grid" else None
        if grid is not None and hasattr(self.objective, "grid_order"):
            grid = self.objective.grid_order(grid)
        if grid is not None and len(grid) < self.n_trials:
            self.notes.append(f"the grid has {len(grid)} points: n_trials {self.n_trials} -> {len(grid)}")
            self.n_trials = len(grid)
        sig = signature(self.cfg, self.space, self.objective.datasets)
        with self.lock:
            probe = optuna.create_study(storage=self.storage, study_name=s.name, direction="maximize",
                                        load_if_exists=True)
            attrs = probe.user_attrs
            if probe.direction != optuna.study.StudyDirection.MAXIMIZE:
                raise ConfigError(f"Study '{s.name}' in {redact(self.url)} minimises; zsclust studies maximise. "
                                  "Choose another study.name.")
            if "zsclust.signature" in attrs and attrs["zsclust.signature"] != sig:
                diff = [k for k in sig if attrs["zsclust.signature"].get(k) != sig[k]]
                raise ConfigError(f"Study '{s.name}' in {redact(self.url)} was created with a different "
                                  f"{', '.join(diff)}; its trials would not be comparable. Resume it with the same "
                                  "config, or choose another study.name.")
            if "zsclust.signature" not in attrs:
                probe.set_user_attr("zsclust.signature", sig)
                # without passwords: 'zsclust evaluate' takes them from --storage / the environment again
                probe.set_user_attr("zsclust.config", redact_config(OmegaConf.to_container(self.cfg, resolve=True)))
            worker = int(attrs.get("zsclust.workers", 0))
            probe.set_user_attr("zsclust.workers", worker + 1)
            seed = None if self.cfg.seed is None else int(self.cfg.seed) + worker  # workers must not repeat each other
            self.study = optuna.create_study(storage=self.storage, sampler=create_sampler(s.sampler, seed),
                                             pruner=create_pruner(s.pruner, s.pruner_startup_trials),
                                             study_name=s.name, direction="maximize", load_if_exists=True)
            for params in list(s.enqueue or []) + (grid or []):
                params = dict(params)
                unknown = [k for k in params if k not in {d.key for d in self.space.dimensions}]
                if unknown:
                    raise ConfigError(f"study.enqueue: '{unknown[0]}' is not a searched parameter of study "
                                      f"'{s.name}'; searched: {', '.join(d.key for d in self.space.dimensions)}.")
                self.study.enqueue_trial(params, skip_if_exists=True)
            if self.tracker_factory is not None:
                self.tracker = self.tracker_factory()
                if self.tracker is not None:
                    self._parent_run()
        return self.study

    def _parent_run(self) -> None:
        """The study's parent run: created by the first worker, its id kept in the study for the others."""
        from omegaconf import OmegaConf

        info = self.study.user_attrs.get("zsclust.mlflow") or {}
        if info.get("uri") == redact(self.tracker.uri) and info.get("experiment") == self.tracker.experiment_name:
            self.parent_run_id = info["parent_run_id"]
            try:
                self.tracker.client.update_run(self.parent_run_id, status="RUNNING")
                self.tracker.adopt_run(self.parent_run_id)  # closed as an orphan only when this worker dies
                return
            except Exception:  # deleted from MLflow: start a new parent
                pass
        cfg = self.cfg
        tags = {"zsclust.study": cfg.study.name, "zsclust.role": "study", "optuna.storage": redact(self.url),
                "encoder": cfg.encoder.name, "objective": cfg.objective.metric}
        rid = self.tracker.start_run(cfg.study.name, tags=tags)
        params = {"study.name": cfg.study.name, "encoder.name": cfg.encoder.name, "objective.metric": cfg.objective.metric,
                  "study.sampler": cfg.study.sampler,
                  "study.pruner": cfg.study.pruner, "seed": cfg.seed,
                  "reducer.name": self.space.family("reducer"), "clusterer.name": self.space.family("clusterer")}
        for d in self.objective.datasets:
            params[f"datasets.{d.name}.weight"] = d.weight
            params[f"datasets.{d.name}.num_samples"] = len(d.data.X)
        for dim in self.space.dimensions:
            params[f"space.{dim.key}"] = (f"{dim.choices}" if dim.kind == "categorical" else
                                          f"{dim.kind}[{dim.low}, {dim.high}]{' log' if dim.log else ''}")
        self.tracker.log_params(rid, params)
        config = redact_config(OmegaConf.to_container(cfg, resolve=True))
        self.tracker.log_text(rid, OmegaConf.to_yaml(OmegaConf.create(config)), "tune_config.yaml")
        self.study.set_user_attr("zsclust.mlflow", {"uri": redact(self.tracker.uri), "experiment": self.tracker.experiment_name,
                                                    "parent_run_id": rid})
        self.parent_run_id = rid

    # -- the loop ----------------------------------------------------------------------------------------
    def _fail_stale(self) -> None:
        import optuna
        from optuna.exceptions import ExperimentalWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def _claim(self):
        """Under the lock: ``(trial, finished, running)``; trial is None when the budget is used up or taken."""
        from optuna.trial import TrialState

        with self.lock:
            trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                   TrialState.RUNNING))
            finished = sum(t.state != TrialState.RUNNING for t in trials)
            if len(trials) >= self.n_trials:
                return None, finished, len(trials) - finished
            with warnings.catch_warnings():  # Optuna's hint that heartbeats are meant for optimize(): we send them
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = self.study.ask()
            # A RUNNING trial without any heartbeat is never considered stale: beat before anything else.
            self.storage.record_heartbeat(trial._trial_id)
            return trial, finished, len(trials) - finished

    def run(self) -> StudyResult:
        """Run trials until ``study.n_trials`` are finished (by any worker), then summarise."""
        from optuna.trial import TrialState
        from tqdm.auto import tqdm

        if not hasattr(self, "study"):
            self.setup()
        s = self.cfg.study
        start = time.monotonic()
        done_here, failures, waiting_said = 0, 0, False
        bar = tqdm(total=self.n_trials, desc=s.name, unit="trial", disable=not self.progress, dynamic_ncols=True)
        try:
            while True:
                if s.timeout is not None and time.monotonic() - start > s.timeout:
                    self.notes.append(f"stopped after study.timeout={s.timeout} s")
                    break
                self._fail_stale()
                trial, finished, running = self._claim()
                bar.n = finished
                bar.refresh()
                if trial is None:
                    if finished >= self.n_trials:
                        break
                    if not waiting_said:  # others hold the remaining trials: wait for them, or for them to go stale
                        bar.write(f"waiting for {running} running trial(s) of other workers")
                        waiting_said = True
                    time.sleep(min(2.0, s.heartbeat_interval))
                    continue
                waiting_said = False
                frozen = self._run_trial(trial)
                done_here += 1
                failures = failures + 1 if frozen.state == TrialState.FAIL else 0
                self._log_trial(frozen)
                bar.n = min(self.n_trials, bar.n + (frozen.state != TrialState.FAIL))
                bar.refresh()
                bar.write(self._trial_line(frozen))
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise TrialsFailingError(
                        f"{failures} trials in a row failed in study '{s.name}'; the last: "
                        f"{frozen.user_attrs.get('zsclust.error', '?')}")
        finally:
            bar.close()
        return self.finish(done_here, time.monotonic() - start)

    def _run_trial(self, trial):
        """Run the objective on a claimed trial with heartbeats; tell the storage how it ended."""
        import optuna
        from optuna.trial import TrialState

        from ._workers import shared_cores

        with _Heartbeat(self.storage, trial._trial_id, self.cfg.study.heartbeat_interval):
            trial.set_user_attr("zsclust.worker", f"{socket.gethostname()}:{os.getpid()}")  # which process ran it
            try:
                with shared_cores():
                    value = self.objective(trial)
            except optuna.TrialPruned:
                return self._tell(trial, state=TrialState.PRUNED)
            except KeyboardInterrupt:
                self._tell(trial, state=TrialState.FAIL)
                raise
            except Exception as e:  # one configuration's failure is recorded, the search goes on
                msg = getattr(e, "user_message", None) or f"{type(e).__name__}: {e}"
                trial.set_user_attr("zsclust.error", msg[:2000])
                return self._tell(trial, state=TrialState.FAIL)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            trial.set_user_attr("zsclust.error", f"objective returned {value}")
            return self._tell(trial, state=TrialState.FAIL)
        return self._tell(trial, value)

    def _tell(self, trial, value=None, state=None):
        """``study.tell``, tolerating a trial that another worker already failed as stale."""
        import optuna

        try:
            frozen = self.study.tell(trial, value, state=state, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:  # failed by another worker between check and write
            frozen = self.storage.get_trial(trial._trial_id)
        if frozen.state != (state or optuna.trial.TrialState.COMPLETE):
            self.notes.append(f"trial {trial.number} was marked {frozen.state.name} by another worker: its heartbeat "
                              f"was silent for study.grace_period={self.cfg.study.grace_period} s; raise it for "
                              "configurations whose single steps take longer")
        return frozen

    def _trial_line(self, t) -> str:
        from optuna.trial import TrialState

        params = ", ".join(f"{k.split('.', 1)[1]}={_short(v)}" for k, v in t.params.items())
        if t.state == TrialState.COMPLETE:
            what = f"{self.cfg.objective.metric} {t.value:.4f}"
        elif t.state == TrialState.PRUNED:
            what = f"pruned ({t.user_attrs.get('zsclust.pruned_reason', '')[:120]})"
        else:
            what = f"failed ({t.user_attrs.get('zsclust.error', '')[:160]})"
        try:
            best = f" | best {self.study.best_value:.4f} (#{self.study.best_trial.number})"
        except ValueError:
            best = ""
        return f"trial {t.number}: {what}{best} | {params}"

    # -- MLflow ----------------------------------------------------------------------------------------
    def _log_trial(self, t) -> None:
        """One child run per trial, under the study's parent run (``mlflow.parentRunId``)."""
        from optuna.trial import TrialState

        if self.tracker is None:
            return
        name = self.cfg.study.name
        tags = {"zsclust.study": name, "zsclust.role": "trial", "zsclust.trial_state": t.state.name,
                "optuna.trial_number": t.number, "encoder": self.cfg.encoder.name}
        for key in ("zsclust.pruned_reason", "zsclust.error", "zsclust.worker"):
            if key in t.user_attrs:
                tags[key] = t.user_attrs[key][:5000]
        if "failed_trial" in t.system_attrs:
            tags["optuna.retry_of"] = t.system_attrs["failed_trial"]
        try:
            rid = self.tracker.start_run(f"{name}/trial-{t.number}", tags=tags, parent_run_id=self.parent_run_id)
            # the job's params as a run logs them (clusterer.linkage, reducer.n_components, ...), else as searched
            job = t.user_attrs.get("zsclust.params") or self.space.resolve(t.params)
            params = {"study.name": name, "trial.number": t.number, **job}
            self.tracker.log_params(rid, params)
            metrics = dict(t.user_attrs.get("zsclust.metrics") or {})
            if t.state == TrialState.COMPLETE:
                metrics["value"] = t.value
            if t.duration is not None:
                metrics["trial_seconds"] = t.duration.total_seconds()
            self.tracker.log_metrics(rid, metrics)
            for step, v in sorted(t.intermediate_values.items()):
                self.tracker.log_metrics(rid, {"intermediate_value": v}, step=step)
            status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}.get(t.state, "FAILED")
            self.tracker.end_run(rid, status=status)
        except Exception as e:  # tracking must not stop the search
            warnings.warn(f"MLflow: could not log trial {t.number}: {e}", RuntimeWarning, stacklevel=2)

    def finish(self, done_here: int, seconds: float) -> StudyResult:
        """Summarise the study (all workers' trials), and write it to the parent run."""
        from optuna.trial import TrialState

        from . import _report

        trials = self.study.get_trials(deepcopy=False)
        count = {st: sum(t.state == st for t in trials) for st in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        result = StudyResult(self.cfg.study.name, redact(self.url), self.n_trials, count[TrialState.COMPLETE],
                             count[TrialState.PRUNED], count[TrialState.FAIL], trials_this_worker=done_here,
                             seconds=seconds, notes=list(self.notes), parent_run_id=self.parent_run_id)
        if count[TrialState.COMPLETE]:
            best = self.study.best_trial
            result.best_trial, result.best_value = best.number, best.value
            result.best_params = self.space.resolve(best.params)
            result.best_metrics = dict(best.user_attrs.get("zsclust.metrics") or {})
        sil = _report.silhouette_key_of(self.cfg)
        result.spearman = _report.spearman_silhouette_ami(trials, [d.name for d in self.objective.datasets], sil)
        if self.tracker is not None and self.parent_run_id:
            result.tracking_uri, result.experiment = self.tracker.display_uri, self.tracker.experiment_name
            state = [result.n_complete, result.n_pruned, result.n_failed, result.best_trial]
            claimed, written = self._claim_summary(state)
            if not claimed and not written:  # another worker is writing it: it ends the parent when done
                written = self._wait_for_summary(state)
            if written:  # by another worker; this one may have set the parent RUNNING again when it joined
                try:
                    self.tracker.end_run(self.parent_run_id, status="FINISHED")
                except Exception as e:  # tracking must not fail a finished study
                    warnings.warn(f"MLflow: could not close the study's parent run: {e}", RuntimeWarning, stacklevel=2)
            if claimed:
                try:
                    _report.log_study(self.tracker, self.parent_run_id, self.study, result, sil,
                                      self.cfg.objective.metric)
                    self._release_summary(state, done=True)
                except Exception as e:
                    self._release_summary(state, done=False)  # the next worker or rerun writes it
                    warnings.warn(f"MLflow: could not write the study summary: {e}", RuntimeWarning, stacklevel=2)
                    result.notes.append(f"MLflow summary failed: {e}")
        return result

    def _claim_summary(self, state: list) -> tuple[bool, bool]:
        """(whether this worker writes the parent run's summary of ``state``, the trial counts and the best trial;
        whether another worker has written it already).

        Workers of one study finish together (each waits for the others' trials), and two writing the same
        summary at once collided in MLflow's tag table (a UNIQUE constraint failed in one of them). Under the
        storage lock the first worker marks the state as its own; the others skip it unless it was left by a
        process that is gone (on this host), or, claimed on another host, unfinished for
        :data:`SUMMARY_STALE_S`.
        """
        with self.lock:
            mark = self.study.user_attrs.get(SUMMARY_ATTR)
            if mark and mark.get("state") == state:
                if mark.get("done"):
                    return False, True
                if _claim_alive(mark):
                    return False, False  # being written
            self.study.set_user_attr(SUMMARY_ATTR, {"state": state, "at": time.time(), "done": False, **_owner()})
            return True, False

    def _release_summary(self, state: list, *, done: bool) -> None:
        """Mark this worker's claim on ``state`` written (``done``) or drop it, only if it is still this worker's."""
        with self.lock:
            mark = self.study.user_attrs.get(SUMMARY_ATTR)
            me = _owner()
            if not mark or mark.get("state") != state or any(mark.get(k) != me[k] for k in me):
                return  # taken over by another worker meanwhile: theirs now
            self.study.set_user_attr(SUMMARY_ATTR, {**mark, "done": True} if done else None)

    def _wait_for_summary(self, state: list, timeout: float = 60.0) -> bool:
        """Whether another worker's summary of ``state`` got written within ``timeout`` seconds (it ends the
        parent run itself; this worker ends it again only in case it set it RUNNING after that)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mark = self.study.user_attrs.get(SUMMARY_ATTR) or {}
            if mark.get("state") != state or not _claim_alive(mark):
                return False
            if mark.get("done"):
                return True
            time.sleep(0.5)
        return False


def _owner() -> dict[str, str]:
    from zsclust.tracking._orphans import owner_tags

    return owner_tags()


def _claim_alive(mark: dict) -> bool:
    """A summary claim whose writer may still be at work: its process exists (this host), or it is younger than
    :data:`SUMMARY_STALE_S` (another host, where that cannot be seen)."""
    from zsclust.tracking._orphans import HOST_TAG, is_orphan

    if is_orphan(mark):
        return False
    return mark.get(HOST_TAG) == socket.gethostname() or time.time() - mark.get("at", 0) < SUMMARY_STALE_S


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def study_status(cfg, last: int = 10) -> str:
    """A study's state from its storage, running nothing: trial counts, the best so far, running and recent trials."""
    import datetime

    import optuna
    from optuna.trial import TrialState

    url = cfg.study.storage or default_storage_url()
    storage = open_storage(url, retry_stale=0)
    name = cfg.study.name
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return f"study '{name}' ({redact(url)}): not started yet (0 of {cfg.study.n_trials} trials)."
    trials = study.get_trials(deepcopy=False)
    count = {st: sum(t.state == st for t in trials) for st in TrialState}
    lines = [f"study '{name}' ({redact(url)}): {count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} "
             f"pruned, {count[TrialState.FAIL]} failed, {count[TrialState.RUNNING]} running, "
             f"{count[TrialState.WAITING]} waiting; target {cfg.study.n_trials} trials"]
    try:
        best = study.best_trial
        lines.append(f"best so far: trial {best.number}, {cfg.objective.metric} = {best.value:.4f}  "
                     + "  ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
    except ValueError:
        lines.append("best so far: none (no completed trial)")
    now = datetime.datetime.now()
    for t in trials:
        if t.state == TrialState.RUNNING:
            age = (now - t.datetime_start).total_seconds() if t.datetime_start else float("nan")
            lines.append(f"running: trial {t.number} for {age:.0f} s  "
                         + "  ".join(f"{k}={_short(v)}" for k, v in t.params.items()))
    done = sorted((t for t in trials if t.state.is_finished()), key=lambda t: t.number)[-last:]
    if done:
        lines.append(f"last {len(done)} finished:")
        for t in done:
            what = (f"{t.value:.4f}" if t.state == TrialState.COMPLETE else t.state.name.lower()
                    + (f" ({(t.user_attrs.get('zsclust.pruned_reason') or t.user_attrs.get('zsclust.error') or '')[:80]})"
                       if t.state != TrialState.COMPLETE else ""))
            lines.append(f"  trial {t.number:>4}: {what}  " + "  ".join(f"{k}={_short(v)}" for k, v in t.params.items()))
    return "\n".join(lines)
