"""The README's run command: `python -m switchyard.devstack up` (what `./switchyard up` execs)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable

import httpx

from switchyard.devstack.procs import free_port, python_env, tcp_ready


def _up(dsn: str, http_port: int) -> tuple[subprocess.Popen[str], dict[str, int]]:
    ports = {"--api-port": free_port(), "--temporal-port": free_port(), "--temporal-ui-port": free_port(), "--engine-port": free_port(),
             "--gemma-port": free_port(), "--sglang-port": free_port(), "--vllm-port": free_port(), "--http-port": http_port}
    cmd = [sys.executable, "-m", "switchyard.devstack", "up", "--state-dir", tempfile.mkdtemp(prefix="switchyard-up-"), "--postgres-dsn", dsn]
    for flag, port in ports.items():
        cmd += [flag, str(port)]
    return subprocess.Popen(cmd, env=python_env({}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), {k[2:]: v for k, v in ports.items()}


def _wait_line(proc: subprocess.Popen[str], text: str, lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return
    raise AssertionError("".join(lines))


def test_up_serves_the_ingress_and_ctrl_c_stops_everything(scratch_dsn: Callable[[], str]) -> None:
    http_port = free_port()
    proc, ports = _up(scratch_dsn(), http_port)
    lines: list[str] = []
    try:
        _wait_line(proc, "Ctrl-C stops everything", lines)
        out = "".join(lines)
        assert f"http://127.0.0.1:{http_port}" in out and "Temporal" in out and "llama.cpp" in out
        assert httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=5).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    for name, port in ports.items():
        assert not tcp_ready(port)(), f"{name} port {port} still open after Ctrl-C"


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
