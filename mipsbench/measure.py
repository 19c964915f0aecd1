"""Timing and recall, shared by the CPU and GPU benchmarks and the investigations in docs/experiments.

- ``latency``: per-call latency of a search over consecutive query slices (QPS, p50, p99);
- ``best_seconds``: the best wall time of a call over a few repeats (for rates: bandwidth,
  GEMM, kernels), synchronising with the device where the work is asynchronous;
- ``recall``: |got ∩ exact| / k per row, on numpy arrays or torch tensors of any device.
"""
from __future__ import annotations

import time

import numpy as np
import torch


def latency(call, n_rows: int, batch: int, min_seconds: float, max_calls: int, min_calls: int = 5) -> dict:
    """Time ``call(start, stop)`` (one search over rows start:stop of the queries) on
    consecutive ``batch``-row slices for ``min_seconds`` (at least ``min_calls`` calls, at most
    ``max_calls``). Returns QPS (rows/s), p50 and p99 latency in ms, and the number of calls."""
    lat, t_end, i = [], time.perf_counter() + min_seconds, 0
    while (time.perf_counter() < t_end or len(lat) < min_calls) and len(lat) < max_calls:
        s = (i * batch) % max(1, n_rows - batch)
        t = time.perf_counter()
        call(s, s + batch)
        lat.append(time.perf_counter() - t)
        i += 1
    lat = np.array(lat) * 1e3
    return {"qps": batch * len(lat) / (lat.sum() / 1e3), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "calls": len(lat)}


def best_seconds(fn, repeats: int = 10, sync=None) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls after one warm-up call. The best, not the
    mean: on a shared machine a neighbour can only slow a call down. ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs after each call so that queued device work is timed too."""
    fn()
    if sync:
        sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return best


def recall(got, exact) -> float:
    """Mean over rows of |got ∩ exact| / k. ``got`` [B, k'] and ``exact`` [B, k] are integer ids
    (numpy arrays or torch tensors; computed where ``got`` lives, so GPU results stay on the
    GPU); an id repeated within a row of ``got`` counts once, like a set."""
    got = torch.as_tensor(got).long()
    exact = torch.as_tensor(exact, device=got.device).long()
    e = exact.sort(1).values
    g = got.sort(1).values
    first = torch.ones_like(g, dtype=torch.bool)
    first[:, 1:] = g[:, 1:] != g[:, :-1]
    pos = torch.searchsorted(e, g).clamp(max=e.shape[1] - 1)
    hits = ((e.gather(1, pos) == g) & first).sum(1)
    return float(hits.double().div(exact.shape[1]).mean())
