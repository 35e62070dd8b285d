"""Triton Python-backend model: runs an ONNX model (image classifier, recsys ranker) with onnxruntime (CPU).

Copied beside the ONNX file by build-support/setup-vision.sh into
.cache/switchyard/vision/model_repository/<model>/1/model.py and by build-support/setup-recsys.sh into
.cache/switchyard/recsys/triton_repository/recsys_ranker/1/model.py.
config.pbtxt parameters: onnx_file (file name in the version directory), intra_op_threads
(onnxruntime intra-op threads; 0 = onnxruntime's default). The ONNX graph must have one input
and one output with a dynamic batch dimension; Triton's "input"/"logits" map onto them by position.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.ort_in = self.session.get_inputs()[0].name
        self.ort_out = self.session.get_outputs()[0].name
        self.in_name = cfg["input"][0]["name"]
        self.out_name = cfg["output"][0]["name"]
        dims = [int(d) for d in cfg["input"][0]["dims"]]
        # Warm-up so that the first request does not pay for onnxruntime's lazy initialisation, at the
        # largest batch Triton may hand over: onnxruntime's memory arena grows (by doubling) to the
        # largest batch it has run and keeps it, so it reaches its size now, not when the first big
        # batch comes under load (the soak saw a one-off +34 MB step then; docs/soak.md).
        batch = max(1, int(cfg.get("max_batch_size", 1)))
        self.session.run([self.ort_out], {self.ort_in: np.zeros([batch] + dims, np.float32)})
        pb_utils.Logger.log_info(f"{args['model_name']}: onnxruntime {ort.__version__} on {path}, " f"intra_op_threads={so.intra_op_num_threads}")

    def execute(self, requests):
        # Dynamic batching hands over several requests at once: one onnxruntime call for all.
        arrays = [pb_utils.get_input_tensor_by_name(r, self.in_name).as_numpy() for r in requests]
        try:
            x = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            y = self.session.run([self.ort_out], {self.ort_in: x})[0]
        except Exception as exc:  # reported to every caller of this batch
            err = pb_utils.TritonError(f"onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(error=err) for _ in requests]
        responses, start = [], 0
        for a in arrays:
            out = pb_utils.Tensor(self.out_name, y[start : start + len(a)])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += len(a)
        return responses

    def finalize(self):
        self.session = None
