"""`python -m service`: serve on HOST/PORT (or MRI_HOST/MRI_PORT), default 0.0.0.0:8000."""

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

from service.api.memory import limit_malloc_arenas
from service.api.observability import JsonFormatter
from service.config import Settings
from service.main import create_app


def local_url(host: str, port: int) -> str:
    """The address to open in a browser on this machine (a wildcard bind is reached as localhost)."""
    shown = "localhost" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"


class LameDuckServer(uvicorn.Server):
    """uvicorn, with a lame-duck period before its graceful shutdown.

    uvicorn stops listening as soon as SIGTERM arrives and closes every connection it has accepted but not yet read
    a request from, so a client that had just sent an upload loses it. Here the first SIGTERM only marks the service
    not ready (`on_lame_duck`) and starts a timer; the listeners close when it fires, by which time the uploads
    sent before the signal are being answered. A second signal, or SIGINT, stops at once as uvicorn does.
    """

    def __init__(self, config: uvicorn.Config, delay_s: float, on_lame_duck: Callable[[], None]) -> None:
        super().__init__(config)
        self.delay_s, self.on_lame_duck = delay_s, on_lame_duck
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self.delay_s <= 0 or self._timer is not None:
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # uvicorn re-raises it at exit, as without the delay
        self.on_lame_duck()
        self._timer = threading.Timer(self.delay_s, self._shut_down)
        self._timer.daemon = True
        self._timer.start()

    def _shut_down(self) -> None:
        logging.getLogger("service").info("lame-duck period over: draining")
        self.should_exit = True


def main() -> None:
    settings = Settings()
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    if limit_malloc_arenas(settings.malloc_arenas):  # before the thread pool and the models' threads exist
        logging.getLogger("service").info("malloc arenas capped at %d", settings.malloc_arenas)
    host = os.environ.get("HOST", settings.host)
    port = int(os.environ.get("PORT", settings.port))
    # our middleware writes the access log (with request id); uvicorn's own lines go through the same handler
    app = create_app(settings, url=local_url(host, port))

    def lame_duck() -> None:
        app.state.mri.lame_duck = True
        logging.getLogger("service").info("SIGTERM: not ready; draining in %g s", settings.shutdown_delay_s)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        proxy_headers=True,
        access_log=False,
        log_config=None,
        timeout_keep_alive=5,
        # after the lame-duck delay uvicorn stops accepting and waits for the requests in flight, at most this long
        timeout_graceful_shutdown=settings.drain_timeout_s,
    )
    LameDuckServer(config, settings.shutdown_delay_s, lame_duck).run()


if __name__ == "__main__":
    main()
