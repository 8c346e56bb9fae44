"""The shared decode → crop → resize implementation (numpy + OpenCV only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.image.preprocessing import (
    IMAGE_SIZE,
    INTENSITY_TARGET,
    PREPROCESSING_V1,
    PREPROCESSING_V2,
    PREPROCESSING_V3,
    PREPROCESSING_V4,
    THRESHOLD,
    THRESHOLD_OFFSET,
    ImageDecodeError,
    background_threshold,
    crop_and_resize,
    declared_size,
    decode_image,
    find_brain_box,
    grey_percentile,
    normalise_intensity,
    preprocess_bytes,
    preprocessing_version,
    sniff_format,
    to_rgb_uint8,
)


def disc_image(h: int = 300, w: int = 400, center: tuple[int, int] = (220, 140), r: int = 60) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, center, r, (200, 200, 200), -1)
    return img


def test_crop_finds_a_bright_disc_within_2px() -> None:
    cx, cy, r = 220, 140, 60
    (x0, y0, x1, y1), fallback = find_brain_box(disc_image(center=(cx, cy), r=r))
    assert not fallback
    for got, want in ((x0, cx - r), (y0, cy - r), (x1, cx + r + 1), (y1, cy + r + 1)):
        assert abs(got - want) <= 2, (x0, y0, x1, y1)


def test_crop_falls_back_on_black_and_on_specks() -> None:
    black = np.zeros((200, 200, 3), np.uint8)
    result = crop_and_resize(black)
    assert result.fallback and result.box == (0, 0, 200, 200)
    assert result.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and result.image.dtype == np.uint8
    speck = black.copy()
    cv2.circle(speck, (50, 50), 4, (255, 255, 255), -1)  # far below 1% of the area
    assert crop_and_resize(speck).fallback


def test_output_is_rgb_not_bgr() -> None:
    img = np.zeros((100, 100, 3), np.uint8)
    img[20:80, 20:80] = (255, 0, 0)  # pure red in RGB
    _, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = preprocess_bytes(buf.tobytes()).image
    assert out[75, 75].tolist() == [255, 0, 0]


def test_conversions() -> None:
    grey16 = np.array([[1000, 3000], [2000, 1000]], np.uint16)
    rgb = to_rgb_uint8(grey16)
    assert rgb.shape == (2, 2, 3) and rgb[0, 0, 0] == 0 and rgb[0, 1, 0] == 255 and rgb[1, 0, 0] == 128
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., :3] = (10, 20, 200)
    bgra[0, 0, 3] = 255  # opaque; others transparent → black
    rgb = to_rgb_uint8(bgra)
    assert rgb[0, 0].tolist() == [200, 20, 10] and rgb[1, 1].tolist() == [0, 0, 0]
    grey_alpha = np.dstack([np.full((2, 2), 100, np.uint8), np.full((2, 2), 255, np.uint8)])
    assert to_rgb_uint8(grey_alpha)[0, 0].tolist() == [100, 100, 100]


def test_formats_sniffed_by_content_and_sizes_read_from_headers() -> None:
    img = disc_image()
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    png = cv2.imencode(".png", img)[1].tobytes()
    assert sniff_format(jpg) == "jpeg" and sniff_format(png) == "png"
    assert sniff_format(b"GIF89a....") is None
    assert declared_size(jpg, "jpeg") == (400, 300)
    assert declared_size(png, "png") == (400, 300)
    with pytest.raises(ImageDecodeError) as e:
        decode_image(png, max_pixels=1000)
    assert e.value.status == 422 and "limit" in str(e.value)
    with pytest.raises(ImageDecodeError) as e:
        decode_image(b"GIF89a" + b"\0" * 100)
    assert e.value.status == 415


def test_module_does_not_import_tensorflow() -> None:
    code = (
        "import sys, service.image.preprocessing, service.inference.runtime, service.main; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        result = preprocess_bytes(data)
    except ImageDecodeError as e:
        assert e.status in (415, 422)
    else:
        assert result.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 600), st.integers(1, 600), st.integers(0, 255), st.sampled_from([".png", ".jpg"]))
def test_random_dimensions_decode_and_crop(w: int, h: int, value: int, ext: str) -> None:
    img = np.full((h, w, 3), value, np.uint8)
    data = cv2.imencode(ext, img)[1].tobytes()
    result = preprocess_bytes(data)
    assert result.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    x0, y0, x1, y1 = result.box
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_intensity_normalisation_hides_a_change_of_brightness(mri_jpeg: bytes) -> None:
    # Version 2 scales the grey 99th percentile to the target before the crop: the same slice exported darker
    # or brighter gives (nearly, up to rounding) the same crop and box; version 1 passes the change through.
    img = decode_image(mri_jpeg)
    assert abs(grey_percentile(normalise_intensity(img), 99) - INTENSITY_TARGET) <= 1
    base = {v: crop_and_resize(img, params=pre) for v, pre in ((1, PREPROCESSING_V1), (2, PREPROCESSING_V2))}
    for factor in (0.5, 0.7, 1.3):
        shifted = np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)
        v1 = crop_and_resize(shifted, params=PREPROCESSING_V1)
        v2 = crop_and_resize(shifted, params=PREPROCESSING_V2)
        assert np.abs(v1.image.astype(int) - base[1].image.astype(int)).mean() > 10, factor
        assert np.abs(v2.image.astype(int) - base[2].image.astype(int)).mean() < 2.5, factor
        assert max(abs(a - b) for a, b in zip(v2.box, base[2].box, strict=True)) <= 3, factor


def test_intensity_normalisation_is_the_linear_lookup_on_any_layout() -> None:
    # cv2.LUT gives what the plain numpy lookup gives (the trainer's cached crops were made with the latter),
    # also on views with negative or uneven strides
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    for view in (img, img[:, :, ::-1], img[::2, ::-3]):
        level = grey_percentile(view, 99)
        lut = np.clip(np.rint(np.arange(256, dtype=np.float32) * (INTENSITY_TARGET / level)), 0, 255)
        np.testing.assert_array_equal(normalise_intensity(view), lut.astype(np.uint8)[view])


def test_intensity_normalisation_leaves_blank_images_alone() -> None:
    dim = np.full((64, 64, 3), 10, np.uint8)  # below INTENSITY_MIN_LEVEL: nothing to scale
    assert normalise_intensity(dim) is dim
    assert crop_and_resize(dim, params=PREPROCESSING_V2).fallback


def test_preprocessing_versions_are_checked_exactly() -> None:
    assert preprocessing_version(PREPROCESSING_V1) == 1
    assert preprocessing_version(PREPROCESSING_V2) == 2
    assert preprocessing_version(json.loads(json.dumps(PREPROCESSING_V2))) == 2  # as read from a manifest
    assert preprocessing_version(json.loads(json.dumps(PREPROCESSING_V3))) == 3
    assert preprocessing_version(json.loads(json.dumps(PREPROCESSING_V4))) == 4
    with pytest.raises(ValueError, match="in: crop"):  # version 4's mask gamma, changed
        preprocessing_version({**PREPROCESSING_V4, "crop": {**PREPROCESSING_V4["crop"], "mask_gamma": {}}})
    with pytest.raises(ValueError, match="in: crop"):  # version 3's threshold block, changed
        preprocessing_version({**PREPROCESSING_V3, "crop": {**PREPROCESSING_V3["crop"], "threshold": THRESHOLD}})
    with pytest.raises(ValueError, match="version 7 is not implemented"):
        preprocessing_version({**PREPROCESSING_V2, "version": 7})
    with pytest.raises(ValueError, match="in: intensity"):
        preprocessing_version({**PREPROCESSING_V2, "intensity": {**PREPROCESSING_V2["intensity"], "target": 150.0}})
    with pytest.raises(ValueError, match="in: image_size"):
        preprocessing_version({**PREPROCESSING_V1, "image_size": 224})
    with pytest.raises(ValueError, match="in: crop"):
        crop_and_resize(np.zeros((32, 32, 3), np.uint8), params={**PREPROCESSING_V1, "crop": {}})


def _head(background: int, rim: int, h: int = 300, w: int = 400) -> np.ndarray:
    """A dim outer disc (the head's edge, grey `rim`) around a bright inner one, on a `background` frame."""
    img = np.full((h, w, 3), background, np.uint8)
    cv2.circle(img, (200, 150), 120, (rim, rim, rim), -1)
    cv2.circle(img, (200, 150), 70, (200, 200, 200), -1)
    return img


def test_version_3_thresholds_relative_to_the_background() -> None:
    grey = lambda img: cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)  # noqa: E731
    assert background_threshold(grey(_head(0, 35))) == THRESHOLD_OFFSET
    assert background_threshold(grey(_head(12, 35))) == 12 + THRESHOLD_OFFSET
    assert background_threshold(grey(_head(90, 35))) == THRESHOLD  # capped: a bright frame is not background
    # the dim rim (35) is below version 2's fixed 45, above version 3's 0 + 20: v3 keeps the whole head
    x0, y0, x1, y1 = find_brain_box(_head(0, 35))[0]
    assert abs((x1 - x0) - 141) <= 3 and abs((y1 - y0) - 141) <= 3  # the inner disc only
    x0, y0, x1, y1 = find_brain_box(_head(0, 35), relative=True)[0]
    assert abs((x1 - x0) - 241) <= 3 and abs((y1 - y0) - 241) <= 3  # the rim too
    assert crop_and_resize(_head(0, 35), params=PREPROCESSING_V3).box == (x0, y0, x1, y1)  # (no intensity change)
    # a lifted background (contrast reduced) raises the threshold with it: the rim at 35 on a 25 frame is not head
    x0, y0, x1, y1 = find_brain_box(_head(25, 35), relative=True)[0]
    assert abs((x1 - x0) - 141) <= 3


