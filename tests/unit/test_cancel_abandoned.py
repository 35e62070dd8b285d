"""The cancel of a client that went away is retried until it is through, not dropped (issue 9)."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from switchyard.api.errors import ApiError
from switchyard.api.jobs import service as jobs_service

pytestmark = pytest.mark.asyncio


class _Store:
    def __init__(self, status: str) -> None:
        self.status = status

    async def get(self, job_id: uuid.UUID) -> Any:
        return SimpleNamespace(id=job_id, status=self.status)


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff sleeps take no time; the clock moves by what was slept."""
    now = [1000.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    # jobs_service's own references only (not the event loop's clock).
    monkeypatch.setattr(jobs_service, "asyncio", SimpleNamespace(sleep=sleep))
    monkeypatch.setattr(jobs_service, "time", SimpleNamespace(monotonic=lambda: now[0]))


async def test_a_failed_cancel_is_retried_until_it_goes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    async def cancel_job(res: Any, job: Any) -> bool:
        calls.append(job.status)
        if len(calls) < 3:
            raise ApiError(503, "orchestrator_unavailable", "could not reach the orchestrator; retry")
        return True

    monkeypatch.setattr(jobs_service, "cancel_job", cancel_job)
    job = SimpleNamespace(id=uuid.uuid4(), status="queued")
    await jobs_service.cancel_abandoned(SimpleNamespace(store=_Store("running")), job)  # type: ignore[arg-type]
    # The first try uses the job as accepted; retries re-read it.
    assert calls == ["queued", "running", "running"]


async def test_retries_give_up_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    async def cancel_job(res: Any, job: Any) -> bool:
        nonlocal calls
        calls += 1
        raise ConnectionError("database restarting")

    monkeypatch.setattr(jobs_service, "cancel_job", cancel_job)
    monkeypatch.setattr(jobs_service, "ABANDONED_CANCEL_RETRY_S", 10.0)
    await jobs_service.cancel_abandoned(SimpleNamespace(store=_Store("running")), SimpleNamespace(id=uuid.uuid4(), status="queued"))  # type: ignore[arg-type]
    assert calls == 6  # after 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s of backoff, the next 5 s would pass the 10 s
