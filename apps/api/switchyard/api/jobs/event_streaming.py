"""Job event streaming: a job's live events over SSE and WebSocket, resumable from the last event
id seen. ``job_events`` is the one reader of a job's events in the API (the OpenAI routes render
from it too)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, WebSocket, WebSocketDisconnect
from sse_starlette import EventSourceResponse

from switchyard.api.auth import Caller, authenticate, require
from switchyard.api.deps import Res, Resources
from switchyard.api.errors import ApiError, error_body
from switchyard.api.jobs.service import load_job
from switchyard.api.limits import open_stream
from switchyard.common.contracts import JobEvent, JobStatus
from switchyard.common.db.models import Job
from switchyard.common.events import START, JobEnd
from switchyard.common.payload_codec import KeyRing, PayloadKeyError, sealed_result_context
from switchyard.common.quotas import Lease
from switchyard.common.request_log import endpoint_of

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
# How long a job's row may show an end its stream lacks before the API publishes it from the row.
END_GRACE_S = 2.0

log = logging.getLogger("switchyard.api.jobs")


def _resume_point(value: str | None) -> str:
    if value is None or value == "":
        return START
    if not _EVENT_ID.match(value):
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID must be an event id this API sent", param="Last-Event-ID")
    return value


def end_of_row(job: Job, keys: KeyRing) -> JobEnd:
    """How an ended job ended, from its row, as ``job.finish`` publishes it: the engine's answer
    (the sealed result, opened) where the row keeps a redacted copy."""
    result = job.result
    if job.result_sealed is not None:
        try:
            result = keys.unseal(job.result_sealed, sealed_result_context(job.id))
        except PayloadKeyError as e:  # sealed with a key this process lacks: rotation half done
            log.error("a sealed result could not be opened; the rebuilt stream has its redacted copy", extra={"fields": {"job_id": str(job.id), "error": str(e)}})
    return JobEnd(status=JobStatus(job.status), result=result, error=job.error, usage=job.usage, timings=job.timings, attempts=job.attempts,
                  endpoint=endpoint_of(result, job.model_spec))


async def _end_if_missing(res: Resources, job_id: uuid.UUID) -> None:
    """The job's row says it ended (a while ago) but its stream does not: publish the end from the row.

    ``job.finish`` publishes the end right after writing the row, and publishes it again on a retry;
    this covers a publish that never got through (Redis down for longer than the finish's retries),
    so a client following a job always sees it end. Idempotent and safe to race (``ensure_end``)."""
    job = await res.store.get(job_id)
    if job is None or not JobStatus(job.status).terminal or job.purged_at is not None:
        return
    if job.finished_at is not None and (dt.datetime.now(dt.UTC) - job.finished_at).total_seconds() < END_GRACE_S:
        return  # the worker is publishing it now
    if await res.bus.ensure_end(str(job_id), end_of_row(job, res.payload_keys)):
        log.warning("published a job's missing end from its row", extra={"fields": {"job_id": str(job_id), "status": job.status}})


async def job_events(res: Resources, job: Job, after: str = START) -> AsyncIterator[JobEvent | None]:
    """Replay then follow a job's events until it ends; None marks an idle interval.

    PostgreSQL, not Redis, is the record: an ended job whose stream is gone (expired, or lost in a
    Redis restart or flush) gets it rebuilt from its row, and a followed stream that stays without
    an end while the row has one gets the end from the row (docs/events.md)."""
    job_id = str(job.id)
    if JobStatus(job.status).terminal and not await res.bus.exists(job_id):
        if job.purged_at is not None:
            # Erased (retention or purge): how it ended is all there is to tell.
            yield JobEvent(id=after if after != START else "0-1", type="status", data={"status": job.status, "error": job.error})
            return
        await res.bus.ensure_end(job_id, end_of_row(job, res.payload_keys))
    async for event in res.bus.follow(job_id, after=after, block_ms=min(5000, int(res.settings.stream_keepalive_s * 1000))):
        if event is None:
            await _end_if_missing(res, job.id)
        yield event


@router.get("/{job_id}/events", dependencies=[Depends(require("jobs"))])
async def sse_events(
    res: Res,
    caller: Caller,
    request: Request,
    job_id: str,
    last_event_id: Annotated[str | None, Header()] = None,
    last_event_id_q: Annotated[str | None, Query(alias="last_event_id", max_length=48)] = None,
) -> EventSourceResponse:
    job = await load_job(res, job_id, caller)
    after = _resume_point(last_event_id if last_event_id is not None else last_event_id_q)
    lease = await open_stream(res, caller)  # a slot among the key's concurrent streams, or 429

    async def gen() -> AsyncIterator[dict[str, Any]]:
        try:
            async for event in job_events(res, job, after):
                if lease is not None:
                    await lease.renew()
                if event is None:
                    continue  # sse-starlette sends its own keep-alive pings
                yield {"id": event.id, "event": event.type, "data": json.dumps(event.data, separators=(",", ":"))}
        finally:
            if lease is not None:  # in the background: a cancelled generator cannot await
                res.dispatcher.background(lease.release())

    return EventSourceResponse(gen(), ping=int(res.settings.stream_keepalive_s), headers={"X-Accel-Buffering": "no"})


@router.websocket("/{job_id}/ws")
async def ws_events(websocket: WebSocket, job_id: str, last_event_id: Annotated[str | None, Query(max_length=48)] = None) -> None:
    """Messages are ``{"id", "event", "data"}``; reconnect with ``?last_event_id=`` to resume.

    The key comes in the handshake's headers; a refused one is an ``error`` message (as a missing
    job is) and close code 4401/4403/4404."""
    res: Resources = websocket.app.state.resources
    await websocket.accept()
    lease: Lease | None = None
    try:
        caller = await authenticate(websocket, "jobs")
        job = await load_job(res, job_id, caller)
        after = _resume_point(last_event_id)
        lease = await open_stream(res, caller)
    except ApiError as e:
        await websocket.send_json({"event": "error", "data": error_body(e.status, e.code, e.message, e.param)})
        await websocket.close(code=4000 + e.status)
        return

    async def watch_disconnect() -> None:
        # The client sends nothing we need; reading notices it going away.
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()

    watcher = asyncio.create_task(watch_disconnect())
    try:
        async for event in job_events(res, job, after):
            if watcher.done():
                return
            if lease is not None:
                await lease.renew()
            if event is None:
                continue
            await websocket.send_json({"id": event.id, "event": event.type, "data": event.data})
        await websocket.close(code=1000)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        watcher.cancel()
        if lease is not None:
            res.dispatcher.background(lease.release())
