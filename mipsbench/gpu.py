"""The MIPS stage on a GPU: brute-force matmul + top-k in fp32, fp16 and bf16 (PyTorch CUDA).

GRank's first stage is one inner product per item and a top-k. On a GPU the question is how
close that gets to the card's limits and how large a catalogue fits in a latency budget, so
this benchmark measures, in one run on one device:

- the floor (``mipsbench.floor``): device-to-device copy bandwidth and the dense GEMM rate of
  each precision; floor(N, B) = max(stored table bytes / copy bandwidth, 2 B N d / GEMM rate
  of that precision);
- ``torch_cuda_fp32``: exact scores (TF32 off) + ``topk``; the reference for recall;
- ``torch_cuda_fp16`` / ``torch_cuda_bf16``: the item table stored in half precision (half the
  bytes to stream), scores in that precision, top-k taken directly (recall reported as is);
- ``torch_cuda_fp16_rescore`` / ``torch_cuda_bf16_rescore``: the item embeddings quantised
  directly, with a safety net: a short list of ``RESCORE_FACTOR * k`` from the half table is
  re-scored exactly against the fp32 vectors of just those items, then cut to k;
- ``*_block``: the same with the exact two-step top-k the served CPU module uses
  (``grank.mips.block_top_k``: block maxima, the top k blocks, the top k of their scores) in
  place of one ``torch.topk`` over each B x N score row, where the catalogue has enough blocks.

Catalogues have the trained model's geometry: the Gaussian mixture of ``mipsbench.geometry``
fitted to the trained item vectors, sampled on the device. Queries are the real users' served
vectors. Latency is host to host: the query batch is copied from pinned host memory to the
device and the ids back, as a served GPU model would see it.

Run where the GPU is (needs only numpy and torch; the vectors file comes from
``python -m mipsbench vectors`` on any machine):
    python -m mipsbench gpu --vectors artifacts/vectors.npz --out artifacts/gpu-mips
"""
from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from grank.mips import BLOCK, block_size, block_top_k

from .floor import copy_bandwidth_gbs, floor_ms, gemm_gflops
from .geometry import fit_mixture, sample_torch
from .measure import latency, recall

SIZES = (3706, 1_000_000, 5_000_000, 20_000_000, 100_000_000)
KS = (500, 2000)
BATCHES = (1, 16, 64, 256)
RESCORE_FACTOR = 2            # short list = 2k half-precision candidates, re-scored in fp32
MAX_SCORE_ELEMS = 1 << 30     # score matrix chunked over items beyond this many entries
RECALL_QUERIES = 256
# name -> (table precision, exact fp32 re-score of a short list, two-step block top-k)
METHODS = {"torch_cuda_fp32": (torch.float32, False, False),
           "torch_cuda_fp16": (torch.float16, False, False),
           "torch_cuda_fp16_rescore": (torch.float16, True, False),
           "torch_cuda_bf16": (torch.bfloat16, False, False),
           "torch_cuda_bf16_rescore": (torch.bfloat16, True, False),
           "torch_cuda_fp32_block": (torch.float32, False, True),
           "torch_cuda_fp16_block": (torch.float16, False, True),
           "torch_cuda_fp16_rescore_block": (torch.float16, True, True)}
PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def row_top_k(scores: torch.Tensor, k: int, block: bool = False):
    """Top-k of each row of scores [B, M]; ``block``: the two-step ``block_top_k`` where the
    row is a whole number of blocks and has enough of them (else one ``topk``)."""
    if block and scores.shape[1] % BLOCK == 0 and block_size(scores.shape[1], k):
        return block_top_k(scores, k, BLOCK)
    return scores.topk(k, dim=1)


