"""`python -m service`: serve on HOST/PORT (or MRI_HOST/MRI_PORT), default 0.0.0.0:8000."""

import logging
import os

import uvicorn

from service.config import Settings
from service.main import create_app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    host = os.environ.get("HOST", settings.host)
    port = int(os.environ.get("PORT", settings.port))
    uvicorn.run(create_app(settings), host=host, port=port, proxy_headers=True)


if __name__ == "__main__":
    main()
