"""New items into a trained model, without retraining: a checkpoint whose catalogue has them.

  python -m grank add-items --checkpoint artifacts/fast/grank/best.pt --items new_items.csv \\
      --out artifacts/fast/grank/best+new.pt
  python -m serve.deploy --checkpoint artifacts/fast/grank/best+new.pt      # then serve it

The items file is the one of ``python -m grank data --items`` (docs/DATA.md): ``item_id``, an
optional ``name``, and the data set's item feature columns, whose values must be ones the
model knows (a new genre has no trained weights; retrain for it).

How a new item gets its vector. Item vectors are an id embedding plus one term per content
feature (``grank.model.ItemTower``). A new item has no interactions, so no trained id
embedding: it gets the mean id embedding of the catalogue's items with exactly its feature
values (the typical item of its kind), or of all items when no item shares them, plus its own
feature terms. Its popularity counts are zero. The Generator and the Ranker are unchanged; the
items are retrievable as soon as the new version serves, and the next retraining learns their
own embeddings from their first interactions.

The result is a serving checkpoint: its data fingerprint is still the training data's (the
export's parity check replays those users), and it has no optimizer state (not resumable).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .checkpoint import read
from .cli import InputError
from .reader import read_table


def _codes(table, features: list, separator: str) -> list[np.ndarray]:
    """Per item feature of the model: the new items' codes [K] (single-valued) or multi-hot
    rows [K, V], averaged as ``ItemTower.fill`` does. Unknown values are an error naming them."""
    out = []
    for f in features:
        vocab = list(f["values"])
        if f["name"] not in table.features:
            raise InputError(f"{table.source}: column {f['name']!r} is missing; the model's item features "
                             f"are {[x['name'] for x in features]}")
        col = [str(v) for v in table.features[f["name"]]]
        index = {v: i for i, v in enumerate(vocab)}
        if f["multi"]:
            hot = np.zeros((len(col), len(vocab)), np.float32)
            for r, v in enumerate(col):
                for t in (t.strip() for t in v.split(separator) if t.strip()):
                    if t not in index:
                        raise InputError(f"{table.source}: {f['name']} value {t!r} (item "
                                         f"{table.ids[r]!r}) is not one the model was trained with: "
                                         f"{vocab[:20]}")
                    hot[r, index[t]] = 1.0
            out.append(hot / np.maximum(hot.sum(1, keepdims=True), 1.0))
        else:
            bad = [v for v in col if v not in index]
            if bad:
                raise InputError(f"{table.source}: {f['name']} value {bad[0]!r} is not one the model was "
                                 f"trained with: {vocab[:20]}")
            out.append(np.array([index[v] for v in col], np.int64))
    return out


def add_items(checkpoint: str | Path, items: str | Path, out: str | Path, separator: str = "|") -> dict:
    """Write ``out``: ``checkpoint`` with the items of the file ``items`` appended to its
    catalogue (dense ids N+1..N+K). Returns a summary: counts and how many new items share
    their feature values with trained items."""
    ck = read(checkpoint)
    schema, cat, state = dict(ck["dataset"]), dict(ck["catalogue"]), dict(ck["model"])
    strings = schema["id_type"] == "string"
    table = read_table(items, "item_id", string_ids=strings, names=True)
    new_ids = [str(x) for x in table.ids] if strings else [int(x) for x in table.ids]
    known = set(cat["item_ids"])
    dup = [x for x in new_ids if x in known]
    if dup:
        raise InputError(f"{table.source}: items {dup[:5]} are already in the catalogue ({len(dup)} in all)")
    if len(set(new_ids)) != len(new_ids):
        raise InputError(f"{table.source}: an item_id appears twice")
    feats = schema["item_features"]
    extra = sorted(set(table.features) - {f["name"] for f in feats})
    codes = _codes(table, feats, separator)
    n, k = schema["n_items"], len(new_ids)

    ids = state["items.id.weight"]                       # [N+1, d], row 0 padding
    old = [state[f"items.values{i}"] for i in range(len(feats))]
    # the feature signature of every trained item and of every new one: items alike share it
    def signature(rows):
        return [tuple(np.round(np.atleast_1d(r), 6).tolist()) for r in rows]
    old_sig = list(zip(*[signature(v[1:].numpy()) for v in old])) if feats else [()] * n
    new_sig = list(zip(*[signature(c) for c in codes])) if feats else [()] * k
    by_sig: dict = {}
    for i, s in enumerate(old_sig):
        by_sig.setdefault(s, []).append(i + 1)
    mean_all = ids[1:].mean(0)
    rows, shared = [], 0
    for s in new_sig:
        alike = by_sig.get(s)
        shared += alike is not None
        rows.append(ids[alike].mean(0) if alike else mean_all)
    state["items.id.weight"] = torch.cat([ids, torch.stack(rows)])
    for i, c in enumerate(codes):
        state[f"items.values{i}"] = torch.cat([old[i], torch.as_tensor(c, dtype=old[i].dtype)])
    if "popularity.table" in state:  # cumulative counts by day: none for a new item
        t = state["popularity.table"]
        state["popularity.table"] = torch.cat([t, t.new_zeros(t.shape[0], k)], 1)
    schema["n_items"] = n + k
    names = [str(x) for x in (table.names if table.names is not None else new_ids)]
    cat = {"item_ids": list(cat["item_ids"]) + new_ids, "item_names": list(cat["item_names"]) + names}
    keep = {key: v for key, v in ck.items() if key not in ("optimizer", "scheduler", "torch_rng", "numpy_rng")}
    summary = {"checkpoint": str(checkpoint), "items_file": table.source, "added": k, "n_items": n + k,
               "alike_found": shared, "ignored_columns": extra}
    keep.update(dataset=schema, catalogue=cat, model=state, added_items=summary)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(keep, tmp)
    tmp.replace(out)
    return summary


def reach(checkpoint: str | Path, n_users: int = 1000, seed: int = 0) -> dict:
    """How retrievable the added items are: for ``n_users`` real test users, the share whose
    MIPS top-k1 (what the Ranker sees) and final top-10 hold each added item, against the
    catalogue's trained items (median and the share of items ever retrieved)."""
    from export.onnx_models import graphs as served_graphs
    from export.parity import pipeline_arrays, real_inputs

    from .checkpoint import load_checkpoint
    from .data import load
    model, cfg, ck = load_checkpoint(checkpoint, served=True)
    added = ck.get("added_items", {}).get("added", 0)
    n = ck["dataset"]["n_items"]
    a = pipeline_arrays(served_graphs(model, cfg.eval.k1, cfg.eval.k2),
                        real_inputs(load(cfg.dataset), cfg, n_users, seed))
    users = a["candidate_ids"].shape[0]
    in_k1 = np.bincount(a["candidate_ids"].ravel(), minlength=n + 1) / users
    in_10 = np.bincount(a["ranked_ids"][:, :10].ravel(), minlength=n + 1) / users
    new = np.arange(n - added + 1, n + 1)
    old = np.arange(1, n - added + 1)
    return {"users": users, "k1": cfg.eval.k1, "added": added,
            "added_in_k1": [round(float(in_k1[i]), 4) for i in new],
            "added_in_top10": [round(float(in_10[i]), 4) for i in new],
            "trained_median_in_k1": round(float(np.median(in_k1[old])), 4),
            "trained_share_ever_in_k1": round(float((in_k1[old] > 0).mean()), 4)}


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="the trained checkpoint")
    p.add_argument("--items", required=True, metavar="FILE",
                   help="new items: item_id, optional name, the data set's item feature columns")
    p.add_argument("--out", required=True, help="the checkpoint to write (serve it with serve.deploy)")
    p.add_argument("--separator", default="|", help="separator of multi-valued features (default: %(default)s)")
    p.add_argument("--reach", type=int, default=0, metavar="USERS",
                   help="then report how often USERS real users retrieve the added items (needs the data set)")


def run(a) -> int:
    s = add_items(a.checkpoint, a.items, a.out, a.separator)
    print(f"{s['added']} items added ({s['n_items']:,} in the catalogue); {s['alike_found']} share their "
          f"feature values with trained items (their mean id embedding), the others take the mean of all"
          + (f"; ignored columns: {s['ignored_columns']}" if s["ignored_columns"] else "")
          + f"\nwrote {a.out}; deploy it with python -m serve.deploy --checkpoint {a.out}")
    if a.reach:
        import json
        print(json.dumps(reach(a.out, a.reach)))
    return 0
