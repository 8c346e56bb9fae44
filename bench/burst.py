"""Burst: many uploads at the same instant, then a readiness probe. The overload target of docs/operations.md:
every answer is a 200 or a 503 with Retry-After, no connection is reset or left hanging, refusals come within a
second, the accepted answers' p99 stays within a bound, and `/health/ready` answers promptly afterwards.

    python -m bench.burst                       # 1,000 uploads on models/ (make burst)
    python -m bench.burst --uploads 300 --url http://host:8000

Each upload has its own connection, opened and written at once over raw sockets (an HTTP library's per-request CPU
would be charged to a service sharing the cores). Writes bench/results/burst-*.json. Research tool, not for
clinical use.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.clients import predict_request, read_answer, start_server
from bench.loadtest import RESULTS, ROOT, mri_images

MAX_REFUSAL_S = 1.0
MAX_ACCEPTED_P99_S = 5.0
MAX_READY_S = 5.0  # /health/ready after the burst
ANSWER_TIMEOUT_S = 60.0  # an upload not answered within this counts as a hang


async def connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | str:
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port), ANSWER_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        return f"connect: {type(e).__name__}"


async def one_upload(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes) -> dict[str, Any]:
    """Send the whole upload on an open connection and read the answer: status, seconds, Retry-After."""
    reader, writer = stream
    t0 = time.perf_counter()
    try:
        writer.write(request)
        await writer.drain()
        status, headers, _ = await asyncio.wait_for(read_answer(reader), ANSWER_TIMEOUT_S)
        outcome: dict[str, Any] = {"outcome": str(status), "retry_after": headers.get("retry-after")}
    except TimeoutError:
        outcome = {"outcome": "hang"}
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
        outcome = {"outcome": f"error: {type(e).__name__}"}
    outcome["seconds"] = time.perf_counter() - t0
    writer.close()
    return outcome


async def probe_ready(host: str, port: int) -> float | None:
    """Seconds until GET /health/ready answers 200 on a fresh connection (None if not within ANSWER_TIMEOUT_S)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < ANSWER_TIMEOUT_S:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            writer.write(f"GET /health/ready HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            status, _, _ = await asyncio.wait_for(read_answer(reader), 5)
            writer.close()
            if status == 200:
                return time.perf_counter() - t0
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            pass
        await asyncio.sleep(0.1)
    return None


async def run_burst(url: str, uploads: int, images: list[bytes]) -> dict[str, Any]:
    host, port_s = url.removeprefix("http://").rstrip("/").split(":")
    port = int(port_s)
    requests = [predict_request(img) for img in images]
    streams = await asyncio.gather(*(connect(host, port) for _ in range(uploads)))  # all open before any is sent
    failed = [{"outcome": s, "seconds": None} for s in streams if isinstance(s, str)]
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(one_upload(s, requests[i % len(requests)]) for i, s in enumerate(streams) if not isinstance(s, str))
    )
    wall = time.perf_counter() - t0
    ready_s = await probe_ready(host, port)
    return summarise([*failed, *results], wall, ready_s)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def summarise(results: list[dict[str, Any]], wall: float, ready_s: float | None) -> dict[str, Any]:
    outcomes = Counter(r["outcome"] for r in results)
    ok = [r["seconds"] for r in results if r["outcome"] == "200"]
    refused = [r for r in results if r["outcome"] == "503"]
    refused_s = [r["seconds"] for r in refused]
    return {
        "uploads": len(results),
        "outcomes": dict(outcomes),
        "wall_s": round(wall, 2),
        "accepted": {"n": len(ok), "p50_s": _pct(ok, 50), "p99_s": _pct(ok, 99), "max_s": _pct(ok, 100)},
        "refused": {
            "n": len(refused),
            "p50_s": _pct(refused_s, 50),
            "max_s": _pct(refused_s, 100),
            "without_retry_after": sum(1 for r in refused if not r.get("retry_after")),
            "retry_after": sorted({r["retry_after"] for r in refused if r.get("retry_after")}),
        },
        "ready_after_s": None if ready_s is None else round(ready_s, 2),
    }


def verdict(summary: dict[str, Any]) -> list[str]:
    """The target's failures (empty when it holds)."""
    fails = []
    other = {k: v for k, v in summary["outcomes"].items() if k not in ("200", "503")}
    if other:
        fails.append(f"answers other than 200/503: {other}")
    if summary["refused"]["without_retry_after"]:
        fails.append(f"{summary['refused']['without_retry_after']} 503s without Retry-After")
    if summary["refused"]["n"] and summary["refused"]["max_s"] > MAX_REFUSAL_S:
        fails.append(f"slowest 503 {summary['refused']['max_s']} s > {MAX_REFUSAL_S} s")
    if summary["accepted"]["n"] and summary["accepted"]["p99_s"] > MAX_ACCEPTED_P99_S:
        fails.append(f"accepted p99 {summary['accepted']['p99_s']} s > {MAX_ACCEPTED_P99_S} s")
    if summary["ready_after_s"] is None or summary["ready_after_s"] > MAX_READY_S:
        fails.append(f"/health/ready after the burst: {summary['ready_after_s']} s (limit {MAX_READY_S} s)")
    return fails


def model_version(models_dir: Path) -> str | None:
    try:
        return str(json.loads((models_dir / "manifest.json").read_text())["model_version"])
    except (OSError, KeyError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uploads", type=int, default=1000)
    p.add_argument("--url", help="a running service (default: start one on --models)")
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--port", type=int, default=8093)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="server setting (repeatable)")
    p.add_argument("--out", type=Path, help="result JSON (default bench/results/burst-<time>.json)")
    args = p.parse_args(argv)
    proc = None
    url = args.url
    if url is None:
        extra = dict(kv.split("=", 1) for kv in args.env)
        proc, _ = start_server(args.models, args.port, extra)
        url = f"http://127.0.0.1:{args.port}"
    try:
        print(f"{args.uploads} simultaneous uploads against {url} …", flush=True)
        summary = asyncio.run(run_burst(url, args.uploads, mri_images()))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    fails = verdict(summary)
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "models": str(args.models) if args.url is None else None,
        "model_version": model_version(args.models) if args.url is None else None,
        "settings": args.env,
        **summary,
        "verdict": "PASS" if not fails else "FAIL",
        "failures": fails,
    }
    out = args.out or RESULTS / f"burst-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"{result['verdict']} → {out}")
    return 0 if not fails else 1


if __name__ == "__main__":
    raise SystemExit(main())
