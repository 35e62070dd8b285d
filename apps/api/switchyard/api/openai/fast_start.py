"""Fast start of completions: the API runs a completion's first attempt itself, at once, when its
model's backlog is short (switchyard.common.fast_start; docs/llm-speed.md).

The job is accepted (row committed) as always; the run publishes into the job's events as an
activity would (so the OpenAI rendering, SSE and WebSocket clients see no difference) and records
the job's end as ``job.finish`` would. A run that succeeds needs no workflow at all: the job's row
holds its end, and Temporal's work (a workflow, two activities) would only compete with the next
requests for the CPU; where its model has a shadow, the run samples and offers the shadow its copy as
the workflow would (docs/shadow.md). Any other run hands its job to the outbox, whose workflow adopts the run's end
record (an error to retry, a cancel to record) or, with none, takes the run over. The outbox's
sweeper also dispatches a run still going after its grace (a long stream, or an API that died
mid-run): its workflow waits for the run's end, or takes the run over within the lease. A cancel
(client gone, DELETE) stops the run at once here, or at its next renewal from any other process.

Priority: the queue is skipped only while the model has at most ``llm_fast_start_max_backlog``
unfinished jobs (then there is no queue to order); beyond that every completion queues by priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import httpx

from switchyard.api.settings import ApiSettings
from switchyard.common import metrics
from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.breaker import BreakerBoard
from switchyard.common.catalog import CatalogHolder
from switchyard.common.contracts import JobOutcome, JobSpec, JobStatus, LlmInput
from switchyard.common.db.models import Job
from switchyard.common.db.store import ended_undispatched, engine_input
from switchyard.common.engines.base import EngineError
from switchyard.common.engines.fallback import NoEndpointAnswered
from switchyard.common.events import EventBus
from switchyard.common.fast_start import LEASE_RENEW_S, FastStartKeys, RunEnd, RunError
from switchyard.common.llm_generation import Generation, OomState, succeeded_outcome
from switchyard.common.model_registry import ModelEntry
from switchyard.common.quotas import Backlog
from switchyard.common.request_log import CURRENT_REQUEST_ID
from switchyard.common.shadow.mirror import ShadowMirror, llm_case, sampled
from switchyard.common.token_publisher import TokenPublisher

log = logging.getLogger("switchyard.api.fast_start")


class FastStarts:
    """This API process's runs (job id → task)."""

    def __init__(self, settings: ApiSettings, books: JobBookkeeping, http: httpx.AsyncClient, breakers: BreakerBoard, backlog: Backlog,
                 dispatch: Callable[[Job], None], catalog: CatalogHolder, shadow: ShadowMirror) -> None:
        self.settings, self.books, self.http, self.breakers, self.backlog = settings, books, http, breakers, backlog
        self.dispatch = dispatch  # the outbox's dispatch_soon: starts the job's workflow
        self.catalog, self.shadow = catalog, shadow
        self.bus: EventBus = books.bus
        self.keys = FastStartKeys(self.bus.redis, self.bus.ttl_s)
        self.runs: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()  # runs stopped for the job's cancel (not for a shutdown)

    async def begin(self, job: Job, entry: ModelEntry, inp: LlmInput) -> bool:
        """Start the job's first attempt here if its model's backlog is short; True if it started
        (then the job's stream already holds ``queued`` and ``running``; the run dispatches the job
        unless it succeeds)."""
        s = self.settings
        if s.llm_fast_start_max_backlog == 0:
            return False
        if len(self.runs) >= s.llm_fast_start_max_runs or await self.backlog.size(entry.name) > s.llm_fast_start_max_backlog:
            metrics.FAST_STARTS.labels(model=job.model, outcome="queued").inc()
            return False  # a queue to order by priority (or this process is full): the job waits its turn in Temporal
        job_id, token = str(job.id), uuid.uuid4().hex
        if job.model_spec and "llm" in job.model_spec:  # what the job was accepted for (a canary's: its candidate)
            entry = ModelEntry.model_validate(job.model_spec["llm"])
        if not await self.keys.claim(job_id, token):
            return False
        spec = JobSpec(job_id=job_id, domain="llm", model=job.model, input=None, priority_key=job.priority,
                       accepted_at_ms=job.created_at.timestamp() * 1000 if job.created_at else time.time() * 1000,
                       model_spec=job.model_spec, request_id=job.request_id)
        try:
            ids = await self.bus.append(job_id, [("status", {"status": JobStatus.queued.value}),
                                                 ("status", {"status": JobStatus.running.value, "attempt": 1})])
        except BaseException:
            await self.keys.end(job_id, token, None)  # a worker runs it
            raise
        assert ids is not None
        self.runs[job_id] = asyncio.create_task(self._run(job, spec, entry, inp, token, ids[-1]))
        return True

    def cancel(self, job_id: str) -> None:
        """Stop the job's run here at once, for the job's cancel (its workflow records it)."""
        task = self.runs.get(job_id)
        if task is not None:
            self._cancelled.add(job_id)
            task.cancel()

    async def _run(self, job: Job, spec: JobSpec, entry: ModelEntry, inp: LlmInput, token: str, running_id: str) -> None:
        job_id, started = spec.job_id, time.time()
        CURRENT_REQUEST_ID.set(spec.request_id)  # the engine calls send it (X-Request-Id)
        metrics.observe_queue_time("llm", spec, started)
        marked = asyncio.create_task(self.books.store.mark_running(job_id))  # attempt 1
        ooms = OomState(None)
        generation = Generation(entry, inp, spec, TokenPublisher(self.bus, job_id, 1, {}, last_id=running_id), http=self.http,
                                breakers=self.breakers, ooms=ooms, oom_switch_after=self.settings.llm_oom_switch_after, logger=log)
        end: RunEnd | None = None
        workflowless = False  # succeeded with no workflow started: no one will read an end record
        lease = asyncio.create_task(self._keep_lease(job_id, token, asyncio.current_task()))
        try:
            gen = await generation.run(started)
            if await marked is None:  # the job ended meanwhile (cancelled before it ran): nothing to record
                end = RunEnd(outcome="cancelled")
            elif await self.keys.renew(job_id, token) == "held":  # still this run's: no worker took over
                outcome = succeeded_outcome(spec, gen)
                ended = await self.books.record_end(outcome)  # the row, the quotas, the end event
                end = RunEnd(outcome="succeeded", generation=gen)
                workflowless = ended is not None and ended_undispatched(ended)
                if workflowless:  # no workflow to sample it (the sweeper's, for a long run, does)
                    self._offer_shadow(spec, outcome, entry, job)
        except asyncio.CancelledError:
            # For the job's cancel: a record (the workflow records the cancel); for a shutdown or a
            # lost lease: none (a worker takes over now).
            end = RunEnd(outcome="cancelled") if job_id in self._cancelled else None
        except EngineError as e:
            end = RunEnd(outcome="failed", error=RunError(type=e.kind, message=str(e), retryable=e.retryable), ooms=ooms.as_details())
        except NoEndpointAnswered as e:
            end = RunEnd(outcome="failed", error=RunError(type=e.error.kind, message=str(e), retryable=True, retry_after_s=e.retry_after_s),
                         ooms=ooms.as_details())
        except Exception as e:  # the stream, Redis, the database: the worker's attempt runs it again
            log.warning("fast start failed; a worker runs the job", extra={"fields": {"job_id": job_id, "error": repr(e)}})
        finally:
            if end is None or end.outcome != "succeeded":
                self.dispatch(job)  # its workflow retries, takes over or records the cancel
            metrics.FAST_STARTS.labels(model=spec.model, outcome=end.outcome if end is not None else "handed_over").inc()
            lease.cancel()
            marked.cancel()
            self.runs.pop(job_id, None)
            self._cancelled.discard(job_id)
            with contextlib.suppress(Exception):
                # No record without a workflow (a workflow the sweeper starts meanwhile finds the job ended).
                await asyncio.shield(self.keys.end(job_id, token, None if workflowless else end))

    def _offer_shadow(self, spec: JobSpec, outcome: JobOutcome, entry: ModelEntry, job: Job) -> None:
        """Sampled as the workflow samples: the case goes to the shadow queue after the answer (counted)."""
        if not sampled(entry.shadow):
            return
        assert entry.shadow is not None
        candidate = self.catalog.current.registry.get(entry.shadow.candidate)
        if candidate is None:  # removed by a reload since the job was accepted
            metrics.SHADOW_CASES.labels(model=entry.name, outcome="failed").inc()
            return
        self.shadow.offer(llm_case(spec, outcome, entry, candidate, engine_input(job, self.books.keys)))

    async def _keep_lease(self, job_id: str, token: str, run: asyncio.Task[None] | None) -> None:
        """Renew the run's lease; stop the run when it lapsed (a worker may run the job now) or the job's cancel was asked."""
        while True:
            await asyncio.sleep(LEASE_RENEW_S)
            try:
                state = await self.keys.renew(job_id, token)
            except Exception as e:  # Redis away: the lease may lapse; the run goes on until it knows
                log.warning("could not renew a fast start's lease", extra={"fields": {"job_id": job_id, "error": repr(e)}})
                continue
            if state != "held" and run is not None:
                if state == "cancel":
                    self._cancelled.add(job_id)
                run.cancel()
                return

    async def close(self) -> None:
        """Shutdown: stop every run without a record, so workers take them over at once."""
        runs = list(self.runs.values())
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)

