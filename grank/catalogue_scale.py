"""Time and memory of a training step as the catalogue grows, exact vs sampled L_NTP.

    python -m grank.catalogue_scale --datasets synthetic-3706,synthetic-100k,synthetic-1m \\
        --threads 1 --out docs/large_catalogues.json --plot docs/large_catalogues.png

Each (data set, ``train.ntp_softmax``) probe runs in a child process under an address-space limit
(``--limit-gb``, RLIMIT_AS), so a step that does not fit fails there with a MemoryError or an
allocator RuntimeError, reported as "did not fit", and never grows into the memory of other
processes. A probe builds the data set (``synthetic-<size>``: ``grank.data.synthetic_catalogue``)
and the model at the ``--preset`` shape, runs ``--warmup`` then ``--steps`` real training steps
(the body of ``grank.train.train_step``: forward, backward, gradient clipping, AdamW, each
phase timed) and reports the median step time, the resident memory before the first step (data,
model, optimiser) and the peak during the steps. Step times are wall seconds and CPU seconds of
the process (``time.process_time``): on a machine shared with other work, the CPU seconds of a
one-thread probe are the steadier measure of the work a step does.
The results (with the command, the machine and the date) go to ``--out`` as JSON; ``--plot``
draws them. docs/LARGE_CATALOGUES.md has the numbers and what they mean. On a machine where other
measurements run, run it under the same ``flock`` lock file as they do.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

GB = 1 << 30


def _rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def probe(dataset: str, softmax: str, preset: str, overrides: dict, steps: int, warmup: int) -> dict:
    """One probe, in this process (the parent has set its address-space limit)."""
    import numpy as np
    import torch
    from .batches import epoch_samples
    from .checkpoint import build_model
    from .data import configure, split
    from .sampled_softmax import resolve
    from .train import losses, make_batch
    t0 = time.time()
    cfg, data = configure(preset, "grank", 0, {"dataset": dataset, "train.ntp_softmax": softmax, **overrides})
    res = {"dataset": dataset, "items": data.n_items, "softmax": softmax,
           "resolved": resolve(softmax, data.n_items)}
    torch.manual_seed(0)
    sp = split(data)
    model = build_model(cfg, data).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    users, ends = epoch_samples(sp, cfg.model.max_history, np.random.default_rng(0))
    bs = cfg.train.batch_size
    res.update(build_seconds=round(time.time() - t0, 1), parameters=sum(p.numel() for p in model.parameters()),
               rss_before_gb=round(_rss() / GB, 3))
    times, cpu, phases = [], [], []
    for i in range(warmup + steps):
        j = (i * bs) % max(1, len(users) - bs)
        batch = make_batch(data, users[j:j + bs], ends[j:j + bs], cfg)
        t, c = time.perf_counter(), time.process_time()
        # train_step's body, each phase timed (CPU seconds): forward, backward, clip + AdamW
        ls = losses(model, batch, cfg)
        c1 = time.process_time()
        opt.zero_grad(set_to_none=True)
        ls["total"].backward()
        c2 = time.process_time()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            phases.append((c1 - c, c2 - c1, time.process_time() - c2))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    med = np.median(np.array(phases), 0)
    res.update(step_seconds=round(float(np.median(times)), 3), step_seconds_all=[round(x, 3) for x in times],
               step_cpu_seconds=round(float(np.median(cpu)), 3),
               cpu_forward_backward_optimizer=[round(float(x), 3) for x in med],
               peak_rss_gb=round(peak / GB, 3), step_peak_gb=round((peak - res["rss_before_gb"] * GB) / GB, 3))
    return res


def probe_pair(dataset: str, preset: str, overrides: dict, steps: int, warmup: int) -> list[dict]:
    """Step times of the exact and the sampled softmax in ONE process, steps alternating on the
    same batches, so both see the same load on a shared machine (memory is not reported: the
    process holds both models)."""
    import numpy as np
    import torch
    from .batches import epoch_samples
    from .checkpoint import build_model
    from .data import configure, split
    from .train import make_batch, train_step
    runs = {}
    for sm in ("exact", "sampled"):
        cfg, data = configure(preset, "grank", 0, {"dataset": dataset, "train.ntp_softmax": sm, **overrides})
        torch.manual_seed(0)
        model = build_model(cfg, data).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        runs[sm] = (cfg, model, opt, [], [])
    users, ends = epoch_samples(split(data), cfg.model.max_history, np.random.default_rng(0))
    bs = cfg.train.batch_size
    for i in range(warmup + steps):
        j = (i * bs) % max(1, len(users) - bs)
        for sm, (cfg, model, opt, times, cpu) in (runs.items() if i % 2 else reversed(runs.items())):
            batch = make_batch(data, users[j:j + bs], ends[j:j + bs], cfg)
            t, c = time.perf_counter(), time.process_time()
            train_step(model, opt, batch, cfg)
            if i >= warmup:
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
    return [{"dataset": dataset, "items": data.n_items, "softmax": sm, "timing": "interleaved",
             "step_seconds": round(float(np.median(times)), 3), "step_seconds_min": round(min(times), 3),
             "step_cpu_seconds": round(float(np.median(cpu)), 3),
             "step_seconds_all": [round(x, 3) for x in times], "status": "ok"}
            for sm, (_, _, _, times, cpu) in runs.items()]


def child(a) -> int:
    limit = int(a.limit_gb * GB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch
    torch.set_num_threads(a.threads)
    overrides = dict(kv.split("=", 1) for kv in a.set or ())
    if a.interleave:
        for res in probe_pair(a.datasets, a.preset, overrides, a.steps, a.warmup):
            print("RESULT " + json.dumps(res), flush=True)
        return 0
    try:
        res = probe(a.datasets, a.softmax, a.preset, overrides, a.steps, a.warmup)
        res["status"] = "ok"
    except (MemoryError, RuntimeError) as e:  # torch's CPU allocator raises RuntimeError when malloc fails
        first = str(e).strip().splitlines()[0][:200]
        if not isinstance(e, MemoryError) and "alloc" not in first.lower() and "memory" not in first.lower():
            raise
        from .data import synthetic_size
        res = {"dataset": a.datasets, "items": synthetic_size(a.datasets), "softmax": a.softmax,
               "status": f"did not fit in {a.limit_gb:g} GB", "error": f"{type(e).__name__}: {first}"}
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m grank.catalogue_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="synthetic-3706,synthetic-10k,synthetic-30k,synthetic-100k,"
                    "synthetic-300k,synthetic-1m", help="comma-separated data sets (synthetic-<size>: any size)")
    ap.add_argument("--softmax", default="exact,sampled", help="train.ntp_softmax values to probe")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="config override of every probe (default: model.ranker_history=256, ML-1M's "
                         "trained shape, whatever the data set's own default)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-gb", type=float, default=8.0, help="address-space limit of each probe")
    ap.add_argument("--out", default=None, help="JSON file for the results (appended to by data set)")
    ap.add_argument("--plot", default=None, help="PNG of step time and peak memory against catalogue size")
    ap.add_argument("--interleave", action="store_true",
                    help="time exact and sampled steps alternating in one process per data set (a fair "
                         "comparison on a shared machine; no memory figures): for the sizes where both fit")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.set = a.set if a.set is not None else ["model.ranker_history=256"]
    if a.child:
        return child(a)
    from .train import host_description
    rows = []
    for ds in filter(None, a.datasets.split(",")):  # --datasets '': only --plot, from --out
        for sm in ["both"] if a.interleave else a.softmax.split(","):
            cmd = [sys.executable, "-m", "grank.catalogue_scale", "--child", "--datasets", ds, "--softmax", sm,
                   "--preset", a.preset, "--steps", str(a.steps), "--warmup", str(a.warmup),
                   "--threads", str(a.threads), "--limit-gb", str(a.limit_gb)] + [x for kv in a.set for x in ("--set", kv)]
            r = subprocess.run(cmd + (["--interleave"] if a.interleave else []), capture_output=True, text=True)
            lines = [json.loads(x[7:]) for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            for res in lines or [{"dataset": ds, "softmax": sm, "status": f"failed (exit {r.returncode})",
                                  "error": r.stderr[-500:]}]:
                rows.append(res)
                print(json.dumps(res), flush=True)
    where = {"command": "python -m grank.catalogue_scale " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
             "machine": host_description(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
             "threads": a.threads}
    rows = [{**r, **where} for r in rows]
    if a.out and rows:
        out = Path(a.out)
        doc = json.loads(out.read_text()) if out.exists() else {}
        key = lambda r: (r["dataset"], r["softmax"], r.get("timing", "alone"))
        doc["probes"] = [r for r in doc.get("probes", []) if key(r) not in {key(x) for x in rows}] + rows
        out.write_text(json.dumps(doc, indent=1))
    if a.plot:
        plot(json.loads(Path(a.out).read_text())["probes"] if a.out else rows, a.plot, a.limit_gb)
    return 0


def plot(rows: list, path: str, limit_gb: float) -> None:
    """CPU seconds of a step and peak resident memory against catalogue size (the synthetic-<size>
    probes), one colour per softmax (solid: probes alone, dashed: interleaved); a probe that did
    not fit is marked at the memory limit."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r["dataset"].startswith("synthetic-")]  # one kind of data on one axis
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for sm, marker, colour in (("exact", "o", "tab:blue"), ("sampled", "s", "tab:orange")):
        alone = sorted((r for r in rows if r["softmax"] == sm and r["status"] == "ok" and "timing" not in r),
                       key=lambda r: r["items"])
        pair = sorted((r for r in rows if r["softmax"] == sm and r.get("timing") == "interleaved"),
                      key=lambda r: r["items"])
        axes[0].plot([r["items"] for r in alone], [r["step_cpu_seconds"] for r in alone], marker + "-",
                     color=colour, label=f"{sm}, alone")
        if pair:
            axes[0].plot([r["items"] for r in pair], [r["step_cpu_seconds"] for r in pair], marker + "--",
                         color=colour, mfc="none", label=f"{sm}, interleaved")
        axes[1].plot([r["items"] for r in alone], [r["peak_rss_gb"] for r in alone], marker + "-",
                     color=colour, label=sm)
        failed = [r for r in rows if r["softmax"] == sm and r["status"] != "ok" and r.get("items")]
        if failed:
            axes[1].plot([r["items"] for r in failed], [limit_gb] * len(failed), "x", ms=10, color=colour,
                         label=f"{sm}: did not fit in {limit_gb:g} GB")
    for ax, label in zip(axes, ("CPU seconds per training step (median, 1 thread)", "peak resident memory (GB)")):
        ax.set_xscale("log")
        ax.set_xlabel("catalogue size (items)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