def test_version_3_crop_survives_darker_darks() -> None:
    # A Training slice whose version-2 box collapses to a fragment when its darks get darker (gamma 1.6),
    # while version 3's stays where it was (measured over 250 images with `python -m trainer crops`).
    from tests.utils import MRI_FIXTURES

    img = decode_image((MRI_FIXTURES / "Training" / "no_tumor" / "1.jpg").read_bytes())
    darker = (255.0 * (np.arange(256) / 255.0) ** 1.6).astype(np.uint8)[img]

    def area(box: tuple[int, int, int, int]) -> int:
        return (box[2] - box[0]) * (box[3] - box[1])

    v2, v2_dark = (crop_and_resize(im, params=PREPROCESSING_V2).box for im in (img, darker))
    v3, v3_dark = (crop_and_resize(im, params=PREPROCESSING_V3).box for im in (img, darker))
    assert area(v2_dark) < 0.25 * area(v2)
    assert max(abs(a - b) for a, b in zip(v3, v3_dark, strict=True)) <= 2


def test_mask_gamma_puts_the_percentile_on_the_target_within_limits() -> None:
    from service.image.preprocessing import GAMMA_LIMITS, GAMMA_PERCENTILE, GAMMA_TARGET, INTENSITY_TARGET, mask_gamma

    def level(gray: np.ndarray) -> int:
        cumulative = np.bincount(gray.ravel(), minlength=256).cumsum()
        return int(np.searchsorted(cumulative, GAMMA_PERCENTILE / 100.0 * cumulative[-1]))

    ramp = np.repeat(np.arange(0, 140, dtype=np.uint8)[None, :], 20, axis=0)  # p90 ≈ 125: gamma 1.7 → clipped
    bright = mask_gamma(ramp)
    expected = INTENSITY_TARGET * (level(ramp) / INTENSITY_TARGET) ** GAMMA_LIMITS[1]
    assert abs(level(bright) - expected) <= 1 and level(bright) > GAMMA_TARGET  # the limit holds it back
    dim = (ramp // 2).astype(np.uint8)  # p90 ≈ 62: gamma 0.57, within the limits
    assert abs(level(mask_gamma(dim)) - GAMMA_TARGET) <= 2
    assert mask_gamma(np.zeros((8, 8), np.uint8)) is not None and not mask_gamma(np.zeros((8, 8), np.uint8)).any()
    flat = np.full((8, 8), 200, np.uint8)  # at or above the pivot: left alone
    assert mask_gamma(flat) is flat


def test_version_4_crop_holds_under_gamma_in_both_directions() -> None:
    # Slices whose version-3 box moves under brighter darks (gamma 0.6) or darker darks (gamma 1.6) while
    # version 4's stays; and over every MRI fixture version 4 moves less on average (250 Training images:
    # `python -m trainer crops --versions 3 4`).
    from tests.utils import MRI_FIXTURES
    from trainer.evaluation.robustness import box_iou

    def moved(path: Path, g: float, params: dict) -> float:
        img = decode_image(path.read_bytes())
        shifted = (255.0 * (np.arange(256) / 255.0) ** g).astype(np.uint8)[img]
        return box_iou(crop_and_resize(img, params=params).box, crop_and_resize(shifted, params=params).box)

    brighter = MRI_FIXTURES / "Training" / "meningioma_tumor" / "m (10).jpg"
    darker = MRI_FIXTURES / "Training" / "no_tumor" / "image(103).jpg"
    assert moved(brighter, 0.6, PREPROCESSING_V3) < 0.8 < 0.9 < moved(brighter, 0.6, PREPROCESSING_V4)
    assert moved(darker, 1.6, PREPROCESSING_V3) < 0.8 < 0.95 < moved(darker, 1.6, PREPROCESSING_V4)
    fixtures = sorted(MRI_FIXTURES.rglob("*.jpg"))
    for g in (0.6, 1.6):
        v3, v4 = (np.mean([moved(p, g, pre) for p in fixtures]) for pre in (PREPROCESSING_V3, PREPROCESSING_V4))
        assert v4 > v3 + 0.02, (g, v3, v4)


def test_a_png_chunk_longer_than_the_file_is_refused_before_decoding() -> None:
    """Found by bench/fuzz.py: a 6 KB PNG whose IDAT declares 4 GB kept libpng busy for seconds."""
    import struct
    import time

    import cv2
    import numpy as np

    from service.image.preprocessing import ImageDecodeError, decode_image

    png = cv2.imencode(".png", np.full((96, 96), 80, np.uint8))[1].tobytes()
    idat = png.index(b"IDAT") - 4
    bomb = png[:idat] + struct.pack(">I", 0xFFFF1DDD) + png[idat + 4 :]
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="'IDAT' chunk declares 4,294,909,405 bytes") as e:
        decode_image(bomb)
    assert e.value.status == 422 and time.perf_counter() - start < 0.5
    assert decode_image(png).shape == (96, 96, 3)  # an intact PNG still decodes
