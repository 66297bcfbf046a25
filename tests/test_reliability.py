"""Reliability and security: stale results, leftovers, passwords, the team server's files, bad input.

Everything runs for real: PostgreSQL servers the suite starts (one with password authentication, set up
by docker/initdb/10-roles.sh exactly as the postgres image runs it), an MLflow server, zsclust commands in
their own processes where what matters is what a process shows (its output, its command line).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, _free_port, local_postgres, write_image_folder
from zsclust._secrets import redact, redact_config, redact_text, with_password_from
from zsclust.cli import main
from zsclust.errors import ConfigError

DOCKER = REPO / "docker"


# -- redaction --------------------------------------------------------------------------------------------


def test_redact_drops_passwords_and_keeps_working_urls():
    assert redact("postgresql://zs:pa%40ss@db:5432/optuna") == "postgresql://zs@db:5432/optuna"
    assert redact("postgresql+psycopg2://u:p@ss@h/db?sslmode=require") == "postgresql+psycopg2://u@h/db?sslmode=require"
    assert redact("https://user:tok@mlflow.example:443/x") == "https://user@mlflow.example:443/x"
    assert redact("s3://bucket/p?X-Amz-Signature=abc&part=1") == "s3://bucket/p?part=1"
    for same in ("sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "postgresql://u@h/db", "not a url", ""):
        assert redact(same) == same
    text = "cannot reach postgresql://u:hunter22@h/db (password 'hunter22' rejected)"
    assert "hunter22" not in redact_text(text, "postgresql://u:hunter22@h/db")
    cfg = {"study": {"storage": "postgresql://o:hunter22@h/optuna"}, "tracking": {"uri": None}, "n": [1, "x"]}
    assert redact_config(cfg) == {"study": {"storage": "postgresql://o@h/optuna"}, "tracking": {"uri": None},
                                  "n": [1, "x"]}
    assert with_password_from("postgresql://o@h/optuna", [None, "postgresql://o:pw@h/optuna"]) == \
        "postgresql://o:pw@h/optuna"
    assert with_password_from("postgresql://o@h/optuna", ["postgresql://o:pw@other/optuna"]) == "postgresql://o@h/optuna"


# -- the team server's files --------------------------------------------------------------------------------


def _compose_binary() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.fail("Neither docker-compose nor the docker compose plugin is installed: apt-get install docker-compose "
                "(.ci/run does) to validate docker/compose.yaml.", pytrace=False)


def test_compose_publishes_loopback_only_and_has_no_default_password():
    """The compose file as written: ports bound to ZSCLUST_BIND (127.0.0.1 by default), every password a
    required variable, the admin account unused by the services, no store URL on a command line."""
    spec = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = spec["services"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("${ZSCLUST_BIND:-127.0.0.1}:"), (name, port)
        for key, value in (svc.get("environment") or {}).items():
            if "PASSWORD" in key and value is not None:
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), (name, key, value)
            if isinstance(value, str) and "@" in value.split("://", 1)[-1]:  # a URL with credentials
                assert "${" in value.split("@")[0], (name, key, value)  # its password is a variable too
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:")
    command = services["mlflow"]["command"]
    assert "--backend-store-uri" not in command and "*" not in command and "--allowed-hosts" not in command
    text = (DOCKER / "compose.yaml").read_text()
    assert "zsclust:zsclust" not in text and "0.0.0.0:" not in text

    compose = _compose_binary()
    bare = {k: v for k, v in os.environ.items() if not k.endswith("PASSWORD")}
    proc = subprocess.run([*compose, "-f", "compose.yaml", "config"], cwd=DOCKER, capture_output=True, text=True,
                          env=bare, timeout=120)
    assert proc.returncode != 0 and "POSTGRES_PASSWORD" in proc.stderr, proc.stderr  # no default password
    pw = {"POSTGRES_PASSWORD": "adm1n" + secrets.token_hex(4), "MLFLOW_DB_PASSWORD": "mlf" + secrets.token_hex(4),
          "OPTUNA_DB_PASSWORD": "opt" + secrets.token_hex(4), "MLFLOW_ADMIN_PASSWORD": "ui" + secrets.token_hex(8),
          "MLFLOW_SECRET_KEY": secrets.token_hex(16)}
    for files in (["-f", "compose.yaml"], ["-f", "compose.yaml", "-f", "compose.auth.yaml"]):
        proc = subprocess.run([*compose, *files, "config"], cwd=DOCKER, capture_output=True, text=True,
                              env={**bare, **pw}, timeout=120)
        assert proc.returncode == 0, proc.stderr
        rendered = yaml.safe_load(proc.stdout)["services"]
        published = [p for svc in rendered.values() for p in svc.get("ports", [])]
        assert published and all(str(p.get("host_ip", p) if isinstance(p, dict) else p).startswith("127.0.0.1")
                                 for p in published), published
        mlflow = rendered["mlflow"]
        assert pw["MLFLOW_DB_PASSWORD"] in mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
        assert not any(v in " ".join(mlflow["command"]) for v in pw.values())
    assert "basic-auth" in mlflow["command"] and mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == \
        pw["MLFLOW_ADMIN_PASSWORD"]


def test_compose_auth_puts_a_login_in_front_of_mlflow(tmp_path):
    """MLflow's basic-auth app started as docker/compose.auth.yaml starts it (its command, its environment, the
    shipped mlflow_auth.ini): requests without a login get 401, zsclust says which variables to set, and with
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD it writes runs."""
    import urllib.error
    import urllib.request

    from zsclust.tracking import MLflowTracker
    from zsclust.tracking._store import stop_process_group

    service = yaml.safe_load((DOCKER / "compose.auth.yaml").read_text())["services"]["mlflow"]
    ini = tmp_path / "basic_auth.ini"  # the shipped file; only its database moves from the volume to tmp_path
    ini.write_text((DOCKER / "mlflow_auth.ini").read_text().replace("sqlite:////auth/", f"sqlite:///{tmp_path}/"))
    secret = {"MLFLOW_ADMIN_PASSWORD": "Adm-" + secrets.token_hex(8), "MLFLOW_SECRET_KEY": secrets.token_hex(16)}
    env = {}
    for key, value in service["environment"].items():
        m = re.fullmatch(r"\$\{([A-Z_]+):\?[^}]*\}", str(value))
        env[key] = secret[m.group(1)] if m else str(value)
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
    port = _free_port()
    command = service["command"]
    command = command[:command.index("--host")]  # compose's 0.0.0.0:5000 in the container; loopback here
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", *command, "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                            env={**os.environ, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    server = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(server + "/health", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "no answer"
                time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(server + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        with pytest.raises(ConfigError, match="MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
            MLflowTracker(server, "guarded")
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=secret["MLFLOW_ADMIN_PASSWORD"])
        try:
            tracker = MLflowTracker(server, "guarded")
            tracker.end_run(tracker.start_run("behind a login"))
            [run] = tracker.client.search_runs([tracker.experiment_id])
            assert run.info.status == "FINISHED"
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    finally:
        stop_process_group(proc)
        proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def team_postgres():
    """A PostgreSQL server that checks passwords on TCP (scram-sha-256), set up by docker/initdb/10-roles.sh
    as the postgres image runs it on a new volume: roles and databases ``mlflow`` and ``optuna``."""
    with local_postgres(auth_host="scram-sha-256") as server:
        pw = {"mlflow": "Mlf-" + secrets.token_hex(8), "optuna": "Opt-" + secrets.token_hex(8)}
        env = {**os.environ, "PATH": f"{server.bindir}:{os.environ['PATH']}", "PGHOST": str(server.socket),
               "PGPORT": str(server.port), "POSTGRES_USER": "postgres", "MLFLOW_DB_PASSWORD": pw["mlflow"],
               "OPTUNA_DB_PASSWORD": pw["optuna"]}
        proc = subprocess.run(["sh", str(DOCKER / "initdb" / "10-roles.sh")], capture_output=True, text=True,
                              env=env, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield {"port": server.port, "password": pw,
               **{f"{db}_url": f"postgresql://{db}:{pw[db]}@127.0.0.1:{server.port}/{db}" for db in pw}}


def test_initdb_roles_have_their_passwords_and_their_database_only(team_postgres):
    """The URLs exactly as the docs write them (postgresql://, which SQLAlchemy 2.1 reads as psycopg 3)."""
    import sqlalchemy

    def connect(url: str):
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as conn:
                return conn.execute(sqlalchemy.text("select current_user, current_database()")).one()
        finally:
            engine.dispose()

    port = team_postgres["port"]
    assert tuple(connect(team_postgres["optuna_url"])) == ("optuna", "optuna")
    assert tuple(connect(team_postgres["mlflow_url"])) == ("mlflow", "mlflow")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
        connect(f"postgresql://optuna:wrong@127.0.0.1:{port}/optuna")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="permission denied for database"):
        connect(f"postgresql://optuna:{team_postgres['password']['optuna']}@127.0.0.1:{port}/mlflow")


