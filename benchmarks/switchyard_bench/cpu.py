"""CPU per component during a benchmark step, from Linux's /proc (user + system time per process).

A component is a set of process trees (a root pid and its descendants: uvicorn or LiteLLM workers,
Nginx's workers) or processes matched by name and command line (the machine-wide PostgreSQL's
backends of one database, Redis). A sampler thread reads them every ``every_s`` and adds up each
process's CPU-time deltas, so processes that come and go between samples are counted while seen.
Figures are percent of one core: a single-threaded process (a Python event loop) saturates at
~100 %; the machine at 100 × its core count.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TICK = os.sysconf("SC_CLK_TCK")

Select = Callable[[dict[int, "_Proc"]], set[int]]


@dataclass(frozen=True)
class _Proc:
    ppid: int
    comm: str
    cpu_s: float


def _read(pid: int) -> _Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # comm is in parentheses and may hold spaces: split after the last ')'.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return _Proc(int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / TICK)


def snapshot() -> dict[int, _Proc]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (p := _read(int(name))) is not None:
            out[int(name)] = p
    return out


def machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds, all CPU seconds) of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / TICK, sum(v[:8]) / TICK


def tree(*roots: int) -> Select:
    """These processes and all their descendants."""
    def select(procs: dict[int, _Proc]) -> set[int]:
        found = {r for r in roots if r in procs}
        grew = True
        while grew:
            kids = {pid for pid, p in procs.items() if p.ppid in found} - found
            found |= kids
            grew = bool(kids)
        return found

    return select


def only(*pids: int) -> Select:
    """These processes, without their children (the benchmark's own process started the stack)."""
    return lambda procs: {p for p in pids if p in procs}


def named(comm: str, cmdline_contains: str = "") -> Select:
    """Processes named ``comm`` whose command line holds ``cmdline_contains`` (a PostgreSQL backend's
    title names its database)."""
    def select(procs: dict[int, _Proc]) -> set[int]:
        out = set()
        for pid, p in procs.items():
            if p.comm != comm:
                continue
            if cmdline_contains:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if cmdline_contains.encode() not in f.read():
                            continue
                except OSError:
                    continue
            out.add(pid)
        return out

    return select


@dataclass
class Usage:
    """One step's CPU: per component, percent of one core (sum over its processes) and the busiest
    single process's percent; the machine's busy percent, and how much of it none of ours explains."""

    component: dict[str, float] = field(default_factory=dict)
    busiest_process: dict[str, float] = field(default_factory=dict)
    machine: float = 0.0
    other: float = 0.0


class Sampler:
    def __init__(self, components: dict[str, Select], every_s: float = 0.5) -> None:
        self.components = components
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._per_pid: dict[str, dict[int, float]] = {}
        self._last: dict[int, float] = {}
        self._t0 = 0.0
        self._m0 = (0.0, 0.0)

    def _sample(self) -> None:
        procs = snapshot()
        for name, select in self.components.items():
            acc = self._per_pid.setdefault(name, {})
            for pid in select(procs):
                now = procs[pid].cpu_s
                acc[pid] = acc.get(pid, 0.0) + now - self._last.get(pid, now)
        self._last = {pid: p.cpu_s for pid, p in procs.items()}

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def start(self) -> None:
        self._per_pid, self._stop = {}, threading.Event()
        self._last = {pid: p.cpu_s for pid, p in snapshot().items()}
        self._t0, self._m0 = time.perf_counter(), machine_busy_s()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> Usage:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._sample()
        wall = time.perf_counter() - self._t0
        busy, _ = machine_busy_s()
        u = Usage()
        for name, per_pid in self._per_pid.items():
            u.component[name] = round(100 * sum(per_pid.values()) / wall, 1)
            u.busiest_process[name] = round(100 * max(per_pid.values(), default=0.0) / wall, 1)
        u.machine = round(100 * (busy - self._m0[0]) / wall, 1)
        u.other = round(max(0.0, u.machine - sum(u.component.values())), 1)
        return u
