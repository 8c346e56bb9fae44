"""Seeded mutation fuzzing of the upload path: JPEG, PNG and DICOM files, mutated byte-wise and where their headers
declare sizes, sent raw or in multipart framings that are themselves mangled, to every route that takes an upload
(/v1/predict, /v1/predict/batch, /v1/explain, /v2 infer). Any 5xx, any exception out of the app and any case slower
than `--case-timeout` fails the run; failing cases are written to `--out` to be replayed.

    python -m bench.fuzz --cases 2000 --seed 1                    # in-process, on tiny models (CI)
    python -m bench.fuzz --cases 50000 --models-dir models        # `make fuzz`: the bundled models, longer

The same seed gives the same cases. Research tool, not for clinical use.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "mri" / "Testing" / "glioma_tumor" / "image(1).jpg"
V2_NAME = "mri-classifier"
SEED_SIZE = 96  # seed images are small, so that thousands of cases decode in seconds


@dataclass(frozen=True)
class Case:
    """One request: method path, headers and body, and how it was made (for the report)."""

    route: str
    content_type: str | None
    body: bytes
    recipe: str


def _grey() -> np.ndarray:
    img = cv2.imread(str(FIXTURE), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(img, (SEED_SIZE, SEED_SIZE), interpolation=cv2.INTER_AREA)


def _dicom(grey: np.ndarray, frames: int = 1) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fuzz", str(frames)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.WindowCenter, ds.WindowWidth = 510.0, 1021.0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.stack([grey.astype(np.uint16) * 4] * frames).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def seeds() -> dict[str, tuple[bytes, str]]:
    """{name: (file bytes, its content type)}: the formats the service reads, a few variants each."""
    grey = _grey()
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    out = {
        "jpeg": (cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes(), "image/jpeg"),
        "jpeg-progressive": (
            cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
            "image/jpeg",
        ),
        "png-grey": (cv2.imencode(".png", grey)[1].tobytes(), "image/png"),
        "png-16bit": (cv2.imencode(".png", grey.astype(np.uint16) * 257)[1].tobytes(), "image/png"),
        "png-rgba": (cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_BGR2BGRA))[1].tobytes(), "image/png"),
        "dicom": (_dicom(grey), "application/dicom"),
        "dicom-frames": (_dicom(grey, 2), "application/dicom"),
    }
    return out


# ---- byte mutators: each takes (data, rng) and returns new bytes --------------------------------------------------
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


def flip_bits(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(len(b)))
        b[i] ^= 1 << int(rng.integers(8))
    return bytes(b)


def set_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        b[int(rng.integers(len(b)))] = int(rng.choice([0, 0xFF, 0x7F, 0x80, int(rng.integers(256))]))
    return bytes(b)


def insert_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    i = int(rng.integers(len(data) + 1))
    return data[:i] + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes() + data[i:]


def delete_range(data: bytes, rng: np.random.Generator) -> bytes:
    i = int(rng.integers(len(data)))
    return data[:i] + data[i + int(rng.integers(1, max(2, len(data) // 8))) :]


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def duplicate_range(data: bytes, rng: np.random.Generator) -> bytes:
    i = int(rng.integers(len(data)))
    j = min(len(data), i + int(rng.integers(1, 256)))
    return data[:j] + data[i:j] * int(rng.integers(1, 8)) + data[j:]


def header_sizes(data: bytes, rng: np.random.Generator) -> bytes:
    """Overwrite a 2- or 4-byte field near the start (where JPEG, PNG and DICOM headers declare sizes and lengths)
    with an extreme value, big- or little-endian."""
    b = bytearray(data)
    width = int(rng.choice([2, 4]))
    i = int(rng.integers(0, max(1, min(len(b) - width, 400))))
    value = int(rng.choice(INTERESTING)) & ((1 << (8 * width)) - 1)
    b[i : i + width] = value.to_bytes(width, str(rng.choice(["big", "little"])))  # type: ignore[arg-type]
    return bytes(b)


MUTATORS: list[Callable[[bytes, np.random.Generator], bytes]] = [
    flip_bits,
    set_bytes,
    insert_bytes,
    delete_range,
    truncate,
    duplicate_range,
    header_sizes,
]


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, list[str]]:
    """One to four stacked mutations."""
    names = []
    for _ in range(int(rng.integers(1, 5))):
        if not data:
            break
        m = MUTATORS[int(rng.integers(len(MUTATORS)))]
        data = m(data, rng)
        names.append(m.__name__)
    return data, names


# ---- framings ------------------------------------------------------------------------------------------------------
def multipart(parts: list[tuple[str, str, bytes, str]], boundary: str) -> bytes:
    """A multipart/form-data body of (field, filename, bytes, content type) parts."""
    out = b""
    for field, name, data, ctype in parts:
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode()


def mangle_multipart(body: bytes, rng: np.random.Generator, boundary: str) -> tuple[bytes, str]:
    """Break the framing itself: the boundary, the CRLFs, the headers or the closing delimiter."""
    kind = int(rng.integers(6))
    if kind == 0:
        return body.replace(f"--{boundary}--".encode(), b"", 1), "no-closing-boundary"
    if kind == 1:
        return body.replace(b"\r\n\r\n", b"\n", 1), "header-body-separator"
    if kind == 2:
        return body.replace(b"Content-Disposition", b"Content-Dispositio\x00", 1), "bad-disposition"
    if kind == 3:
        return body.replace(boundary.encode(), boundary[:-1].encode(), 1), "wrong-boundary"
    if kind == 4:
        return body[: int(rng.integers(len(body)))], "truncated-framing"
    return mutate(body, rng)[0], "bytes-of-framing"


class Generator:
    """The cases of one seed, in a fixed order."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.seeds = seeds()
        self.names = sorted(self.seeds)

    def _file(self) -> tuple[bytes, str, str]:
        name = self.names[int(self.rng.integers(len(self.names)))]
        data, ctype = self.seeds[name]
        if self.rng.random() < 0.9:
            data, how = mutate(data, self.rng)
            return data, ctype, f"{name}:{'+'.join(how)}"
        return data, ctype, f"{name}:intact"

    def case(self) -> Case:
        rng = self.rng
        route = str(rng.choice(["/v1/predict", "/v1/predict", "/v1/predict/batch", "/v1/explain", "v2"]))
        data, ctype, recipe = self._file()
        if route == "v2":
            files = [data] + [self._file()[0] for _ in range(int(rng.integers(0, 3)))]
            payload = [base64.b64encode(f).decode() for f in files]
            doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(files)], "data": payload}]}
            body = json.dumps(doc).encode()
            if rng.random() < 0.3:
                body, how = mutate(body, rng)
                recipe += f" json:{'+'.join(how)}"
            return Case(f"/v2/models/{V2_NAME}/infer", "application/json", body, recipe)
        framing = int(rng.integers(4))
        if framing == 0 and route != "/v1/predict/batch":  # the raw file as the body, under some content type
            declared = str(rng.choice([ctype, ctype, "image/png", "application/octet-stream", "text/plain", ""]))
            return Case(route, declared or None, data, recipe + f" raw:{declared or 'none'}")
        boundary = f"fz{int(rng.integers(1 << 30)):x}"
        n = int(rng.integers(2, 5)) if route == "/v1/predict/batch" else 1
        parts = [("file", f"f{i}.img", data if i == 0 else self._file()[0], ctype) for i in range(n)]
        if rng.random() < 0.1:
            parts.append(("other", "x.txt", b"not a file field", "text/plain"))
        body = multipart(parts, boundary)
        declared = f"multipart/form-data; boundary={boundary}"
        if framing == 3:
            body, mangled = mangle_multipart(body, rng, boundary)
            recipe += f" multipart:{mangled}"
            if rng.random() < 0.2:
                declared = str(rng.choice(["multipart/form-data", f"multipart/form-data; boundary={boundary}x"]))
        return Case(route, declared, body, recipe)

    def __iter__(self) -> Iterator[Case]:
        while True:
            yield self.case()