# -- passwords never shown ------------------------------------------------------------------------------------


def _digits(path: Path, n: int = 400, offset: int = 0) -> Path:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    np.savez(path, embeddings=X[offset:offset + n].astype(np.float32), labels=y[offset:offset + n],
             fingerprint=np.asarray(f"digits-{offset}-{n}"))
    return path


def _everything_recorded(client: MlflowClient, experiment: str, dl: Path) -> str:
    """Every param, tag, metric name and artifact's text of every run in the experiment, as one string."""
    exp = client.get_experiment_by_name(experiment)
    parts = [repr(exp.tags)]
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        parts += [repr(run.data.params), repr(run.data.tags), repr(sorted(run.data.metrics)), run.info.artifact_uri]
        where = Path(client.download_artifacts(run.info.run_id, "", str(dl / run.info.run_id)))
        parts += [p.read_bytes().decode("utf-8", "replace") for p in where.rglob("*") if p.is_file()]
    return "\n".join(parts)


def _cli(monkeypatch, capfd, *args) -> str:
    """``zsclust ARGS`` in this process, with the command line a shell would give it; its output (stdout and
    stderr, from every logger and library at the file-descriptor level)."""
    monkeypatch.setattr(sys, "argv", ["zsclust", *map(str, args)])
    code = main(list(map(str, args)))
    out, err = capfd.readouterr()
    assert code == 0, out + err
    return out + err


