"""One full test stack at a time on this host.

Pants runs test batches side by side (one per core); the integration suite and the chaos suite each
start a whole platform, and two at once on a 2-core host starve each other (timeouts, meaningless
recovery times). Each suite's stack fixture holds this lock (``flock`` on a file in /tmp, released
by the kernel if the holder dies) from before its stack starts until after it has stopped.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOCK_FILE = os.environ.get("SWITCHYARD_TEST_STACK_LOCK", "/tmp/switchyard-test-stacks.lock")


@contextmanager
def one_stack_at_a_time(timeout_s: float = 3600.0, path: str = LOCK_FILE) -> Iterator[float]:
    """Hold the host's test-stack lock for the block; yields the seconds spent waiting for it."""
    t0 = time.monotonic()
    with open(path, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - t0 > timeout_s:
                    raise TimeoutError(f"another test stack held {path} for over {timeout_s:.0f} s") from None
                time.sleep(1.0)
        try:
            yield time.monotonic() - t0
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
