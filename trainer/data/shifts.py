"""Acquisition shifts of a decoded image: the catalogue `trainer robustness` measures the exported ensemble
under (SHIFTS), and the random draw of them that training augments with (`random_shift`, grid key
`shift_views`). Pure NumPy/OpenCV on uint8 RGB images."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from service.image.preprocessing import INTENSITY_PERCENTILE, grey_percentile

REFERENCE_SIDE = 512  # the dataset's usual side: blur and noise are defined at this size


def _scaled(img: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def _gamma(img: np.ndarray, g: float) -> np.ndarray:
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** g, 0, 255).astype(np.uint8)
    return lut[img]


def _contrast(img: np.ndarray, factor: float) -> np.ndarray:
    mean = float(img.mean())
    return np.clip(mean + (img.astype(np.float32) - mean) * factor, 0, 255).astype(np.uint8)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    s = sigma * max(img.shape[:2]) / REFERENCE_SIDE
    return cv2.GaussianBlur(img, (0, 0), s)


def _noise(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = rng.normal(0, sigma, img.shape[:2])[..., None]  # the same on every channel: a grey image stays grey
    return np.clip(img.astype(np.float32) + grey, 0, 255).astype(np.uint8)


def _rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def _downscale(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    f = side / max(h, w)
    return img if f >= 1 else cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError("JPEG decoding failed")
    return np.ascontiguousarray(decoded[..., ::-1])


# (name, family, shift of a uint8 RGB image; the int is the image's index, for seeded noise)
SHIFTS: list[tuple[str, str, Callable[[np.ndarray, int], np.ndarray]]] = [
    ("none", "none", lambda im, i: im),
    ("brightness ×0.5", "intensity", lambda im, i: _scaled(im, 0.5)),
    ("brightness ×0.7", "intensity", lambda im, i: _scaled(im, 0.7)),
    ("brightness ×1.4", "intensity", lambda im, i: _scaled(im, 1.4)),
    ("gamma 0.6 (brighter darks)", "intensity", lambda im, i: _gamma(im, 0.6)),
    ("gamma 1.6 (darker darks)", "intensity", lambda im, i: _gamma(im, 1.6)),
    ("contrast ×0.6", "intensity", lambda im, i: _contrast(im, 0.6)),
    ("blur σ 2 px", "sharpness", lambda im, i: _blur(im, 2.0)),
    ("blur σ 4 px", "sharpness", lambda im, i: _blur(im, 4.0)),
    ("noise σ 8", "noise", lambda im, i: _noise(im, 8.0, i)),
    ("noise σ 16", "noise", lambda im, i: _noise(im, 16.0, i)),
    ("rotation 10°", "geometry", lambda im, i: _rotate(im, 10.0)),
    ("rotation 25°", "geometry", lambda im, i: _rotate(im, 25.0)),
    ("downscaled to 128 px", "resolution", lambda im, i: _downscale(im, 128)),
    ("JPEG quality 20", "compression", lambda im, i: _jpeg(im, 20)),
]


def random_shift(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random acquisition shift of a prepared crop, for training (grid key `shift_views`): each of gamma,
    contrast, blur, noise, rotation, resolution loss, JPEG compression and mirroring is drawn with its own
    probability, at magnitudes up to those of SHIFTS. The grey 99th percentile is then put back where it was,
    as the intensity step of preprocessing version 2 would do to an uploaded image (brightness is left out:
    that step undoes it)."""
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {img.dtype} {img.shape}")
    out = img
    if rng.random() < 0.7:
        out = _gamma(out, float(np.exp(rng.uniform(np.log(0.6), np.log(1.6)))))
    if rng.random() < 0.5:
        out = _contrast(out, float(rng.uniform(0.6, 1.0)))
    if rng.random() < 0.5:
        out = _blur(out, float(rng.uniform(0.5, 4.0)))
    if rng.random() < 0.5:
        out = _noise(out, float(rng.uniform(2.0, 16.0)), int(rng.integers(2**31)))
    if rng.random() < 0.5:
        out = _rotate(out, float(rng.uniform(-25.0, 25.0)))
    if rng.random() < 0.3:  # resolution loss: as if the upload were REFERENCE_SIDE → 128..400 px
        h, w = out.shape[:2]
        small = _downscale(out, max(8, round(max(h, w) * rng.uniform(128, 400) / REFERENCE_SIDE)))
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.3:
        out = _jpeg(out, int(rng.integers(20, 91)))
    if rng.random() < 0.5:
        out = np.ascontiguousarray(out[:, ::-1])
    before, after = grey_percentile(img, INTENSITY_PERCENTILE), grey_percentile(out, INTENSITY_PERCENTILE)
    return _scaled(out, before / after) if after > 0 else out
