"""Where MLflow records go: ``$MLFLOW_TRACKING_URI``, else a SQLite store under ``./mlruns``.

MLflow 3 refuses a plain file store by default, so the embedded default is ``mlruns/mlflow.db``
with artifacts in ``mlruns/artifacts`` beside it: no server needed, and ``zsclust ui`` opens it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

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

    warnings.warn(f"MLflow store {uri.split('@')[-1]} is a database without an artifact location: artifacts of new "
                  f"experiments go to {folder} on this machine. Set {ARTIFACT_ROOT_ENV} to a place every worker "
                  "reaches, or use an MLflow server.", stacklevel=2)
    return folder.as_uri()


def get_or_create_experiment(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_experiment_artifacts(uri, name))
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
        raise ConfigError(f"MLflow tracking server '{uri}' is unreachable ({e}). Start it, fix "
                          "MLFLOW_TRACKING_URI, or unset it to use the local store under ./mlruns.") from None


def ui_command(uri: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    uri = resolve_tracking_uri(uri)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    root = artifact_root_for(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    return cmd


def start_ui(uri: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Run the MLflow UI until Ctrl-C or SIGTERM, then stop it with every process it started."""
    import signal

    cmd = ui_command(uri, host, port)
    env = dict(os.environ)
    # MLflow 3's server starts a pool of job workers (GenAI features zsclust does not use): on a
    # small machine they take more CPU than the UI itself.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    print(f"MLflow UI on http://{host}:{port}  (store: {resolve_tracking_uri(uri)}); Ctrl-C stops it.")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def _stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
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
