"""The one implementation of decode → crop → resize → colour order, shared by trainer and service.

numpy + OpenCV only: the service image imports this module and must never pull in TensorFlow.

Contract of the models' input (also written into the manifest):
  RGB channel order, float32 pixel values 0–255, NHWC, 150×150×3. Normalisation is inside the models.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A backstop for OpenCV's own decoder; we check declared dimensions before decoding as well.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(100_000_000))

import cv2
import numpy as np

IMAGE_SIZE = 150
CHANNEL_ORDER = "RGB"
DEFAULT_MAX_PIXELS = 40_000_000

# Cropping parameters (the student project's recipe, made explicit).
BLUR_KERNEL = 5
THRESHOLD = 45
MORPH_ITERATIONS = 2
MIN_CONTOUR_AREA_FRACTION = 0.01  # a "brain" smaller than 1% of the image is noise → fall back
MIN_CROP_SIDE = 8

# Intensity normalisation (preprocessing version 2): before the crop, scale the image linearly so that its
# 99th grey-level percentile lands on INTENSITY_TARGET. Exports differ in brightness between scanners and
# collections, and in this dataset brightness is confounded with the class (official Training: glioma images
# are darkest, median 99th percentile 160, no_tumor brightest, 227), a shortcut a model can learn instead.
INTENSITY_PERCENTILE = 99.0
INTENSITY_TARGET = 175.0  # the median of that percentile over the official Training images (measured)
INTENSITY_MIN_LEVEL = 16  # darker than this there is nothing to scale (a blank image): left alone

# Crop threshold of version 3: relative to the image's background instead of the fixed THRESHOLD. The
# background level is the median grey of a frame BORDER_FRACTION of the shorter side wide (the blurred image);
# the threshold sits THRESHOLD_OFFSET grey levels above it, capped at THRESHOLD (a head touching the frame
# would otherwise raise it). Measured on 250 Training images: a fixed threshold of 45 moves the
# box under a gamma change (mean IoU with the unshifted box 0.71 at gamma 1.6, 0.94 at contrast ×0.6), this
# one much less (0.95, 0.99; `python -m trainer crops`); and it keeps the dim edge of the head that 45 cuts
# off (21 of the 250 Training images get a box with IoU < 0.8 against version 2's, all 21 larger).
BORDER_FRACTION = 0.02
THRESHOLD_OFFSET = 20

# Version 4: version 3's threshold, applied to the blurred grey image
# after a gamma that puts its grey GAMMA_PERCENTILE-th percentile on GAMMA_TARGET (the median over the 2870
# official Training images after the intensity step), clipped to GAMMA_LIMITS. Only the
# mask sees that gamma; the pixels the models get are version 3's. Percentiles follow a gamma change of the
# upload, so the mask does too. Measured on 250 Training images (`python -m trainer crops --versions 3 4`): the
# box moved (IoU < 0.8) on 2.0 % of them under gamma 0.6 and 1.6 % under gamma 1.6, against version 3's 10.8 %
# and 9.2 % (within about a point of version 3 under the other shifts); unshifted it differs from version 3's
# on 3.2 % (8 images: on about half it keeps the whole head where version 3 cut it, on the others it is
# tighter). Gammas above 1.3 cut bright heads apart (6 % of the images with a limit of 3.0), hence the limit.
# The shipped version-3 ensemble loses 6.5 points under gamma 0.6 to its crop moving (docs/evaluation.md,
# "accuracy, unshifted box"), which is what this version is for.
GAMMA_PERCENTILE = 90.0
GAMMA_TARGET = 97.0
GAMMA_LIMITS = (0.3, 1.3)

_CROP_PARAMS = {
    "method": "largest_external_contour_extreme_points",
    "blur_kernel": BLUR_KERNEL,
    "threshold": THRESHOLD,
    "morph_iterations": MORPH_ITERATIONS,
    "min_contour_area_fraction": MIN_CONTOUR_AREA_FRACTION,
}
# Version 1 (no intensity step): what the models exported before version 2 were trained on. A manifest
# declares the preprocessing its models need; the service applies exactly that (preprocessing_version).
PREPROCESSING_V1: dict[str, Any] = {
    "image_size": IMAGE_SIZE,
    "channel_order": CHANNEL_ORDER,
    "dtype": "float32",
    "value_range": [0.0, 255.0],
    "layout": "NHWC",
    "crop": _CROP_PARAMS,
    "resize_interpolation": "INTER_AREA",
}
PREPROCESSING_V2: dict[str, Any] = {
    "version": 2,
    **PREPROCESSING_V1,
    "intensity": {
        "method": "scale_grey_percentile_before_crop",
        "percentile": INTENSITY_PERCENTILE,
        "target": INTENSITY_TARGET,
        "min_level": INTENSITY_MIN_LEVEL,
    },
}
PREPROCESSING_V3: dict[str, Any] = {
    **PREPROCESSING_V2,
    "version": 3,
    "crop": {
        **{k: v for k, v in _CROP_PARAMS.items() if k != "threshold"},
        "threshold": {
            "method": "border_median_plus_offset",
            "border_fraction": BORDER_FRACTION,
            "offset": THRESHOLD_OFFSET,
            "max": THRESHOLD,
        },
    },
}
PREPROCESSING_V4: dict[str, Any] = {
    **PREPROCESSING_V3,
    "version": 4,
    "crop": {
        **PREPROCESSING_V3["crop"],
        "mask_gamma": {
            "method": "grey_percentile_to_target",
            "percentile": GAMMA_PERCENTILE,
            "target": GAMMA_TARGET,
            "pivot": INTENSITY_TARGET,
            "limits": list(GAMMA_LIMITS),
        },
    },
}
PREPROCESSING_VERSIONS: dict[int, dict[str, Any]] = {
    1: PREPROCESSING_V1,
    2: PREPROCESSING_V2,
    3: PREPROCESSING_V3,
    4: PREPROCESSING_V4,
}
PREPROCESSING_PARAMS = PREPROCESSING_V4  # what new training runs use (the shipped ensemble's)


def preprocessing_version(params: Mapping[str, Any]) -> int:
    """The version of a manifest's `preprocessing` block; ValueError when this code does not implement it
    exactly (a model fed differently prepared pixels would answer confidently and wrongly)."""
    version = params.get("version", 1)
    known = PREPROCESSING_VERSIONS.get(version) if isinstance(version, int) else None
    if known is None:
        raise ValueError(
            f"preprocessing version {version!r} is not implemented here (known: {sorted(PREPROCESSING_VERSIONS)})"
        )
    if json.loads(json.dumps(params)) != json.loads(json.dumps(known)):
        diff = sorted(k for k in set(params) | set(known) if params.get(k) != known.get(k))
        raise ValueError(
            f"preprocessing version {version} differs from what this code implements in: {', '.join(diff)}"
        )
    return version


UNSUPPORTED_MESSAGE = "Unsupported media type: by its content this is not a JPEG, PNG or DICOM image."
EMPTY_MESSAGE = "The upload is empty (0 bytes)."


def undecodable_message(fmt: str) -> str:
    return f"The {fmt.upper()} data could not be decoded (truncated or corrupt)."


class ImageDecodeError(ValueError):
    """The bytes are not an image we can use. ``status`` is the HTTP status the service answers."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CropResult:
    image: np.ndarray  # uint8 RGB, IMAGE_SIZE × IMAGE_SIZE × 3
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in the decoded image
    fallback: bool  # True when no sane contour was found and the whole image was used


