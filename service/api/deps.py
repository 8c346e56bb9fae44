"""Shared request dependencies: the app state and the optional API key.

The dependencies are `async def` although they never wait: FastAPI runs a plain `def` dependency in the thread pool,
which would cost every upload two hops between the event loop and a thread (docs/performance.md, "Where a
request's time goes")."""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field

from fastapi import Header, HTTPException, Request, status
from pydantic import SecretStr

from service.api.admission import Admission
from service.api.observability import Metrics
from service.config import Settings
from service.inference.batching import MicroBatcher
from service.inference.runtime import Ensemble


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    ensemble: Ensemble | None = None
    batcher: MicroBatcher | None = None
    admission: Admission = field(default_factory=lambda: Admission(64))
    ready: bool = False  # the models are loaded: the model routes serve
    not_ready_reason: str = "starting"
    # SIGTERM's lame-duck period (service/__main__.py): still serving, but the readiness probes say 503 so that
    # balancers stop sending
    lame_duck: bool = False
    extra: dict[str, object] = field(default_factory=dict)
    # each loaded ensemble's inference thread, by id(ensemble): a request that started before a reload
    # finishes on the ensemble it started with (service/api/repository.py)
    batchers: dict[int, MicroBatcher] = field(default_factory=dict)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def probe_ready(self) -> bool:
        """What /health/ready and /v2/health/ready answer."""
        return self.ready and not self.lame_duck

    @property
    def probe_reason(self) -> str:
        return "shutting down" if self.lame_duck else self.not_ready_reason

    def batcher_for(self, ensemble: Ensemble) -> MicroBatcher | None:
        return self.batchers.get(id(ensemble), self.batcher if ensemble is self.ensemble else None)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.mri
    return state


def key_matches(given: str | None, expected: SecretStr) -> bool:
    """A client's key against the configured one, in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


WRONG_KEY = "Missing or wrong X-API-Key header."


def not_ready_message(reason: str) -> str:
    return f"Models not ready: {reason}."


async def require_api_key(
    request: Request, x_api_key: str | None = Header(None, description="Needed when the server sets MRI_API_KEY.")
) -> None:
    expected = get_state(request).settings.api_key
    if expected is None:
        return
    if not key_matches(x_api_key, expected):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, WRONG_KEY)


async def ready_ensemble(request: Request) -> Ensemble:
    state = get_state(request)
    if not state.ready or state.ensemble is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, not_ready_message(state.not_ready_reason))
    return state.ensemble
