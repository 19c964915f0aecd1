"""The ensemble's last step (``grank_catalogue``, Python backend): the Ranker's dense item ids
-> the data set's own ids and display names, so that callers never see dense ids. An id
outside 1..N (only a direct call can send one) is an INVALID_ARGUMENT error. ``deployment``
[B, 1] comes from the validator and must equal this model's version (the ensemble pins every
step to one version; a mismatch would be a mixed request and is refused); it is returned to
the caller.

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
        self.version = int(args["model_version"])

    def execute(self, requests):
        responses = []
        for r in requests:
            dense = pb_utils.get_input_tensor_by_name(r, "ranked_ids").as_numpy()
            version = pb_utils.get_input_tensor_by_name(r, "deployment").as_numpy()
            err = self.catalogue.check_ranked(dense)
            if err is None and (version != self.version).any():
                other = int(version.ravel()[(version.ravel() != self.version).argmax()])
                err = (f"deployment: the request was validated by version {other} "
                       f"but reached catalogue version {self.version}")
            if err:  # reachable only by calling this step directly: answer an error, not names
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(err, pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("item_ids", self.catalogue.to_own(dense)),
                pb_utils.Tensor("item_names", self.catalogue.names_of(dense)),
                pb_utils.Tensor("deployment", version)]))
        return responses
