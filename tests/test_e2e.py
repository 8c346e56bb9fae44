"""End to end: uvicorn in a subprocess on a free port, a real HTTP client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(models_dir: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {**os.environ, "MRI_MODELS_DIR": str(models_dir), "PORT": str(port), "HOST": "127.0.0.1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready in 60 s")


@pytest.fixture(scope="module")
def server(tiny_models: Path) -> Iterator[str]:
    proc, url = start_server(tiny_models)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_post_over_real_http(server: str, mri_jpeg: bytes) -> None:
    r = httpx.post(server + "/v1/predict", files={"file": ("scan.jpg", mri_jpeg, "image/jpeg")}, timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["label"] in body["probabilities"]
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
    r = httpx.post(server + "/v1/predict", content=mri_jpeg, headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert r.status_code == 200
    r = httpx.post(server + "/v1/predict", files={"file": ("x.jpg", b"no image", "image/jpeg")}, timeout=30)
    assert r.status_code == 415 and r.headers["content-type"].startswith("application/json")
    big = b"\xff\xd8\xff" + b"\0" * (11 * 1024 * 1024)
    r = httpx.post(server + "/v1/predict", content=big, headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert r.status_code == 413
    assert httpx.get(server + "/health/ready").status_code == 200
