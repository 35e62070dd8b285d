"""Each process's own ``/metrics`` page (docs/metrics.md), on a port apart from the public one so
Nginx never exposes it.

A process with one Python interpreter serves its default registry. The API, which may run several
processes, uses prometheus-client's multiprocess mode: its entry point calls
``fresh_multiprocess_dir`` before anything imports prometheus-client (values then go to files in
that directory), and the parent process serves one page that sums every process's files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Final

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("switchyard.metrics")


def fresh_multiprocess_dir(prefix: str) -> Path:
    """A new, empty directory for this start's metric files, exported as PROMETHEUS_MULTIPROC_DIR
    (child processes inherit it). Must run before prometheus_client is imported: it reads the
    variable once. A directory left by an earlier start would add its counts to this one's."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def remove_multiprocess_dir() -> None:
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        shutil.rmtree(path, ignore_errors=True)


def serve(port: int, host: str, *, multiprocess: bool = False) -> bool:
    """Serve /metrics on host:port in a background thread; port 0 turns the page off. With
    ``multiprocess`` the page sums the files of every process (PROMETHEUS_MULTIPROC_DIR)."""
    if port == 0:
        log.info("metrics page off (SWITCHYARD_METRICS_PORT=0)")
        return False
    from prometheus_client import CollectorRegistry, start_http_server  # only now: see fresh_multiprocess_dir
    from prometheus_client.multiprocess import MultiProcessCollector

    if multiprocess:
        if not os.environ.get(MULTIPROC_ENV):
            raise RuntimeError(f"multiprocess metrics need {MULTIPROC_ENV} set before prometheus_client is imported")
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=host, registry=registry)
    else:
        start_http_server(port, addr=host)
    log.info("metrics page", extra={"fields": {"url": f"http://{host}:{port}/metrics", "multiprocess": multiprocess}})
    return True
