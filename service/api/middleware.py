"""Pure-ASGI middleware: a request deadline (408/504) and a body limit (413 before anything is parsed); the body
drain and error shapes they share with admission (503)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any


async def send_json(
    send: Any, status: int, payload: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def error_body(path: str, message: str) -> dict[str, str]:
    """Each API's error shape: {"error": …} on /v2 (Open Inference Protocol), {"detail": …} elsewhere."""
    return {"error": message} if path.startswith("/v2/") else {"detail": message}


async def drain(receive: Any, limit_bytes: int, seconds: float, received: int = 0) -> None:
    """Read and drop the rest of a request body, up to `limit_bytes` and `seconds`: a client that sends its whole
    body before it reads the answer would otherwise see a connection reset (the kernel answers unread data with
    one), which discards the status in flight."""

    async def read() -> None:
        total = received
        while total <= limit_bytes:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return
            total += len(message.get("body", b""))

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), seconds)


def too_large_message(max_bytes: int) -> str:
    return f"Request body too large: the limit is {max_bytes:,} bytes."


def late_body_message(seconds: float) -> str:
    return f"The request body did not arrive within {seconds:g} s."


def late_work_message(seconds: float) -> str:
    return f"The service did not finish within {seconds:g} s; try again later."


class BodyLimitMiddleware:
    """413 before anything is parsed, for a declared Content-Length over the limit or a streamed body that
    grows past it.

    A client that sends its whole body before it reads the answer (Python's urllib, many mobile HTTP stacks)
    would see "connection reset" if the server closed with the upload still arriving: the kernel answers unread
    data with a reset, which discards the 413 in flight. So the rest of the body is read and dropped first, up
    to `drain_bytes` and `drain_seconds`, unless the client asked `Expect: 100-continue` (it has sent nothing
    yet and reads the 413 at once). Past either bound the 413 is sent anyway and the connection closes."""

    def __init__(self, app: Any, max_bytes: int, drain_bytes: int = 64 * 1024 * 1024, drain_seconds: float = 10.0):
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds

    async def _refuse(self, scope: Any, send: Any, receive: Any, received: int, expects_continue: bool) -> None:
        if not expects_continue:
            await drain(receive, self.drain_bytes, self.drain_seconds, received)
        await send_json(send, 413, error_body(scope["path"], too_large_message(self.max_bytes)))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        expects_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await send_json(send, 400, {"detail": "Invalid Content-Length header."})
                return
            if too_large:
                await self._refuse(scope, send, receive, 0, expects_continue)
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                more = message.get("more_body", False)
                await self._refuse(scope, send, receive, total, expects_continue or not more)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        await self.app(scope, replay, send)


class TimeoutMiddleware:
    """Abandons a request that takes longer than `seconds` in total: 408 if the client had not finished
    sending its body (slow or stalled uploads), 504 if the service had it and was still working. A model
    call already running in a worker thread finishes in the background; its result is dropped."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.seconds <= 0:
            await self.app(scope, receive, send)
            return
        body_done = scope["method"] in ("GET", "HEAD", "OPTIONS")
        started = False

        async def tracked_receive() -> dict[str, Any]:
            nonlocal body_done
            message = dict(await receive())
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_done = True
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, tracked_receive, tracked_send), self.seconds)
        except TimeoutError:
            if started:  # too late for a status code; the connection is closed by the server
                return
            if body_done:
                await send_json(send, 504, {"detail": late_work_message(self.seconds)})
            else:
                await send_json(send, 408, {"detail": late_body_message(self.seconds)})