def sniff_format(data: bytes) -> str | None:
    """The image format by its magic bytes, whatever the filename or Content-Type claims."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageDecodeError("The PNG file is damaged: its IHDR header is missing.")
    _check_png_chunks(data)
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _check_png_chunks(data: bytes) -> None:
    """Refuse a PNG whose chunk declares more bytes than the file holds before decoding it: libpng spends seconds
    on one such chunk (a 6 KB upload declaring a 4 GB IDAT cost 6 s), a cheap way to tie up the service."""
    i = 8
    while i + 8 <= len(data):
        length, kind = struct.unpack(">I", data[i : i + 4])[0], data[i + 4 : i + 8]
        if i + 12 + length > len(data):
            raise ImageDecodeError(
                f"The PNG file is truncated or damaged: its {kind.decode('latin-1')!r} chunk declares {length:,} "
                f"bytes, more than the file holds."
            )
        if kind == b"IEND":
            return
        i += 12 + length


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + length
    raise ImageDecodeError("The JPEG file is truncated or damaged: no frame header was found.")


def declared_size(data: bytes, fmt: str) -> tuple[int, int]:
    """Width and height the header declares, read without decoding the pixels."""
    return _png_size(data) if fmt == "png" else _jpeg_size(data)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        # 16-bit scans rarely use the full range (12-bit detectors): stretch what is there.
        lo, hi = int(img.min()), int(img.max())
        if hi <= lo:
            return np.zeros(img.shape, np.uint8)
        scaled = (img.astype(np.float32) - lo) * (255.0 / (hi - lo))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    raise ImageDecodeError(f"Unsupported pixel type {img.dtype}.")


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Any OpenCV-decoded image (grey, grey+alpha, BGR, BGRA; 8 or 16 bit) → uint8 RGB."""
    img = _to_uint8(img)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 2:  # grey + alpha: composite over black, the MRI background
        grey = (img[:, :, 0].astype(np.uint16) * img[:, :, 1] // 255).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        alpha = img[:, :, 3:4].astype(np.uint16)
        bgr = (img[:, :, :3].astype(np.uint16) * alpha // 255).astype(np.uint8)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    raise ImageDecodeError(f"Unsupported number of channels: {channels}.")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int | None = None) -> np.ndarray:
    """Bytes of a JPEG, PNG or DICOM file → uint8 RGB array. Raises ImageDecodeError (415 or 422).

    `frame` picks the slice of a multi-frame DICOM file; other formats ignore it.
    """
    if not data:
        raise ImageDecodeError(EMPTY_MESSAGE)
    from service.image.dicom import DicomError, decode_dicom, is_dicom

    if is_dicom(data):
        try:
            return decode_dicom(data, max_pixels, frame)
        except DicomError as e:
            raise ImageDecodeError(str(e), status=e.status) from e
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError(UNSUPPORTED_MESSAGE, status=415)
    width, height = declared_size(data, fmt)
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"The image declares impossible dimensions {width}×{height}.")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"The image declares {width}×{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}; refusing to decode it."
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_UNCHANGED keeps 16-bit depth and alpha so we convert them ourselves;
    # libjpeg turns CMYK/YCCK JPEGs into BGR for us.
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageDecodeError(undecodable_message(fmt))
    return to_rgb_uint8(img)


def background_threshold(gray: np.ndarray) -> float:
    """Version 3's crop threshold for a blurred grey image: the median of its frame (BORDER_FRACTION of the
    shorter side wide, at least 2 px) plus THRESHOLD_OFFSET, at most THRESHOLD."""
    h, w = gray.shape[:2]
    b = max(2, round(min(h, w) * BORDER_FRACTION))
    frame = np.concatenate([gray[:b].ravel(), gray[-b:].ravel(), gray[b:-b, :b].ravel(), gray[b:-b, -b:].ravel()])
    return min(float(np.median(frame)) + THRESHOLD_OFFSET, float(THRESHOLD))


def mask_gamma(gray: np.ndarray) -> np.ndarray:
    """Version 4: the grey image under the gamma (pivot INTENSITY_TARGET, within GAMMA_LIMITS) that puts its
    GAMMA_PERCENTILE-th percentile on GAMMA_TARGET; unchanged when that percentile is 0 or ≥ the pivot."""
    level = _grey_level(gray, GAMMA_PERCENTILE)
    if level <= 0 or level >= INTENSITY_TARGET:
        return gray
    g = float(np.clip(np.log(GAMMA_TARGET / INTENSITY_TARGET) / np.log(level / INTENSITY_TARGET), *GAMMA_LIMITS))
    lut = np.clip(np.rint(INTENSITY_TARGET * (np.arange(256) / INTENSITY_TARGET) ** g), 0, 255).astype(np.uint8)
    return np.asarray(cv2.LUT(gray, lut))


def find_brain_box(
    rgb: np.ndarray, relative: bool = False, gamma: bool = False
) -> tuple[tuple[int, int, int, int], bool]:
    """Box (x0, y0, x1, y1) around the largest external contour; (whole image, True) on fallback. The mask
    thresholds grey levels at THRESHOLD, or (`relative`, version 3) at background_threshold, computed (`gamma`,
    version 4) on mask_gamma's image."""
    h, w = rgb.shape[:2]
    whole = (0, 0, w, h)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    gray = cv2.GaussianBlur(gray, (BLUR_KERNEL, BLUR_KERNEL), 0)
    if gamma:
        gray = mask_gamma(gray)
    threshold = background_threshold(gray) if relative else THRESHOLD
    mask = cv2.threshold(gray, threshold, 255, cv2.THRESH_BINARY)[1]
    mask = cv2.erode(mask, None, iterations=MORPH_ITERATIONS)
    mask = cv2.dilate(mask, None, iterations=MORPH_ITERATIONS)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return whole, True
    largest = max(contours, key=cv2.contourArea)
    if cv2.contourArea(largest) < MIN_CONTOUR_AREA_FRACTION * h * w:
        return whole, True
    pts = largest.reshape(-1, 2)
    x0, y0 = int(pts[:, 0].min()), int(pts[:, 1].min())
    x1, y1 = int(pts[:, 0].max()) + 1, int(pts[:, 1].max()) + 1
    if x1 - x0 < MIN_CROP_SIDE or y1 - y0 < MIN_CROP_SIDE:
        return whole, True
    return (x0, y0, x1, y1), False


def _grey_level(grey: np.ndarray, percentile: float) -> int:
    """The grey level below which `percentile` % of a uint8 grey image's pixels lie (exact, from the histogram)."""
    cumulative = np.bincount(grey.ravel(), minlength=256).cumsum()
    return int(np.searchsorted(cumulative, percentile / 100.0 * cumulative[-1]))


def grey_percentile(rgb: np.ndarray, percentile: float) -> int:
    """The grey level below which `percentile` % of the image's pixels lie (exact, from the histogram)."""
    return _grey_level(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), percentile)


