"""Checkpoint -> three ONNX models (user encoder, MIPS top-k, Ranker top-k).

Each wrapper below is a pure inference graph over ``grank.model.GRank`` (never training code)
whose tensor names, dtypes and shapes come from ``grank.signatures``; axis 0 is dynamic
(``batch``). The item table is computed once from the item tower and stored as a constant
(``item_vectors`` [N+1, d] float32): 3,707 x 64 floats = 0.9 MiB for ML-1M. Tables past
2 GiB go to ONNX external data (``model.onnx.data`` beside the model), ONNX's protobuf limit.
Each of the three graphs holds its own copy (the encoder and the Ranker gather rows of it):
cheap for ML-1M; a multi-million-item catalogue would want the encoder and Ranker to take
item vectors as inputs instead (docs/PERFORMANCE.md measures the ensemble at 1M items).

Exported with torch's TorchScript-based exporter (``dynamo=False``): it keeps our tensor names
exactly and needs no onnxscript; torch 2.13 calls it legacy but supports it.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from grank.mips import block_size, mips_top_k, pad_table
from grank.model import GRank
from grank.signatures import MIPS, RANKER, USER_ENCODER, Signature, signatures

OPSET = 17            # ONNX Runtime 1.19 (Triton 24.10) and TensorRT 10.5 both take it
PROTOBUF_LIMIT = 2 ** 31 - 1


class UserEncoder(nn.Module):
    """[B, R] history ids, [B, R] event codes, [B, F] profile -> user_embedding [B, d]. A data
    set without user features (F = 0) has no ``user_features`` input."""

    def __init__(self, model: GRank):
        super().__init__()
        self.model = model
        self.register_buffer("item_vectors", model.item_vectors().detach().clone())

    def forward(self, history_ids, history_events, user_features=None):
        if user_features is None:
            user_features = history_ids.new_zeros(history_ids.shape[0], 0)
        return self.model.encode_users(history_ids, history_events, user_features, self.item_vectors)


class MipsTopK(nn.Module):
    """user_embedding [B, d], history_ids [B, R] -> candidate ids [B, k1] int64 and scores
    [B, k1] float32: brute-force inner products over the whole catalogue, the padding row and
    the items of the history excluded (-inf), then the top-k. ``item_vectors``: [N+1, d]
    float32 with row 0 = padding (the model's table, or a synthetic one for benchmarks).
    Large catalogues take the exact two-step top-k of ``grank.mips.block_top_k`` (``block``:
    None picks ``grank.mips.block_size``, 0 forces one TopK); their stored table gets up to
    block - 1 zero rows, never returned."""

    def __init__(self, item_vectors: torch.Tensor, k: int, tau: float = 1.0, block: int | None = None):
        super().__init__()
        self.k, self.tau = k, tau
        self.block = block_size(item_vectors.shape[0], k) if block is None else block
        table, self.pad_rows = pad_table(item_vectors.detach(), self.block)
        self.register_buffer("item_vectors", table.clone())

    def forward(self, user_embedding, history_ids):
        scores, ids = mips_top_k(user_embedding, self.item_vectors, self.k, self.tau,
                                 exclude_ids=history_ids, block=self.block, pad_rows=self.pad_rows)
        return ids, scores


class RankerTopK(nn.Module):
    """user_embedding [B, d], history [B, R] ids + event codes, candidate_ids [B, k1] (+ request_time
    [B, 1] int64 Unix seconds with ``model.ranker_popularity``: the popularity-by-day table is
    then a constant of the graph) -> ranked_ids [B, k2] int64 (dense) and scores [B, k2]
    float32, best first."""

    def __init__(self, model: GRank, k: int):
        super().__init__()
        self.model, self.k = model, k
        self.register_buffer("item_vectors", model.item_vectors().detach().clone())

    def forward(self, user_embedding, history_ids, history_events, candidate_ids, request_time=None):
        when = None if request_time is None else request_time[:, 0]
        return self.model.rank_top_k(user_embedding, history_ids, history_events, candidate_ids,
                                     self.k, self.item_vectors, when)


def graphs(model: GRank, k1: int, k2: int) -> dict[str, nn.Module]:
    """The exported graphs by served model name, in eval mode."""
    model.eval()
    return {USER_ENCODER: UserEncoder(model).eval(),
            MIPS: MipsTopK(model.item_vectors(), k1, model.cfg.tau).eval(),
            RANKER: RankerTopK(model, k2).eval()}


def example_inputs(sig: Signature, arrays: dict[str, np.ndarray]) -> tuple:
    """The signature's inputs, in order, as torch tensors from ``arrays`` (name -> array)."""
    return tuple(torch.as_tensor(arrays[t.name]) for t in sig.inputs)


def export_one(module: nn.Module, sig: Signature, arrays: dict[str, np.ndarray], path: Path,
               external_above: int = PROTOBUF_LIMIT - (1 << 20)) -> Path:
    """Trace ``module`` on real inputs and write ``path`` (ONNX, opset OPSET, dynamic batch).
    Models larger than ``external_above`` bytes keep their weights in ``<path>.data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [t.name for t in sig.inputs] + [t.name for t in sig.outputs]
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # k, d and R are constants of a model version by design: the tracer's "treated as a
        # constant" warnings about them are expected
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # slices with a step (the padding tricks of prefix_means) stay Slice nodes: fine
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(module, example_inputs(sig, arrays), str(tmp), dynamo=False,
                          opset_version=OPSET, input_names=[t.name for t in sig.inputs],
                          output_names=[t.name for t in sig.outputs],
                          dynamic_axes={n: {0: "batch"} for n in names})
    m = onnx.load(str(tmp))
    # The tracer leaves some output dims symbolic (TopK's k); the signature is the contract.
    for vals, tensors in ((m.graph.input, sig.inputs), (m.graph.output, sig.outputs)):
        for v, t in zip(vals, tensors):
            dims = v.type.tensor_type.shape.dim
            dims[0].dim_param = "batch"
            for d, n in zip(dims[1:], t.dims):
                d.dim_value = n
    m.doc_string = f"GRank {sig.name}: " + "; ".join(
        f"{t.name} {t.dtype}[batch, {', '.join(map(str, t.dims))}]" for t in sig.inputs + sig.outputs)
    tmp.unlink()
    for f in path.parent.glob(path.name + ".data"):
        f.unlink()
    if m.ByteSize() > external_above:
        onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(m, str(path))
    onnx.checker.check_model(str(path))  # the path form also validates external data
    return path


def reference_outputs(module: nn.Module, sig: Signature, arrays: dict[str, np.ndarray]) -> dict:
    """PyTorch outputs of ``module`` (name -> numpy) for the parity check."""
    with torch.no_grad():
        outs = module(*example_inputs(sig, arrays))
    outs = outs if isinstance(outs, tuple) else (outs,)
    return {t.name: o.numpy() for t, o in zip(sig.outputs, outs)}


def export_all(model: GRank, cfg, schema: dict, arrays: dict[str, np.ndarray], out: Path,
               external_above: int = PROTOBUF_LIMIT - (1 << 20)) -> dict[str, Path]:
    """Export the three graphs to ``out/<model name>.onnx``; ``arrays`` holds real inputs for
    every tensor a graph takes (history, events, profile, and the intermediate tensors);
    ``schema``: the data set's (``grank.data.schema``)."""
    sigs = signatures(cfg, schema)
    return {name: export_one(g, sigs[name], arrays, Path(out) / f"{name}.onnx", external_above)
            for name, g in graphs(model, cfg.eval.k1, cfg.eval.k2).items()}
