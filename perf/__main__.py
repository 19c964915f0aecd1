"""python -m perf: capacity planning of the served ensemble.

  python -m perf sweep --url localhost:8001 --protocol grpc --concurrency 1:8:1 --out artifacts/perf
  python -m perf tune --checkpoint artifacts/default/grank/best.pt --variants default threads1
  python -m perf plan --qps 2000 --p99-ms 50 --items 1000000
  python -m perf report --docs docs
  python -m perf swap --repository model_repository --checkpoint artifacts/fast-seed1/grank/best.pt
  python -m perf overload --repository model_repository --rates 400 1500 3000
  python -m perf soak --repository model_repository --minutes 10 --concurrency 16

`sweep` runs perf_analyzer against a running server (`make serve`); `tune` serves variants of
the repository and sweeps each; `plan` turns measured rows into machine counts; `report`
renders docs/PERFORMANCE.md from docs/performance.json (no measuring); `swap` measures a model
swap and its rollback under load, checking every answer; `overload` offers open-loop load far above
capacity with and without admission control; `soak` holds a concurrency for many minutes (all
three start their own server on a copy of the repository; docs/RELIABILITY.md). The MIPS benchmark's rows come from `python -m mipsbench`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sweep", help="concurrency (or request-rate) sweep with perf_analyzer")
    p.add_argument("--url", default="localhost:8001", help="the server's gRPC or HTTP endpoint (host:port)")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc", help="protocol of --url")
    p.add_argument("--concurrency", default="1:4:1", help="start:end:step")
    p.add_argument("--request-rate", default=None, help="start:end:step (Poisson arrivals; open loop)")
    p.add_argument("--batch", type=int, default=1, help="rows per request")
    p.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer measurement window")
    p.add_argument("--stability", type=int, default=25,
                   help="allowed %% variation between measurement windows (perf_analyzer -s)")
    p.add_argument("--dataset", default=None,
                   help="where the replayed users come from (default: the data set the server says it serves)")
    p.add_argument("--out", default="artifacts/perf", help="folder for perf.csv, the log, command.txt, perf.png")
    p.add_argument("--admin-key-file", default=None,
                   help="the management key of a server that has one (else $GRANK_ADMIN_KEY): perf_analyzer reads the config")
    p = sub.add_parser("plan", help="capacity planner: machines / GPUs / servers for a target QPS and p99")
    p.add_argument("--qps", type=float, required=True, help="target queries (users) per second")
    p.add_argument("--p99-ms", type=float, required=True, help="p99 latency budget in ms")
    p.add_argument("--items", type=int, required=True, help="catalogue size N")
    p.add_argument("--k", type=int, default=500, help="MIPS candidates k1 (a measured value)")
    p.add_argument("--recall", type=float, default=0.99, help="minimum recall@k1 of index methods")
    p.add_argument("--headroom", type=float, default=0.8, help="fraction of measured throughput to plan for")
    p.add_argument("--perf", default="docs/performance.json", help="measured rows")
    p.add_argument("--csv", nargs="*", default=[], help="extra perf_analyzer CSVs of the ensemble")
    p.add_argument("--csv-items", type=int, default=None, help="catalogue size the --csv runs served")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--gpus", type=int, default=0,
                   help="GPUs per server: also place the item table in shards on them (with --gpu-memory-gb)")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory of each GPU (with --gpus)")
    p.add_argument("--gpu-method", default=None,
                   help="measured GPU MIPS rows to time shards with (default: exact fp32, two-step top-k)")
    p = sub.add_parser("tune", help="serve variants of the repository and sweep each with perf_analyzer")
    p.add_argument("--checkpoint", default="artifacts/default/grank/best.pt", help="the served model")
    p.add_argument("--repository", default="model_repository", help="a built repository (make repository)")
    p.add_argument("--variants", nargs="*", default=["default"],
                   help="serving variants (perf.tune.VARIANTS: %(default)s ...)")
    p.add_argument("--protocols", nargs="*", default=["grpc"], choices=["grpc", "http"],
                   help="protocols to sweep each variant over")
    p.add_argument("--concurrency", default="1:9:2", help="start:end:step")
    p.add_argument("--request-rate", default=None,
                   help="start:end:step: an open-loop Poisson sweep instead of the concurrency one")
    p.add_argument("--items", type=int, default=0,
                   help="serve a catalogue padded to this many items (synthetic, trained geometry)")
    p.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer measurement window")
    p.add_argument("--out", default="artifacts/tune", help="one directory per run")
    p.add_argument("--docs", default="docs", help="where performance.json / PERFORMANCE.md go")
    p = sub.add_parser("report", help="regenerate DOCS/PERFORMANCE.md from DOCS/performance.json (measures nothing)",
                       description="Rewrite what follows the generated-part marker line of DOCS/PERFORMANCE.md "
                                   "(and the plots beside it) from the rows in DOCS/performance.json; the "
                                   "hand-written text above the marker is kept.")
    p.add_argument("--docs", default="docs", help="folder holding performance.json; PERFORMANCE.md and plots go there")
    p = sub.add_parser("swap", help="deploy a checkpoint and roll it back under load, every answer checked")
    p.add_argument("--repository", default="model_repository", help="a built repository (copied, not changed)")
    p.add_argument("--checkpoint", required=True, help="the checkpoint to deploy (same served shapes)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--settle", type=float, default=10.0, help="seconds of load before, between and after the switches")
    p.add_argument("--out", default="artifacts/perf/swap")
    p = sub.add_parser("overload", help="open-loop load far above capacity, with and without admission control")
    p.add_argument("--repository", default="model_repository", help="a built repository (copied, not changed)")
    p.add_argument("--rates", type=float, nargs="+", default=[400, 1500, 3000], help="offered requests per second")
    p.add_argument("--seconds", type=float, default=15.0, help="per rate")
    p.add_argument("--deadline", type=float, default=5.0, help="client deadline per request, seconds")
    p.add_argument("--out", default="artifacts/perf/overload")
    p = sub.add_parser("soak", help="perf_analyzer at one concurrency for minutes: errors, latency, memory per minute")
    p.add_argument("--repository", default="model_repository", help="a built repository (copied, not changed)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--out", default="artifacts/perf/soak")
    a = ap.parse_args(argv)
    if a.cmd == "soak":
        import json

        from .soak import run as soak
        print(json.dumps(soak(Path(a.repository), Path(a.out), a.minutes, a.concurrency, a.protocol), indent=1))
        return 0
    if a.cmd == "swap":
        import json

        from .swap import run as swap
        print(json.dumps(swap(Path(a.repository), Path(a.checkpoint), Path(a.out), a.concurrency, a.protocol,
                              a.settle), indent=1))
        return 0
    if a.cmd == "overload":
        import json

        from .overload import compare
        print(json.dumps(compare(Path(a.repository), Path(a.out), a.rates, a.seconds, a.deadline), indent=1))
        return 0
    if a.cmd == "tune":
        return _tune(a)
    if a.cmd == "plan":
        return _plan(a)
    if a.cmd == "report":
        return _report(a)

    from client.grank_client import GRankClient
    from grank.data import load

    from tritonclient.utils import InferenceServerException

    from serve.admin import read_key

    from .sweep import sweep
    try:
        key = read_key(a.admin_key_file)
        client = GRankClient(a.url, a.protocol, admin_key=key)
    except (InferenceServerException, ValueError) as e:
        print(f"error: server {a.url}: {e} (start one with `make serve`)", file=sys.stderr)
        return 2
    try:
        res = sweep(client, load(a.dataset or client.schema["dataset"]), a.url, a.protocol, Path(a.out), concurrency=a.concurrency,
                    request_rate=a.request_rate, batch=a.batch, interval_ms=a.interval_ms,
                    stability=a.stability, key=key)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"$ {res['command']}")
    print(f"{'load':>6} {'infer/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for r in res["rows"]:
        print(f"{r['load']:6g} {r['qps']:9.1f} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['p99_ms']:8.2f}")
    print(f"CSV, log, command and plot in {res['dir']}/ (perf.csv, perf_analyzer.log, command.txt, perf.png)")
    return 0


def _tune(a) -> int:
    import time

    from grank.checkpoint import read, served_config_of
    from grank.data import load
    from mipsbench.floor import gemm_gflops, measured_rates, read_bandwidth_gbs

    from .report import regenerate
    from .tune import (SHAPES, VARIANTS, big_catalogue_models, merge, ranker_kind, run_variant, shape_quality,
                       shape_repository, variant_repository)
    unknown = [v for v in a.variants if v not in VARIANTS and v not in SHAPES]
    if unknown:
        print(f"error: --variants: unknown {unknown}; choose from {sorted(VARIANTS) + sorted(SHAPES)}",
              file=sys.stderr)
        return 2
    if a.items and any(v in SHAPES for v in a.variants):
        print(f"error: --items: the shape variants ({', '.join(SHAPES)}) serve the real catalogue",
              file=sys.stderr)
        return 2
    repo = Path(a.repository)
    if not (repo / "grank_mips" / "1" / "model.onnx").exists():
        print(f"error: --repository: {repo} has no built models (run `make repository`)", file=sys.stderr)
        return 2
    # the shape the built repository serves (grank.config.ServeConfig)
    cfg, blended = served_config_of(a.checkpoint)
    schema = read(a.checkpoint)["dataset"]
    data = load(cfg.dataset)
    out = Path(a.out)
    models, n_items = {1: None}, data.n_items
    if a.items:
        layouts = sorted({VARIANTS[v].shards for v in a.variants})
        print(f"building the {a.items:,}-item MIPS (in {', '.join(map(str, layouts))} shards) and Ranker graphs ...")
        models = big_catalogue_models(a.checkpoint, a.items, out / f"items{a.items}", shards=layouts)
        n_items = a.items
    elif any(VARIANTS.get(v, VARIANTS["default"]).shards > 1 for v in a.variants):
        print("error: --variants: the shard variants serve a catalogue built with --items", file=sys.stderr)
        return 2
    rates = measured_rates(read_bandwidth_gbs(), gemm_gflops())  # measured once, before any server starts
    rows = []
    for v in a.variants:
        name = v + (f"@{n_items}" if a.items else "") + ("+rate" if a.request_rate else "")
        if v in SHAPES:
            print(f"{name}: re-exporting with {SHAPES[v]} and evaluating that shape ...")
            r, vcfg, quality = shape_repository(a.checkpoint, name, SHAPES[v], out / name, data)
        else:
            r, vcfg = variant_repository(repo, out / name / "repository", cfg, schema, VARIANTS[v],
                                         models[VARIANTS[v].shards], n_items), cfg
            quality = {}
            if v == "default" and not a.items and not a.request_rate:  # the shapes' baseline (~1 min)
                from grank.checkpoint import load_checkpoint
                quality = shape_quality(load_checkpoint(a.checkpoint, data, served=True)[0], cfg, data)
        # which model was served and when: rows of older models stay in performance.json beside
        # new ones (merge replaces a variant only when it is measured again)
        shape = {"R": vcfg.model.ranker_history, "k1": vcfg.eval.k1, "k2": vcfg.eval.k2, **quality,
                 "ranker": ranker_kind(vcfg, blended), "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": rates}
        for proto in a.protocols:
            try:
                rows += run_variant(name, r, proto, out / name / proto, data, n_items,
                                    concurrency=a.concurrency, request_rate=a.request_rate,
                                    interval_ms=a.interval_ms, shape=shape)
            except RuntimeError as e:
                print(f"error: {name} {proto}: {e}", file=sys.stderr)
                return 1
    docs = Path(a.docs)
    docs.mkdir(parents=True, exist_ok=True)
    p = merge(rows, docs)
    md = regenerate(docs)
    print(f"{'variant':28s} {'proto':5s} {'load':>6} {'infer/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r['method']:28s} {r['protocol']:5s} {r['load']:6g} {r['qps']:9.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")
    print(f"runs in {out}/, rows merged into {p}, report {md}")
    return 0


def _plan(a) -> int:
    import dataclasses
    import json

    from .planner import csv_rows, format_plan, load_perf, plan
    try:
        perf = load_perf(Path(a.perf))
        p = plan(perf, a.qps, a.p99_ms, a.items, a.k, a.recall, a.headroom,
                 extra_rows=csv_rows(a.csv, a.csv_items) if a.csv else None)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shards = None
    if a.gpus:
        from .planner import SHARD_METHOD, format_shard_plan, shard_plan
        try:
            shards = shard_plan(perf, a.items, a.gpus, a.gpu_memory_gb, a.p99_ms, a.gpu_method or SHARD_METHOD,
                                headroom=a.headroom, k=a.k)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if a.json:
        out = {k: [dataclasses.asdict(o) for o in v] if k != "inputs" else v for k, v in p.items()}
        if shards is not None:
            out["shards"] = [dataclasses.asdict(o) for o in shards]
        print(json.dumps(out, indent=1))
    else:
        print(format_plan(p, perf))
        if shards is not None:
            print("\n" + format_shard_plan(shards, a.items, a.gpus, a.gpu_memory_gb, a.p99_ms))
    return 0


def _report(a) -> int:
    from .report import regenerate
    try:
        md = regenerate(Path(a.docs))
    except FileNotFoundError as e:
        print(f"error: --docs: {e}", file=sys.stderr)
        return 2
    print(f"wrote {md} from {Path(a.docs) / 'performance.json'}")
    return 0


if __name__ == "__main__":
    from grank.cli import run
    run(main)