def normalise_intensity(rgb: np.ndarray) -> np.ndarray:
    """Version 2's intensity step: linear scaling that puts the grey 99th percentile at INTENSITY_TARGET."""
    level = grey_percentile(rgb, INTENSITY_PERCENTILE)
    if level < INTENSITY_MIN_LEVEL:
        return rgb
    lut = np.clip(np.rint(np.arange(256, dtype=np.float32) * (INTENSITY_TARGET / level)), 0, 255).astype(np.uint8)
    return np.asarray(cv2.LUT(rgb, lut))  # = lut[rgb], 15× faster on a 2048² upload (1.7 vs 26 ms)


def crop_and_resize(
    rgb: np.ndarray,
    size: int = IMAGE_SIZE,
    params: Mapping[str, Any] = PREPROCESSING_PARAMS,
    box: tuple[int, int, int, int] | None = None,
) -> CropResult:
    """(Version 2 on: normalise the intensity, then) crop to the brain (version 3: at a threshold relative to
    the background; version 4: on a gamma-normalised mask) and resize to size×size. `params` is the manifest's
    preprocessing block. Input and output are uint8 RGB; the box is in the input's coordinates. A given `box`
    (x0, y0, x1, y1) replaces the one the crop would find (the robustness measurement holds it fixed so; the
    service never passes one)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB H×W×3, got {rgb.dtype} {rgb.shape}")
    version = preprocessing_version(params)
    if version >= 2:
        rgb = normalise_intensity(rgb)
    if box is None:
        box, fallback = find_brain_box(rgb, relative=version >= 3, gamma=version >= 4)
    else:
        h, w = rgb.shape[:2]
        if not (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h):
            raise ValueError(f"box {box} is not inside the {w}×{h} image")
        fallback = False
    x0, y0, x1, y1 = box
    crop = rgb[y0:y1, x0:x1]
    h, w = crop.shape[:2]
    interp = cv2.INTER_AREA if (h >= size and w >= size) else cv2.INTER_LINEAR
    resized = cv2.resize(crop, (size, size), interpolation=interp)
    return CropResult(np.ascontiguousarray(resized), box, fallback)


def preprocess_bytes(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    frame: int | None = None,
    params: Mapping[str, Any] = PREPROCESSING_PARAMS,
) -> CropResult:
    """Uploaded or on-disk file bytes → the 150×150 uint8 RGB crop the models see (under `params`, the
    manifest's preprocessing block)."""
    return crop_and_resize(decode_image(data, max_pixels, frame), IMAGE_SIZE, params)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N,)H×W×3 RGB → float32 NHWC batch with values 0–255, as the models expect."""
    batch = images if images.ndim == 4 else images[None]
    return batch.astype(np.float32)
