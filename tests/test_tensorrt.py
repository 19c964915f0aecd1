"""TensorRT FP16 engines vs ONNX Runtime (Polygraphy). Runs only with an NVIDIA GPU and
TensorRT 10.x (`make setup-gpu`); elsewhere skipped with the reason."""
import pytest

from export.tensorrt_engines import missing

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def _needs_tensorrt():
    why = missing()
    if why:
        pytest.skip(why)


def test_tensorrt_engines_match_onnxruntime(_needs_tensorrt, tiny_export, tmp_path):
    from export.tensorrt_engines import build_engines, compare
    plans = build_engines(tiny_export.cfg, tiny_export.paths, tmp_path)
    assert compare(tiny_export.cfg, tiny_export.paths, plans, tiny_export.arrays) == \
        {n: [] for n in plans}

