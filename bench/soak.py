"""Soak: a fixed request rate for a long time, to see whether the service stays flat. Every bucket (a minute by
default) records the server's resident memory, its open file descriptors and the p50/p99 of the answers; the run
fails on memory growth after warm-up, on descriptors that keep growing, on a p99 that drifts up, or on any answer
but 200.

    python -m bench.soak                           # 30 minutes near the knee on models/ (make soak)
    python -m bench.soak --minutes 2 --rate 20     # shorter
    python -m bench.soak --url http://host:8000 --pid 1234

The rate is open-loop (request i is due at i / rate seconds), so a slower service meets the same load rather than
a lighter one; at most --max-in-flight requests are outstanding. Without --rate it is KNEE_SHARE of the throughput
a short closed-loop burst of 16 clients measures first on the same machine: near the knee, with headroom. Writes
bench/results/soak-*.json and a plot. Research tool, not for clinical use.
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

import httpx
import numpy as np

from bench.clients import measure_load, predict_request, read_answer
from bench.loadtest import RESULTS, ROOT, mri_images, rss_mb, start_service

# the soak's rate as a share of the throughput 16 closed-loop clients reach: near the knee, with headroom, so that a
# flat service stays flat and a leak or a slowdown shows
KNEE_SHARE = 0.75
CALIBRATION_S = 15.0
WARM_BUCKETS = 2  # buckets before the memory baseline is taken
MAX_RSS_GROWTH = 0.05  # after warm-up
MAX_P99_DRIFT = 1.2  # p99 of the last 5 buckets against the first 5 after warm-up
MAX_FD_GROWTH = 8  # median of the last 5 buckets against the first 5 after warm-up
KEEP_ALIVE_S = 4.0  # reuse an idle connection only below the service's keep-alive timeout (5 s)
ANSWER_TIMEOUT_S = 30.0


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def throughput(url: str, seconds: float = CALIBRATION_S, clients: int = 16) -> float:
    """Requests per second that `clients` closed-loop clients get answered in `seconds`."""
    return float(asyncio.run(measure_load(url, mri_images(), clients, 10**9, seconds))["rps"])


async def run_soak(
    url: str, pid: int | None, seconds: float, rate: float, bucket_s: float = 60.0, max_in_flight: int = 64
) -> dict[str, Any]:
    """Send `rate` requests a second for `seconds`; per bucket, latency percentiles and the server's RSS and fds."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    requests = [predict_request(img) for img in mri_images()]
    buckets: list[dict[str, Any]] = []
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    slots = asyncio.Semaphore(max_in_flight)
    idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []  # keep-alive connections, last used

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while idle:
            used, reader, writer = idle.pop()
            if time.monotonic() - used < KEEP_ALIVE_S:
                return reader, writer
            writer.close()  # the server may be closing it: never send on one that has idled that long
        return await asyncio.open_connection(host, int(port))

    async def one(i: int) -> None:
        t = time.perf_counter()  # from when it was due: waiting for a free slot counts (open loop)
        async with slots:
            try:
                reader, writer = await connection()
                writer.write(requests[i % len(requests)])
                status, _, _ = await asyncio.wait_for(read_answer(reader), ANSWER_TIMEOUT_S)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                errors[type(e).__name__] += 1
                return
            statuses[str(status)] += 1
            latencies.append(time.perf_counter() - t)
            idle.append((time.monotonic(), reader, writer))

    def close_bucket(index: int, started: float) -> None:
        lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
        buckets.append(
            {
                "bucket": index,
                "t_s": round(time.monotonic() - started, 1),
                "answers": len(latencies),
                "p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 1),
                "rss_mb": None if pid is None else rss_mb(pid),
                "fds": None if pid is None else open_fds(pid),
            }
        )
        latencies.clear()
        b = buckets[-1]
        print(
            f"soak: bucket {index + 1}, {b['answers']} answers, p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms, "
            f"RSS {b['rss_mb']} MB, fds {b['fds']}",
            flush=True,
        )

    started = time.monotonic()
    tasks: set[asyncio.Task[None]] = set()
    i, bucket = 0, 0
    while True:
        now = time.monotonic() - started
        if now >= (bucket + 1) * bucket_s:
            close_bucket(bucket, started)
            bucket += 1
        if now >= seconds:
            break
        due = i / rate
        if due > now:
            await asyncio.sleep(min(due - now, 0.05))
            continue
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks)
    for _, _, writer in idle:
        writer.close()
    async with httpx.AsyncClient(timeout=30) as client:
        ready = (await client.get(url + "/health/ready")).status_code
    return {
        "seconds": seconds,
        "rate": rate,
        "bucket_s": bucket_s,
        "sent": i,
        "statuses": dict(statuses),
        "connection_errors": dict(errors),
        "ready_after": ready,
        "buckets": buckets,
    }


