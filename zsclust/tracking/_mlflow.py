"""One MLflow run per encoder × dataset × split × reducer × clusterer, written through ``MlflowClient``.

The client API (not the fluent ``mlflow.start_run``) keeps no global active run, so parallel
workers and nested tuning runs cannot log into each other's runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import __version__
from .._secrets import redact
from ._store import (DEFAULT_COLUMNS, DEFAULT_VIEW_KEY, SHARED_VIEW_TAG, check_reachable, default_view_state,
                     experiment_runs_url, get_or_create_experiment, resolve_tracking_uri, store_error)

MAX_PARAM_LEN = 6000  # MLflow 3's limit on a param value
BATCH = 100  # log_batch takes at most 100 params per call


class MLflowTracker:
    """Creates runs in one experiment and logs params, metrics, tags and artifacts to them.

    ``uri`` may hold a password: it is used to connect, never shown; :attr:`display_uri` is what
    messages print. Every run is tagged with the process that created it (host, pid), so a later
    command can close the runs a killed process left RUNNING (:meth:`close_orphans`).
    """

    def __init__(self, uri: str | None = None, experiment: str = "zsclust"):
        from mlflow.tracking import MlflowClient

        self.uri = resolve_tracking_uri(uri)
        check_reachable(self.uri)
        self.experiment_name = experiment
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = _first_contact(lambda: get_or_create_experiment(self.client, experiment, self.uri))
        except Exception as e:  # a scheme MLflow does not know, a missing database driver, no connection
            error = store_error(self.uri, e)
            if error is None:
                raise
            raise error from None
        from ._describe import context_tags

        # who ran it, from what command, at which commit: MLflow's User and Source columns, on every run
        self.base_tags = {"zsclust.version": __version__, **context_tags()}
        if "mlflow.source.git.commit" in self.base_tags:
            self.base_tags["git.commit"] = self.base_tags["mlflow.source.git.commit"]

    @property
    def display_uri(self) -> str:
        """The tracking URI without its password: for messages, tags and reports."""
        return redact(self.uri)

    def start_run(self, run_name: str, tags: dict | None = None, parent_run_id: str | None = None) -> str:
        from ._orphans import owner_tags

        all_tags = {**self.base_tags, **owner_tags(),
                    **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, params=items[i : i + BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())
                 if v is not None and isinstance(v, (int, float)) and not math.isnan(float(v))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            if v is not None:
                self.client.set_tag(run_id, k, str(v))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def run_url(self, run_id: str) -> str:
        return f"{self.display_uri} experiment {self.experiment_id} run {run_id}"

    def close_orphans(self) -> list[str]:
        """Mark KILLED the RUNNING runs of this experiment whose process (on this host) is gone; their ids."""
        from ._orphans import close_orphans

        return close_orphans(self.client, [self.experiment_id])

    def adopt_run(self, run_id: str) -> None:
        """Make this process the owner of a run another process created (a study's parent run, joined)."""
        from ._orphans import owner_tags

        self.set_tags(run_id, owner_tags())

    # -- what the MLflow UI shows a researcher (see zsclust/tracking/_describe.py) --

    def set_experiment_description(self, text: str) -> None:
        """The experiment's description (Markdown), shown above its runs table."""
        from ._describe import NOTE_TAG

        self.client.set_experiment_tag(self.experiment_id, NOTE_TAG, text)

    def set_default_view(self, columns=DEFAULT_COLUMNS, order_by: str | None = "ami") -> None:
        """The runs table's columns (metric names) and sort that ``zsclust ui``'s link opens."""
        self.client.set_experiment_tag(self.experiment_id, SHARED_VIEW_TAG + DEFAULT_VIEW_KEY,
                                       default_view_state(columns, order_by))

    def describe_run(self, run_id: str, encoder: str, dataset: str, split: str, reducer: str, clusterer: str,
                     metrics: dict[str, float] | None = None, **facts) -> None:
        """The run's description: what ran on what and its headline scores (see ``run_description``)."""
        from ._describe import NOTE_TAG, run_description

        self.set_tags(run_id, {NOTE_TAG: run_description(encoder, dataset, split, reducer, clusterer, metrics, **facts)})

    def set_context_tags(self, run_id: str, source_name: str | None = None) -> None:
        """``mlflow.user``, ``mlflow.source.name`` / ``.type`` / ``.git.commit``: the UI's User and Source columns."""
        from ._describe import context_tags

        self.set_tags(run_id, context_tags(source_name))

    def log_dataset(self, run_id: str, name: str, digest: str, n_samples: int, *, context: str | None = None,
                    source: str | None = None, profile: dict | None = None) -> None:
        """The run's dataset as an MLflow dataset input: ``digest`` the embedding fingerprint, ``context`` the split."""
        from ._describe import dataset_input

        self.client.log_inputs(run_id, datasets=[dataset_input(name, digest, n_samples, context=context,
                                                               source=source, profile=profile)])

    def system_metrics(self, run_id: str, interval: float = 10.0):
        """Context manager: ``system/*`` metrics (CPU, memory, disk, network, GPU) of ``run_id`` while inside."""
        from ._describe import system_metrics

        return system_metrics(run_id, self.uri, interval)

    def ui_link(self, server: str = "http://127.0.0.1:5000") -> str:
        """The link to this experiment's runs table on the MLflow UI at ``server``."""
        return experiment_runs_url(server, self.experiment_id)


def iter_runs(client, experiment_ids: list[str], filter_string: str, order_by: list[str] | None = None):
    """Every run matching ``filter_string``, page after page (``search_runs`` returns at most one page)."""
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=5000,
                                  order_by=order_by, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _first_contact(call, attempts: int = 5):
    """``call()``, retried while another process is creating the store's tables at the same moment.

    MLflow creates its schema on first contact with an empty database; two workers starting together
    on a fresh PostgreSQL database collide there ("already exists", a unique violation) and one fails.
    """
    import time

    for attempt in range(attempts):
        try:
            return call()
        except Exception as e:  # sqlalchemy's IntegrityError/ProgrammingError, wrapped by MLflow
            text = str(e).lower()
            if attempt == attempts - 1 or not ("already exists" in text or "duplicate" in text or "unique" in text):
                raise
            time.sleep(0.5 * (attempt + 1))


def _param_value(v: Any) -> str:
    s = "None" if v is None else str(v)
    return s if len(s) <= MAX_PARAM_LEN else s[: MAX_PARAM_LEN - 3] + "..."
