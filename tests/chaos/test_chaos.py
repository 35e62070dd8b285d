"""Chaos (issue 15, item 5): with jobs in flight in every domain and every job's stream followed by a
client, one part of the platform fails at a time; the supervisor of `./switchyard up` restarts what
dies. Every scenario then checks the same invariants (chaos_kit.check_job): every accepted job ended
as it should (succeeded; failed with a clear error for bad input), none lost, none with two results,
no client stream with a gap, no token seen twice except after a ``reset`` (counted), and reports the
recovery time: from the fault to the end of the first new job of the affected path that succeeded
(probes, retried every 250 ms), and to the end of the last job that was in flight.

One stack for the whole suite (conftest.py), scenarios in sequence, each leaving every part up."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from chaos_kit import Chaos, Tracked, recovery, wait_until  # pants: no-infer-dep (a test util beside this file)
from conftest import SUPERVISOR_LOG  # pants: no-infer-dep (a test util beside this file)

from switchyard.devstack.procs import http_ready, tcp_ready
from switchyard.devstack.stack import LLM_MODEL, VLLM_MODEL, Stack
from switchyard.devstack.supervisor import Supervisor


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


def _pid(stack: Stack, name: str) -> int:
    proc = stack.procs[name]
    assert proc.popen is not None and proc.alive(), f"{name} is not running"
    return proc.popen.pid


def _kill9(stack: Stack, *names: str) -> str:
    """``kill -9`` of each part's process (not its group: a crash, not a stop); they are dead when this returns."""
    pids = {name: _pid(stack, name) for name in names}
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    for name, pid in pids.items():
        wait_until(lambda pid=pid: _dead(pid), f"{name} (pid {pid}) to die", 10)  # type: ignore[misc]
    return ", ".join(f"kill -9 {n}" for n in names)


def _back_after(since: float) -> dict[str, float]:
    """Seconds from ``since`` to each part's "is back" line of the supervisor (its restart was ready)."""
    out: dict[str, float] = {}
    for t, line in SUPERVISOR_LOG:
        if t >= since and " is back (pid " in line:
            out.setdefault(line.split(" is back", 1)[0], t - since)
    return out


def _restarts(sup: Supervisor, stack: Stack) -> dict[str, int]:
    return {name: len(sup.pids(name)) for name in stack.procs if stack.procs[name].popen is not None}


def _scenario(chaos: Chaos, sup: Supervisor, report: dict[str, Any], name: str, fault: Callable[[], str],
              probes: dict[str, Callable[[], bool]], recovery_s: float = 180, **workload: int) -> tuple[list[Tracked], dict[str, int]]:
    """Workload in flight, the fault, the recovery timed, every job checked; the report row filled."""
    stack = chaos.stack
    wait_until(sup.settled, "every part up before the fault", 120)
    runs_before = _restarts(sup, stack)
    first = len(chaos.jobs)
    jobs = chaos.workload(**workload)
    flying = chaos.in_flight(jobs)
    assert flying.get("llm", 0) >= 1, f"no LLM stream in flight at the fault: {flying}"
    t0 = time.monotonic()
    what = fault()
    rec = recovery(probes, t0, recovery_s)
    last_end = chaos.join(jobs) - t0
    wait_until(sup.settled, "every part up again after the fault", 240)
    everything = chaos.jobs[first:]  # the workload and every probe accepted meanwhile
    chaos.join(everything)
    totals = chaos.check(everything)
    restarted = {n: c - runs_before.get(n, 1) for n, c in _restarts(sup, stack).items() if c > runs_before.get(n, 1)}
    back = _back_after(t0)
    report.update({
        "scenario": f"{name}: {what}",
        "in flight at the fault": ", ".join(f"{d} {n}" for d, n in sorted(flying.items())),
        "recovery: first new job ok": ", ".join(f"{p} {s:.1f} s" for p, s in rec.items()),
        "all in-flight jobs ended": f"{last_end:.1f} s",
        "resets": totals["resets"],
        "tokens again after reset": totals["repeated_tokens"],
        "client reconnects": totals["reconnects"],
        "restarted by the supervisor (ready after)": ", ".join(f"{n}{f' ×{c}' if c > 1 else ''} {back.get(n, float('nan')):.1f} s"
                                                               for n, c in sorted(restarted.items())) or "none",
        "jobs checked": len(everything),
    })
    print(f"\n{report}")
    return everything, restarted


