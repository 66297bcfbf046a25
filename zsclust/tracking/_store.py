"""Where MLflow records go: ``$MLFLOW_TRACKING_URI``, else a SQLite store under ``./mlruns``.

MLflow 3 refuses a plain file store by default, so the embedded default is ``mlruns/mlflow.db``
with artifacts in ``mlruns/artifacts`` beside it: no server needed, and ``zsclust ui`` opens it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .._secrets import redact, redact_text
from ..errors import ConfigError

DEFAULT_DIR = "mlruns"


def default_store_dir() -> Path:
    return Path(os.environ.get("ZSCLUST_MLRUNS", DEFAULT_DIR)).resolve()


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit ``uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite store under ``./mlruns``."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    d = default_store_dir()
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'mlflow.db'}"


ARTIFACT_ROOT_ENV = "ZSCLUST_ARTIFACT_ROOT"
DATABASE_SCHEMES = ("postgresql", "postgres:", "mysql", "mssql", "oracle")


def artifact_root_for(uri: str) -> str | None:
    """Where new experiments keep artifacts: ``$ZSCLUST_ARTIFACT_ROOT``, else beside a SQLite store.

    A tracking server (http) or any other store decides for itself. A database URI
    (``postgresql://...``) written to directly has no folder of its own: MLflow would put artifacts
    under ``./mlruns`` of whatever directory each worker runs in, so zsclust uses the local store's
    ``artifacts`` folder and says so; set ``ZSCLUST_ARTIFACT_ROOT`` to a location every worker
    reaches (a shared path, ``s3://...``).
    """
    if not uri.startswith((*DATABASE_SCHEMES, "sqlite:///")):
        return None  # a server (http), a file store, Databricks...: they decide for themselves
    root = os.environ.get(ARTIFACT_ROOT_ENV)
    if root:
        return root if "://" in root else Path(root).resolve().as_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    folder = default_store_dir() / "artifacts"
    import warnings

    warnings.warn(f"MLflow store {redact(uri)} is a database without an artifact location: artifacts of new "
                  f"experiments go to {folder} on this machine. Set {ARTIFACT_ROOT_ENV} to a place every worker "
                  "reaches, or use an MLflow server.", stacklevel=2)
    return folder.as_uri()


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# MLflow 3's UI opens an experiment of this kind on its runs table, not on the GenAI overview.
MACHINE_LEARNING_KIND = "custom_model_development"
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + key: a runs-table view the UI loads from ?viewStateShareKey=key
DEFAULT_VIEW_KEY = "zsclust"
DEFAULT_COLUMNS = ("ami", "ari", "n_clusters", "noise_fraction", "silhouette_umap50")


def default_view_state(columns=DEFAULT_COLUMNS, order_by: str | None = "ami") -> str:
    """The runs-table view (metric columns, sort) as MLflow 3's UI stores a shared view: JSON in a tag."""
    import json

    state = {"selectedColumns": ["attributes.`Dataset`", *(f"metrics.`{c}`" for c in columns)]}
    if order_by:
        state.update(orderByKey=f"metrics.`{order_by}`", orderByAsc=False)
    return json.dumps(state)


def researcher_tags(exp) -> dict[str, str]:
    """Experiment tags that open it where a researcher wants it: the runs table with the score columns."""
    from ._describe import NOTE_TAG

    have = dict(getattr(exp, "tags", None) or {})
    tags = {EXPERIMENT_KIND_TAG: MACHINE_LEARNING_KIND, SHARED_VIEW_TAG + DEFAULT_VIEW_KEY: default_view_state(),
            NOTE_TAG: EXPERIMENT_NOTE}
    return {k: v for k, v in tags.items() if k not in have}


EXPERIMENT_NOTE = (
    "zsclust: can a pretrained image encoder cluster a dataset it never saw? One run per encoder x dataset x "
    "split x job (a reducer, then a clusterer), with params under their config keys (`clusterer.linkage`, "
    "`reducer.n_components`). **ami** is the primary score; **silhouette_umap50** is the label-free proxy (the "
    "silhouette of the predicted labels in one fixed UMAP-50 space of the embeddings, noise kept as a label). "
    "Studies (`zsclust tune`) appear as parent runs with one child run per trial; `zsclust report` runs hold the "
    "tables and figures.")


def get_or_create_experiment(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        for key, value in researcher_tags(exp).items():
            client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_experiment_artifacts(uri, name),
                                        tags=researcher_tags(None))
    except Exception:  # another worker created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _experiment_artifacts(uri: str, name: str) -> str | None:
    root = artifact_root_for(uri)
    return f"{root}/{name}" if root else None


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail early, with the URI in the message, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
    except Exception as e:
        raise ConfigError(f"MLflow tracking server '{redact(uri)}' is unreachable ({redact_text(str(e), uri)}). Start "
                          "it, fix MLFLOW_TRACKING_URI, or unset it to use the local store under ./mlruns.") from None


STORE_HINT = ("use http(s)://HOST:PORT (an MLflow server), sqlite:///path/mlflow.db, postgresql://USER@HOST/DB "
              "(the password in PGPASSWORD or ~/.pgpass), or leave MLFLOW_TRACKING_URI and tracking.uri unset for "
              "the local store under ./mlruns")


def store_error(uri: str, e: BaseException) -> ConfigError | None:
    """A one-line ConfigError for what a wrong tracking URI makes MLflow raise, or None for any other error.

    MLflow answers an unknown scheme with a traceback about its model registry, and SQLAlchemy a
    missing driver with ``No module named 'psycopg'``: both name neither the URI nor the fix.
    """
    shown = redact(uri)
    if isinstance(e, ModuleNotFoundError):
        return ConfigError(f"MLflow store '{shown}' needs the Python module '{e.name}', which is not installed: "
                           "pip install 'zsclust[postgres]' (psycopg 3 for postgresql://, psycopg2 for "
                           "postgresql+psycopg2://), or the driver your URL names.")
    text = redact_text(str(e), uri)
    if "unsupported URI" in text or "registered tracking store" in text or "Unsupported URI" in text:
        scheme = uri.split("://", 1)[0] if "://" in uri else uri
        return ConfigError(f"MLflow tracking URI '{shown}' has a scheme MLflow does not support ('{scheme}'): "
                           f"{STORE_HINT}.")
    if "error code 401" in text or "error code 403" in text or "not authenticated" in text.lower():
        why = "401: not authenticated" if "401" in text or "authenticated" in text else "403: not allowed"
        return ConfigError(f"MLflow server '{shown}' refused zsclust ({why}): set MLFLOW_TRACKING_USERNAME and "
                           "MLFLOW_TRACKING_PASSWORD in the environment (a user of its basic-auth app with access to "
                           "the experiment).")
    names = {type(x).__name__ for x in (e, e.__cause__, e.__context__) if x is not None}
    if names & {"OperationalError", "InterfaceError", "ArgumentError", "NoSuchModuleError"} or "OperationalError" in text:
        first = (text.splitlines() or [""])[0][:300]
        return ConfigError(f"MLflow store '{shown}' cannot be opened ({first}). Check that the database runs and "
                           f"the URL is right: {STORE_HINT}.")
    return None


def tracking_client(uri: str):
    """An ``MlflowClient`` on ``uri`` that has answered once; a wrong URI is a ConfigError (see :func:`store_error`)."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as e:
        error = store_error(uri, e)
        if error is None:
            raise
        raise error from None
    return client


def ui_command(uri: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """``mlflow server``'s command line: without the store's URI, which :func:`ui_environment` passes.

    Every user of the machine can read a process's command line (``ps``); a database password there
    would be public, so the URI (and the artifact root, which may carry a token) go through the
    environment, as MLflow's own ``MLFLOW_BACKEND_STORE_URI`` / ``MLFLOW_DEFAULT_ARTIFACT_ROOT``.
    """
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port)]


def ui_environment(uri: str | None = None) -> dict[str, str]:
    """The environment variables that give ``mlflow server`` its store (see :func:`ui_command`)."""
    uri = resolve_tracking_uri(uri)
    env = {"MLFLOW_BACKEND_STORE_URI": uri}
    root = artifact_root_for(uri)
    if root:
        env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = root
    return env


def experiment_runs_url(server: str, experiment_id: str | None, view_key: str | None = DEFAULT_VIEW_KEY) -> str:
    """The link to an experiment's runs table in MLflow 3's machine-learning view (its UI routes by ``#/``).

    Without ``workflowType=machine_learning`` MLflow 3 opens its GenAI pages; ``viewStateShareKey``
    loads the view saved in the experiment's ``mlflow.sharedViewState.<key>`` tag (columns, sort).
    """
    server = server.rstrip("/")
    if experiment_id is None:
        return f"{server}/#/experiments?workflowType=machine_learning"
    query = "workflowType=machine_learning" + (f"&viewStateShareKey={view_key}" if view_key else "")
    return f"{server}/#/experiments/{experiment_id}/runs?{query}"


def pick_experiment(uri: str, name: str | None = None):
    """The experiment ``name``, else the active one with the latest run (``None`` for an empty store).

    A name that does not exist is a ConfigError listing the experiments there.
    """
    from ..errors import did_you_mean

    client = tracking_client(uri)
    if name:
        exp = client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage == "deleted":
            names = [e.name for e in client.search_experiments()]
            raise ConfigError(f"No MLflow experiment '{name}' in {redact(uri)}.{did_you_mean(name, names)} "
                              f"Experiments there: {', '.join(names) or '(none)'}. Pass one of them to --experiment, "
                              "or leave it out to open the latest.")
        return exp
    exps = client.search_experiments()
    if not exps:
        return None
    latest = client.search_runs([e.experiment_id for e in exps], max_results=1, order_by=["attributes.start_time DESC"])
    if latest:
        return next(e for e in exps if e.experiment_id == latest[0].info.experiment_id)
    named = [e for e in exps if e.name != "Default"]
    return named[0] if named else exps[0]


def _ui_link(server: str, exp) -> str:
    if exp is None:
        return experiment_runs_url(server, None)
    has_view = SHARED_VIEW_TAG + DEFAULT_VIEW_KEY in (exp.tags or {})
    return experiment_runs_url(server, exp.experiment_id, DEFAULT_VIEW_KEY if has_view else None)


def open_in_browser(url: str) -> bool:
    """Open ``url`` in a graphical browser if there is one; never in a text browser that would take the terminal."""
    import webbrowser

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    if isinstance(browser, webbrowser.GenericBrowser) and browser.name in ("www-browser", "links", "elinks", "lynx", "w3m"):
        return False
    return bool(browser.open(url))


def wait_until_serving(url: str, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> bool:
    """Poll ``url`` until it answers; False when ``proc`` exits first or ``timeout`` passes."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return True
        except Exception:
            time.sleep(0.5)
    return False


def start_ui(uri: str | None = None, host: str = "127.0.0.1", port: int = 5000, experiment: str | None = None,
             open_browser: bool = True) -> int:
    """Run the MLflow UI until Ctrl-C or SIGTERM, print (and open) the link to the experiment's runs table.

    The link goes to ``experiment`` or, without one, to the experiment with the latest run. A tracking
    server (``http(s)://``) is already a UI: its link is printed and nothing is started.
    """
    uri = resolve_tracking_uri(uri)
    remote = uri.startswith(("http://", "https://"))
    if remote:
        check_reachable(uri)
    exp = pick_experiment(uri, experiment)
    if exp is not None and not remote:  # experiments made before zsclust set these tags
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        for key, value in researcher_tags(exp).items():
            client.set_experiment_tag(exp.experiment_id, key, value)
        exp = client.get_experiment(exp.experiment_id)
    if remote:
        link = _ui_link(redact(uri), exp)
        print(f"MLflow runs: {link}", flush=True)
        if open_browser:
            open_in_browser(link)
        return 0
    cmd = ui_command(uri, host, port)
    env = {**os.environ, **ui_environment(uri)}
    # MLflow 3's server starts a pool of job workers (GenAI features zsclust does not use): on a
    # small machine they take more CPU than the UI itself.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    server = f"http://{local}:{port}"
    print(f"Starting the MLflow UI on {server} (store: {redact(uri)}) ...", flush=True)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def ready() -> None:
        link = _ui_link(server, exp)
        what = f"experiment '{exp.name}'" if exp is not None else "experiments"
        print(f"MLflow runs of {what}: {link}\nCtrl-C stops the UI.", flush=True)
        if open_browser:
            open_in_browser(link)

    return serve_in_foreground(proc, f"{server}/health", ready, timeout=180,
                               late=f"The MLflow UI did not answer within 3 minutes; it may still come up on {server}.")


def serve_in_foreground(proc: subprocess.Popen, health_url: str, ready, *, timeout: float = 120,
                        late: str | None = None) -> int:
    """Wait for a server started with ``start_new_session=True`` to answer, call ``ready()``, then wait for it;
    Ctrl-C or SIGTERM stops it with all its children. Returns its exit code (0 when stopped)."""
    def _stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        if wait_until_serving(health_url, proc, timeout=timeout):
            ready()
        elif proc.poll() is None and late:
            print(late, flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        stop_process_group(proc)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_process_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and all its children; SIGKILL stragglers."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            time.sleep(0.2)  # children may outlive the leader by a moment
        except subprocess.TimeoutExpired:
            continue
