"""A Python-based Triton backend named ``onnxruntime`` for CPU machines.

The Triton binary of the ``nvidia-pytriton`` wheel has only the Python backend. Placing this file
at ``<backend-directory>/onnxruntime/model.py`` makes models whose config says
``backend: "onnxruntime"`` load through it (Triton's "Python-based backends"), so the SAME
committed config.pbtxt files serve here and on the native ONNX Runtime backend of the NGC
container. It opens ``<model>/<version>/model.onnx`` (or ``default_model_filename``), honours the
native backend's ``intra_op_thread_count`` / ``inter_op_thread_count`` parameters, and runs all
requests of a dynamic batch as one ONNX Runtime call.
"""
# First import: on the embedded server this module (a shim, see serve/backends/
# python_utils_shim.py) puts the venv with numpy < 2 ahead of the base interpreter's packages.
import triton_python_backend_utils as pb_utils  # isort: skip

import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.name = cfg["name"]
        fname = cfg.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], fname)
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("intra_op_thread_count", 0) or 0)
        so.inter_op_num_threads = int(params.get("inter_op_thread_count", 0) or 0)
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in cfg["input"]]
        self.outputs = [o["name"] for o in cfg["output"]]

    def _run(self, feeds):
        return self.session.run(self.outputs, feeds)

    def _respond(self, outs):
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(o))
                                           for n, o in zip(self.outputs, outs)])

    def execute(self, requests):
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}
                 for r in requests]
        if len(feeds) > 1:
            sizes = [f[self.inputs[0]].shape[0] for f in feeds]
            try:
                outs = self._run({n: np.concatenate([f[n] for f in feeds]) for n in self.inputs})
            except Exception:  # one bad request must not fail the others: answer one by one
                outs = None
            if outs is not None:
                cuts = np.cumsum(sizes)[:-1]
                parts = [np.split(o, cuts) for o in outs]
                return [self._respond([p[i] for p in parts]) for i in range(len(feeds))]
        responses = []
        for f in feeds:
            try:
                responses.append(self._respond(self._run(f)))
            except Exception as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.name}: onnxruntime failed: {e}")))
        return responses
