#!/usr/bin/env bash
# make scale-smoke: nginx in front of 2 service replicas (compose profile `scale`); shows requests landing on both,
# kills one replica mid-run and counts failed requests (must be 0: nginx retries on the live replica).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHON_IMAGE="${PYTHON_IMAGE:-python:3.11-slim}"
export LB_PORT="${LB_PORT:-18090}"
COMPOSE=${COMPOSE:-$(docker compose version >/dev/null 2>&1 && echo "docker compose" || echo "docker-compose")}
project="mri-scale-$$"
REQUESTS="${REQUESTS:-300}"
cleanup() { $COMPOSE -p "$project" --profile scale down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== building the service and nginx images (PYTHON_IMAGE=$PYTHON_IMAGE)"
$COMPOSE -p "$project" --profile scale build service lb
echo "== up: nginx + 2 replicas"
$COMPOSE -p "$project" --profile scale up -d --scale replica=2 lb
lb=$($COMPOSE -p "$project" --profile scale ps -q lb)
for i in $(seq 1 90); do
  status=$(docker inspect --format '{{.State.Health.Status}}' "$lb")
  [ "$status" = healthy ] && break
  [ "$i" = 90 ] && { echo "FAIL: nginx not healthy ($status)" >&2; $COMPOSE -p "$project" --profile scale logs; exit 1; }
  sleep 2
done
replicas=$($COMPOSE -p "$project" --profile scale ps -q replica)
echo "replicas: $(echo $replicas | wc -w)"

python3 - "$LB_PORT" "$REQUESTS" "$project" $replicas <<'PY'
import collections, json, subprocess, sys, threading, time, urllib.request

port, total, project, replicas = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
url = f"http://127.0.0.1:{port}/v1/predict"
image = open("tests/fixtures/mri/Testing/glioma_tumor/image(1).jpg", "rb").read()
boundary = "scale-smoke"
body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post():
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            label = json.loads(r.read())["label"]
            return r.status, r.headers.get("X-Upstream", "?"), label
    except Exception as e:  # noqa: BLE001 - every failure counts
        return getattr(e, "code", type(e).__name__), "-", None


warm = collections.Counter(post()[1] for _ in range(40))
print(f"40 requests, answered by: {dict(warm)}")
if len([u for u in warm if u not in ("-", "?")]) < 2:
    sys.exit("FAIL: requests did not land on both replicas")

results, lock, done = collections.Counter(), threading.Lock(), [0]
upstreams = collections.Counter()


def worker(n):
    for _ in range(n):
        status, upstream, _ = post()
        with lock:
            results[status] += 1
            upstreams[upstream] += 1
            done[0] += 1


threads = [threading.Thread(target=worker, args=(total // 4,)) for _ in range(4)]
start = time.time()
for t in threads:
    t.start()
while done[0] < total // 3:
    time.sleep(0.05)
victim = replicas[0]
subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
print(f"killed replica {victim[:12]} after {done[0]} requests")
for t in threads:
    t.join()
elapsed = time.time() - start
failed = sum(n for s, n in results.items() if s != 200)
print(f"{sum(results.values())} requests in {elapsed:.1f} s under load: statuses {dict(results)}; "
      f"answered by {dict(upstreams)}; failed {failed}")
sys.exit(1 if failed else 0)
PY
echo "scale smoke OK"
