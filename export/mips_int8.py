"""A reduced-precision MIPS graph: int8 item table for the full scan, exact fp32 re-score of a
short list (the paper's "quantise the item embeddings directly"). Same signature as the
served ``grank_mips`` (``grank.signatures``), so it is a drop-in candidate; the benchmark
(``mipsbench.methods.GrankMipsInt8``) decides whether it earns its place.

    u = user_embedding / tau                                   [B, d] float32
    scan:    uint8(u) x int8(items) -> int32 [B, N+1], ranked as is (u quantised per user, the
             table with one scale); padding 0 and the history -> INT32_MIN; TopK(rescore)
    rescore: Gather the short list's fp32 rows [B, rescore, d], exact <u, v>, TopK(k)
    -> candidate_ids [B, k] int64, candidate_scores [B, k] float32 (exact, as the fp32 graph)

The scan's scores are approximate (rounding of both sides); the re-score makes the returned
scores exact, so only recall at the cut can suffer: measured by the benchmark, never assumed.
Memory: int8 table + fp32 table (for the re-score) = 1.25x the fp32 graph.

Built with onnx.helper, not traced: torch has no exportable int8 matmul.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from grank.signatures import Signature

from .onnx_models import OPSET


# Item codes use 7 bits (|q| <= 63): x86's u8 x s8 instruction (vpmaddubsw) adds pairs of
# products in int16, and 255 * 127 * 2 overflows it. Measured on the trained geometry (1M items,
# k 500, re-score 1000, per-item scales): recall 0.987 with 8-bit codes, 1.000 with 7. ORT calls it reduce_range.
ITEM_QMAX = 63


def quantize_table(table: np.ndarray, qmax: int = ITEM_QMAX) -> tuple[np.ndarray, float]:
    """[N, d] float32 -> (int8 codes [N, d], one float scale): ONE scale for the whole table,
    so the scan's int32 sums can be ranked as they are (a per-item scale costs a float pass over
    [B, N+1]: measured 1.7x slower at batch 16 on AVX2, 1M items). Small-norm items get coarser codes;
    they are rarely near the top, and the exact re-score fixes the order of those that are."""
    scale = float(np.abs(table).max()) / qmax or 1.0
    return np.clip(np.round(table / scale), -qmax, qmax).astype(np.int8), scale


def block_top_k_nodes(x: str, k: str, k_value: int, block: int, n_cols: int, values: str,
                      ids: str, c: dict) -> list:
    """ONNX nodes of ``grank.mips.block_top_k`` (strided groups, the same exact two steps) over
    ``x`` [B, n_cols] with n_cols a multiple of ``block``: ``values`` [B, k] descending and
    ``ids`` [B, k] int64 column ids. Adds its constants to ``c``."""
    nb = n_cols // block
    c.update({f"{x}_grp_shape": np.array([-1, block, nb], np.int64),
              f"{x}_cand_shape": np.array([-1, block * k_value], np.int64),
              f"{x}_nb": np.array(nb, np.int64), f"{x}_kv": np.array(k_value, np.int64),
              f"{x}_block": np.array([1, block, 1], np.int64)})
    return [
        h.make_node("Reshape", [x, f"{x}_grp_shape"], [f"{x}_grp"]),               # [B, block, nb]
        h.make_node("ReduceMax", [f"{x}_grp"], [f"{x}_gmax"], axes=[1], keepdims=0),  # [B, nb]
        h.make_node("TopK", [f"{x}_gmax", k], [f"{x}_gtop_v", f"{x}_gtop"], axis=1),  # [B, k]
        h.make_node("Unsqueeze", [f"{x}_gtop", "axis1"], [f"{x}_gtop3"]),          # [B, 1, k]
        h.make_node("Tile", [f"{x}_gtop3", f"{x}_block"], [f"{x}_gidx"]),          # [B, block, k]
        h.make_node("GatherElements", [f"{x}_grp", f"{x}_gidx"], [f"{x}_cand3"], axis=2),
        h.make_node("Reshape", [f"{x}_cand3", f"{x}_cand_shape"], [f"{x}_cand"]),  # [B, block k]
        h.make_node("TopK", [f"{x}_cand", k], [values, f"{x}_pos"], axis=1),
        h.make_node("Div", [f"{x}_pos", f"{x}_kv"], [f"{x}_t"]),                   # member t
        h.make_node("Mod", [f"{x}_pos", f"{x}_kv"], [f"{x}_i"]),                   # chosen group i
        h.make_node("GatherElements", [f"{x}_gtop", f"{x}_i"], [f"{x}_g"], axis=1),
        h.make_node("Mul", [f"{x}_t", f"{x}_nb"], [f"{x}_off"]),
        h.make_node("Add", [f"{x}_off", f"{x}_g"], [ids]),                          # t nb + g
    ]


def int8_mips_model(item_vectors: np.ndarray, k: int, sig: Signature, tau: float = 1.0,
                    rescore: int | None = None, block: int = 0) -> onnx.ModelProto:
    """item_vectors [N+1, d] float32 (row 0 padding) -> the int8-scan + fp32-rescore graph
    with ``sig``'s tensor names. ``rescore``: short-list length, default 2k (capped at N).
    ``block`` > 0: the scan's top-k in the two exact steps of ``grank.mips.block_top_k`` (both
    tables then get zero rows up to a multiple of it, excluded like the padding row). Off by
    default: unlike the fp32 module's, this graph's top-k (int32 scores, a 2k short list) did not
    get faster with it (`python -m docs.experiments.mips_graph_ab --graphs int8 int8_block`,
    N = 1M, k = 500: the same at batch 1, 2 to 18% slower at batch 16; docs/PERFORMANCE.md)."""
    n = item_vectors.shape[0] - 1
    rescore = min(n, rescore or 2 * k)
    if not 1 <= k <= rescore:
        raise ValueError(f"k: must be in [1, rescore={rescore}], got {k}")
    pad = (-(n + 1)) % block if block else 0
    table = np.ascontiguousarray(np.concatenate(
        [item_vectors, np.zeros((pad, item_vectors.shape[1]), item_vectors.dtype)]), dtype=np.float32)
    q, _ = quantize_table(table)
    (user, hist), (ids, scores) = [t.name for t in sig.inputs], [t.name for t in sig.outputs]
    d, R = table.shape[1], sig.inputs[1].dims[0]
    c = {"item_int8_t": np.ascontiguousarray(q.T), "item_vectors": table,
         "inv_tau": np.array(1.0 / tau, np.float32),
         "tiny": np.array(1e-30, np.float32), "q_max": np.array(127.0, np.float32),
         "zero_f": np.array(0.0, np.float32), "mid_f": np.array(128.0, np.float32),
         "mid_u8": np.array(128, np.uint8), "neg_inf": np.array(-np.inf, np.float32),
         "int_min": np.array(np.iinfo(np.int32).min, np.int32),
         "zero": np.array(0, np.int64), "start0": np.array([0], np.int64), "n_short": np.array([rescore], np.int64),
         "k": np.array([k], np.int64), "axis1": np.array([1], np.int64),
         "axis_last": np.array([-1], np.int64)}
    if pad:
        c["pad_ids"] = np.arange(n + 1, n + 1 + pad, dtype=np.int64)[None, :]
    nodes = [
        h.make_node("Mul", [user, "inv_tau"], ["u"]),
        # per-user symmetric 8-bit (not DynamicQuantizeLinear's one scale per batch: a user's
        # answer must not depend on who shares the batch under dynamic batching), stored as
        # uint8 around zero point 128: ORT's u8 x s8 kernel is the fast one on x86 (s8 x s8
        # measured 3x slower than fp32 on AVX2)
        h.make_node("Abs", ["u"], ["u_abs"]),
        h.make_node("ReduceMax", ["u_abs"], ["u_max"], axes=[1], keepdims=0),      # [B]
        h.make_node("Max", ["u_max", "tiny"], ["u_max_pos"]),
        h.make_node("Div", ["u_max_pos", "q_max"], ["u_scale"]),
        h.make_node("Mul", ["u_scale", "zero_f"], ["u_zero_f"]),
        h.make_node("Add", ["u_zero_f", "mid_f"], ["u_mid_f"]),
        h.make_node("Cast", ["u_mid_f"], ["u_zero"], to=TensorProto.UINT8),        # [B] of 128
        h.make_node("QuantizeLinear", ["u", "u_scale", "u_zero"], ["u_q"], axis=0),
        h.make_node("MatMulInteger", ["u_q", "item_int8_t", "mid_u8"], ["acc"]),
        # one scale for the whole table and one per user: positive factors that cannot change
        # a row's order, so the int32 sums are ranked as they are (no [B, N+1] float pass)
        h.make_node("Identity", ["acc"], ["approx"]),
        # padding column 0, the history (and the block padding rows) in ONE scatter, as in
        # grank.mips.mips_scores
        h.make_node("Slice", [hist, "start0", "axis1", "axis1"], ["first_col"]),   # [B, 1]
        h.make_node("Mul", ["first_col", "zero"], ["pad_col"]),                     # zeros [B, 1]
    ]
    if pad:
        nodes += [h.make_node("Mul", ["pad_col", "pad_ids"], ["_pad_zeros"]),     # [B, pad] zeros
                  h.make_node("Add", ["_pad_zeros", "pad_ids"], ["pad_rows"]),    # [B, pad] ids
                  h.make_node("Concat", ["pad_col", hist, "pad_rows"], ["drop"], axis=1)]
    else:
        nodes.append(h.make_node("Concat", ["pad_col", hist], ["drop"], axis=1))
    nodes += [
        h.make_node("Shape", ["drop"], ["drop_shape"]),
        h.make_node("Expand", ["int_min", "drop_shape"], ["drop_val"]),
        h.make_node("ScatterElements", ["approx", "drop", "drop_val"], ["masked"], axis=1),
    ]
    nodes += (block_top_k_nodes("masked", "n_short", rescore, block, n + 1 + pad, "_approx_top", "short", c)
              if block else [h.make_node("TopK", ["masked", "n_short"], ["_approx_top", "short"], axis=1)])
    nodes += [
        h.make_node("Gather", ["item_vectors", "short"], ["rows"], axis=0),      # [B, S, d]
        h.make_node("Unsqueeze", ["u", "axis1"], ["u3"]),                          # [B, 1, d]
        h.make_node("Mul", ["rows", "u3"], ["prod"]),
        h.make_node("ReduceSum", ["prod", "axis_last"], ["exact"], keepdims=0),   # [B, S]
        # an excluded item (history / padding) can only reach the short list when fewer than
        # `rescore` items remain; keep it -inf after the exact re-score
        h.make_node("Equal", ["_approx_top", "int_min"], ["dropped"]),
        h.make_node("Where", ["dropped", "neg_inf", "exact"], ["exact_masked"]),
        h.make_node("TopK", ["exact_masked", "k"], [scores, "pos"], axis=1),
        h.make_node("GatherElements", ["short", "pos"], [ids], axis=1),
    ]
    vi = [h.make_tensor_value_info(t.name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), ["batch", *t.dims])
          for t in (*sig.inputs, *sig.outputs)]
    g = h.make_graph(nodes, "grank_mips_int8", vi[:2], vi[2:], [nh.from_array(v, kk) for kk, v in c.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", OPSET)], producer_name="grank.export.mips_int8")
    m.doc_string = (f"GRank MIPS, int8 scan of {n} items + exact fp32 re-score of the top {rescore}; "
                    f"k={k}, d={d}, history {R}" + (f"; scan top-k in groups of {block}" if block else ""))
    return m
