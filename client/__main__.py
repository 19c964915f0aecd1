"""python -m client {recommend,selfcheck}: query the GRank ensemble over gRPC or HTTP.

  python -m client recommend --url localhost:8001 --user 1 --user 42
  python -m client recommend --url localhost:8000 --protocol http --movies 260,1196,1210
  python -m client selfcheck --grpc-url localhost:8001 --http-url localhost:8000 \\
      --checkpoint artifacts/fast/grank/best.pt --users 50
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("recommend", help="top-k titles for MovieLens users or an explicit history")
    p.add_argument("--url", default="localhost:8001", help="host:port of the gRPC (or HTTP) endpoint")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--user", type=int, action="append", default=[], help="MovieLens user id (repeatable)")
    p.add_argument("--movies", type=_ints, help="explicit history: MovieLens movie ids, oldest first")
    p.add_argument("--ratings", type=_ints, help="ratings 1..5 for --movies (default 4 each)")
    p.add_argument("--time", type=int, default=None,
                   help="request time for --movies, Unix seconds (default now; e.g. 975000000 = "
                        "Dec 2000, inside ML-1M's years, where the popularity counts are recent)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--async", dest="use_async", action="store_true", help="use the asyncio client")
    p = sub.add_parser("selfcheck", help="compare the server with the local PyTorch pipeline")
    p.add_argument("--grpc-url", default=None)
    p.add_argument("--http-url", default=None)
    p.add_argument("--checkpoint", required=True, help="the checkpoint the repository was built from")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from tritonclient.utils import InferenceServerException
    try:
        return _run(ap, a)
    except InferenceServerException as e:
        url = getattr(a, "url", None) or f"{a.grpc_url or ''} {a.http_url or ''}".strip()
        print(f"error: server {url}: {e}", file=sys.stderr)
        return 2


def _run(ap, a) -> int:
    from .grank_client import GRankClient
    if a.cmd == "recommend":
        if not a.user and not a.movies:
            ap.error("recommend: give --user (repeatable) or --movies")
        c = GRankClient(a.url, a.protocol)
        t0 = time.perf_counter()
        try:
            if a.movies:
                recs = [c.recommend_history(a.movies, a.ratings, k=a.k, request_time=a.time)]
                who = ["history " + ",".join(map(str, a.movies))]
            elif a.use_async:
                recs = asyncio.run(c.recommend_async(a.user, a.k))
                who = [f"user {u}" for u in a.user]
            else:
                recs = c.recommend_users(a.user, a.k)
                who = [f"user {u}" for u in a.user]
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        ms = (time.perf_counter() - t0) * 1e3
        for w, rs in zip(who, recs):
            print(f"{w} (top {a.k} via {a.protocol}, {ms:.1f} ms for the request):")
            for i, r in enumerate(rs, 1):
                print(f"  {i:2d}. {r.title} [movie {r.movie_id}]  score {r.score:.3f}")
        return 0

    from grank.checkpoint import load_checkpoint

    from .selfcheck import self_check
    model, cfg, _ = load_checkpoint(a.checkpoint, served=True)  # the shape the repository serves
    urls = [("grpc", a.grpc_url), ("http", a.http_url)]
    if not any(u for _, u in urls):
        ap.error("selfcheck: give --grpc-url and/or --http-url")
    failed = False
    for proto, url in urls:
        if not url:
            continue
        bad = self_check(GRankClient(url, proto), model, cfg, a.users, a.seed)
        print(f"selfcheck {proto} {url}: {a.users - len(bad)}/{a.users} users match the local pipeline")
        for m in bad[:10]:
            print("   ", m)
        failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    from grank.cli import run
    run(main)
