"""API server: ``python -m switchyard.api`` (host/port from SWITCHYARD_API_HOST/PORT, processes
from SWITCHYARD_API_WORKERS; see switchyard.api.server)."""

from __future__ import annotations

import atexit
import sys

from switchyard.common.metrics_page import fresh_multiprocess_dir, remove_multiprocess_dir


def main() -> None:
    # Before anything imports prometheus_client (it reads PROMETHEUS_MULTIPROC_DIR once): this
    # start's own, empty directory for every API process's metric files (one page sums them).
    fresh_multiprocess_dir("switchyard-api-metrics-")
    atexit.register(remove_multiprocess_dir)
    from switchyard.api.server import run

    run(sys.argv[1:])


if __name__ == "__main__":
    main()
