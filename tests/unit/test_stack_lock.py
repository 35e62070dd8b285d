"""One full test stack at a time: the second holder waits for the first, and gives up after its timeout."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from switchyard.devstack.stack_lock import one_stack_at_a_time


def test_a_second_stack_waits_for_the_first_then_gets_the_lock(tmp_path: Path) -> None:
    lock = str(tmp_path / "stacks.lock")
    held, release = threading.Event(), threading.Event()

    def first() -> None:
        with one_stack_at_a_time(path=lock):
            held.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert held.wait(5)
        with pytest.raises(TimeoutError, match="another test stack held"):
            with one_stack_at_a_time(timeout_s=1.5, path=lock):
                pass  # never reached: the first holder still has it
        threading.Timer(1.0, release.set).start()
        t0 = time.monotonic()
        with one_stack_at_a_time(timeout_s=10, path=lock) as waited:
            assert waited >= 0.5 and time.monotonic() - t0 >= 0.5  # it waited for the release
    finally:
        release.set()
        t.join(5)
