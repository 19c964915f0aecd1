"""Where the batch time of the GPU MIPS goes: the score GEMM alone vs ``torch.topk`` on the
scores, whether splitting each row into m shorter rows before the top-k helps (it does not:
torch's top-k already spreads long rows over the GPU), and the exact two-step top-k over group
maxima (``grank.mips.block_top_k``, strided groups) against the same with contiguous groups
(``contiguous_top_k``) and its stages. Random tables, k = 500, best of 10 after a warm-up;
results in docs/GPU_TOPK.md.

    python -m perf.gpu_topk_breakdown      # on a CUDA machine
"""
from __future__ import annotations

import torch

from grank.mips import BLOCK, block_top_k

from .gpu_mips import best_seconds


def bench(fn, n: int = 10) -> float:
    """Best wall time of ``fn`` in ms (synchronised), after one warm-up call."""
    return best_seconds(fn, n) * 1e3


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
    torch does slowly on a GPU for small c (the first form measured)."""
    blocks = s.reshape(-1, s.shape[1] // c, c)  # -1, not B: also traced into ONNX (perf.mips_graph_ab)
    top = blocks.amax(-1).topk(k, dim=1).indices                        # [B, k] group ids
    cand = blocks.gather(1, top.unsqueeze(-1).expand(-1, -1, c)).reshape(-1, k * c)
    v, pos = cand.topk(k, dim=1)
    return v, top.gather(1, pos // c) * c + pos % c


def main(k: int = 500) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    print(torch.cuda.get_device_name())
    for n in (5_000_000, 20_000_000):
        for dt in (torch.float16, torch.float32):
            table = torch.randn(n, 64, device="cuda", dtype=dt)
            q = torch.randn(256, 64, device="cuda", dtype=dt)
            for b in (16, 256):
                qb = q[:b]
                s = qb @ table.T
                ref = s.topk(k, dim=1)
                row = {"N": n, "dtype": str(dt), "B": b, "mm": bench(lambda: qb @ table.T),
                       "topk": bench(lambda: s.topk(k, dim=1))}
                for m in (8, 32, 128):
                    assert torch.equal(split_topk(s, k, m)[0], ref.values), m
                    row[f"split{m}"] = bench(lambda: split_topk(s, k, m))
                # the two-step block top-k (grank.mips.block_top_k) and its stages
                for c in (BLOCK, 64, 320, 1600):  # divisors of 5M and 20M
                    for name, fn in (("block", contiguous_top_k), ("strided", block_top_k)):
                        v, i = fn(s, k, c)
                        assert torch.equal(v, ref.values) and torch.equal(s.gather(1, i), v), (name, c)
                        row[f"{name}{c}"] = bench(lambda: fn(s, k, c))
                # the stages of the contiguous form (its group maxima are the slow part)
                mx = s.view(b, -1, BLOCK).amax(-1)
                row["block_amax"] = bench(lambda: s.view(b, -1, BLOCK).amax(-1))
                row["block_topk_of_max"] = bench(lambda: mx.topk(k, dim=1))
                mx32 = mx.float()
                row["block_topk_of_max_fp32"] = bench(lambda: mx32.topk(k, dim=1))
                top = mx.topk(k, dim=1).indices
                row["block_gather"] = bench(lambda: s.view(b, -1, BLOCK).gather(
                    1, top.unsqueeze(-1).expand(-1, -1, BLOCK)))
                cand = s.view(b, -1, BLOCK).gather(1, top.unsqueeze(-1).expand(-1, -1, BLOCK)).reshape(b, -1)
                row["block_final_topk"] = bench(lambda: cand.topk(k, dim=1))
                print({a: (round(v, 2) if isinstance(v, float) else v) for a, v in row.items()}, flush=True)
                del s
            del table
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
