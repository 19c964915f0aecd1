"""Checkpoint -> ONNX models: user encoder, MIPS top-k (one model, or S shards and their
merge), Ranker top-k.

Each wrapper below is a pure inference graph over ``grank.model.GRank`` (never training code)
whose tensor names, dtypes and shapes come from ``grank.signatures``; axis 0 is dynamic
(``batch``). The item table is computed once from the item tower and stored as a constant
(``item_vectors`` [N+1, d] float32): 3,707 x 64 floats = 0.9 MiB for ML-1M. Tables past
2 GiB go to ONNX external data (``model.onnx.data`` beside the model), ONNX's protobuf limit.
Each of the three graphs holds its own copy (the encoder and the Ranker gather rows of it):
cheap for ML-1M; a multi-million-item catalogue would want the encoder and Ranker to take
item vectors as inputs instead (docs/PERFORMANCE.md measures the ensemble at 1M items).

Each graph guards its own inputs, because a composing model can be called directly, without
the ensemble's validator: a row with an id, event code or feature code out of range, a
non-finite or overflowing embedding, or a negative request time is computed on clamped inputs
(so no Gather wraps around or reads past a table) and then answered as a *flagged row*:
``user_embedding`` all NaN, or ids all -1 with scores all NaN. ONNX has no portable way to
raise an error from inside a graph; a flagged row cannot be mistaken for an answer, other rows
of the same batch are untouched, and NaN propagates: a flagged encoder row flags the MIPS and
Ranker rows fed from it, and the catalogue step refuses id -1 with an error.

A sharded item table (``shards`` S > 1, for tables too large for one device or one model)
is S MIPS models over contiguous runs of dense ids (``grank.mips.shard_bounds``), each
returning its own top-k1 as dense ids of the whole catalogue, and ``MipsMerge``, the top-k1 of
their S x k1 union. The merge is exact: an item of the overall top-k1 is in the top-k1 of its
own shard, since every item that beats it there beats it overall. So the sharded stage returns
the unsharded one's answer (up to the order of equal scores).

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

from grank.mips import block_size, mips_top_k, pad_table, shard_bounds
from grank.model import GRank
from grank.signatures import (MIPS, MIPS_MERGE, RANKER, USER_ENCODER, Signature, mips_shard,
                              signatures)

OPSET = 17            # ONNX Runtime 1.19 (Triton 24.10) and TensorRT 10.5 both take it
PROTOBUF_LIMIT = 2 ** 31 - 1


FLAGGED_ID = -1  # the id of every slot of a flagged row (see the module docstring)


def _rows_within(x: torch.Tensor, lo, hi) -> torch.Tensor:
    """[B, ...] -> [B] bool: every value of the row in [lo, hi] (``hi`` may be a tensor that
    broadcasts over the last axis)."""
    return ((x >= lo) & (x <= hi)).reshape(x.shape[0], -1).all(1)


def _rows_finite(x: torch.Tensor) -> torch.Tensor:
    """[B, d] float -> [B] bool: no NaN or infinity in the row."""
    return torch.isfinite(x).all(1)


def _flag(ok: torch.Tensor, ids: torch.Tensor | None, scores: torch.Tensor):
    """Rows where ``ok`` [B] is False become ids -1 and scores NaN (``ids`` None: scores only)."""
    nan = torch.tensor(float("nan"), dtype=scores.dtype)
    scores = torch.where(ok[:, None], scores, nan)
    if ids is None:
        return scores
    return torch.where(ok[:, None], ids, torch.tensor(FLAGGED_ID, dtype=ids.dtype)), scores


def embedding_bound(model: GRank) -> torch.Tensor:
    """[d] the largest magnitude each coordinate of a user vector can have: the Generator ends
    in a LayerNorm, whose normalised output has norm <= sqrt(d), so |u_i| <= |gamma_i| sqrt(d) +
    |beta_i| (with a little room for rounding). A vector beyond it did not come from the
    encoder: MIPS and the Ranker flag it instead of ranking with it."""
    ln = model.generator.ln_out
    d = ln.weight.shape[0]
    return ((ln.weight.abs() * d ** 0.5 + ln.bias.abs()) * (1 + 1e-4) + 1e-6).detach().clone()


def _rows_bounded(u: torch.Tensor, bound: torch.Tensor | None) -> torch.Tensor:
    """[B, d] -> [B] bool: finite, and within ``bound`` [d] when there is one."""
    ok = _rows_finite(u)
    return ok if bound is None else ok & (u.abs() <= bound).all(1)


class UserEncoder(nn.Module):
    """[B, R] history ids, [B, R] event codes, [B, F] profile -> user_embedding [B, d]. A data
    set without user features (F = 0) has no ``user_features`` input. A row with an id outside
    [0, N], an event code outside [0, E] or a feature code outside [0, size) is flagged (NaN)."""

    def __init__(self, model: GRank):
        super().__init__()
        self.model = model
        self.register_buffer("item_vectors", model.item_vectors().detach().clone())
        self.n_items = model.n_items
        self.n_events = model.generator.rating.num_embeddings - 1
        sizes = [e.num_embeddings for e in getattr(model.generator, "profile", [])]
        self.register_buffer("feature_max", torch.tensor(sizes, dtype=torch.long) - 1)

    def forward(self, history_ids, history_events, user_features=None):
        ok = _rows_within(history_ids, 0, self.n_items) & _rows_within(history_events, 0, self.n_events)
        if user_features is None:
            user_features = history_ids.new_zeros(history_ids.shape[0], 0)
        elif self.feature_max.numel():  # a model without a query token ignores the profile
            ok = ok & _rows_within(user_features, 0, self.feature_max)
            user_features = torch.minimum(user_features.clamp(min=0), self.feature_max)
        u = self.model.encode_users(history_ids.clamp(0, self.n_items),
                                    history_events.clamp(0, self.n_events), user_features,
                                    self.item_vectors)
        return _flag(ok, None, u)


class MipsTopK(nn.Module):
    """user_embedding [B, d], history_ids [B, R] -> candidate ids [B, k1] int64 and scores
    [B, k1] float32: brute-force inner products over the whole catalogue, the padding row and
    the items of the history excluded (-inf), then the top-k. ``item_vectors``: [N+1, d]
    float32 with row 0 = padding (the model's table, or a synthetic one for benchmarks).
    A row whose embedding is not finite or exceeds ``max_abs`` (what the encoder can output),
    whose scores overflow, or whose history holds an id outside [0, N] is flagged (ids -1,
    scores NaN). Large catalogues take the exact two-step top-k of ``grank.mips.block_top_k`` (``block``:
    None picks ``grank.mips.block_size``, 0 forces one TopK); their stored table gets up to
    block - 1 zero rows, never returned.
    A shard (``offset`` > 0 or ``n_total`` > the table's N): ``item_vectors`` holds dense ids
    offset+1 .. offset+N in its rows 1..N; history ids anywhere in [0, n_total] are accepted
    (those of other shards exclude nothing here) and the candidates come back as dense ids of
    the whole catalogue."""

    def __init__(self, item_vectors: torch.Tensor, k: int, tau: float = 1.0, block: int | None = None,
                 max_abs: torch.Tensor | None = None, offset: int = 0, n_total: int | None = None):
        super().__init__()
        self.k, self.tau, self.offset = k, tau, offset
        # ``embedding_bound`` of the model whose user vectors this serves (None: finite is enough)
        self.register_buffer("max_abs", None if max_abs is None else max_abs.detach().clone())
        self.block = block_size(item_vectors.shape[0], k) if block is None else block
        table, self.pad_rows = pad_table(item_vectors.detach(), self.block)
        self.register_buffer("item_vectors", table.clone())
        self.n_items = item_vectors.shape[0] - 1
        self.n_total = self.n_items + offset if n_total is None else n_total
        self.shard = self.n_total != self.n_items

    def forward(self, user_embedding, history_ids):
        ok = _rows_bounded(user_embedding, self.max_abs) & _rows_within(history_ids, 0, self.n_total)
        safe = torch.where(ok[:, None], user_embedding, torch.tensor(0.0))
        seen = history_ids.clamp(0, self.n_total)
        if self.shard:  # this shard's rows; another shard's item maps to the padding row 0
            mine = (seen > self.offset) & (seen <= self.offset + self.n_items)
            seen = torch.where(mine, seen - self.offset, torch.zeros_like(seen))
        scores, ids = mips_top_k(safe, self.item_vectors, self.k, self.tau, exclude_ids=seen,
                                 block=self.block, pad_rows=self.pad_rows)
        if self.shard:
            ids = ids + self.offset
        # k <= N - R (of each shard), so a valid row's top-k scores are finite; inf/NaN means overflow
        return _flag(ok & _rows_finite(scores), ids, scores)


class MipsMerge(nn.Module):
    """The S shards' lists -> the top-k of their union: (candidate_ids_s [B, k] int64,
    candidate_scores_s [B, k] float32) for s = 0..S-1, in that order -> candidate_ids [B, k],
    candidate_scores [B, k], best first. A row that any shard flagged (NaN scores), or with an
    id outside [1, N], is flagged."""

    def __init__(self, k: int, shards: int, n_items: int):
        super().__init__()
        self.k, self.shards, self.n_items = k, shards, n_items

    def forward(self, *parts):
        ids = torch.cat(parts[0::2], 1)        # [B, S k]
        scores = torch.cat(parts[1::2], 1)
        ok = _rows_finite(scores) & _rows_within(ids, 1, self.n_items)
        top, pos = scores.topk(self.k, dim=1)
        return _flag(ok, ids.gather(1, pos), top)


def mips_shards(item_vectors: torch.Tensor, k: int, tau: float, shards: int,
                max_abs: torch.Tensor | None = None, min_items: int = 0) -> dict[str, nn.Module]:
    """The MIPS stage over ``item_vectors`` [N+1, d] split into ``shards``: {shard model
    name: MipsTopK} plus the merge. Each shard must hold at least ``min_items`` items (k1 + R:
    a shard returns k1 items its caller has not seen, so a short shard would run out)."""
    n = item_vectors.shape[0] - 1
    bounds = shard_bounds(n, shards)
    smallest = min(b - a for a, b in zip(bounds, bounds[1:]))
    if smallest < max(k, min_items):
        raise ValueError(f"shards: {shards} shards of a {n:,}-item catalogue hold {smallest:,} items "
                         f"each at least, fewer than k1 + history = {max(k, min_items):,}; use fewer shards")
    out = {}
    for s, (a, b) in enumerate(zip(bounds, bounds[1:])):
        part = torch.cat([item_vectors[:1], item_vectors[a + 1:b + 1]])
        out[mips_shard(s)] = MipsTopK(part, k, tau, max_abs=max_abs, offset=a, n_total=n).eval()
    out[MIPS_MERGE] = MipsMerge(k, shards, n).eval()
    return out


class RankerTopK(nn.Module):
    """user_embedding [B, d], history [B, R] ids + event codes, candidate_ids [B, k1] (+ request_time
    [B, 1] int64 Unix seconds with ``model.ranker_popularity``: the popularity-by-day table is
    then a constant of the graph) -> ranked_ids [B, k2] int64 (dense) and scores [B, k2]
    float32, best first. A row with a non-finite embedding or one beyond what the encoder can
    output (``embedding_bound``), a history id outside [0, N], an
    event code outside [0, E], a candidate outside [1, N] (a flagged MIPS row's -1 included)
    or a negative request time is flagged (ids -1, scores NaN)."""

    def __init__(self, model: GRank, k: int):
        super().__init__()
        self.model, self.k = model, k
        self.register_buffer("item_vectors", model.item_vectors().detach().clone())
        self.register_buffer("max_abs", embedding_bound(model))
        events = model.ranker.rating if model.ranker is not None else model.generator.rating
        self.n_events = events.num_embeddings - 1

    def forward(self, user_embedding, history_ids, history_events, candidate_ids, request_time=None):
        n = self.item_vectors.shape[0] - 1  # the table's, which a benchmark may enlarge
        ok = (_rows_bounded(user_embedding, self.max_abs) & _rows_within(history_ids, 0, n)
              & _rows_within(history_events, 0, self.n_events) & _rows_within(candidate_ids, 1, n))
        when = None
        if request_time is not None:
            ok = ok & (request_time >= 0).all(1)
            when = request_time[:, 0].clamp(min=0)
        safe = torch.where(ok[:, None], user_embedding, torch.tensor(0.0))
        ids, scores = self.model.rank_top_k(safe, history_ids.clamp(0, n),
                                            history_events.clamp(0, self.n_events),
                                            candidate_ids.clamp(1, n), self.k, self.item_vectors, when)
        return _flag(ok & _rows_finite(scores), ids, scores)


def mips_stage(model: GRank, table: torch.Tensor, k1: int, shards: int = 1) -> dict[str, nn.Module]:
    """The MIPS stage's graphs over ``table`` [N+1, d] by served model name: one ``MipsTopK``,
    or ``shards`` of them and their merge when > 1."""
    bound = embedding_bound(model)
    if shards == 1:
        return {MIPS: MipsTopK(table, k1, model.cfg.tau, max_abs=bound).eval()}
    return mips_shards(table, k1, model.cfg.tau, shards, bound, k1 + model.cfg.ranker_history)


def graphs(model: GRank, k1: int, k2: int, shards: int = 1) -> dict[str, nn.Module]:
    """The exported graphs by served model name, in eval mode (the MIPS stage split into
    ``shards`` when > 1)."""
    model.eval()
    return {USER_ENCODER: UserEncoder(model).eval(), **mips_stage(model, model.item_vectors().detach(), k1, shards),
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
               external_above: int = PROTOBUF_LIMIT - (1 << 20), shards: int = 1) -> dict[str, Path]:
    """Export the graphs to ``out/<model name>.onnx``; ``arrays`` holds real inputs for
    every tensor a graph takes (history, events, profile, and the intermediate tensors);
    ``schema``: the data set's (``grank.data.schema``)."""
    sigs = signatures(cfg, schema, shards)
    return {name: export_one(g, sigs[name], arrays, Path(out) / f"{name}.onnx", external_above)
            for name, g in graphs(model, cfg.eval.k1, cfg.eval.k2, shards).items()}
