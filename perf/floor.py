"""The machine's limits for a brute-force MIPS step: read bandwidth and fp32 GEMM rate.

floor(N, d, B) = max(bytes of the item table / bandwidth, 2 B N d FLOPs / GEMM rate): no exact
method can scan the table faster than memory delivers it, nor score it faster than the GEMM
units run. Each measurement takes the best of a few repeats (the least disturbed).
"""
from __future__ import annotations

import time

import torch


def read_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
    """Sum over a float32 array larger than any cache, all threads (torch)."""
    x = torch.ones(int(gib * 2**30 / 4))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def machine(bw_gbs: float, gflops: float) -> dict:
    """How perf rows name the machine they ran on: its rates, not its name (two "2-core x86_64"
    machines here differed 3x in GEMM rate)."""
    import platform
    return {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
            "read_bandwidth_gbs": round(bw_gbs, 1), "gemm_gflops": round(gflops, 1)}


def floor_ms(n_items: int, d: int, batch: int, bw_gbs: float, gflops: float, bytes_per: int = 4) -> float:
    return 1e3 * max(n_items * d * bytes_per / (bw_gbs * 1e9), 2 * batch * n_items * d / (gflops * 1e9))