def test_no_password_in_outputs_artifacts_tags_or_study_attrs(team_postgres, tmp_path, monkeypatch, capfd):
    """``zsclust tune`` with both URLs as documented (password in the URL), then ``zsclust evaluate`` with a
    password-free storage URL (the password from a PGPASSFILE) and ``zsclust report``: the passwords are in
    no output, no MLflow param, tag or artifact, and no Optuna user attribute; evaluate still connects."""
    import optuna

    pw = team_postgres["password"]
    name = f"leak-{uuid.uuid4().hex[:8]}"
    npz, test_npz = _digits(tmp_path / "val.npz"), _digits(tmp_path / "test.npz", 300, 1000)
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump({
        "datasets": {},
        "space": {"reducer": "none", "clusterer": {"name": "kmeans", "n_clusters": {"low": 5, "high": 15}}},
        "study": {"name": name, "n_trials": 3, "pruner": "none"},
        "tracking": {"enabled": True, "uri": team_postgres["mlflow_url"], "experiment": name},
        "evaluate": {"experiment": name},
        "evaluation": {"silhouette_spaces": ["raw"]},
        "reduction_cache": str(tmp_path / "reductions"),
    }))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZSCLUST_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_postgres["mlflow_url"])
    outputs = [_cli(monkeypatch, capfd, "tune", cfg, f"study.storage={team_postgres['optuna_url']}",
                    "--embeddings", f"digits={npz}", "--no-progress")]
    assert "3 complete" in outputs[-1]
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{team_postgres['port']}:optuna:optuna:{pw['optuna']}\n")  # optuna's only
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    storage = redact(team_postgres["optuna_url"])
    assert pw["optuna"] not in storage
    outputs.append(_cli(monkeypatch, capfd, "evaluate", "--study", name, "--storage", storage,
                        "--embeddings", f"digits={test_npz}", "--no-progress"))
    assert "best params on the test split of digits" in outputs[-1]
    outputs.append(_cli(monkeypatch, capfd, "report", "--experiment", name, "--tuned-experiment", "no-such-experiment",
                        "--split", "test", "--out", tmp_path / "report"))
    missing = (tmp_path / "report" / "missing.md").read_text()
    assert "no-such-experiment" in missing and "127.0.0.1" in missing

    client = MlflowClient(team_postgres["mlflow_url"])
    recorded = _everything_recorded(client, name, tmp_path / "dl")
    roles = {r.data.tags.get("zsclust.role") for r in client.search_runs(
        [client.get_experiment_by_name(name).experiment_id], max_results=100)}
    assert {"study", "trial", "evaluate", "report"} <= roles  # every kind of run was searched
    study = optuna.load_study(study_name=name, storage=team_postgres["optuna_url"])
    attrs = repr(study.user_attrs) + repr([t.user_attrs for t in study.trials])
    assert study.user_attrs["zsclust.config"]["study"]["storage"] == storage  # usable, without the password
    assert study.user_attrs["zsclust.config"]["tracking"]["uri"] == redact(team_postgres["mlflow_url"])
    everything = "\n".join(outputs) + recorded + attrs + missing
    for secret in pw.values():
        assert secret not in everything
    assert "study.storage=postgresql://optuna@127.0.0.1" in recorded  # the command-line tag, redacted


