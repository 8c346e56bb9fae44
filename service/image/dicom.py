"""DICOM (Part 10) uploads → the same uint8 RGB image the JPEG/PNG path produces.

Pixel values go through the file's modality LUT (RescaleSlope/Intercept), then its VOI window
(WindowCenter/WindowWidth) when it has one, else a robust window (0.5th–99.5th percentile); MONOCHROME1
is inverted so that the background is dark, as in the training images. Multi-frame files need a
`frame` index. Sizes are checked from the header before any pixels are decoded.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

DICM_OFFSET = 128
ROBUST_WINDOW = (0.5, 99.5)


class DicomError(ValueError):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def is_dicom(data: bytes) -> bool:
    return data[DICM_OFFSET : DICM_OFFSET + 4] == b"DICM"


def _read(data: bytes) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as e:
        raise DicomError(f"The DICOM file could not be read: {e}") from e


def _first(value: Any) -> float | None:
    """A DICOM decimal string that may be multi-valued → its first value (None if absent/unusable)."""
    from pydicom.multival import MultiValue

    if value is None:
        return None
    try:
        return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)
    except (TypeError, ValueError, IndexError):
        return None


def _window(values: np.ndarray, ds: Any) -> np.ndarray:
    """Modality values → 0–1 with the file's first VOI window, else the robust percentile window."""
    c, w = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if c is not None and w is not None and w > 1:
        lo = c - 0.5 - (w - 1) / 2  # DICOM PS3.3 C.11.2.1.2 linear function
        return np.clip((values - lo) / (w - 1), 0.0, 1.0)
    lo, hi = np.percentile(values, ROBUST_WINDOW)
    if hi <= lo:
        return np.zeros(values.shape, np.float64)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def decode_dicom(data: bytes, max_pixels: int, frame: int | None = None) -> np.ndarray:
    """DICOM bytes → uint8 RGB (H, W, 3). Raises DicomError with the HTTP status (415 or 422).

    pydicom reads elements lazily, so a damaged element (a length that does not fit its value representation, a
    truncated value) raises wherever it is first touched; every such parse error of the upload is a 422."""
    import struct

    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        return _decode(data, max_pixels, frame)
    except DicomError:
        raise
    except (
        BytesLengthException,
        InvalidDicomError,
        struct.error,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
        EOFError,
        OSError,
        NotImplementedError,  # an unknown value representation in a damaged header
    ) as e:
        raise DicomError(f"The DICOM file is damaged: {e}") from e


def _decode(data: bytes, max_pixels: int, frame: int | None) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, pixel_array

    ds = _read(data)
    if "PixelData" not in ds:
        raise DicomError("The DICOM file has no image (no PixelData element).")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1))
    except (AttributeError, TypeError, ValueError) as e:
        raise DicomError(f"The DICOM file's image header is incomplete: {e}") from e
    if rows <= 0 or cols <= 0:
        raise DicomError(f"The DICOM image declares impossible dimensions {cols}×{rows}.")
    if rows * cols > max_pixels:
        raise DicomError(f"The DICOM image is {cols}×{rows} = {rows * cols:,} pixels; the limit is {max_pixels:,}.")
    if frames > 1 and frame is None:
        raise DicomError(
            f"This DICOM file is a multi-frame volume ({frames} frames); pass the slice to classify as "
            f"query parameter frame=0…{frames - 1}."
        )
    index = 0 if frame is None else frame
    if not 0 <= index < frames:
        raise DicomError(f"frame={index} is out of range: the file has {frames} frame(s), 0…{frames - 1}.")
    try:
        arr = pixel_array(ds, index=index) if frames > 1 else ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise DicomError(
            f"Cannot decode DICOM pixel data with transfer syntax {syntax} ({e}); send it uncompressed "
            "(Explicit VR Little Endian).",
            status=415,
        ) from e
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise DicomError(f"The DICOM pixel data is damaged: {e}") from e
    arr = np.asarray(arr)
    if samples == 3 and arr.ndim == 3 and arr.shape[-1] == 3:  # colour DICOM (rare for MRI): min-max to 8 bit
        a = arr.astype(np.float64)
        span = a.max() - a.min()
        return np.zeros(a.shape, np.uint8) if span == 0 else np.rint((a - a.min()) * 255 / span).astype(np.uint8)
    if arr.ndim != 2:
        raise DicomError(f"Unsupported DICOM pixel layout {arr.shape} (SamplesPerPixel {samples}).")
    values = np.asarray(apply_modality_lut(arr, ds), np.float64)
    unit = _window(values, ds)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        unit = 1.0 - unit
    grey = np.rint(unit * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
