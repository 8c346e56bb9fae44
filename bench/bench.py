"""`make bench`: the service against the compute floor, the original Keras approach and the hardware.

All figures are measured in one run on the same machine and reported as ratios (absolute times drift on
a shared machine):

1. floor      `session.run` of the merged graph on ready crops (the outputs the service uses), batch 1, and
              the crop of the same uploads (decode + crop + resize), each p50/p99
2. service    HTTP round trip through uvicorn to /v1/predict, one client   overhead = service / (models + crop)
3. keras      the same three models as Keras models, `model.predict` per request speedup = keras/service
4. load       16 concurrent clients, fixed request count                         efficiency = rps /
                                                                                 (cores × 1000 / 1-thread floor)
5. cold start to ready, resident memory after 1000 requests, service image size (if a Docker engine runs)
6. baseline   with --baseline: another ensemble (a models dir, or `git:<rev>` for the models/ of a commit) served
              the same way in the same run                                       vs_baseline = its p50/service p50

Judged (exit 1 when one fails, or when any request failed): the overhead, the service p50 against its budget and
the Keras speedup. Reported only: efficiency (depthwise nets on few cores do not reach a FLOP-derived peak, so it
is no verdict on the service) and vs_baseline (a heavier new ensemble is slower by design).

Writes bench/results/bench-<time>.json with a plot beside it and prints one line per figure. Research tool, not
for clinical use.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
from pathlib import Path
from typing import Any

import httpx

from bench.clients import measure_load, measure_service, start_server
from bench.floor import (
    baseline_dir,
    bench_images,
    cpu_model,
    image_size_mb,
    measure_crop,
    measure_floor,
    measure_keras,
    measure_sizes,
)
from bench.loadtest import RESULTS, ROOT, rss_mb
from service.config import Settings

# judged: a figure past its target fails the bench
TARGETS = {"overhead": ("≤", 1.2), "service_p50_ms": ("≤", 30.0), "speedup": ("≥", 5.0)}


REPORTED = ("efficiency", "vs_baseline")  # printed and stored, never a verdict


def plot(r: dict[str, Any], path: Path) -> None:
    """Latency per request (p50 with p99 whiskers) side by side, and throughput vs the hardware bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    both = {k: r["floor"][k] + r["crop"][k] for k in ("p50_ms", "p99_ms")}
    rows = [
        ("crop", r["crop"]),
        ("models", r["floor"]),
        ("models + crop", both),
        ("models, 1 thread", r["floor_1thread"]),
        ("service (HTTP)", r["service"]),
    ]
    if "keras" in r:
        rows.append(("Keras predict (original)", r["keras"]))
    if "baseline" in r:
        rows.append((f"baseline {r['baseline']['model_version']} (HTTP)", r["baseline"]["service"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [2, 1]})
    names = [n for n, _ in rows]
    p50 = [v["p50_ms"] for _, v in rows]
    p99 = [v["p99_ms"] for _, v in rows]
    ax1.barh(names, p50, xerr=[[0] * len(p50), [b - a for a, b in zip(p50, p99, strict=True)]], color="#4c72b0")
    for i, v in enumerate(p50):
        ax1.text(v, i, f" {v:.0f} ms", va="center", fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("ms per request, one client (bar p50, whisker p99)")
    ax2.bar(
        ["measured", "cores × 1-thread\nmodels + crop"],
        [r["load"]["rps"], r["hardware_bound_rps"]],
        color=["#55a868", "#c4c4c4"],
    )
    ax2.set_ylabel("requests / s")
    ax2.set_title(f"{r['load']['clients']} clients: efficiency {r['ratios']['efficiency']:.2f} (reported)", fontsize=9)
    fig.suptitle(f"{r['machine']['cores']} cores, {r['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def verdicts(ratios: dict[str, float]) -> list[str]:
    """Print each figure with its verdict (or "reported"); the names of the judged ones that failed."""
    failed = []
    for name, value in ratios.items():
        if name in REPORTED:
            print(f"{name:<16} {value:.3f}  (reported, not judged)")
            continue
        op, target = TARGETS[name]
        ok = value <= target if op == "≤" else value >= target
        failed += [] if ok else [name]
        print(f"{name:<16} {value:.3f}  (target {op} {target})  {'PASS' if ok else 'FAIL'}")
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--runs", type=Path, default=ROOT / "out" / "runs", help="trained Keras models, if present")
    ap.add_argument("--n", type=int, default=100, help="requests per single-client figure")
    ap.add_argument("--keras-n", type=int, default=30)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--load-requests", type=int, default=900)
    ap.add_argument("--load-seconds", type=float, default=300)
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--env", nargs="*", default=[], help="extra service settings, e.g. MRI_THREADS=1")
    ap.add_argument("--image", default="mri-classifier-service:latest", help="Docker image to report the size of")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--skip-keras", action="store_true")
    ap.add_argument(
        "--baseline",
        default=None,
        help="also serve this ensemble (a models dir, or git:<rev> for a commit's models/) and compare p50s",
    )
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    images = bench_images()
    cores = os.cpu_count() or 1
    env_extra = dict(kv.split("=", 1) for kv in args.env)
    threads = int(env_extra.get("MRI_THREADS", Settings().threads))
    r: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cores": cores, "cpu": cpu_model(), "platform": platform.platform()},
        "versions": {
            "python": platform.python_version(),
            **{p: md.version(p) for p in ("onnxruntime", "fastapi", "uvicorn", "numpy", "opencv-python-headless")},
        },
        "service_env": env_extra,
        "images": f"{len(images)} MRI fixture JPEGs, 512×512",
    }
    print(f"bench: {cores} cores, {r['machine']['cpu']}; {r['images']}; models {args.models_dir}", flush=True)
    r["floor"] = measure_floor(args.models_dir, images, threads, args.n)
    print(f"floor            p50 {r['floor']['p50_ms']:8.1f} ms  p99 {r['floor']['p99_ms']:8.1f} ms", flush=True)
    r["floor_1thread"] = measure_floor(args.models_dir, images, 1, args.n)
    f1 = r["floor_1thread"]
    print(f"floor, 1 thread  p50 {f1['p50_ms']:8.1f} ms  p99 {f1['p99_ms']:8.1f} ms", flush=True)
    r["crop"] = measure_crop(args.models_dir, images, args.n)
    print(f"crop             p50 {r['crop']['p50_ms']:8.1f} ms  p99 {r['crop']['p99_ms']:8.1f} ms", flush=True)

    proc, cold = start_server(args.models_dir, args.port, env_extra)
    url = f"http://127.0.0.1:{args.port}"
    try:
        r["cold_start_s"] = round(cold, 2)
        r["service"] = measure_service(url, images, args.n)
        s = r["service"]
        print(f"service          p50 {s['p50_ms']:8.1f} ms  p99 {s['p99_ms']:8.1f} ms", flush=True)
        load_n = args.load_requests
        r["load"] = asyncio.run(measure_load(url, images, args.clients, load_n, args.load_seconds))
        ld = r["load"]
        print(
            f"load             {ld['rps']:.2f} req/s  p50 {ld['p50_ms']:.1f} ms  p99 {ld['p99_ms']:.1f} ms  "
            f"errors {ld['errors']}  ({ld['n']} requests, {ld['clients']} clients)",
            flush=True,
        )
        r["requests_served"] = args.n + 3 + ld["n"]
        r["rss_mb"] = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # the machine drifts: measure both floors again after the service, and compare against their means
    r["floor_after"] = measure_floor(args.models_dir, images, threads, args.n)
    r["floor_1thread_after"] = measure_floor(args.models_dir, images, 1, args.n)
    floor_p50 = (r["floor"]["p50_ms"] + r["floor_after"]["p50_ms"]) / 2
    floor1_p50 = (f1["p50_ms"] + r["floor_1thread_after"]["p50_ms"]) / 2
    print(
        f"floors, again    p50 {r['floor_after']['p50_ms']:8.1f} ms, "
        f"1 thread {r['floor_1thread_after']['p50_ms']:.1f} ms"
        f"  (ratios use the means: {floor_p50:.1f} and {floor1_p50:.1f} ms)",
        flush=True,
    )
    print(f"cold start       {r['cold_start_s']} s to ready", flush=True)
    print(f"memory           {r['rss_mb']:.0f} MB resident after {r['requests_served']} requests", flush=True)
    r["preprocess_by_size"] = measure_sizes(images)
    sizes = "  ".join(f"{k}²: {v['p50_ms']:.1f}" for k, v in r["preprocess_by_size"].items())
    print(f"preprocess       p50 ms by upload side  {sizes}", flush=True)
    r["image_mb"] = image_size_mb(args.image)
    print(f"image            {r['image_mb']} MB" if r["image_mb"] else "image            (no Docker engine / image)")

    crop_p50 = r["crop"]["p50_ms"]
    r["hardware_bound_rps"] = cores * 1000 / (floor1_p50 + crop_p50)
    r["ratios"] = {
        "overhead": round(r["service"]["p50_ms"] / (floor_p50 + crop_p50), 3),
        "service_p50_ms": r["service"]["p50_ms"],
        "efficiency": round(r["load"]["rps"] / r["hardware_bound_rps"], 3),
    }
    if args.baseline:
        base = baseline_dir(args.baseline)
        proc, _ = start_server(base, args.port + 1, env_extra)
        try:
            r["baseline"] = {
                "models": args.baseline,
                "model_version": httpx.get(f"http://127.0.0.1:{args.port + 1}/v1/models").json()["model_version"],
                "service": measure_service(f"http://127.0.0.1:{args.port + 1}", images, args.n),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        b = r["baseline"]["service"]
        print(f"baseline         p50 {b['p50_ms']:8.1f} ms  p99 {b['p99_ms']:8.1f} ms  ({args.baseline})", flush=True)
        r["ratios"]["vs_baseline"] = round(b["p50_ms"] / r["service"]["p50_ms"], 3)
    if not args.skip_keras:
        r["keras"] = measure_keras(args.models_dir, images, args.keras_n, args.runs)
        k = r["keras"]
        print(f"keras predict    p50 {k['p50_ms']:8.1f} ms  p99 {k['p99_ms']:8.1f} ms  ({k['models'][0]} models)")
        r["ratios"]["speedup"] = round(k["p50_ms"] / r["service"]["p50_ms"], 3)
    failed = verdicts(r["ratios"])
    if r["load"]["errors"]:
        print(f"{'errors':<16} {r['load']['errors']}  (target 0)  FAIL")
    r["passed"] = not failed and r["load"]["errors"] == 0
    out = args.out or RESULTS / f"bench-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(r, indent=1) + "\n")
    plot(r, out.with_suffix(".png"))
    print(f"{'PASS' if r['passed'] else 'FAIL'}  ({out.relative_to(ROOT) if out.is_relative_to(ROOT) else out})")
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
