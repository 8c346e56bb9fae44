"""End to end: uvicorn in a subprocess on a free port, a real HTTP client."""

from __future__ import annotations

import httpx


def test_post_over_real_http(live_server: str, mri_jpeg: bytes) -> None:
    r = httpx.post(live_server + "/v1/predict", files={"file": ("scan.jpg", mri_jpeg, "image/jpeg")}, timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["label"] in body["probabilities"]
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
    r = httpx.post(live_server + "/v1/predict", content=mri_jpeg, headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert r.status_code == 200
    r = httpx.post(live_server + "/v1/predict", files={"file": ("x.jpg", b"no image", "image/jpeg")}, timeout=30)
    assert r.status_code == 415 and r.headers["content-type"].startswith("application/json")
    big = b"\xff\xd8\xff" + b"\0" * (11 * 1024 * 1024)
    r = httpx.post(live_server + "/v1/predict", content=big, headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert r.status_code == 413
    assert httpx.get(live_server + "/health/ready").status_code == 200


def test_a_client_that_sends_everything_before_reading_gets_the_413(live_server: str) -> None:
    """urllib writes the whole body, then reads: it must get the JSON 413, not "connection reset"."""
    import json
    import urllib.error
    import urllib.request

    big = b"\xff\xd8\xff" + b"\0" * (60 * 1024 * 1024)
    for url in (live_server + "/v1/predict", live_server + "/v1/predict/batch"):
        request = urllib.request.Request(url, data=big, headers={"Content-Type": "image/jpeg"}, method="POST")
        try:
            urllib.request.urlopen(request, timeout=60)
            raise AssertionError("a 60 MB upload was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 413
            assert "limit is" in json.loads(e.read())["detail"]
    assert httpx.get(live_server + "/health/ready").status_code == 200
