"""Shared fixtures: tiny real data (MovieLens-100K) and a tiny trained model.

The data cache goes to a per-session temporary folder so tests never touch artifacts/.
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
    from grank.train import load_checkpoint, train
    out = tmp_path_factory.mktemp("tiny")
    summary = train(tiny_cfg, ml100k, out, progress=False)
    model, cfg, _ = load_checkpoint(out / "best.pt", ml100k)
    return model, cfg, out, summary
