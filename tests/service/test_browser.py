"""The upload page in real headless Chromium (Debian's, never a downloaded browser)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.utils import MRI_FIXTURES, make_cam_ensemble, start_server

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.browser

if not Path(CHROMIUM).exists():
    if os.environ.get("MRI_REQUIRE_BROWSER"):
        raise RuntimeError(f"{CHROMIUM} missing but MRI_REQUIRE_BROWSER is set (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_upload_page_shows_label_crop_bars_and_disclaimer(live_server: str, tmp_path: Path) -> None:
    image = MRI_FIXTURES / "Testing" / "pituitary_tumor" / "image(1).jpg"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(live_server + "/")
        assert "not for clinical use" in page.inner_text("#disclaimer")
        page.set_input_files("#file", str(image))
        page.click("#go")
        page.wait_for_selector("#result:not([hidden])", timeout=20_000)
        label = page.inner_text("[data-testid=label]").strip()
        assert label in {"glioma", "meningioma", "no_tumor", "pituitary"}
        assert page.locator("#models > div").count() == 3
        assert page.locator("#ensemble-bars .bar").count() == 4
        crop_src = page.get_attribute("#crop", "src") or ""
        assert crop_src.startswith("data:image/png;base64,")
        assert page.evaluate("document.getElementById('crop').naturalWidth") == 150
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        # a bad file shows the server's message, not a crash
        bad = tmp_path / "notes.jpg"
        bad.write_text("not an image")
        page.set_input_files("#file", str(bad))
        page.click("#go")
        page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=20_000)
        assert "not a JPEG, PNG or DICOM" in page.inner_text("#error")
        browser.close()


def test_upload_page_shows_heatmap_and_warnings(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    models = make_cam_ensemble(tmp_path / "models")
    proc, url = start_server(models)
    colour = tmp_path / "red.png"
    img = np.zeros((200, 200, 3), np.uint8)
    img[40:160, 40:160] = (0, 0, 220)  # BGR red square
    cv2.imwrite(str(colour), img)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            page.goto(url + "/")
            page.set_input_files("#file", str(MRI_FIXTURES / "Testing" / "glioma_tumor" / "image(1).jpg"))
            page.click("#go")
            page.wait_for_selector("#heat-fig:not([hidden])", timeout=20_000)
            page.wait_for_function("document.getElementById('heat').naturalWidth > 0", timeout=20_000)
            assert page.evaluate("document.getElementById('heat').naturalWidth") == 300
            assert page.inner_text("[data-testid=warnings]").strip() == ""
            page.set_input_files("#file", str(colour))
            page.click("#go")
            page.wait_for_function(
                "document.querySelector('[data-testid=warnings]').textContent.includes('colour')", timeout=20_000
            )
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_swagger_ui_renders_offline_from_bundled_assets(live_server: str) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        failed: list[str] = []
        page.on("requestfailed", lambda req: failed.append(req.url))
        page.goto(live_server + "/docs")
        page.wait_for_selector("#operations-prediction-predict_v1_predict_post", timeout=20_000)
        page.click("#operations-prediction-predict_v1_predict_post .opblock-summary")
        page.wait_for_selector("text=Try it out", timeout=10_000)
        assert "/v1/predict" in page.inner_text("#swagger-ui")
        assert page.locator("#operations-prediction-explain_v1_explain_post").count() == 1
        assert not [u for u in failed if u.startswith(live_server)]
        browser.close()
