"""python -m serve.demo: the serving half of ``make demo``.

From a trained checkpoint: export + Polygraphy parity -> model repository -> embedded Triton
server on free ports -> top-10 items for real users of the data set over gRPC and HTTP, sent
by the data set's own item ids as any caller would (and, on MovieLens, one explicit history;
and one bad request) -> self-check of 50 users against PyTorch -> a short perf_analyzer sweep
with its plot -> server stopped.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _show(title: str, recs) -> None:
    print(title)
    for i, r in enumerate(recs, 1):
        print(f"  {i:2d}. {r.name} [item {r.item_id}]  {r.score:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serve.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--repository", default="model_repository")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--users", nargs="+", default=None,
                    help="the data set's user ids to show (default: three of its users)")
    ap.add_argument("--concurrency", default="1:4:1", help="perf_analyzer sweep")
    a = ap.parse_args(argv)

    from client.grank_client import GRankClient
    from export.build import build_repository, export_checkpoint
    from grank.replay import user_requests
    from perf.sweep import sweep

    from .selfcheck import self_check, summary
    from .server import TritonServer
    art = Path(a.artifacts)
    t0 = time.time()
    print(f"== export {a.checkpoint} (ONNX + Polygraphy parity on 64 real users)")
    ex = export_checkpoint(a.checkpoint, art / "export")
    for name, probs in ex.problems.items():
        print(f"  {name:20s} {'parity OK' if not probs else probs[:3]}")
    repo = build_repository(ex, a.repository)
    print(f"== model repository {repo} built ({time.time() - t0:.0f} s)")
    server = TritonServer(repo, work_dir=art / "triton")
    t1 = time.time()
    server.start()
    print(f"== Triton 2.51 ready in {time.time() - t1:.1f} s: HTTP {server.http_url}, gRPC {server.grpc_url}, "
          f"metrics {server.metrics_url} (pid {server.proc.pid}, log {server.log_file})")
    failed = False
    try:
        clients = {p: GRankClient(server.grpc_url if p == "grpc" else server.http_url, p)
                   for p in ("grpc", "http")}
        data = ex.data
        own = [str(u) for u in data.user_ids]
        shown = a.users or [own[i] for i in (0, 41, 2023) if i < len(own)]
        unknown = [u for u in shown if u not in own]
        if unknown:
            raise SystemExit(f"error: --users: {unknown} are not users of {data.name}")
        users = [own.index(u) for u in shown]
        for proto, us in (("grpc", users), ("http", users[:1])):
            c = clients[proto]
            # the newest R interactions of each user, as the data set's own ids: what a caller sends
            arrays = user_requests(data, us, c.history_length, c.input_names)
            t = time.perf_counter()
            recs = c.named(*c.infer(arrays), k=10)
            ms = (time.perf_counter() - t) * 1e3
            for u, rs in zip(us, recs):
                _show(f"-- user {data.user_ids[u]}, top 10 over {proto} ({ms:.0f} ms for the request of {len(us)})", rs)
        if data.name == "ml-1m":
            star_wars = [260, 1196, 1210]  # MovieLens ids: the original Star Wars trilogy
            # asked as of the data's busiest day (not today's clock), so the popularity counts the
            # Ranker sees are those of a real month of ML-1M rather than the quiet end of the log
            days, n = np.unique(data.times // 86400, return_counts=True)
            when = int(days[n.argmax()] + 1) * 86400
            _show(f"-- explicit history: Star Wars IV, V, VI rated 5, as of "
                  f"{time.strftime('%Y-%m-%d', time.gmtime(when))} (http)",
                  clients["http"].recommend(star_wars, ["5", "5", "5"], k=10, request_time=when))
        bad_req = user_requests(data, users[:1], clients["grpc"].history_length, clients["grpc"].input_names)
        bad_req["history_ids"][0, -1] = "no-such-item".encode() if clients["grpc"].strings else 10 ** 12
        try:  # the server holds the catalogue: it names the unknown id
            clients["grpc"].infer(bad_req)
        except Exception as e:
            print(f"-- a bad request is rejected by the server: {str(e).splitlines()[0][:200]}")
        for proto, c in clients.items():
            checked, bad = self_check(c, ex.model, ex.cfg, ex.ck, data, n_users=50)
            print(f"== self-check: {summary(proto, checked, bad)}")
            failed |= bool(bad)
        res = sweep(clients["grpc"], data, server.grpc_url, "grpc", art / "demo-perf", concurrency=a.concurrency,
                    interval_ms=2000, stability=50)  # a short look, not a capacity figure
        print(f"== perf_analyzer: {res['command']}")
        print(f"   {'concurrency':>11} {'infer/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
        for r in res["rows"]:
            print(f"   {r['load']:11g} {r['qps']:8.1f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f}")
        print(f"   plot {res['dir']}/perf.png, CSV {res['dir']}/perf.csv")
    finally:
        server.stop()
        print(f"== server stopped; serving demo took {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    from grank.cli import run
    run(main)
