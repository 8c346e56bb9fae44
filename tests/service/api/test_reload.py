"""Model reload without downtime: a versioned repository, an authenticated load, nothing lost under load."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections import Counter
from pathlib import Path

import httpx

from tests.utils import MRI_FIXTURES, make_tiny_ensemble, start_server

KEY = "s3cret-admin"
NAME = "mri-classifier"


def _version(root: Path, version: str, seed_from: Path | None = None) -> Path:
    d = root / version
    if seed_from is None:
        make_tiny_ensemble(d)
    else:
        shutil.copytree(seed_from, d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["model_version"] = version
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_reload_swaps_versions_under_load_and_refuses_a_broken_one(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    a = _version(repo, "20260101-000000-aaaaaaaa")
    _version(repo, "20260102-000000-bbbbbbbb", seed_from=a)
    proc, url = start_server(repo, MRI_ADMIN_KEY=KEY, MRI_REQUEST_TIMEOUT_S="5")
    image = next((MRI_FIXTURES / "Testing").rglob("*.jpg")).read_bytes()
    b64 = base64.b64encode(image).decode()
    seen: Counter[tuple[int, str]] = Counter()
    kinds: Counter[str] = Counter()
    stop = threading.Event()

    def hammer(kind: str) -> None:
        """Single predictions, batches of 3 and /v2 infers of 2, until stopped; every answer counted."""
        infer = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [b64, b64]}]}
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                if kind == "single":
                    r = c.post(url + "/v1/predict", files={"file": ("x.jpg", image, "image/jpeg")})
                elif kind == "batch":
                    r = c.post(url + "/v1/predict/batch", files=[("file", ("x.jpg", image, "image/jpeg"))] * 3)
                else:
                    r = c.post(f"{url}/v2/models/{NAME}/infer", json=infer)
                ok = r.status_code == 200
                seen[(r.status_code, r.json()["model_version"] if ok else r.text)] += 1
                kinds[kind] += 1

    def load(version: str | None = None, key: str | None = KEY) -> httpx.Response:
        body = {"parameters": {"version": version}} if version else None
        headers = {"X-Admin-Key": key} if key else {}
        return httpx.post(f"{url}/v2/repository/models/{NAME}/load", json=body, headers=headers, timeout=60)

    threads: list[threading.Thread] = []
    try:
        assert httpx.get(url + "/v1/models").json()["model_version"] == "20260102-000000-bbbbbbbb"  # the newest
        threads += [threading.Thread(target=hammer, args=(k,)) for k in ("single", "single", "batch", "infer")]
        for t in threads:
            t.start()
        assert load(key=None).status_code == 401 and load(key="wrong").status_code == 401
        r = load("20260101-000000-aaaaaaaa")
        assert r.status_code == 200 and r.json() == {
            "name": NAME,
            "version": "20260101-000000-aaaaaaaa",
            "previous": "20260102-000000-bbbbbbbb",
        }
        # a newer version whose model file does not match its manifest: refused, the old one keeps serving
        broken = _version(repo, "20260103-000000-cccccccc", seed_from=a)
        (broken / "tiny0.onnx").write_bytes(b"corrupt")
        r = load()
        assert r.status_code == 400 and "still serving" in r.json()["error"] and "tiny0.onnx" in r.json()["error"]
        assert load("nope").status_code == 404
        index = httpx.post(url + "/v2/repository/index").json()
        assert [(e["version"], e["state"]) for e in index] == [
            ("20260101-000000-aaaaaaaa", "READY"),
            ("20260102-000000-bbbbbbbb", "UNLOADED"),
            ("20260103-000000-cccccccc", "UNLOADED"),
        ]
        assert load("20260102-000000-bbbbbbbb").status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        proc.terminate()
        proc.wait(timeout=30)
    failed = {k: n for k, n in seen.items() if k[0] != 200}
    assert not failed, failed
    versions = {v for _, v in seen}
    assert versions == {"20260101-000000-aaaaaaaa", "20260102-000000-bbbbbbbb"} and sum(seen.values()) > 20
    assert min(kinds[k] for k in ("single", "batch", "infer")) > 0, kinds