@dataclass
class Result:
    cases: int
    statuses: Counter[int]
    failures: list[tuple[Case, str]]
    seconds: float
    slowest: float


def run(app_or_url: object, cases: int, seed: int, case_timeout: float = 30.0, progress: bool = False) -> Result:
    """Send `cases` cases to a FastAPI app (in-process) or a server URL; a 5xx, an exception or a case slower than
    case_timeout is a failure."""
    import httpx
    from fastapi.testclient import TestClient

    client: TestClient | httpx.Client
    if isinstance(app_or_url, str):
        client = httpx.Client(base_url=app_or_url, timeout=case_timeout + 5)
    else:
        client = TestClient(app_or_url, raise_server_exceptions=True)  # type: ignore[arg-type]
    statuses: Counter[int] = Counter()
    failures: list[tuple[Case, str]] = []
    slowest = 0.0
    start = time.perf_counter()
    with client:
        for i, case in enumerate(Generator(seed)):
            if i == cases:
                break
            headers = {"content-type": case.content_type} if case.content_type else {}
            t = time.perf_counter()
            try:
                r = client.post(case.route, content=case.body, headers=headers)
                status = r.status_code
            except Exception as e:  # an exception out of the app, or a connection lost
                failures.append((case, f"exception {type(e).__name__}: {e}"))
                continue
            took = time.perf_counter() - t
            slowest = max(slowest, took)
            statuses[status] += 1
            if status >= 500:
                failures.append((case, f"status {status}: {r.text[:200]}"))
            elif took > case_timeout:
                failures.append((case, f"took {took:.1f} s"))
            if progress and (i + 1) % 500 == 0:
                print(f"fuzz: {i + 1}/{cases} cases, {len(failures)} failures, statuses {dict(statuses)}", flush=True)
    return Result(
        sum(statuses.values()) + len([f for f in failures if f[1].startswith("exception")]),
        statuses,
        failures,
        time.perf_counter() - start,
        slowest,
    )


