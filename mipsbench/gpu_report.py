"""The GPU sections of docs/PERFORMANCE.md from the rows of ``mipsbench.gpu`` (rows tagged with
their ``device``; the run's rates under ``gpus`` in docs/performance.json): per device a reading
computed from the rows, one table per k and a latency-vs-N plot."""
from __future__ import annotations

from pathlib import Path


def _plot(rows, docs: Path, device: str) -> str | None:
    """p50 latency vs N per GPU method at batch 1 and the largest batch (smallest k)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not rows:
        return None
    k0 = min(r["k"] for r in rows)
    batches = (min(r["batch"] for r in rows), max(r["batch"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, b in zip(axes, batches):
        for m in sorted({r["method"] for r in rows}):
            pts = sorted((r["N"], r["p50_ms"]) for r in rows if r["method"] == m and r["k"] == k0 and r["batch"] == b)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=m)
        for prec, style in (("fp32", "k:"), ("fp16", "k--")):
            fl = sorted((r["N"], r["floor_ms"]) for r in rows if r["precision"] == prec and r["k"] == k0
                        and r["batch"] == b and r["method"].endswith(prec))
            ax.plot([p[0] for p in fl], [p[1] for p in fl], style, label=f"floor {prec}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"batch {b}", fontsize=9)
        ax.set_xlabel("catalogue size N")
        ax.set_ylabel("p50 latency, host to host (ms)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Brute-force MIPS on {device}, k = {k0}", fontsize=10)
    fig.tight_layout()
    name = "mips_gpu_latency_vs_n.png"
    fig.savefig(docs / name, dpi=120)
    plt.close(fig)
    return name



def _reading(rows, budget_ms: float = 10.0) -> list[str]:
    """Numbers a reader wants first, computed from the rows: the speed-up of the half table
    with exact re-scoring over fp32, its recall, distance to the floor, and the largest
    measured catalogue within a latency budget."""
    k0 = min(r["k"] for r in rows)
    n_max = max(r["N"] for r in rows)
    bs = sorted({r["batch"] for r in rows})
    at = {(r["method"], r["N"], r["batch"]): r for r in rows if r["k"] == k0}
    out = ["Reading the rows (k = %d):" % k0, ""]
    sp = [f"{at[('torch_cuda_fp32', n_max, b)]['p50_ms'] / at[('torch_cuda_fp16_rescore', n_max, b)]['p50_ms']:.1f}x at batch {b}"
          for b in bs if ("torch_cuda_fp16_rescore", n_max, b) in at and ("torch_cuda_fp32", n_max, b) in at]
    rec = [r["recall"] for r in rows if r["method"].endswith("_rescore")]
    unscored = {m: min(r["recall"] for r in rows if r["method"] == m) for m in ("torch_cuda_fp16", "torch_cuda_bf16")
                if any(r["method"] == m for r in rows)}
    if sp and rec:
        out.append(f"- fp16 table + exact re-score vs fp32 at N = {n_max:,}: {', '.join(sp)}; its recall@k is "
                   f"at least {min(rec):.4f} everywhere (without the re-score: " +
                   ", ".join(f"{m.split('_')[-1]} >= {v:.4f}" for m, v in unscored.items()) + ").")
    big = [r for r in rows if r["k"] == k0 and r["N"] >= 5_000_000]
    for b in (bs[0], bs[-1]):
        fl = [r["p50_over_floor"] for r in big if r["batch"] == b]
        if fl:
            out.append(f"- batch {b}, N >= 5M: p50 is {min(fl):.1f} to {max(fl):.1f} times the floor.")
    pairs = [(m[:-len("_block")], m) for m in dict.fromkeys(r["method"] for r in rows) if m.endswith("_block")]
    for plain, blocked in pairs:
        sp = {b: [at[(plain, n, b)]["p50_ms"] / at[(blocked, n, b)]["p50_ms"] for n in {r["N"] for r in big}
                  if (plain, n, b) in at and (blocked, n, b) in at] for b in bs}
        if any(sp.values()):
            out.append(f"- {blocked} (the two-step top-k of `grank.mips.block_top_k`) vs {plain} (one "
                       "`torch.topk`), N >= 5M: " + ", ".join(f"{min(v):.1f}-{max(v):.1f}x at batch {b}"
                                                             for b, v in sp.items() if v) + ".")
    for b in (bs[0], bs[len(bs) // 2]):
        fits = {m: max((r["N"] for r in rows if r["method"] == m and r["k"] == k0 and r["batch"] == b
                        and r["p50_ms"] <= budget_ms), default=None)
                for m in ("torch_cuda_fp32", "torch_cuda_fp16_rescore", "torch_cuda_fp32_block",
                          "torch_cuda_fp16_rescore_block") if any(r["method"] == m for r in rows)}
        out.append(f"- largest measured N with p50 <= {budget_ms:g} ms at batch {b}: " +
                   ", ".join(f"{m} {n:,}" if n else f"{m} none" for m, n in fits.items()) + ".")
    out.append("- At large batches the floor is the GEMM at the table's rate (740+ TFLOP/s in half "
               "precision), and one `torch.topk` over the B x N score matrix takes most of the time (timed "
               "apart in [The MIPS stage on a GPU](#the-mips-stage-on-a-gpu)); the two-step top-k removes most of that, and what is "
               "left is the score matrix's trip through memory: a fused score + top-k kernel that never "
               "writes it is the next lever.")
    return out



def gpu_sections(perf: dict, docs: Path) -> list[str]:
    """Markdown lines of one section per GPU in ``perf["gpus"]`` (none when no GPU ran)."""
    lines = []
    for device, g in perf.get("gpus", {}).items():
        rows = [r for r in perf["rows"] if r.get("device") == device]
        if not rows:  # a run whose rows were all replaced or that measured nothing
            continue
        rates = ", ".join(f"{p} {t} TFLOP/s" for p, t in g["gemm_tflops"].items())
        lines += ["", f"## MIPS stage on a GPU: {device}", "",
                  f"Date: {g['date']}. torch {g['torch']}. Command: `{g.get('command', '')}`"
                  + (" (as recorded: `python -m perf.gpu_mips` became `python -m mipsbench gpu` on 2026-12-06)"
                     if g.get("command", "").startswith("python -m perf.") else "") + ".  ",
                  f"Measured in the same run: device-to-device copy {g['copy_bandwidth_gbs']} GB/s "
                  f"(bytes read + written), dense GEMM {rates} (8192^3, best of 10; fp32 without TF32). "
                  "Floor = max(stored table bytes / copy rate, 2·B·N·d / GEMM rate of the table's precision). "
                  "Latency is host to host: the query batch is copied in from pinned memory and the ids "
                  "back. Catalogues: the same mixture as the CPU runs, sampled on the device. "
                  f"`*_rescore`: top {g['rescore_factor']}·k from the half-precision table, re-scored "
                  "in fp32, cut to k. " + (f"`*_block`: the same with the top-k in the two exact steps of "
                                           f"`grank.mips.block_top_k` (maxima of {g['block']} strided groups, the "
                                           "top k groups, the top k of their scores) instead of one `torch.topk`. "
                                           if g.get("block") else "") +
                  "Recall@k against the fp32 top-k of 256 real users." +
                  # said only while the rows lack it, so ONNX Runtime rows added later drop the sentence
                  ("" if any(r["method"].startswith("grank_mips") for r in rows) else
                   " PyTorch CUDA only: the served ONNX module was not timed on this GPU (the GPU "
                   f"machine's onnxruntime on {g['date']} was the CPU build, without a CUDA execution "
                   "provider)."), ""]
        lines += _reading(rows) + [""]
        for k in sorted({r["k"] for r in rows}):
            bs = sorted({r["batch"] for r in rows})
            lines += [f"### k = {k}", "",
                      "| N | method | recall | " + " | ".join(f"p50 ms b={b}" for b in bs) +
                      f" | QPS b={bs[-1]} | p50/floor b={bs[0]} | p50/floor b={bs[-1]} | table MB |",
                      "|---|---|---|" + "---|" * (len(bs) + 4)]
            for n in sorted({r["N"] for r in rows}):
                for m in dict.fromkeys(r["method"] for r in rows):
                    by_b = {r["batch"]: r for r in rows if r["N"] == n and r["k"] == k and r["method"] == m}
                    if not by_b:
                        continue
                    r0, r1 = by_b[bs[0]], by_b[bs[-1]]
                    lines.append(f"| {n:,} | {m} | {r0['recall']:.4f} | " +
                                 " | ".join(f"{by_b[b]['p50_ms']:.3f}" for b in bs) +
                                 f" | {r1['qps']:,.0f} | {r0['p50_over_floor']:.1f} | {r1['p50_over_floor']:.1f} | "
                                 f"{r0['memory_mb']:,.1f} |")
            lines.append("")
        png = _plot(rows, docs, device)
        if png:
            lines += [f"![{png}]({png})", ""]
    return lines


