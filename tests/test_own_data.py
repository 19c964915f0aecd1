"""A user's own files, end to end: a generated shop log with STRING item ids, read from CSV and
Parquet -> tiny training -> export -> a real Triton server -> a raw HTTP/JSON request carrying
the shop's own ids (no client library) and the torch-free client -> exactly the local
pipeline's items, returned as the shop's ids with their names."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ("view", "click", "purchase")


def _write_shop(folder: Path, n_users: int = 150, n_items: int = 90, seed: int = 0) -> dict:
    """A learnable log: each user browses one of 6 categories, mostly views, some clicks and
    purchases; ISO timestamps; items with a name, a brand and multi-valued tags (Parquet);
    users with a country (CSV)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 6, n_items)
    rows = ["user_id,item_id,timestamp,event,channel"]
    t0 = np.datetime64("2025-01-01T00:00:00")
    for u in range(n_users):
        c = rng.integers(6)
        for j in range(int(rng.integers(6, 30))):
            if rng.random() < 0.15:
                c = (c + 1) % 6
            i = int(rng.choice(np.flatnonzero(cat == c)))
            when = t0 + np.timedelta64(int(u * 86400 + j * 3600 + rng.integers(3600)), "s")
            ev = rng.choice(EVENTS, p=[0.7, 0.2, 0.1])
            rows.append(f"u{u:03d},sku-{i:04d},{when}Z,{ev},web")
    (folder / "events.csv").write_text("\n".join(rows) + "\n")
    pq.write_table(pa.table({
        "item_id": [f"sku-{i:04d}" for i in range(n_items)],
        "name": [f"Product {i} ({'ABCDEF'[cat[i]]})" for i in range(n_items)],
        "brand": [f"brand{i % 7}" for i in range(n_items)],
        "tags": ["|".join(sorted({f"t{cat[i]}", f"t{(cat[i] + 1) % 6}"})) for i in range(n_items)],
    }), folder / "items.parquet")
    (folder / "users.csv").write_text("user_id,country\n" + "\n".join(
        f"u{u:03d},{['de', 'fr', 'us'][u % 3]}" for u in range(0, n_users, 2)) + "\n")
    return {"interactions": folder / "events.csv", "items": folder / "items.parquet",
            "users": folder / "users.csv"}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The shop data set built by the reader, a tiny model trained on it, its repository and a
    real Triton server serving it."""
    from export.build import build_repository, export_checkpoint
    from grank.data import configure
    from grank.reader import build_dataset
    from grank.train import train
    from serve.server import TritonServer
    tmp = tmp_path_factory.mktemp("shop")
    files = _write_shop(tmp)
    data, summary = build_dataset("shop-e2e", files["interactions"], files["items"], files["users"],
                                  event_order=list(EVENTS))
    cfg, data = configure("tiny", "grank", 0, {"dataset": "shop-e2e", "train.max_users": 0})
    train(cfg, data, tmp / "run", progress=False)
    ex = export_checkpoint(tmp / "run" / "best.pt", tmp / "onnx", users=32, data=data)
    repo = build_repository(ex, tmp / "model_repository")
    server = TritonServer(repo, work_dir=tmp / "triton")
    server.start(timeout=180)
    yield {"data": data, "summary": summary, "ex": ex, "repo": repo, "server": server}
    server.stop()


def test_the_data_set_has_the_shops_schema(shop):
    d = shop["data"]
    assert d.item_ids.dtype.kind == "U" and d.item_ids[1].startswith("sku-")
    assert d.event_names == EVENTS and d.strong_event == 3 and d.timed
    assert d.user_feature_names == ("country",) and d.user_feat_sizes == (4,)  # unknown + 3
    assert [(f.name, f.multi) for f in d.item_features] == [("brand", False), ("tags", True)]
    assert shop["summary"]["ignored_columns"] == {"events.csv": ["channel"]}
    assert shop["ex"].problems == {n: [] for n in shop["ex"].problems}  # ONNX parity


def _reference(shop, arrays):
    """The local PyTorch pipeline on a request of the shop's own ids -> own ids [B, k2]."""
    from grank.validation import Catalogue
    from serve.selfcheck import reference
    ex = shop["ex"]
    cat = Catalogue(ex.ck["catalogue"]["item_ids"])
    dense, err = cat.to_dense(arrays["history_ids"])
    assert err is None
    ids, scores = reference(ex.model, ex.cfg, {**arrays, "history_ids": dense})
    return shop["data"].item_ids[ids], scores


