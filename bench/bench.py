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
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.loadtest import RESULTS, ROOT, rss_mb
from service.config import Settings
from service.preprocessing import preprocess_bytes, to_model_input
from service.runtime import Ensemble

FIXTURES = ROOT / "tests" / "fixtures" / "mri"
# judged: a figure past its target fails the bench
TARGETS = {"overhead": ("≤", 1.2), "service_p50_ms": ("≤", 30.0), "speedup": ("≥", 5.0)}
REPORTED = ("efficiency", "vs_baseline")  # printed and stored, never a verdict


def baseline_dir(spec: str) -> Path:
    """A models dir to compare against: a path, or `git:<rev>` for the models/ folder of a commit (written to a
    temporary dir; the service verifies every file against its manifest as usual)."""
    import tempfile

    if not spec.startswith("git:"):
        return Path(spec)
    rev = spec.removeprefix("git:")
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, "models/"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    out = Path(tempfile.mkdtemp(prefix="mri-baseline-"))
    for name in listing.stdout.split():
        blob = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, capture_output=True, check=True).stdout
        (out / Path(name).name).write_bytes(blob)
    return out


def bench_images() -> list[bytes]:
    """The 512×512 fixture JPEGs, as a phone would upload them."""
    import cv2

    out = []
    for path in sorted(FIXTURES.glob("*/*/*.jpg")):
        data = path.read_bytes()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is not None and img.shape[:2] == (512, 512):
            out.append(data)
    if not out:
        raise FileNotFoundError(f"no 512×512 JPEG fixtures under {FIXTURES}")
    return out


def stats(ms: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(ms, float)
    return {
        "n": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "mean_ms": round(float(a.mean()), 2),
    }


def timed(fn: Callable[[int], Any], n: int, warmup: int = 3) -> dict[str, float]:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000)
    return stats(out)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


SIZES = (256, 512, 1024, 2048)


def measure_sizes(images: list[bytes], n: int = 40) -> dict[str, dict[str, float]]:
    """Preprocessing (decode + crop + resize to the model input) of the same slices re-encoded as JPEGs
    of each side length: what a larger upload costs before the models, which always see 150×150."""
    import cv2

    out = {}
    for side in SIZES:
        scaled = []
        for data in images:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            resized = cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC)
            scaled.append(cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        out[str(side)] = timed(lambda i, s=scaled: preprocess_bytes(s[i % len(s)]), n)  # type: ignore[misc]
    return out


def measure_floor(models_dir: Path, images: list[bytes], threads: int, n: int) -> dict[str, float]:
    """The models alone: one ready crop per call, the outputs /v1/predict asks for."""
    ensemble = Ensemble.load(models_dir, threads=threads)
    params = ensemble.manifest.preprocessing
    crops = [to_model_input(preprocess_bytes(b, params=params).image) for b in images]

    def once(i: int) -> None:
        ensemble.run_with(crops[i % len(crops)], "ood_score")

    return timed(once, n)


def measure_crop(models_dir: Path, images: list[bytes], n: int) -> dict[str, float]:
    """Decode + crop + resize of the same uploads, under the ensemble's preprocessing."""
    params = Ensemble.load(models_dir).manifest.preprocessing
    return timed(lambda i: preprocess_bytes(images[i % len(images)], params=params), n)


def measure_keras(models_dir: Path, images: list[bytes], n: int, runs: Path) -> dict[str, Any]:
    """The original app's way: three Keras models, `model.predict` on each request (TensorFlow)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from service.manifest import load_manifest
    from trainer.models.builders import build_from_config

    manifest = load_manifest(models_dir)
    models, origin = [], []
    for entry in manifest.models:
        saved = runs / entry.name / "model.keras"
        if saved.exists():
            models.append(keras.models.load_model(saved))
            origin.append("trained")
        else:  # same architecture, same compute; weights do not change the time
            cfg = {**entry.config, "weights": "none"} if entry.family == "transfer" else entry.config
            models.append(build_from_config(cfg, tuple(manifest.input.shape[1:]), len(manifest.classes)))  # type: ignore[arg-type]
            origin.append("same architecture, untrained weights")

    def once(i: int) -> None:
        x = to_model_input(preprocess_bytes(images[i % len(images)], params=manifest.preprocessing).image)
        for m in models:
            m.predict(x, verbose=0)

    return {**timed(once, n), "models": origin, "tensorflow": md.version("tensorflow")}


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


def predict_request(image: bytes) -> bytes:
    """A complete HTTP/1.1 keep-alive `POST /v1/predict` with the image as a multipart upload, as raw bytes.

    The bench's clients share the cores with the service, so they send pre-built requests over plain
    sockets (a few µs of client CPU per request) instead of a full HTTP client library (~2 ms per request
    with httpx, measured), which would otherwise be charged to the service's overhead and efficiency.
    """
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="scan.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _content_length(headers: list[bytes]) -> int:
    for line in headers:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise RuntimeError("response without Content-Length")


def check_response(status_line: bytes, body: bytes) -> None:
    """Raise unless the answer is a 200 with a prediction."""
    if b" 200 " not in status_line or b'"label"' not in body:
        raise RuntimeError(f"/v1/predict answered {status_line.strip()!r}: {body[:200]!r}")


def measure_service(url: str, images: list[bytes], n: int) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    requests = [predict_request(img) for img in images]
    with socket.create_connection((host, int(port)), timeout=60) as sock, sock.makefile("rb") as rfile:

        def once(i: int) -> None:
            sock.sendall(requests[i % len(requests)])
            status = rfile.readline()
            headers = []
            while (line := rfile.readline()) not in (b"\r\n", b""):
                headers.append(line)
            check_response(status, rfile.read(_content_length(headers)))

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
                status = await reader.readline()
                headers = []
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    headers.append(line)
                check_response(status, await reader.readexactly(_content_length(headers)))
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


def image_size_mb(image: str) -> float | None:
    try:
        out = subprocess.run(
            ["docker", "image", "inspect", image, "--format", "{{.Size}}"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return round(int(out.stdout.strip()) / 1e6, 1) if out.returncode == 0 and out.stdout.strip().isdigit() else None


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
