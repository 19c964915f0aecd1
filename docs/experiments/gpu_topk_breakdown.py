"""Where the batch time of the GPU MIPS goes: the score GEMM alone vs ``torch.topk`` on the
scores, whether splitting each row into m shorter rows before the top-k helps (it does not:
torch's top-k already spreads long rows over the GPU), and the exact two-step top-k over group
maxima (``grank.mips.block_top_k``, strided groups) against the same with contiguous groups
(``contiguous_top_k``) and its stages. Random tables, k = 500, best of 10 after a warm-up;
results and conclusions in docs/PERFORMANCE.md ("The MIPS stage on a GPU"). One dict of times in ms per (N, dtype, batch).

Run from the repository root, on a CUDA machine:

    python -m docs.experiments.gpu_topk_breakdown
"""
from __future__ import annotations

import argparse
import sys
from functools import partial

import torch

from grank.mips import BLOCK, block_top_k
from mipsbench.measure import best_seconds


def bench(fn, repeats: int = 10) -> float:
    """Best wall time of ``fn`` in ms (synchronised with the GPU), after one warm-up call."""
    return best_seconds(fn, repeats, torch.cuda.synchronize) * 1e3


def split_topk(s: torch.Tensor, k: int, m: int):
    """Top-k of each row of s [B, N] via m sub-rows of N // m (plus the remainder), then a
    top-k of the B x (m k) survivors. Same values as ``s.topk(k)``."""
    B, N = s.shape
    c = N // m
    v, i = s[:, :c * m].reshape(B * m, c).topk(k, dim=1)
    i = i + (torch.arange(m, device=s.device) * c).repeat(B)[:, None]
    v, i = v.reshape(B, m * k), i.reshape(B, m * k)
    if c * m < N:
        vt, it = s[:, c * m:].topk(min(k, N - c * m), dim=1)
        v, i = torch.cat([v, vt], 1), torch.cat([i, it + c * m], 1)
    top, pos = v.topk(k, dim=1)
    return top, i.gather(1, pos)


def contiguous_top_k(s: torch.Tensor, k: int, c: int):
    """``grank.mips.block_top_k`` with contiguous groups (columns c j .. c j + c - 1): the same
    exact two steps, but the group maxima are a reduction over runs of c adjacent scores, which
    torch does slowly on a GPU for small c (docs/PERFORMANCE.md)."""
    blocks = s.reshape(-1, s.shape[1] // c, c)  # -1, not B: also traced into ONNX (mips_graph_ab)
    top = blocks.amax(-1).topk(k, dim=1).indices                        # [B, k] group ids
    cand = blocks.gather(1, top.unsqueeze(-1).expand(-1, -1, c)).reshape(-1, k * c)
    v, pos = cand.topk(k, dim=1)
    return v, top.gather(1, pos // c) * c + pos % c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m docs.experiments.gpu_topk_breakdown", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5_000_000, 20_000_000],
                    help="catalogue sizes N (group sizes that do not divide N are left out)")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 256], help="queries per score matrix")
    ap.add_argument("--k", type=int, default=500, help="top k")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per variant (the best is kept)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA device: this breakdown times GPU kernels", file=sys.stderr)
        return 2
    k = a.k
    t = partial(bench, repeats=a.repeats)
    torch.backends.cuda.matmul.allow_tf32 = False
    print(torch.cuda.get_device_name())
    for n in a.sizes:
        for dt in (torch.float16, torch.float32):
            table = torch.randn(n, 64, device="cuda", dtype=dt)
            q = torch.randn(max(a.batches), 64, device="cuda", dtype=dt)
            for b in a.batches:
                qb = q[:b]
                s = qb @ table.T
                ref = s.topk(k, dim=1)
                row = {"N": n, "dtype": str(dt), "B": b, "mm": t(lambda: qb @ table.T),
                       "topk": t(lambda: s.topk(k, dim=1))}
                for m in (8, 32, 128):
                    assert torch.equal(split_topk(s, k, m)[0], ref.values), m
                    row[f"split{m}"] = t(lambda: split_topk(s, k, m))
                # the two-step block top-k (grank.mips.block_top_k) against contiguous groups
                for c in [c for c in (BLOCK, 64, 320, 1600) if n % c == 0]:
                    for name, fn in (("block", contiguous_top_k), ("strided", block_top_k)):
                        v, i = fn(s, k, c)
                        assert torch.equal(v, ref.values) and torch.equal(s.gather(1, i), v), (name, c)
                        row[f"{name}{c}"] = t(lambda: fn(s, k, c))
                if n % BLOCK == 0:  # the stages of the contiguous form (its group maxima are the slow part)
                    groups = s.view(b, -1, BLOCK)
                    mx = groups.amax(-1)
                    row["block_amax"] = t(lambda: groups.amax(-1))
                    row["block_topk_of_max"] = t(lambda: mx.topk(k, dim=1))
                    mx32 = mx.float()
                    row["block_topk_of_max_fp32"] = t(lambda: mx32.topk(k, dim=1))
                    top = mx.topk(k, dim=1).indices
                    row["block_gather"] = t(lambda: groups.gather(1, top.unsqueeze(-1).expand(-1, -1, BLOCK)))
                    cand = groups.gather(1, top.unsqueeze(-1).expand(-1, -1, BLOCK)).reshape(b, -1)
                    row["block_final_topk"] = t(lambda: cand.topk(k, dim=1))
                print({x: (round(v, 2) if isinstance(v, float) else v) for x, v in row.items()}, flush=True)
                del s
            del table
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
