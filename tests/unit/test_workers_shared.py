"""What the workers share: a LocalDataPlane's request checks (``inputs``, ``wanted_outputs``,
``response``), the durable lane of switchyard.common.v2.job_lane (the job's model, error mapping, the
checkpointed chunk loop) and the realtime lane's front ends (switchyard.common.v2.realtime), on a toy
plane that doubles its input; the entry-point skeleton (switchyard.common.worker_main.run) before it
starts anything. The rest of the skeleton (Temporal worker, signals, shutdown) runs in every
integration test's workers."""

from __future__ import annotations

import socket
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from switchyard.common import worker_main
from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.catalog import CatalogHolder
from switchyard.common.contracts import JobSpec
from switchyard.common.payload_codec import KeyRing
from switchyard.common.v2.config import V2Config, V2Model
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.job_lane import JobAttempt, job_failure
from switchyard.common.v2.local_plane import LocalDataPlane
from switchyard.common.v2.realtime import front_ends
from switchyard.common.v2.tensors import InferRequest, InferResponse, RequestedOutput, Tensor
from switchyard.common.worker_settings import DomainWorkerSettings

CONFIG = V2Config.model_validate({
    "backends": {"b": {"engine": "onnxruntime", "model": "m.onnx"}},
    "models": [
        {"name": "double", "domain": "vision", "max_batch_size": 4,
         "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}, {"name": "bias", "datatype": "FP32", "shape": [-1, 2], "optional": True}],
         "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}, {"name": "n", "datatype": "INT32", "shape": [-1]}],
         "steps": [{"name": "s", "op": "infer", "backend": "b", "inputs": ["x"], "outputs": ["y"]},
                   {"name": "t", "op": "infer", "backend": "b", "inputs": ["x"], "outputs": ["n"]}]},
    ],
})


# Triton's onnxruntime backend out of memory, as the worker's Triton backend reports it (the text's
# source: tests/unit/test_oom.py).
TRITON_ORT_OOM = ("onnx runtime error 6: Non-zero status code returned while running Conv node. Name:'conv1' Status Message: "
                  "bfc_arena.cc:376 AllocateRawInternal Failed to allocate memory for requested buffer of size 1073741824")


class Doubler(LocalDataPlane):
    """y = 2x (+ bias), n = the row's index; parameter ``fail``: answer that V2 error status instead;
    ``oom_above``: out of memory (Triton's text) for a batch of more rows than that."""

    shape_note = "(rows of two)"

    def __init__(self, model_dir: Path) -> None:
        super().__init__("doubler", model_dir)
        self.backends: dict[str, object] = {"b": object()}
        self.checked: list[str] = []
        self.serve({m.name: m for m in CONFIG.models})

    async def ready(self) -> bool:
        return True

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        return True

    def check_input(self, m: V2Model, t: Tensor) -> None:
        self.checked.append(t.name)

    async def execute(self, req: InferRequest, m: V2Model) -> InferResponse:
        values = self.inputs(m, req.inputs)
        wanted = self.wanted_outputs(m, req)
        if "fail" in req.parameters:
            raise V2Error(int(req.parameters["fail"]), "refused")
        if len(values["x"]) > int(req.parameters.get("oom_above", len(values["x"]))):
            raise V2Error(503, f"backend b (Triton model m): {TRITON_ORT_OOM}")
        values["y"] = values["x"] * 2 + values.get("bias", 0)
        values["n"] = np.arange(len(values["x"]), dtype=np.int64)
        return self.response(m, req, wanted, values)


@pytest.fixture
def plane(tmp_path: Path) -> Doubler:
    return Doubler(tmp_path)


def x(rows: list[list[float]], name: str = "x", datatype: str = "FP32") -> Tensor:
    return Tensor(name, datatype, np.asarray(rows, dtype=np.float32 if datatype == "FP32" else np.int32))


# ---------------------------------------------------------------- request checks


@pytest.mark.asyncio
async def test_the_shared_checks_pass_a_good_request_and_answer_in_the_declared_datatypes(plane: Doubler) -> None:
    resp = await plane.infer(InferRequest(model="double", inputs=[x([[1, 2], [3, 4]]), x([[1, 1], [1, 1]], "bias")]))
    out = {t.name: t for t in resp.outputs}
    assert out["y"].data.tolist() == [[3, 5], [7, 9]] and out["n"].datatype == "INT32" and out["n"].data.dtype == np.int32
    assert plane.checked == ["x", "bias"]  # the worker's own check saw each input
    only = await plane.infer(InferRequest(model="double", inputs=[x([[1, 2]])], outputs=[RequestedOutput("n")]))
    assert [t.name for t in only.outputs] == ["n"]  # the optional input may be left out; only the asked output


