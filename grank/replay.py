"""Requests replayed from a data set, exactly as a caller would send them to the ensemble.

The self-check, the demo, perf_analyzer's input data and the serving tests replay real users:
their newest R interactions as the data set's own item ids (left padded with the padding id),
their event codes, their user feature codes, and the time of the newest interaction sent (as
the offline evaluation does). numpy only: no model, no torch.
"""
from __future__ import annotations

import numpy as np

from .batches import windows
from .data import Interactions
from .signatures import REQUEST_TIME
from .validation import Catalogue


def own_ids(data: Interactions, dense: np.ndarray) -> np.ndarray:
    """Dense ids [...] (0 = padding) -> the data set's ids: int64 with -1 in padding, or numpy
    object arrays of UTF-8 bytes with b"" in padding (what tritonclient sends as BYTES)."""
    return Catalogue(data.item_ids[1:]).to_own(dense)


def user_requests(data: Interactions, users, history_length: int, inputs, exclude_last: int = 0) -> dict:
    """Request arrays for dense ``users`` [B]: each user's newest ``history_length``
    interactions before dropping the ``exclude_last`` newest ones (1 hides the test item).
    ``inputs``: the names the served ensemble takes (its config), which decide whether
    ``user_features`` and ``request_time`` are sent. Returns name -> [B, ...] array."""
    users = np.asarray(users, np.int64)
    ends = data.lengths()[users] - exclude_last
    if (ends < 1).any():
        raise ValueError(f"exclude_last: user {int(users[np.argmax(ends < 1)])} would have no history left")
    ids, events, times = windows(data, users, ends, history_length, times=True)
    out = {"history_ids": own_ids(data, ids), "history_events": events}
    if "user_features" in inputs:
        out["user_features"] = data.user_feats[users].astype(np.int64)
    if REQUEST_TIME in inputs:
        out[REQUEST_TIME] = times[:, -1:].astype(np.int64)  # just after the newest interaction sent
    return out
