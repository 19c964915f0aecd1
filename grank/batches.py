"""Turning per-user sequences into fixed-shape arrays (training windows and serving histories).

Every array is left padded with item id 0 / rating 0, newest interaction last, because the
networks are right aligned (the newest item always sits in the last slot).
"""
from __future__ import annotations

import numpy as np

from .data import Interactions, Split


def windows(data: Interactions, users: np.ndarray, ends: np.ndarray, length: int, times: bool = False):
    """Gather the ``length`` interactions before position ``ends`` of each user's sequence.

    users, ends: [B] int64 (``ends[b]`` is an index into user b's sequence; the window is
    seq[max(0, ends-length):ends]). Returns ids [B, length] int64 and ratings [B, length] int64,
    and with ``times`` their Unix seconds [B, length] int64 (0 in padding).
    """
    starts = data.offsets[users]
    idx = (starts + ends)[:, None] - length + np.arange(length)[None, :]
    valid = idx >= starts[:, None]
    idx = np.where(valid, idx, 0)
    ids = np.where(valid, data.items[idx], 0)
    rat = np.where(valid, data.ratings[idx].astype(np.int64), 0)
    if times:
        return ids.astype(np.int64), rat, np.where(valid, data.times[idx], 0)
    return ids.astype(np.int64), rat


def epoch_samples(split: Split, length: int, rng: np.random.Generator):
    """Training samples of one epoch: (user, end) pairs whose target is seq[end].

    Windows of ``length`` tile each user's TRAIN prefix backwards from its newest train item
    (always a window end: it is closest in time to the held-out items); the older windows
    start a random 0..length-1 slots earlier each epoch (augmentation), so each epoch skips a
    different run of fewer than ``length`` targets per user. Only train positions are ever
    targets or inputs: end <= train_len - 1, inputs are seq[:end].
    Returns users [S] int64, ends [S] int64, shuffled.
    """
    us, es = [], []
    for u in split.users:
        n_tr = split.train_len(int(u))
        if n_tr < 2:
            continue
        last = n_tr - 1
        shift = int(rng.integers(0, length))
        ends = [last] + list(range(last - length - shift, 0, -length))
        ends = [e for e in ends if e >= 1]
        us.extend([u] * len(ends))
        es.extend(ends)
    users, ends = np.array(us, dtype=np.int64), np.array(es, dtype=np.int64)
    perm = rng.permutation(len(users))
    return users[perm], ends[perm]


def eval_inputs(split: Split, users: np.ndarray, stage: str, length: int):
    """Serving-style inputs for evaluating ``stage`` ('val' or 'test') of ``users``.

    Returns hist_ids, hist_ratings [B, length] (the newest ``length`` interactions visible at
    that stage), user_feats [B, F], targets [B] and seen [list of arrays]: every item before the
    target (the visible history, not just the window), excluded from the ranking in the filtered
    protocol.
    """
    ends = np.array([split.history_len(int(u), stage) for u in users], dtype=np.int64)
    ids, rat = windows(split.data, users, ends, length)
    targets = np.array([split.target(int(u), stage) for u in users], dtype=np.int64)
    seen = [split.data.seq(int(u))[:split.target_index(int(u), stage)] for u in users]
    return ids, rat, split.data.user_feats[users], targets, seen


def eval_times(split: Split, users: np.ndarray, stage: str) -> np.ndarray:
    """Request time [B] int64 (Unix seconds) of evaluating ``stage`` for ``users``: the time of
    the newest visible interaction, as a replayed request would carry it."""
    d = split.data
    ends = np.array([split.history_len(int(u), stage) for u in users], dtype=np.int64)
    return d.times[d.offsets[users] + ends - 1]