@pytest.mark.asyncio
@pytest.mark.parametrize(("inputs", "outputs", "message"), [
    ([x([[1, 2]], "z")], None, "model 'double' has no input 'z' (inputs: x, bias)"),
    ([x([[1, 2]]), x([[1, 2]])], None, "input 'x' given twice"),
    ([x([[1, 2]], datatype="INT32")], None, "input 'x': datatype INT32, model 'double' expects FP32"),
    ([x([[1, 2, 3]])], None, "input 'x': shape [1, 3] does not match [-1, 2] (rows of two)"),
    ([x([[1, 2]] * 5)], None, "input 'x': batch of 5; model 'double' takes 1 to 4"),
    ([x([[1, 2]] * 2), x([[1, 2]] * 3, "bias")], None, "inputs disagree on the batch size (2 vs 3)"),
    ([x([[1, 2]], "bias")], None, "model 'double' needs input(s) x"),
    ([x([[1, 2]])], ["nope"], "model 'double' has no output 'nope' (outputs: y, n)"),
])
async def test_a_bad_request_is_a_precise_400(plane: Doubler, inputs: list[Tensor], outputs: list[str] | None, message: str) -> None:
    req = InferRequest(model="double", inputs=inputs, outputs=[RequestedOutput(n) for n in outputs] if outputs else None)
    with pytest.raises(V2Error) as e:
        await plane.infer(req)
    assert (e.value.status, e.value.message) == (400, message)


# ---------------------------------------------------------------- the durable lane


class FakeBooks:
    """Test double of JobBookkeeping (PostgreSQL job rows, Redis event streams): records what the attempt tells it."""

    def __init__(self) -> None:
        self.attempts = 0
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.bus = self

    async def start_attempt(self, spec: JobSpec, started_s: float) -> None:
        self.attempts += 1

    async def publish(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))


def spec(model: str = "double", snapshot: dict[str, Any] | None = None) -> JobSpec:
    return JobSpec(job_id="j1", domain="vision", model=model, input=None, priority_key=0, accepted_at_ms=0.0,
                   model_spec={"v2": snapshot} if snapshot else None)


@dataclass
class Run:
    done: list[Any]
    attempt: JobAttempt
    steps: list[tuple[int, int]]  # the chunks asked for


async def double_job(plane: Doubler, books: FakeBooks, job: JobSpec, rows: list[float], chunk: int, **params: Any) -> Run:
    """An activity's body on the shared lane: each row doubled, ``chunk`` rows a request."""
    attempt = JobAttempt(job, cast(JobBookkeeping, books), plane, "vision", "a doubler")
    steps: list[tuple[int, int]] = []

    async def step(start: int, end: int) -> list[Any]:
        steps.append((start, end))
        out = await attempt.infer(InferRequest(model=job.model, inputs=[x([[r, r] for r in rows[start:end]])], parameters=params), f"rows {start}..{end - 1}")
        return [float(row[0]) for row in out["y"]]

    return Run(await attempt.chunks(len(rows), chunk, step), attempt, steps)


@pytest.mark.asyncio
async def test_a_job_runs_in_chunks_with_progress_and_timings(plane: Doubler) -> None:
    books = FakeBooks()
    run = await ActivityEnvironment().run(double_job, plane, books, spec(), [1.0, 2.0, 3.0, 4.0, 5.0], 2)
    assert run.done == [2.0, 4.0, 6.0, 8.0, 10.0] and run.steps == [(0, 2), (2, 4), (4, 5)] and books.attempts == 1
    assert books.events == [("progress", {"done": 2, "total": 5}), ("progress", {"done": 4, "total": 5}), ("progress", {"done": 5, "total": 5})]
    t = run.attempt.timings()
    assert t.engine_ms is not None and t.total_ms is not None and 0 < t.engine_ms <= t.total_ms and t.queue_ms is not None and t.queue_ms > 0


@pytest.mark.asyncio
async def test_a_retried_attempt_resumes_after_its_checkpoint(plane: Doubler) -> None:
    books = FakeBooks()
    env = ActivityEnvironment()
    env.info = replace(env.info, attempt=2, heartbeat_details=[[-1.0, -2.0]])  # not what the plane answers: proves it was kept
    run = await env.run(double_job, plane, books, spec(), [1.0, 2.0, 3.0], 2)
    assert run.done == [-1.0, -2.0, 6.0] and run.steps == [(2, 3)] and books.events == [("progress", {"done": 3, "total": 3})]


