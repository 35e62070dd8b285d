"""The workflow of ``temporal_hop`` in a module of its own: the sandbox re-imports a workflow's module
for every run, and this one imports nothing but Temporal's workflow API."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow


@workflow.defn(name="HopProbe")
class HopProbe:
    @workflow.run
    async def run(self, t0: float) -> float:
        return await workflow.execute_activity("hop.started", t0, start_to_close_timeout=timedelta(seconds=10))  # type: ignore[no-any-return]
