"""Shared fixtures: data the tests make themselves, and isolation from the user's caches and stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


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
