"""Events that survive a lost stream: conditional appends, the end published once, a publisher that
resets and resends, a follower that rides out a restart.

Against a real Redis: a private ``redis-server`` started here on a free port (the machine's shared
Redis is never restarted or flushed), restarted with AOF persistence (as the local stack's embedded
Redis runs) and without any. A "flush" of one stream is a DEL of that job's key only.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from switchyard.common.contracts import JobEvent, JobStatus
from switchyard.common.events import EventBus, JobEnd, make_redis, stream_key
from switchyard.common.token_publisher import TokenPublisher, resume_point

TEXT = [f"t{i} " for i in range(12)]


@dataclass
class PrivateRedis:
    """One redis-server of this test's own, in a temporary folder, that a test may restart."""

    dir: Path
    appendonly: bool
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (Debian redis-server; ./switchyard setup installs it)"
        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.appendonly else ["--appendonly", "no"]
        self.proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir), "--save", "", *persistence],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: Redis's own orderly shutdown (with AOF: flushed to disk)."""
        assert self.proc is not None
        self.proc.terminate()
        assert self.proc.wait(10) == 0

    def restart(self) -> None:
        self.stop()
        assert self.proc is not None and self.proc.poll() is not None  # the fault took hold: the server is gone
        self.start()


@pytest.fixture(params=[False, True], ids=["no-persistence", "aof"])
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, appendonly=request.param)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def _bus(server: PrivateRedis) -> EventBus:
    return EventBus(make_redis(server.url), ttl_s=60, maxlen=1000)


def assert_whole(events: list[JobEvent], expected: list[str]) -> None:
    """A client's view by the ``reset`` rule: between resets, token positions run 0, 1, 2... with no
    position seen twice and none skipped; after the last reset the tokens are the whole answer."""
    segment: list[JobEvent] = []
    for e in [*events, JobEvent(id="0-0", type="reset", data={})]:
        if e.type == "reset":
            assert [t.data["index"] for t in segment] == list(range(len(segment))), [t.data for t in segment]
            last, segment = segment, []
        elif e.type == "token":
            segment.append(e)
    assert "".join(t.data["text"] for t in last) == "".join(expected)


def test_append_after_an_event_the_stream_lost_writes_nothing(redis_server: PrivateRedis) -> None:
    async def go() -> None:
        bus = _bus(redis_server)
        job = str(uuid.uuid4())
        first = await bus.append(job, [("status", {"status": "running", "attempt": 1})])
        assert first is not None
        assert await bus.append(job, [("token", {"choice": 0, "index": 0, "text": "a"})], after=first[0]) is not None
        await bus.redis.delete(stream_key(job))  # the loss: this job's stream only
        assert await bus.append(job, [("token", {"choice": 0, "index": 1, "text": "b"})], after=first[0]) is None
        assert not await bus.exists(job)
        await bus.redis.aclose()

    asyncio.run(go())


def test_the_end_is_published_once_and_completes_a_half_published_end(redis_server: PrivateRedis) -> None:
    async def go() -> None:
        bus = _bus(redis_server)
        job = str(uuid.uuid4())
        end = JobEnd(status=JobStatus.succeeded, result={"text": "ab", "choices": [{"index": 0, "text": "ab", "finish_reason": "stop"}]}, attempts=1)
        await bus.publish(job, "status", {"status": "running", "attempt": 1})
        await bus.publish(job, "token", {"choice": 0, "index": 0, "text": "ab"})
        await bus.publish(job, "result", end.events()[0][1])  # a finish that failed between result and status
        assert len(await bus.ensure_end(job, end)) == 1  # only the status
        assert await bus.ensure_end(job, end) == []  # a second try (a retried finish, an API) adds nothing
        kinds = [e.type for e in await bus.read_all(job)]
        assert kinds == ["status", "token", "result", "status"]
        await bus.redis.aclose()

    asyncio.run(go())


def test_a_lost_stream_of_an_ended_job_is_rebuilt_whole(redis_server: PrivateRedis) -> None:
    async def go() -> None:
        bus = _bus(redis_server)
        job = str(uuid.uuid4())
        seen = [await bus.publish(job, "token", {"choice": 0, "index": i, "text": t}) for i, t in enumerate(TEXT[:5])]
        redis_server.restart()
        if redis_server.appendonly:
            assert await bus.exists(job)  # persisted: nothing to rebuild
            await bus.redis.delete(stream_key(job))  # ...so lose it the other way: a flush of this stream
        assert not await bus.exists(job)
        end = JobEnd(status=JobStatus.succeeded, result={"text": "".join(TEXT), "choices": [{"index": 0, "text": "".join(TEXT), "finish_reason": "length"}]})
        await bus.ensure_end(job, end)
        resumed = await bus.read(job, after=seen[-1])  # a client resuming from the last event it had
        assert [e.type for e in resumed] == ["reset", "token", "result", "status"]
        before = [JobEvent(id=i, type="token", data={"choice": 0, "index": n, "text": t}) for n, (i, t) in enumerate(zip(seen, TEXT, strict=False))]
        assert_whole(before + resumed, TEXT)
        await bus.redis.aclose()

    asyncio.run(go())


