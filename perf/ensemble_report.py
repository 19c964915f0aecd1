"""The ensemble section of docs/PERFORMANCE.md from the rows of ``python -m perf tune``
(stage ``ensemble``): one line per variant, throughput vs p99 plot, per-model breakdown,
open-loop and catalogue-scale tables. Every number is a measured row; the commands are listed."""
from __future__ import annotations

import re
from pathlib import Path

from grank.signatures import MIPS, MIPS_MERGE, shard_of

# The p99 latency target of capacity planning (`make plan P99_MS=50`, the README's planner
# example): what a row must meet to count as usable throughput.
BUDGET_MS = 50.0


def within_budget(r: dict, budget: float = BUDGET_MS) -> bool:
    """A row usable at this p99 budget. Open-loop rows must also have been served: >= 95% of the
    offered rate completed (perf_analyzer times completed requests only, so an overloaded server
    can still show a low p99)."""
    served = r.get("load_kind") != "request rate" or r["qps"] >= 0.95 * r["load"]
    return r["p99_ms"] <= budget and served


def best_within(rows: list[dict], budget: float = BUDGET_MS) -> dict | None:
    """The highest-throughput row within the budget, or None."""
    ok = [r for r in rows if within_budget(r, budget)]
    return max(ok, key=lambda r: r["qps"]) if ok else None


def plot_panels(groups: dict) -> list[str]:
    """The runs (day, and machine where recorded) the sweeps of ``groups`` ({(method, protocol):
    rows}) were measured in, one plot panel each, oldest first."""
    return sorted({_run(rows[0]) for rows in groups.values()})


