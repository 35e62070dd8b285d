"""API server: ``python -m switchyard.api`` (host/port from SWITCHYARD_API_HOST/PORT)."""

from __future__ import annotations

import os
import sys

import uvicorn

from switchyard.api.app import create_app
from switchyard.api.settings import ApiSettings
from switchyard.common.catalog import CatalogHolder
from switchyard.common.logs import setup_logging
from switchyard.common.payload_codec import keys_or_exit

MIN_PEPPER_CHARS = 16


def main() -> None:
    settings = ApiSettings()
    if "--check" in sys.argv[1:]:
        # Packaging smoke test: every import resolves and the app builds.
        create_app(settings, CatalogHolder.empty())
        print(f"switchyard-api ok: would listen on {settings.api_host}:{settings.api_port}")
        return
    setup_logging(settings.log_level)
    catalog = CatalogHolder.load_or_exit("switchyard-api", settings, os.environ)
    if len(settings.key_pepper.get_secret_value()) < MIN_PEPPER_CHARS:
        sys.exit(f"switchyard-api: SWITCHYARD_KEY_PEPPER must be set to a secret of at least {MIN_PEPPER_CHARS} characters "
                 "(API keys are stored as HMACs with it; e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    keys_or_exit("switchyard-api", settings)  # no key, no start: nothing is stored or sent to Temporal in clear
    uvicorn.run(create_app(settings, catalog), host=settings.api_host, port=settings.api_port, log_config=None, access_log=False,
                timeout_graceful_shutdown=5, ws_ping_interval=settings.stream_keepalive_s)


if __name__ == "__main__":
    main()
