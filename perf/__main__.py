"""python -m perf sweep: perf_analyzer against a running server (``make serve``).

  python -m perf sweep --url localhost:8001 --protocol grpc --concurrency 1:8:1 --out artifacts/perf
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
    p.add_argument("--url", default="localhost:8001")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--concurrency", default="1:4:1", help="start:end:step")
    p.add_argument("--request-rate", default=None, help="start:end:step (Poisson arrivals; open loop)")
    p.add_argument("--batch", type=int, default=1, help="rows per request")
    p.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer measurement window")
    p.add_argument("--stability", type=int, default=25,
                   help="allowed %% variation between measurement windows (perf_analyzer -s)")
    p.add_argument("--dataset", default="ml-1m", help="where the real users come from")
    p.add_argument("--out", default="artifacts/perf")
    p = sub.add_parser("bench", help="MIPS stage vs exact and index-based peers and the machine's floor")
    p.add_argument("--checkpoint", default="artifacts/default/grank/best.pt",
                   help="trained model: its item geometry and user vectors")
    p.add_argument("--quick", action="store_true", help="small smoke run (N up to 50k, k 500, batch 1/16)")
    p.add_argument("--seconds", type=float, default=1.0, help="timing window per point")
    p.add_argument("--docs", default="docs", help="where performance.json / PERFORMANCE.md go")
    p.add_argument("--partial", default="artifacts/bench-partial.json",
                   help="rows so far, rewritten after every method (kept if the run dies)")
    a = ap.parse_args(argv)
    if a.cmd == "bench":
        return _bench(a, argv)

    from client.grank_client import GRankClient
    from grank.data import load

    from tritonclient.utils import InferenceServerException

    from .sweep import sweep
    try:
        client = GRankClient(a.url, a.protocol, data=load(a.dataset))
    except InferenceServerException as e:
        print(f"error: server {a.url}: {e} (start one with `make serve`)", file=sys.stderr)
        return 2
    try:
        res = sweep(client, a.url, a.protocol, Path(a.out), concurrency=a.concurrency,
                    request_rate=a.request_rate, batch=a.batch, interval_ms=a.interval_ms,
                    stability=a.stability)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"$ {res['command']}")
    print(f"{'load':>6} {'infer/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for r in res["rows"]:
        print(f"{r['load']:6g} {r['qps']:9.1f} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['p99_ms']:8.2f}")
    print(f"CSV, log, command and plot in {res['dir']}/ (perf.csv, perf_analyzer.log, command.txt, perf.png)")
    return 0


def _bench(a, argv) -> int:
    import shlex

    from .mips_bench import run, write
    from .mips_report import markdown
    docs = Path(a.docs)
    res = run(a.checkpoint, quick=a.quick, seconds=a.seconds, partial=Path(a.partial))
    cmd = "python -m perf " + shlex.join(argv if argv is not None else sys.argv[1:])
    p = write(res, docs, cmd)
    import json
    (docs / "PERFORMANCE.md").write_text(markdown(json.loads(p.read_text()), docs))
    print(f"wrote {p} and {docs / 'PERFORMANCE.md'} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
