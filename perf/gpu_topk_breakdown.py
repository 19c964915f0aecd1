"""Where the batch time of the GPU MIPS goes: the score GEMM alone vs ``torch.topk`` on the
scores, and whether splitting each row into m shorter rows before the top-k helps (it does
not: torch's top-k already spreads long rows over the GPU). Random tables, k = 500, best of 10
after a warm-up; results in docs/GPU_TOPK.md.

    python -m perf.gpu_topk_breakdown      # on a CUDA machine
"""
from __future__ import annotations

import torch

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
                print({a: (round(v, 2) if isinstance(v, float) else v) for a, v in row.items()}, flush=True)
                del s
            del table
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