def save_failures(failures: list[tuple[Case, str]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for k, (case, why) in enumerate(failures):
        (out / f"case-{k}.bin").write_bytes(case.body)
        meta = {"route": case.route, "content_type": case.content_type, "recipe": case.recipe, "failure": why}
        (out / f"case-{k}.json").write_text(json.dumps(meta, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--models-dir", type=Path, default=None, help="models to serve (default: tiny test models)")
    ap.add_argument("--url", default=None, help="fuzz a running server instead of an in-process app")
    ap.add_argument(
        "--case-timeout",
        type=float,
        default=30.0,
        help="a case slower than this fails (seconds; the service's own deadline answers 504 at 30 s)",
    )
    ap.add_argument("--out", type=Path, default=Path("out/fuzz-failures"), help="where failing cases are written")
    args = ap.parse_args(argv)
    target: object = args.url
    if target is None:
        from service.config import Settings
        from service.main import create_app

        models = args.models_dir
        if models is None:
            from tests.utils import make_cam_ensemble

            models = Path(tempfile.mkdtemp(prefix="fuzz-models-"))
            make_cam_ensemble(models)
        target = create_app(Settings(models_dir=models))
    r = run(target, args.cases, args.seed, args.case_timeout, progress=True)
    print(
        f"fuzz: {r.cases} cases (seed {args.seed}) in {r.seconds:.1f} s, slowest {r.slowest:.2f} s; statuses "
        f"{dict(sorted(r.statuses.items()))}; {len(r.failures)} failures"
    )
    if r.failures:
        save_failures(r.failures, args.out)
        for case, why in r.failures[:10]:
            print(f"  FAIL {case.route} [{case.recipe}]: {why}")
        print(f"failing cases written to {args.out}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
