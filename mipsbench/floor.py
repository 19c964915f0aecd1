"""The machine's limits for a brute-force MIPS step: memory bandwidth and GEMM rate.

floor(N, d, B) = max(bytes of the stored item table / bandwidth, 2 B N d FLOPs / GEMM rate): no
exact method can stream the table faster than memory delivers it, nor score it faster than the
GEMM units run. Each rate is the best of a few repeats (the least disturbed measurement).

- CPU: ``read_bandwidth_gbs`` (a sum over an array larger than any cache) and
  ``gemm_gflops()`` (fp32, 2048^3, all threads);
- GPU: ``copy_bandwidth_gbs`` (device-to-device copy, bytes read + written) and
  ``gemm_gflops("cuda", dtype, n=8192)`` per precision.
"""
from __future__ import annotations

import torch

from .measure import best_seconds


def _sync(device: str):
    return torch.cuda.synchronize if str(device).startswith("cuda") else None


def read_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
    """GB/s read by a sum over a float32 array of ``gib`` GiB, all threads (torch)."""
    x = torch.ones(int(gib * 2**30 / 4))
    return x.numel() * 4 / best_seconds(x.sum, repeats) / 1e9


def copy_bandwidth_gbs(gib: float = 4.0, repeats: int = 10) -> float:
    """GB/s of a device-to-device copy on the GPU, bytes read + written: what the memory system
    moves per second (a pure read of X bytes moves X)."""
    x = torch.empty(int(gib * 2**30 / 4), device="cuda")
    y = torch.empty_like(x)
    best = best_seconds(lambda: y.copy_(x), repeats, _sync("cuda"))
    del x, y
    return 2 * gib * 2**30 / best / 1e9


def gemm_gflops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n matrix product in ``dtype`` on ``device`` (on a GPU, fp32 means
    what ``torch.backends.cuda.matmul.allow_tf32`` says: the GPU benchmark turns TF32 off)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / best_seconds(lambda: a @ b, repeats, _sync(device)) / 1e9


def measured_rates(bw_gbs: float, gflops: float) -> dict:
    """How rows name the CPU machine they ran on: its measured rates, not its name (two
    "2-core x86_64" machines differed 3x in GEMM rate). Field names are those of every row in
    docs/performance.json."""
    import platform
    return {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
            "read_bandwidth_gbs": round(bw_gbs, 1), "gemm_gflops": round(gflops, 1)}


def floor_ms(table_bytes: int, n: int, d: int, batch: int, bw_gbs: float, gflops: float) -> float:
    """The floor in ms of scoring a ``batch`` of queries against a stored table of ``n`` x ``d``
    items taking ``table_bytes`` (its precision decides both the bytes and the GEMM rate)."""
    return 1e3 * max(table_bytes / (bw_gbs * 1e9), 2 * batch * n * d / (gflops * 1e9))
