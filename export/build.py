"""Checkpoint -> checked ONNX files -> model repository: the steps of ``python -m export``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grank.checkpoint import check_data, load_checkpoint
from grank.data import Interactions, load
from grank.signatures import shard_count, takes_request_time
from grank.validation import limits_dict

from .onnx_models import PROTOBUF_LIMIT, export_all, graphs
from .parity import check_onnx, pipeline_arrays, real_inputs
from .repository import Serving, build


@dataclass
class Exported:
    model: object
    cfg: object
    data: Interactions
    ck: dict           # the checkpoint dict (its ``dataset`` schema and ``catalogue``)
    paths: dict        # model name -> .onnx path
    problems: dict     # model name -> parity problems (empty lists = parity)
    arrays: dict       # the real-user tensors the check ran on


def export_checkpoint(checkpoint, out, users: int = 64, seed: int = 0, data: Interactions | None = None,
                      external_above: int = PROTOBUF_LIMIT - (1 << 20),
                      serving: dict | None = None, shards: int = 1) -> Exported:
    """Rebuild the model from ``checkpoint`` alone, export its graphs to ``out`` (the item
    table split into ``shards``) and compare them with PyTorch on ``users`` real users
    (``export.parity``). The graphs take the shape the checkpoint's config says to serve
    (``cfg.serve``); ``serving``: serving-only overrides on top (``grank.config.SERVING_KEYS``:
    k1, k2, a shorter history)."""
    model, cfg, ck = load_checkpoint(checkpoint, data, serving, served=True)
    if data is None:
        data = load(cfg.dataset)
        check_data(checkpoint, ck, data)  # the parity check's users must be the trained data's
    schema = ck["dataset"]
    arrays = pipeline_arrays(graphs(model, cfg.eval.k1, cfg.eval.k2, shards), real_inputs(data, cfg, users, seed))
    paths = export_all(model, cfg, schema, arrays, Path(out), external_above, shards)
    problems = check_onnx(paths, cfg, schema, arrays, save_dir=Path(out) / "parity")
    return Exported(model, cfg, data, ck, paths, problems, arrays)


def build_repository(ex: Exported, repository, version: int = 1, force: bool = False,
                     serving: Serving | None = None) -> Path:
    """Write configs + model files of ``ex`` into ``repository`` (refuses config drift);
    ``serving``: settings of the configs (default: the committed ones, with ``ex``'s shards)."""
    if any(ex.problems.values()):
        raise ValueError("refusing to build a repository from ONNX files that failed the parity check")
    schema = ex.ck["dataset"]
    limits = limits_dict(schema, ex.cfg.model.ranker_history, takes_request_time(ex.cfg))
    shards = shard_count(ex.paths)
    serving = serving or Serving(shards=shards)
    if serving.shards != shards:
        raise ValueError(f"serving.shards: {serving.shards}, but the graphs were exported in {shards} shards")
    return build(ex.cfg, schema, ex.paths, limits, ex.ck["catalogue"], Path(repository), version, force, serving)
