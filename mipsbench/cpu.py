"""The MIPS stage on the CPU against exact and index-based peers and against the machine's floor.

One run, one machine: catalogues of the trained model's geometry (``mipsbench.geometry``), real
user vectors as queries, every method of ``mipsbench.methods`` at each (N, k, batch); index
methods tuned to each recall target first. ``run`` returns the rows, ``write`` merges them into
docs/performance.json (stage ``mips``; ``python -m perf report`` renders them).
``python -m mipsbench cpu [--quick]``.
"""
from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path

import numpy as np

from . import floor as F
from .geometry import fit_mixture, geometry_report, sample, trained_vectors
from .measure import recall
from .methods import EXACT, INDEXED, REDUCED, TorchTopK, timed, tune

FULL = dict(sizes=(0, 1_000_000, 5_000_000), ks=(500, 2000), batches=(1, 16, 64, 256), targets=(0.95, 0.99))
QUICK = dict(sizes=(0, 50_000), ks=(500,), batches=(1, 16), targets=(0.95,))


def exact_ids(items, queries, k, chunk=256):
    """The exact top-k ids [B, k] of queries [B, d] over items [N, d] (the recall reference),
    ``chunk`` queries at a time so that the [chunk, N] score matrix stays small."""
    m = TorchTopK()
    m.build(items, k)
    return np.concatenate([m.search(queries[s:s + chunk]) for s in range(0, len(queries), chunk)])


def setting(checkpoint) -> tuple:
    """(item vectors, user vectors, mixture, geometry report) of a trained checkpoint:
    deterministic, so a run and a later import of its partial rows describe the same catalogues."""
    items_real, users = trained_vectors(checkpoint)
    users = np.ascontiguousarray(users)
    mix = fit_mixture(items_real, k=32)
    return items_real, users, mix, geometry_report(items_real, users, mix)


METHODS = {M.name: M for M in EXACT + REDUCED + INDEXED}


def run(checkpoint, quick: bool = False, seconds: float = 1.0, recall_queries: int = 300,
        log=print, partial: Path | None = None, sizes=None, ks=None, methods=None,
        command: str = "") -> dict:
    """``partial``: a JSON file rewritten with the rows so far after every method, so that a
    run of an hour or more that dies at 5M keeps what it measured. ``sizes`` / ``ks`` /
    ``methods`` narrow the plan (0 in sizes = the real catalogue)."""
    plan = dict(QUICK if quick else FULL)
    plan.update({k: tuple(v) for k, v in (("sizes", sizes), ("ks", ks)) if v})
    unknown = sorted(set(methods or ()) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {sorted(METHODS)}")
    # in the order given: a long run can put its slowest build last and keep the rest if stopped
    chosen = [METHODS[m] for m in methods] if methods else list(EXACT + REDUCED + INDEXED)
    t_run = time.time()
    items_real, users, mix, geo = setting(checkpoint)
    bw, gf = F.read_bandwidth_gbs(), F.gemm_gflops()  # before any index takes memory
    log(f"machine: read bandwidth {bw:.1f} GB/s, fp32 GEMM {gf:.0f} GFLOP/s")
    rows = []
    unreachable: dict[str, int] = {}  # method -> N at which even the lowest recall target failed
    for n in plan["sizes"]:
        items = items_real if n == 0 else sample(mix, n, seed=0)
        n = len(items)
        rq = users[:recall_queries]
        ks = [k for k in plan["ks"] if k <= n]
        exact = {k: exact_ids(items, rq, k) for k in ks}
        for M in chosen:
            if M.name == "faiss_ivfpq_refine" and n < 39 * 256:
                log(f"  {M.name} N={n}: skipped, PQ codebooks need >= {39 * 256} training points")
                continue
            if M.name in unreachable:
                # same parameters, more items: recall at a fixed search effort only falls with N
                log(f"  {M.name} N={n}: skipped, recall {min(plan['targets'])} was out of its grid's reach "
                    f"already at N={unreachable[M.name]:,}")
                rows.append({"stage": "mips_skipped", "method": M.name, "N": n,
                             "reason": f"recall {min(plan['targets'])} unreachable at N={unreachable[M.name]}"})
                continue
            m = M()
            # one index per catalogue, reused for every k (an HNSW build at 5M takes many minutes)
            build_s = m.build(items, ks[0])
            log(f"  {m.name} N={n}: built in {build_s:.1f} s")
            for k in ks:
                rebuilt = m.set_k(items, k) if k != ks[0] else None
                build_k = build_s if rebuilt is None else rebuilt
                targets = plan["targets"] if m.tunable else (None,)
                for target in targets:
                    if target is not None:
                        param, r = tune(m, rq, exact[k], target)
                        if param is None:
                            log(f"  {m.name} N={n} k={k}: recall {r:.3f} < {target} at the end of its grid")
                            rows.append({"stage": "mips_unreached", "method": m.name, "N": n, "k": k,
                                         "recall_target": target, "best_recall": round(r, 4),
                                         "build_s": round(build_k, 2), "params": dict(m.params)})
                            if target == min(plan["targets"]) and k == ks[0]:
                                unreachable[m.name] = n
                            continue
                    r = recall(m.search(rq), exact[k])
                    for b in plan["batches"]:
                        t = timed(m, users, b, seconds)
                        fl = F.floor_ms(items.nbytes, n, items.shape[1], b, bw, gf)
                        rows.append({"stage": "mips", "method": m.name, "N": n, "k": k, "batch": b,
                                     "qps": round(t["qps"], 1), "p50_ms": round(t["p50_ms"], 3),
                                     "p99_ms": round(t["p99_ms"], 3), "recall": round(r, 4),
                                     "recall_target": target, "floor_ms": round(fl, 3),
                                     "p50_over_floor": round(t["p50_ms"] / fl, 2),
                                     "build_s": round(build_k, 2), "memory_mb": round(m.memory_bytes / 2**20, 1),
                                     "params": dict(m.params)})
                        log(f"  {m.name:20s} N={n:>8} k={k:>4} b={b:>3} target={target} recall={r:.3f} "
                            f"qps={t['qps']:9.1f} p50={t['p50_ms']:8.2f} ms floor={fl:7.2f} ms")
            # freshness once per catalogue, after every k is measured (adding an item changes
            # the index the later k would search)
            if hasattr(m, "add_time"):
                rows.append({"stage": "mips_freshness", "method": m.name, "N": n, "k": ks[0],
                             "add_one_s": round(m.add_time(items[:1].copy()), 5),
                             "rebuild_s": round(build_s, 2)})
            elif m.name.startswith("grank_mips"):
                # index-free: a changed item ships as a new model version = export + load
                rows.append({"stage": "mips_freshness", "method": m.name, "N": n, "k": ks[0],
                             "new_version_s": round(build_s, 2)})
            del m
            if partial is not None:
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps({"bw_gbs": bw, "gemm_gflops": gf, "date": date.today().isoformat(),
                                               "command": command, "rows": rows}))
    return result(rows, bw, gf, geo, mix, date.today().isoformat(), time.time() - t_run, quick)


