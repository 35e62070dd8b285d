"""Prometheus for the local stack: the file_sd target files of the running processes, and the
Debian package's server run on infra/prometheus's configuration (rules included).

The scrape config (infra/prometheus/prometheus.yml) reads ``targets/<job>*.yml`` beside itself;
the stack writes those files into ``<state>/prometheus/targets/`` with its real (often random)
ports, so the same configuration serves ``./switchyard up``, the integration tests and a cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from switchyard.common.catalog import Catalog
from switchyard.common.metrics import endpoint_label
from switchyard.devstack.procs import Proc, http_ready

SETUP_HINT = "run ./switchyard setup (it installs the Debian package `prometheus`)"


def find_prometheus() -> str | None:
    for c in (os.environ.get("SWITCHYARD_PROMETHEUS_BIN"), shutil.which("prometheus"), "/usr/bin/prometheus"):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def target(host_port: str, **labels: str) -> dict[str, Any]:
    return {"targets": [host_port], "labels": labels} if labels else {"targets": [host_port]}


def engine_labels(catalog: Catalog, url: str) -> dict[str, str]:
    """``model`` and ``endpoint`` of an engine URL: the first catalog model that lists it (one
    target per engine, not per model, so its counters are not scraped twice)."""
    for model in catalog.registry.models:
        for position, endpoint in enumerate(model.endpoints):
            if endpoint.url.rstrip("/") == url.rstrip("/"):
                return {"model": model.name, "endpoint": endpoint_label(endpoint.engine, position)}
    return {}


def write_targets(directory: Path, groups: Mapping[str, Iterable[dict[str, Any]]]) -> None:
    """One file per scrape job (``<job>.yml``); a job without targets gets an empty list, and a
    file of a job no longer given is removed (file_sd reads changes without a restart)."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.yml"):
        if old.stem not in groups:
            old.unlink()
    for job, entries in groups.items():
        path = directory / f"{job}.yml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(list(entries), sort_keys=False))
        tmp.replace(path)  # atomic: Prometheus never reads half a file


def render_config(directory: Path, repo_config: Path, *, scrape_interval: str | None = None) -> Path:
    """infra/prometheus/prometheus.yml copied into ``directory`` (targets/ beside it), rules read from
    the repository; ``scrape_interval``: a shorter global interval (tests)."""
    config = yaml.safe_load(repo_config.read_text())
    config["rule_files"] = [str(repo_config.parent / r) for r in config.get("rule_files", [])]
    if scrape_interval:
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = scrape_interval
        for job in config["scrape_configs"]:
            job.pop("scrape_interval", None)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "prometheus.yml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def prometheus_proc(binary: str, config: Path, port: int, log: Path) -> Proc:
    """The server on 127.0.0.1:port, its data beside the config; ready when /-/ready answers."""
    cmd = [binary, f"--config.file={config}", f"--storage.tsdb.path={config.parent / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
           "--storage.tsdb.retention.time=2d", "--web.enable-lifecycle"]
    return Proc("prometheus", cmd, dict(os.environ), log, http_ready(f"http://127.0.0.1:{port}/-/ready"), ready_timeout_s=60)