@pytest.mark.asyncio
async def test_out_of_memory_splits_the_chunk_and_keeps_the_smaller_size(plane: Doubler) -> None:
    run = await ActivityEnvironment().run(double_job, plane, FakeBooks(), spec(), [1.0, 2.0, 3.0, 4.0, 5.0], 4, oom_above=1)
    assert run.done == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert run.steps == [(0, 4), (0, 2), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # 4 and 2 ran out of memory; 1 from then on
    assert run.attempt.chunk_size == 1  # also the checkpoint's: a retried attempt starts with it (below)
    resumed = await _resume(plane, [[2.0], 1], [1.0, 2.0, 3.0], chunk=4)
    assert resumed.steps == [(1, 2), (2, 3)] and resumed.done == [2.0, 4.0, 6.0]


async def _resume(plane: Doubler, details: list[Any], rows: list[float], chunk: int) -> Run:
    env = ActivityEnvironment()
    env.info = replace(env.info, attempt=2, heartbeat_details=details)
    return cast(Run, await env.run(double_job, plane, FakeBooks(), spec(), rows, chunk))


@pytest.mark.asyncio
async def test_one_item_out_of_memory_fails_the_attempt_as_retryable(plane: Doubler) -> None:
    with pytest.raises(ApplicationError) as e:
        await ActivityEnvironment().run(double_job, plane, FakeBooks(), spec(), [1.0, 2.0], 2, oom_above=0)
    assert (e.value.type, e.value.non_retryable) == ("EngineOutOfMemory", False) and "Failed to allocate memory" in e.value.message


@pytest.mark.asyncio
async def test_plane_errors_become_final_or_retryable_failures(plane: Doubler) -> None:
    with pytest.raises(ApplicationError) as e:
        await ActivityEnvironment().run(double_job, plane, FakeBooks(), spec(), [1.0, 2.0, 3.0], 2, fail=400)
    assert (e.value.type, e.value.non_retryable, e.value.message) == ("InvalidInput", True, "rows 0..1: refused")
    with pytest.raises(ApplicationError) as e:
        await ActivityEnvironment().run(double_job, plane, FakeBooks(), spec(), [1.0], 2, fail=503)
    assert (e.value.type, e.value.non_retryable, e.value.message) == ("BackendUnavailable", False, "rows 0..0: refused")
    assert job_failure("x", V2Error(499, "m")).non_retryable and not job_failure("x", V2Error(500, "m")).non_retryable


@pytest.mark.asyncio
async def test_the_job_runs_its_snapshot_and_only_a_model_this_worker_can_run(plane: Doubler) -> None:
    served = plane.models["double"]
    snapshot = served.model_copy(update={"max_batch_size": 1}).model_dump(mode="json")
    assert JobAttempt(spec(snapshot=snapshot), cast(JobBookkeeping, FakeBooks()), plane, "vision", "a doubler").model.max_batch_size == 1
    assert JobAttempt(spec(), cast(JobBookkeeping, FakeBooks()), plane, "vision", "a doubler").model is served
    for job, domain in [(spec("other"), "vision"), (spec(), "recsys"),
                        (spec(snapshot={**snapshot, "steps": [{**st, "backend": "gone"} for st in snapshot["steps"]]}), "vision")]:
        with pytest.raises(ApplicationError) as e:
            JobAttempt(job, cast(JobBookkeeping, FakeBooks()), plane, domain, "a doubler")
        assert (e.value.type, e.value.non_retryable) == ("UnknownModel", True)
        assert e.value.message == f"model {job.model!r} is not a doubler of this worker"


# ---------------------------------------------------------------- the realtime lane


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.asyncio
async def test_the_front_ends_listen_inside_the_block_and_stop_after_it(plane: Doubler) -> None:
    http_port, grpc_port = free_port(), free_port()
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
        async with front_ends(plane, "127.0.0.1", http_port, grpc_port, 1 << 20) as addresses:
            assert addresses == {"v2_http": f"127.0.0.1:{http_port}", "v2_grpc": f"127.0.0.1:{grpc_port}"}
            r = await client.post("/v2/models/double/infer", json=body)
            assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2, 4]
            with socket.create_connection(("127.0.0.1", grpc_port), timeout=1):
                pass  # the gRPC server listens too
        with pytest.raises(httpx.ConnectError):
            await client.get("/v2/health/live")


# ---------------------------------------------------------------- the entry point


class ToySettings(DomainWorkerSettings):
    task_queue: str = "toy"
    metrics_port: int = 0
    temporal_metrics_port: int = 0


def test_check_prints_the_task_queue_and_runs_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[object] = []

    async def main(settings: ToySettings, catalog: CatalogHolder, keys: KeyRing) -> None:
        ran.append(settings)

    def runner(coro: Coroutine[Any, Any, None]) -> None:
        coro.close()
        ran.append("runner")

    monkeypatch.setattr("sys.argv", ["switchyard-worker-toy", "--check"])
    monkeypatch.setenv("SWITCHYARD_TASK_QUEUE", "toy-7")
    worker_main.run("switchyard-worker-toy", ToySettings(), {}, main, runner=runner)
    assert capsys.readouterr().out == "switchyard-worker-toy ok: task queue 'toy-7'\n" and not ran


def test_a_worker_without_a_catalog_refuses_to_start(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    async def main(settings: ToySettings, catalog: CatalogHolder, keys: KeyRing) -> None:
        raise AssertionError("main must not run")

    monkeypatch.setattr("sys.argv", ["switchyard-worker-toy"])
    with pytest.raises(SystemExit) as e:
        worker_main.run("switchyard-worker-toy", ToySettings(catalog=tmp_path / "missing.yaml"), {}, main)
    assert e.value.code == 2 and "switchyard-worker-toy: refusing to start: bad model catalog" in capsys.readouterr().err
