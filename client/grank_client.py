"""A small library over ``tritonclient`` for the ``grank`` ensemble; needs only ``tritonclient``
and ``numpy`` (no torch, no model, no local data set).

Everything comes from the server: the history length R, k2 and the batch limit from the
ensemble's config, the id type (int64 or strings) from its input datatype, and the data set's
schema (event names, user features and their values, padding id) from its ``schema``
parameter. Requests carry the caller's own item ids and responses return them, with display
names (the ensemble maps them to the model's dense ids and back).

- ``recommend(history, events=None, user_features=None, k=10, request_time=None)``: one user;
  ``history`` the caller's item ids, oldest first; ``events`` names or codes per item (default:
  the data set's first strong event, e.g. a rating of 4 on MovieLens); ``user_features`` a
  dict name -> value or code (unknown names are an error; a missing feature is sent as code 0:
  "unknown" for data sets built from files, the first value for MovieLens's profiles);
- ``request(...)`` builds the arrays (checked with ``grank.validation``, the checks the server
  runs), ``infer(arrays)`` sends any batch, ``recommend_async`` is the asyncio variant.

Every answer says which deployment (model version) produced it (``Answer.deployment``). Calls
are retried on UNAVAILABLE / 503 / a refused connection (an overloaded, restarting or swapping
server) with exponential backoff until ``deadline_s``: inference is idempotent. A server that
restricts its model configs to holders of the management key (``serve.admin``) does not show
its schema: pass ``schema`` (the JSON of the ensemble's ``schema`` parameter, from whoever holds
the key: ``python -m client info --save-schema schema.json``), or ``admin_key``.

    >>> c = GRankClient("localhost:8001", protocol="grpc")                # doctest: +SKIP
    >>> c.recommend([260, 1196, 1210], events=["5", "5", "5"], k=3)       # doctest: +SKIP
    [Recommendation(item_id=1198, name='Raiders of the Lost Ark (1981)', score=...), ...]
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grank.signatures import DEPLOYMENT, ENSEMBLE, REQUEST_TIME
from grank.validation import PADDING_INT, PADDING_STR, check_request
from serve.admin import headers as admin_headers
from serve.admin import is_restricted_error

OUTPUTS = ("item_ids", "item_names", "scores", DEPLOYMENT)
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 2.0  # backoff: first wait, longest wait (full jitter)


class Answer(tuple):
    """(item ids [B, k2], names [B, k2], scores [B, k2]) as returned by ``infer``, plus
    ``deployment`` [B] int64: the model version that answered each row."""

    def __new__(cls, ids, names, scores, deployment):
        self = super().__new__(cls, (ids, names, scores))
        self.deployment = deployment
        return self


def retryable(e: Exception) -> bool:
    """A failure that a later identical call may not meet: overload (queue full), a server
    restarting or swapping models, a dropped connection, a model whose Python process died.
    Never a caller's mistake."""
    text = str(e)
    if is_restricted_error(e):
        return False
    status = e.status() if hasattr(e, "status") and callable(e.status) else None  # tritonclient's
    return (isinstance(e, (ConnectionError, TimeoutError))
            or str(status) in ("StatusCode.UNAVAILABLE", "503", "502", "504")
            or "UNAVAILABLE" in text or "Connection refused" in text or "exceeds maximum queue size" in text.lower()
            # a dead Python stub, which a supervised server replaces within seconds
            or "is not healthy" in text)


