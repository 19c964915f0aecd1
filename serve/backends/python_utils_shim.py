"""Installed as ``triton_python_backend_utils.py`` in the embedded server's Python backend.

The wheel's Python backend stub embeds Python with an isolated configuration (pybind11), which
ignores PYTHONPATH: it would import the BASE interpreter's site-packages (where that has numpy
2.x, the Python backend silently returns empty outputs) instead of this
project's venv. The stub imports this module before any model, so it is the first moment to
put the venv (passed in PYTHONPATH by ``serve.server``) in front, check numpy, and then run
the wheel's original module (``triton_python_backend_utils_wheel.py``) in this namespace.
"""
import os
import sys

for _p in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy  # noqa: E402

if int(numpy.__version__.split(".")[0]) >= 2:
    raise ImportError(f"numpy {numpy.__version__} from {numpy.__file__}: the Python backend needs "
                      "numpy < 2 (with 2.x it returns empty outputs); run `make setup`")

_orig = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_python_backend_utils_wheel.py")
with open(_orig) as _f:
    exec(compile(_f.read(), _orig, "exec"))  # noqa: S102  the wheel's own module, unchanged
