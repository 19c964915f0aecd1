"""The MIPS stage on a GPU: brute-force matmul + top-k in fp32, fp16 and bf16 (PyTorch CUDA).

GRank's first stage is one inner product per item and a top-k. On a GPU the question is how
close that gets to the card's limits and how large a catalogue fits in a latency budget, so
this benchmark measures, in one run on one device:

- the floor: device-to-device copy bandwidth (bytes read + written: what the memory system
  moves per second) and the dense GEMM rate of each precision; floor(N, B) = max(stored table
  bytes / copy bandwidth, 2 B N d / GEMM rate of that precision) (``floor_ms``);
- ``torch_cuda_fp32``: exact scores (TF32 off) + ``topk``; the reference for recall;
- ``torch_cuda_fp16`` / ``torch_cuda_bf16``: the item table stored in half precision (half the
  bytes to stream), scores in that precision, top-k taken directly (recall reported as is);
- ``torch_cuda_fp16_rescore`` / ``torch_cuda_bf16_rescore``: the paper's "quantise the item
  embeddings directly" with a safety net: a short list of ``RESCORE_FACTOR * k`` from the half
  table is re-scored exactly against the fp32 vectors of just those items, then cut to k;
- ``*_block``: the same with the exact two-step top-k the served CPU module uses
  (``grank.mips.block_top_k``: block maxima, the top k blocks, the top k of their scores) in
  place of one ``torch.topk`` over each B x N score row, where the catalogue has enough blocks.

Catalogues have the trained model's geometry: the Gaussian mixture of ``perf.geometry`` fitted
to the trained item vectors, sampled on the device (per component: mean + z @ chol^T). Queries
are the real users' served vectors. Latency is host to host: the query batch is copied from
pinned host memory to the device and the ids back, as a served GPU model would see it.

Run where the GPU is (needs only numpy and torch):
    python -m perf.gpu_mips --vectors artifacts/vectors.npz --out artifacts/gpu-mips
``--vectors`` is written on any machine with ``python -m perf.gpu_mips --dump-vectors CKPT
--vectors artifacts/vectors.npz`` (the trained item table and user vectors, a few MB).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from grank.mips import BLOCK, block_size, block_top_k

from .geometry import fit_mixture
from .mips_methods import latency

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


def sample_torch(mix: dict, n: int, device, seed: int = 0) -> torch.Tensor:
    """n items [n, d] float32 on ``device`` from the mixture (same distribution as
    ``perf.geometry.sample``; another random stream)."""
    g = torch.Generator(device=device).manual_seed(seed)
    w = torch.as_tensor(mix["weights"], dtype=torch.float64, device=device)
    counts = torch.bincount(torch.multinomial(w, n, replacement=True, generator=g), minlength=len(w))
    d = mix["means"].shape[1]
    out = torch.empty(n, d, device=device)
    s = 0
    for j, c in enumerate(counts.tolist()):
        if c:
            mu = torch.as_tensor(mix["means"][j], dtype=torch.float32, device=device)
            L = torch.as_tensor(mix["chol"][j], dtype=torch.float32, device=device)
            out[s:s + c] = mu + torch.randn(c, d, generator=g, device=device) @ L.T
            s += c
    return out[torch.randperm(n, generator=g, device=device)]


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


class Method:
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


def best_seconds(fn, repeats: int = 10) -> float:
    """Best wall time of ``fn()`` on the GPU (synchronised) over ``repeats``, after one warm-up."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def copy_bandwidth_gbs(gib: float = 4.0, repeats: int = 10) -> float:
    """Device-to-device copy, bytes read + written per second (best of ``repeats``)."""
    x = torch.empty(int(gib * 2**30 / 4), device="cuda")
    y = torch.empty_like(x)
    best = best_seconds(lambda: y.copy_(x), repeats)
    del x, y
    return 2 * gib * 2**30 / best / 1e9