def result(rows: list[dict], bw: float, gf: float, geo: dict, mix: dict, day: str, seconds: float,
           quick: bool = False) -> dict:
    """The run as docs/performance.json stores it: rates, date, geometry check, rows."""
    return {"machine": F.measured_rates(bw, gf),
            "date": day, "quick": quick, "geometry": geo,
            "mixture": {"components": mix["k"], "shrink": mix["shrink"]},
            "seconds": round(seconds, 1), "rows": rows}


def from_partial(checkpoint, partial: Path) -> dict:
    """The result of a run that was stopped, from its partial file (rows of every method it
    finished, the rates and command of that run) and the checkpoint's deterministic geometry."""
    p = json.loads(Path(partial).read_text())
    _, _, mix, geo = setting(checkpoint)
    res = result(p["rows"], p["bw_gbs"], p["gemm_gflops"], geo, mix, p.get("date", date.today().isoformat()),
                 float("nan"))
    res["command"] = p.get("command", "python -m mipsbench cpu")
    return res


def write(res: dict, docs: Path, command: str, note: str = "") -> Path:
    """Merge the MIPS rows into docs/performance.json: timing rows of the (method, N, k) triples
    this run measured replace the old ones (a run at k = 2000 keeps the k = 500 rows of the same
    method and size), its per-catalogue rows (freshness, skipped builds) those of the same
    (method, N); other stages, sizes and k, and GPU rows (tagged with their device, from
    another machine) are kept. Each run is listed under ``mips_runs`` with its command, date and
    the machine rates it measured."""
    docs.mkdir(parents=True, exist_ok=True)
    p = docs / "performance.json"
    old = json.loads(p.read_text()) if p.exists() else {"rows": []}
    def key(r):  # timing rows are per k; freshness and skipped builds are per catalogue
        return (r["method"], r["N"], r.get("k") if r["stage"] in ("mips", "mips_unreached") else None)
    measured = {key(r) for r in res["rows"]}
    keep = [r for r in old.get("rows", []) if not r["stage"].startswith("mips") or r.get("device")
            or key(r) not in measured]
    sizes = sorted({r["N"] for r in res["rows"]})
    run_id = max((r.get("id", 0) for r in old.get("mips_runs", [])), default=-1) + 1
    rows = keep + [{**r, "run": run_id} for r in res["rows"]]
    # a run stays listed while any of its rows is kept
    runs = [r for r in old.get("mips_runs", []) if any(x.get("run") == r.get("id") for x in keep)]
    runs.append({"id": run_id, "command": command, "date": res["date"], "sizes": sizes, "note": note,
                 "methods": sorted({r["method"] for r in res["rows"]}), **res["machine"]})
    out = {**old, "mips_command": command, "machine": res["machine"], "mips_date": res["date"],
           "geometry": res["geometry"], "mixture": res["mixture"], "mips_runs": runs, "rows": rows}
    p.write_text(json.dumps(out, indent=1))
    return p