def test_a_publisher_whose_stream_was_lost_resets_and_resends(redis_server: PrivateRedis) -> None:
    """Redis restarts mid-stream: without persistence the stream is gone and the publisher's next
    token finds it so (reset, then everything from position 0); with AOF the stream is whole and
    publishing simply goes on. Either way a client resuming from its last event misses nothing and
    sees nothing twice."""

    async def go() -> None:
        bus = _bus(redis_server)
        job = str(uuid.uuid4())
        running = await bus.publish(job, "status", {"status": "running", "attempt": 1})
        pub = TokenPublisher(bus, job, 1, {}, last_id=running)
        for t in TEXT[:6]:
            await pub.token(0, t, [])
        client = await bus.read_all(job)
        redis_server.restart()
        for t in TEXT[6:]:
            await pub.token(0, t, [])
        await pub.finish()
        resumed = await bus.read(job, after=client[-1].id)
        assert_whole(client + resumed, TEXT)
        kinds = [e.type for e in resumed]
        if redis_server.appendonly:
            assert "reset" not in kinds and pub.recoveries == 0
        else:
            assert kinds[0] == "reset" and resumed[0].data["reason"] == "stream_lost" and pub.recoveries == 1
        await bus.redis.aclose()

    asyncio.run(go())


def test_a_retry_after_the_stream_was_lost_resets_first(redis_server: PrivateRedis) -> None:
    async def go() -> None:
        bus = _bus(redis_server)
        job = str(uuid.uuid4())
        running = await bus.publish(job, "status", {"status": "running", "attempt": 1})
        first = TokenPublisher(bus, job, 1, {}, last_id=running)
        for t in TEXT[:4]:
            await first.token(0, t, [])
        client = await bus.read_all(job)
        # The worker died here, and the stream went with a Redis restart (or a flush of it).
        redis_server.restart()
        if await bus.exists(job):  # persisted (AOF): lose it the other way, a flush of this stream
            await bus.redis.delete(stream_key(job))
        running_2 = await bus.publish(job, "status", {"status": "running", "attempt": 2})
        already, whole = resume_point(await bus.read_all(job), 2)
        assert (already, whole) == ({}, False)
        retry = TokenPublisher(bus, job, 2, already, last_id=running_2)
        await retry.stream_lost()
        for t in TEXT:
            await retry.token(0, t, [])
        await retry.finish()
        resumed = await bus.read(job, after=client[-1].id)
        assert [e.type for e in resumed][:2] == ["status", "reset"]
        assert_whole(client + resumed, TEXT)
        await bus.redis.aclose()

    asyncio.run(go())


def test_an_intact_stream_resumes_without_a_reset(redis_server: PrivateRedis) -> None:
    async def go() -> None:
        bus = _bus(redis_server)
        job = str(uuid.uuid4())
        await bus.publish(job, "status", {"status": "running", "attempt": 1})
        for i, t in enumerate(TEXT[:3]):
            await bus.publish(job, "token", {"choice": 0, "index": i, "text": t})
        await bus.publish(job, "status", {"status": "running", "attempt": 2})
        assert resume_point(await bus.read_all(job), 2) == ({0: TEXT[:3]}, True)
        await bus.redis.aclose()

    asyncio.run(go())


def test_a_follower_rides_out_a_restart_and_sees_the_end(redis_server: PrivateRedis) -> None:
    async def go() -> None:
        bus = _bus(redis_server)
        reader = _bus(redis_server)
        job = str(uuid.uuid4())
        running = await bus.publish(job, "status", {"status": "running", "attempt": 1})
        pub = TokenPublisher(bus, job, 1, {}, last_id=running)
        seen: list[JobEvent] = []

        async def follow() -> None:
            async for e in reader.follow(job, block_ms=200):
                if e is not None:
                    seen.append(e)

        follower = asyncio.create_task(follow())
        for t in TEXT[:6]:
            await pub.token(0, t, [])
        while len([e for e in seen if e.type == "token"]) < 6:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(redis_server.restart)
        for t in TEXT[6:]:
            await pub.token(0, t, [])
        await bus.ensure_end(job, JobEnd(status=JobStatus.succeeded, result={"choices": [{"index": 0, "text": "".join(TEXT)}]}))
        await asyncio.wait_for(follower, 20)
        assert seen[-1].type == "status" and seen[-1].data["status"] == "succeeded"
        assert_whole(seen, TEXT)
        await bus.redis.aclose()
        await reader.redis.aclose()

    asyncio.run(go())


def test_admission_to_the_backlog_survives_a_restart_behind_a_pooled_connection(redis_server: PrivateRedis) -> None:
    """After a restart the pool hands out its old connection, which the server closed: the admission
    (idempotent) is tried once more on a new one instead of failing the submission (the chaos suite
    once got a 500 on POST /v1/jobs this way)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from switchyard.common.quotas import Backlog

    async def go() -> None:
        redis = make_redis(redis_server.url)
        backlog = Backlog(redis, "test")
        assert await backlog.admit("m", "job-1", 10)
        redis_server.restart()
        with pytest.raises(RedisConnectionError):  # the fault took hold: a plain call on the stale connection fails
            await redis.zcard(backlog.key("m"))
        assert await backlog.admit("m", "job-1", 10)
        await asyncio.gather(*(redis.ping() for _ in range(4)))  # several pooled connections, all stale after the next restart
        redis_server.restart()
        assert await backlog.admit("m", "job-2", 10)
        # With AOF job-1 outlived both restarts; without persistence only job-2 (admitted after the last) is there.
        assert await backlog.size("m") == (2 if redis_server.appendonly else 1)
        await redis.aclose()

    asyncio.run(go())