def gemm_tflops(dtype, n: int = 8192, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    return 2 * n ** 3 / best_seconds(lambda: a @ b, repeats) / 1e12


def floor_ms(table_bytes: int, n: int, d: int, batch: int, bw_gbs: float, tflops: float) -> float:
    """No method can stream the stored table faster than the memory system moves bytes (the
    copy rate counts reads and writes alike: a pure read of X bytes moves X), nor score it
    faster than the GEMM units of that precision run."""
    return 1e3 * max(table_bytes / (bw_gbs * 1e9), 2 * batch * n * d / (tflops * 1e12))


def timed(method: Method, users_host: torch.Tensor, batch: int, k: int, seconds: float = 0.5,
          max_calls: int = 400) -> dict:
    """Host-to-host latency per call: pinned query rows in, ids out."""
    out = torch.empty(batch, k, dtype=torch.int64).pin_memory()
    method.search(users_host[:batch].cuda(), k)  # warm-up
    torch.cuda.synchronize()

    def call(s, e):  # the copy back of the ids waits for the search: no explicit synchronize
        out.copy_(method.search(users_host[s:e].to("cuda", non_blocking=True), k))

    return latency(call, users_host.shape[0], batch, seconds, max_calls, min_calls=10)


def recall(got: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean |got ∩ exact| / k per row (on the device: sort + searchsorted)."""
    e = exact.sort(1).values
    pos = torch.searchsorted(e, got.contiguous()).clamp(max=e.shape[1] - 1)
    return float((e.gather(1, pos) == got).float().sum(1).div(exact.shape[1]).mean())


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
    rates = {"fp32": gemm_tflops(torch.float32), "fp16": gemm_tflops(torch.float16),
             "bf16": gemm_tflops(torch.bfloat16)}
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
                m = Method(name, table, dtype, rescore, block)
                r = recall(m.search(rq, k), exact)
                for b in batches:
                    tm = timed(m, users_host, b, k, seconds)
                    fl = floor_ms(m.table_bytes, n, d, b, bw, rates[prec])
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
    from .geometry import trained_vectors
    items, users = trained_vectors(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, items=items, users=users)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.gpu_mips", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", default="artifacts/vectors.npz", help="items + users npz")
    ap.add_argument("--dump-vectors", metavar="CHECKPOINT", help="write --vectors from a checkpoint and exit")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of: " + ", ".join(METHODS))
    ap.add_argument("--seconds", type=float, default=0.5, help="timing window per point")
    ap.add_argument("--out", default="artifacts/gpu-mips")
    ap.add_argument("--merge", metavar="GPU_MIPS_JSON",
                    help="merge a finished run's gpu_mips.json into --docs/performance.json and "
                         "regenerate PERFORMANCE.md (on any machine), then exit")
    ap.add_argument("--docs", default="docs")
    a = ap.parse_args(argv)
    if a.dump_vectors:
        dump_vectors(a.dump_vectors, Path(a.vectors))
        print(f"wrote {a.vectors}")
        return 0
    if a.merge:
        from .mips_report import markdown
        docs = Path(a.docs)
        p = write(json.loads(Path(a.merge).read_text()), docs)
        (docs / "PERFORMANCE.md").write_text(markdown(json.loads(p.read_text()), docs))
        print(f"merged {a.merge} into {p}; wrote {docs / 'PERFORMANCE.md'}")
        return 0
    if not torch.cuda.is_available():
        print("error: no CUDA device: this benchmark only runs on a GPU (CPU numbers: python -m perf bench)",
              file=sys.stderr)
        return 2
    methods = tuple(a.methods.split(","))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = run(Path(a.vectors), tuple(int(s) for s in a.sizes.split(",")), seconds=a.seconds,
              methods=methods, partial=out / "gpu_mips.partial.json")
    res["command"] = "python -m perf.gpu_mips " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "gpu_mips.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {out / 'gpu_mips.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
