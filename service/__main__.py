"""`python -m service`: serve on HOST/PORT (or MRI_HOST/MRI_PORT), default 0.0.0.0:8000."""

import logging
import os

import uvicorn

from service.api.memory import limit_malloc_arenas
from service.api.observability import JsonFormatter
from service.config import Settings
from service.main import create_app


def local_url(host: str, port: int) -> str:
    """The address to open in a browser on this machine (a wildcard bind is reached as localhost)."""
    shown = "localhost" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"


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
    uvicorn.run(
        create_app(settings, url=local_url(host, port)),
        host=host,
        port=port,
        proxy_headers=True,
        access_log=False,
        log_config=None,
        timeout_keep_alive=5,
        # SIGTERM: uvicorn stops accepting and waits for the requests in flight, at most this long
        timeout_graceful_shutdown=settings.drain_timeout_s,
    )


if __name__ == "__main__":
    main()
