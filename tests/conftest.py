"""Shared fixtures: data the tests make themselves, and isolation from the user's caches and stores."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


WORKER_BYTES = 4 << 30
"""Memory one xdist worker may need at its peak: its own (up to about 3 GiB) plus the processes its test starts."""


def pytest_xdist_auto_num_workers(config) -> int | None:
    """``-n auto`` (pyproject's addopts): one worker per usable CPU, as many as memory allows.

    Half the suite's time is spent waiting on processes it starts (servers, DDP ranks, CLI runs), so two
    workers on two cores take about 0.6 of the serial time. ``-n0`` runs in one process (``--pdb`` does
    too); ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still sets the number.
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    from zsclust.cluster._memory import available_memory

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    avail = available_memory()
    return max(1, min(cpus, cpus if avail is None else avail // WORKER_BYTES))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Never touch ~/.cache/zsclust or the repo's mlruns/ from a test."""
    monkeypatch.setenv("ZSCLUST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ZSCLUST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_image_folder(root: Path, classes=3, per_class=8, size=(72, 60), seed=0, grey_every=0) -> Path:
    """An image folder ``root/<class>/<i>.jpg`` whose classes differ in colour and texture."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.array([(c * 97) % 256, (c * 151 + 60) % 256, (c * 43 + 120) % 256], dtype=float)
        for i in range(per_class):
            noise = rng.normal(0, 25, size=(size[1], size[0], 3))
            arr = np.clip(base + noise, 0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
            if grey_every and i % grey_every == 0:
                img = img.convert("L")
            img.save(d / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images") / "toy", grey_every=5)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A checkpoint file for timm's tiny ``test_resnet``, as a user with no hub access would pass it."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "test_resnet.pth"
    torch.save(model.state_dict(), path)
    return path


def run_cli(*args, cwd=None, env=None, timeout=600, check=True) -> subprocess.CompletedProcess:
    """Run ``python -m zsclust ARGS`` in a fresh process (the way DDP needs it: Lightning relaunches it)."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "zsclust", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"zsclust {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on loopback (SQLite backend, proxied artifacts); yields its URI."""
    import time
    import urllib.request

    from zsclust.tracking._store import stop_process_group

    d = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(d / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
         "--artifacts-destination", (d / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, MLFLOW_TRACKING_URI="", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                stop_process_group(proc)
                raise RuntimeError(f"mlflow server did not start:\n{(d / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield uri
    stop_process_group(proc)
    log.close()


# -- PostgreSQL ---------------------------------------------------------------------------------------------

POSTGRES_MISSING = ("PostgreSQL server binaries not found: install Debian's postgresql package "
                    "(apt-get install -y postgresql) or set ZSCLUST_TEST_POSTGRES_URL")
POSTGRES_DATABASES = ("mlflow", "optuna")


def _postgres_bindir() -> Path | None:
    """The folder holding ``initdb``/``pg_ctl``: ``$ZSCLUST_TEST_POSTGRES_BINDIR`` (no fallback when set), else
    Debian's newest ``/usr/lib/postgresql/<version>/bin``, else ``pg_config --bindir``, else ``$PATH``."""
    import glob
    import shutil

    def ok(d) -> bool:
        return d is not None and all((Path(d) / b).is_file() for b in ("initdb", "pg_ctl", "postgres"))

    if os.environ.get("ZSCLUST_TEST_POSTGRES_BINDIR"):
        d = Path(os.environ["ZSCLUST_TEST_POSTGRES_BINDIR"])
        return d if ok(d) else None

    def version(d: str) -> tuple:
        return tuple(int(p) if p.isdigit() else 0 for p in Path(d).parent.name.split("."))

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    if shutil.which("pg_config"):  # libpq-dev ships pg_config without a server: check what it names
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    if shutil.which("pg_ctl"):
        candidates.append(str(Path(shutil.which("pg_ctl")).resolve().parent))
    return next((Path(d) for d in candidates if ok(d)), None)


def _create_databases(base_url: str, names=POSTGRES_DATABASES) -> None:
    """``CREATE DATABASE`` for each name that is missing, through the server's ``postgres`` database."""
    import psycopg2
    from sqlalchemy.engine import make_url

    u = make_url(base_url)
    conn = psycopg2.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                            dbname=u.database or "postgres", connect_timeout=10)
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server with the databases ``mlflow`` and ``optuna``; yields a base URL
    (``postgresql+psycopg2://postgres@127.0.0.1:PORT``) to which tests append ``/mlflow`` or ``/optuna``.

    ``$ZSCLUST_TEST_POSTGRES_URL`` (same form, e.g. a CI service container; a database in it is dropped from
    the URL; missing databases are created) is used instead, and left running. Otherwise a
    throwaway cluster is initdb'd from the installed server binaries (Debian's ``postgresql`` package),
    with trust authentication on 127.0.0.1 only, and stopped at the end of the session. Missing binaries
    fail the tests: they are never skipped.
    """
    external = os.environ.get("ZSCLUST_TEST_POSTGRES_URL")
    if external:
        from sqlalchemy.engine import URL, make_url

        u = make_url(external)  # without its database: the tests add theirs
        base = URL.create(u.drivername, u.username, u.password, u.host, u.port).render_as_string(hide_password=False)
        _create_databases(base)
        yield base
        return

    with local_postgres() as server:
        _create_databases(server.url)
        yield server.url


@dataclass
class LocalPostgres:
    """A throwaway PostgreSQL cluster: ``url`` for the superuser over TCP, ``socket``/``port`` for psql,
    ``bindir`` its binaries (psql among them)."""

    url: str
    port: int
    socket: Path
    bindir: Path


@contextmanager
def local_postgres(auth_host: str = "trust"):
    """initdb and start a PostgreSQL cluster on 127.0.0.1 from the installed binaries; stop it on exit.

    ``auth_host`` is the authentication of TCP connections (``trust``, or ``scram-sha-256`` to have
    passwords checked); the superuser ``postgres`` is trusted on the Unix socket. Missing binaries fail
    the test: it is never skipped.
    """
    import shutil
    import tempfile

    bindir = _postgres_bindir()
    if bindir is None:
        where = os.environ.get("ZSCLUST_TEST_POSTGRES_BINDIR") or "/usr/lib/postgresql/*/bin, pg_config --bindir, $PATH"
        pytest.fail(f"{POSTGRES_MISSING}\n(looked for initdb, pg_ctl and postgres in: {where})", pytrace=False)
    # The server refuses to run as root: run initdb/pg_ctl as the 'postgres' user the package creates.
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("Running as root, and there is no 'postgres' user to run the PostgreSQL server as: "
                        "install Debian's postgresql package (it creates the user) or run the tests as another "
                        "user.", pytrace=False)
        runuser = shutil.which("runuser") or shutil.which("setpriv")
        as_user = ([runuser, "-u", "postgres", "--"] if runuser and runuser.endswith("runuser") else
                   [runuser, f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--init-groups"])
    # Not under pytest's basetemp: its parents are private to root, and the server user must reach the folder.
    root = Path(tempfile.mkdtemp(prefix="zsclust-pg-"))
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    if as_user:
        for p in (root, sock):
            os.chown(p, owner.pw_uid, owner.pw_gid)

    def pg(*args, timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, str(bindir / args[0]), *map(str, args[1:])], capture_output=True,
                              text=True, timeout=timeout, cwd=root, env=dict(os.environ, LC_ALL="C", LANG="C"))

    def fail(what: str, proc: subprocess.CompletedProcess) -> None:
        server_log = log.read_text()[-3000:] if log.is_file() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL ({bindir}): {what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                    f"{server_log}", pytrace=False)

    user = "postgres"
    proc = pg("initdb", "-D", data, "-U", user, "--auth-local=trust", f"--auth-host={auth_host}", "--encoding=UTF8",
              "--locale=C", "--no-sync")
    if proc.returncode != 0:
        fail("initdb", proc)
    for _ in range(3):  # the free port may be taken between the probe and the bind: try another
        port = _free_port()
        opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=100")
        proc = pg("pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", opts, "start")
        if proc.returncode == 0:
            break
    else:
        fail("pg_ctl start", proc)
    try:
        yield LocalPostgres(f"postgresql+psycopg2://{user}@127.0.0.1:{port}", port, sock, bindir)
    finally:
        pg("pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(root, ignore_errors=True)


# -- SLURM --------------------------------------------------------------------------------------------------

SLURM_MISSING = ("SLURM or MUNGE not found: install Debian's packages (apt-get install -y slurmctld slurmd "
                 "slurm-client munge)")


@dataclass
class SlurmCluster:
    """A one-node SLURM cluster on loopback: ``env`` holds ``SLURM_CONF`` for sbatch/squeue/scancel."""

    root: Path
    conf: Path
    node: str
    cpus: int

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def command(self, *args, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {}), **self.env})

    def sbatch(self, script, *args, options=(), env: dict | None = None, cwd=None) -> str:
        """Submit ``script ARGS`` with sbatch ``options``; the job id (an array's: its base id)."""
        proc = subprocess.run(["sbatch", "--parsable", *map(str, options), str(script), *map(str, args)],
                              capture_output=True, text=True, timeout=60, cwd=cwd,
                              env={**os.environ, **(env or {}), **self.env})
        if proc.returncode != 0:
            raise AssertionError(f"sbatch {script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                                 f"{self.logs()}")
        return proc.stdout.strip().split(";")[0]

    def states(self, job: str) -> list[str]:
        """The states of ``job`` (one per array task) while SLURM still lists it; [] once it is gone."""
        proc = self.command("squeue", "-h", "-j", job, "-o", "%T", "--array")
        return proc.stdout.split() if proc.returncode == 0 else []

    def wait(self, job: str, timeout: float = 600, until=None) -> None:
        """Until ``job`` has left the queue (or ``until()`` is true); an AssertionError with the logs on timeout."""
        import time

        deadline = time.time() + timeout
        while time.time() < deadline:
            if until is not None and until():
                return
            if until is None and not self.states(job):
                return
            time.sleep(0.5)
        raise AssertionError(f"SLURM job {job} did not finish in {timeout} s: {self.states(job)}\n{self.logs()}")

    def cancel(self, job: str) -> None:
        self.command("scancel", job)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((self.root / "log").glob("*.log")))


@pytest.fixture(scope="session")
def slurm_cluster():
    """``slurmctld`` + ``slurmd`` (one node, this host, on 127.0.0.1) and a private ``munged``, as root.

    Everything lives in a temporary folder: slurm.conf (found through ``SLURM_CONF``, never /etc/slurm),
    the MUNGE key and socket, state, spool and logs. Containers often lack a writable cgroup tree, so
    processes are tracked through /proc (``proctrack/linuxproc``) and tasks are not confined
    (``task/none``); the node claims 4 CPUs whatever the machine has (``config_overrides``), enough for a
    2-task DDP job beside a 2-task array. The daemons run in the foreground as children of the test
    process and are stopped at the end of the session. Missing binaries, or not being root, fail the
    tests that use it: they are never skipped.
    """
    import shutil
    import socket
    import tempfile
    import time

    tools = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "munged")
    missing = [t for t in tools if shutil.which(t) is None and not Path("/usr/sbin", t).is_file()]
    if missing:
        pytest.fail(f"{SLURM_MISSING}; missing: {', '.join(missing)}", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("slurmd launches jobs as their user and must run as root: run the SLURM tests as root "
                    "(a CI container), or point them at a real cluster by hand.", pytrace=False)

    def exe(name: str) -> str:
        return shutil.which(name) or f"/usr/sbin/{name}"

    root = Path(tempfile.mkdtemp(prefix="zsclust-slurm-"))
    for d in ("state", "spool", "log", "munge-key", "munge-run"):
        (root / d).mkdir()
    os.chmod(root / "munge-key", 0o700)
    key = root / "munge-key" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    sock = root / "munge-run" / "munge.socket"
    node, cpus = socket.gethostname(), 4
    ctld_port, d_port = _free_port(), _free_port()
    # Lightning's SLURM environment derives a DDP job's MASTER_PORT from its job ID (15000 + the last 4 digits):
    # each xdist worker's cluster numbers its jobs from its own thousand, so two clusters' DDP jobs never share one.
    first_job = 1000 * (1 + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]) % 9)  # "gw<N>"
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=zsclusttest
FirstJobId={first_job}
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
ReturnToService=2
KillWait=5
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    logs = {name: open(root / "log" / f"{name}.out", "w") for name in ("munged", "slurmctld", "slurmd")}
    procs: list[subprocess.Popen] = []
    cluster = SlurmCluster(root, conf, node, cpus)

    def start(name: str, *args) -> None:
        procs.append(subprocess.Popen([exe(name), *map(str, args)], stdout=logs[name], stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True))

    def stop() -> None:
        for proc in reversed(procs):  # slurmd, slurmctld, munged
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for f in logs.values():
            f.close()
        shutil.rmtree(root, ignore_errors=True)

    try:
        start("munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
              f"--log-file={root / 'log' / 'munged.log'}", f"--pid-file={root / 'munged.pid'}",
              f"--seed-file={root / 'munge-run' / 'munged.seed'}")
        deadline = time.time() + 30
        while not sock.exists():
            if procs[0].poll() is not None or time.time() > deadline:
                raise RuntimeError(f"munged did not start:\n{(root / 'log' / 'munged.out').read_text()}")
            time.sleep(0.1)
        start("slurmctld", "-D", "-i")
        start("slurmd", "-D", "-N", node)
        deadline = time.time() + 60
        while True:
            state = cluster.command("sinfo", "-h", "-n", node, "-o", "%T").stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                break
            if any(p.poll() is not None for p in procs) or time.time() > deadline:
                raise RuntimeError(f"the SLURM node did not come up (state '{state}'):\n{cluster.logs()}\n"
                                   + "\n".join((root / "log" / f"{n}.out").read_text()[-2000:] for n in logs))
            time.sleep(0.3)
    except BaseException as e:
        stop()
        pytest.fail(f"SLURM test cluster: {e}", pytrace=False)
    try:
        yield cluster
    finally:
        stop()
