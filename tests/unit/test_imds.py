"""The spot interruption poller against a loopback STAND-IN for the cloud metadata service
(switchyard.devstack.imds_standin, AWS IMDSv2 format): not the cloud's endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from switchyard.common.drain import Drain
from switchyard.common.imds import ImdsPoller
from switchyard.devstack.imds_standin import ImdsStandIn

pytestmark = pytest.mark.asyncio


@pytest.fixture
def imds() -> Iterator[ImdsStandIn]:
    s = ImdsStandIn().start()
    try:
        yield s
    finally:
        s.stop()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=2.0) as c:
        yield c


async def test_no_notice_is_404_read_with_a_session_token(imds: ImdsStandIn, http: httpx.AsyncClient) -> None:
    poller = ImdsPoller(imds.url + "/", 0.05, http)
    assert await poller.check() is None
    assert await poller.check() is None
    assert (imds.token_requests, imds.action_reads) == (1, 2)  # one token, reused


async def test_a_scheduled_interruption_is_read(imds: ImdsStandIn, http: httpx.AsyncClient) -> None:
    imds.interrupt("stop")
    notice = await ImdsPoller(imds.url, 0.05, http).check()
    assert notice is not None and notice.action == "stop" and notice.time.endswith("Z")


async def test_a_refused_token_is_fetched_again(imds: ImdsStandIn, http: httpx.AsyncClient) -> None:
    poller = ImdsPoller(imds.url, 0.05, http)
    assert await poller.check() is None
    imds.revoke_tokens()
    imds.interrupt()
    notice = await poller.check()
    assert notice is not None and notice.action == "terminate"
    assert imds.token_requests == 2


async def test_wait_polls_until_the_notice_and_a_drain_follows(imds: ImdsStandIn, http: httpx.AsyncClient) -> None:
    drain = Drain()
    watcher = asyncio.create_task(drain.watch(ImdsPoller(imds.url, 0.05, http)))
    await asyncio.sleep(0.3)
    assert not drain.requested and imds.action_reads >= 2  # polled, nothing scheduled: no drain
    imds.interrupt()
    reason = await asyncio.wait_for(drain.wait(), 2)
    assert reason.startswith("spot interruption: terminate at ")
    await watcher


async def test_an_unreachable_metadata_service_is_polled_on_without_draining(http: httpx.AsyncClient) -> None:
    down = ImdsStandIn()
    url = down.url
    down.server.server_close()  # nothing listens there
    drain = Drain()
    watcher = asyncio.create_task(drain.watch(ImdsPoller(url, 0.05, http)))
    await asyncio.sleep(0.3)
    assert not watcher.done() and not drain.requested
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher


async def test_the_first_reason_is_kept() -> None:
    drain = Drain()
    drain.request("SIGTERM")
    drain.request("spot interruption: terminate at 2026-12-07T08:00:00Z")
    assert await drain.wait() == "SIGTERM"