def test_zsclust_ui_gives_mlflow_server_the_store_through_the_environment(team_postgres, tmp_path, monkeypatch):
    """No process on the machine has the database password on its command line while ``zsclust ui`` serves."""
    import urllib.request

    from zsclust.tracking import MLflowTracker

    uri = team_postgres["mlflow_url"]
    env = dict(os.environ, PYTHONPATH=str(REPO), ZSCLUST_ARTIFACT_ROOT=str(tmp_path / "artifacts"))
    monkeypatch.setenv("ZSCLUST_ARTIFACT_ROOT", env["ZSCLUST_ARTIFACT_ROOT"])
    MLflowTracker(uri, experiment="ui-secret")
    port = _free_port()
    # the URI from the environment, as a team would set it (an --uri argument would itself be on a command line)
    proc = subprocess.Popen([sys.executable, "-m", "zsclust", "ui", "--port", str(port), "--no-browser"],
                            env={**env, "MLFLOW_TRACKING_URI": uri}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "no answer"
                time.sleep(0.5)
        leaks = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if team_postgres["password"]["mlflow"] in argv:
                leaks.append(argv)
        assert not leaks, leaks
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                                     data=b'{"max_results": 10}', headers={"Content-Type": "application/json"})
        assert b"ui-secret" in urllib.request.urlopen(req, timeout=10).read()  # it serves the PostgreSQL store
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert team_postgres["password"]["mlflow"] not in out and "127.0.0.1" in out


def test_documented_postgresql_urls_work_for_run_and_tune(team_postgres, tmp_path, image_folder, monkeypatch, capfd):
    """``MLFLOW_TRACKING_URI=postgresql://...`` for ``zsclust run`` and ``study.storage=postgresql://...`` for
    ``zsclust tune``, as the README writes them: plain postgresql:// is psycopg 3 under SQLAlchemy 2.1."""
    import optuna

    name = f"docs-{uuid.uuid4().hex[:8]}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZSCLUST_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_postgres["mlflow_url"])
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "encoder": {"name": "raw_pixels"}, "data": {"name": str(image_folder)}, "reducer": "none",
        "clusterer": "kmeans", "embed": {"progress": False}, "evaluation": {"silhouette_spaces": ["raw"]},
        "tracking": {"experiment": name, "plots": False}, "reduction_cache": str(tmp_path / "red")}))
    out = _cli(monkeypatch, capfd, "run", config)
    assert "MLflow: 1 run(s)" in out and team_postgres["password"]["mlflow"] not in out
    client = MlflowClient(team_postgres["mlflow_url"])
    [r] = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert r.info.status == "FINISHED" and "ami" in r.data.metrics
    npz = _digits(tmp_path / "val.npz", 300)
    out = _cli(monkeypatch, capfd, "tune", f"study.storage={team_postgres['optuna_url']}", f"study.name={name}",
               "study.n_trials=2", "space.reducer=none", "space.clusterer=kmeans", "tracking.enabled=false",
               "evaluation.silhouette_spaces=[raw]", f"reduction_cache={tmp_path / 'red'}",
               "--embeddings", f"digits={npz}", "--no-progress")
    assert "2 complete" in out, out
    assert len(optuna.load_study(study_name=name, storage=team_postgres["optuna_url"]).trials) == 2


