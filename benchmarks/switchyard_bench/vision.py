"""Vision realtime lane: ``vision-classify`` (JPEG bytes → DALI → EfficientNet-Lite0 on Triton →
top-5) through Nginx + API + worker, vs the same work done by the client calling Triton directly
(DALI in the client's process, Triton HTTP, top-5 in numpy), in the same run; and DALI vs Pillow.

Concurrency 1 isolates per-request overhead. Its probes are interleaved (one request of each, in a
shuffled order, per round) so that drift on this shared 2-core machine lands on every row alike
instead of on whichever row ran during it, and the hops are paired round by round (median difference,
bootstrap 95 % CI): Nginx (via Nginx − the API without it), the API (API − worker), the worker
(worker − Triton with the client's own DALI). The open-loop rate test schedules requests at a fixed
rate (latency measured from the scheduled send time, so queueing counts) as a steady load would; the
worker alone and the ingress run back to back at each rate up to saturation, and the report gives the
highest rate where each holds P99 < 50 ms and the p50 the ingress adds at the rates both hold.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from io import BytesIO
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as triton_aio
import tritonclient.utils.shared_memory as triton_shm
import uvloop
from PIL import Image

from switchyard.common.http1 import Http1Client
from switchyard.devstack.models import cache_dir, sample_images
from switchyard.devstack.stack import Stack
from switchyard.worker_vision.preprocess import CROP, MEAN, SHORTER, STD, DaliPreprocessor
from switchyard_bench.stats import RESULTS, median_ci, pct, save, summarize, table

N = 500
RATES_RPS = (20, 40)  # Triton called directly
# The realtime lane near saturation (issue 14): the worker alone and through Nginx + API, back to back
# at each rate: the highest rate where each holds P99 < 50 ms, and what the ingress adds there.
LANE_RATES_RPS = (10, 20, 30, 40, 50, 60, 80)
RATE_SECONDS = 15
P99_BUDGET_MS = 50.0
MODEL = "vision-classify"


def pillow_preprocess(jpeg: bytes) -> np.ndarray[Any, Any]:
    """The same transform with Pillow: RGB, shorter side 256 (bilinear), centre crop 224, (x-127)/128, CHW."""
    im = Image.open(BytesIO(jpeg)).convert("RGB")
    w, h = im.size
    s = SHORTER / min(w, h)
    nw, nh = max(SHORTER, round(w * s)), max(SHORTER, round(h * s))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - CROP) // 2, (nh - CROP) // 2
    x = (np.asarray(im.crop((left, top, left + CROP, top + CROP)), dtype=np.float32) - np.float32(MEAN[0])) / np.float32(STD[0])
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def interleaved(probes: dict[str, Callable[[], Any]], rounds: int, warmup: int = 20) -> dict[str, list[float]]:
    """Latency of each probe, ms: every round calls each probe once, in a fresh random order."""
    for fn in probes.values():
        for _ in range(warmup):
            fn()
    ms: dict[str, list[float]] = {name: [] for name in probes}
    order = list(probes)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            probes[name]()
            ms[name].append((time.perf_counter() - t0) * 1000)
    return ms


def timed(fn: Callable[[], Any], n: int, warmup: int = 20) -> tuple[list[float], float]:
    for _ in range(warmup):
        fn()
    ms: list[float] = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1000)
    return ms, time.perf_counter() - start


class Direct:
    """What a client without Switchyard does: preprocess itself, call Triton, take the top 5."""

    SHM = "switchyard-bench"

    def __init__(self, stack: Stack, image: bytes) -> None:
        self.image = image
        self.dali = DaliPreprocessor("auto", max_batch=8)
        self.labels = np.array((cache_dir() / "vision" / "models" / "imagenet_labels.txt").read_text().splitlines())
        self.triton = httpclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.triton_http_port}")
        self._shm: Any = None

    @staticmethod
    def _request(x: np.ndarray[Any, Any]) -> tuple[list[Any], list[Any]]:
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        return [inp], [httpclient.InferRequestedOutput("logits", binary_data=True)]

    def with_shared_memory(self) -> list[str]:
        """The same, with the input tensor handed over in Triton's system shared memory, as the worker does."""
        if self._shm is None:
            size = 3 * 224 * 224 * 4
            self._shm = triton_shm.create_shared_memory_region(self.SHM, f"/{self.SHM}", size)
            self.triton.register_system_shared_memory(self.SHM, f"/{self.SHM}", size)
        x = self.dali([self.image])
        triton_shm.set_shared_memory_region(self._shm, [x])
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_shared_memory(self.SHM, x.nbytes)
        return self._top5(self.triton.infer("efficientnet_lite0", [inp], outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)]).as_numpy("logits"))

    def close(self) -> None:
        if self._shm is not None:
            self.triton.unregister_system_shared_memory(self.SHM)
            triton_shm.destroy_shared_memory_region(self._shm)

    def _top5(self, logits: np.ndarray[Any, Any]) -> list[str]:
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = e / e.sum(axis=-1, keepdims=True)
        return list(self.labels[np.argsort(-probs[0])[:5]])

    def __call__(self) -> list[str]:
        inputs, outputs = self._request(self.dali([self.image]))
        return self._top5(self.triton.infer("efficientnet_lite0", inputs, outputs=outputs).as_numpy("logits"))

    async def call_async(self, triton: triton_aio.InferenceServerClient) -> list[str]:
        """The same, for the open-loop test: DALI in a thread, Triton through the asyncio client."""
        inputs, outputs = self._request(await asyncio.to_thread(self.dali, [self.image]))
        return self._top5((await triton.infer("efficientnet_lite0", inputs, outputs=outputs)).as_numpy("logits"))


