"""Where one `/v1/predict` goes: each stage of the serving path timed alone in this process (median of --n runs on
the bench's 512×512 uploads), against the same request end to end through a live service by one client. What the
stages do not account for is the HTTP server, the ASGI framework and the hops between the event loop and the
threads.

    python -m bench.profile                  # models/ (make profile)
    python -m bench.profile --models out/models --n 300

Writes bench/results/profile-*.json and a bar chart beside it. Research tool, not for clinical use.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

from bench.clients import MULTIPART_TYPE, measure_service, multipart_body, start_server
from bench.floor import bench_images, cpu_model, timed
from bench.loadtest import RESULTS, ROOT
from service.api.routes.predict import format_prediction
from service.api.schemas import PredictResponse
from service.image.preprocessing import preprocess_bytes, to_model_input
from service.image.upload import extract_image
from service.inference.runtime import Ensemble

# (key, what it is) in the order an upload travels; "models" and "crop" are make bench's floor
STAGES: tuple[tuple[str, str], ...] = (
    ("multipart", "multipart body → image bytes"),
    ("crop", "decode, checks, brain crop, resize"),
    ("models", "the three models and the OOD score"),
    ("vote", "vote, trust and prediction set"),
    ("answer", "answer dict, validation, JSON"),
)


def measure_stages(ensemble: Ensemble, images: list[bytes], n: int) -> dict[str, dict[str, float]]:
    """Each stage's timing on the outputs of the one before, as the service runs them for one upload."""
    params = ensemble.manifest.preprocessing
    bodies = [multipart_body(img) for img in images]
    crops = [preprocess_bytes(img, params=params) for img in images]
    inputs = [to_model_input(c.image[None]) for c in crops]
    raws = [ensemble.run_with(x, "ood_score") for x in inputs]
    preds = [ensemble._predictions(*raw)[0] for raw in raws]
    answers = [format_prediction(ensemble, c, p, False, time.perf_counter()) for c, p in zip(crops, preds, strict=True)]
    k = len(images)

    def answer(i: int) -> bytes:
        model = PredictResponse.model_validate(answers[i % k])
        return json.dumps(model.model_dump(mode="json"), separators=(",", ":")).encode()

    return {
        "multipart": timed(lambda i: extract_image(MULTIPART_TYPE, bodies[i % k]), n),
        "crop": timed(lambda i: preprocess_bytes(images[i % k], params=params), n),
        "models": timed(lambda i: ensemble.run_with(inputs[i % k], "ood_score"), n),
        "vote": timed(
            lambda i: format_prediction(
                ensemble, crops[i % k], ensemble._predictions(*raws[i % k])[0], False, time.perf_counter()
            ),
            n,
        ),
        "answer": timed(answer, n),
    }


def breakdown(stages: dict[str, dict[str, float]], end_to_end_ms: float) -> dict[str, float]:
    """Median ms per stage, and what the stages leave of the end-to-end median (HTTP, ASGI, thread hops)."""
    parts = {key: stages[key]["p50_ms"] for key, _ in STAGES}
    parts["http_asgi_threads"] = round(end_to_end_ms - sum(parts.values()), 2)
    return parts


def plot(parts: dict[str, float], end_to_end_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = dict(STAGES) | {"http_asgi_threads": "HTTP server, ASGI, thread hops (the rest)"}
    fig, ax = plt.subplots(figsize=(8, 3.2))
    left = 0.0
    colours = [plt.get_cmap("tab10")(i) for i in range(10)]
    for i, (key, ms) in enumerate(parts.items()):
        ax.barh([0], [max(ms, 0)], left=left, color=colours[i % 10], label=f"{labels[key]}: {ms:.2f} ms")
        left += max(ms, 0)
    ax.set_yticks([])
    ax.set_xlabel("milliseconds (median)")
    ax.set_title(f"One /v1/predict, {end_to_end_ms:.1f} ms end to end (one client, loopback)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--n", type=int, default=200, help="timed runs per stage and end to end")
    p.add_argument("--port", type=int, default=8094)
    p.add_argument("--out", type=Path, help="result JSON (default bench/results/profile-<time>.json)")
    args = p.parse_args(argv)
    images = bench_images()
    print(f"stages in process, {args.n} runs each …", flush=True)
    ensemble = Ensemble.load(args.models)
    stages = measure_stages(ensemble, images, args.n)
    print("end to end through the service, one client …", flush=True)
    proc, _ = start_server(args.models, args.port, {})
    try:
        end_to_end = measure_service(f"http://127.0.0.1:{args.port}", images, args.n)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    parts = breakdown(stages, end_to_end["p50_ms"])
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "models": str(args.models),
        "model_version": ensemble.manifest.model_version,
        "stages": stages,
        "end_to_end": end_to_end,
        "breakdown_p50_ms": parts,
        "share_of_end_to_end": {k: round(v / end_to_end["p50_ms"], 3) for k, v in parts.items()},
    }
    out = args.out or RESULTS / f"profile-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(parts, end_to_end["p50_ms"], out.with_suffix(".png"))
    print(json.dumps({"breakdown_p50_ms": parts, "end_to_end_p50_ms": end_to_end["p50_ms"]}, indent=2))
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