def _plot(groups: dict, docs: Path) -> str:
    """Throughput vs p99, one panel per measurement day: rows of different days may come from
    other machines and another Ranker, so they are never drawn on one set of axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    days = plot_panels(groups)
    fig, axes = plt.subplots(1, len(days), figsize=(min(6.5 * len(days), 20), 4.8), squeeze=False)
    for ax, day in zip(axes[0], days):
        kinds = set()
        for (method, proto), rows in sorted(groups.items()):
            if _run(rows[0]) != day:
                continue
            kinds.add(rows[0].get("ranker", "-"))
            rows = sorted(rows, key=lambda r: r["load"])
            ax.plot([r["qps"] for r in rows], [r["p99_ms"] for r in rows], "o-", label=f"{method} ({proto})")
        ax.axhline(BUDGET_MS, color="k", ls=":", lw=1, label=f"p99 budget {BUDGET_MS:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel("throughput (requests/s, 1 user each)")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_title(f"measured {day}; Ranker: {', '.join(sorted(kinds))}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("grank ensemble on the embedded Triton (CPU): closed-loop concurrency sweeps", fontsize=10)
    fig.tight_layout()
    name = "ensemble_tuning.png"
    fig.savefig(docs / name, dpi=120)
    plt.close(fig)
    return name


SHARDED = re.compile(r"^shards(\d+)@(\d+)$")


def sharded_markdown(closed: dict) -> list[str]:
    """The sharded-table rows (``perf.tune`` variants ``shards<S>`` with ``--items``): per
    catalogue size and shard count, throughput and latency of the whole ensemble and what the
    MIPS stage (its shards, their merge) cost at the highest concurrency."""
    got = {}
    for (method, proto), rs in closed.items():
        m = SHARDED.match(method)
        if m:
            got[(int(m.group(2)), int(m.group(1)), proto)] = rs
    if not got:
        return []
    lines = ["", "### A sharded item table (`--shards S`: S MIPS models and an exact merge)", "",
             "The catalogue padded to N items (`perf.tune.big_catalogue_models`), its table in S shards, "
             "each run on its own server on the same machine; S = 1 is the committed layout, measured in "
             "the same run. Per-model times are perf_analyzer's averages per request at the highest "
             "concurrency (the S shards' compute is their mean; they run concurrently).", "",
             "| N | S | protocol | best infer/s with p99 <= budget (concurrency) | p50 / p99 ms at concurrency 1 "
             "| peak infer/s (concurrency) | p99 ms at peak | shard compute ms | shard queue ms | merge ms "
             "| Ranker compute ms | date, machine |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (n, shards, proto), rs in sorted(got.items()):
        best, peak = best_within(rs), max(rs, key=lambda r: r["qps"])
        one = min(rs, key=lambda r: r["load"])
        top = max(rs, key=lambda r: r["load"])["models"]
        scans = [v for k, v in top.items() if k == MIPS or shard_of(k) is not None]
        mean = lambda key: sum(v[key] for v in scans) / len(scans) if scans else float("nan")  # noqa: E731
        merge = top.get(MIPS_MERGE, {}).get("compute_infer_ms")
        rk = top.get("grank_ranker", {}).get("compute_infer_ms")
        lines.append(f"| {n:,} | {shards} | {proto} | "
                     + (f"{best['qps']:.1f} ({best['load']:g})" if best else "none")
                     + f" | {one['p50_ms']:.1f} / {one['p99_ms']:.1f} | {peak['qps']:.1f} ({peak['load']:g}) | "
                     f"{peak['p99_ms']:.1f} | {mean('compute_infer_ms'):.2f} | {mean('queue_ms'):.2f} | "
                     + (f"{merge:.2f}" if merge is not None else "-") + " | "
                     + (f"{rk:.2f}" if rk is not None else "-") + f" | {_run(rs[0])} |")
    return lines


def _run(row: dict) -> str:
    """'2026-11-24, 219 GFLOP/s': the day a row was measured and its machine's GEMM rate
    (mipsbench.floor.measured_rates; rows measured before they recorded it: the day alone)."""
    m = row.get("machine")
    return f"{row.get('date', '-')}" + (f", {m['gemm_gflops']:.0f} GFLOP/s" if m else "")


def _served(row: dict) -> str:
    """'fused+popularity, 2026-11-24, 219 GFLOP/s': which Ranker a row served
    (perf.tune.ranker_kind), when, and on what machine"""
    return f"{row.get('ranker', '-')}, {_run(row)}"


def ensemble_markdown(perf: dict, docs: Path) -> list[str]:
    need = ("method", "protocol", "N", "load", "load_kind", "qps", "p50_ms", "p95_ms", "p99_ms", "command")
    rows = [r for r in perf.get("rows", []) if r.get("stage") == "ensemble" and all(k in r for k in need)]
    if not rows:
        return ["", "## The ensemble as served", "",
                "Not measured yet: run `make perf-tune` (serves each variant on the embedded Triton and "
                "sweeps it with perf_analyzer)."]
    closed = {}
    for r in rows:
        if r["load_kind"] == "concurrency":
            closed.setdefault((r["method"], r["protocol"]), []).append(r)
    lines = ["", "## The ensemble as served (perf_analyzer against the embedded Triton)", "",
             "One change at a time (`perf.tune.VARIANTS`): round 1 varies the first committed setting "
             "(`all_threads`: ONNX Runtime's default of one intra-op thread per core in every model, 100 us "
             "batching delay), round 2 varies its winner (`threads1`: one thread per model instance); "
             "`default` is what the committed configs said when the row was measured (its R x k1: the "
             "history served and the MIPS candidates re-scored; the last column: the Ranker it served, "
             "`perf.tune.ranker_kind`, the day it was measured and, where recorded, the machine's fp32 GEMM "
             "rate, `mipsbench.floor.measured_rates`). One user per request, real users' histories "
             f"as input, one run per row, closed loop. p99 budget {BUDGET_MS:g} ms. Regenerate: `make perf-tune` "
             "(commands per run below). Identical settings measured twice (`threads1`, `inst2_threads1` and "
             "`default` on 2026-11-23) differed by about 10% at the same concurrency, `default` and `k1_200` (the "
             "same shape, 2026-11-24) by 2%: read smaller differences as noise. A date labels a run, not a machine "
             "(rows of 2026-11-23 recorded no machine): compare rows of one run. "
             "Instances: with no `instance_group` (the committed configs) Triton runs TWO CPU instances of "
             "each ONNX model (its CPU default for ONNX Runtime, triton-inference-server/core#82; the server "
             "log lists `grank_mips_0` and `grank_mips_1`) and one of the Python validator, so "
             "`inst2_threads1` repeats `threads1`; `inst1` and `inst3` are the real instance-count changes.", "",
             "| variant | protocol | N | R x k1 | best infer/s with p99 <= budget | at concurrency | p50 / p99 ms "
             "| peak infer/s (concurrency) | Ranker avg batch at peak | Ranker served, date, machine |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (method, proto), rs in sorted(closed.items(), key=lambda kv: -max(r["qps"] for r in kv[1])):
        best = best_within(rs)
        peak = max(rs, key=lambda r: r["qps"])
        rb = peak.get("models", {}).get("grank_ranker", {}).get("avg_batch")
        lines.append(f"| {method} | {proto} | {rs[0]['N']:,} | {rs[0].get('R', '-')} x {rs[0].get('k1', '-')} | "
                     + (f"{best['qps']:.1f} | {best['load']:g} | {best['p50_ms']:.1f} / {best['p99_ms']:.1f} | "
                        if best else "none | - | - | ")
                     + f"{peak['qps']:.1f} ({peak['load']:g}) | {rb if rb is not None else '-'} | {_served(rs[0])} |")
    if closed:
        lines += ["", f"![ensemble_tuning.png]({_plot(closed, docs)})"]
    shaped = {key: rs for key, rs in closed.items() if "HR@10" in rs[0]}
    if shaped:
        lines += ["", "### History length and k1 (re-exported; committed serving settings)", "",
                  "`perf.tune.SHAPES`: the served history R (newest items; the Generator reads the newest 64 "
                  "of them, the Ranker all R) and the number of MIPS candidates k1 the Ranker re-scores. "
                  "These change the answers, so each shape's test-split quality (the results protocol, "
                  "evaluated in PyTorch; the ONNX export is parity-checked) sits beside its speed.", "",
                  "| variant | protocol | R | k1 | test HR@10 | test NDCG@10 | best infer/s with p99 <= budget "
                  "| peak infer/s | Ranker infer ms at peak | Ranker served, date, machine |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for (method, proto), rs in sorted(shaped.items(), key=lambda kv: (kv[1][0]["R"], kv[1][0]["k1"])):
            best, peak = best_within(rs), max(rs, key=lambda r: r["qps"])
            rk = peak.get("models", {}).get("grank_ranker", {}).get("compute_infer_ms")
            best_qps = f"{best['qps']:.1f}" if best else "none"
            rk_ms = f"{rk:.2f}" if rk is not None else "-"
            lines.append(f"| {method} | {proto} | {rs[0]['R']} | {rs[0]['k1']} | {rs[0]['HR@10']:.4f} | "
                         f"{rs[0]['NDCG@10']:.4f} | {best_qps} | {peak['qps']:.1f} | {rk_ms} | {_served(rs[0])} |")
    # per-model breakdown at the highest load of each variant
    lines += ["", "### Where the time goes (per composing model, highest concurrency of each run)", "",
              "The first setting, the committed one, and the committed one on a larger catalogue (every "
              "run's breakdown is in `performance.json`, `models`):", "",
              "| variant | protocol | model | avg batch | queue ms | compute infer ms | input + output ms "
              "| Ranker served, date, machine |", "|---|---|---|---|---|---|---|---|"]
    shown = [key for key in sorted(closed) if key[0] in ("all_threads", "default")
             or ("@" in key[0] and not SHARDED.match(key[0]))]  # sharded runs: their own section
    for (method, proto), rs in ((key, closed[key]) for key in shown):
        top = max(rs, key=lambda r: r["load"])
        for model, m in sorted(top.get("models", {}).items()):
            lines.append(f"| {method} | {proto} | {model} | {m.get('avg_batch')} | {m['queue_ms']:.2f} | "
                         f"{m['compute_infer_ms']:.2f} | {m['compute_input_ms'] + m['compute_output_ms']:.2f} | "
                         f"{_served(top)} |")
    rate = [r for r in rows if r["load_kind"] != "concurrency"]
    if rate:
        lines += ["", "### Open loop (Poisson arrivals, `--request-rate-range`)", "",
                  "A rate is sustained when the server completes at least 95% of it with p99 within the budget "
                  "(perf_analyzer times completed requests only, so an overloaded server can still show a "
                  "low p99: the achieved rate is what gives it away).", "",
                  "| variant | protocol | offered req/s | achieved infer/s | p50 ms | p95 ms | p99 ms | sustained "
                  "| Ranker served, date, machine |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rate, key=lambda r: (r["method"], r["protocol"], r["load"])):
            lines.append(f"| {r['method']} | {r['protocol']} | {r['load']:g} | {r['qps']:.1f} | {r['p50_ms']:.1f} | "
                         f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {'yes' if within_budget(r) else 'no'} | "
                         f"{_served(r)} |")
        ok = [r for r in rate if within_budget(r)]
        if ok:
            top = max(ok, key=lambda r: r["load"])
            lines += ["", f"Highest sustained rate measured: {top['load']:g} requests/s ({top['method']}, "
                          f"{top['protocol']}; p99 {top['p99_ms']:.1f} ms; {_served(top)})."]
    lines += sharded_markdown(closed)
    lines += ["", "Commands (perf_analyzer, one per run):", ""]
    for cmd in sorted({r["command"] for r in rows}):
        lines.append(f"- `{cmd}`")
    return lines
