"""A/B of forms of the served MIPS graph, timed alternately in one process with ONNX Runtime
(2 threads) on a large table, after checking that they give the same answers. Results and
conclusions in docs/PERFORMANCE.md ("The two-step top-k").

Graphs (``--graphs``):
- ``before``: the form exported until 2026-11-23 (scores divided by tau after the MatMul,
  padding column set by its own assignment);
- ``plain``: ``export.onnx_models.MipsTopK`` with one TopK over the [B, N+1] scores;
- ``block``: the same with the exact two-step top-k of ``grank.mips.block_top_k`` (strided
  groups of ``grank.mips.BLOCK``; what ``MipsTopK`` exports for large catalogues);
- ``block_unsorted``: ``block`` with its first top-k (of the group maxima) unsorted (measured
  slower: the second top-k then meets its best candidates in random order);
- ``contiguous``: the two steps over contiguous groups (``contiguous_top_k``);
- ``int8`` / ``int8_block``: ``export.mips_int8`` with one TopK / the two steps on its scan.

Run from the repository root:

    python -m docs.experiments.mips_graph_ab                       # before vs plain (2026-11-23)
    python -m docs.experiments.mips_graph_ab --graphs plain block int8 int8_block --checkpoint CKPT
"""
from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from export.onnx_models import MipsTopK, export_one
from grank.config import make_config
from grank.mips import BLOCK, NEG_INF, block_top_k, mips_scores, topk_disagreements
from grank.signatures import mips_signature

from docs.experiments.gpu_topk_breakdown import contiguous_top_k
from mipsbench.measure import latency
from mipsbench.methods import cpu_session

GRAPHS = ("before", "plain", "block", "block_unsorted", "contiguous", "int8", "int8_block")


class MipsTopKBefore(MipsTopK):
    """The graph as exported until 2026-11-23."""

    def __init__(self, table, k):
        super().__init__(table, k, block=0)

    def forward(self, user_embedding, history_ids):
        s = (user_embedding @ self.item_vectors.T) / self.tau
        s[:, 0] = NEG_INF
        s = s.scatter(1, history_ids, NEG_INF)
        scores, ids = s.topk(self.k, dim=1)
        return ids, scores


class MipsTopKTwoStep(MipsTopK):
    """The exported module with another form of its two-step top-k:
    ``two_step(scores [B, M], k, block) -> (values [B, k], column ids [B, k])``."""

    def __init__(self, table, k, two_step):
        super().__init__(table, k, block=BLOCK)
        self.two_step = two_step

    def forward(self, user_embedding, history_ids):
        s = mips_scores(user_embedding, self.item_vectors, self.tau, exclude_ids=history_ids,
                        pad_rows=self.pad_rows)
        scores, ids = self.two_step(s, self.k, self.block)
        return ids, scores


def build(name: str, table: torch.Tensor, k: int, sig, arrays: dict, folder: Path) -> Path:
    """Export graph ``name`` (``GRAPHS``) of table [N + 1, d] (row 0: padding) and top ``k`` to
    ``folder``/``name``.onnx with the served MIPS signature ``sig``; ``arrays``: example inputs."""
    path = folder / f"{name}.onnx"
    if name.startswith("int8"):
        import onnx

        from export.mips_int8 import int8_mips_model
        onnx.save_model(int8_mips_model(table.numpy(), k, sig, block=BLOCK if name == "int8_block" else 0),
                        str(path))
        return path
    module = {"before": lambda: MipsTopKBefore(table, k), "plain": lambda: MipsTopK(table, k, block=0),
              "block": lambda: MipsTopK(table, k, block=BLOCK),
              "block_unsorted": lambda: MipsTopKTwoStep(table, k, partial(block_top_k, sort_groups=False)),
              "contiguous": lambda: MipsTopKTwoStep(table, k, contiguous_top_k)}[name]()
    return export_one(module.eval(), sig, arrays, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m docs.experiments.mips_graph_ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", nargs="+", choices=GRAPHS, default=["before", "plain"],
                    help="graph forms to check against each other and time, alternately")
    ap.add_argument("--items", type=int, default=1_000_000, help="catalogue size N (the table has N + 1 rows)")
    ap.add_argument("--k", type=int, default=500, help="candidates per user")
    ap.add_argument("--history", type=int, default=256, help="history ids excluded per user")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], help="users per call")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing window per graph, batch and round")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per batch")
    ap.add_argument("--checkpoint", help="sample the table from this model's item geometry and query "
                                         "with its users (default: standard normal table and queries)")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    d = 64
    if a.checkpoint:
        from mipsbench.geometry import fit_mixture, sample, trained_vectors
        items, users = trained_vectors(a.checkpoint)
        d = items.shape[1]
        body = sample(fit_mixture(items, k=32), a.items)
        q = np.ascontiguousarray(users[:256], dtype=np.float32)
    else:
        body = rng.standard_normal((a.items, d)).astype(np.float32)
        q = rng.standard_normal((256, d)).astype(np.float32)
    table = torch.cat([torch.zeros(1, d), torch.from_numpy(body)])
    hist = rng.integers(1, a.items + 1, (256, a.history)).astype(np.int64)
    cfg = make_config("default", overrides={"model.d_model": d, "eval.k1": a.k, "eval.k2": 1, "eval.ks": (1,),
                                            "model.ranker_history": a.history, "serve.k1": 0, "serve.history": 0})
    sig = mips_signature(cfg)
    sessions = {}
    with tempfile.TemporaryDirectory() as folder:  # a 1M-item graph is 256 MB: not left behind
        for name in a.graphs:
            path = build(name, table, a.k, sig, {"user_embedding": q[:2], "history_ids": hist[:2]}, Path(folder))
            sessions[name] = cpu_session(str(path), 2)
    feed = {"user_embedding": q[:8], "history_ids": hist[:8]}
    outs = {n: s.run(None, feed) for n, s in sessions.items()}
    ref_name, (ref_ids, ref_sc) = next(iter(outs.items()))
    for name, (ids, sc) in outs.items():
        # the int8 scan is approximate before its exact re-score: same tie-tolerant check
        bad = topk_disagreements(ref_ids, ref_sc, ids, sc, atol=1e-4)
        assert not bad, f"{name} disagrees with {ref_name}: {bad[:2]}"
    print("batch graph round p50_ms")
    for b in a.batches:
        for rnd in range(a.rounds):
            for name, s in sessions.items():
                r = latency(lambda lo, hi: s.run(None, {"user_embedding": q[lo:hi], "history_ids": hist[lo:hi]}),
                            len(q), b, a.seconds, 200)
                print(b, name, rnd, round(r["p50_ms"], 2), flush=True)


if __name__ == "__main__":
    main()