# ---------------------------------------------------------------- the scenarios, cheapest first


def test_nginx_reload_mid_stream(chaos: Chaos, supervisor: Supervisor, report: dict[str, Any]) -> None:
    stack = chaos.stack
    master = _pid(stack, "nginx")
    workers_before = _children(master)
    assert workers_before

    def fault() -> str:
        stack.procs["nginx"].signal(signal.SIGHUP)  # nginx -s reload
        # The reload took hold: the master runs new workers (the old ones finish the open streams).
        wait_until(lambda: bool(_children(master) - workers_before), "new nginx workers after the reload", 10)
        return "nginx -s reload"

    jobs, restarted = _scenario(chaos, supervisor, report, "ingress", fault, {"ingress": chaos.probe_accept()}, llm=3, vision=1, recsys=1)
    assert _pid(stack, "nginx") == master and not restarted  # reloaded in place, nothing crashed
    # The open streams were not cut: the old workers served them to their end.
    assert sum(t.follower.reconnects for t in jobs if not t.probe) == 0


def test_workers_sigkill_in_every_domain(chaos: Chaos, supervisor: Supervisor, report: dict[str, Any]) -> None:
    stack = chaos.stack
    workers = ("worker-llm", "worker-vision", "worker-recsys")
    jobs, restarted = _scenario(chaos, supervisor, report, "workers", lambda: _kill9(stack, *workers),
                                {"llm": chaos.probe_llm(), "vision": chaos.probe_vision(), "recsys": chaos.probe_recsys()})
    assert set(workers) <= set(restarted), restarted
    # The LLM jobs that were running were retried on the restarted worker (attempt 2).
    llm = [t for t in jobs if t.domain == "llm" and not t.probe]
    assert any({"status": "running", "attempt": 2} in [e.data for e in t.follower.snapshot() if e.type == "status"] for t in llm)


def test_api_sigkill_mid_stream_clients_resume_with_last_event_id(chaos: Chaos, supervisor: Supervisor, report: dict[str, Any]) -> None:
    jobs, restarted = _scenario(chaos, supervisor, report, "API", lambda: _kill9(chaos.stack, "api"),
                                {"API (202)": chaos.probe_accept()})
    assert "api" in restarted, restarted
    # Every client's stream was cut and resumed (Last-Event-ID) on the restarted API; check_job
    # showed each saw every event once.
    open_at_fault = [t for t in jobs if not t.probe and t.follower.reconnects]
    assert open_at_fault, "no stream was cut: the fault did not reach the clients"


def test_temporal_sigkill_mid_workflow(chaos: Chaos, supervisor: Supervisor, report: dict[str, Any]) -> None:
    port = chaos.stack.cfg.temporal_port

    def fault() -> str:
        what = _kill9(chaos.stack, "temporal")
        # The fault took hold: nothing listens (a dead process's threads may take a moment to go).
        wait_until(lambda: not tcp_ready(port)(), "Temporal's port to close", 10)
        return what

    _, restarted = _scenario(chaos, supervisor, report, "Temporal", fault, {"llm": chaos.probe_llm()})
    assert "temporal" in restarted, restarted


def test_redis_restart(chaos: Chaos, supervisor: Supervisor, report: dict[str, Any]) -> None:
    stack = chaos.stack

    def _answers() -> bool:
        try:
            return bool(redis.Redis.from_url(stack.cfg.redis_url, socket_connect_timeout=0.5).ping())
        except redis.ConnectionError:
            return False

    def fault() -> str:
        pid = _pid(stack, "redis")
        stack.procs["redis"].signal(signal.SIGTERM)  # an orderly restart: AOF flushed, streams kept
        wait_until(lambda: _dead(pid) and not _answers(), "Redis to stop", 10)
        return "Redis restarted (SIGTERM, AOF)"

    _, restarted = _scenario(chaos, supervisor, report, "Redis", fault, {"llm": chaos.probe_llm()})
    assert "redis" in restarted, restarted


