"""Serving the API: one process, or several (uvicorn workers, SWITCHYARD_API_WORKERS), with one
metrics page for all of them.

The entry point (``__main__``) has already pointed prometheus-client at a fresh multiprocess
directory, so every process's metrics go to files there and the page, served by the process that
starts the others, sums them (docs/metrics.md). Each API process creates its own Temporal Runtime,
whose metrics page is on ``temporal_metrics_port + i``, ``i`` being the process's slot.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import IO

import uvicorn
from fastapi import FastAPI

from switchyard.api.app import create_app
from switchyard.api.settings import ApiSettings
from switchyard.common import metrics_page
from switchyard.common.catalog import CatalogHolder
from switchyard.common.logs import setup_logging
from switchyard.common.payload_codec import keys_or_exit

MIN_PEPPER_CHARS = 16
# The slot lock a process holds for its life (released by the kernel when it exits, so a process
# uvicorn restarts takes the freed slot again).
_slot: list[IO[bytes]] = []


def claim_slot(workers: int) -> int:
    """This process's index among the API processes (0..workers-1): the first free slot lock in the
    multiprocess directory."""
    base = Path(os.environ[metrics_page.MULTIPROC_ENV])
    for i in range(workers):
        f = open(base / f"slot-{i}.lock", "wb")  # held open for the process's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        _slot.append(f)
        return i
    raise RuntimeError(f"more API processes than SWITCHYARD_API_WORKERS={workers}")


def _process_settings(settings: ApiSettings) -> ApiSettings:
    """The settings of this API process: its own Temporal SDK metrics port."""
    port = settings.temporal_metrics_port
    return settings.model_copy(update={"temporal_metrics_port": port + claim_slot(settings.api_workers) if port else 0})


def app_from_env() -> FastAPI:
    """uvicorn's app factory in each worker process (SWITCHYARD_API_WORKERS > 1): settings, catalog
    and keys read again from the environment the first process checked."""
    settings = ApiSettings()
    setup_logging(settings.log_level)
    catalog = CatalogHolder.load_or_exit("switchyard-api", settings, os.environ)
    return create_app(_process_settings(settings), catalog)


def run(argv: list[str]) -> None:
    settings = ApiSettings()
    if "--check" in argv:
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
    metrics_page.serve(settings.metrics_port, settings.metrics_host, multiprocess=True)
    options = {"host": settings.api_host, "port": settings.api_port, "log_config": None, "access_log": False,
               "timeout_graceful_shutdown": 5, "ws_ping_interval": settings.stream_keepalive_s,
               # Longer than Nginx keeps idle upstream connections (60 s): Nginx closes them, never this end
               # mid-reuse (uvicorn's default, 5 s, reset Nginx's reused connections: 503s under load).
               "timeout_keep_alive": 75}
    if settings.api_workers == 1:
        # One process: this one (it also reloads the catalog on SIGHUP).
        uvicorn.run(create_app(_process_settings(settings), catalog), **options)  # type: ignore[arg-type]
    else:
        # Several: uvicorn starts them (each builds its app) and restarts them on SIGHUP, which
        # reloads the catalog too.
        uvicorn.run("switchyard.api.server:app_from_env", factory=True, workers=settings.api_workers, **options)  # type: ignore[arg-type]