def verdict(result: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """(what failed, the figures it was judged on): growth of RSS and fds after warm-up, p99 drift, any non-200."""
    failed: list[str] = []
    b = result["buckets"]
    after = b[WARM_BUCKETS:] if len(b) > WARM_BUCKETS else b[-1:]
    figures: dict[str, Any] = {}
    if after and after[0]["rss_mb"] is not None:
        base = after[0]["rss_mb"]
        growth = (max(x["rss_mb"] for x in after) - base) / base
        figures["rss_mb_after_warmup"], figures["rss_mb_max"] = base, max(x["rss_mb"] for x in after)
        figures["rss_growth"] = round(growth, 4)
        if growth > MAX_RSS_GROWTH:
            failed.append(f"memory grew {growth:.1%} after warm-up (limit {MAX_RSS_GROWTH:.0%})")
    n = min(5, len(after) // 2)
    if n and after[0]["fds"] is not None:
        # medians, not single samples: the count swings with the connections open at the instant of the sample
        fd_growth = float(np.median([x["fds"] for x in after[-n:]]) - np.median([x["fds"] for x in after[:n]]))
        figures["fd_growth"] = fd_growth
        if fd_growth > MAX_FD_GROWTH:
            failed.append(f"open file descriptors grew by {fd_growth:g} (limit {MAX_FD_GROWTH})")
    if n:
        first = float(np.median([x["p99_ms"] for x in after[:n]]))
        last = float(np.median([x["p99_ms"] for x in after[-n:]]))
        figures["p99_first_ms"], figures["p99_last_ms"] = first, last
        figures["p99_drift"] = round(last / first, 3) if first else None
        if first and last > MAX_P99_DRIFT * first:
            failed.append(f"p99 drifted from {first:.0f} to {last:.0f} ms (limit ×{MAX_P99_DRIFT})")
    bad = {s: k for s, k in result["statuses"].items() if s != "200"}
    if bad or result["connection_errors"]:
        failed.append(f"answers other than 200: {bad}, connection errors: {result['connection_errors']}")
    if result["ready_after"] != 200:
        failed.append(f"/health/ready answered {result['ready_after']} afterwards")
    return failed, figures


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = result["buckets"]
    minutes = [x["t_s"] / 60 for x in b]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax1.plot(minutes, [x["p50_ms"] for x in b], label="p50")
    ax1.plot(minutes, [x["p99_ms"] for x in b], label="p99")
    ax1.set_xlabel("minutes")
    ax1.set_ylabel("latency (ms)")
    ax1.set_ylim(bottom=0)
    ax1.legend()
    ax1.set_title(f"latency at {result['rate']:g} req/s", fontsize=9)
    if b and b[0]["rss_mb"] is not None:
        ax2.plot(minutes, [x["rss_mb"] for x in b], color="tab:red", label="RSS (MB)")
        ax2.set_ylabel("resident memory (MB)", color="tab:red")
        ax3 = ax2.twinx()
        ax3.plot(minutes, [x["fds"] for x in b], color="tab:gray", label="open fds")
        ax3.set_ylabel("open file descriptors", color="tab:gray")
        ax2.axvline(minutes[min(WARM_BUCKETS, len(minutes) - 1)], color="k", lw=0.5, ls=":")
    ax2.set_xlabel("minutes")
    ax2.set_title("server memory and descriptors (dotted: end of warm-up)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="an already running service (default: start one on --models-dir)")
    ap.add_argument("--pid", type=int, help="the running service's pid, for its memory and descriptors")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument(
        "--rate", type=float, default=None, help=f"requests per second (default: {KNEE_SHARE:g} × a measured burst)"
    )
    ap.add_argument("--bucket-s", type=float, default=60.0, help="seconds per measurement bucket")
    ap.add_argument("--out", type=Path, default=None, help="JSON result (default bench/results/soak-*.json)")
    ap.add_argument("--plot", type=Path, default=None, help="also draw the curves (PNG)")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    proc, url, pid = None, args.url, args.pid
    if url is None:
        proc = start_service(args.models_dir, args.port)
        url, pid = f"http://127.0.0.1:{args.port}", proc.pid
    try:
        rate, knee = args.rate, None
        if rate is None:
            knee = throughput(url)
            rate = round(KNEE_SHARE * knee, 1)
            print(f"soak: 16 clients reached {knee:.1f} req/s; soaking at {KNEE_SHARE:g} of it", flush=True)
        print(f"soak: {rate:g} req/s for {args.minutes:g} min against {url} ...", flush=True)
        result = asyncio.run(run_soak(url, pid, args.minutes * 60, rate, args.bucket_s))
        result["knee_req_s"] = None if knee is None else round(knee, 1)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    failed, figures = verdict(result)
    result.update(figures=figures, failed=failed, passed=not failed)
    result["when"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result["machine"] = {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    out = args.out or RESULTS / f"soak-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, args.plot)
    print(f"soak: sent {result['sent']}, statuses {result['statuses']}, figures {figures}")
    print(f"{'PASS' if not failed else 'FAIL: ' + '; '.join(failed)}  ({out})")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
