#!/usr/bin/env bash
# make docker-smoke: build both images, bring the stack up, check a real prediction, run the trainer
# image's smoke pipeline on a tiny subset, tear everything down. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHON_IMAGE="${PYTHON_IMAGE:-python:3.11-slim}"
export PORT="${PORT:-18080}"
COMPOSE=${COMPOSE:-$(docker compose version >/dev/null 2>&1 && echo "docker compose" || echo "docker-compose")}
project="mri-smoke-$$"
fixture="tests/fixtures/mri/Testing/glioma_tumor/image(1).jpg"
data_dir="$(cd "${MRI_DATA_DIR:-../shared/data/brain-tumor-mri}" && pwd)"
tmp="$(mktemp -d)"
cleanup() {
  $COMPOSE -p "$project" --profile train down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
chmod 777 "$tmp"  # the trainer image writes as its non-root user

echo "== building images (PYTHON_IMAGE=$PYTHON_IMAGE, $COMPOSE)"
$COMPOSE -p "$project" --profile train build

size=$(docker image inspect mri-classifier-service:latest --format '{{.Size}}')
echo "service image size: $((size / 1000000)) MB"
if [ "$size" -ge 500000000 ]; then echo "FAIL: service image is over 500 MB" >&2; exit 1; fi
if docker run --rm --entrypoint python mri-classifier-service:latest -c "import tensorflow" 2>/dev/null; then
  echo "FAIL: the service image contains tensorflow" >&2; exit 1
fi
user=$(docker run --rm --entrypoint id mri-classifier-service:latest -u)
[ "$user" != "0" ] || { echo "FAIL: service image runs as root" >&2; exit 1; }
echo "service image: no tensorflow, runs as uid $user"

echo "== docker compose up"
$COMPOSE -p "$project" up -d service
for i in $(seq 1 60); do
  status=$(docker inspect --format '{{.State.Health.Status}}' "$($COMPOSE -p "$project" ps -q service)")
  [ "$status" = healthy ] && break
  [ "$i" = 60 ] && { echo "FAIL: service not healthy ($status)" >&2; $COMPOSE -p "$project" logs service; exit 1; }
  sleep 2
done
echo "service healthy"
curl -sf -F "file=@$fixture" "http://127.0.0.1:$PORT/v1/predict" > "$tmp/predict.json"
python3 - "$tmp/predict.json" <<'PY'
import json, sys
body = json.load(open(sys.argv[1]))
assert body["label"] in body["probabilities"], body
assert abs(sum(body["probabilities"].values()) - 1) < 1e-3, body
assert sum(body["votes"].values()) == len(body["models"]) == 3, body
assert "not for clinical use" in body["disclaimer"]
print("prediction OK:", body["label"], body["probabilities"])
PY
code=$(curl -s -o /dev/null -w '%{http_code}' -F "file=@README.md" "http://127.0.0.1:$PORT/v1/predict")
[ "$code" = 415 ] || { echo "FAIL: a non-image got $code, expected 415" >&2; exit 1; }
echo "non-image rejected with 415"

echo "== trainer image: smoke pipeline on a tiny subset"
docker run --rm --network none -v "$data_dir:/data:ro" -v "$tmp:/work/out" \
  mri-classifier-trainer:latest train --grid trainer/grids/smoke.toml --limit-per-class 8 --verbose 0
docker run --rm --network none -v "$data_dir:/data:ro" -v "$tmp:/work/out" \
  mri-classifier-trainer:latest evaluate --limit-per-class 8
docker run --rm --network none -v "$data_dir:/data:ro" -v "$tmp:/work/out" \
  mri-classifier-trainer:latest export --limit-per-class 8 --models-dir /work/out/models --top 3
test -s "$tmp/models/manifest.json"
test -s "$tmp/models/ensemble.onnx"
echo "trainer image exported the ensemble: $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["models"]))' "$tmp/models/manifest.json") models in $(ls "$tmp"/models/*.onnx | wc -l) ONNX file(s)"
echo "docker-smoke: PASS"
