"""Columns of an interaction log (and its optional item and user tables) -> ``Interactions``.

The one path every non-MovieLens data set takes, built-in (``pinterest-20``) or a user's own
files (``grank.reader`` parses CSV/Parquet into these columns first). Rules, each counted in
the summary, never applied silently:

- time: the ``time`` column (Unix seconds) orders each user's interactions, file order breaking
  ties; without it file order is time (``timed`` False: no popularity-by-day features);
- duplicates: with timestamps, rows equal in user, item, time and event are one interaction
  (dropped and counted); without timestamps a repeated row is a repeated interaction;
- users with fewer than ``MIN_INTERACTIONS`` interactions cannot be split into train,
  validation and test: dropped and counted;
- an interaction whose item is missing from a given items table: an error naming the item and
  row (``unknown_items="error"``, the default) or dropped and counted (``"drop"``);
- events: integers or floats (a rating) are ordered by value; strings by ``event_order`` when
  given (weakest first), else by frequency, the most frequent being the weakest (views
  outnumber purchases). Codes >= ``strong_event`` (default: the top 30% of the codes, ratings 4
  and 5 on a 1..5 scale) feed the Generator's strong-behaviour pool. No event column: one event;
- features: every column of the side tables besides the id (and an item's ``name``) is a
  categorical feature; a column with ``separator`` in any value is multi-valued (genres
  ``Comedy|Drama``), else single-valued; empty values are unknown (code 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .cli import InputError
from .data import MIN_INTERACTIONS, Interactions, ItemFeature, check_name

MAX_EVENTS = 127        # event codes are stored as int8 (0 = padding)
MAX_MULTI_VALUES = 1000  # a multi-valued feature is a dense multi-hot [items, values] matrix
STRONG_SHARE = 0.3      # default strong events: the top 30% of the codes


@dataclass
class Log:
    """Interactions in file order: ``user``/``item`` [n] int64 or str; ``time`` [n] int64 Unix
    seconds or None; ``event`` [n] int64 / float64 / str or None. ``source`` names the file in
    messages; ``ignored`` the columns it had that are not used."""
    user: np.ndarray
    item: np.ndarray
    time: np.ndarray | None = None
    event: np.ndarray | None = None
    source: str = "interactions"
    ignored: tuple = ()
    rows: np.ndarray | None = None  # [n] 1-based data rows of the file (None: 1..n)


@dataclass
class Table:
    """An items or users table: ``ids`` [n]; ``features`` name -> [n] str ('' = missing);
    ``names`` [n] str display names (items) or None."""
    ids: np.ndarray
    features: dict
    names: np.ndarray | None = None
    source: str = "items"


def _rows(mask: np.ndarray, limit: int = 3, file_rows: np.ndarray | None = None) -> str:
    """'rows 4, 9, 17' of the first offending rows (1-based data rows, header not counted;
    ``file_rows``: the file's row number of each entry, where rows were dropped before)."""
    idx = np.flatnonzero(mask)[:limit]
    idx = idx + 1 if file_rows is None else np.asarray(file_rows)[idx]
    return ("row " if len(idx) == 1 else "rows ") + ", ".join(map(str, idx))


def _same_kind(a: np.ndarray, b: np.ndarray, what: str, src_a: str, src_b: str) -> None:
    if (a.dtype.kind in "US") != (b.dtype.kind in "US"):
        raise InputError(f"{what}: {src_a} has {'string' if a.dtype.kind in 'US' else 'integer'} ids "
                         f"but {src_b} has {'string' if b.dtype.kind in 'US' else 'integer'} ids; "
                         "use one id type in both files (or pass --string-ids to read every id as a string)")


def _unique_ids(t: Table, column: str) -> None:
    vals, first, counts = np.unique(t.ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = vals[counts > 1][0]
        raise InputError(f"{t.source}: column {column!r} must be unique; {dup!r} appears "
                         f"{counts[counts > 1][0]} times ({_rows(t.ids == dup)})")


def _events(event, n: int, event_order, strong_event, source: str):
    """(codes [n] int8 in 1..E, names (E,), the first strong code)."""
    if event is None:
        return np.ones(n, np.int8), ("interaction",), 1
    if event.dtype.kind in "US":
        vals, counts = np.unique(event, return_counts=True)
        if event_order:
            unknown = sorted(set(vals.tolist()) - set(event_order))
            if unknown:
                raise InputError(f"{source}: column 'event' has values {unknown[:5]} missing from the "
                                 f"event order {list(event_order)} (name every event, weakest first)")
            names = tuple(e for e in event_order if e in set(vals.tolist()))
        else:  # the most frequent event is the weakest signal
            names = tuple(str(v) for _, v in sorted(zip(-counts, vals.tolist())))
        code = {n: i + 1 for i, n in enumerate(names)}
        codes = np.array([code[e] for e in vals], np.int64)[np.searchsorted(vals, event)]
    else:
        vals = np.unique(event)
        names = tuple(str(int(v)) if float(v).is_integer() else str(v) for v in vals)
        codes = np.searchsorted(vals, event) + 1
    if len(names) > MAX_EVENTS:
        raise InputError(f"{source}: column 'event' has {len(names)} distinct values; at most "
                         f"{MAX_EVENTS} (an event is a type of interaction or a rating, not an id)")
    if strong_event is None:
        strong = max(1, math.ceil((1 - STRONG_SHARE) * len(names)))
    elif str(strong_event) in names:
        strong = names.index(str(strong_event)) + 1
    else:
        raise InputError(f"strong event: {strong_event!r} is not one of the events {list(names)}")
    return codes.astype(np.int8), names, strong


def _categorical(values: np.ndarray, separator: str, name: str, source: str):
    """One feature column [n] str -> (multi, vocab, codes [n] int64 or multi-hot [n, V])."""
    values = np.asarray(values, dtype=str)
    multi = bool(separator) and bool(np.char.count(values, separator).any())
    if not multi:
        vocab = ("",) + tuple(sorted(set(values.tolist()) - {""}))
        index = {v: i for i, v in enumerate(vocab)}
        return False, vocab, np.array([index[v] for v in values], np.int64)
    lists = [[t.strip() for t in v.split(separator) if t.strip()] for v in values]
    vocab = tuple(sorted({t for ts in lists for t in ts}))
    if len(vocab) > MAX_MULTI_VALUES:
        raise InputError(f"{source}: multi-valued column {name!r} has {len(vocab):,} distinct values; "
                         f"at most {MAX_MULTI_VALUES:,} (or make it single-valued: no {separator!r})")
    index = {v: i for i, v in enumerate(vocab)}
    hot = np.zeros((len(values), len(vocab)), np.float32)
    for r, ts in enumerate(lists):
        hot[r, [index[t] for t in ts]] = 1.0
    return True, vocab, hot


def from_columns(name: str, log: Log, items: Table | None = None, users: Table | None = None,
                 separator: str = "|", unknown_items: str = "error", event_order=None,
                 strong_event=None, dropped: dict | None = None) -> tuple[Interactions, dict]:
    """Build the data set ``name`` (see the module doc for every rule). ``dropped``: counts the
    caller already dropped (rows without ids), carried into the summary. Returns (data, summary)."""
    check_name(name)
    if unknown_items not in ("error", "drop"):
        raise ValueError(f"unknown_items: must be 'error' or 'drop', got {unknown_items!r}")
    dropped = dict(dropped or {})
    n = len(log.user)
    if n == 0:
        raise InputError(f"{log.source}: no interactions")
    user, item = np.asarray(log.user), np.asarray(log.item)
    time = None if log.time is None else np.asarray(log.time, np.int64)
    event = None if log.event is None else np.asarray(log.event)
    keep = np.ones(n, bool)

    if items is not None:
        _same_kind(item, items.ids, "item_id", log.source, items.source)
        _unique_ids(items, "item_id")
        unknown = ~np.isin(item, items.ids)
        if unknown.any():
            if unknown_items == "error":
                raise InputError(
                    f"{log.source}: item_id {item[unknown][0]!r} ({_rows(unknown, file_rows=log.rows)}) is not "
                    f"in the items table {items.source}; {int(unknown.sum()):,} row(s) like it (fix the "
                    "files, or drop them with --unknown-items drop)")
            dropped["interactions whose item_id is not in the items table"] = int(unknown.sum())
            keep &= ~unknown
    if users is not None:
        _same_kind(user, users.ids, "user_id", log.source, users.source)
        _unique_ids(users, "user_id")

    ev_codes, event_names, strong = _events(event, n, event_order, strong_event, log.source)
    file_order = np.arange(n)
    _, ucode = np.unique(user, return_inverse=True)
    _, icode = np.unique(item, return_inverse=True)
    if time is not None:  # exact repeats of (user, item, time, event) are one interaction
        key = np.stack([ucode, icode, time, ev_codes.astype(np.int64)], 1)[keep]
        first = np.unique(key, axis=0, return_index=True)[1]
        dup = np.ones(int(keep.sum()), bool)
        dup[first] = False
        if dup.any():
            dropped["duplicate rows (same user, item, time and event)"] = int(dup.sum())
            keep[np.flatnonzero(keep)[dup]] = False
    counts = np.bincount(ucode[keep], minlength=ucode.max() + 1)
    short = keep & (counts[ucode] < MIN_INTERACTIONS)
    if short.any():
        dropped[f"users with fewer than {MIN_INTERACTIONS} interactions (cannot be split into "
                "train, validation and test)"] = int(len(np.unique(ucode[short])))
        dropped["interactions of those users"] = int(short.sum())
        keep &= ~short
    if not keep.any():
        raise InputError(f"{log.source}: no user has {MIN_INTERACTIONS} or more interactions left "
                         f"(dropped: {dropped})")

    rows = np.flatnonzero(keep)
    order_time = time[rows] if time is not None else file_order[rows]
    rows = rows[np.lexsort((file_order[rows], order_time, ucode[rows]))]
    user_ids, user_index = np.unique(user[rows], return_inverse=True)
    item_ids = np.unique(item[rows])
    dense = np.searchsorted(item_ids, item[rows]) + 1
    offsets = np.concatenate([[0], np.cumsum(np.bincount(user_index, minlength=len(user_ids)))])

    summary = {"dataset": name, "users": len(user_ids), "items": len(item_ids), "interactions": len(rows),
               "timestamps": time is not None, "events": {}, "user_features": {}, "item_features": {},
               "ignored_columns": {log.source: list(log.ignored)} if log.ignored else {},
               "dropped": dropped}
    ev = ev_codes[rows]
    summary["events"] = {e: int((ev == c).sum()) for c, e in enumerate(event_names, 1)}
    summary["strong_event"] = event_names[strong - 1]

    # items: display names and features, by dense id (row 0 = padding)
    names = [""] + [str(x) for x in item_ids]
    feats = []
    if items is not None:
        srt = np.argsort(items.ids, kind="stable")
        pos = srt[np.searchsorted(items.ids[srt], item_ids)]  # every item is in the table by now
        unused = int(len(items.ids) - len(item_ids))
        if unused:
            dropped["items in the items table without interactions (not in the catalogue)"] = unused
        if items.names is not None:
            nm = np.asarray(items.names, dtype=str)[pos]
            names = [""] + [v if v else str(i) for v, i in zip(nm.tolist(), item_ids.tolist())]
        for col, values in items.features.items():
            multi, vocab, codes = _categorical(np.asarray(values)[pos], separator, col, items.source)
            full = np.zeros((len(item_ids) + 1,) + codes.shape[1:], codes.dtype)
            full[1:] = codes
            feats.append(ItemFeature(col, multi, vocab, full))
            summary["item_features"][col] = f"{'multi' if multi else 'single'}-valued, {len(vocab) - (not multi)} values"
    ufeats = np.zeros((len(user_ids), 0), np.int64)
    fnames, fvocabs = (), ()
    if users is not None:
        srt = np.argsort(users.ids, kind="stable")
        idx = np.minimum(np.searchsorted(users.ids[srt], user_ids), len(srt) - 1)
        found = users.ids[srt][idx] == user_ids
        missing = int((~found).sum())
        if missing:
            dropped["users without a row in the users table (kept, their features unknown)"] = missing
        cols = []
        for col, values in users.features.items():
            multi, vocab, codes = _categorical(np.asarray(values), "", col, users.source)
            c = np.zeros(len(user_ids), np.int64)
            c[found] = codes[srt[idx[found]]]
            cols.append(c)
            fnames, fvocabs = fnames + (col,), fvocabs + (vocab,)
            summary["user_features"][col] = f"{len(vocab) - 1} values"
        if cols:
            ufeats = np.stack(cols, 1)
    data = Interactions(
        name=name, items=dense.astype(np.int64), ratings=ev.astype(np.int8), offsets=offsets.astype(np.int64),
        user_feats=ufeats, user_feat_sizes=tuple(len(v) for v in fvocabs), item_features=feats,
        user_ids=user_ids, item_ids=np.concatenate([_pad(item_ids), item_ids]),
        names=names, times=(time[rows] if time is not None else np.arange(len(rows))).astype(np.int64),
        event_names=event_names, strong_event=strong, timed=time is not None,
        user_feature_names=fnames, user_feature_vocabs=fvocabs, summary=summary)
    return data, summary


def _pad(ids: np.ndarray) -> np.ndarray:
    """The placeholder ``item_ids[0]`` of padding: '' for string ids, -1 for integer ids."""
    return np.array([""] if ids.dtype.kind in "US" else [-1], dtype=ids.dtype)
