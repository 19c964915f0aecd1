"""The ensemble's last step (``grank_catalogue``, Python backend): the Ranker's dense item ids
-> the data set's own ids and display names, so that callers never see dense ids.

Reads ``catalogue.json`` (``grank.data.catalogue`` of the checkpoint the repository was built
from) beside this file, through ``validation.Catalogue`` (a copy of ``grank/validation.py``).
"""
# First import: on the embedded server this module (a shim, see serve/backends/
# python_utils_shim.py) puts the venv with numpy < 2 ahead of the base interpreter's packages.
import triton_python_backend_utils as pb_utils  # isort: skip

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from validation import Catalogue  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "catalogue.json"), encoding="utf-8") as f:  # names are UTF-8
            c = json.load(f)
        self.catalogue = Catalogue(c["item_ids"], c["item_names"])

    def execute(self, requests):
        responses = []
        for r in requests:
            dense = pb_utils.get_input_tensor_by_name(r, "ranked_ids").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("item_ids", self.catalogue.to_own(dense)),
                pb_utils.Tensor("item_names", self.catalogue.names_of(dense))]))
        return responses
