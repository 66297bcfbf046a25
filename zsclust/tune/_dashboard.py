"""``zsclust dashboard``: optuna-dashboard on the study storage, on loopback unless told otherwise.

The dashboard runs in a child process (:func:`serve`) that reads the
storage URL from the environment, so a database password never shows in the process list, and
stops with everything it started on Ctrl-C, like ``zsclust ui``.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .._secrets import redact
from ..errors import ConfigError

STORAGE_ENV = "ZSCLUST_DASHBOARD_STORAGE"
INSTALL_HINT = "pip install 'zsclust[dashboard]'"


def _require_dashboard() -> None:
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        raise ConfigError(f"optuna-dashboard is not installed: {INSTALL_HINT} (or pip install optuna-dashboard).") from None


def _storage(url: str):
    import optuna

    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def resolve_storage(storage: str | None) -> str:
    """``storage``, else the default ``sqlite:///<mlruns>/optuna.db``; a missing SQLite file is a ConfigError."""
    from pathlib import Path

    from ._study import default_storage_url

    url = storage or default_storage_url()
    if url.startswith("sqlite:///") and ":memory:" not in url:
        path = Path(url[len("sqlite:///"):])
        if not path.is_file():
            raise ConfigError(f"No Optuna storage at {path}: run 'zsclust tune' first, or pass the study's storage "
                              "with --storage (e.g. sqlite:///path/optuna.db or postgresql://user@host/db).")
    return url


def study_path(url: str, study: str | None) -> str:
    """The dashboard page of ``study`` (``/dashboard/studies/<id>``), else its study list."""
    if not study:
        return "/dashboard/"
    import optuna

    from ..errors import did_you_mean

    storage = _storage(url)
    try:
        return f"/dashboard/studies/{storage.get_study_id_from_name(study)}"
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ConfigError(f"No study '{study}' in {redact(url)}.{did_you_mean(study, names)} Studies there: "
                          f"{', '.join(names) or '(none)'}.") from None


def dashboard_command(host: str = "127.0.0.1", port: int = 8080) -> list[str]:
    """The child process's command line; the storage URL goes in ``$ZSCLUST_DASHBOARD_STORAGE``."""
    return [sys.executable, "-c", "from zsclust.tune._dashboard import serve; serve()", "--host", host,
            "--port", str(port)]


def start_dashboard(storage: str | None = None, host: str = "127.0.0.1", port: int = 8080, study: str | None = None,
                    open_browser: bool = True) -> int:
    """Serve optuna-dashboard on ``storage`` until Ctrl-C or SIGTERM; print (and open) its link once it answers."""
    from ..tracking._store import open_in_browser, serve_in_foreground

    _require_dashboard()
    url = resolve_storage(storage)
    page = study_path(url, study)
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    server = f"http://{local}:{port}"
    print(f"Starting optuna-dashboard on {server} (storage: {redact(url)}) ...", flush=True)
    proc = subprocess.Popen(dashboard_command(host, port), env={**os.environ, STORAGE_ENV: url}, start_new_session=True)

    def ready() -> None:
        print(f"Optuna dashboard: {server}{page}\nCtrl-C stops it.", flush=True)
        if open_browser:
            open_in_browser(server + page)

    return serve_in_foreground(proc, f"{server}/api/meta", ready, timeout=120)


def serve(argv: list[str] | None = None) -> None:
    """The child process: optuna-dashboard on ``$ZSCLUST_DASHBOARD_STORAGE`` until killed."""
    import argparse

    from optuna_dashboard import run_server

    parser = argparse.ArgumentParser(description="optuna-dashboard on $" + STORAGE_ENV)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    url = os.environ.get(STORAGE_ENV)
    if not url:
        sys.exit(f"set ${STORAGE_ENV} to the Optuna storage URL")
    run_server(_storage(url), host=args.host, port=args.port)

