"""Hand check of the vision groundwork that build-support/setup-vision.sh builds.

Run with the vision venv's python (after setup-vision.sh):

    .cache/switchyard/vision/venv/bin/python build-support/vision_probe.py [-n 200]
    ... vision_probe.py --http 127.0.0.1:P --grpc 127.0.0.1:Q   # use a running server instead

Unless --http/--grpc are given it starts tritonserver itself (infra/triton/run-tritonserver.sh,
free ports on 127.0.0.1), times readiness, and kills it at the end. Checks:
  * Triton HTTP and gRPC: top-1 of scikit-learn's china.jpg ("palace") and flower.jpg ("daisy"),
    from raw logits and from Triton's classification extension (class_count=1, labels.txt);
    the int8 model too; p50/p99 latency for batch 1 over both protocols, and in-process
    onnxruntime for comparison.
  * DALI CPU pipeline (device_id=None) vs a Pillow reference: same top-1, pixel difference,
    per-image cost.
Exit status 0 only when every top-1 check passes. Prints a small table.

Only numpy and Pillow are imported at module level: build-support/export_efficientnet.py imports
pillow_preprocess from here inside the export venv.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SWITCHYARD_CACHE_DIR", ROOT / ".cache" / "switchyard")) / "vision"
MODEL, MODEL_INT8 = "efficientnet_lite0", "efficientnet_lite0_int8"
INPUT, OUTPUT = "input", "logits"
EXPECTED = {"china": "palace", "flower": "daisy"}
SHORTER, CROP, MEAN, STD = 256, 224, 127.0, 128.0


def pillow_preprocess(jpeg: bytes) -> np.ndarray:
    """Reference preprocessing: RGB, shorter side 256 (bilinear), centre crop 224, (x-127)/128, CHW."""
    im = Image.open(BytesIO(jpeg)).convert("RGB")
    w, h = im.size
    s = SHORTER / min(w, h)
    nw, nh = max(SHORTER, round(w * s)), max(SHORTER, round(h * s))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - CROP) // 2, (nh - CROP) // 2
    im = im.crop((left, top, left + CROP, top + CROP))
    x = (np.asarray(im, dtype=np.float32) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def sample_images() -> dict[str, bytes]:
    import sklearn.datasets

    d = Path(sklearn.datasets.__file__).parent / "images"
    return {name: (d / f"{name}.jpg").read_bytes() for name in EXPECTED}


class DaliPreprocess:
    """CPU-only DALI pipeline fed with JPEG bytes (device="mixed" + a device id on a GPU)."""

    def __init__(self, max_batch: int = 8, threads: int = 2):
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=max_batch, num_threads=threads, device_id=None, exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
        def pipe():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
            img = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
            img = fn.resize(img, resize_shorter=SHORTER)
            return fn.crop_mirror_normalize(img, crop=(CROP, CROP), mean=MEAN, std=STD, dtype=types.FLOAT, output_layout="CHW")

        self._pipe = pipe()
        self._pipe.build()

    def __call__(self, jpegs: list[bytes]) -> np.ndarray:
        self._pipe.feed_input("jpegs", [np.frombuffer(b, dtype=np.uint8) for b in jpegs])
        (out,) = self._pipe.run()
        return out.as_array()


def pct(ts: list[float]) -> tuple[float, float]:
    a = np.asarray(ts) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def timed(fn, n: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log_path: Path) -> tuple[subprocess.Popen, str, str, float]:
    import tritonclient.http as httpclient

    ports = {k: free_port() for k in ("HTTP", "GRPC", "METRICS")}
    env = dict(os.environ, **{f"SWITCHYARD_TRITON_{k}_PORT": str(v) for k, v in ports.items()})
    log = log_path.open("wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(ROOT / "infra/triton/run-tritonserver.sh")], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    http, grpc = f"127.0.0.1:{ports['HTTP']}", f"127.0.0.1:{ports['GRPC']}"
    client = httpclient.InferenceServerClient(http)
    try:
        while time.perf_counter() - t0 < 120:
            if proc.poll() is not None:
                raise SystemExit(f"tritonserver exited with {proc.returncode}; see {log_path}")
            try:
                if client.is_server_ready() and client.is_model_ready(MODEL):
                    return proc, http, grpc, time.perf_counter() - t0
            except Exception:
                pass
            time.sleep(0.05)
    finally:
        client.close()  # an open keep-alive connection delays a graceful stop
    stop_server(proc)
    raise SystemExit(f"tritonserver not ready within 120 s; see {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its python-backend stubs
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=200, help="requests per latency measurement")
    ap.add_argument("--http", help="HOST:PORT of a running server (skip starting one)")
    ap.add_argument("--grpc", help="HOST:PORT of a running server (skip starting one)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import onnxruntime as ort
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    labels = json.loads((CACHE / "models" / "imagenet_labels.json").read_text())
    images = sample_images()
    rows: list[tuple[str, str]] = []
    fails: list[str] = []
    res: dict = {}

    def check(what: str, name: str, got: str) -> None:
        ok = got == EXPECTED[name]
        rows.append((f"{what} {name}.jpg", f"{got}{'' if ok else '  <-- FAIL, want ' + EXPECTED[name]}"))
        if not ok:
            fails.append(f"{what} {name}: {got}")

    # ---- preprocessing: Pillow reference vs DALI CPU
    sess = ort.InferenceSession(str(CACHE / "models" / "efficientnet_lite0.onnx"), providers=["CPUExecutionProvider"])
    dali = DaliPreprocess()
    pil = {k: pillow_preprocess(v) for k, v in images.items()}
    dal = dict(zip(images, dali(list(images.values())), strict=True))
    for name in images:
        for what, x in (("pillow+onnxruntime", pil[name]), ("dali+onnxruntime", dal[name])):
            logits = sess.run([OUTPUT], {INPUT: x[None]})[0][0]
            check(what, name, labels[int(logits.argmax())])
        diff = np.abs(pil[name] - dal[name])
        rows.append((f"|dali-pillow| {name}.jpg", f"max {diff.max():.3f}, mean {diff.mean():.4f} (input units)"))
    one = [images["china"]]
    eight = list(images.values()) * 4
    res["pillow_ms_per_image"] = pct(timed(lambda: pillow_preprocess(one[0]), 50))[0]
    res["dali_ms_per_image_b1"] = pct(timed(lambda: dali(one), 50))[0]
    res["dali_ms_per_image_b8"] = pct(timed(lambda: dali(eight), 20))[0] / 8
    x1 = pil["china"][None]
    res["onnxruntime_inproc_ms_p50_p99"] = pct(timed(lambda: sess.run([OUTPUT], {INPUT: x1}), args.n))

    # ---- Triton
    proc = None
    try:
        if args.http and args.grpc:
            http, grpc = args.http, args.grpc
        else:
            proc, http, grpc, res["triton_ready_s"] = start_server(CACHE / "tritonserver.log")
        hc = httpclient.InferenceServerClient(http)
        gc = grpcclient.InferenceServerClient(grpc)
        res["triton_version"] = hc.get_server_metadata()["version"]

        def infer(mod, cli, model: str, x: np.ndarray, class_count: int = 0):
            inp = mod.InferInput(INPUT, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            out = mod.InferRequestedOutput(OUTPUT, class_count=class_count)
            return cli.infer(model, [inp], outputs=[out]).as_numpy(OUTPUT)

        for proto, mod, cli in (("http", httpclient, hc), ("grpc", grpcclient, gc)):
            batch = np.stack([pil[k] for k in images])
            logits = infer(mod, cli, MODEL, batch)
            assert logits.shape == (len(images), 1000), logits.shape
            for i, name in enumerate(images):
                check(f"triton {proto} logits", name, labels[int(logits[i].argmax())])
            for name in images:  # classification extension: b"score:index:label"
                top = infer(mod, cli, MODEL, pil[name][None], class_count=1)
                check(f"triton {proto} class_count", name, top.reshape(-1)[0].decode().split(":", 2)[2])
            res[f"triton_{proto}_ms_p50_p99"] = pct(timed(lambda mod=mod, cli=cli: infer(mod, cli, MODEL, x1), args.n, warmup=10))
        logits8 = infer(grpcclient, gc, MODEL_INT8, np.stack([pil[k] for k in images]))
        for i, name in enumerate(images):
            check("triton grpc int8", name, labels[int(logits8[i].argmax())])
        res["triton_grpc_int8_ms_p50_p99"] = pct(timed(lambda: infer(grpcclient, gc, MODEL_INT8, x1), args.n, warmup=10))
        x8 = np.repeat(x1, 8, axis=0)
        res["triton_grpc_b8_ms_p50_p99"] = pct(timed(lambda: infer(grpcclient, gc, MODEL, x8), 30))
        if proc is not None:  # server + python-backend stubs, resident memory
            ps = subprocess.run(["ps", "-o", "rss=", "-g", str(proc.pid)], capture_output=True, text=True)
            res["triton_rss_mb"] = sum(int(v) for v in ps.stdout.split()) / 1024
        hc.close()  # an open keep-alive connection holds a SIGTERMed server for --exit-timeout-secs
        gc.close()
    finally:
        if proc is not None:
            t0 = time.perf_counter()
            stop_server(proc)
            res["triton_stop_s"] = time.perf_counter() - t0
            res["triton_exit_code"] = proc.returncode

    w = max(len(r[0]) for r in rows) + 2
    print("check".ljust(w) + "result")
    for k, v in rows:
        print(k.ljust(w) + v)
    print()
    for k, v in res.items():
        if isinstance(v, tuple):
            v = f"p50 {v[0]:.2f} ms, p99 {v[1]:.2f} ms"
        elif isinstance(v, float):
            v = f"{v:.3f}"
        print(k.ljust(w) + str(v))
    if args.json:
        args.json.write_text(json.dumps({"results": res, "checks": rows, "fails": fails}, indent=1))
    if fails:
        print(f"\nFAILED: {fails}", file=sys.stderr)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
