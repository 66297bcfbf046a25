"""Runs whose process died: every run zsclust creates names its process, so a later command can close it.

A killed ``zsclust run``, ``tune`` or ``sweep`` leaves its MLflow runs RUNNING forever. Each run is
tagged with its host, its pid and (on Linux) the process's identity: the boot, the pid namespace and
the start time, so neither a reboot nor a reused pid nor a container sharing the host name is mistaken
for the process that made the run. At the start of every command, RUNNING runs made on this host by a
process that is gone are marked KILLED; runs of other hosts, or of namespaces this process cannot see
into, are left alone.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

HOST_TAG = "zsclust.host"
PID_TAG = "zsclust.pid"
PROCESS_TAG = "zsclust.process"  # "<boot id>/<pid namespace>/<start time in clock ticks>" (Linux)
# What ``zsclust sweep`` tagged before every command did: still closed.
LEGACY_TAGS = (("zsclust.sweep.host", "zsclust.sweep.pid"),)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None  # field 22: starttime


def _namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return None


def process_identity(pid: int | None = None) -> str | None:
    """This process's (or ``pid``'s, in this namespace) boot/namespace/start time; None off Linux."""
    pid = os.getpid() if pid is None else pid
    boot, ns, start = _read("/proc/sys/kernel/random/boot_id"), _namespace(), _start_time(pid)
    if not (boot and ns and start):
        return None
    return f"{boot}/{ns}/{start}"


def owner_tags() -> dict[str, str]:
    """The tags that name the process creating a run (taken at each run's creation: a fork is another process)."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    ident = process_identity()
    if ident:
        tags[PROCESS_TAG] = ident
    return tags


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def is_orphan(tags: dict) -> bool:
    """Whether the process that created a run with these tags is known to be gone."""
    host = socket.gethostname()
    for host_tag, pid_tag in ((HOST_TAG, PID_TAG), *LEGACY_TAGS):
        if tags.get(host_tag) != host or not str(tags.get(pid_tag, "")).isdigit():
            continue
        pid = int(tags[pid_tag])
        recorded = tags.get(PROCESS_TAG) if host_tag == HOST_TAG else None
        if recorded and recorded.count("/") == 2:
            boot, ns, start = recorded.split("/")
            here = process_identity()
            if here is None:
                return False
            my_boot, my_ns, _ = here.split("/")
            if boot != my_boot:
                return True  # the machine rebooted since
            if ns != my_ns:
                return False  # another container with this host name: its processes are not visible here
            return _start_time(pid) != start  # gone, or the pid now belongs to another process
        if pid == os.getpid():
            return False
        return not _pid_exists(pid)
    return False


def close_orphans(client, experiment_ids: list[str]) -> list[str]:
    """Mark KILLED every RUNNING run in ``experiment_ids`` whose process on this host is gone; their ids."""
    running, token = [], None
    while True:  # every page first: closing runs while paging would shift the pages
        page = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=5000,
                                  page_token=token)
        running += list(page)
        token = page.token
        if not token:
            break
    closed = []
    for run in running:
        if is_orphan(run.data.tags):
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed
