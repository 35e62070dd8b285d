"""The durable lane of a V2 model worker (vision, recsys): what one attempt of a job's activity
shares with every other — the model it runs, its calls to the data plane (timed, errors mapped to
Temporal's), the chunk loop with a heartbeat checkpoint and progress events, the timings.

A backend out of memory for a chunk (its own error text, switchyard.common.engines.oom) splits the
chunk in halves, down to one item; the smaller size is kept for the rest of the job (and in the
heartbeat, so a retried attempt starts with it). One item out of memory fails the attempt as
``EngineOutOfMemory``, retried by the domain's policy (exponential backoff).

Only the worker's own part stays in its activity: the job's input, a chunk's requests, the result.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.contracts import JobSpec, Timings
from switchyard.common.engines.oom import OOM_ERROR_TYPE, EngineOutOfMemory, classify_oom
from switchyard.common.temporal import heartbeating
from switchyard.common.v2.config import V2Model
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.tensors import InferRequest, InferResponse


class JobPlane(Protocol):
    """What the durable lane needs of a worker's data plane (a LocalDataPlane with its backends)."""

    @property
    def models(self) -> Mapping[str, V2Model]: ...

    @property
    def backends(self) -> Mapping[str, object]: ...

    async def infer(self, req: InferRequest, model: V2Model | None = None, *, started_ns: int | None = None) -> InferResponse: ...


def unknown_model(spec: JobSpec, what: str) -> ApplicationError:
    """The job names a model this worker cannot run: final, a retry would not help."""
    return ApplicationError(f"model {spec.model!r} is not {what} of this worker", type="UnknownModel", non_retryable=True)


def job_failure(where: str, e: V2Error) -> ApplicationError:
    """A data-plane error as the activity's failure: a 4xx is the job's own fault (final), anything
    else the backend's (retried by the domain's retry policy)."""
    kind = "InvalidInput" if 400 <= e.status < 500 else "BackendUnavailable"
    return ApplicationError(f"{where}: {e.message}", type=kind, non_retryable=kind == "InvalidInput")


class _ChunkOutOfMemory(Exception):
    def __init__(self, oom: EngineOutOfMemory) -> None:
        super().__init__(oom.message)
        self.oom = oom


def job_model(spec: JobSpec, plane: JobPlane, domain: str, what: str) -> V2Model:
    """The model as accepted (the job's catalog snapshot), else as the worker serves it now; one of
    another domain, unknown, or on a backend this worker has not opened is ``unknown_model``."""
    model = V2Model.model_validate(spec.model_spec["v2"]) if spec.model_spec and "v2" in spec.model_spec else plane.models.get(spec.model)
    if model is None or model.domain != domain or any(s.backend and s.backend not in plane.backends for s in model.steps):
        raise unknown_model(spec, what)
    return model


class JobAttempt:
    """One attempt of a job on a data plane, started when made (its queue time ends here), on the
    job's model (``job_model``: ``domain`` and ``what`` as there)."""

    def __init__(self, spec: JobSpec, books: JobBookkeeping, plane: JobPlane, domain: str, what: str) -> None:
        self.started = time.time()
        self.spec = spec
        self.books = books
        self.plane = plane
        self.model = job_model(spec, plane, domain, what)
        self.engine_s = 0.0  # time in the data plane (its steps and backends): the job's engine time
        self.chunk_size = 0  # items per data-plane call (chunks(): halved when the backend runs out of memory)

    async def infer(self, req: InferRequest, where: str) -> dict[str, Any]:
        """The plane's outputs (by name) for ``req`` on the job's model; a V2Error fails the attempt
        (``job_failure``, its message prefixed with ``where``)."""
        t0 = time.perf_counter()
        try:
            resp = await self.plane.infer(req, self.model)
        except V2Error as e:
            if (oom := classify_oom(e.status, e.message)) is not None:
                raise _ChunkOutOfMemory(oom) from None
            raise job_failure(where, e) from None
        self.engine_s += time.perf_counter() - t0
        return {t.name: t.data for t in resp.outputs}

    async def chunks(self, total: int, chunk: int, step: Callable[[int, int], Awaitable[list[Any]]]) -> list[Any]:
        """Record the attempt's start, then the results of items ``0..total-1``: ``step(start, end)``
        computes a chunk's (JSON-able: they are the heartbeat checkpoint, with the chunk size). A
        retried attempt resumes after the chunks the previous one finished, at its chunk size; a
        progress event follows each chunk. Out of memory: the module's docstring."""
        await self.books.start_attempt(self.spec, self.started)
        details = activity.info().heartbeat_details
        done: list[Any] = list(details[0]) if details else []
        size = self.chunk_size = int(details[1]) if len(details) > 1 else chunk
        checkpoint: list[object] = [done, size]
        async with heartbeating(checkpoint):
            while len(done) < total:
                start = len(done)
                end = min(start + size, total)
                try:
                    done.extend(await step(start, end))
                except _ChunkOutOfMemory as e:
                    if end - start == 1:
                        activity.heartbeat(*checkpoint)  # the next attempt resumes at this chunk size
                        raise ApplicationError(f"item {start}: {e.oom.message}", type=OOM_ERROR_TYPE) from None
                    size = self.chunk_size = checkpoint[1] = max(1, (end - start) // 2)
                    activity.logger.warning("out of memory for a chunk of %d: chunks of %d from now on", end - start, size)
                    continue
                checkpoint[0] = done
                await self.books.bus.publish(self.spec.job_id, "progress", {"done": len(done), "total": total})
        return done

    def timings(self) -> Timings:
        return Timings(queue_ms=max(0.0, self.started * 1000 - self.spec.accepted_at_ms), engine_ms=self.engine_s * 1000,
                       total_ms=(time.time() - self.started) * 1000)