def test_a_raw_http_request_with_the_shops_ids_gets_the_local_pipelines_items(shop):
    """What a caller in any language sends: JSON, BYTES ids, no library; the answer is the
    shop's own ids and names, equal to the local pipeline."""
    from grank.replay import user_requests
    from grank.signatures import ENSEMBLE
    d, server = shop["data"], shop["server"]
    meta = json.loads(urllib.request.urlopen(f"http://{server.http_url}/v2/models/{ENSEMBLE}").read())
    inputs = {t["name"]: t for t in meta["inputs"]}
    assert inputs["history_ids"]["datatype"] == "BYTES"
    R = inputs["history_ids"]["shape"][-1]
    arrays = user_requests(d, np.arange(6), R, list(inputs), exclude_last=1)
    body = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": inputs[n]["datatype"],
                        "data": [x.decode() for x in a.ravel()] if a.dtype == object else a.ravel().tolist()}
                       for n, a in arrays.items()]}
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/{ENSEMBLE}/infer",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    out = {o["name"]: o for o in json.loads(urllib.request.urlopen(req).read())["outputs"]}
    k2 = out["item_ids"]["shape"][-1]
    got = np.array(out["item_ids"]["data"], dtype=object).reshape(-1, k2)
    want, want_scores = _reference(shop, arrays)
    scores = np.array(out["scores"]["data"], np.float32).reshape(-1, k2)
    from grank.mips import topk_disagreements
    pos = {s: i for i, s in enumerate(d.item_ids)}
    as_dense = np.vectorize(pos.get)
    assert topk_disagreements(as_dense(want), want_scores, as_dense(got), scores, 1e-3) == []
    names = np.array(out["item_names"]["data"], dtype=object).reshape(-1, k2)
    assert [d.names[pos[i]] for i in got[0]] == list(names[0])
    # an id the shop does not sell: a 400 naming it
    body["inputs"][0]["data"][-1] = "sku-9999"
    bad = urllib.request.Request(f"http://{server.http_url}/v2/models/{ENSEMBLE}/infer",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(bad)
    assert e.value.code == 400 and "'sku-9999' is not in the served catalogue" in e.value.read().decode()


def test_the_client_runs_without_torch_and_agrees(shop):
    """The client library imported with torch made unimportable, against the real server."""
    server, d = shop["server"], shop["data"]
    history = [str(x) for x in d.item_ids[d.seq(3)[:-1]][-5:]]
    code = f"""
import json, sys
sys.modules["torch"] = None  # any `import torch` now fails
from client.grank_client import GRankClient
c = GRankClient({server.http_url!r}, "http")
recs = c.recommend({history!r}, events=["view", "click", "view", "purchase", "view"],
                   user_features={{"country": "fr"}}, k=5, request_time=1_800_000_000)
print(json.dumps({{"recs": [[r.item_id, r.name, r.score] for r in recs],
                   "torch": "torch" in sys.modules and sys.modules["torch"] is not None,
                   "train": "grank.train" in sys.modules, "data": "grank.data" in sys.modules}}))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert not out["torch"] and not out["train"] and not out["data"]
    got = [x[0] for x in out["recs"]]
    assert len(got) == 5 and all(g.startswith("sku-") for g in got) and not set(got) & set(history)
    # the same request through the local pipeline
    from client.grank_client import GRankClient
    c = GRankClient(server.http_url, "http")
    arrays = c.request([history], [["view", "click", "view", "purchase", "view"]], [{"country": "fr"}],
                       [1_800_000_000])
    want, _ = _reference(shop, arrays)
    assert got == list(want[0][:5])


def test_selfcheck_on_the_shop(shop):
    from client.grank_client import GRankClient
    from serve.selfcheck import self_check
    ex = shop["ex"]
    for proto, url in (("grpc", shop["server"].grpc_url), ("http", shop["server"].http_url)):
        assert self_check(GRankClient(url, proto), ex.model, ex.cfg, ex.ck, shop["data"], n_users=40) == (40, [])


def test_client_info_describes_the_served_data_set(shop):
    """`python -m client info`: everything a caller needs, read from the server alone."""
    r = subprocess.run([sys.executable, "-m", "client", "info", "--url", shop["server"].http_url,
                        "--protocol", "http"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "data set shop-e2e: 90 items, string ids (padding '')" in r.stdout
    assert "1: view, 2: click, 3: purchase; strong from code 3" in r.stdout
    assert "user feature country: 4 codes ((unknown), de, fr, us)" in r.stdout
    assert "item feature tags: 6 values (multi-valued)" in r.stdout
