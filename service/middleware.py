"""Pure-ASGI middleware: a request deadline (408/504) and a body limit (413 before anything is parsed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> dict[str, str]:
        return {"detail": f"Request body too large: the limit is {self.max_bytes:,} bytes."}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await send_json(send, 400, {"detail": "Invalid Content-Length header."})
                return
            if too_large:
                await send_json(send, 413, self._too_large())
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
                await send_json(send, 413, self._too_large())
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
                detail = f"The service did not finish within {self.seconds:g} s; try again later."
                await send_json(send, 504, {"detail": detail})
            else:
                detail = f"The request body did not arrive within {self.seconds:g} s."
                await send_json(send, 408, {"detail": detail})
