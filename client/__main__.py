"""python -m client recommend: ask the GRank ensemble for recommendations over gRPC or HTTP.

  python -m client recommend --url localhost:8001 --items 260,1196,1210 --events 5,5,5
  python -m client recommend --url localhost:8000 --protocol http --items 260,1196 \\
      --feature gender=F --feature age=25 --time 975000000
  python -m client info --url localhost:8001
  python -m client info --url localhost:8001 --admin-key-file key.txt --save-schema schema.json
  python -m client recommend --url localhost:8001 --schema schema.json --items 260,1196

A server that restricts its model configs to holders of the management key does not show the
schema (event names, user features): a key holder saves it once with ``info --save-schema`` and
callers pass ``--schema FILE``.

Item ids are the data set's own (MovieLens movie ids for the default model; strings where the
data set's ids are strings); the event vocabulary and the user features come from the server
(``info`` lists them). Needs only tritonclient and numpy.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _feature(s: str) -> tuple[str, str]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expects name=value (e.g. gender=F), got {s!r}")
    k, v = s.split("=", 1)
    return k, v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def server(p):
        p.add_argument("--url", default="localhost:8001", help="host:port of the gRPC (or HTTP) endpoint")
        p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
        p.add_argument("--schema", default=None,
                       help="the served schema as JSON (from `info --save-schema`), for servers that restrict configs")
        p.add_argument("--admin-key-file", default=None,
                       help="file holding the management key, to read a restricted server's schema")
    p = sub.add_parser("recommend", help="top-k items for one history of the data set's item ids")
    server(p)
    p.add_argument("--items", type=_list, required=True,
                   help="the history: the data set's item ids, oldest first, comma separated")
    p.add_argument("--events", type=_list, default=None,
                   help="one event per item, names or codes (default: the data set's first strong event)")
    p.add_argument("--feature", type=_feature, action="append", default=[], metavar="NAME=VALUE",
                   help="a user feature (repeatable; see `info`); missing ones are sent as unknown")
    p.add_argument("--time", type=int, default=None,
                   help="request time, Unix seconds (default now; e.g. 975000000 = Dec 2000, inside "
                        "ML-1M's years, where the popularity counts are recent)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--async", dest="use_async", action="store_true", help="use the asyncio client")
    p = sub.add_parser("info", help="the served data set: id type, events, user features, shapes")
    server(p)
    p.add_argument("--save-schema", default=None, metavar="FILE", help="also write the schema as JSON")
    a = ap.parse_args(argv)
    from tritonclient.utils import InferenceServerException

    from serve.admin import read_key

    from .grank_client import GRankClient
    try:
        key = read_key(a.admin_key_file, env={}) if a.admin_key_file else None
        c = GRankClient(a.url, a.protocol, schema=a.schema, admin_key=key)
        if a.cmd == "info":
            s = c.schema
            if a.save_schema:
                Path(a.save_schema).write_text(json.dumps(s, ensure_ascii=False, indent=1), encoding="utf-8")
            print(f"data set {s['dataset']}: {s['n_items']:,} items, {s['id_type']} ids (padding "
                  f"{s['padding_id']!r}); history {c.history_length}, k2 {c.k2}, batch <= "
                  f"{c.max_batch_size or '(not shown: configs restricted)'}")
            print(f"events (code: name): {', '.join(f'{i}: {e}' for i, e in enumerate(s['events'], 1))}; "
                  f"strong from code {s['strong_event']}")
            for f in s["user_features"]:
                vals = f.get("values")
                print(f"user feature {f['name']}: {f['size']} codes" +
                      (f" ({', '.join(v or '(unknown)' for v in vals[:12])}{', ...' if len(vals) > 12 else ''})"
                       if vals else ""))
            for f in s.get("item_features", []):
                print(f"item feature {f['name']}: {f['size']} values ({'multi' if f.get('multi') else 'single'}-valued)")
            print(f"request_time: {'required' if c.needs_time else 'not taken'}")
            return 0
        if c.strings:
            items = a.items
        else:
            not_int = [x for x in a.items if not x.lstrip("-").isdigit()]
            if not_int:
                raise ValueError(f"--items: this data set's item ids are integers, got {not_int[:5]}")
            items = [int(x) for x in a.items]
        events = None if a.events is None else [int(e) if e.isdigit() and e not in c.events else e
                                                for e in a.events]
        t0 = time.perf_counter()
        args = (items, events, dict(a.feature) or None, a.k, a.time)
        recs = asyncio.run(c.recommend_async(*args)) if a.use_async else c.recommend(*args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except InferenceServerException as e:
        print(f"error: server {a.url}: {e}", file=sys.stderr)
        return 2
    ms = (time.perf_counter() - t0) * 1e3
    print(f"history {','.join(a.items)} (top {a.k} via {a.protocol}, {ms:.1f} ms for the request):")
    for i, r in enumerate(recs, 1):
        print(f"  {i:2d}. {r.name} [item {r.item_id}]  score {r.score:.3f}")
    return 0


if __name__ == "__main__":
    from grank.cli import run
    run(main)
