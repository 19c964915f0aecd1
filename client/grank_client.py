"""A small library over ``tritonclient`` for the ``grank`` ensemble.

- maps MovieLens ids to the model's dense ids and back, and carries titles;
- builds requests from a MovieLens user id (their newest R ratings) or from an explicit list
  of movie ids; tensor names, dtypes and shapes come from ``grank.signatures`` and the
  server's own model metadata (R and k2 are read from the server, never assumed);
- carries the request's time (``request_time``, Unix seconds) where the served Ranker counts
  popularity before it: for a MovieLens user the time of the newest rating sent (a replay, as
  the offline evaluation does), for an explicit history the caller's ``request_time`` or the
  clock; a model version without that input gets none;
- checks every request before sending it (``grank.validation``: the same checks the server's
  ``grank_validate`` step applies) and raises ``ValueError`` naming the field and constraint;
- ``recommend_async`` is the asyncio variant (``tritonclient.grpc.aio`` / ``.http.aio``).

    >>> c = GRankClient("localhost:8001", protocol="grpc")          # doctest: +SKIP
    >>> c.recommend_users([1, 2], k=10)[0][0]                       # doctest: +SKIP
    Recommendation(movie_id=..., title='...', score=...)
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from grank.data import Interactions
from grank.signatures import ENSEMBLE, N_USER_FEATURES, REQUEST_TIME, signatures
from grank.validation import check_request, limits_dict

DEFAULT_RATING = 4  # explicit histories without ratings: "liked" (the model's high-rating pool is >= 4)


@dataclass(frozen=True)
class Recommendation:
    movie_id: int
    title: str
    score: float


def _module(protocol: str, aio: bool = False):
    if protocol == "grpc":
        import tritonclient.grpc as m
        if aio:
            import tritonclient.grpc.aio as m  # noqa: F811
    elif protocol == "http":
        import tritonclient.http as m
        if aio:
            import tritonclient.http.aio as m  # noqa: F811
    else:
        raise ValueError(f"protocol: must be 'grpc' or 'http', got {protocol!r}")
    return m


class GRankClient:
    """Client for one server. ``url`` is host:port of the gRPC or HTTP endpoint."""

    def __init__(self, url: str, protocol: str = "grpc", data: Interactions | None = None,
                 model: str = ENSEMBLE, timeout_s: float = 30.0):
        self.url, self.protocol, self.model, self.timeout_s = url, protocol, model, timeout_s
        self._m = _module(protocol)
        self.client = self._m.InferenceServerClient(url)
        if data is None:
            from grank.data import load
            data = load("ml-1m")
        self.data = data
        self._dense = {int(m): i for i, m in enumerate(data.item_movie_ids) if i > 0}
        self._user = {int(u): i for i, u in enumerate(data.user_ids)}
        cfg = self.client.get_model_config(model, as_json=True) if protocol == "grpc" else \
            self.client.get_model_config(model)
        cfg = cfg.get("config", cfg)
        self.max_batch_size = int(cfg["max_batch_size"])
        dims = {t["name"]: [int(x) for x in t["dims"]] for t in cfg["input"] + cfg["output"]}
        self.history_length = dims["history_ids"][0]
        self.k2 = dims["item_ids"][0]
        self.input_names = [t["name"] for t in cfg["input"]]  # in the server's order
        self.needs_time = REQUEST_TIME in self.input_names
        self.limits = limits_dict(data.n_items, self.history_length, data.user_feat_sizes, self.needs_time)

    # ---- building requests ------------------------------------------------------------
    def user_request(self, user_ids, exclude_last: int = 0) -> dict:
        """Arrays for MovieLens ``user_ids``: each user's newest R ratings (before dropping the
        ``exclude_last`` newest ones, e.g. 1 to hide the test item) and profile."""
        rows = []
        for uid in user_ids:
            if int(uid) not in self._user:
                raise ValueError(f"user_id: {uid} is not a MovieLens user of {self.data.name} "
                                 f"(valid: {min(self._user)}..{max(self._user)})")
            u = self._user[int(uid)]
            n = len(self.data.seq(u)) - exclude_last
            when = int(self.data.times[self.data.offsets[u] + n - 1])  # replayed: just after the newest rating
            rows.append((self.data.seq(u)[:n], self.data.rat(u)[:n].astype(np.int64), self.data.user_feats[u],
                         when))
        return self._pack(rows, truncate=True)

    def history_request(self, movie_ids, ratings=None, user_features=None, request_time=None) -> dict:
        """Arrays for one explicit history: MovieLens movie ids, oldest first; ratings 1..5
        (default DEFAULT_RATING); user_features [4] (default 0 = unknown for each);
        request_time: Unix seconds (default now; sent only to a model version that takes it)."""
        movie_ids = list(movie_ids)
        if not movie_ids:
            raise ValueError("history: at least one movie id is required")
        if len(movie_ids) > self.history_length:
            raise ValueError(f"history: at most {self.history_length} movies (the served history "
                             f"length), got {len(movie_ids)}")
        unknown = [m for m in movie_ids if int(m) not in self._dense]
        if unknown:
            raise ValueError(f"history: movie ids {unknown[:5]} are not in the {self.data.name} catalogue")
        ratings = [DEFAULT_RATING] * len(movie_ids) if ratings is None else list(ratings)
        if len(ratings) != len(movie_ids):
            raise ValueError(f"ratings: need one per movie ({len(movie_ids)}), got {len(ratings)}")
        feats = np.zeros(N_USER_FEATURES, np.int64) if user_features is None else np.asarray(user_features, np.int64)
        ids = np.array([self._dense[int(m)] for m in movie_ids], np.int64)
        when = int(time.time()) if request_time is None else int(request_time)
        return self._pack([(ids, np.asarray(ratings, np.int64), feats, when)], truncate=False)

    def _pack(self, rows, truncate: bool) -> dict:
        R = self.history_length
        B = len(rows)
        ids, rat = np.zeros((B, R), np.int64), np.zeros((B, R), np.int64)
        feats = np.zeros((B, N_USER_FEATURES), np.int64)
        when = np.zeros((B, 1), np.int64)
        for b, (i, r, f, t) in enumerate(rows):
            i, r = (i[-R:], r[-R:]) if truncate else (i, r)
            if len(i):
                ids[b, -len(i):], rat[b, -len(i):] = i, r
            feats[b], when[b] = f, t
        out = {"history_ids": ids, "history_ratings": rat, "user_features": feats}
        if self.needs_time:
            out[REQUEST_TIME] = when
        return out

    # ---- calling the server -----------------------------------------------------------
    def check(self, arrays: dict) -> None:
        """Raise ValueError (naming the field and constraint) for a request the server would reject."""
        B = arrays["history_ids"].shape[0] if np.ndim(arrays["history_ids"]) == 2 else 0
        if B > self.max_batch_size:
            raise ValueError(f"batch: at most max_batch_size = {self.max_batch_size} rows per request, got {B}")
        when = arrays.get(REQUEST_TIME)
        err = check_request(np.asarray(arrays["history_ids"]), np.asarray(arrays["history_ratings"]),
                            np.asarray(arrays["user_features"]), self.limits,
                            None if when is None else np.asarray(when))
        if err:
            raise ValueError(err)

    def _inputs(self, m, arrays: dict):
        ins = []
        for t in signatures_inputs():
            if t.name not in self.input_names:  # an input this model version does not take
                continue
            a = np.ascontiguousarray(arrays[t.name])
            x = m.InferInput(t.name, list(a.shape), t.wire_type)
            x.set_data_from_numpy(a)
            ins.append(x)
        outs = [m.InferRequestedOutput(n) for n in ("item_ids", "scores")]
        return ins, outs

    def infer(self, arrays: dict, validate: bool = True):
        """Raw call: arrays -> (dense item ids [B, k2], scores [B, k2])."""
        if validate:
            self.check(arrays)
        ins, outs = self._inputs(self._m, arrays)
        kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        r = self.client.infer(self.model, ins, outputs=outs, **kw)
        return r.as_numpy("item_ids"), r.as_numpy("scores")

    async def infer_async(self, arrays: dict, validate: bool = True):
        """asyncio variant of ``infer`` (one aio client per call: safe in any event loop)."""
        if validate:
            self.check(arrays)
        m = _module(self.protocol, aio=True)
        ins, outs = self._inputs(m, arrays)
        c = m.InferenceServerClient(self.url)
        try:
            r = await c.infer(self.model, ins, outputs=outs)
        finally:
            await c.close()
        return r.as_numpy("item_ids"), r.as_numpy("scores")

    def named(self, ids, scores, k: int = 10) -> list[list[Recommendation]]:
        """Dense ids/scores [B, >=k] -> per row the top ``k`` as MovieLens ids with titles."""
        return [[Recommendation(int(self.data.item_movie_ids[i]), self.data.titles[i], float(s))
                 for i, s in zip(row_i[:k], row_s[:k])] for row_i, row_s in zip(ids, scores)]

    def recommend_users(self, user_ids, k: int = 10, exclude_last: int = 0):
        return self.named(*self.infer(self.user_request(user_ids, exclude_last)), k)

    def recommend_history(self, movie_ids, ratings=None, user_features=None, k: int = 10,
                          request_time=None):
        return self.named(*self.infer(self.history_request(movie_ids, ratings, user_features,
                                                           request_time)), k)[0]

    async def recommend_async(self, user_ids, k: int = 10):
        return self.named(*(await self.infer_async(self.user_request(user_ids))), k)


def signatures_inputs():
    """The ensemble's input tensors (names, dtypes), shape-independent: the default config's,
    which include ``request_time``; ``_inputs`` sends those the server's version takes."""
    from grank.config import make_config
    return signatures(make_config("default"))[ENSEMBLE].inputs
