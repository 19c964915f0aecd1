"""The top-k kernels alone: ONNX Runtime's TopK node (what the served MIPS module runs) against
torch.topk (the ``torch_topk`` peer of the MIPS benchmark) on the same [B, N] float32 scores,
sorted and unsorted, timed alternately in one process with 2 threads each.

At the real catalogue (N = 3,706, padded score rows of 3,707) the MIPS benchmark's scan is a
small matmul and the top-k is most of the time, so this is where the served module's gap to
``torch_topk`` comes from (docs/PERFORMANCE.md, "Why torch_topk is ahead at 3,706 items").

Run from the repository root:

    python -m docs.experiments.topk_kernels                     # N = 3,707, k 500 / 2000, batch 1 / 16 / 256
    python -m docs.experiments.topk_kernels --n 31251 --ks 500   # the first step of the two-step top-k at 1M
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from mipsbench.measure import latency
from mipsbench.methods import cpu_session


def ort_topk(k: int, sorted_: bool, threads: int):
    """An ONNX Runtime session of one TopK node: x [B, N] float32 -> values, indices [B, k]."""
    from onnx import TensorProto, helper
    g = helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, sorted=int(sorted_))], "topk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "N"])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["B", k]),
         helper.make_tensor_value_info("i", TensorProto.INT64, ["B", k])],
        [helper.make_tensor("k", TensorProto.INT64, [1], [k])])
    return cpu_session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                       threads)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m docs.experiments.topk_kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3707, help="columns of the score rows (N + 1 with padding)")
    ap.add_argument("--ks", type=int, nargs="+", default=[500, 2000], help="k values")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256], help="score rows per call")
    ap.add_argument("--seconds", type=float, default=1.0, help="timing window per kernel, batch and round")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per batch")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of both ONNX Runtime and torch")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    x = np.random.default_rng(0).standard_normal((max(a.batches), a.n)).astype(np.float32)
    xt = torch.from_numpy(x)
    print("k batch round ort_sorted_ms ort_unsorted_ms torch_sorted_ms torch_unsorted_ms")
    for k in a.ks:
        sess = {s: ort_topk(k, s, a.threads) for s in (True, False)}
        for s in (True, False):  # same answer before timing: ties are measure-zero for normal scores
            got = np.sort(sess[s].run(None, {"x": x[:4]})[1], 1)
            assert np.array_equal(got, np.sort(xt[:4].topk(k, dim=1).indices.numpy(), 1)), "TopK disagrees"
        kernels = [lambda lo, hi: sess[True].run(None, {"x": x[lo:hi]}),
                   lambda lo, hi: sess[False].run(None, {"x": x[lo:hi]}),
                   lambda lo, hi: xt[lo:hi].topk(k, dim=1),
                   lambda lo, hi: xt[lo:hi].topk(k, dim=1, sorted=False)]
        for b in a.batches:
            for r in range(a.rounds):
                ms = [latency(f, len(x), b, a.seconds, 10_000)["p50_ms"] for f in kernels]
                print(k, b, r, *(f"{m:.3f}" for m in ms), flush=True)


if __name__ == "__main__":
    main()
