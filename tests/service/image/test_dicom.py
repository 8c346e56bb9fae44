"""DICOM uploads, built with pydicom from fixture images: windowing, inversion, frames, limits."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RLELossless, generate_uid

from service.image.dicom import DicomError, decode_dicom, is_dicom
from service.image.preprocessing import decode_image, preprocess_bytes
from tests.service.helpers import make_client
from tests.utils import MRI_FIXTURES

GLIOMA = MRI_FIXTURES / "Testing" / "glioma_tumor" / "image(1).jpg"


def grey_fixture(path: Path = GLIOMA) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)


def make_dicom(
    frames: list[np.ndarray],
    *,
    slope: float = 1.0,
    intercept: float = -1000.0,
    window: tuple[float, float] | None = (510.0, 1021.0),
    photometric: str = "MONOCHROME2",
    stored: str = "scaled",
) -> bytes:
    """16-bit MR DICOM whose modality values are grey × 4: stored = (grey × 4 − intercept) / slope."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = frames[0].shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    values = [(f.astype(np.float64) * 4 - intercept) / slope for f in frames]
    if photometric == "MONOCHROME1":
        values = [(255 * 4 - intercept) / slope - v + (-intercept / slope) for v in values]
    ds.PixelData = np.stack([np.rint(v).astype(np.uint16) for v in values]).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_window_from_the_file_reproduces_the_grey_image() -> None:
    grey = grey_fixture()
    data = make_dicom([grey])
    assert is_dicom(data)
    rgb = decode_dicom(data, 10**7)
    assert rgb.shape == (*grey.shape, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[:, :, 0].astype(int) - grey).max() <= 1  # the window maps grey×4 back to 0–255


def test_without_a_window_a_robust_window_is_used() -> None:
    grey = grey_fixture()
    rgb = decode_dicom(make_dicom([grey], slope=2.0, intercept=-50.0, window=None), 10**7)[:, :, 0]
    assert rgb.min() == 0 and rgb.max() == 255
    assert np.corrcoef(rgb.ravel(), grey.ravel())[0, 1] > 0.98


def test_monochrome1_is_inverted_back() -> None:
    grey = grey_fixture()
    normal = decode_dicom(make_dicom([grey], window=None), 10**7)
    inverted = decode_dicom(make_dicom([grey], window=None, photometric="MONOCHROME1"), 10**7)
    assert np.abs(normal.astype(int) - inverted).mean() < 2  # dark background either way


def test_dicom_crop_equals_the_jpeg_crop() -> None:
    jpeg = GLIOMA.read_bytes()
    from_dicom = preprocess_bytes(make_dicom([grey_fixture()]))
    from_jpeg = preprocess_bytes(jpeg)
    diff = np.abs(from_dicom.image.astype(int) - from_jpeg.image).mean()
    assert diff < 3  # the JPEG is colour-encoded grey; the DICOM is its grey channel


def test_multi_frame_needs_a_frame_and_limits_apply() -> None:
    frames = [grey_fixture(), 255 - grey_fixture()]
    data = make_dicom(frames)
    with pytest.raises(ValueError, match="multi-frame volume \\(2 frames\\)"):
        decode_image(data)
    second = decode_image(data, frame=1)
    assert np.abs(second[:, :, 0].astype(int) - frames[1]).max() <= 1
    with pytest.raises(ValueError, match="out of range"):
        decode_image(data, frame=2)
    with pytest.raises(ValueError, match="the limit is 1,000"):
        decode_image(data, max_pixels=1000, frame=0)


def test_damaged_and_compressed_dicom_are_4xx() -> None:
    data = make_dicom([grey_fixture()])
    with pytest.raises(ValueError) as e:
        decode_image(data[: len(data) // 2])
    assert getattr(e.value, "status", None) == 422
    header_only = data[:132] + b"\x02\x00\x10\x00UI\x04\x00junk"
    with pytest.raises(ValueError) as e:
        decode_image(header_only)
    assert getattr(e.value, "status", None) in (415, 422)


@pytest.fixture
def client(tiny_models: Path):  # type: ignore[no-untyped-def]
    with make_client(tiny_models) as c:
        yield c


def test_dicom_over_http(client: TestClient) -> None:
    single = make_dicom([grey_fixture()])
    r = client.post("/v1/predict", files={"file": ("scan.dcm", single, "application/dicom")})
    assert r.status_code == 200, r.text
    jpeg = client.post("/v1/predict", files={"file": ("scan.jpg", GLIOMA.read_bytes(), "image/jpeg")}).json()
    assert r.json()["label"] == jpeg["label"]
    raw = client.post("/v1/predict", content=single, headers={"Content-Type": "application/dicom"})
    assert raw.status_code == 200
    multi = make_dicom([grey_fixture(), grey_fixture()])
    r = client.post("/v1/predict", files={"file": ("vol.dcm", multi, "application/dicom")})
    assert r.status_code == 422 and "frame=0…1" in r.json()["detail"]
    r = client.post("/v1/predict?frame=1", files={"file": ("vol.dcm", multi, "application/dicom")})
    assert r.status_code == 200
    r = client.post("/v1/predict?frame=-1", files={"file": ("vol.dcm", multi, "application/dicom")})
    assert r.status_code == 422
    assert client.get("/health/ready").status_code == 200


def test_rle_compressed_dicom_decodes_or_is_415() -> None:
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(make_dicom([grey_fixture()])))
    try:
        ds.compress(RLELossless)
    except Exception as e:  # encoder unavailable: nothing to check
        pytest.skip(f"RLE encoder unavailable: {e}")
    buf = io.BytesIO()
    ds.save_as(buf)
    rgb = decode_image(buf.getvalue())
    assert np.abs(rgb[:, :, 0].astype(int) - grey_fixture()).max() <= 1


def test_a_dicom_with_a_damaged_element_is_a_422_wherever_pydicom_trips() -> None:
    """Found by bench/fuzz.py: pydicom reads elements lazily and raised BytesLengthException or NotImplementedError
    (unknown VR) from inside the decoder, which became 500s."""
    data = make_dicom([grey_fixture()])
    group_length = data.index(b"UL", 128)  # (0002,0000) UL: its 2-byte length made odd
    odd = data[: group_length + 2] + b"\x03" + data[group_length + 3 :]
    unknown_vr = data.replace(b"US", b"U\xff", 1)
    for damaged in (odd, unknown_vr):
        with pytest.raises(DicomError) as e:
            decode_dicom(damaged, 10**8)
        assert e.value.status == 422
