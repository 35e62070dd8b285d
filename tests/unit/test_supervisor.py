"""`./switchyard up`'s restart policy: exponential, capped backoff, reset once a part stays up, and a
part that keeps failing given up on. Time is an injected clock: no test sleeps; the supervised parts
are real (short-lived) processes."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from switchyard.devstack.procs import Proc
from switchyard.devstack.supervisor import GaveUp, RestartHistory, RestartPolicy, State, Supervisor

POLICY = RestartPolicy(backoff_initial_s=1, backoff_max_s=30, reset_after_s=60, max_restarts=5, window_s=300)


def test_backoff_doubles_up_to_its_cap_and_restarts_are_limited_within_the_window() -> None:
    h = RestartHistory(RestartPolicy(backoff_initial_s=1, backoff_max_s=30, reset_after_s=60, max_restarts=8, window_s=1000))
    now, delays = 0.0, []
    for _ in range(8):
        delay = h.failed(now)
        assert delay is not None
        delays.append(delay)
        now += delay + 0.5  # restarted after the delay, fails again half a second later
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert h.failed(now) is None  # a ninth failure after eight restarts within the window: give up


def test_a_part_that_stays_up_long_enough_starts_again_from_the_first_delay() -> None:
    h = RestartHistory(POLICY)
    assert [h.failed(t) for t in (0.0, 1.0, 3.0)] == [1, 2, 4]
    h.ready(7.0)
    assert h.failed(7.0 + 59) == 8  # up 59 s: still the same crash loop
    h.ready(100.0)
    assert h.failed(100.0 + 60) == 1  # up 60 s: a new failure, not a loop


def test_restarts_older_than_the_window_do_not_count_towards_giving_up() -> None:
    h = RestartHistory(POLICY)
    for i in range(5):  # a crash every 61 s: always the first delay, never more than 5 within 300 s
        assert h.failed(i * 61.0) == 1
        h.ready(i * 61.0 + 1)
    assert h.failed(5 * 61.0) == 1 and len(h.restarts) == 5
    assert RestartHistory(RestartPolicy(max_restarts=0)).failed(0.0) is None  # never restart


def test_the_policy_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_RESTART_MAX_RESTARTS", "2")
    monkeypatch.setenv("SWITCHYARD_RESTART_BACKOFF_MAX_S", "4.5")
    p = RestartPolicy()
    assert (p.max_restarts, p.backoff_max_s, p.backoff_initial_s) == (2, 4.5, 1.0)
    monkeypatch.setenv("SWITCHYARD_RESTART_BACKOFF_INITIAL_S", "0")
    with pytest.raises(ValueError, match="backoff_initial_s"):
        RestartPolicy()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _proc(tmp_path: Path, script: str, ready: Callable[[], bool] = lambda: True, ready_timeout_s: float = 60.0) -> Proc:
    return Proc("part", ["sh", "-c", script], {"PATH": "/usr/bin:/bin"}, tmp_path / "part.log", ready, ready_timeout_s)


def _exited(proc: Proc) -> None:
    assert proc.popen is not None
    proc.popen.wait(10)


def test_a_part_that_keeps_crashing_is_restarted_with_backoff_then_given_up_on(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "echo run; exit 3")
    proc.start()
    clock, lines = Clock(), list[str]()
    sup = Supervisor({"part": proc}, POLICY, clock=clock, log=lines.append)
    restarts_at = []
    with pytest.raises(GaveUp) as exc:
        for _ in range(10):
            _exited(proc)
            sup.poll()  # notices the exit
            assert sup.state("part") is State.WAITING
            clock.now = restart_at = clock.now + float(lines[-1].split("restarting it in ")[1].split("s ")[0])
            sup.poll()  # restarts it
            assert sup.state("part") is State.STARTING
            restarts_at.append(restart_at)
    assert restarts_at == [1, 3, 7, 15, 31]  # 1 + 2 + 4 + 8 + 16 s
    assert "part exited with code 3 while starting and keeps failing (5 restarts within 300s)" in str(exc.value)
    assert "run" in str(exc.value)  # its last log lines
    assert len(set(sup.pids("part"))) == 6
    assert lines[0].startswith("part (pid") and "exited with code 3; restarting it in 1s (restart 1 of at most 5 within 300s)" in lines[0]
    assert proc.log_path.read_text().count("--- switchyard up: part") == 5  # each restart is marked in the part's log


def test_a_killed_part_is_restarted_and_a_restart_that_never_gets_ready_counts_as_a_failure(tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    proc = _proc(tmp_path, "exec sleep 60", ready=marker.exists, ready_timeout_s=20)
    proc.start()
    marker.touch()
    clock, lines = Clock(), list[str]()
    sup = Supervisor({"part": proc}, POLICY, clock=clock, log=lines.append)
    try:
        sup.poll()
        assert sup.state("part") is State.UP and lines == []
        first = proc.popen.pid if proc.popen else 0
        proc.signal(signal.SIGKILL)  # the crash: the process alone, as `kill -9 <pid>`
        _exited(proc)
        sup.poll()
        assert "was killed by SIGKILL; restarting it in 1s" in lines[-1]
        clock.now = 1.0
        sup.poll()
        assert sup.state("part") is State.STARTING and proc.alive() and proc.popen is not None and proc.popen.pid != first
        sup.poll()
        assert sup.state("part") is State.UP and sup.settled() and lines[-1] == f"part is back (pid {proc.popen.pid}, restart 1)"
        # The next crash within reset_after_s: the second delay; this time it never becomes ready.
        marker.unlink()
        proc.signal(signal.SIGKILL)
        _exited(proc)
        sup.poll()
        assert "restarting it in 2s" in lines[-1]
        clock.now = 3.0
        sup.poll()
        clock.now = 3.0 + 19.9
        sup.poll()
        assert sup.state("part") is State.STARTING and proc.alive()
        clock.now = 3.0 + 20
        sup.poll()
        assert "was not ready 20s after its restart; restarting it in 4s" in lines[-1]
        assert not proc.alive()  # killed, not left behind
    finally:
        proc.kill()


def test_a_part_that_cannot_be_started_again_counts_as_a_failure(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "exit 1")
    proc.start()
    clock, lines = Clock(), list[str]()
    sup = Supervisor({"part": proc}, POLICY, clock=clock, log=lines.append)
    _exited(proc)
    sup.poll()
    proc.cmd = [str(tmp_path / "removed-binary")]
    clock.now = 1.0
    sup.poll()
    assert sup.state("part") is State.WAITING and "could not be started" in lines[-1] and "restarting it in 2s" in lines[-1]
