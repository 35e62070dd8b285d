"""The README's run command: `python -m switchyard.devstack up` (what `./switchyard up` execs)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from switchyard.devstack.procs import free_port, python_env, tcp_ready


def _up(dsn: str, http_port: int, state_dir: str | None = None, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], dict[str, int]]:
    ports = {"--api-port": free_port(), "--temporal-port": free_port(), "--temporal-ui-port": free_port(), "--engine-port": free_port(),
             "--gemma-port": free_port(), "--sglang-port": free_port(), "--vllm-port": free_port(), "--http-port": http_port}
    cmd = [sys.executable, "-m", "switchyard.devstack", "up", "--state-dir", state_dir or tempfile.mkdtemp(prefix="switchyard-up-"), "--postgres-dsn", dsn]
    for flag, port in ports.items():
        cmd += [flag, str(port)]
    return subprocess.Popen(cmd, env=python_env(env or {}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), {k[2:]: v for k, v in ports.items()}


def _wait_line(proc: subprocess.Popen[str], text: str, lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return
    raise AssertionError("".join(lines))


def test_up_serves_the_ingress_and_ctrl_c_stops_everything(scratch_dsn: Callable[[], str]) -> None:
    http_port = free_port()
    state = tempfile.mkdtemp(prefix="switchyard-up-")
    overlay = Path(state) / "my-models.yaml"  # a user's overlay on top of infra/catalog/models.yaml
    overlay.write_text("models: []\n")
    proc, ports = _up(scratch_dsn(), http_port, state, {"SWITCHYARD_CATALOG_OVERLAYS": str(overlay)})
    lines: list[str] = []
    try:
        _wait_line(proc, "Ctrl-C stops everything", lines)
        out = "".join(lines)
        assert f"http://127.0.0.1:{http_port}" in out and "Temporal" in out and "llama.cpp" in out
        assert httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=5).status_code == 200
        # The first start made a development key: in the state folder (owner-only) and in the summary.
        dev_key = Path(state) / "dev-key"
        assert stat.S_IMODE(dev_key.stat().st_mode) == 0o600 and dev_key.read_text().strip() in out
        _reload_adds_a_model(http_port, ports["engine-port"], state, overlay, {"Authorization": f"Bearer {dev_key.read_text().strip()}"})
        _a_crashed_api_is_restarted(proc, http_port, lines)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    for name, port in ports.items():
        assert not tcp_ready(port)(), f"{name} port {port} still open after Ctrl-C"


def _reload_adds_a_model(http_port: int, engine_port: int, state: str, overlay: Path, auth: dict[str, str]) -> None:
    """`./switchyard reload` (what it execs): the running platform serves a model added to its catalog."""
    def ids() -> set[str]:
        return {m["id"] for m in httpx.get(f"http://127.0.0.1:{http_port}/v1/models", timeout=5, headers=auth).json()["data"]}

    assert "smollm2-mine" not in ids()
    overlay.write_text(json.dumps({"models": [{"name": "smollm2-mine", "domain": "llm", "kind": "chat", "context_length": 2048, "endpoints": [
        {"engine": "llamacpp", "url": f"http://127.0.0.1:{engine_port}", "engine_model": "smollm2-135m-instruct"}]}]}))
    r = subprocess.run([sys.executable, "-m", "switchyard.devstack", "reload", "--state-dir", state], env=python_env({}), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 20
    while "smollm2-mine" not in ids():
        assert time.monotonic() < deadline, "the reloaded catalog never served the new model"
        time.sleep(0.2)


def _child(parent: int, module: str) -> int | None:
    """The pid of ``parent``'s child process running ``python -m module``, if any."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat_file.read_text().rsplit(")", 1)[1].split()[1])
            argv = (stat_file.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        if ppid == parent and module.encode() in argv:
            return int(stat_file.parent.name)
    return None


def _a_crashed_api_is_restarted(proc: subprocess.Popen[str], http_port: int, lines: list[str]) -> None:
    """`kill -9` of the API: `up` restarts it (a new process) and the ingress serves again; it does not stop."""
    old = _child(proc.pid, "switchyard.api")
    assert old is not None, "no API process under `up`"
    os.kill(old, signal.SIGKILL)
    _wait_line(proc, "api is back", lines)
    assert f"api (pid {old}) was killed by SIGKILL; restarting it in 1s" in "".join(lines)
    new = _child(proc.pid, "switchyard.api")
    assert new is not None and new != old and not Path(f"/proc/{old}").exists()
    assert httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=5).status_code == 200
    assert proc.poll() is None


def test_up_exits_non_zero_and_says_what_failed(scratch_dsn: Callable[[], str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc, ports = _up(scratch_dsn(), taken.getsockname()[1])
        out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 1, out
    assert "failed to start" in out and "nginx" in out, out
    for name, port in ports.items():
        if name != "http-port":
            assert not tcp_ready(port)(), f"{name} left running after the failed start"
