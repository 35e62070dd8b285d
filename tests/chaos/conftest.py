"""The chaos suite's one stack (issue 15, item 5): the whole platform on free ports with its OWN
PostgreSQL and Redis (the suite restarts them; the machine's shared services are never touched:
Feast's registry and online store, which the recsys worker only reads, stay on them), under the
supervision that `./switchyard up` runs, so a killed part is restarted as it would be there.

Each scenario adds a row to the recovery table printed at the end of the session (and recorded as
test properties, so it is in the JUnit report too)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos_kit import Chaos  # pants: no-infer-dep (a test util beside conftest.py)

from switchyard.devstack.stack import Stack, StackConfig
from switchyard.devstack.stack_lock import one_stack_at_a_time
from switchyard.devstack.supervisor import Supervisor

ROWS: list[dict[str, Any]] = []
COLUMNS = ("scenario", "in flight at the fault", "restarted by the supervisor (ready after)", "recovery: first new job ok", "all in-flight jobs ended",
           "resets", "tokens again after reset", "client reconnects", "jobs checked")


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    state = Path(tempfile.mkdtemp(prefix="switchyard-chaos-", dir=os.environ.get("SWITCHYARD_TEST_STATE_DIR")))
    state.chmod(0o755)  # the private PostgreSQL runs as the postgres user when we are root: it must reach its data folder
    # vision/recsys=True: fail (naming the setup script) rather than skip when not set up. Default
    # worker concurrency (4) and llama.cpp slots (4): three streams and a batch run side by side.
    # vLLM=True: fail (naming build-support/setup-vllm.sh) rather than leave it out; its kill is part of the engines' scenario.
    cfg = StackConfig.ephemeral(state, private_data=True, vision=True, recsys=True, vllm=True)
    s = Stack(cfg)
    with one_stack_at_a_time():
        try:
            s.start()
            yield s
        finally:
            s.stop()
    if request.session.testsfailed == 0:
        shutil.rmtree(state, ignore_errors=True)
    else:
        print(f"\nchaos stack state and logs kept in {state}")


# What the supervisor said, with the monotonic time it said it (scenarios read when a part was back).
SUPERVISOR_LOG: list[tuple[float, str]] = []


def _log(line: str) -> None:
    SUPERVISOR_LOG.append((time.monotonic(), line))
    print(f"{time.strftime('%H:%M:%S')} Switchyard: {line}", flush=True)


@pytest.fixture(scope="session")
def supervisor(stack: Stack) -> Iterator[Supervisor]:
    """`./switchyard up`'s supervision (Stack.supervisor), default policy, over every part
    (PostgreSQL and Redis included); its lines timestamped."""
    with Supervisor(stack.procs, log=_log).in_background() as sup:
        yield sup


@pytest.fixture(scope="session")
def chaos(stack: Stack, supervisor: Supervisor) -> Iterator[Chaos]:
    # Its own limits: probes retry every 250 ms and a dozen streams are followed at once.
    key = stack.create_key("chaos", ("jobs",), "normal", "chaos suite", rps=1000, max_streams=200, tpm=10**9)
    c = Chaos(stack, key)
    try:
        yield c
    finally:
        c.http.close()


@pytest.fixture
def report(record_property: Any) -> Iterator[dict[str, Any]]:
    """A scenario's row of the recovery table: filled by the test, kept whatever the outcome."""
    row: dict[str, Any] = {}
    yield row
    if row:
        ROWS.append(row)
        for k, v in row.items():
            record_property(k, v)


def table() -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "-")) for c in COLUMNS) + " |" for r in ROWS]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ROWS:
        from switchyard.devstack.host import host_cpu

        terminalreporter.section("chaos: recovery per scenario")
        terminalreporter.write_line(f"host: {host_cpu().describe()}")
        terminalreporter.write_line(table())
