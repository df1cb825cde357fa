"""Triton python-backend model: one onnxruntime session, as Triton's onnxruntime backend runs it.

Copied as `<model>/1/model.py` into the Triton repository that benchmarks/vs_triton.py
generates; it runs inside Triton's python-backend stub (its own venv), not in ours.
Session options are onnxruntime's defaults unless the config sets the parameters
Triton's onnxruntime backend reads (`intra_op_thread_count`, `inter_op_thread_count`).
Dynamic batching hands `execute` several requests; they run as one concatenated batch.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # provided by the python backend's stub


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        if int(params.get("intra_op_thread_count", "0") or 0) > 0:
            options.intra_op_num_threads = int(params["intra_op_thread_count"])
        if int(params.get("inter_op_thread_count", "0") or 0) > 0:
            options.inter_op_num_threads = int(params["inter_op_thread_count"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        columns = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            for name in self.inputs
        }
        rows = [a.shape[0] for a in columns[self.inputs[0]]]
        feeds = {n: a[0] if len(a) == 1 else np.concatenate(a) for n, a in columns.items()}
        results = self.session.run(self.outputs, feeds)
        responses, start = [], 0
        for n in rows:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + n]))
                for name, out in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