def topk_chunked(q: torch.Tensor, table: torch.Tensor, k: int, block: bool = False):
    """Top-k of q @ table.T ([B, d] x [N, d]) without materialising more than MAX_SCORE_ELEMS
    scores: per-chunk top-k, then the top-k of the survivors. Returns (scores, ids) [B, k]."""
    B, N = q.shape[0], table.shape[0]
    chunk = max(k, MAX_SCORE_ELEMS // max(B, 1)) // BLOCK * BLOCK  # whole blocks per chunk
    if chunk >= N:
        return row_top_k(q @ table.T, k, block)
    vals, ids = [], []
    for s in range(0, N, chunk):
        v, i = row_top_k(q @ table[s:s + chunk].T, min(k, min(chunk, N - s)), block)
        vals.append(v)
        ids.append(i + s)
    v, pos = torch.cat(vals, 1).topk(k, dim=1)
    return v, torch.cat(ids, 1).gather(1, pos)


class GpuMethod:
    """One GPU method of ``METHODS`` on a table32 [N, d] float32 already on the device;
    ``search(q32 [B, d] float32, k) -> ids [B, k] int64`` on the device."""

    def __init__(self, name: str, table32: torch.Tensor, dtype=torch.float32, rescore: bool = False,
                 block: bool = False):
        self.name, self.dtype, self.rescore, self.block = name, dtype, rescore, block
        self.table32 = table32
        self.table = table32 if dtype == torch.float32 else table32.to(dtype)
        self.table_bytes = self.table.numel() * self.table.element_size()

    def search(self, q32: torch.Tensor, k: int) -> torch.Tensor:
        if not self.rescore:
            return topk_chunked(q32.to(self.dtype), self.table, k, self.block)[1]
        short = topk_chunked(q32.to(self.dtype), self.table, min(RESCORE_FACTOR * k, self.table.shape[0]),
                             self.block)[1]
        exact = torch.einsum("bd,bkd->bk", q32, self.table32[short])  # [B, 2k] fp32
        return short.gather(1, exact.topk(k, dim=1).indices)

    def release(self):
        if self.table is not self.table32:
            del self.table


def host_to_host(method: GpuMethod, users_host: torch.Tensor, batch: int, k: int, seconds: float = 0.5,
                 max_calls: int = 400) -> dict:
    """``mipsbench.measure.latency`` of ``method`` per call, host to host: ``batch`` rows of
    users_host [U, d] (pinned) in, ids [batch, k] out into pinned memory."""
    out = torch.empty(batch, k, dtype=torch.int64).pin_memory()
    method.search(users_host[:batch].cuda(), k)  # warm-up
    torch.cuda.synchronize()

    def call(s, e):  # the copy back of the ids waits for the search: no explicit synchronize
        out.copy_(method.search(users_host[s:e].to("cuda", non_blocking=True), k))

    return latency(call, users_host.shape[0], batch, seconds, max_calls, min_calls=10)


def run(vectors: Path, sizes=SIZES, ks=KS, batches=BATCHES, seconds: float = 0.5, log=print,
        methods=tuple(METHODS), partial: Path | None = None) -> dict:
    """Every (N, k, method, batch) point; ``partial``: the result so far is rewritten there
    after each N (a run stopped by a time limit keeps its finished sizes)."""
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: the exact reference
    v = np.load(vectors)
    items_real, users = v["items"], v["users"]
    mix = fit_mixture(items_real, k=32)
    dev = torch.cuda.get_device_name()
    bw = copy_bandwidth_gbs()
    rates = {p: gemm_gflops("cuda", dtype, n=8192, repeats=10) / 1e3 for dtype, p in PRECISION.items()}
    log(f"{dev}: copy bandwidth {bw:.0f} GB/s (read+write), GEMM TFLOP/s {json.dumps({a: round(b, 1) for a, b in rates.items()})}")
    users_host = torch.from_numpy(np.ascontiguousarray(users)).pin_memory()
    rq = users_host[:RECALL_QUERIES].cuda()
    d = items_real.shape[1]
    rows = []
    for n in sizes:
        t = time.perf_counter()
        table = (torch.from_numpy(items_real).cuda() if n == len(items_real) else sample_torch(mix, n, "cuda"))
        torch.cuda.synchronize()
        log(f"N={n}: sampled in {time.perf_counter() - t:.1f} s")
        for k in ks:
            if k > n:
                continue
            exact = topk_chunked(rq, table, k)[1]
            for name in methods:
                dtype, rescore, block = METHODS[name]
                prec = PRECISION[dtype]
                m = GpuMethod(name, table, dtype, rescore, block)
                r = recall(m.search(rq, k), exact)
                for b in batches:
                    tm = host_to_host(m, users_host, b, k, seconds)
                    fl = floor_ms(m.table_bytes, n, d, b, bw, rates[prec] * 1e3)
                    rows.append({"stage": "mips", "method": name, "N": n, "k": k, "batch": b,
                                 "qps": round(tm["qps"], 1), "p50_ms": round(tm["p50_ms"], 3),
                                 "p99_ms": round(tm["p99_ms"], 3), "recall": round(r, 4),
                                 "floor_ms": round(fl, 4), "p50_over_floor": round(tm["p50_ms"] / fl, 2),
                                 "memory_mb": round(m.table_bytes / 2**20, 1), "precision": prec,
                                 "device": dev, "recall_target": None, "params": {}})
                    log(f"  {name:24s} N={n:>9} k={k:>4} b={b:>3} recall={r:.4f} qps={tm['qps']:10.1f} "
                        f"p50={tm['p50_ms']:7.3f} ms p99={tm['p99_ms']:7.3f} floor={fl:7.3f} ms")
                m.release()
                del m
        del table
        torch.cuda.empty_cache()
        if partial is not None:
            partial.write_text(json.dumps(result(dev, bw, rates, rows), indent=1))
    return result(dev, bw, rates, rows)


def result(dev: str, bw: float, rates: dict, rows: list) -> dict:
    """The run as ``write`` merges it: device, date, rates (GEMM in TFLOP/s), rows."""
    return {"device": dev, "date": date.today().isoformat(), "copy_bandwidth_gbs": round(bw, 1),
            "gemm_tflops": {a: round(b, 1) for a, b in rates.items()}, "rescore_factor": RESCORE_FACTOR,
            "block": BLOCK, "torch": torch.__version__, "rows": rows}


def write(res: dict, docs: Path) -> Path:
    """Merge the GPU rows into docs/performance.json: rows of this device are replaced, every
    other row (CPU MIPS, ensemble, other GPUs) is kept; the run's rates go under ``gpus``."""
    docs.mkdir(parents=True, exist_ok=True)
    p = docs / "performance.json"
    old = json.loads(p.read_text()) if p.exists() else {"rows": []}
    keep = [r for r in old.get("rows", []) if r.get("device") != res["device"]]
    gpus = {**old.get("gpus", {}), res["device"]: {k: v for k, v in res.items() if k != "rows"}}
    p.write_text(json.dumps({**old, "gpus": gpus, "rows": keep + res["rows"]}, indent=1))
    return p


def dump_vectors(checkpoint: str, path: Path) -> None:
    """Write the checkpoint's item table [N, d] and user vectors [U, d] (float32, a few MB) to
    ``path`` (npz: ``items``, ``users``): all a GPU machine needs, without the data set."""
    from .geometry import trained_vectors
    items, users = trained_vectors(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, items=items, users=users)
