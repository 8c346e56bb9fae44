"""Coverage-guided fuzzing of the decoders with atheris (libFuzzer for Python): the bytes of an upload, as a raw body
or inside a multipart body, through `extract_images` and `preprocess_bytes` (sniffing, JPEG/PNG/DICOM decoding, the
pixel and frame checks, the crop). An input may decode to a crop or be refused with UploadError/ImageDecodeError (a
4xx in the service); any other exception is a bug, and libFuzzer stops and writes the input as `crash-*` under
--artifacts. Our modules and pydicom are instrumented, so inputs that reach new branches of them are kept and
mutated further, which the seeded byte mutations of `bench.fuzz` cannot do.

    python -m bench.covfuzz --seconds 600          # make covfuzz
    python -m bench.covfuzz --runs 3000            # CI's short version (tests/bench/test_fuzz.py)

The starting corpus is bench.fuzz's seeds (JPEG, PNG in three kinds, DICOM single and multi-frame). Needs the dev
extra (atheris). Research tool, not for clinical use.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import warnings
from pathlib import Path

BOUNDARY = "covfuzz"
MAX_PIXELS = 4_000_000  # small enough that a decodable mutant never takes seconds
MAX_LEN = 64 * 1024


def write_corpus(directory: Path) -> None:
    from bench.fuzz import seeds

    directory.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in seeds().items():  # with one_input's leading byte: as the raw body, and in a multipart
        frame = 2 if name == "dicom-frames" else 0
        (directory / f"{name}-raw").write_bytes(bytes([frame]) + data)
        (directory / f"{name}-multipart").write_bytes(bytes([frame | 1]) + data)


def one_input(data: bytes) -> int:
    """The property under test: a crop, or a refusal the service turns into a 4xx. Returns the crops made."""
    from service.image.preprocessing import ImageDecodeError, preprocess_bytes
    from service.image.upload import UploadError, extract_images

    # the first byte picks how the rest arrives: bit 0 as the file of a multipart body (else the raw body), bit 1
    # with `frame=0` (a multi-frame DICOM needs one; other formats ignore it)
    mode, payload = (data[0] if data else 0), data[1:]
    as_multipart, frame = bool(mode & 1), (0 if mode & 2 else None)
    if as_multipart:
        # built here, not with bench.clients.multipart_body: importing bench.clients imports service.image before
        # main() instruments it, and the decoders would run uninstrumented
        body = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'.encode()
            + payload
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
    else:
        body, content_type = payload, "application/octet-stream"
    try:
        files = extract_images(content_type, body)
    except UploadError:
        return 0
    crops = 0
    for _, image in files:
        with contextlib.suppress(ImageDecodeError):
            preprocess_bytes(image, MAX_PIXELS, frame)
            crops += 1
    return crops


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=600, help="stop after this long (libFuzzer -max_total_time)")
    p.add_argument("--runs", type=int, default=0, help="stop after this many inputs instead (libFuzzer -runs)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--corpus", type=Path, help="corpus folder, grown as coverage grows (default: a temporary one)")
    p.add_argument("--artifacts", type=Path, default=Path("out/covfuzz"), help="where a crashing input is written")
    args = p.parse_args(argv)
    import atheris

    # pydicom warns on every malformed element it reads; the fuzzer reads millions
    warnings.filterwarnings("ignore", module="pydicom")

    if "service.image.preprocessing" in sys.modules:  # instrumenting happens at import: too late for it now
        raise SystemExit("service.image was imported before atheris could instrument it")
    with atheris.instrument_imports(include=["service.image", "pydicom"]):
        # pydicom is imported lazily by the service: instrument it now
        import pydicom  # noqa: F401

        import service.image.preprocessing
        import service.image.upload  # noqa: F401
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix="covfuzz-"))
    write_corpus(corpus)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    limit = f"-runs={args.runs}" if args.runs else f"-max_total_time={args.seconds}"
    flags = [f"-seed={args.seed}", f"-max_len={MAX_LEN}", "-timeout=30", "-rss_limit_mb=4096"]
    flags += [f"-artifact_prefix={args.artifacts}/", limit, str(corpus)]
    atheris.Setup([sys.argv[0], *flags], one_input)
    atheris.Fuzz()  # exits the process: 0 when the budget is spent without a failure
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
