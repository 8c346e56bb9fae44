"""The upload page in real headless Chromium (Debian's, never a downloaded browser)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.utils import MRI_FIXTURES, make_cam_ensemble, make_tiny_ensemble, read_manifest, start_server

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
GLIOMA = MRI_FIXTURES / "Testing" / "glioma_tumor" / "image(1).jpg"
PITUITARY = MRI_FIXTURES / "Testing" / "pituitary_tumor" / "image(1).jpg"


@contextmanager
def serving(models_dir: Path, thresholds: float | None = None) -> Iterator[str]:
    """The service on models_dir; `thresholds`: every class's conformal threshold set to it first (0: every
    class is always in the prediction set, so every answer is flagged; 1: only the vote, so none is)."""
    if thresholds is not None:
        raw = read_manifest(models_dir)
        raw["ensemble"]["conformal"]["thresholds"] = dict.fromkeys(raw["classes"], thresholds)
        (models_dir / "manifest.json").write_text(json.dumps(raw))
    proc, url = start_server(models_dir)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def classify(page: sync_api.Page, *files: Path) -> None:
    """Upload files and wait for their answers (the previous answers are cleared first, so none is mistaken
    for a new one)."""
    page.evaluate("document.getElementById('results').replaceChildren()")
    page.set_input_files("#file", [str(f) for f in files])
    page.click("#go")
    page.wait_for_function(f"document.querySelectorAll('[data-testid=result]').length === {len(files)}", timeout=20_000)


def test_an_unflagged_answer_leads_with_its_class_in_words(tmp_path: Path) -> None:
    make_tiny_ensemble(tmp_path / "models")
    with serving(tmp_path / "models", thresholds=1.0) as url, chromium() as page:
        page.goto(url + "/")
        assert "not for clinical use" in page.inner_text("#disclaimer")
        # the intro names the manifest's classes in words and its number of models
        page.wait_for_function("document.getElementById('intro').textContent.startsWith('3 ONNX')", timeout=10_000)
        assert page.inner_text("#intro") == "3 ONNX models vote on glioma, meningioma, no tumour or pituitary."
        classify(page, GLIOMA)
        notice = page.locator("[data-testid=notice]")
        assert notice.get_attribute("class") == "notice ok"
        headline = page.inner_text("[data-testid=headline]").strip()
        assert headline.lower() in {"glioma", "meningioma", "no tumour", "pituitary"}  # words, not identifiers
        assert "No flag was raised" in notice.inner_text()
        assert page.locator(".models > div").count() == 3
        assert page.locator(".ensemble-bars .bar").count() == 4
        assert (page.get_attribute(".crop", "src") or "").startswith("data:image/png;base64,")
        assert page.evaluate("document.querySelector('.crop').naturalWidth") == 150
        assert "not for clinical use" in page.inner_text(".meta")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        # a bad file shows the server's message, not a crash
        bad = tmp_path / "notes.jpg"
        bad.write_text("not an image")
        page.set_input_files("#file", str(bad))
        page.click("#go")
        page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=20_000)
        assert "not a JPEG, PNG or DICOM" in page.inner_text("#error")


def test_a_flagged_answer_is_shown_as_flagged_first_with_its_prediction_set(tmp_path: Path) -> None:
    make_tiny_ensemble(tmp_path / "models")
    with serving(tmp_path / "models", thresholds=0.0) as url, chromium() as page:
        page.goto(url + "/")
        classify(page, GLIOMA)
        notice = page.locator("[data-testid=notice]")
        assert notice.get_attribute("class") == "notice flagged"
        headline = page.inner_text("[data-testid=headline]")
        # every class is in the set: the headline names them in words, joined by "or", and is no single label
        assert headline.startswith("Not a reliable answer: ") and headline.count(" or ") == 3, headline
        assert "no tumour" in headline and "no_tumor" not in headline
        assert "more than one class is plausible" in notice.inner_text()
        assert "95 %" in notice.inner_text()  # the stated level of the set


def test_a_photo_gets_no_tumour_label_as_its_headline(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    make_tiny_ensemble(tmp_path / "models")
    photo = tmp_path / "house.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(photo), rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))  # colourful, no dark backdrop
    with serving(tmp_path / "models", thresholds=1.0) as url, chromium() as page:
        page.goto(url + "/")
        classify(page, photo)
        assert page.locator("[data-testid=notice]").get_attribute("class") == "notice not-mri"
        headline = page.inner_text("[data-testid=headline]")
        assert headline == "This does not look like a brain-MRI slice: no answer."
        assert "colour image" in page.inner_text("[data-testid=notice]")


def test_several_files_at_once_and_a_phone_layout(tmp_path: Path) -> None:
    make_tiny_ensemble(tmp_path / "models")
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with serving(tmp_path / "models") as url, chromium(390, 844) as page:
        page.goto(url + "/")
        classify(page, GLIOMA, PITUITARY, bad)
        titles = page.locator(".file-title").all_inner_texts()
        assert titles == ["image(1).jpg", "image(1).jpg", "notes.jpg"]
        assert "Refused (415)" in page.locator("[data-testid=result]").nth(2).inner_text()
        assert "2 classified, 1 refused" in page.inner_text("#status")
        # nothing wider than the phone's screen
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)


def test_the_model_card_link_opens_a_readable_card(live_server: str) -> None:
    with chromium() as page:
        page.goto(live_server + "/")
        page.click("#card-link")
        page.wait_for_load_state()
        assert page.url.endswith("/model-card")
        text = page.inner_text("body")
        assert "not for clinical use" in text.lower() and "test-1" in text  # the served model version
        assert page.locator("h1").count() == 1


def test_upload_page_shows_heatmap_and_warnings(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    models = make_cam_ensemble(tmp_path / "models")
    colour = tmp_path / "red.png"
    img = np.zeros((200, 200, 3), np.uint8)
    img[40:160, 40:160] = (0, 0, 220)  # BGR red square
    cv2.imwrite(str(colour), img)
    with serving(models) as url, chromium() as page:
        page.goto(url + "/")
        classify(page, GLIOMA)
        page.wait_for_selector(".heat-fig:not([hidden])", timeout=20_000)
        page.wait_for_function("document.querySelector('.heat').naturalWidth > 0", timeout=20_000)
        assert page.evaluate("document.querySelector('.heat').naturalWidth") == 300
        assert "Checks on the upload" not in page.inner_text("[data-testid=notice]")
        classify(page, colour)
        assert "colour image" in page.inner_text("[data-testid=notice]")


def test_swagger_ui_renders_offline_from_bundled_assets(live_server: str) -> None:
    with chromium() as page:
        failed: list[str] = []
        page.on("requestfailed", lambda req: failed.append(req.url))
        page.goto(live_server + "/docs")
        page.wait_for_selector("#operations-prediction-predict_v1_predict_post", timeout=20_000)
        page.click("#operations-prediction-predict_v1_predict_post .opblock-summary")
        page.wait_for_selector("text=Try it out", timeout=10_000)
        assert "/v1/predict" in page.inner_text("#swagger-ui")
        assert page.locator("#operations-prediction-explain_v1_explain_post").count() == 1
        assert not [u for u in failed if u.startswith(live_server)]