def test_redis_loses_everything(chaos: Chaos, supervisor: Supervisor, report: dict[str, Any]) -> None:
    """A Redis that comes back empty (what a restart without persistence does): FLUSHALL, then an
    orderly restart (SIGTERM: the AOF, flush included, is written out, so what comes back is exactly
    what was there at the stop; a kill -9 would make the last second's loss a matter of timing).
    Every stream is gone: running jobs publish ``reset`` and resend, ended ones are rebuilt from
    PostgreSQL when read again (docs/events.md)."""
    stack = chaos.stack

    def fault() -> str:
        pid = _pid(stack, "redis")
        r = redis.Redis.from_url(stack.cfg.redis_url)
        assert r.flushall() and r.dbsize() == 0
        r.close()
        stack.procs["redis"].signal(signal.SIGTERM)
        wait_until(lambda: _dead(pid), "Redis to stop", 10)
        return "Redis emptied (FLUSHALL) and restarted"

    jobs, restarted = _scenario(chaos, supervisor, report, "Redis, no persistence", fault, {"llm": chaos.probe_llm()})
    assert "redis" in restarted, restarted
    # The loss reached the clients: the LLM streams in flight were reset and resent (check_job: once each after it).
    llm = [t for t in jobs if t.domain == "llm" and not t.probe]
    assert any(e.type == "reset" for t in llm for e in t.follower.snapshot()), "no stream was reset: nothing was lost"


def test_postgres_restart(chaos: Chaos, supervisor: Supervisor, report: dict[str, Any]) -> None:
    stack = chaos.stack

    def fault() -> str:
        pid = _pid(stack, "postgres")
        # pg_ctl restart -m fast: SIGINT to the postmaster (the process under runuser when we are root).
        postmaster = int((stack.cfg.state_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGINT)
        wait_until(lambda: _dead(postmaster) and _dead(pid), "PostgreSQL to stop", 30)
        return "PostgreSQL restarted (fast shutdown)"

    _, restarted = _scenario(chaos, supervisor, report, "PostgreSQL", fault, {"llm": chaos.probe_llm(), "vision": chaos.probe_vision()})
    assert "postgres" in restarted, restarted


def _engines_down(stack: Stack, names: list[str]) -> str:
    what = _kill9(stack, *names)
    health = {"engine": f"http://127.0.0.1:{stack.cfg.engine_port}/health", "triton": f"http://127.0.0.1:{stack.cfg.triton_http_port}/v2/health/ready",
              "vllm": f"http://127.0.0.1:{stack.cfg.vllm_port}/health"}
    for name in names:  # the fault took hold: the engine no longer answers
        wait_until(lambda url=health[name]: not http_ready(url)(), f"{name} to stop answering", 10)  # type: ignore[misc]
    return what.replace("kill -9 engine", "kill -9 llama.cpp")


def _retried(jobs: list[Tracked]) -> Counter[str]:
    """Jobs of the workload (per model) that were running when the engine died and ran again."""
    return Counter(t.model for t in jobs if not t.probe and any(e.type == "status" and e.data.get("attempt", 1) > 1 for e in t.follower.snapshot()))


def test_engines_sigkill(chaos: Chaos, supervisor: Supervisor, report: dict[str, Any]) -> None:
    """llama.cpp, Triton and vLLM killed at once, mid-request, restarted side by side (vLLM's restart,
    over two minutes here, is the scenario's recovery time)."""
    stack = chaos.stack
    engines = ["engine", "triton", "vllm"]
    jobs, restarted = _scenario(chaos, supervisor, report, "engines", lambda: _engines_down(stack, engines),
                                {"llama.cpp": chaos.probe_llm(), "Triton": chaos.probe_vision(), "vLLM": chaos.probe_llm(VLLM_MODEL)},
                                recovery_s=400, llm=3, vllm=1)
    assert set(engines) <= set(restarted), restarted
    retried = _retried(jobs)
    assert retried[LLM_MODEL] >= 1 and retried["vision-classify"] >= 1 and retried[VLLM_MODEL] >= 1, f"the kill did not reach running requests: {retried}"
