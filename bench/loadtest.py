"""Sustained load on loopback: N concurrent clients, a fixed number of requests mixing valid and invalid
uploads, every status checked against what that upload must get. Reports p50/p99, resident memory of
the server from request `--warm` to the end, and exits 1 if any criterion fails.

    python -m bench.loadtest                      # starts `python -m service` on models/ itself
    python -m bench.loadtest --url http://host:8000 --pid 1234

Research tool, not for clinical use.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "mri"
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Case:
    """One kind of upload and the status it must get."""

    name: str
    expect: int
    weight: int
    files: dict[str, tuple[str, bytes, str]] | None = None
    content: bytes | None = None
    content_type: str | None = None


def mri_images() -> list[bytes]:
    paths = sorted(FIXTURES.glob("*/*/*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no MRI fixture images under {FIXTURES}")
    return [p.read_bytes() for p in paths]


def cases(images: list[bytes]) -> list[Case]:
    """The mix: about two thirds valid predictions, the rest the common mistakes (all 4xx)."""
    valid = [Case(f"mri-{i}", 200, 1, files={"file": (f"scan{i}.jpg", b, "image/jpeg")}) for i, b in enumerate(images)]
    raw = Case("mri-raw-body", 200, 3, content=images[0], content_type="image/jpeg")
    bad = [
        Case("empty-file", 422, 2, files={"file": ("empty.jpg", b"", "image/jpeg")}),
        Case("text-as-jpg", 415, 2, files={"file": ("notes.jpg", b"hello, not an image\n" * 20, "image/jpeg")}),
        Case("truncated-jpeg", 422, 2, files={"file": ("cut.jpg", images[0][: len(images[0]) // 3], "image/jpeg")}),
        Case("wrong-field", 422, 2, files={"image": ("scan.jpg", images[0], "image/jpeg")}),
        Case("gif", 415, 1, files={"file": ("a.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif")}),
    ]
    return [*valid, raw, *bad]


def schedule(mix: list[Case], n: int, seed: int = 0) -> list[Case]:
    weights = np.array([c.weight for c in mix], float)
    idx = np.random.default_rng(seed).choice(len(mix), size=n, p=weights / weights.sum())
    return [mix[i] for i in idx]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def run_load(
    url: str, clients: int, total: int, pid: int | None = None, warm: int = 500, timeout: float = 60.0
) -> dict[str, Any]:
    """Send `total` requests from `clients` concurrent connections; the memory baseline is taken when
    `warm` requests have completed."""
    plan = schedule(cases(mri_images()), total)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    unexpected: list[dict[str, Any]] = []
    errors: list[str] = []
    done = 0
    rss_warm: float | None = None
    rss_samples: list[tuple[int, float]] = []
    queue: asyncio.Queue[Case] = asyncio.Queue()
    for c in plan:
        queue.put_nowait(c)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done, rss_warm
        while True:
            try:
                case = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            try:
                if case.files is not None:
                    r = await client.post("/v1/predict", files=case.files)
                else:
                    r = await client.post(
                        "/v1/predict", content=case.content, headers={"Content-Type": str(case.content_type)}
                    )
            except httpx.HTTPError as e:
                errors.append(f"{case.name}: {type(e).__name__}: {e}")
                continue
            finally:
                done += 1
            latencies.append(time.perf_counter() - t0)
            statuses[str(r.status_code)] += 1
            if r.status_code != case.expect:
                unexpected.append(
                    {"case": case.name, "expected": case.expect, "got": r.status_code, "body": r.text[:200]}
                )
            if pid is not None and done % 100 == 0:
                mb = rss_mb(pid)
                if mb is not None:
                    rss_samples.append((done, mb))
                    if rss_warm is None and done >= warm:
                        rss_warm = mb

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        ready = (await client.get("/health/ready")).status_code
    wall = time.perf_counter() - start
    rss_end = rss_mb(pid) if pid is not None else None
    lat_ms = np.array(latencies) * 1000
    growth = (rss_end - rss_warm) / rss_warm if rss_end is not None and rss_warm else None
    return {
        "clients": clients,
        "requests": total,
        "seconds": round(wall, 2),
        "requests_per_second": round(total / wall, 2),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 1) if len(lat_ms) else None,
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 1) if len(lat_ms) else None,
        "statuses": dict(sorted(statuses.items())),
        "unexpected": len(unexpected),
        "unexpected_examples": unexpected[:5],
        "connection_errors": len(errors),
        "error_examples": errors[:5],
        "ready_after": ready,
        "rss_mb_at_warm": round(rss_warm, 1) if rss_warm else None,
        "rss_mb_end": round(rss_end, 1) if rss_end else None,
        "rss_growth": round(growth, 4) if growth is not None else None,
        "rss_samples": [(n, round(mb, 1)) for n, mb in rss_samples],
        "warm_at_request": warm,
    }


def verdict(result: dict[str, Any], max_growth: float = 0.10) -> list[str]:
    """The failed criteria (empty: pass)."""
    failed = []
    if result["unexpected"]:
        failed.append(f"{result['unexpected']} unexpected statuses")
    if result["connection_errors"]:
        failed.append(f"{result['connection_errors']} connection errors")
    if result["ready_after"] != 200:
        failed.append(f"/health/ready answered {result['ready_after']} after the load")
    if result["rss_growth"] is None:
        failed.append("resident memory not measured (no server pid)")
    elif result["rss_growth"] >= max_growth:
        failed.append(f"memory grew {result['rss_growth']:.1%} (limit {max_growth:.0%})")
    return failed


def start_service(models_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MRI_MODELS_DIR": str(models_dir), "PORT": str(port), "HOST": "127.0.0.1"}
    env.setdefault("MRI_LOG_FORMAT", "json")
    log = open(RESULTS / "loadtest-server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the service was not ready within 120 s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="an already running service (default: start one on --models-dir)")
    ap.add_argument("--pid", type=int, help="the running service's pid, to measure its memory")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warm", type=int, default=500, help="memory baseline after this many requests")
    ap.add_argument("--max-growth", type=float, default=0.10)
    ap.add_argument("--out", type=Path, default=None, help="JSON result (default bench/results/loadtest-*.json)")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    proc = None
    url, pid = args.url, args.pid
    if url is None:
        proc = start_service(args.models_dir, args.port)
        url, pid = f"http://127.0.0.1:{args.port}", proc.pid
    try:
        print(f"load: {args.requests} requests from {args.clients} clients against {url} ...", flush=True)
        result = asyncio.run(run_load(url, args.clients, args.requests, pid, args.warm))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    result["when"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result["machine"] = {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    failed = verdict(result, args.max_growth)
    result["passed"] = not failed
    out = args.out or RESULTS / f"loadtest-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"requests {result['requests']}  clients {result['clients']}  {result['requests_per_second']} req/s  "
        f"p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms"
    )
    print(
        f"statuses {result['statuses']}  unexpected {result['unexpected']}  "
        f"connection errors {result['connection_errors']}"
    )
    print(
        f"memory {result['rss_mb_at_warm']} MB at request {args.warm} → {result['rss_mb_end']} MB at the end "
        f"(growth {result['rss_growth']:.1%})"
        if result["rss_growth"] is not None
        else "memory: not measured"
    )
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"{'PASS' if not failed else 'FAIL: ' + '; '.join(failed)}  ({shown})")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
