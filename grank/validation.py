"""Request checks shared by the client library and the server's ``grank_validate`` model.

numpy only and free of package imports: the repository builder copies this file next to the
validator's ``model.py``, so it runs inside Triton's Python backend stub (here and in the NGC
container) without the ``grank`` package, and the client library needs nothing but numpy.
Every message names the field and the constraint. Triton itself already rejects wrong dtypes,
wrong per-row shapes and batches above ``max_batch_size`` with messages naming the input.

Requests carry the data set's own item ids (int64, or strings as bytes); ``Catalogue`` turns
them into the model's dense ids 1..N (0 = padding) and back.
"""
from __future__ import annotations

import numpy as np

PADDING_INT = -1   # the caller's id of an empty history slot, int64 catalogues
PADDING_STR = b""  # ... string catalogues


def limits_dict(schema: dict, history_length: int, request_time: bool = False) -> dict:
    """What the checks need to know about one model version (stored as ``limits.json``):
    from the data set's ``schema`` (``grank.data.schema``) the catalogue size, the id type, the
    event codes and the user features' sizes; the served history length; ``request_time``:
    whether requests carry their time (a Ranker using popularity)."""
    return {"n_items": int(schema["n_items"]), "history_length": int(history_length),
            "n_events": len(schema["events"]),
            "user_feature_sizes": [len(f["values"]) for f in schema["user_features"]],
            "request_time": bool(request_time)}


class Catalogue:
    """The data set's item ids by dense id: ``ids`` [N] (dense id i + 1 at position i), sorted
    as ``grank.data`` builds them (int64, or str for string catalogues)."""

    SHOWN = 64  # characters of an unknown id quoted in an error (a request may send megabytes)

    def __init__(self, ids, names=None):
        self.strings = not np.issubdtype(np.asarray(ids).dtype, np.integer)
        if self.strings:
            # looked up by the exact bytes a caller sent: no decoding, no fixed-width copy of a
            # request (numpy's would be as wide as its longest id, and would drop trailing NULs)
            self.index = {str(x).encode(): i + 1 for i, x in enumerate(ids)}
            self.own = np.array([PADDING_STR] + [str(x).encode() for x in ids], dtype=object)
        else:
            self.ids = np.asarray(ids, dtype=np.int64)
            self.own = np.concatenate([[PADDING_INT], self.ids])
        self.names = None if names is None else np.array([b""] + [n.encode() for n in names], dtype=object)

    def to_dense(self, history_ids) -> tuple[np.ndarray, str | None]:
        """[B, R] own ids (int64, or bytes/str objects) -> ([B, R] int64 dense ids, 0 in padding;
        an error message naming the first unknown id, or None)."""
        a = np.asarray(history_ids)
        if self.strings:
            flat = [x if isinstance(x, bytes) else str(x).encode() for x in a.ravel()]
            dense = np.array([0 if x == PADDING_STR else self.index.get(x, -1) for x in flat],
                             np.int64).reshape(a.shape)
            bad = dense < 0
        else:
            a = a.astype(np.int64)
            pos = np.minimum(np.searchsorted(self.ids, a), len(self.ids) - 1)
            pad = a == PADDING_INT
            bad = (self.ids[pos] != a) & ~pad
            dense = np.where(pad, 0, pos + 1)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            x = a[r, c]
            shown = repr(x[:self.SHOWN].decode("utf-8", "replace") if isinstance(x, bytes) else x)
            more = " (shortened)" if isinstance(x, bytes) and len(x) > self.SHOWN else ""
            return np.zeros(a.shape, np.int64), (f"history_ids: item {shown}{more} is not in the served "
                                                 f"catalogue ({len(self.own) - 1:,} items) at row {r} slot {c}")
        return dense.astype(np.int64), None

    def check_ranked(self, dense) -> str | None:
        """An error naming the first of ``dense`` [B, K] outside 1..N, or None. The catalogue
        step's guard: the Ranker never ranks padding, and -1 marks a row that a composing
        model, called directly with out-of-range input, flagged instead of answering."""
        a = np.asarray(dense)
        bad = (a < 1) | (a > len(self.own) - 1)
        if not bad.any():
            return None
        r, c = np.argwhere(bad)[0]
        why = " (-1: an earlier step flagged the row's input as invalid)" if a[r, c] == -1 else ""
        return f"ranked_ids: dense id {int(a[r, c])} at row {r} slot {c} is outside 1..{len(self.own) - 1}{why}"

    def to_own(self, dense) -> np.ndarray:
        """[B, K] dense ids (0 = padding) -> the data set's ids (int64, or bytes objects), the
        padding id where 0."""
        return self.own[np.clip(np.asarray(dense), 0, None)]

    def names_of(self, dense) -> np.ndarray:
        """[B, K] dense ids -> display names, bytes objects (b"" for padding)."""
        return self.names[np.clip(np.asarray(dense), 0, None)]


def _first(mask: np.ndarray) -> str:
    r, c = np.argwhere(mask)[0]
    return f"row {r} slot {c}"


def check_request(history_ids, history_events, user_features, limits: dict,
                  request_time=None) -> str | None:
    """Arrays of one request after ``Catalogue.to_dense`` ([B, R] int64 dense ids, [B, R]
    int64 event codes, [B, F] int64 or None when F = 0, and [B, 1] int64 Unix seconds where
    ``limits["request_time"]``). ``limits["n_items"]`` None: the ids are only known to be real
    (> 0) or padding (0), as a client without the catalogue knows them. Returns None when
    valid, else a message naming the first violated field and its constraint."""
    n, R = limits["n_items"], limits["history_length"]
    sizes = limits["user_feature_sizes"]
    fields = [("history_ids", history_ids, R), ("history_events", history_events, R)]
    if sizes:
        if user_features is None:
            return f"user_features: required by this model version ([batch, {len(sizes)}] int64)"
        fields.append(("user_features", user_features, len(sizes)))
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
    bad = (history_ids < 0) | (history_ids > (n if n is not None else np.iinfo(np.int64).max))
    if bad.any():
        return (f"history_ids: dense item ids must be in 0..{n} (0 = padding), got "
                f"{int(history_ids[bad][0])} at {_first(bad)}")
    real = history_ids > 0
    empty = ~real.any(1)
    if empty.any():
        return f"history_ids: row {int(np.flatnonzero(empty)[0])} is empty; at least one item is required"
    late_pad = ~real[:, 1:] & real[:, :-1]  # a padding slot after an item
    if late_pad.any():
        r, c = np.argwhere(late_pad)[0]
        return (f"history_ids: padding must come before the items (left padded, newest item "
                f"last); row {r} has padding at slot {c + 1} after an item")
    E = limits["n_events"]
    bad = real & ((history_events < 1) | (history_events > E)) | ~real & (history_events != 0)
    if bad.any():
        return (f"history_events: event codes must be in 1..{E} for items and 0 in padding, got "
                f"{int(history_events[bad][0])} at {_first(bad)}")
    for j, s in enumerate(sizes):
        col = user_features[:, j]
        bad = (col < 0) | (col >= s)
        if bad.any():
            return (f"user_features: column {j} must be in 0..{s - 1}, got {int(col[bad][0])} "
                    f"at row {int(np.flatnonzero(bad)[0])}")
    return None