def v2_http(url: str, image: bytes, key: str | None = None) -> Callable[[], list[str]]:
    """V2 REST infer of vision-classify; ``key``: the API key (Switchyard's API; not the worker's own port)."""
    client = httpclient.InferenceServerClient(url)
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    inp = httpclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=object), binary_data=True)
    outs = [httpclient.InferRequestedOutput("labels", binary_data=True), httpclient.InferRequestedOutput("scores", binary_data=True)]
    # A fresh dict per call: tritonclient writes the request's header length into the one it gets.
    return lambda: [b.decode() for b in client.infer(MODEL, [inp], outputs=outs, headers=dict(auth)).as_numpy("labels")[0]]


def v2_grpc(url: str, image: bytes, key: str | None = None) -> Callable[[], list[str]]:
    client = grpcclient.InferenceServerClient(url)
    auth = {"authorization": f"Bearer {key}"} if key else None
    inp = grpcclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=object))
    return lambda: [b.decode() for b in client.infer(MODEL, [inp], headers=auth).as_numpy("labels")[0]]


async def open_loop(send: Callable[[], Awaitable[None]], rate: float, seconds: float) -> tuple[list[float], float]:
    """Start one request every 1/rate s regardless of answers; latency from its scheduled start."""
    total = int(rate * seconds)
    ms: list[float] = []
    start = time.perf_counter()

    async def one(i: int) -> None:
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await send()
        ms.append((time.perf_counter() - due) * 1000)

    await asyncio.gather(*(one(i) for i in range(total)))
    return ms, time.perf_counter() - start


