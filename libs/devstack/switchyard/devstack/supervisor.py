"""Supervision of the local platform (``./switchyard up``): a part that crashes (API, worker, engine,
Triton, ...) is restarted with exponential backoff, as a Kubernetes ``restartPolicy: Always`` would,
and a part that keeps failing stops the platform.

The policy (:class:`RestartHistory`) is pure and takes the time as an argument; the supervisor polls
its parts without blocking (a restarted part's readiness is checked on later polls), so one slow part
never delays noticing another one's crash.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from switchyard.devstack.procs import Proc


class RestartPolicy(BaseSettings):
    """Backoff 1 s, 2 s, 4 s ... capped at 30 s; back to 1 s once a part has stayed up ``reset_after_s``
    (the kubelet's CrashLoopBackOff: 10 s ... 5 min, reset after 10 min; shorter here, where a restart
    costs seconds). A part that fails again after ``max_restarts`` restarts within the last ``window_s``
    is given up on: the platform stops, naming it (a kubelet would retry forever; a developer's
    terminal is better served by an error)."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_RESTART_")

    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    reset_after_s: float = Field(default=60.0, gt=0)
    max_restarts: int = Field(default=5, ge=0)
    window_s: float = Field(default=300.0, gt=0)

    def describe(self) -> str:
        return (f"restarted after {self.backoff_initial_s:g}s, doubling up to {self.backoff_max_s:g}s; "
                f"one that fails again after {self.max_restarts} restarts within {self.window_s:g}s stops the platform")


@dataclass
class RestartHistory:
    """One part's failures and restarts; ``now`` is any monotonic clock's reading."""

    policy: RestartPolicy
    streak: int = 0  # failures since the part last stayed up reset_after_s: the backoff's exponent
    up_since: float | None = None
    restarts: deque[float] = field(default_factory=deque)  # when each restart within the window was decided

    def ready(self, now: float) -> None:
        self.up_since = now

    def failed(self, now: float) -> float | None:
        """The part failed (crashed, or never became ready): seconds to wait before restarting it, or
        None when it keeps failing."""
        if self.up_since is not None and now - self.up_since >= self.policy.reset_after_s:
            self.streak = 0
        self.up_since = None
        while self.restarts and now - self.restarts[0] > self.policy.window_s:
            self.restarts.popleft()
        if len(self.restarts) >= self.policy.max_restarts:
            return None
        delay = min(self.policy.backoff_initial_s * 2.0 ** min(self.streak, 62), self.policy.backoff_max_s)
        self.streak += 1
        self.restarts.append(now)
        return delay


class GaveUp(RuntimeError):
    """A part kept failing; the message names it, says why and ends with its last log lines."""


class State(Enum):
    UP = "up"
    WAITING = "waiting"  # dead, restarts at ``_Part.at``
    STARTING = "starting"  # restarted, must be ready by ``_Part.at``


@dataclass
class _Part:
    proc: Proc
    history: RestartHistory
    state: State = State.UP
    at: float = 0.0
    pids: list[int] = field(default_factory=list)  # every pid the part has run as, oldest first


def _print(line: str) -> None:
    print(f"Switchyard: {line}", flush=True)


def _how_it_ended(proc: Proc) -> str:
    code = proc.popen.returncode if proc.popen is not None else None
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Watches processes that have started and are ready, and restarts those that die: call
    :meth:`poll` often (``run`` does), from one thread."""

    def __init__(self, procs: Mapping[str, Proc], policy: RestartPolicy | None = None, *,
                 clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = _print) -> None:
        self.policy = policy or RestartPolicy()
        self.clock, self.log = clock, log
        now = clock()
        # The parts started so far (a process defined but never started is not ours to start).
        self._parts = {name: _Part(p, RestartHistory(self.policy), pids=[p.popen.pid]) for name, p in procs.items() if p.popen is not None}
        for part in self._parts.values():
            part.history.ready(now)
        self.gave_up: GaveUp | None = None

    def state(self, name: str) -> State:
        return self._parts[name].state

    def pids(self, name: str) -> list[int]:
        return list(self._parts[name].pids)

    def settled(self) -> bool:
        """Every part is up (none waiting for its restart or its readiness)."""
        return all(p.state is State.UP for p in self._parts.values())

    def poll(self) -> None:
        """Notice dead parts, restart those whose backoff has passed, promote ready ones; raises
        :class:`GaveUp` when a part keeps failing."""
        for name, part in self._parts.items():
            now = self.clock()
            proc = part.proc
            if part.state is State.UP:
                if not proc.alive():
                    self._failed(name, part, now, _how_it_ended(proc))
            elif part.state is State.WAITING:
                if now >= part.at:
                    try:
                        proc.start()
                    except OSError as e:  # e.g. its binary was removed meanwhile
                        self._failed(name, part, now, f"could not be started ({e})")
                        continue
                    assert proc.popen is not None
                    part.pids.append(proc.popen.pid)
                    part.state, part.at = State.STARTING, now + proc.ready_timeout_s
            elif not proc.alive():
                self._failed(name, part, now, f"{_how_it_ended(proc)} while starting")
            elif proc.ready():
                part.state = State.UP
                part.history.ready(now)
                self.log(f"{name} is back (pid {part.pids[-1]}, restart {len(part.pids) - 1})")
            elif now >= part.at:
                self._failed(name, part, now, f"was not ready {proc.ready_timeout_s:g}s after its restart")

    def _failed(self, name: str, part: _Part, now: float, why: str) -> None:
        # Reap what is left of its process group (a child of it may still hold its port).
        part.proc.kill()
        delay = part.history.failed(now)
        if delay is None:
            raise GaveUp(f"{name} {why} and keeps failing ({self.policy.max_restarts} restarts within "
                         f"{self.policy.window_s:g}s); last log lines of {part.proc.log_path}:\n{part.proc.tail()}")
        part.state, part.at = State.WAITING, now + delay
        line = (f"{name} (pid {part.pids[-1]}) {why}; restarting it in {delay:g}s "
                f"(restart {len(part.history.restarts)} of at most {self.policy.max_restarts} within {self.policy.window_s:g}s)")
        part.proc.note(f"--- switchyard up: {line} ---")
        self.log(f"{line}; log: {part.proc.log_path}")

    def run(self, stop: threading.Event, interval_s: float = 0.5) -> None:
        """Poll until ``stop`` is set; raises :class:`GaveUp`."""
        while not stop.wait(interval_s):
            self.poll()

    @contextmanager
    def in_background(self, interval_s: float = 0.2) -> Iterator[Supervisor]:
        """Supervise from a thread while the block runs (tests); a part given up on is raised at the end."""
        stop = threading.Event()

        def loop() -> None:
            try:
                self.run(stop, interval_s)
            except GaveUp as e:
                self.gave_up = e
                self.log(str(e))

        thread = threading.Thread(target=loop, name="switchyard-supervisor", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
        if self.gave_up is not None:
            raise self.gave_up
