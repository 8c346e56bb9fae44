"""Pull the image bytes out of a request body held in memory: multipart field `file`, or a raw
image body. Nothing is written to disk."""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

FIELD = "file"
RAW_TYPES = {b"image/jpeg", b"image/png", b"application/dicom", b"application/octet-stream"}


class UploadError(ValueError):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


def _parse_multipart(body: bytes, boundary: bytes) -> list[_Part]:
    parts: list[_Part] = []
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1].headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.extend(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise UploadError(f"Malformed multipart body: {e}") from e
    return parts


def _form_files(params: dict[bytes, bytes], body: bytes) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of every multipart field `file`, in the order sent."""
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError("multipart/form-data without a boundary parameter.")
    files = []
    for part in _parse_multipart(body, boundary):
        _, disp = parse_options_header(part.headers.get(b"content-disposition", b""))
        if disp.get(b"name") == FIELD.encode():
            name = disp.get(b"filename")
            files.append((name.decode(errors="replace") if name is not None else None, bytes(part.data)))
    return files


def extract_images(content_type: str | None, body: bytes) -> list[tuple[str | None, bytes]]:
    """Every uploaded image as (file name, bytes), in the order sent: each multipart field `file`, or a raw
    image body (no name). UploadError with the HTTP status to answer when there is none."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        return [(None, extract_image(content_type, body))]
    files = _form_files(params, body)
    if not files:
        raise UploadError(f"Missing form field '{FIELD}': send each image as a multipart field '{FIELD}'.")
    return files


MISSING_FIELD = f"Missing form field '{FIELD}': send the image as multipart field '{FIELD}'."


def extract_image(content_type: str | None, body: bytes) -> bytes:
    """The uploaded image bytes, or UploadError with the HTTP status to answer."""
    ctype, params = parse_options_header(content_type or "")
    if ctype == b"multipart/form-data":
        files = _form_files(params, body)
        if not files:
            raise UploadError(MISSING_FIELD)
        if len(files) > 1:
            raise UploadError(
                f"Send exactly one image in field '{FIELD}'; got {len(files)} (several: POST /v1/predict/batch)."
            )
        return files[0][1]
    if ctype in RAW_TYPES:
        return body
    if not body:
        raise UploadError(f"No image: send multipart/form-data with field '{FIELD}', or a raw image body.")
    raise UploadError(
        f"Unsupported Content-Type {ctype.decode(errors='replace')!r}: send multipart/form-data with field "
        f"'{FIELD}', or a raw body with Content-Type image/jpeg, image/png or application/dicom.",
        status=415,
    )