@dataclass(frozen=True)
class Recommendation:
    item_id: object   # the data set's own id: int, or str for string catalogues
    name: str
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

    def __init__(self, url: str, protocol: str = "grpc", model: str = ENSEMBLE, timeout_s: float = 30.0,
                 deadline_s: float = 10.0, schema: dict | str | Path | None = None,
                 admin_key: str | None = None):
        self.url, self.protocol, self.model, self.timeout_s = url, protocol, model, timeout_s
        self.deadline_s = deadline_s  # retries of one call stop here (0: no retries)
        self._m = _module(protocol)
        self.client = self._m.InferenceServerClient(url)
        self._headers = admin_headers(protocol, admin_key)
        cfg = self._retry(self._config)
        if cfg is None:  # configs are restricted: the metadata API (open) has the shapes
            meta = self._retry(lambda: self.client.get_model_metadata(model, **self._kw_meta()))
            cfg = _config_from_metadata(meta)
        self.max_batch_size = cfg["max_batch_size"]  # None: unknown, the server checks it
        dims = {t["name"]: [int(x) for x in t["dims"]] for t in cfg["input"] + cfg["output"]}
        self.history_length = dims["history_ids"][0]
        self.k2 = dims["item_ids"][0]
        # the server's order and wire types (TYPE_STRING is BYTES on the wire)
        self.wire = {t["name"]: t["data_type"].replace("TYPE_", "").replace("STRING", "BYTES")
                     for t in cfg["input"]}
        self.input_names = list(self.wire)
        self.needs_time = REQUEST_TIME in self.input_names
        self.strings = self.wire["history_ids"] == "BYTES"
        self.outputs = [n for n in OUTPUTS if n in dims]
        params = cfg.get("parameters", {})
        if schema is not None:
            self.schema = json.loads(Path(schema).read_text()) if isinstance(schema, (str, Path)) else dict(schema)
        elif "schema" in params:
            self.schema = json.loads(params["schema"]["string_value"])
        elif cfg.get("restricted"):
            raise ValueError(f"{url} restricts model configs to holders of the management key, so "
                             "the data set's schema is not readable: pass schema= (a JSON file "
                             "written by `python -m client info --save-schema FILE` with the key)")
        else:
            raise ValueError(f"model {model!r} on {url} has no 'schema' parameter: not a grank ensemble "
                             "built by this version (`python -m export repository`)")
        self.events = list(self.schema["events"])
        self.features = self.schema["user_features"]
        # n_items None: only the server, which holds the catalogue, can check the ids themselves
        self.limits = {"n_items": None, "history_length": self.history_length,
                       "n_events": len(self.events), "user_feature_sizes": [f["size"] for f in self.features],
                       "request_time": self.needs_time}

    def _kw_meta(self) -> dict:
        return {"as_json": True} if self.protocol == "grpc" else {}

    def _config(self):
        """The ensemble's config as a dict, or None when the server restricts it."""
        try:
            cfg = self.client.get_model_config(self.model, headers=self._headers or None, **self._kw_meta())
        except Exception as e:  # noqa: BLE001  tritonclient raises its own exception type
            if is_restricted_error(e):
                return None
            raise
        return cfg.get("config", cfg)

    def _retry(self, call):
        """``call()``, retried while it fails retryably and ``deadline_s`` is not over."""
        end, wait = time.monotonic() + self.deadline_s, RETRY_FIRST_S
        while True:
            try:
                return call()
            except Exception as e:  # noqa: BLE001
                if not retryable(e) or time.monotonic() + wait > end:
                    raise
            time.sleep(random.uniform(0, wait))
            wait = min(2 * wait, RETRY_MAX_S)

    # ---- building requests ------------------------------------------------------------
    def _event_code(self, e) -> int:
        if isinstance(e, str) and e in self.events:
            return self.events.index(e) + 1
        if isinstance(e, (int, np.integer)) and 1 <= int(e) <= len(self.events):
            return int(e)
        raise ValueError(f"events: {e!r} is neither an event name {self.events[:10]} nor a code "
                         f"1..{len(self.events)}")

    def _feature_codes(self, user_features) -> np.ndarray:
        codes = np.zeros(len(self.features), np.int64)
        given = dict(user_features or {})
        unknown = sorted(set(given) - {f["name"] for f in self.features})
        if unknown:
            raise ValueError(f"user_features: unknown {unknown}; this data set has "
                             f"{[f['name'] for f in self.features] or 'none'}")
        for j, f in enumerate(self.features):
            if f["name"] not in given:
                continue  # code 0: unknown
            v = given[f["name"]]
            values = f.get("values")
            if values is not None and str(v) in values:  # the code is the value's position
                codes[j] = values.index(str(v))
            elif isinstance(v, (int, np.integer)) and 0 <= int(v) < f["size"]:
                codes[j] = int(v)
            else:
                raise ValueError(f"user_features: {f['name']}={v!r} is neither one of its values "
                                 f"{[x for x in (values or []) if x][:10]} nor a code 0..{f['size'] - 1}")
        return codes

    def request(self, histories, events=None, user_features=None, request_time=None) -> dict:
        """Arrays for a batch: ``histories`` a list of item-id lists (oldest first, at most R
        each); ``events``, ``user_features``, ``request_time`` one per history (or None:
        defaults, see the module doc; request_time defaults to now, sent only to a model
        version that takes it)."""
        B, R = len(histories), self.history_length
        pad = PADDING_STR if self.strings else PADDING_INT
        ids = np.full((B, R), pad, dtype=object if self.strings else np.int64)
        ev = np.zeros((B, R), np.int64)
        strong = self.schema["strong_event"]
        for b, h in enumerate(histories):
            h = list(h)
            if not h:
                raise ValueError(f"history: row {b} is empty; at least one item id is required")
            if len(h) > R:
                raise ValueError(f"history: at most {R} items (the served history length), got {len(h)} in row {b}")
            e = [strong] * len(h) if events is None or events[b] is None else [self._event_code(x) for x in events[b]]
            if len(e) != len(h):
                raise ValueError(f"events: need one per item ({len(h)}), got {len(e)} in row {b}")
            ids[b, R - len(h):] = [str(x).encode() for x in h] if self.strings else [int(x) for x in h]
            ev[b, R - len(h):] = e
        out = {"history_ids": ids, "history_events": ev}
        if self.features:
            out["user_features"] = np.stack([self._feature_codes(None if user_features is None else user_features[b])
                                             for b in range(B)])
        if self.needs_time:
            now = int(time.time())
            out[REQUEST_TIME] = np.array([[now if request_time is None or request_time[b] is None
                                           else int(request_time[b])] for b in range(B)], np.int64)
        return out

    # ---- calling the server -----------------------------------------------------------
    def check(self, arrays: dict) -> None:
        """Raise ValueError (naming the field and constraint) for a request the server would
        reject; item ids themselves are checked by the server, which holds the catalogue."""
        ids = np.asarray(arrays["history_ids"])
        B = ids.shape[0] if ids.ndim == 2 else 0
        if self.max_batch_size is not None and B > self.max_batch_size:
            raise ValueError(f"batch: at most max_batch_size = {self.max_batch_size} rows per request, got {B}")
        if ids.dtype != (np.dtype(object) if self.strings else np.int64):
            raise ValueError(f"history_ids: dtype must be {'bytes objects' if self.strings else 'int64'} "
                             f"(the data set's ids), got {ids.dtype}")
        pad = PADDING_STR if self.strings else PADDING_INT
        # any id stands for itself here: the shape, padding and event rules are what is checked
        real = np.where(ids == pad, 0, 1).astype(np.int64) if ids.ndim == 2 else ids
        err = check_request(real, np.asarray(arrays["history_events"]),
                            None if "user_features" not in arrays else np.asarray(arrays["user_features"]),
                            self.limits,
                            None if REQUEST_TIME not in arrays else np.asarray(arrays[REQUEST_TIME]))
        if err:
            raise ValueError(err)

    def _inputs(self, m, arrays: dict):
        ins = []
        for name in self.input_names:
            a = np.asarray(arrays[name])
            a = a if a.dtype == object else np.ascontiguousarray(a)
            x = m.InferInput(name, list(a.shape), self.wire[name])
            x.set_data_from_numpy(a)
            ins.append(x)
        return ins, [m.InferRequestedOutput(n) for n in self.outputs]

    @staticmethod
    def _outputs(r) -> Answer:
        ids = r.as_numpy("item_ids")
        if ids.dtype == object:
            ids = np.vectorize(lambda b: b.decode(), otypes=[object])(ids)
        names = np.vectorize(lambda b: b.decode(), otypes=[object])(r.as_numpy("item_names"))
        version = r.as_numpy(DEPLOYMENT)
        return Answer(ids, names, r.as_numpy("scores"), None if version is None else version[:, 0])

    def infer(self, arrays: dict, validate: bool = True) -> Answer:
        """Raw call: arrays -> (item ids [B, k2] (int64, or str objects), names [B, k2] str
        objects, scores [B, k2] float32), best first; ``.deployment`` [B] the version that
        answered. Retried as the module doc says."""
        if validate:
            self.check(arrays)
        ins, outs = self._inputs(self._m, arrays)
        kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        return self._outputs(self._retry(lambda: self.client.infer(self.model, ins, outputs=outs, **kw)))

    async def infer_async(self, arrays: dict, validate: bool = True) -> Answer:
        """asyncio variant of ``infer`` (one aio client per call: safe in any event loop)."""
        if validate:
            self.check(arrays)
        m = _module(self.protocol, aio=True)
        ins, outs = self._inputs(m, arrays)
        end, wait = time.monotonic() + self.deadline_s, RETRY_FIRST_S
        while True:
            c = m.InferenceServerClient(self.url)
            try:
                return self._outputs(await c.infer(self.model, ins, outputs=outs))
            except Exception as e:  # noqa: BLE001
                if not retryable(e) or time.monotonic() + wait > end:
                    raise
            finally:
                await c.close()
            await asyncio.sleep(random.uniform(0, wait))
            wait = min(2 * wait, RETRY_MAX_S)

    @staticmethod
    def named(ids, names, scores, k: int = 10) -> list[list[Recommendation]]:
        """Per row, the top ``k`` as ``Recommendation``s."""
        return [[Recommendation(i.item() if hasattr(i, "item") else i, n, float(s))
                 for i, n, s in zip(ri[:k], rn[:k], rs[:k])] for ri, rn, rs in zip(ids, names, scores)]

    def recommend(self, history, events=None, user_features=None, k: int = 10, request_time=None):
        """Top ``k`` for one user (see the module doc)."""
        arrays = self.request([history], None if events is None else [events],
                              None if user_features is None else [user_features],
                              None if request_time is None else [request_time])
        return self.named(*self.infer(arrays), k)[0]

    async def recommend_async(self, history, events=None, user_features=None, k: int = 10,
                              request_time=None):
        arrays = self.request([history], None if events is None else [events],
                              None if user_features is None else [user_features],
                              None if request_time is None else [request_time])
        return self.named(*(await self.infer_async(arrays)), k)[0]


def _config_from_metadata(meta) -> dict:
    """The parts of a model config that the (unrestricted) metadata API shows: names, wire
    types and per-row shapes; no batch limit and no parameters."""
    meta = meta.get("metadata", meta) if isinstance(meta, dict) else meta
    def tensors(ts):
        return [{"name": t["name"], "data_type": "TYPE_" + t["datatype"].replace("BYTES", "STRING"),
                 "dims": [int(x) for x in t["shape"][1:]]} for t in ts]
    return {"max_batch_size": None, "input": tensors(meta["inputs"]), "output": tensors(meta["outputs"]),
            "parameters": {}, "restricted": True}
