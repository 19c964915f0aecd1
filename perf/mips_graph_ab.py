"""A/B of the served MIPS graph: the form before 2026-11-23 (scores divided by tau after the
MatMul, padding column set by its own assignment) against ``export.onnx_models.MipsTopK`` now
(1/tau folded into the user vectors, padding scattered with the history ids). Both are exported
the same way and checked for equal answers, then timed alternately with ONNX Runtime (2 threads)
on a 1M-item random table; results in docs/SERVING.md.

    python -m perf.mips_graph_ab
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from export.onnx_models import MipsTopK, export_one
from grank.config import make_config
from grank.signatures import MIPS, signatures

from .mips_methods import latency

NEG_INF = float("-inf")


class MipsTopKBefore(MipsTopK):
    """The graph as exported until 2026-11-23."""

    def forward(self, user_embedding, history_ids):
        s = (user_embedding @ self.item_vectors.T) / self.tau
        s[:, 0] = NEG_INF
        s = s.scatter(1, history_ids, NEG_INF)
        scores, ids = s.topk(self.k, dim=1)
        return ids, scores


def main(n: int = 1_000_000, d: int = 64, k: int = 500, history: int = 256, seconds: float = 2.0) -> None:
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    table = torch.cat([torch.zeros(1, d), torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32))])
    q = rng.standard_normal((256, d)).astype(np.float32)
    hist = rng.integers(0, n, (256, history)).astype(np.int64)
    cfg = make_config("default", overrides={"eval.k1": k, "eval.k2": 1, "eval.ks": (1,),
                                            "model.ranker_history": history})
    folder = Path(tempfile.mkdtemp())
    sessions = {}
    for name, module in (("before", MipsTopKBefore), ("after", MipsTopK)):
        path = export_one(module(table, k).eval(), signatures(cfg)[MIPS],
                          {"user_embedding": q[:2], "history_ids": hist[:2]}, folder / f"{name}.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sessions[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {"user_embedding": q[:8], "history_ids": hist[:8]}
    (ids_a, sc_a), (ids_b, sc_b) = (s.run(None, feed) for s in sessions.values())
    assert (ids_a == ids_b).all() and np.allclose(sc_a, sc_b), "the two graphs disagree"
    print("batch graph round p50_ms")
    for b in (1, 16, 64):
        for rnd in range(2):
            for name, s in sessions.items():
                r = latency(lambda a, e: s.run(None, {"user_embedding": q[a:e], "history_ids": hist[a:e]}),
                            len(q), b, seconds, 200)
                print(b, name, rnd, round(r["p50_ms"], 2), flush=True)


if __name__ == "__main__":
    main()
