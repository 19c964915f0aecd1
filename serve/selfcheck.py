"""python -m serve.selfcheck: compare a running server with the local PyTorch pipeline.

  python -m serve.selfcheck --grpc-url localhost:8001 --http-url localhost:8000 \\
      --checkpoint artifacts/fast/grank/best.pt --users 50

Real users of the checkpoint's data set are replayed as a caller would send them
(``grank.replay``: the data set's own item ids, the test item hidden) through the torch-free
client; the reference is ``grank.evaluate.recommend`` (the function the offline evaluation
uses) on the same histories with the served exclusion rule (items of the history sent are never
returned), its dense ids turned into the data set's ids by the checkpoint's catalogue. Lists
are compared with ``grank.mips.topk_disagreements`` (ties and near ties at the cut may be
swapped; scores must agree within ``ATOL``: float32 ONNX Runtime vs PyTorch, see
``export/parity.py``), and every returned name must be the catalogue's name of its id.
This tool needs torch and the checkpoint; callers need only ``client/``.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from grank.evaluate import recommend
from grank.mips import seen_mask, topk_disagreements
from grank.replay import user_requests
from grank.validation import Catalogue

ATOL = 1e-3


def reference(model, cfg, arrays: dict):
    """Offline pipeline on request arrays with DENSE history ids -> (ids [B, k2], scores [B, k2])
    numpy, dense ids."""
    t = {k: torch.as_tensor(v) for k, v in arrays.items()}
    excl = seen_mask([row[row > 0] for row in arrays["history_ids"]], model.n_items)
    feats = t.get("user_features", t["history_ids"].new_zeros(len(t["history_ids"]), 0))
    with torch.no_grad():
        when = t["request_time"][:, 0] if "request_time" in t else None
        ids, scores, _ = recommend(model, t["history_ids"], t["history_events"], feats,
                                   cfg.eval.k1, cfg.eval.k2, excl, when)
    return ids.numpy(), scores.numpy()


def self_check(client, model, cfg, ck: dict, data, n_users: int = 50, seed: int = 0) -> tuple[int, list[str]]:
    """Ask the server for ``n_users`` random real users of ``data`` (the checkpoint ``ck``'s);
    returns (users checked, the disagreements: empty = OK). A user may disagree in several ways;
    each message starts with "user ID:"."""
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(data.lengths() >= 3)
    users = np.sort(rng.choice(eligible, size=min(n_users, len(eligible)), replace=False))
    arrays = user_requests(data, users, client.history_length, client.input_names, exclude_last=1)
    ids, names, scores = client.infer(arrays)
    cat = Catalogue(ck["catalogue"]["item_ids"], ck["catalogue"]["item_names"])
    dense_ids, err = cat.to_dense(ids)
    if err:
        return len(users), [f"the server returned an id outside the checkpoint's catalogue: {err}"]
    ref_ids, ref_scores = reference(model, cfg, {**arrays, "history_ids": cat.to_dense(arrays["history_ids"])[0]})
    bad = [f"user {data.user_ids[users[b]]}: {m}"
           for b, m in topk_disagreements(ref_ids, ref_scores, dense_ids, scores, ATOL)]
    expect = np.vectorize(lambda b: b.decode(), otypes=[object])(cat.names_of(dense_ids))
    wrong = np.argwhere(expect != names)
    bad += [f"user {data.user_ids[users[r]]}: item {ids[r, c]!r} named {names[r, c]!r}, "
            f"the catalogue says {expect[r, c]!r}" for r, c in wrong[:5]]
    return len(users), bad


def summary(proto: str, checked: int, bad: list[str]) -> str:
    """"N/M users ..." of one self-check."""
    n_bad = len({m.split(":")[0] for m in bad})
    return f"{checked - n_bad}/{checked} users equal the local PyTorch pipeline over {proto}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serve.selfcheck", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grpc-url", default=None)
    ap.add_argument("--http-url", default=None)
    ap.add_argument("--checkpoint", required=True, help="the checkpoint the repository was built from")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    urls = [("grpc", a.grpc_url), ("http", a.http_url)]
    if not any(u for _, u in urls):
        ap.error("give --grpc-url and/or --http-url")
    from tritonclient.utils import InferenceServerException

    from client.grank_client import GRankClient
    from grank.checkpoint import check_data, load_checkpoint
    from grank.data import load
    model, cfg, ck = load_checkpoint(a.checkpoint, served=True)  # the shape the repository serves
    data = load(cfg.dataset)
    check_data(a.checkpoint, ck, data)
    failed = False
    for proto, url in urls:
        if not url:
            continue
        try:
            checked, bad = self_check(GRankClient(url, proto), model, cfg, ck, data, a.users, a.seed)
        except InferenceServerException as e:
            print(f"error: server {url}: {e}", file=sys.stderr)
            return 2
        print(f"selfcheck {url}: {summary(proto, checked, bad)}")
        for m in bad[:10]:
            print("   ", m)
        failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    from grank.cli import run
    run(main)
