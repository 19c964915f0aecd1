"""Checkpoint -> checked ONNX files -> model repository: the steps of ``python -m export``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grank.data import Interactions, load
from grank.signatures import takes_request_time
from grank.checkpoint import load_checkpoint
from grank.validation import limits_dict

from .onnx_models import PROTOBUF_LIMIT, export_all, graphs
from .parity import check_onnx, pipeline_arrays, real_inputs
from .repository import build


@dataclass
class Exported:
    model: object
    cfg: object
    data: Interactions
    paths: dict        # model name -> .onnx path
    problems: dict     # model name -> parity problems (empty lists = parity)
    arrays: dict       # the real-user tensors the check ran on


def export_checkpoint(checkpoint, out, users: int = 64, seed: int = 0, data: Interactions | None = None,
                      external_above: int = PROTOBUF_LIMIT - (1 << 20),
                      serving: dict | None = None) -> Exported:
    """Rebuild the model from ``checkpoint`` alone, export the three graphs to ``out`` and
    compare them with PyTorch on ``users`` real users (``export.parity``). The graphs take the
    shape the checkpoint's config says to serve (``cfg.serve``); ``serving``: serving-only
    overrides on top (``grank.config.SERVING_KEYS``: k1, k2, a shorter history)."""
    model, cfg, _ = load_checkpoint(checkpoint, data, serving, served=True)
    data = data if data is not None else load(cfg.dataset)
    arrays = pipeline_arrays(graphs(model, cfg.eval.k1, cfg.eval.k2), real_inputs(data, cfg, users, seed))
    paths = export_all(model, cfg, arrays, Path(out), external_above)
    problems = check_onnx(paths, cfg, arrays, save_dir=Path(out) / "parity")
    return Exported(model, cfg, data, paths, problems, arrays)


def build_repository(ex: Exported, repository, version: int = 1, force: bool = False) -> Path:
    """Write configs + model files of ``ex`` into ``repository`` (refuses config drift)."""
    if any(ex.problems.values()):
        raise ValueError("refusing to build a repository from ONNX files that failed the parity check")
    limits = limits_dict(ex.data.n_items, ex.cfg.model.ranker_history, ex.data.user_feat_sizes,
                         takes_request_time(ex.cfg))
    return build(ex.cfg, ex.paths, limits, Path(repository), version, force)
