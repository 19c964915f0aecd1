"""Request checks shared by the client library and the server's ``grank_validate`` model.

numpy only and free of package imports: the repository builder copies this file next to the
validator's ``model.py``, so it runs inside Triton's Python backend stub (here and in the NGC
container) without the ``grank`` package. Every message names the field and the constraint.
Triton itself already rejects wrong dtypes, wrong per-row shapes and batches above
``max_batch_size`` with messages naming the input.
"""
from __future__ import annotations

import numpy as np

MAX_RATING = 5


def limits_dict(n_items: int, history_length: int, user_feature_sizes, request_time: bool = False) -> dict:
    """What the checks need to know about one model version (stored as ``limits.json``);
    ``request_time``: whether requests carry their time (a Ranker using popularity)."""
    return {"n_items": int(n_items), "history_length": int(history_length),
            "user_feature_sizes": [int(s) for s in user_feature_sizes], "max_rating": MAX_RATING,
            "request_time": bool(request_time)}


def _first(mask: np.ndarray) -> str:
    r, c = np.argwhere(mask)[0]
    return f"row {r} slot {c}"


def check_request(history_ids, history_ratings, user_features, limits: dict,
                  request_time=None) -> str | None:
    """Arrays of one request ([B, R], [B, R], [B, F] int64, and [B, 1] int64 Unix seconds where
    ``limits["request_time"]``). Returns None when valid, else a message naming the first
    violated field and its constraint."""
    n, R = limits["n_items"], limits["history_length"]
    sizes = limits["user_feature_sizes"]
    fields = [("history_ids", history_ids, R), ("history_ratings", history_ratings, R),
              ("user_features", user_features, len(sizes))]
    if limits.get("request_time"):
        if request_time is None:
            return "request_time: required by this model version ([batch, 1] int64 Unix seconds)"
        fields.append(("request_time", request_time, 1))
    for name, a, width in fields:
        a = np.asarray(a)
        if a.dtype != np.int64:
            return f"{name}: dtype must be int64, got {a.dtype}"
        if a.ndim != 2 or a.shape[1] != width:
            return f"{name}: shape must be [batch, {width}], got {list(a.shape)}"
    if len({np.shape(a)[0] for _, a, _ in fields}) > 1:
        return f"{', '.join(f for f, _, _ in fields)}: batch sizes must be equal"
    if limits.get("request_time"):
        bad = np.asarray(request_time)[:, 0] < 0
        if bad.any():
            return (f"request_time: must be Unix seconds >= 0, got {int(np.asarray(request_time)[bad][0, 0])} "
                    f"at row {int(np.flatnonzero(bad)[0])}")
    bad = (history_ids < 0) | (history_ids > n)
    if bad.any():
        return (f"history_ids: item ids must be in 0..{n} (0 = padding), got "
                f"{int(history_ids[bad][0])} at {_first(bad)}")
    real = history_ids > 0
    empty = ~real.any(1)
    if empty.any():
        return f"history_ids: row {int(np.flatnonzero(empty)[0])} is empty; at least one item id > 0 is required"
    late_pad = ~real[:, 1:] & real[:, :-1]  # a padding slot after an item
    if late_pad.any():
        r, c = np.argwhere(late_pad)[0]
        return (f"history_ids: padding (0) must come before the items (left padded, newest item "
                f"last); row {r} has 0 at slot {c + 1} after an item")
    bad = (history_ratings < 0) | (history_ratings > limits["max_rating"])
    if bad.any():
        return (f"history_ratings: must be in 0..{limits['max_rating']} (0 = padding/unknown), got "
                f"{int(history_ratings[bad][0])} at {_first(bad)}")
    for j, s in enumerate(sizes):
        col = user_features[:, j]
        bad = (col < 0) | (col >= s)
        if bad.any():
            return (f"user_features: column {j} must be in 0..{s - 1}, got {int(col[bad][0])} "
                    f"at row {int(np.flatnonzero(bad)[0])}")
    return None