def rate_v2(url: str, image: bytes, rate: int, key: str | None = None) -> tuple[list[float], float, int]:
    """Open loop of V2 REST infers of vision-classify at ``url`` (the ingress, or the worker's own
    port), the body encoded once; (latencies ms, seconds, errors)."""
    inp = httpclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=object), binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([inp], outputs=[httpclient.InferRequestedOutput("labels", binary_data=False)])
    headers = {"Inference-Header-Content-Length": str(json_size), "Content-Type": "application/octet-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"

    async def send(http: Http1Client) -> None:
        r = await http.request("POST", f"/v2/models/{MODEL}/infer", body, headers)
        assert r.status == 200, r.body[:200]

    return lean_open_loop(url, send, rate)


def lean_open_loop(url: str, send: Callable[[Http1Client], Awaitable[None]], rate: int, seconds: float = RATE_SECONDS) -> tuple[list[float], float, int]:
    """Open loop at ``rate`` of ``send`` over the platform's lean HTTP/1.1 client (switchyard.common.http1)
    on uvloop; (latencies ms, seconds, errors: a refused connection or a failed assertion). The load
    generator shares the 2 cores: httpx's AsyncClient costs so much CPU per request that at 100 req/s
    the generator itself queued requests for seconds (bench recsys: p50 4.7 s against a worker that
    was 74 % idle)."""
    async def go() -> tuple[list[float], float, int]:
        errors = 0
        http = Http1Client.for_url(url, timeout_s=30)

        async def one() -> None:
            nonlocal errors
            try:
                await send(http)
            except (OSError, AssertionError):
                errors += 1

        try:
            ms, secs = await open_loop(one, rate, seconds)
        finally:
            await http.close()
        return ms, secs, errors

    return uvloop.run(go())


def rate_direct(stack: Stack, direct: Direct, rate: int) -> tuple[list[float], float]:
    async def go() -> tuple[list[float], float]:
        triton = triton_aio.InferenceServerClient(f"127.0.0.1:{stack.cfg.triton_http_port}")

        async def send() -> None:
            await direct.call_async(triton)

        try:
            return await open_loop(send, rate, RATE_SECONDS)
        finally:
            await triton.close()

    return asyncio.run(go())


def run(stack: Stack) -> None:
    imgs = sample_images()
    china = imgs["china"]
    direct = Direct(stack, china)
    base, base_shm = "Triton direct (client DALI + Triton HTTP), conc 1", "Triton direct, input in shared memory, conc 1"
    via, via_grpc = "vision-classify via Nginx+API (V2 HTTP), conc 1", "vision-classify via Nginx+API (V2 gRPC), conc 1"
    api_direct, worker = "vision-classify via the API, no Nginx (V2 HTTP), conc 1", "vision-classify on the worker (V2 HTTP), conc 1"
    probes: dict[str, tuple[Callable[[], list[str]], str | None]] = {
        base: (direct, None),
        base_shm: (direct.with_shared_memory, None),
        via: (v2_http(f"127.0.0.1:{stack.cfg.http_port}", china, stack.dev_key), base),
        via_grpc: (v2_grpc(f"127.0.0.1:{stack.cfg.grpc_port}", china, stack.dev_key), base),
        api_direct: (v2_http(f"127.0.0.1:{stack.cfg.api_port}", china, stack.dev_key), base),
        worker: (v2_http(f"127.0.0.1:{stack.cfg.vision_http_port}", china), base),
    }
    for name, (fn, _) in probes.items():
        assert fn()[0] == "palace", f"{name}: wrong answer"
    latencies = interleaved({name: fn for name, (fn, _) in probes.items()}, N)
    direct.close()
    rows = [summarize(name, latencies[name], sum(latencies[name]) / 1000, b) for name, (_, b) in probes.items()]
    paired = []
    for a, b in ((via, worker), (via_grpc, worker), (via, api_direct), (api_direct, worker), (worker, base_shm), (via, base)):
        med, lo, hi = median_ci([x - y for x, y in zip(latencies[a], latencies[b], strict=True)])
        paired.append({"name": f"{a.removesuffix(', conc 1')} − {b.removesuffix(', conc 1')}", "median_ms": round(med, 2), "ci95_ms": [round(lo, 2), round(hi, 2)]})
    for rate in RATES_RPS:
        ms, secs = rate_direct(stack, direct, rate)
        rows.append(summarize(f"Triton direct, {rate} req/s open loop", ms, secs))
    lane: list[dict[str, Any]] = []
    ingress = f"http://127.0.0.1:{stack.cfg.http_port}"
    for rate in LANE_RATES_RPS:
        for target, url, key in (("worker direct", f"http://127.0.0.1:{stack.cfg.vision_http_port}", None), ("via Nginx + API", ingress, stack.dev_key)):
            ms, secs, errors = rate_v2(url, china, rate, key)
            lane.append({"rate": rate, "target": target, "n": len(ms), "errors": errors, "p50_ms": round(statistics.median(ms), 2), "p99_ms": round(pct(ms, 99), 2),
                         "holds": errors == 0 and pct(ms, 99) < P99_BUDGET_MS})
            rows.append(summarize(f"vision-classify {target}, {rate} req/s open loop", ms, secs))

    # Preprocessing alone, per image, in this process.
    dali = direct.dali
    for batch in (1, 8):
        jpegs = [china] * batch
        ms, secs = timed(lambda jpegs=jpegs: dali(jpegs), N // batch)  # type: ignore[misc]
        rows.append(summarize(f"preprocess DALI ({dali.device}), batch {batch}, per image", [m / batch for m in ms], secs / batch,
                              f"preprocess Pillow, batch {batch}, per image"))
        ms, secs = timed(lambda jpegs=jpegs: [pillow_preprocess(j) for j in jpegs], N // batch)  # type: ignore[misc]
        rows.append(summarize(f"preprocess Pillow, batch {batch}, per image", [m / batch for m in ms], secs / batch))
    print(table(rows))
    highest = {t: max((r["rate"] for r in lane if r["target"] == t and r["holds"]), default=0) for t in ("worker direct", "via Nginx + API")}
    text = lane_report(paired, lane, highest)
    print(text)
    out = save("vision", rows, {"paired_conc1": paired, "lane_open_loop": lane, "highest_rate_p99_under_50ms": highest,
        "model": MODEL, "image": "scikit-learn china.jpg (640x427 JPEG)", "n_per_row": N, "open_loop": f"{RATES_RPS} req/s, {RATE_SECONDS} s each",
        "notes": "Load generator, Nginx, API, worker (DALI CPU) and Triton (onnxruntime, 2 threads) share the machine's cores. "
                 "Direct = the client does DALI itself and calls Triton's efficientnet_lite0 over HTTP: the work vision-classify does, minus the platform. "
                 "The worker hands Triton its input through system shared memory; 'input in shared memory' is the direct client doing the same. "
                 "Concurrency-1 rows are interleaved request by request (req/s there = 1 / mean latency).",
    })
    with (RESULTS / "vision.md").open("a") as f:
        f.write(f"\n{text}\n")
    print(f"results: {out}")


def lane_report(paired: list[dict[str, Any]], lane: list[dict[str, Any]], highest: dict[str, int]) -> str:
    lines = ["| paired difference per round, conc 1 | median ms | 95 % CI |", "|---|---|---|"]
    lines += [f"| {p['name']} | {p['median_ms']:+.2f} | [{p['ci95_ms'][0]:+.2f}, {p['ci95_ms'][1]:+.2f}] |" for p in paired]
    lines += ["", "| open loop, V2 HTTP | req/s | n | errors | p50 ms | p99 ms | P99 < 50 ms |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['rate']} | {r['n']} | {r['errors']} | {r['p50_ms']} | {r['p99_ms']} | {'yes' if r['holds'] else 'NO'} |" for r in lane]
    by = {(r["rate"], r["target"]): r for r in lane}
    lines += ["", "| rate both hold | p50 added by Nginx + API, ms |", "|---|---|"]
    lines += [f"| {rate} | {by[(rate, 'via Nginx + API')]['p50_ms'] - by[(rate, 'worker direct')]['p50_ms']:+.2f} |"
              for rate in LANE_RATES_RPS if by[(rate, "worker direct")]["holds"] and by[(rate, "via Nginx + API")]["holds"]]
    lines += ["", f"Highest rate with P99 < 50 ms: worker direct {highest['worker direct']} req/s, through Nginx + API {highest['via Nginx + API']} req/s "
              f"(of {', '.join(map(str, LANE_RATES_RPS))})."]
    return "\n".join(lines)
