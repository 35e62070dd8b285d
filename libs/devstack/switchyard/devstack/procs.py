"""Child processes with log files, readiness checks and kill/restart (the launcher and tests use it)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx


class StartError(RuntimeError):
    pass


def python_env(extra: dict[str, str]) -> dict[str, str]:
    """Environment for a Python child: it imports exactly what this process can (venv or Pants sandbox)."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


_handed_out: set[int] = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range, so that ports other programs take by
    binding to 0 (Temporal's internal services do) never collide with the ones handed out here.
    A port is handed out once per process: a stack picks about twenty before starting anything,
    and a repeated pick (a 2 % chance per stack) made nginx fail to bind in CI."""
    for _ in range(200):
        port = random.randrange(20000, 30000)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise StartError("no free port in 20000-29999")


def tcp_ready(port: int, host: str = "127.0.0.1") -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def http_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


@dataclass
class Proc:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    ready: Callable[[], bool]
    ready_timeout_s: float = 60.0
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # Where this run's output starts in the log (a restarted process appends to its predecessor's).
    log_offset: int = field(default=0, init=False, repr=False)

    def log_contains(self, text: str) -> Callable[[], bool]:
        """Readiness by a line of the current run's log, never one that a previous run wrote."""
        def check() -> bool:
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(self.log_offset)
                    return text in f.read().decode(errors="replace")
            except FileNotFoundError:
                return False

        return check

    def note(self, text: str) -> None:
        """Append a line of our own to the log (the supervisor marks restarts)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(text + "\n")

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.log_offset = log.tell()
        # Own process group: a signal to the launcher's group does not hit children twice.
        self.popen = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartError(f"{self.name} exited with code {self.popen.returncode if self.popen else '?'}; last log lines:\n{self.tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise StartError(f"{self.name} not ready after {self.ready_timeout_s:.0f}s; last log lines:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group (crash simulation)."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()
