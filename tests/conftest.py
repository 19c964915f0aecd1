"""Shared fixtures: tiny real data (MovieLens-100K) and a tiny trained model.

The data cache goes to a temporary folder shared by the whole test run, so tests never touch
artifacts/.
"""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["GRANK_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(1)  # tests are small; one thread keeps them deterministic and polite
    yield


@pytest.fixture(scope="session")
def ml100k():
    from grank.data import load
    return load("ml-100k")


@pytest.fixture(scope="session")
def tiny_cfg():
    from grank.config import make_config
    return make_config("tiny", "grank", seed=0)


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, ml100k, tiny_cfg):
    """(model, cfg, out_dir) after a tiny-preset run (a few seconds)."""
    from grank.checkpoint import load_checkpoint
    from grank.train import train
    out = tmp_path_factory.mktemp("tiny")
    summary = train(tiny_cfg, ml100k, out, progress=False)
    model, cfg, _ = load_checkpoint(out / "best.pt", ml100k)
    return model, cfg, out, summary


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, ml100k, tiny_trained):
    """The tiny checkpoint exported to ONNX and checked against PyTorch (export.build)."""
    from export.build import export_checkpoint
    _, _, out, _ = tiny_trained
    return export_checkpoint(out / "best.pt", tmp_path_factory.mktemp("onnx"), users=64, data=ml100k)


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory, tiny_export):
    from export.build import build_repository
    return build_repository(tiny_export, tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory, tiny_repository):
    """A real Triton server (the nvidia-pytriton wheel's binary) on free ports, serving the
    tiny repository; stopped by pid at the end of the test run. Start-up failures show the
    server log's errors."""
    from serve.server import TritonServer
    server = TritonServer(tiny_repository, work_dir=tmp_path_factory.mktemp("triton"))
    server.start(timeout=180)
    yield server
    server.stop()
    assert server.proc.returncode is not None


@pytest.fixture
def interrupt_at_epoch_2(monkeypatch):
    """``run(call)``: run a training call that is interrupted (KeyboardInterrupt) as its second
    epoch starts, after epoch 1's checkpoints are written."""
    import grank.train as T

    def run(call):
        calls, real = {"n": 0}, T.epoch_samples

        def flaky(*a, **k):  # call 1 sizes the schedule, call 2 is epoch 1, call 3 is epoch 2
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return real(*a, **k)
        monkeypatch.setattr(T, "epoch_samples", flaky)
        try:
            with pytest.raises(KeyboardInterrupt):
                call()
        finally:
            monkeypatch.setattr(T, "epoch_samples", real)
    return run
