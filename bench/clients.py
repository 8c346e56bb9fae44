"""`make bench`'s clients: the service started on a models dir, and raw-socket HTTP clients timing /v1/predict one
at a time or many at once. Research tool, not for clinical use."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.floor import stats, timed
from bench.loadtest import RESULTS, ROOT


def start_server(models_dir: Path, port: int, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], float]:
    env = {**os.environ, "MRI_MODELS_DIR": str(models_dir), "PORT": str(port), "HOST": "127.0.0.1", **env_extra}
    log = open(RESULTS / "bench-server.log", "wb")  # noqa: SIM115 - lives as long as the server
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    while time.perf_counter() - t0 < 120:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the service was not ready within 120 s")


BOUNDARY = "mri-bench-boundary-7f3a9c"


MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart_body(image: bytes) -> bytes:
    """The image as the multipart field `file` of a body with Content-Type MULTIPART_TYPE."""
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="scan.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def predict_request(image: bytes) -> bytes:
    """A complete HTTP/1.1 keep-alive `POST /v1/predict` with the image as a multipart upload, as raw bytes.

    The bench's clients share the cores with the service, so they send pre-built requests over plain
    sockets (a few µs of client CPU per request) instead of a full HTTP client library (~2 ms per request
    with httpx, measured), which would otherwise be charged to the service's overhead and efficiency.
    """
    body = multipart_body(image)
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: {MULTIPART_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer off a keep-alive connection: (status, lower-cased headers, body)."""
    status = await reader.readline()
    if not status:
        raise ConnectionResetError("closed before an answer")
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status.split()[1]), headers, body


def check_response(status: int, body: bytes) -> None:
    """Raise unless the answer is a 200 with a prediction."""
    if status != 200 or b'"label"' not in body:
        raise RuntimeError(f"/v1/predict answered {status}: {body[:200]!r}")


def measure_service(url: str, images: list[bytes], n: int) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    requests = [predict_request(img) for img in images]
    with socket.create_connection((host, int(port)), timeout=60) as sock, sock.makefile("rb") as rfile:

        def once(i: int) -> None:
            sock.sendall(requests[i % len(requests)])
            status = rfile.readline()
            length = 0
            while (line := rfile.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            check_response(int(status.split()[1]), rfile.read(length))

        return timed(once, n)


async def measure_load(url: str, images: list[bytes], clients: int, total: int, max_seconds: float) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    requests = [predict_request(img) for img in images]
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + max_seconds
    streams = [await asyncio.open_connection(host, int(port)) for _ in range(clients)]

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors, sent
        while sent < total and time.perf_counter() < deadline:
            i = sent
            sent += 1
            t0 = time.perf_counter()
            try:
                writer.write(requests[i % len(requests)])
                status, _, body = await read_answer(reader)
                check_response(status, body)
            except (OSError, RuntimeError, ValueError, asyncio.IncompleteReadError):
                errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, int(port))  # a fresh connection
            latencies.append((time.perf_counter() - t0) * 1000)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in streams))
    wall = time.perf_counter() - start
    return {
        **stats(latencies),
        "clients": clients,
        "errors": errors,
        "seconds": round(wall, 2),
        "rps": len(latencies) / wall,
    }
