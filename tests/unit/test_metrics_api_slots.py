"""Each API process takes its own slot (its Temporal SDK metrics port is base + slot), and a slot
is free again once its process is gone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from switchyard.common.metrics_page import MULTIPROC_ENV

CLAIM = "import sys; from switchyard.api.server import claim_slot; print(claim_slot(int(sys.argv[1])), flush=True); sys.stdin.read()"


def start(n: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_processes_take_distinct_slots_and_a_dead_ones_slot_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    first, second = start(2), start(2)
    try:
        slots = [first.stdout.readline().strip(), second.stdout.readline().strip()]  # type: ignore[union-attr]
        assert sorted(slots) == ["0", "1"]
        third = start(2)
        _, err = third.communicate(timeout=60)
        assert third.returncode != 0 and "more API processes" in err
        first.communicate("", timeout=30)  # the first process exits: its slot is free
        again = start(2)
        out, _ = again.communicate("", timeout=60)
        assert out.strip() == slots[0]
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.communicate("", timeout=30)
