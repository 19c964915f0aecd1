"""The ensemble's first step (``grank_validate``, Python backend): reject bad requests with an
error naming the field and the constraint; turn the caller's item ids into the model's dense
ids; pass everything else through unchanged.

ONNX graphs cannot raise such errors: a negative id would silently wrap around in Gather and an
id past the catalogue would fail deep inside ONNX Runtime. The checks (``validation.py``, a copy
of ``grank/validation.py``) read the model version's limits from ``limits.json`` and its item
ids from ``catalogue.json`` beside this file. Each request of a dynamic batch is answered on
its own, so one bad request never fails others. The extra output ``deployment`` [B, 1] is this
model's version: the catalogue step checks that it ran the same one.
"""
# First import: on the embedded server this module (a shim, see serve/backends/
# python_utils_shim.py) puts the venv with numpy < 2 ahead of the base interpreter's packages.
import triton_python_backend_utils as pb_utils  # isort: skip

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from validation import Catalogue, check_request  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "limits.json")) as f:
            self.limits = json.load(f)
        with open(os.path.join(here, "catalogue.json"), encoding="utf-8") as f:  # names are UTF-8
            self.catalogue = Catalogue(json.load(f)["item_ids"])
        self.version = int(args["model_version"])
        self.inputs = [i["name"] for i in cfg["input"]]
        # the checked inputs, in input order, then ``deployment``
        self.outputs = [o["name"] for o in cfg["output"]][:len(self.inputs)]

    def execute(self, requests):
        responses = []
        for r in requests:
            named = {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}
            dense, err = self.catalogue.to_dense(named["history_ids"])
            named["history_ids"] = dense
            err = err or check_request(dense, named["history_events"], named.get("user_features"),
                                       self.limits, named.get("request_time"))
            if err:
                # INVALID_ARG: clients see 400 / INVALID_ARGUMENT (a caller's mistake, not a 500)
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(err, pb_utils.TritonError.INVALID_ARG)))
            else:
                rows = named["history_events"].shape[0]
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor(o, named[n]) for n, o in zip(self.inputs, self.outputs)]
                    + [pb_utils.Tensor("deployment", np.full((rows, 1), self.version, np.int64))]))
        return responses