# -- bad input: one line ----------------------------------------------------------------------------------------


def test_bad_tracking_uris_are_one_clear_line(tmp_path, capsys, monkeypatch):
    """An unknown scheme and a driver that is not installed: a ConfigError naming the URI (no password) and the fix."""
    npz = _digits(tmp_path / "d.npz", 200)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://x")
    assert main(["cluster", "--embeddings", str(npz), "clusterer=kmeans", "reducer=none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MLflow tracking URI 'foo://x' has a scheme MLflow does not support" in err, err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql+pg8000://u:s3cr3t-pw@127.0.0.1:1/db")
    assert main(["cluster", "--embeddings", str(npz), "clusterer=kmeans", "reducer=none"]) == 2
    err = capsys.readouterr().err
    assert "needs the Python module 'pg8000'" in err and "postgresql+pg8000://u@127.0.0.1:1/db" in err, err
    assert "s3cr3t-pw" not in err and err.count("\n") == 1
    assert main(["report", "--uri", "foo://y", "--experiment", "x"]) == 2
    assert "has a scheme MLflow does not support" in capsys.readouterr().err


def test_report_refuses_a_metric_or_split_the_runs_do_not_have(tmp_path, capsys):
    """``--metric amii`` / ``--split tets``: a did-you-mean error, and no empty report written or logged."""
    npz = _digits(tmp_path / "d.npz", 200)
    assert main(["cluster", "--embeddings", str(npz), "clusterer=kmeans", "reducer=none",
                 "tracking.experiment=rep", "evaluation.silhouette_spaces=[raw]", "tracking.plots=false"]) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    # the .npz says nothing of its split: its runs are recorded under 'unknown'; a wrong split names what exists
    assert main(["report", "--experiment", "rep", "--metric", "amii", "--split", "tets", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No finished clustering run has split 'tets'" in err and "The runs have: unknown" in err, err
    assert main(["report", "--experiment", "rep", "--metric", "amii", "--split", "unknown", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "metric 'amii'" in err and "Did you mean: ami" in err and err.count("\n") == 1, err
    assert not out.exists()
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("rep").experiment_id])
    assert not [r for r in runs if r.data.tags.get("zsclust.role") == "report"]
    assert main(["report", "--experiment", "rep", "--split", "unknown", "--out", str(out)]) == 0
    assert (out / "report.md").is_file()


def test_ranks_need_a_real_multi_process_world(monkeypatch):
    """A rank variable alone is not a DDP helper; SLURM tasks that do not embed together are refused."""
    from zsclust._ranks import configured_world, is_global_zero

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID",
                "SLURM_STEP_NUM_TASKS", "SLURM_NPROCS", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NODE_RANK", "1")  # left in a shell by a torchrun script: not a rank of this process
    assert is_global_zero()
    monkeypatch.setenv("SLURM_PROCID", "2")  # the batch script itself: not a task of a step
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert is_global_zero(configured_world(1, 1))
    monkeypatch.setenv("SLURM_STEP_ID", "0")  # task 2 of `srun -n 4`
    with pytest.raises(ConfigError, match="SLURM started 4 tasks"):
        is_global_zero(configured_world(1, 1))
    assert not is_global_zero(configured_world(2, 2))  # a DDP launch over the 4 tasks: a helper
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert is_global_zero(configured_world(2, 2))
    monkeypatch.setenv("WORLD_SIZE", "2")  # Lightning's launched process of devices=2 (no RANK)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "0")
    assert not is_global_zero(configured_world(2, 1))
    assert configured_world("auto", 1) is None and configured_world(4, 2) == 8


def test_shard_auto_comes_from_the_slurm_array(monkeypatch):
    from zsclust.sweep import resolve_shard

    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_shard("1/4") == "1/4" and resolve_shard(None) is None
    with pytest.raises(ConfigError, match="not an array task"):
        resolve_shard("auto")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    for task, low, step, want in (("3", "0", "1", "3/4"), ("4", "1", "1", "3/4"), ("6", "0", "2", "3/4")):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", low)
        monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", step)
        assert resolve_shard("auto") == want
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")  # --array=0,3,5,9: not evenly spaced
    with pytest.raises(ConfigError, match="evenly spaced"):
        resolve_shard("auto")


# -- stale results and leftovers -----------------------------------------------------------------------------


def _folder_sweep(tmp: Path, folder: Path, clusterers: str) -> Path:
    path = tmp / "sweep.yaml"
    path.write_text(f"""
encoders: [raw_pixels]
datasets: [{folder}]
embed: {{accelerator: cpu, precision: 32-true, num_workers: 0, progress: false, cache_dir: {tmp / 'cache'}}}
reducer: none
clusterer: {clusterers}
evaluation: {{silhouette_spaces: [raw]}}
reduction_cache: {tmp / 'reductions'}
tracking: {{experiment: stale, uri: "sqlite:///{tmp / 'mlflow.db'}", plots: false}}
sweep: {{name: stale, workers: 0}}
""")
    return path


def test_job_keys_follow_the_image_folders_content(tmp_path):
    """Images replaced in a folder (same names) give new job keys: the sweep runs them again instead of
    skipping them as finished; a registered dataset's keys do not depend on any folder."""
    from PIL import Image

    from zsclust.sweep import expand_cells, load_sweep_config, plan_cells

    folder = write_image_folder(tmp_path / "toy", classes=2, per_class=4)
    config = _folder_sweep(tmp_path, folder, "[kmeans, ac_k]")

    def keys():
        return [j.key for p in plan_cells(expand_cells(load_sweep_config(config)), {}) for j in p.pending]

    before = keys()
    assert keys() == before  # stable while nothing changes
    target = folder / "class_0" / "000.jpg"
    Image.new("RGB", (72, 60), (255, 0, 0)).save(target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    after = keys()
    assert len(after) == 2 and not set(after) & set(before)

    from zsclust._build import run_identity
    from zsclust.config import load_config

    registered = run_identity(load_config(None, ["data.name=digits", "encoder.name=raw_pixels"]))
    assert "data.content" not in registered


def test_sweep_says_which_finished_jobs_ran_on_other_embeddings(tmp_path, capsys):
    """A finished job whose run recorded other embeddings than the cell has now (another hub revision of the
    encoder's weights, say: the key cannot tell) is skipped, and the sweep says so with both fingerprints."""
    folder = write_image_folder(tmp_path / "toy", classes=2, per_class=4)
    config = _folder_sweep(tmp_path, folder, "[kmeans]")
    assert main(["sweep", str(config), "--no-progress"]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("stale").experiment_id])
    current = run.data.tags["embedding.fingerprint"]
    client.set_tag(run.info.run_id, "embedding.fingerprint", "0ld0ld0ld0ld")  # as a run on other embeddings has it
    capsys.readouterr()
    _folder_sweep(tmp_path, folder, "[kmeans, ac_k]")
    assert main(["sweep", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 jobs: 1 ran, 1 skipped" in out
    assert (f"warning: 1 finished job(s) of raw_pixels/toy:test ran on other embeddings (0ld0ld0ld0ld) than the "
            f"cell has now ({current}): kmeans.") in out, out


def test_runs_left_running_by_dead_processes_are_closed(tmp_path, capsys):
    """Every run names its process; ``zsclust cluster`` / ``tune`` (like run and sweep) start by marking KILLED
    the RUNNING runs whose process on this host is gone, and leave live processes' and other hosts' runs alone."""
    uri = os.environ["MLFLOW_TRACKING_URI"]
    opener = ("import sys; from zsclust.tracking import MLflowTracker; t = MLflowTracker(sys.argv[1], sys.argv[2]); "
              "print(t.start_run('left open'), flush=True)")
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def dead_run(experiment: str) -> str:
        proc = subprocess.run([sys.executable, "-c", opener, uri, experiment], capture_output=True, text=True,
                              env=env, timeout=120, check=True)
        return proc.stdout.split()[-1]

    live = subprocess.Popen([sys.executable, "-c", opener + "; sys.stdin.read()", uri, "orphans"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live_id = live.stdout.readline().split()[-1]
        dead_id = dead_run("orphans")
        from zsclust.tracking import MLflowTracker

        other = MLflowTracker(uri, "orphans")
        elsewhere = other.start_run("other host", tags={"zsclust.host": "another-machine", "zsclust.pid": "1"})
        npz = _digits(tmp_path / "d.npz", 200)
        assert main(["cluster", "--embeddings", str(npz), "clusterer=kmeans", "reducer=none",
                     "tracking.experiment=orphans", "evaluation.silhouette_spaces=[raw]", "tracking.plots=false"]) == 0
        assert "Marked 1 MLflow run(s) KILLED in experiment 'orphans'" in capsys.readouterr().out
        client = MlflowClient(uri)
        status = {rid: client.get_run(rid).info.status for rid in (dead_id, live_id, elsewhere)}
        assert status == {dead_id: "KILLED", live_id: "RUNNING", elsewhere: "RUNNING"}

        tune_dead = dead_run("orphans-tune")
        assert main(["tune", "space.reducer=none", "space.clusterer=kmeans", "study.n_trials=1", "study.name=o",
                     f"study.storage=sqlite:///{tmp_path / 'optuna.db'}", "tracking.experiment=orphans-tune",
                     "evaluation.silhouette_spaces=[raw]", f"reduction_cache={tmp_path / 'red'}",
                     "--embeddings", f"digits={npz}", "--no-progress"]) == 0
        assert client.get_run(tune_dead).info.status == "KILLED"
    finally:
        live.stdin.close()
        live.wait(timeout=60)


def test_report_figures_are_replaced_atomically(tmp_path):
    """A report killed while it writes a figure leaves the previous figure whole (or the new one), never half."""
    from PIL import Image

    from zsclust.report._figures import plot_heatmap

    target = tmp_path / "ami_heatmap_kmeans.png"
    plot_heatmap(np.full((2, 2), 0.5), ["a", "b"], ["x", "y"], target, "before")
    original = target.read_bytes()
    n = 60  # a figure large enough that writing it takes a while
    script = ("import sys, numpy as np; from zsclust.report._figures import plot_heatmap; n = int(sys.argv[2]); "
              "m = np.random.default_rng(0).random((n, n)); names = [f'name {i}' for i in range(n)]; "
              "plot_heatmap(m, names, names, sys.argv[1], 'after')")
    proc = subprocess.Popen([sys.executable, "-c", script, str(target), str(n)], env=dict(os.environ, PYTHONPATH=str(REPO)))
    caught = False
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            partial = target.stat().st_size != len(original) if target.exists() else True
            temp = any(p.stat().st_size > 0 for p in tmp_path.glob(f".{target.name}.*"))
            if partial or temp:  # the figure is being written, in place or beside
                os.kill(proc.pid, signal.SIGKILL)
                caught = True
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert caught, "the figure was written before the test could interrupt it"
    data = target.read_bytes()
    assert data == original or Image.open(target).verify() is None  # the old figure, or a whole new one


def test_in_process_jobs_never_run_during_an_embedding(tmp_path, tiny_weights, capsys):
    """sweep.workers=0 runs jobs in this process while the next cell embeds: scoring switches torch's global
    default dtype to float64, and images decoded meanwhile became float64 ("expected scalar type Double but
    found Float", every job of the next cell failed; first seen in the SLURM sweep test). Jobs now wait for
    the embedding, and the embedding for them. (Before the fix this failed in 2 of 3 runs here: it takes a
    scoring step and an image decode to coincide.)"""
    # cell a: six jobs that run while cell b (300 images, batches of 4) embeds
    folders = [write_image_folder(tmp_path / name, classes=3, per_class=k, seed=seed)
               for name, k, seed in (("a", 80, 1), ("b", 100, 2))]
    config = tmp_path / "sweep.yaml"
    config.write_text(f"""
encoders: [{{name: test_resnet, weights: {tiny_weights}}}]
datasets: [{folders[0]}, {folders[1]}]
embed: {{accelerator: cpu, precision: 32-true, num_workers: 0, batch_size: 4, progress: false, cache_dir: {tmp_path / 'cache'}}}
reducer: none
clusterer: [kmeans, ac_k, {{name: hdbscan, min_cluster_size: 3}}]
jobs:
  km2: {{clusterer: {{name: kmeans, n_clusters: 2}}}}
  km5: {{clusterer: {{name: kmeans, n_clusters: 5}}}}
  km8: {{clusterer: {{name: kmeans, n_clusters: 8}}}}
evaluation: {{silhouette_spaces: [raw]}}
tracking: {{experiment: overlap, uri: "sqlite:///{tmp_path / 'mlflow.db'}", plots: false}}
sweep: {{name: overlap, workers: 0}}
reduction_cache: {tmp_path / 'reductions'}
""")
    code = main(["sweep", str(config), "--no-progress"])
    out = capsys.readouterr().out
    assert "12 jobs: 12 ran, 0 skipped (finished before), 0 failed" in out and code == 0, out


# -- the command's process exit ---------------------------------------------------------------------------

_EXIT_SCRIPT = """
import atexit, sys, threading, time
from zsclust._exit import exit_process

class Torn:
    def __del__(self):  # runs in the interpreter's module teardown, which the fast exit skips
        sys.stdout.write(" teardown")
        sys.stdout.flush()

kept = Torn()
atexit.register(lambda: sys.stdout.write(" handler"))
sys.stdout.write("out")  # buffered: a pipe is not a terminal
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.5), sys.stdout.write(" thread-finished"))).start()
exit_process(int(sys.argv[2]))
"""


def _run_exit_script(tmp_path, mode, code, *prefix):
    script = tmp_path / "exit_script.py"
    script.write_text(_EXIT_SCRIPT)
    return subprocess.run([sys.executable, *prefix, str(script), mode, str(code)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)


def test_fast_exit_runs_exit_handlers_flushes_output_and_skips_teardown(tmp_path):
    out = _run_exit_script(tmp_path, "plain", 3)
    assert out.returncode == 3, out.stderr
    assert out.stdout == "out handler"  # flushed, handlers ran, module teardown (the __del__) skipped
    ok = _run_exit_script(tmp_path, "plain", 0)
    assert ok.returncode == 0 and ok.stdout == "out handler"


def test_exit_waits_for_running_threads_and_keeps_profilers_output(tmp_path):
    out = _run_exit_script(tmp_path, "thread", 4)
    assert out.returncode == 4, out.stderr
    assert "thread-finished" in out.stdout and "handler" in out.stdout  # the ordinary exit joined the thread
    prof = tmp_path / "exit.prof"
    profiled = _run_exit_script(tmp_path, "plain", 0, "-m", "cProfile", "-o", str(prof))
    assert profiled.returncode == 0, profiled.stderr
    assert prof.stat().st_size > 0  # cProfile writes after the script returns: no fast exit under a profiler


def test_zsclust_command_exits_with_its_code_and_full_output(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "zsclust", "embed", "--encoder", "resnet50.random", "--dataset",
                          str(tmp_path / "no-such-folder"), "--cache-dir", str(tmp_path / "c")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2
    assert "zsclust: error:" in bad.stderr and "no-such-folder" in bad.stderr
    listed = subprocess.run([sys.executable, "-m", "zsclust", "datasets"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "cifar10" in listed.stdout  # the whole table, to its last line, came through the pipe
    assert listed.stdout.rstrip().endswith("is accepted too.")
