"""The researcher's view: runs described for the MLflow UI, `zsclust ui`'s link opened in a real browser,
and `zsclust dashboard` serving a real Optuna study."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import _free_port as free_port

from zsclust.errors import ConfigError
from zsclust.tracking import MLflowTracker, experiment_runs_url

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ENV = "ZSCLUST_TEST_CHROMIUM"
CHROMIUM_MISSING = ("Chromium not found: install Debian's chromium package (apt-get install -y chromium) or set "
                    f"{CHROMIUM_ENV} to a Chromium or Chrome binary")


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless-capable Chromium: ``$ZSCLUST_TEST_CHROMIUM``, else the one on PATH. Missing fails, never skips."""
    explicit = os.environ.get(CHROMIUM_ENV)
    found = explicit if explicit and os.access(explicit, os.X_OK) else None
    for name in () if explicit else ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = found or shutil.which(name)
    if not found:
        pytest.fail(CHROMIUM_MISSING + (f" ({explicit} is not an executable)" if explicit else ""), pytrace=False)
    return found


class Served:
    """A ``zsclust`` server subcommand in its own session; ``link`` is the URL it printed."""

    def __init__(self, args: list[str], pattern: str, log: Path, timeout: float = 240):
        import select

        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = log
        self._err = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "zsclust.cli", *args], stdout=subprocess.PIPE,
                                     stderr=self._err, bufsize=0, env=env, start_new_session=True)
        self.output: list[str] = []
        self.link = None
        fd, pending = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        # raw reads on the descriptor: a buffered readline could keep a second line that arrived in the same
        # chunk (the server's log line and ours) where select() no longer sees it
        while self.link is None and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                break  # exited, or the time is up
            *lines, pending = (pending + chunk).split(b"\n")
            for line in (raw.decode(errors="replace") + "\n" for raw in lines):
                self.output.append(line)
                if self.link is None and line.startswith(pattern):
                    self.link = line[len(pattern):].strip()
        if self.link is not None:  # keep the pipe drained, so the server never blocks on a full one
            import threading

            threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(fd, 65536), b"")], daemon=True).start()
        if self.link is None:
            self.stop()
            raise AssertionError(f"no '{pattern}' line; printed: {''.join(self.output)!r}; log: {log.read_text()[-3000:]}")

    def listening(self, port: int) -> set[str]:
        """The addresses the command's processes listen on at ``port``."""
        import psutil

        procs = [psutil.Process(self.proc.pid)]
        procs += procs[0].children(recursive=True)
        return {c.laddr.ip for p in procs for c in p.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port}

    def stop(self) -> int:
        """SIGTERM, as a service manager would: the command stops its server and every child."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        finally:
            self._err.close()


def _filled_store(tmp_path) -> tuple[str, dict[str, float]]:
    """A SQLite store with two finished zsclust runs, made with the tracker the pipeline uses."""
    uri = f"sqlite:///{tmp_path / 'ui.db'}"
    tracker = MLflowTracker(uri, experiment="zsclust-ui-test")
    tracker.set_experiment_description("Toy runs for the UI test.")
    amis = {"toy-net/toy/test/umap/kmeans": 0.8123, "toy-net/toy/test/umap/hdbscan": 0.4567}
    for name, ami in amis.items():
        rid = tracker.start_run(name, tags={"encoder": "toy-net", "dataset": "toy"})
        tracker.set_context_tags(rid)
        metrics = {"ami": ami, "ari": ami - 0.1, "n_clusters": 10, "noise_fraction": 0.0, "silhouette_umap50": 0.3}
        tracker.log_metrics(rid, metrics)
        tracker.describe_run(rid, "toy-net", "toy", "test", "umap", name.rsplit("/", 1)[1], metrics, n_samples=40)
        tracker.log_dataset(rid, "toy", "f1ng3rpr1nt", 40, context="test")
        tracker.end_run(rid)
    return uri, amis


def _headless(chromium: str, profile: Path) -> list[str]:
    cmd = [chromium, "--headless", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", f"--user-data-dir={profile}", "--window-size=1920,1000", "--virtual-time-budget=30000"]
    return cmd + (["--no-sandbox"] if os.geteuid() == 0 else [])  # Chromium's sandbox refuses root


def test_experiments_open_on_the_runs_table_with_the_score_columns(tmp_path):
    tracker = MLflowTracker(f"sqlite:///{tmp_path / 'm.db'}", experiment="e1")
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.zsclust"])
    assert view["selectedColumns"][1:] == [f"metrics.`{m}`" for m in
                                           ("ami", "ari", "n_clusters", "noise_fraction", "silhouette_umap50")]
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`ami`", False)
    tracker.set_default_view(["nmi"], order_by=None)
    view = json.loads(tracker.client.get_experiment(tracker.experiment_id).tags["mlflow.sharedViewState.zsclust"])
    assert view == {"selectedColumns": ["attributes.`Dataset`", "metrics.`nmi`"]}
    assert tracker.ui_link("http://h:1/") == (f"http://h:1/#/experiments/{tracker.experiment_id}/runs"
                                              "?workflowType=machine_learning&viewStateShareKey=zsclust")
    assert experiment_runs_url("http://h:1", None) == "http://h:1/#/experiments?workflowType=machine_learning"


def test_runs_carry_a_description_their_context_and_their_dataset(tmp_path):
    tracker = MLflowTracker(f"sqlite:///{tmp_path / 'm.db'}", experiment="e1")
    tracker.set_experiment_description("Encoders x datasets, **test** split")
    assert tracker.client.get_experiment(tracker.experiment_id).tags["mlflow.note.content"] == \
        "Encoders x datasets, **test** split"
    rid = tracker.start_run("r")
    tracker.describe_run(rid, "resnet50.tv_in1k", "cifar10", "test", "umap", "hdbscan",
                         {"ami": 0.61234, "ari": 0.5, "n_clusters": 241, "noise_fraction": 0.59},
                         n_samples=10000, fingerprint="abc123")
    tracker.set_context_tags(rid, source_name="zsclust sweep")
    tracker.log_dataset(rid, "cifar10", "abc123", 10000, context="test", profile={"num_classes": 10})
    run = tracker.client.get_run(rid)
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("**resnet50.tv_in1k** on **cifar10** (test split): umap → hdbscan")
    assert "| AMI | ARI | clusters | noise |" in note and "| 0.612 | 0.500 | 241 | 59.0% |" in note
    assert "10000 samples, embedding fingerprint `abc123`" in note
    assert run.data.tags["mlflow.source.name"] == "zsclust sweep"
    assert run.data.tags["mlflow.source.type"] == "LOCAL"
    assert run.data.tags["mlflow.user"]
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("cifar10", "abc123")
    assert json.loads(inp.dataset.profile) == {"num_rows": 10000, "num_classes": 10}
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "test"}


def test_system_metrics_are_logged_to_a_client_run(tmp_path):
    tracker = MLflowTracker(f"sqlite:///{tmp_path / 'm.db'}", experiment="e1")
    rid = tracker.start_run("r")
    with tracker.system_metrics(rid, interval=0.3) as monitor:
        assert monitor is not None, "psutil is missing: pip install 'zsclust[system-metrics]'"
        time.sleep(1.5)
    tracker.end_run(rid)
    keys = tracker.client.get_run(rid).data.metrics
    assert "system/cpu_utilization_percentage" in keys and "system/system_memory_usage_megabytes" in keys


def test_ui_names_a_missing_experiment(tmp_path):
    from zsclust.tracking._store import pick_experiment

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    MLflowTracker(uri, experiment="alpha")
    with pytest.raises(ConfigError, match="No MLflow experiment 'alpah'.*alpha"):
        pick_experiment(uri, "alpah")


@pytest.mark.slow
def test_ui_link_shows_the_zsclust_runs_with_their_ami_in_a_browser(tmp_path, chromium):
    uri, amis = _filled_store(tmp_path)
    port = free_port()
    ui = Served(["ui", "--uri", uri, "--port", str(port), "--no-browser"], "MLflow runs of experiment 'zsclust-ui-test': ",
                tmp_path / "ui.log")
    try:
        link = ui.link
        assert link.startswith(f"http://127.0.0.1:{port}/#/experiments/")
        assert link.endswith("/runs?workflowType=machine_learning&viewStateShareKey=zsclust")
        assert ui.listening(port) == {"127.0.0.1"}
        browser = _headless(chromium, tmp_path / "chrome")
        dom = ""
        for _ in range(3):  # the table renders after the app's API calls; give a slow machine another go
            out = subprocess.run([*browser, "--dump-dom", link], capture_output=True, text=True, timeout=180)
            dom = out.stdout
            if all(name in dom for name in amis) and all(str(a) in dom for a in amis.values()):
                break
        for name, ami in amis.items():
            assert name in dom, f"run {name} not in the runs table"
            assert str(ami) in dom, f"AMI {ami} not in the runs table"
        assert 'col-id="metrics.`ami`"' in dom  # the AMI column comes from the experiment's view, not a click
        shot = tmp_path / "mlflow_runs.png"
        subprocess.run([*browser, f"--screenshot={shot}", link], capture_output=True, timeout=180, check=True)
        from PIL import Image

        assert Image.open(shot).size == (1920, 1000)
        # on a tracking server, `zsclust ui` starts nothing: it prints the link on that server
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-m", "zsclust.cli", "ui", "--uri", f"http://127.0.0.1:{port}",
                              "--no-browser"], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"MLflow runs: {link}"
    finally:
        assert ui.stop() == 0
    with pytest.raises(OSError):  # the server went with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


def _study(tmp_path) -> str:
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="toy-study", storage=url, direction="maximize")
    study.optimize(lambda t: -(t.suggest_float("x", -2, 2) - 1) ** 2, n_trials=7)
    return url


@pytest.mark.slow
def test_dashboard_serves_the_study_on_loopback(tmp_path):
    url = _study(tmp_path)
    port = free_port()
    dash = Served(["dashboard", "--storage", url, "--study", "toy-study", "--port", str(port), "--no-browser"],
                  "Optuna dashboard: ", tmp_path / "dashboard.log")
    try:
        assert dash.link == f"http://127.0.0.1:{port}/dashboard/studies/1"
        studies = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30).read())
        (study,) = studies["study_summaries"]
        assert study["study_name"] == "toy-study"
        detail = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/1", timeout=30).read())
        assert len(detail["trials"]) == 7
        page = urllib.request.urlopen(dash.link, timeout=30).read().decode()
        assert "<html" in page.lower()
        assert dash.listening(port) == {"127.0.0.1"}  # loopback only
    finally:
        assert dash.stop() == 0


def test_dashboard_without_a_storage_says_what_to_do(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZSCLUST_MLRUNS": str(tmp_path / "none")}
    out = subprocess.run([sys.executable, "-m", "zsclust.cli", "dashboard", "--no-browser"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert "No Optuna storage at" in out.stderr and "zsclust tune" in out.stderr
    url = _study(tmp_path)
    out = subprocess.run([sys.executable, "-m", "zsclust.cli", "dashboard", "--storage", url, "--study", "toy-stdy",
                          "--no-browser"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "No study 'toy-stdy'" in out.stderr and "toy-study" in out.stderr
