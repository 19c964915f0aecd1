"""Capacity planner: measured throughput and latency -> how many machines or GPUs a target needs.

    python -m perf plan --qps 2000 --p99-ms 50 --items 1000000 [--k 500] [--recall 0.99]

Reads ``docs/performance.json`` (MIPS rows from ``python -m mipsbench cpu`` and ``gpu``,
ensemble rows from ``python -m perf tune``) and any perf_analyzer CSVs given with ``--csv``.
Only measured points are used; nothing is modelled beyond the rules below, and every rule is
printed with the answer:

- a unit is what one measurement ran on: the whole benchmark machine for CPU rows (every method
  used all its cores), one GPU for GPU rows, one Triton server for ensemble rows;
- MIPS with dynamic batching at batch b: a request waits for the batch to fill
  (b / the unit's arrival rate) and then for the batch (its measured p99), so b is usable when
  fill + p99 <= the budget; an ensemble row's p99 already includes its queueing;
- each unit is loaded to ``headroom`` (default 0.8) of its measured throughput;
- catalogue sizes between measured ones are interpolated linearly in N (a brute-force scan costs
  O(N)); beyond the largest, exact brute-force methods are extrapolated linearly (flagged), index
  methods and ensembles are not (their cost is not linear in N);
- methods with a measured recall count only at recall >= ``--recall``;
- an open-loop row counts only if the server completed >= 95% of the offered rate.

With ``--gpus G --gpu-memory-gb M`` it also places a sharded item table (``shard_plan``): the
fewest shards S whose tables and score buffers fit the GPUs' memory, with shard s on GPU s mod G
(what ``python -m export repository --shards S --gpus G`` writes), timed from the measured GPU
MIPS rows at N / S items.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

LINEAR = ("grank_mips", "grank_mips_int8", "torch_topk", "faiss_flat",  # O(N) scans: may extrapolate
          "torch_cuda_fp32", "torch_cuda_fp32_block", "torch_cuda_fp16", "torch_cuda_fp16_block")
SHARD_METHOD = "torch_cuda_fp32_block"  # exact fp32 with the two-step top-k: what the served graph computes


@dataclass
class Option:
    stage: str          # mips | ensemble
    method: str         # MIPS method or ensemble configuration
    unit: str           # what one unit is (machine / GPU / server)
    setting: str        # batch b / concurrency c / request rate
    n_measured: str     # measured catalogue size(s) the estimate comes from
    unit_qps: float     # throughput one unit sustains within the budget (before headroom)
    p99_ms: float       # estimated p99 of a request at that setting, batching wait included
    recall: float | None
    units: int          # units needed for the target
    note: str = ""


def _at_n(rows: list[dict], n: int, method: str) -> tuple[dict, str, str] | None:
    """Interpolate qps and p99 at catalogue size n from rows of one (method, k, batch, target):
    (row-like dict, measured sizes used, note) or None when n lies outside what may be used."""
    by_n = sorted(rows, key=lambda r: r["N"])
    sizes = [r["N"] for r in by_n]
    if n in sizes:
        r = by_n[sizes.index(n)]
        return r, f"{n:,}", ""
    lo = [r for r in by_n if r["N"] < n]
    hi = [r for r in by_n if r["N"] > n]
    if lo and hi:
        a, b = lo[-1], hi[0]
        w = (n - a["N"]) / (b["N"] - a["N"])
        t = (1 - w) / a["qps"] + w / b["qps"]           # time per query is what is linear in N
        p = (1 - w) * a["p99_ms"] + w * b["p99_ms"]
        return {**b, "qps": 1 / t, "p99_ms": p}, f"{a['N']:,} and {b['N']:,}", "interpolated"
    if hi and method in LINEAR:                          # smaller than measured: scale down
        b = hi[0]
        f = n / b["N"]
        return {**b, "qps": b["qps"] / f, "p99_ms": b["p99_ms"] * f}, f"{b['N']:,}", "scaled down linearly"
    if hi:                                               # an index sized for more items: conservative
        return hi[0], f"{hi[0]['N']:,}", "measured at a larger N (conservative)"
    if lo and method in LINEAR:
        a = lo[-1]
        f = n / a["N"]
        return {**a, "qps": a["qps"] / f, "p99_ms": a["p99_ms"] * f}, f"{a['N']:,}", \
            f"EXTRAPOLATED x{f:.1f} beyond the largest measured N"
    return None


def mips_options(rows: list[dict], qps: float, budget_ms: float, n: int, k: int,
                 recall_min: float, headroom: float) -> list[Option]:
    """Best batch per (method, device) for the MIPS stage alone."""
    out = []
    mips = [r for r in rows if r.get("stage") == "mips" and r.get("k") == k]
    groups: dict[tuple, list[dict]] = {}
    for r in mips:
        if r.get("recall") is not None and r["recall"] < recall_min:
            continue
        groups.setdefault((r["method"], r.get("device"), r["batch"], r.get("recall_target")), []).append(r)
    best: dict[tuple, Option] = {}
    for (method, device, b, _), grp in groups.items():
        got = _at_n(grp, n, method)
        if got is None:
            continue
        r, measured, note = got
        rate = r["qps"] * headroom                  # arrival rate one unit is planned for
        fill_ms = 0.0 if b == 1 else 1e3 * (b - 1) / rate
        lat = fill_ms + r["p99_ms"]
        if lat > budget_ms:
            continue
        unit = f"GPU ({device})" if device else "machine like the benchmark's (all cores)"
        o = Option("mips", method, unit, f"batch {b}", measured, r["qps"], lat, r.get("recall"),
                   math.ceil(qps / rate), note)
        key = (method, device)
        if key not in best or o.units < best[key].units or (o.units == best[key].units and lat < best[key].p99_ms):
            best[key] = o
    out += best.values()
    return sorted(out, key=lambda o: (o.units, o.p99_ms))


def ensemble_options(rows: list[dict], qps: float, budget_ms: float, n: int,
                     headroom: float) -> list[Option]:
    """Best measured load per ensemble configuration within the budget
    (``perf.ensemble_report.best_within``), from rows measured on at least ``n`` items."""
    from .ensemble_report import best_within
    groups: dict[str, list[dict]] = {}
    for r in rows:
        # measured on a smaller catalogue: not valid for this one
        if r.get("stage") == "ensemble" and (r.get("N") is None or r["N"] >= n):
            groups.setdefault(f"{r['method']} ({r.get('protocol', 'grpc')})", []).append(r)
    out = []
    for method, grp in groups.items():
        r = best_within(grp, budget_ms)
        if r is None:
            continue
        load = f"{r.get('load_kind', 'concurrency')} {r.get('load', r.get('concurrency')):g}"
        if "R" in r:  # the served shape changes the answers: say which, and its quality if measured
            shape = f"R {r['R']} x k1 {r['k1']}" + (f", test HR@10 {r['HR@10']:.4f}" if "HR@10" in r else "")
            method = f"{method[:-1]}; {shape})"
        out.append(Option("ensemble", method, "Triton server like the measured one", load,
                          f"{r['N']:,}" if r.get("N") else "?", r["qps"], r["p99_ms"], None,
                          math.ceil(qps / (r["qps"] * headroom)),
                          "" if r.get("N") in (None, n) else "measured at a larger N (conservative)"))
    return sorted(out, key=lambda o: (o.units, o.p99_ms))


@dataclass
class ShardOption:
    shards: int         # S
    gpus_used: int      # min(S, G)
    per_gpu: int        # shards on the busiest GPU (they run one after another there)
    items_per_shard: int
    gpu_memory_gb: float  # table + score buffer of the busiest GPU at this batch
    batch: int
    stage_ms: float     # the MIPS stage's time per batch: the busiest GPU's shards in turn
    stage_qps: float    # users per second through the stage (batch / stage time)
    server_qps: float   # per server: S = 1 runs one instance per GPU (Triton's default), S > 1 once
    floor_ms: float     # the busiest GPU's tables read once at the measured copy bandwidth
    fits: bool
    note: str = ""


def shard_plan(perf: dict, n: int, gpus: int, gpu_memory_gb: float, budget_ms: float,
               method: str = SHARD_METHOD, d: int = 64, headroom: float = 0.8,
               k: int = 500) -> list[ShardOption]:
    """Where to put an ``n``-item table split into S shards on ``gpus`` GPUs of
    ``gpu_memory_gb``: for S = 1, 2, 4, .. 4 G and each measured batch, the busiest GPU's memory
    (its shards' tables, from the measured table size per item, plus a float32 score buffer of
    batch x items per shard, which the scan materialises) must stay within ``headroom`` of its
    memory, and its shards' batch times (measured rows of ``method``, interpolated at n / S
    items) add up, since one GPU runs its shards in turn while the GPUs run in parallel. The
    merge of S x k1 candidates is left out (microseconds next to a scan). An unsharded table
    is replicated on every GPU (Triton's default: one instance per GPU); a sharded one pins shard
    s to GPU s mod G, so it runs once. Returns the options that fit, the most users per second
    per server first, then the lowest stage time."""
    if gpus < 1 or gpu_memory_gb <= 0:
        raise ValueError(f"--gpus and --gpu-memory-gb must be > 0, got {gpus}, {gpu_memory_gb}")
    rows = [r for r in perf.get("rows", []) if r.get("stage") == "mips" and r.get("method") == method
            and r.get("k") == k and r.get("device")]
    if not rows:
        have = sorted({r["method"] for r in perf.get("rows", []) if r.get("device")})
        raise ValueError(f"--gpu-method: no GPU MIPS rows of {method} at k={k} (measured: {have}; "
                         "run `make bench-gpu` on a GPU machine)")
    device = rows[0]["device"]
    bw = perf.get("gpus", {}).get(device, {}).get("copy_bandwidth_gbs")
    per_item = max(r["memory_mb"] / r["N"] for r in rows) * 2 ** 20   # bytes of table per item
    out = []
    S = 1
    while S <= 4 * gpus:
        items = -(-n // S)
        per_gpu = -(-S // gpus)
        for b in sorted({r["batch"] for r in rows}):
            got = _at_n([r for r in rows if r["batch"] == b], items, method)
            if got is None:
                continue
            r, _, note = got
            mem = per_gpu * (items * per_item + b * items * 4) / 2 ** 30
            stage = per_gpu * r["p99_ms"]
            floor = per_gpu * items * per_item / (bw * 1e9) * 1e3 if bw else float("nan")
            qps = b / stage * 1e3
            out.append(ShardOption(S, gpus if S == 1 else min(S, gpus), per_gpu, items, round(mem, 2), b, round(stage, 3),
                                   round(qps, 1), round(qps * (gpus if S == 1 else 1), 1), round(floor, 3),
                                   mem <= headroom * gpu_memory_gb and stage <= budget_ms,
                                   f"{note}; rows of {device}".lstrip("; ")))
        S *= 2
    return sorted([o for o in out if o.fits], key=lambda o: (-o.server_qps, o.stage_ms))


def format_shard_plan(options: list[ShardOption], n: int, gpus: int, gpu_memory_gb: float,
                      budget_ms: float) -> str:
    head = (f"Sharded item table: {n:,} items on {gpus} GPU(s) of {gpu_memory_gb:g} GB "
            f"each, MIPS stage within {budget_ms:g} ms; best first")
    if not options:
        return head + "\n  nothing fits: more GPUs, more memory per GPU, or a smaller batch"
    lines = [head]
    for o in options[:8]:
        lines.append(f"  S = {o.shards:>3} on {o.gpus_used} GPU(s), {o.per_gpu} per GPU, {o.items_per_shard:,} items "
                     f"each, batch {o.batch}: {o.server_qps:,.0f} users/s per server, stage {o.stage_ms:.2f} ms per "
                     f"batch (bandwidth floor {o.floor_ms:.2f} ms), {o.gpu_memory_gb:.1f} GB on the busiest GPU "
                     f"[{o.note}]")
    best = options[0]
    lines += [f"  place: python -m export repository --shards {best.shards} --gpus {best.gpus_used} ...   "
              f"(shard s on GPU s mod {best.gpus_used})" if best.shards > 1 else
              "  place: python -m export repository ...   (one table; Triton runs an instance on every GPU)",
              "  rules: the busiest GPU holds ceil(S / G) shards and runs them in turn; S = 1 runs on every "
              "GPU (one instance each), S > 1 once; a GPU's memory is its shards' "
              "tables plus a float32 batch x items score buffer each (80% usable); times are the measured p99 of the "
              "GPU MIPS rows at N / S items (PyTorch on that GPU; the served ONNX graph computes the same "
              "scan); the merge is left out"]
    return "\n".join(lines)


def csv_rows(paths: list[str], n_items: int | None, name: str = "csv") -> list[dict]:
    """perf_analyzer CSVs (``perf.sweep.read_csv``) as ensemble rows."""
    from .sweep import read_csv
    out = []
    for p in paths:
        for r in read_csv(Path(p)):
            out.append({**r, "stage": "ensemble", "method": f"{name}:{Path(p).parent.name}", "N": n_items})
    return out


def plan(perf: dict, qps: float, budget_ms: float, n: int, k: int = 500, recall_min: float = 0.99,
         headroom: float = 0.8, extra_rows: list[dict] | None = None) -> dict:
    if qps <= 0 or budget_ms <= 0 or n <= 0:
        raise ValueError(f"--qps, --p99-ms and --items must be > 0, got {qps}, {budget_ms}, {n}")
    if not 0 < headroom <= 1:
        raise ValueError(f"--headroom: must be in (0, 1], got {headroom}")
    rows = list(perf.get("rows", [])) + list(extra_rows or [])
    ks = sorted({r["k"] for r in rows if r.get("stage") == "mips"})
    if ks and k not in ks:
        raise ValueError(f"--k: no MIPS rows measured at k={k}; measured: {ks}")
    return {"mips": mips_options(rows, qps, budget_ms, n, k, recall_min, headroom),
            "ensemble": ensemble_options(rows, qps, budget_ms, n, headroom),
            "inputs": {"qps": qps, "p99_ms": budget_ms, "items": n, "k": k, "recall": recall_min,
                       "headroom": headroom}}


def format_plan(p: dict, perf: dict) -> str:
    i = p["inputs"]
    m = perf.get("machine", {})
    lines = [f"Target: {i['qps']:,.0f} queries/s, p99 <= {i['p99_ms']:g} ms, {i['items']:,} items, k1 = {i['k']}, "
             f"index recall >= {i['recall']}", ""]
    for stage, title in (("mips", "MIPS stage alone (mipsbench cpu / gpu rows)"),
                         ("ensemble", "Whole ensemble (perf_analyzer rows)")):
        lines.append(title)
        if not p[stage]:
            lines.append("  nothing measured fits: no row meets the budget at this catalogue size "
                         "(run `python -m mipsbench cpu` / `python -m perf tune`, or relax the target)")
        for o in p[stage]:
            rec = "" if o.recall is None else f", recall {o.recall:.3f}"
            lines.append(f"  {o.units:>5} x {o.unit}: {o.method}, {o.setting}, {o.unit_qps:,.0f}/s per unit "
                         f"(N {o.n_measured}{', ' + o.note if o.note else ''}), p99 ~{o.p99_ms:.1f} ms{rec}")
        lines.append("")
    lines += ["Assumptions:",
              f"- each unit is loaded to {i['headroom']:.0%} of its measured throughput;",
              "- MIPS at batch b waits for the batch to fill (b-1 arrivals at that rate) plus the batch's p99;",
              "- between measured catalogue sizes, time per query is interpolated linearly in N; exact scans "
              "may be scaled linearly beyond them (flagged), index methods and ensembles never;",
              f"- CPU unit = the benchmark machine ({m.get('cpu', '?')}, {m.get('cores', '?')} threads, "
              f"{m.get('read_bandwidth_gbs', '?')} GB/s read, {m.get('gemm_gflops', '?')} GFLOP/s): "
              "scale by your machine's measured rates, not its core count;",
              "- the MIPS stage is only one of the ensemble's steps: plan a deployment from the ensemble rows, "
              "and use the MIPS rows for how the catalogue size moves the cost."]
    return "\n".join(lines)


def load_perf(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"--perf: {path} not found (run `make bench` / `make perf-tune` first)")
    return json.loads(path.read_text())
