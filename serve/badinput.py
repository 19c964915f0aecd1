"""Bad input against a running server: every kind of malformed, out-of-range or oversized
request, over HTTP JSON, HTTP binary (the KServe binary tensor extension) and gRPC, aimed at the
ensemble ``grank`` and at each of its composing models called directly.

    python -m serve.badinput --http-url localhost:8000 --grpc-url localhost:8001 --pid PID \
        [--admin-key-file F] [--markdown OUT.md] [--passes N] [--include-crashers | --crash-recovery N]

What the server is expected to do (``EXPECT``) depends on where a request lands:

- the ensemble and ``grank_validate``: an error with a message, HTTP 4xx / gRPC
  INVALID_ARGUMENT (NOT_FOUND for an unknown model or version). Triton 2.51's HTTP frontend
  answers some requests it cannot parse as JSON with HTTP 500 (malformed or truncated JSON, a
  shape disagreeing with its data, floats or integers beyond int64 in INT64 data, ...): those
  kinds carry ``parse=True`` and a 500 on HTTP is recorded as ``frontend-500`` (accepted),
  never over gRPC and never for a value check;
- ``grank_user_encoder``, ``grank_mips`` and ``grank_ranker`` called directly (the ensemble's
  validator does not stand in front of them): an error, or the offending row flagged (user
  embedding all NaN; candidate or ranked ids all -1 with scores all NaN) while the valid row of
  the same batch keeps its normal answer;
- ``grank_catalogue`` with dense ids outside 1..N: HTTP 400 / INVALID_ARGUMENT.

After every kind the server process must still be alive, ``/v2/health/ready`` must answer 200
and a fixed good request over gRPC must answer exactly what it answered before the first kind.
The resident memory of tritonserver and all its descendants (the Python backend stubs) is
sampled throughout (before, peak, after).

Everything the requests need comes from the server: the model configs (read over HTTP with
``headers``, e.g. a management key), the ensemble's ``schema`` parameter (N items, E events,
user feature sizes), the catalogue step (the data set's ids of dense ids 1..7) and the composing
models themselves (a real user embedding, real candidates, real ranked ids). Clients: the
standard library (raw HTTP over sockets), ``numpy`` and the gRPC stubs of ``tritonclient``;
every socket and call has a timeout, so a server that stops answering cannot hang a run.

One kind is never sent unless asked (``include_crashers=True``): an HTTP JSON request declaring
a huge shape ([1, 2**62]) makes Triton 2.51 allocate for the declared shape and die (SIGSEGV or
std::bad_alloc); it is for a supervised server.
"""
from __future__ import annotations

import argparse
import copy
import http.client
import json
import math
import socket
import struct
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from grank.signatures import CATALOGUE, DEPLOYMENT, ENSEMBLE, MIPS, RANKER, USER_ENCODER, VALIDATE
from serve.processes import RssSampler, alive, rss_bytes

MODELS = (ENSEMBLE, VALIDATE, USER_ENCODER, MIPS, RANKER, CATALOGUE)
JSON, BINARY, GRPC = "http-json", "http-binary", "grpc"
PROTOCOLS = (JSON, BINARY, GRPC)
ALL3 = PROTOCOLS

TIMEOUT_S = 10.0          # every HTTP socket and gRPC call
PENDING_BODY_WAIT_S = 1.0  # how long a request with a body shorter than its Content-Length waits
HUGE_BODY_BYTES = 10_000_000
HUGE_ID_BYTES = 2_000_000
MESSAGE_CHARS = 120
# a Python backend stub that died answers with one of these: the kind broke a model
DEAD_STUB = ("Stub process", "is not healthy", "Failed to initialize stub")

# expected outcome classes: what the server must do with a kind
REJECT = "reject"
FLAG = "reject-or-flag"
ANSWER_OR_REJECT = "answer-or-reject"
FRAMING = "reject-or-close"
EXPECT = {
    REJECT: "an error with a message: HTTP 4xx / gRPC INVALID_ARGUMENT (NOT_FOUND where named); "
            "HTTP 500 only as frontend-500 for a kind the HTTP frontend fails to parse as JSON",
    FLAG: "an error with a message, or the bad row flagged (user_embedding all NaN; candidate or "
          "ranked ids all -1 and their scores all NaN) and the valid row's answer unchanged",
    ANSWER_OR_REJECT: "the request is valid apart from its size or redundancy: either the exact "
                      "answer of the same good arrays, or an error as for reject",
    FRAMING: "HTTP framing broken before Triton sees a request: HTTP 4xx, frontend-500 for a cut "
             "JSON body, or the connection closed with no answer once the sender stops",
}

WIRE_DTYPE = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP64": np.float64,
              "BYTES": object, "BOOL": np.bool_, "UINT8": np.uint8}


def _wire(a: np.ndarray) -> str:
    return {np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32",
            np.dtype(np.float64): "FP64", np.dtype(object): "BYTES"}[a.dtype]


# ---------------------------------------------------------------------------------------------
# what the server serves


@dataclass
class Served:
    """Facts read from the server's model configs and answers; shapes are per request row.

    R history length, F user features with ``sizes``, N items (dense ids 1..N, 0 = padding),
    E events (codes 1..E), d user embedding width, k1 candidates, k2 ranked ids; ``id_wire``
    the ensemble's history_ids datatype ("INT64" or "BYTES"); ``inputs[model]`` the config's
    input names in order; ``good[model]`` the good request of each model as arrays
    (name -> [2, ...]); ``ref[model]`` its answer (name -> [2, ...]), read over gRPC."""
    R: int
    F: int
    sizes: list
    N: int
    E: int
    d: int
    k1: int
    k2: int
    max_batch: int
    has_time: bool
    id_wire: str
    inputs: dict
    outputs: dict
    good: dict = field(default_factory=dict)
    ref: dict = field(default_factory=dict)
    own: dict = field(default_factory=dict)   # dense id -> the data set's id (int, or bytes)
    versions: dict = field(default_factory=dict)  # model -> its loaded versions, newest first

    @property
    def strings(self) -> bool:
        return self.id_wire == "BYTES"

    @property
    def padding(self):
        return b"" if self.strings else -1

    @property
    def unknown_id(self):
        """An id no catalogue holds: 10**12 (int64 ids) or b"no-such-item-id" (string ids)."""
        return b"no-such-item-id" if self.strings else 10 ** 12

    def arrays(self, model: str) -> dict:
        """A fresh copy of ``model``'s good request: name -> [2, ...] array."""
        return {k: v.copy() for k, v in self.good[model].items()}

    def facts(self) -> dict:
        return {"R": self.R, "F": self.F, "feature_sizes": self.sizes, "N": self.N, "E": self.E,
                "d": self.d, "k1": self.k1, "k2": self.k2, "max_batch_size": self.max_batch,
                "request_time": self.has_time, "history_ids": self.id_wire}


def _host_port(url: str) -> tuple[str, int]:
    u = urllib.parse.urlsplit(url if "//" in url else "//" + url)
    return u.hostname or "localhost", u.port or 80


def _get_json(http_url: str, path: str, headers: dict | None = None) -> tuple[int, object]:
    host, port = _host_port(http_url)
    c = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
    finally:
        c.close()
    try:
        return r.status, json.loads(body) if body else None
    except ValueError:
        return r.status, body.decode("utf-8", "replace")


def _config(http_url: str, model: str, headers: dict | None) -> dict:
    status, cfg = _get_json(http_url, f"/v2/models/{model}/config", headers)
    if status != 200 or not isinstance(cfg, dict):
        raise RuntimeError(f"GET /v2/models/{model}/config answered {status}: {str(cfg)[:200]} "
                           "(a restricted model-config API needs the management key: --admin-key-file or $GRANK_ADMIN_KEY)")
    return cfg


def _wire_of(t: dict) -> str:
    return t["data_type"].replace("TYPE_", "").replace("STRING", "BYTES")


def discover(http_url: str, grpc_url: str, headers: dict | None = None) -> Served:
    """Read the configs of the six models and build every model's good request and answer."""
    cfgs = {m: _config(http_url, m, headers) for m in MODELS}
    dims = {m: {t["name"]: [int(x) for x in t["dims"]] for t in c["input"] + c["output"]}
            for m, c in cfgs.items()}
    ens = cfgs[ENSEMBLE]
    schema = json.loads(ens["parameters"]["schema"]["string_value"])
    wires = {t["name"]: _wire_of(t) for t in ens["input"]}
    s = Served(R=dims[ENSEMBLE]["history_ids"][0], F=len(schema["user_features"]),
               sizes=[int(f["size"]) for f in schema["user_features"]], N=int(schema["n_items"]),
               E=len(schema["events"]), d=dims[USER_ENCODER]["user_embedding"][0],
               k1=dims[MIPS]["candidate_ids"][0], k2=dims[RANKER]["ranked_ids"][0],
               max_batch=int(ens["max_batch_size"]), has_time="request_time" in wires,
               id_wire=wires["history_ids"],
               inputs={m: [t["name"] for t in c["input"]] for m, c in cfgs.items()},
               outputs={m: [t["name"] for t in c["output"]] for m, c in cfgs.items()})
    for m in MODELS:
        status, meta = _get_json(http_url, f"/v2/models/{m}", headers)
        listed = meta.get("versions", []) if status == 200 and isinstance(meta, dict) else []
        s.versions[m] = sorted((int(v) for v in listed if str(v).isdigit()), reverse=True)
    _build_good(s, grpc_url)
    return s


def _dense_history(s: Served) -> tuple[np.ndarray, np.ndarray]:
    """Two rows of dense history ([2, R] int64 ids, 0 = padding, newest last) and their event
    codes ([2, R], 1..E for items, 0 in padding): row 0 three items, row 1 four."""
    ids = np.zeros((2, s.R), np.int64)
    ev = np.zeros((2, s.R), np.int64)
    for row, items in enumerate(([1, 2, 3], [4, 5, 6, 7])):
        items = [((i - 1) % s.N) + 1 for i in items][-s.R:]
        ids[row, s.R - len(items):] = items
        ev[row, s.R - len(items):] = [(j % s.E) + 1 for j in range(row, row + len(items))]
    return ids, ev


def _build_good(s: Served, grpc_url: str) -> None:
    g = Grpc(grpc_url)
    try:
        dense, ev = _dense_history(s)
        feats = np.zeros((2, s.F), np.int64)
        feats[1] = [max(size - 1, 0) for size in s.sizes]   # the last code of each feature
        when = np.array([[1_000_000_000], [1_000_000_000 + 30 * 86400]], np.int64)
        # the data set's own ids of dense ids 1..7, from the catalogue step itself
        probe = np.resize(np.arange(1, min(s.N, 7) + 1, dtype=np.int64), (1, s.k2))
        out = g.must(CATALOGUE, _catalogue_inputs(s, probe))
        s.own = {int(dn): out["item_ids"][0, j] for j, dn in enumerate(probe[0])}
        own = np.full((2, s.R), s.padding, dtype=object if s.strings else np.int64)
        for (r, c) in zip(*np.nonzero(dense)):
            own[r, c] = s.own[int(dense[r, c])]
        common = {"history_events": ev, "user_features": feats, "request_time": when}
        s.good[ENSEMBLE] = _pick(s, ENSEMBLE, {"history_ids": own, **common})
        s.good[VALIDATE] = _pick(s, VALIDATE, {"history_ids": own, **common})
        s.good[USER_ENCODER] = _pick(s, USER_ENCODER, {"history_ids": dense, **common})
        for m in (ENSEMBLE, VALIDATE, USER_ENCODER):
            s.ref[m] = g.must(m, s.good[m])
        emb = s.ref[USER_ENCODER]["user_embedding"]
        s.good[MIPS] = _pick(s, MIPS, {"user_embedding": emb, "history_ids": dense})
        s.ref[MIPS] = g.must(MIPS, s.good[MIPS])
        s.good[RANKER] = _pick(s, RANKER, {"user_embedding": emb, "history_ids": dense, **common,
                                           "candidate_ids": s.ref[MIPS]["candidate_ids"]})
        s.ref[RANKER] = g.must(RANKER, s.good[RANKER])
        s.good[CATALOGUE] = _catalogue_inputs(s, s.ref[RANKER]["ranked_ids"].copy())
        s.ref[CATALOGUE] = g.must(CATALOGUE, s.good[CATALOGUE])
    finally:
        g.close()


def _catalogue_inputs(s: Served, ranked: np.ndarray) -> dict:
    """The catalogue step's inputs for dense ids ``ranked`` [B, k2]. A catalogue that also
    takes ``deployment`` [B, 1] (the version that validated the request, which must be its
    own) gets its newest loaded version: a direct call is answered by that one."""
    a = {"ranked_ids": ranked}
    if DEPLOYMENT in s.inputs[CATALOGUE]:
        a[DEPLOYMENT] = np.full((ranked.shape[0], 1), (s.versions[CATALOGUE] or [1])[0], np.int64)
    return _pick(s, CATALOGUE, a)


def _pick(s: Served, model: str, arrays: dict) -> dict:
    missing = [n for n in s.inputs[model] if n not in arrays]
    if missing:
        raise RuntimeError(f"{model}: inputs {missing} are not known here (configs of another layout)")
    return {n: np.ascontiguousarray(arrays[n]) for n in s.inputs[model]}


# ---------------------------------------------------------------------------------------------
# requests and the three ways of sending them


@dataclass
class T:
    """One input tensor as sent: ``data`` [shape] numpy (object arrays of bytes for BYTES);
    ``json_data`` replaces the JSON ``data`` field verbatim; ``raw`` replaces the binary blob
    (HTTP binary and gRPC)."""
    name: str
    datatype: str
    shape: list
    data: np.ndarray
    json_data: object = None
    raw: bytes | None = None


@dataclass
class Call:
    """One request. ``bad_rows``: the rows a flagged answer must flag (the others are valid)."""
    model: str
    tensors: list
    version: str = ""
    outputs: tuple = ()
    request_id: str | None = None
    json_edit: Callable | None = None     # dict -> None: edits the JSON document
    body: bytes | None = None             # HTTP JSON body sent as is
    raw_http: Callable | None = None      # (path, body) -> the whole HTTP request bytes
    wait_s: float = TIMEOUT_S             # raw HTTP: how long to wait for an answer
    header_length: Callable | None = None  # HTTP binary: (header bytes, body bytes) -> the
    #                                        Inference-Header-Content-Length value sent
    blob_edit: Callable | None = None     # HTTP binary: bytes -> bytes, the blobs after the header
    grpc_edit: Callable | None = None     # gRPC: ModelInferRequest -> None
    bad_rows: tuple = (0,)


def call_of(model: str, arrays: dict, **kw) -> Call:
    return Call(model, [T(n, _wire(a), list(a.shape), a) for n, a in arrays.items()], **kw)


def _blob(t: T) -> bytes:
    if t.raw is not None:
        return t.raw
    a = np.asarray(t.data)
    if a.dtype == object:  # BYTES: each element as 4-byte little-endian length + bytes
        return b"".join(struct.pack("<I", len(x)) + x for x in
                        (v if isinstance(v, bytes) else str(v).encode() for v in a.ravel()))
    return np.ascontiguousarray(a).tobytes()


def _unpack_bytes(raw: bytes) -> list:
    """The elements of a serialized BYTES tensor (4-byte little-endian length + bytes each)."""
    vals, pos = [], 0
    while pos + 4 <= len(raw):
        (n,) = struct.unpack_from("<I", raw, pos)
        vals.append(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    return vals


def _json_data(t: T):
    if t.json_data is not None:
        return t.json_data
    a = np.asarray(t.data)
    if a.dtype == object:
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in a.ravel()]
    return a.ravel().tolist()


def _path(call: Call) -> str:
    v = f"/versions/{call.version}" if call.version else ""
    return f"/v2/models/{call.model}{v}/infer"


@dataclass
class Outcome:
    """What came back: ``how`` "http" (``code`` the status), "grpc" (``code`` the status name),
    "closed" (no answer, connection closed) or "timeout"; ``outputs`` name -> array on success."""
    how: str
    code: str
    message: str = ""
    outputs: dict | None = None


def _decode_json_outputs(doc: dict) -> dict:
    out = {}
    for o in doc.get("outputs", []):
        dt = WIRE_DTYPE.get(o["datatype"], object)
        data = o.get("data", [])
        if dt is object:
            a = np.array([x.encode() if isinstance(x, str) else x for x in data], dtype=object)
        else:
            a = np.array(data, dtype=dt)
        out[o["name"]] = a.reshape(o["shape"])
    return out


def _http_answer(status: int, body: bytes) -> Outcome:
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    if 200 <= status < 300:
        if not isinstance(doc, dict):
            return Outcome("http", str(status), "answer is not JSON: " + body[:80].decode("utf-8", "replace"))
        return Outcome("http", str(status), "", _decode_json_outputs(doc))
    msg = doc.get("error", "") if isinstance(doc, dict) else body.decode("utf-8", "replace")
    return Outcome("http", str(status), str(msg))


def _http_post(http_url: str, path: str, body: bytes, headers: dict) -> Outcome:
    host, port = _host_port(http_url)
    c = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        c.request("POST", path, body=body, headers=headers)
        r = c.getresponse()
        return _http_answer(r.status, r.read())
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
        return Outcome("closed", "closed", f"connection closed with no answer ({type(e).__name__})")
    except TimeoutError:
        return Outcome("timeout", "timeout", f"no answer in {TIMEOUT_S:.0f} s")
    finally:
        c.close()


def _raw_http(http_url: str, data: bytes, wait_s: float) -> Outcome:
    """Send ``data`` as is; read an answer for ``wait_s``; when none came, half-close (the
    sender has nothing more to say) and read until the server closes."""
    host, port = _host_port(http_url)
    out = b""
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        sock.sendall(data)
        sock.settimeout(wait_s)
        waited_out = False
        try:
            out = _read_answer(sock)
        except TimeoutError:
            waited_out = True
        except ConnectionResetError:
            pass
        if waited_out and not out:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(TIMEOUT_S)
            try:
                out = _read_answer(sock)
            except TimeoutError:
                return Outcome("timeout", "timeout", f"no answer in {wait_s + TIMEOUT_S:.0f} s, "
                               "even after the sender half-closed")
            except ConnectionResetError:
                out = b""
    if not out:
        return Outcome("closed", "closed", "no answer; the server closed the connection"
                       + (f" after waiting {wait_s:.0f} s for the declared body and a half-close"
                          if waited_out else ""))
    head, _, body = out.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return Outcome("http", "???", "unparsable answer: " + head[:80].decode("latin-1"))
    return _http_answer(status, body)


def _read_answer(sock: socket.socket) -> bytes:
    """One HTTP answer (headers and a Content-Length body), or what came before the close."""
    out = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk
        head, sep, body = out.partition(b"\r\n\r\n")
        if sep:
            lengths = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                       if line.lower().startswith(b"content-length:")]
            if lengths and len(body) >= lengths[0]:
                return out


def json_body(call: Call) -> bytes:
    if call.body is not None:
        return call.body
    doc: dict = {}
    if call.request_id is not None:
        doc["id"] = call.request_id
    doc["inputs"] = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                      "data": _json_data(t)} for t in call.tensors]
    if call.outputs:
        doc["outputs"] = [{"name": o} for o in call.outputs]
    if call.json_edit:
        call.json_edit(doc)
    return json.dumps(doc, allow_nan=True, separators=(",", ":")).encode()


def send_json(http_url: str, call: Call) -> Outcome:
    body = json_body(call)
    if call.raw_http:
        return _raw_http(http_url, call.raw_http(_path(call), body), call.wait_s)
    return _http_post(http_url, _path(call), body, {"Content-Type": "application/json"})


def send_binary(http_url: str, call: Call) -> Outcome:
    blobs = [_blob(t) for t in call.tensors]
    doc: dict = {}
    if call.request_id is not None:
        doc["id"] = call.request_id
    doc["inputs"] = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                      "parameters": {"binary_data_size": len(b)}} for t, b in zip(call.tensors, blobs)]
    if call.outputs:
        doc["outputs"] = [{"name": o} for o in call.outputs]
    if call.json_edit:
        call.json_edit(doc)
    header = json.dumps(doc, separators=(",", ":")).encode()
    data = b"".join(blobs)
    if call.blob_edit:
        data = call.blob_edit(data)
    length = str(len(header)) if call.header_length is None else \
        call.header_length(len(header), len(header) + len(data))
    return _http_post(http_url, _path(call), header + data,
                      {"Content-Type": "application/octet-stream",
                       "Inference-Header-Content-Length": length})


class Grpc:
    """A gRPC channel to the server with unlimited message sizes (huge kinds must reach it)."""

    def __init__(self, url: str):
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc
        self.grpc, self.pb = grpc, service_pb2
        self.channel = grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1),
                                                           ("grpc.max_receive_message_length", -1)])
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def request(self, call: Call):
        r = self.pb.ModelInferRequest(model_name=call.model, model_version=call.version,
                                      id=call.request_id or "")
        for t in call.tensors:
            x = r.inputs.add()
            x.name, x.datatype = t.name, t.datatype
            x.shape.extend(int(v) for v in t.shape)
            r.raw_input_contents.append(_blob(t))
        for o in call.outputs:
            r.outputs.add().name = o
        if call.grpc_edit:
            call.grpc_edit(r)
        return r

    def send(self, call: Call) -> Outcome:
        try:
            resp = self.stub.ModelInfer(self.request(call), timeout=TIMEOUT_S)
        except self.grpc.RpcError as e:
            return Outcome("grpc", e.code().name, e.details() or "")
        out = {}
        for i, o in enumerate(resp.outputs):
            raw = resp.raw_output_contents[i]
            if o.datatype == "BYTES":
                a = np.array(_unpack_bytes(raw), dtype=object)
            else:
                a = np.frombuffer(raw, dtype=WIRE_DTYPE[o.datatype]).copy()
            out[o.name] = a.reshape(list(o.shape))
        return Outcome("grpc", "OK", "", out)

    def must(self, model: str, arrays: dict) -> dict:
        o = self.send(call_of(model, arrays))
        if o.outputs is None:
            raise RuntimeError(f"{model}: a good request failed over gRPC: {o.code} {o.message[:300]}")
        return o.outputs


# ---------------------------------------------------------------------------------------------
# the kinds


@dataclass(frozen=True)
class Kind:
    """One kind of bad request. ``build(served, protocol) -> Call``; ``expect`` a key of
    ``EXPECT``; ``parse``: an HTTP JSON parsing failure, where Triton 2.51 answers 500
    (``frontend-500``); ``applies(served)`` returns why the kind does not apply to this model
    (None: it applies); ``grpc_codes``: the gRPC status names that count as a rejection."""
    name: str
    model: str
    protocols: tuple
    build: Callable
    expect: str
    what: str
    crashes_251: bool = False
    parse: bool = False
    applies: Callable | None = None
    grpc_codes: tuple = ("INVALID_ARGUMENT",)


def _edit(model: str, fn: Callable, **kw) -> Callable:
    """A builder: ``model``'s good arrays, changed in place by ``fn(served, arrays)`` (which may
    also return a replacement dict)."""
    def build(s: Served, protocol: str) -> Call:
        a = s.arrays(model)
        a = fn(s, a) or a
        return call_of(model, a, **kw)
    return build


def _put(name: str, index, value: Callable | object) -> Callable:
    """``arrays[name][index] = value`` (a callable value is called with the served facts)."""
    def fn(s: Served, a: dict):
        a[name][index] = value(s) if callable(value) else value
    return fn


def _json_put(name: str, index: int, value) -> Callable:
    """A JSON edit: ``data[index]`` of input ``name`` becomes ``value`` (any JSON value)."""
    def edit(doc: dict):
        next(t for t in doc["inputs"] if t["name"] == name)["data"][index] = value
    return edit


def _ens_json(edit: Callable, model: str = ENSEMBLE) -> Callable:
    return _edit(model, lambda s, a: None, json_edit=edit)


def _body(text: Callable | bytes) -> Callable:
    def build(s: Served, protocol: str) -> Call:
        c = call_of(ENSEMBLE, s.arrays(ENSEMBLE))
        c.body = text(s, json_body(c)) if callable(text) else text
        return c
    return build


def _needs_features(s: Served):
    return None if s.F else "the model takes no user_features"


def _needs_time(s: Served):
    return None if s.has_time else "the model takes no request_time"


def _needs_strings(s: Served):
    return None if s.strings else "history_ids is INT64 here: string ids do not apply"


def _rows(s: Served, a: dict, n: int) -> dict:
    return {k: np.resize(v, (n,) + v.shape[1:]) for k, v in a.items()}


def _huge_body(s: Served, protocol: str) -> Call:
    """About 10 MB: the good rows repeated past max_batch_size (consistent shapes)."""
    a = s.arrays(ENSEMBLE)
    per_row = sum(v[0].nbytes if v.dtype != object else 8 * v.shape[1] for v in a.values())
    if protocol == JSON:
        per_row = len(json_body(call_of(ENSEMBLE, {k: v[:1] for k, v in a.items()})))
    return call_of(ENSEMBLE, _rows(s, a, max(s.max_batch + 1, math.ceil(HUGE_BODY_BYTES / per_row))))


def _shape(name: str, shape: Callable) -> Callable:
    """Declare ``shape(served, array)`` for input ``name`` and send its data unchanged."""
    def build(s: Served, protocol: str) -> Call:
        c = call_of(ENSEMBLE, s.arrays(ENSEMBLE))
        t = next(t for t in c.tensors if t.name == name)
        t.shape = list(shape(s, t.data))
        return c
    return build


def _data(name: str, rows: Callable) -> Callable:
    """Send ``rows(array)`` as the data of input ``name`` under its good declared shape."""
    def build(s: Served, protocol: str) -> Call:
        c = call_of(ENSEMBLE, s.arrays(ENSEMBLE))
        t = next(t for t in c.tensors if t.name == name)
        other = np.ascontiguousarray(rows(t.data))
        t.json_data = _json_data(T(name, t.datatype, list(other.shape), other))
        t.raw = _blob(T(name, t.datatype, list(other.shape), other))
        return c
    return build


def _size_plus(n: int) -> Callable:
    """A binary header edit: the first input's binary_data_size ``n`` bytes larger."""
    def edit(doc: dict):
        doc["inputs"][0]["parameters"]["binary_data_size"] += n
    return edit


def _tensors(fn: Callable, model: str = ENSEMBLE) -> Callable:
    """A builder changing the list of tensors (missing, extra, duplicated inputs)."""
    def build(s: Served, protocol: str) -> Call:
        c = call_of(model, s.arrays(model))
        c.tensors = fn(s, c.tensors)
        return c
    return build


def _call(**kw) -> Callable:
    return lambda s, protocol: call_of(ENSEMBLE, s.arrays(ENSEMBLE), **kw)


def _raw_cl(content_length: Callable, wait_s: float = TIMEOUT_S) -> Callable:
    """A raw HTTP request whose Content-Length header is ``content_length(len(body))``."""
    def build(s: Served, protocol: str) -> Call:
        c = call_of(ENSEMBLE, s.arrays(ENSEMBLE))
        c.wait_s = wait_s
        c.raw_http = lambda path, body: (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {content_length(len(body))}\r\nConnection: close\r\n\r\n").encode() + body
        return c
    return build


def _binary(header_length: Callable | None = None, blob_edit: Callable | None = None,
            json_edit: Callable | None = None) -> Callable:
    """A good HTTP binary request with its header length, blobs or JSON header changed."""
    return lambda s, protocol: call_of(ENSEMBLE, s.arrays(ENSEMBLE), header_length=header_length,
                                       blob_edit=blob_edit, json_edit=json_edit)


def _grpc(edit: Callable) -> Callable:
    return lambda s, protocol: call_of(ENSEMBLE, s.arrays(ENSEMBLE), grpc_edit=edit)


def _grpc_fewer_raw(r) -> None:
    del r.raw_input_contents[-1]


def _grpc_both(r) -> None:
    r.inputs[0].contents.int64_contents.extend([1])


def _grpc_typed_short(r) -> None:
    """Typed contents only (no raw), the first input one element short."""
    raws = list(r.raw_input_contents)
    del r.raw_input_contents[:]
    for x, raw in zip(r.inputs, raws):
        if x.datatype == "BYTES":
            vals = _unpack_bytes(raw)
            field_ = x.contents.bytes_contents
        else:
            vals = np.frombuffer(raw, WIRE_DTYPE[x.datatype]).tolist()
            field_ = {"INT64": x.contents.int64_contents, "INT32": x.contents.int_contents,
                      "FP32": x.contents.fp32_contents, "FP64": x.contents.fp64_contents}[x.datatype]
        field_.extend(vals[:-1] if x is r.inputs[0] else vals)


def _grpc_extra_raw(r) -> None:
    r.raw_input_contents.append(b"\x00" * 8)


def _huge_id(bad: bool) -> Callable:
    def build(s: Served, protocol: str) -> Call:
        a = s.arrays(ENSEMBLE)
        if bad:
            a["history_ids"][0, -1] = s.unknown_id
        return call_of(ENSEMBLE, a, request_id="x" * HUGE_ID_BYTES)
    return build


def _dup(s: Served, ts: list) -> list:
    return ts + [copy.deepcopy(ts[0])]


def _extra(s: Served, ts: list) -> list:
    a = np.zeros((2, 1), np.int64)
    return ts + [T("no_such_input", "INT64", [2, 1], a)]


def _drop(name: str) -> Callable:
    return lambda s, ts: [t for t in ts if t.name != name]


def _non_utf8(s: Served, a: dict):
    a["history_ids"][0, -1] = b"\xff\xfe\x80bad"


def _cast(name: str, dtype) -> Callable:
    def fn(s: Served, a: dict):
        a[name] = np.ones(a[name].shape, dtype) if a[name].dtype == object else a[name].astype(dtype)
    return fn


def _as_bytes(name: str) -> Callable:
    def fn(s: Served, a: dict):
        a[name] = np.array([str(v).encode() for v in a[name].ravel()], dtype=object).reshape(a[name].shape)
    return fn


def _kinds() -> list[Kind]:
    K = Kind
    E = ENSEMBLE
    hid, hev, uf, rt = "history_ids", "history_events", "user_features", "request_time"
    last = (0, -1)
    ks = [
        # -- datatypes
        K("dtype_fp32_history_ids", E, ALL3, _edit(E, _cast(hid, np.float32)), REJECT,
          "history_ids sent as FP32"),
        K("dtype_int32_history_events", E, ALL3, _edit(E, _cast(hev, np.int32)), REJECT,
          "history_events sent as INT32"),
        K("dtype_bytes_history_events", E, ALL3, _edit(E, _as_bytes(hev)), REJECT,
          "history_events sent as BYTES (decimal strings)"),
        K("dtype_fp64_history_events", E, (BINARY, GRPC), _edit(E, _cast(hev, np.float64)), REJECT,
          "history_events sent as FP64"),
        K("dtype_unknown_name", E, (JSON, GRPC),
          lambda s, p: _retype(call_of(E, s.arrays(E)), hid, "INT65"), REJECT,
          "history_ids with datatype 'INT65' (no such type)"),
        # -- values the validator checks
        K("id_negative", E, ALL3, _edit(E, _put(hid, last, lambda s: b"-3" if s.strings else -3)), REJECT,
          "an item id of -3 (only -1 is padding)"),
        K("id_unknown", E, ALL3, _edit(E, _put(hid, last, lambda s: s.unknown_id)), REJECT,
          "an item id the catalogue does not hold"),
        K("id_int64_min", E, (BINARY, GRPC), _edit(E, _put(hid, last, -2 ** 63)), REJECT,
          "an item id of -2**63", applies=lambda s: None if not s.strings else "string ids"),
        K("id_above_2_63_json", E, (JSON,), _ens_json(_json_put(hid, -1, 2 ** 63)), REJECT,
          "an item id of 2**63 in JSON (beyond int64)", parse=True),
        K("id_2_64_json", E, (JSON,), _ens_json(_json_put(hid, -1, 2 ** 64 + 5)), REJECT,
          "an item id of 2**64 + 5 in JSON", parse=True),
        K("id_below_int64_json", E, (JSON,), _ens_json(_json_put(hid, -1, -2 ** 63 - 1)), REJECT,
          "an item id of -2**63 - 1 in JSON", parse=True),
        K("id_float_json", E, (JSON,), _ens_json(_json_put(hid, -1, 1.5)), REJECT,
          "an item id of 1.5 in INT64 JSON data", parse=True),
        K("id_string_in_int64_json", E, (JSON,), _ens_json(_json_put(hev, -1, "5")), REJECT,
          "an event code \"5\" (a JSON string) in INT64 data", parse=True),
        K("id_bool_json", E, (JSON,), _ens_json(_json_put(hev, -1, True)), REJECT,
          "an event code true (a JSON boolean) in INT64 data", parse=True),
        K("id_non_utf8_bytes", E, (BINARY, GRPC), _edit(E, _non_utf8), REJECT,
          "a string item id that is not UTF-8", applies=_needs_strings),
        K("id_empty_string_after_items", E, (JSON, BINARY, GRPC), _edit(E, _put(hid, last, b"")), REJECT,
          "the padding id \"\" after the items", applies=_needs_strings),
        K("event_above_range", E, ALL3, _edit(E, _put(hev, last, lambda s: s.E + 1)), REJECT,
          "an event code E + 1"),
        K("event_negative", E, ALL3, _edit(E, _put(hev, last, -1)), REJECT, "an event code -1"),
        K("event_zero_for_item", E, (JSON, GRPC), _edit(E, _put(hev, last, 0)), REJECT,
          "event code 0 (padding's) for a real item"),
        K("event_in_padding", E, (JSON, GRPC), _edit(E, _put(hev, (0, 0), 1)), REJECT,
          "an event code in a padding slot"),
        K("feature_above_size", E, ALL3, _edit(E, _put(uf, (0, 0), lambda s: s.sizes[0])), REJECT,
          "user feature 0 coded as its size", applies=_needs_features),
        K("feature_negative", E, ALL3, _edit(E, _put(uf, (0, -1), -1)), REJECT,
          "a user feature coded -1", applies=_needs_features),
        K("request_time_negative", E, ALL3, _edit(E, _put(rt, (1, 0), -1)), REJECT,
          "request_time -1 (before 1970)", applies=_needs_time),
        K("history_all_padding", E, ALL3, _edit(E, _all_padding), REJECT,
          "a row of padding only (no item)"),
        K("padding_after_items", E, (JSON, GRPC), _edit(E, _late_padding), REJECT,
          "padding after the items (right padded)"),
        # -- shapes
        K("shape_rank3", E, ALL3, _shape(hid, lambda s, a: [a.shape[0], 1, a.shape[1]]), REJECT,
          "history_ids declared [2, 1, R]"),
        K("shape_rank1", E, ALL3, _shape(hid, lambda s, a: [a.size]), REJECT,
          "history_ids declared [2R] (no batch axis)"),
        K("shape_last_dim_plus_one", E, ALL3, _edit(E, _widen((hid, hev))), REJECT,
          "history_ids and history_events [2, R + 1]"),
        K("shape_features_last_dim", E, (JSON, GRPC), _edit(E, _widen((uf,))), REJECT,
          "user_features [2, F + 1]", applies=_needs_features),
        K("data_shorter_than_shape", E, ALL3, _data(hid, lambda a: a[:1]), REJECT,
          "history_ids declared [2, R] with the data of 1 row", parse=True),
        K("data_longer_than_shape", E, ALL3, _data(hid, lambda a: np.concatenate([a, a[:1]])), REJECT,
          "history_ids declared [2, R] with the data of 3 rows", parse=True),
        K("batch_zero", E, ALL3, _edit(E, lambda s, a: {k: v[:0] for k, v in a.items()}), REJECT,
          "every input with 0 rows"),
        K("batch_above_max", E, ALL3, _edit(E, lambda s, a: _rows(s, a, s.max_batch + 1)), REJECT,
          "max_batch_size + 1 rows"),
        K("batch_sizes_differ", E, ALL3, _edit(E, _short_batch), REJECT,
          "history_ids of 2 rows, the other inputs 1 row"),
        # -- inputs
        K("input_missing", E, ALL3, _tensors(_drop(hev)), REJECT, "no history_events"),
        K("inputs_none", E, (JSON, GRPC), _tensors(lambda s, ts: []), REJECT, "an empty input list"),
        K("input_unknown_extra", E, ALL3, _tensors(_extra), REJECT, "an extra input 'no_such_input'"),
        K("input_duplicated", E, ALL3, _tensors(_dup), REJECT, "history_ids twice"),
        # -- models, versions, outputs
        K("model_unknown", "grank_no_such_model", ALL3,
          lambda s, p: _retarget(call_of(E, s.arrays(E)), "grank_no_such_model"), REJECT,
          "a model the server does not serve", grpc_codes=("NOT_FOUND",)),
        K("version_unknown", E, ALL3, _call(version="99"), REJECT, "version 99 of the ensemble",
          grpc_codes=("NOT_FOUND",)),
        K("version_not_a_number", E, ALL3, _call(version="abc"), REJECT, "version 'abc'",
          grpc_codes=("INVALID_ARGUMENT", "NOT_FOUND")),
        K("output_unknown", E, ALL3, _call(outputs=("no_such_output",)), REJECT,
          "a requested output the model lacks"),
        # -- sizes
        K("huge_declared_shape", E, (BINARY, GRPC), _shape(hid, lambda s, a: [a.shape[0], 2 ** 40]), REJECT,
          "history_ids declared [2, 2**40] (binary and gRPC only check the declared shape)"),
        K("huge_declared_shape_json", E, (JSON,), _shape(hid, lambda s, a: [1, 2 ** 62]), REJECT,
          "history_ids declared [1, 2**62] in JSON: Triton 2.51 allocates for it and dies",
          crashes_251=True, parse=True),
        K("huge_body", E, ALL3, _huge_body, REJECT,
          "about 10 MB of good rows, more than max_batch_size of them", parse=True),
        K("huge_request_id", E, (JSON, GRPC), _huge_id(False), ANSWER_OR_REJECT,
          "a good request with a 2 MB request id"),
        K("huge_request_id_bad", E, (JSON, GRPC), _huge_id(True), REJECT,
          "an unknown item id and a 2 MB request id"),
        # -- JSON that does not parse or has the wrong structure
        K("json_malformed", E, (JSON,), _body(b"{not json"), REJECT, "'{not json'", parse=True),
        K("json_truncated", E, (JSON,), _body(lambda s, b: b[:len(b) // 2]), REJECT,
          "the first half of a good body", parse=True),
        K("json_top_level_null", E, (JSON,), _body(b"null"), REJECT, "the body 'null'", parse=True),
        K("json_top_level_array", E, (JSON,), _body(b"[]"), REJECT, "the body '[]'", parse=True),
        K("json_no_inputs_field", E, (JSON,), _body(b"{}"), REJECT, "the body '{}'", parse=True),
        K("json_empty_body", E, (JSON,), _body(b""), REJECT, "an empty body", parse=True),
        K("json_inputs_not_a_list", E, (JSON,), _ens_json(lambda d: d.update(inputs={"a": 1})), REJECT,
          "'inputs' an object", parse=True),
        K("json_data_a_string", E, (JSON,), _ens_json(lambda d: d["inputs"][0].update(data="1,2,3")),
          REJECT, "history_ids' data a string", parse=True),
        K("json_data_objects", E, (JSON,),
          _ens_json(lambda d: d["inputs"][1].update(data=[{"v": x} for x in d["inputs"][1]["data"]])),
          REJECT, "history_events' data a list of objects", parse=True),
        K("json_data_ragged_nesting", E, (JSON,), _ens_json(_ragged), ANSWER_OR_REJECT,
          "history_ids' data nested raggedly, the same numbers in order", parse=True),
        K("json_shape_negative", E, (JSON,), _ens_json(lambda d: d["inputs"][0].update(
            shape=[2, -d["inputs"][0]["shape"][1]])), REJECT, "a negative dimension", parse=True),
        K("json_shape_strings", E, (JSON,), _ens_json(lambda d: d["inputs"][0].update(
            shape=[str(x) for x in d["inputs"][0]["shape"]])), REJECT, "dimensions as strings", parse=True),
        K("json_parameters_not_an_object", E, (JSON,), _ens_json(lambda d: d.update(parameters="x")),
          REJECT, "'parameters' a string", parse=True),
        # -- HTTP framing
        K("content_length_shorter", E, (JSON,), _raw_cl(lambda n: n - 30), FRAMING,
          "Content-Length 30 bytes short of the body", parse=True),
        K("content_length_longer", E, (JSON,), _raw_cl(lambda n: n + 30, PENDING_BODY_WAIT_S), FRAMING,
          "Content-Length 30 bytes past the body (the server waits for them)"),
        K("content_length_not_a_number", E, (JSON,), _raw_cl(lambda n: "zz"), FRAMING,
          "Content-Length 'zz'"),
        K("binary_header_length_past_body", E, (BINARY,), _binary(lambda h, n: str(n + 100)), REJECT,
          "Inference-Header-Content-Length 100 bytes past the whole body"),
        K("binary_header_length_negative", E, (BINARY,), _binary(lambda h, n: "-5"), REJECT,
          "Inference-Header-Content-Length -5"),
        K("binary_header_length_not_a_number", E, (BINARY,), _binary(lambda h, n: "abc"), REJECT,
          "Inference-Header-Content-Length 'abc'"),
        K("binary_header_length_short", E, (BINARY,), _binary(lambda h, n: str(h - 10)), REJECT,
          "Inference-Header-Content-Length 10 bytes short: the JSON header is cut", parse=True),
        K("binary_data_truncated", E, (BINARY,), _binary(blob_edit=lambda b: b[:-8]), REJECT,
          "the last 8 bytes of the tensors missing"),
        K("binary_data_size_past_tensors", E, (BINARY,), _binary(json_edit=_size_plus(8)), REJECT,
          "binary_data_size of history_ids 8 bytes larger than its blob"),
        # -- gRPC message structure
        K("grpc_raw_contents_fewer", E, (GRPC,), _grpc(_grpc_fewer_raw), REJECT,
          "one raw_input_contents fewer than inputs"),
        K("grpc_raw_and_typed_contents", E, (GRPC,), _grpc(_grpc_both), REJECT,
          "an input with typed contents besides raw_input_contents"),
        K("grpc_typed_contents_short", E, (GRPC,), _grpc(_grpc_typed_short), REJECT,
          "typed int64_contents one element short"),
        K("grpc_raw_contents_surplus", E, (GRPC,), _grpc(_grpc_extra_raw), ANSWER_OR_REJECT,
          "one raw_input_contents more than inputs"),
    ]
    V = VALIDATE
    ks += [
        K("validate_id_unknown", V, ALL3, _edit(V, _put(hid, last, lambda s: s.unknown_id)), REJECT,
          "grank_validate: an unknown item id"),
        K("validate_event_above_range", V, (JSON, GRPC), _edit(V, _put(hev, last, lambda s: s.E + 1)),
          REJECT, "grank_validate: event code E + 1"),
        K("validate_feature_above_size", V, (BINARY, GRPC), _edit(V, _put(uf, (0, 0), lambda s: s.sizes[0])),
          REJECT, "grank_validate: user feature 0 coded as its size", applies=_needs_features),
        K("validate_request_time_negative", V, (JSON, GRPC), _edit(V, _put(rt, (0, 0), -86400)), REJECT,
          "grank_validate: request_time -86400", applies=_needs_time),
        K("validate_all_padding", V, (BINARY, GRPC), _edit(V, _all_padding), REJECT,
          "grank_validate: a row of padding only"),
        K("validate_dtype_fp32", V, (JSON, GRPC), _edit(V, _cast(hev, np.float32)), REJECT,
          "grank_validate: history_events as FP32"),
        K("validate_batch_sizes_differ", V, (GRPC,), _edit(V, _short_batch), REJECT,
          "grank_validate: inputs of 2 and 1 rows"),
    ]
    U = USER_ENCODER
    ks += [
        K("encoder_id_above_n", U, (GRPC, BINARY), _edit(U, _put(hid, last, lambda s: s.N + 1)), FLAG,
          "grank_user_encoder: dense id N + 1 in row 0"),
        K("encoder_id_negative", U, (GRPC, BINARY), _edit(U, _put(hid, last, -2)), FLAG,
          "grank_user_encoder: dense id -2 in row 0"),
        K("encoder_id_huge", U, (GRPC,), _edit(U, _put(hid, last, 2 ** 62)), FLAG,
          "grank_user_encoder: dense id 2**62 in row 0"),
        K("encoder_id_int64_min", U, (GRPC,), _edit(U, _put(hid, last, -2 ** 63)), FLAG,
          "grank_user_encoder: dense id -2**63 in row 0"),
        K("encoder_event_above_range", U, (GRPC, JSON), _edit(U, _put(hev, last, lambda s: s.E + 1)),
          FLAG, "grank_user_encoder: event code E + 1 in row 0"),
        K("encoder_event_negative", U, (GRPC,), _edit(U, _put(hev, last, -1)), FLAG,
          "grank_user_encoder: event code -1 in row 0"),
        K("encoder_feature_above_size", U, (GRPC,), _edit(U, _put(uf, (0, 0), lambda s: s.sizes[0])),
          FLAG, "grank_user_encoder: user feature 0 coded as its size in row 0", applies=_needs_features),
        K("encoder_feature_negative", U, (GRPC,), _edit(U, _put(uf, (0, -1), -1)), FLAG,
          "grank_user_encoder: a user feature coded -1 in row 0", applies=_needs_features),
        K("encoder_dtype_fp32", U, (GRPC, JSON), _edit(U, _cast(hid, np.float32)), REJECT,
          "grank_user_encoder: history_ids as FP32"),
        K("encoder_batch_above_max", U, (BINARY,), _edit(U, lambda s, a: _rows(s, a, s.max_batch + 1)),
          REJECT, "grank_user_encoder: max_batch_size + 1 rows"),
    ]
    M = MIPS
    emb = "user_embedding"
    ks += [
        K("mips_embedding_nan", M, (GRPC, BINARY, JSON), _edit(M, _put(emb, (0, 0), np.nan)), FLAG,
          "grank_mips: NaN in row 0's user_embedding (a JSON NaN token over HTTP JSON)"),
        K("mips_embedding_inf", M, (GRPC, JSON), _edit(M, _put(emb, (0, 0), np.inf)), FLAG,
          "grank_mips: +inf in row 0's user_embedding"),
        K("mips_embedding_minus_inf", M, (GRPC,), _edit(M, _put(emb, (0, 0), -np.inf)), FLAG,
          "grank_mips: -inf in row 0's user_embedding"),
        K("mips_embedding_1e38", M, (GRPC, BINARY), _edit(M, _put(emb, (0, 0), 1e38)), FLAG,
          "grank_mips: 1e38 in row 0's user_embedding (finite, far beyond any trained vector)"),
        K("mips_history_id_above_n", M, (GRPC,), _edit(M, _put(hid, last, lambda s: s.N + 1)), FLAG,
          "grank_mips: history id N + 1 in row 0"),
        K("mips_history_id_negative", M, (GRPC,), _edit(M, _put(hid, last, -2)), FLAG,
          "grank_mips: history id -2 in row 0"),
        K("mips_dtype_fp64_embedding", M, (GRPC, BINARY), _edit(M, _cast(emb, np.float64)), REJECT,
          "grank_mips: user_embedding as FP64"),
        K("mips_input_missing", M, (GRPC, JSON), _tensors(_drop(hid), M), REJECT,
          "grank_mips: no history_ids"),
    ]
    Rk = RANKER
    ks += [
        K("ranker_embedding_nan", Rk, (GRPC, BINARY), _edit(Rk, _put(emb, (0, 3), np.nan)), FLAG,
          "grank_ranker: NaN in row 0's user_embedding"),
        K("ranker_embedding_inf", Rk, (GRPC,), _edit(Rk, _put(emb, (0, 3), -np.inf)), FLAG,
          "grank_ranker: -inf in row 0's user_embedding"),
        K("ranker_embedding_1e38", Rk, (GRPC,), _edit(Rk, _put(emb, (0, 0), -1e38)), FLAG,
          "grank_ranker: -1e38 in row 0's user_embedding"),
        K("ranker_history_id_above_n", Rk, (GRPC,), _edit(Rk, _put(hid, last, lambda s: s.N + 1)), FLAG,
          "grank_ranker: history id N + 1 in row 0"),
        K("ranker_history_id_negative", Rk, (GRPC, BINARY), _edit(Rk, _put(hid, last, -2)), FLAG,
          "grank_ranker: history id -2 in row 0"),
        K("ranker_event_above_range", Rk, (GRPC,), _edit(Rk, _put(hev, last, lambda s: s.E + 1)), FLAG,
          "grank_ranker: event code E + 1 in row 0"),
        K("ranker_event_negative", Rk, (GRPC,), _edit(Rk, _put(hev, last, -1)), FLAG,
          "grank_ranker: event code -1 in row 0"),
        K("ranker_candidate_zero", Rk, (GRPC,), _edit(Rk, _put("candidate_ids", (0, 0), 0)), FLAG,
          "grank_ranker: candidate id 0 (padding) in row 0"),
        K("ranker_candidate_negative", Rk, (GRPC, JSON), _edit(Rk, _put("candidate_ids", (0, 0), -1)),
          FLAG, "grank_ranker: candidate id -1 in row 0"),
        K("ranker_candidate_above_n", Rk, (GRPC,), _edit(Rk, _put("candidate_ids", (0, 0), lambda s: s.N + 1)),
          FLAG, "grank_ranker: candidate id N + 1 in row 0"),
        K("ranker_request_time_negative", Rk, (GRPC, BINARY), _edit(Rk, _put(rt, (0, 0), -1)), FLAG,
          "grank_ranker: request_time -1 in row 0", applies=_needs_time),
        K("ranker_input_missing", Rk, (GRPC,), _tensors(_drop("candidate_ids"), Rk), REJECT,
          "grank_ranker: no candidate_ids"),
    ]
    C = CATALOGUE
    rid = "ranked_ids"
    ks += [
        K("catalogue_id_zero", C, (GRPC, JSON), _edit(C, _put(rid, (0, 0), 0)), REJECT,
          "grank_catalogue: dense id 0 (padding)"),
        K("catalogue_id_negative", C, (GRPC, BINARY), _edit(C, _put(rid, (0, 0), -1)), REJECT,
          "grank_catalogue: dense id -1"),
        K("catalogue_id_above_n", C, (GRPC, JSON), _edit(C, _put(rid, (0, 0), lambda s: s.N + 1)), REJECT,
          "grank_catalogue: dense id N + 1"),
        K("catalogue_id_huge", C, (GRPC,), _edit(C, _put(rid, (1, -1), 2 ** 62)), REJECT,
          "grank_catalogue: dense id 2**62"),
        K("catalogue_dtype_fp32", C, (GRPC,), _edit(C, _cast(rid, np.float32)), REJECT,
          "grank_catalogue: ranked_ids as FP32"),
        K("catalogue_deployment_mismatch", C, (GRPC, JSON), _edit(C, _put(DEPLOYMENT, (1, 0), 10 ** 6)),
          REJECT, "grank_catalogue: deployment 1000000, a version that did not validate the request",
          applies=lambda s: None if DEPLOYMENT in s.inputs[CATALOGUE] else "the catalogue takes no deployment"),
    ]
    return ks


def _retype(c: Call, name: str, datatype: str) -> Call:
    next(t for t in c.tensors if t.name == name).datatype = datatype
    return c


def _retarget(c: Call, model: str) -> Call:
    c.model = model
    return c


def _all_padding(s: Served, a: dict):
    a["history_ids"][0] = a["history_ids"][0, 0]   # the row's own padding id (-1, "" or 0)
    a["history_events"][0] = 0


def _late_padding(s: Served, a: dict):
    a["history_ids"][0, -1] = a["history_ids"][0, 0]   # the row's own padding id
    a["history_events"][0, -1] = 0


def _widen(names) -> Callable:
    def fn(s: Served, a: dict):
        for n in names:
            pad = a[n][:, :1].copy()
            a[n] = np.concatenate([pad, a[n]], 1)
    return fn


def _short_batch(s: Served, a: dict):
    return {k: (v if k == "history_ids" else v[:1]) for k, v in a.items()}


def _ragged(doc: dict):
    t = next(t for t in doc["inputs"] if t["name"] == "history_ids")
    flat, R = t["data"], t["shape"][1]
    t["data"] = [flat[:R], flat[R:R + 5], flat[R + 5:]]


KINDS: list[Kind] = _kinds()


# ---------------------------------------------------------------------------------------------
# judging an outcome


def _short(msg: str) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= MESSAGE_CHARS else msg[:MESSAGE_CHARS - 3] + "..."


def _is_error(o: Outcome) -> bool:
    return o.outputs is None


def _rejected(kind: Kind, protocol: str, o: Outcome) -> tuple[str, str] | None:
    """(status, verdict) when ``o`` is an acceptable rejection for ``kind``, else None."""
    if o.how == "grpc" and o.code in kind.grpc_codes and o.message:
        return o.code, "ok"
    if o.how == "http" and o.code.isdigit() and 400 <= int(o.code) < 500 and o.message:
        return o.code, "ok"
    if (o.how == "http" and o.code == "500" and kind.parse and protocol in (JSON, BINARY)
            and o.message):
        return "500 frontend-500", "accepted"
    return None


def _same(a: np.ndarray, b: np.ndarray, exact: bool) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if exact or a.dtype == object or not np.issubdtype(a.dtype, np.floating):
        return bool(np.array_equal(a, b))
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-4))


FLAGS = {USER_ENCODER: (None, "user_embedding"), MIPS: ("candidate_ids", "candidate_scores"),
         RANKER: ("ranked_ids", "scores")}


def _flag_check(s: Served, call: Call, outputs: dict) -> str | None:
    """None when each bad row is flagged (ids all -1, scores or embedding all NaN) and every
    other row equals the good answer; else what is wrong."""
    ids_name, val_name = FLAGS[call.model]
    ref = s.ref[call.model]
    for r in range(np.asarray(outputs[val_name]).shape[0]):
        vals = np.asarray(outputs[val_name][r])
        ids = None if ids_name is None else np.asarray(outputs[ids_name][r])
        if r in call.bad_rows:
            if not np.isnan(vals).all():
                how = "finite" if np.isfinite(vals).all() else "not all NaN"
                return f"row {r} not flagged: {val_name} {how} ({_preview(vals)})" + (
                    "" if ids is None else f", {ids_name} {_preview(ids)}")
            if ids is not None and not (ids == -1).all():
                return f"row {r}: {val_name} NaN but {ids_name} not all -1 ({_preview(ids)})"
        else:
            if not _same(vals, ref[val_name][r], False) or (
                    ids is not None and not _same(ids, ref[ids_name][r], True)):
                return f"valid row {r} changed: {val_name} {_preview(vals)} vs {_preview(ref[val_name][r])}"
    return None


def _preview(a) -> str:
    a = np.asarray(a).ravel()
    return "[" + ", ".join(f"{x:.4g}" if isinstance(x, (float, np.floating)) else str(x)
                           for x in a[:3]) + (", ...]" if a.size > 3 else "]")


def judge(s: Served, kind: Kind, protocol: str, call: Call, o: Outcome) -> tuple[str, str, str]:
    """(status, message, verdict) of one outcome: verdict "ok", "accepted" or "FAIL"."""
    msg = _short(o.message)
    if _is_error(o) and any(m in o.message for m in DEAD_STUB):
        return o.code, msg, "FAIL"
    if o.how in ("closed", "timeout"):
        if kind.expect == FRAMING and o.how == "closed":
            return "closed, no answer", msg, "ok"
        return o.how, msg, "FAIL"
    if _is_error(o):
        got = _rejected(kind, protocol, o)
        if got:
            return got[0], msg, got[1]
        if kind.expect == FLAG and o.message:
            return o.code, msg, "ok"   # any error stops the bad row: the contract allows it
        return o.code, msg or "(no message)", "FAIL"
    # an answer
    if kind.expect == FLAG:
        wrong = _flag_check(s, call, o.outputs)
        if wrong is None:
            return "flagged row", "bad rows flagged, the valid row unchanged", "ok"
        return f"{o.code} WRONG ANSWER", _short(wrong), "FAIL"
    if kind.expect == ANSWER_OR_REJECT:
        ref = s.ref[call.model]
        diff = [n for n in ref if n not in o.outputs or not _same(o.outputs[n], ref[n], True)]
        if not diff:
            return o.code, "answered the good arrays' exact answer", "ok"
        return f"{o.code} WRONG ANSWER", _short(f"outputs {diff} differ from the good answer"), "FAIL"
    return f"{o.code} ANSWERED", _short("a bad request was answered: " + ", ".join(
        f"{n} {_preview(v[0])}" for n, v in list(o.outputs.items())[:2])), "FAIL"


# ---------------------------------------------------------------------------------------------
# memory and liveness


def ready(http_url: str) -> bool:
    try:
        status, _ = _get_json(http_url, "/v2/health/ready")
    except OSError:
        return False
    return status == 200


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class Row:
    kind: str
    model: str
    protocol: str
    status: str
    message: str
    verdict: str          # ok, accepted, FAIL, n/a (does not apply), not run
    seconds: float = 0.0
    rss_after: int | None = None
    expect: str = ""


@dataclass
class Report:
    rows: list
    served: dict
    memory: dict              # before, peak, after: bytes (None without a pid)
    good_identical: bool
    good_changed_after: list  # kinds after which the good request answered differently
    alive: bool
    ready: bool
    seconds: float
    include_crashers: bool = False
    largest_growth: tuple = ("", 0)   # (kind/protocol, bytes) of the largest RSS step

    @property
    def failed(self) -> list:
        return [r for r in self.rows if r.verdict == "FAIL"]

    @property
    def ran(self) -> list:
        return [r for r in self.rows if r.verdict in ("ok", "accepted", "FAIL")]

    @property
    def kinds_run(self) -> set:
        return {r.kind for r in self.ran}

    @property
    def protocols(self) -> set:
        return {r.protocol for r in self.ran}


def run(http_url: str, grpc_url: str, server_pid: int | None = None, headers: dict | None = None,
        include_crashers: bool = False, kinds: list | None = None) -> Report:
    """Send every kind (``kinds``, default ``KINDS``) over each of its protocols and check the
    server after each. Kinds flagged ``crashes_251`` are listed but not sent unless
    ``include_crashers``."""
    t0 = time.time()
    s = discover(http_url, grpc_url, headers)
    g = Grpc(grpc_url)
    good_call = call_of(ENSEMBLE, s.arrays(ENSEMBLE))
    good0 = g.send(good_call)
    if good0.outputs is None:
        g.close()
        raise RuntimeError(f"the fixed good request failed before any bad one: {good0.code} {good0.message}")
    sampler = RssSampler(server_pid) if server_pid is not None else None
    if sampler:
        sampler.start()
    mem_before = rss_bytes(server_pid) if server_pid is not None else None
    rows, changed, down = [], [], None
    last_rss, growth = mem_before, ("", 0)
    try:
        for kind in kinds if kinds is not None else KINDS:
            why = kind.applies(s) if kind.applies else None
            for protocol in kind.protocols:
                if why:
                    rows.append(Row(kind.name, kind.model, protocol, "n/a", _short(why), "n/a",
                                    expect=kind.expect))
                    continue
                if kind.crashes_251 and not include_crashers:
                    rows.append(Row(kind.name, kind.model, protocol, "not sent",
                                    "crashes Triton 2.51: sent only with include_crashers", "not run",
                                    expect=kind.expect))
                    continue
                if down:
                    rows.append(Row(kind.name, kind.model, protocol, "not sent", down, "not run",
                                    expect=kind.expect))
                    continue
                row = _one(s, g, http_url, kind, protocol)
                # the server after the kind: alive, ready, the good request unchanged
                problems = []
                if not alive(server_pid):
                    problems.append("server process gone")
                    down = f"server down after {kind.name}/{protocol}"
                elif not ready(http_url):
                    problems.append("not ready")
                else:
                    now = g.send(good_call)
                    if now.outputs is None or not all(
                            _same(now.outputs[n], good0.outputs[n], True) for n in ("item_ids", "scores")):
                        problems.append("good request answered differently")
                        changed.append(f"{kind.name}/{protocol}")
                if problems:
                    row.verdict = "FAIL"
                    row.message = _short("; ".join(problems) + " | " + row.message)
                if server_pid is not None:
                    row.rss_after = rss_bytes(server_pid)
                    if last_rss is not None and row.rss_after - last_rss > growth[1]:
                        growth = (f"{kind.name}/{protocol}", row.rss_after - last_rss)
                    last_rss = row.rss_after
                rows.append(row)
    finally:
        peak = sampler.stop() if sampler else None
        g.close()
    g = Grpc(grpc_url)
    try:
        end = g.send(good_call)
    finally:
        g.close()
    identical = end.outputs is not None and all(
        _same(end.outputs[n], good0.outputs[n], True) for n in ("item_ids", "scores")) and not changed
    mem_after = rss_bytes(server_pid) if server_pid is not None else None
    memory = {"before": mem_before, "peak": None if peak is None else max(peak, mem_after or 0),
              "after": mem_after}
    return Report(rows, s.facts(), memory, identical, changed, alive(server_pid), ready(http_url),
                  time.time() - t0, include_crashers, growth)


def crash_recovery(http_url: str, grpc_url: str, times: int = 3, headers: dict | None = None,
                   timeout_s: float = 300.0) -> list[dict]:
    """Against a server started with ``python -m serve`` (supervised): send the request that
    crashes Triton 2.51 ``times`` times; each time measure the seconds until the ensemble is
    ready again and whether the fixed good request answers as before. Returns one dict per
    crash: answered (what the crashing request got), back_s, identical."""
    kind = next(k for k in KINDS if k.crashes_251)
    s = discover(http_url, grpc_url, headers)
    good = call_of(ENSEMBLE, s.arrays(ENSEMBLE))
    g = Grpc(grpc_url)
    try:
        ref = g.send(good)
    finally:
        g.close()
    out = []
    for _ in range(times):
        t0 = time.time()
        o = send_json(http_url, kind.build(s, JSON))
        time.sleep(0.2)
        while time.time() - t0 < timeout_s:
            try:
                status, _ = _get_json(http_url, f"/v2/models/{ENSEMBLE}/ready")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        back = time.time() - t0
        g = Grpc(grpc_url)
        try:
            now = g.send(good)
        finally:
            g.close()
        same = now.outputs is not None and all(_same(now.outputs[n], ref.outputs[n], True)
                                               for n in ("item_ids", "scores"))
        out.append({"answered": f"{o.code} {o.message}"[:80], "back_s": round(back, 2), "identical": same})
    return out


def _one(s: Served, g: Grpc, http_url: str, kind: Kind, protocol: str) -> Row:
    t = time.time()
    try:
        call = kind.build(s, protocol)
        if protocol == JSON:
            o = send_json(http_url, call)
        elif protocol == BINARY:
            o = send_binary(http_url, call)
        else:
            o = g.send(call)
        status, msg, verdict = judge(s, kind, protocol, call, o)
    except (OSError, http.client.HTTPException) as e:
        status, msg, verdict = "transport error", _short(f"{type(e).__name__}: {e}"), "FAIL"
    except Exception as e:  # noqa: BLE001  a kind that cannot be built or judged fails visibly
        status, msg, verdict = "not judged", _short(f"{type(e).__name__}: {e}"), "FAIL"
    return Row(kind.name, kind.model, protocol, status, msg, verdict, time.time() - t, expect=kind.expect)


# ---------------------------------------------------------------------------------------------
# reporting


def _mb(b) -> str:
    return "n/a" if b is None else f"{b / 2 ** 20:,.1f} MB"


def summary(report: Report) -> str:
    by = {}
    for r in report.rows:
        by[r.verdict] = by.get(r.verdict, 0) + 1
    m = report.memory
    lines = [
        f"- {len(report.kinds_run)} kinds run ({len(report.ran)} requests) over "
        f"{', '.join(sorted(report.protocols))} in {report.seconds:.1f} s; "
        + ", ".join(f"{v}: {n}" for v, n in sorted(by.items())),
        f"- served: {', '.join(f'{k} {v}' for k, v in report.served.items())}",
        f"- memory (tritonserver and its stubs, summed VmRSS): before {_mb(m['before'])}, "
        f"peak {_mb(m['peak'])}, after {_mb(m['after'])}"
        + (f"; largest step {_mb(report.largest_growth[1])} at {report.largest_growth[0]}"
           if report.largest_growth[0] else ""),
        f"- good request over gRPC identical after every kind and at the end: "
        f"{'yes' if report.good_identical else 'no'}"
        + (f" (changed after {', '.join(report.good_changed_after[:5])})" if report.good_changed_after else ""),
        f"- server alive at the end: {'yes' if report.alive else 'no'}; ready: {'yes' if report.ready else 'no'}",
    ]
    if report.failed:
        lines.append(f"- FAIL: {', '.join(f'{r.kind}/{r.protocol}' for r in report.failed)}")
    return "\n".join(lines)


def markdown(report: Report) -> str:
    """The table (kind | model | protocol | status | message | verdict) and a summary."""
    def esc(x) -> str:
        return str(x).replace("|", "\\|")
    lines = ["| kind | model | protocol | status | message | verdict |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.kind} | {r.model} | {r.protocol} | {esc(r.status)} | {esc(r.message)} | {r.verdict} |"
              for r in report.rows]
    return "\n".join(lines) + "\n\n" + summary(report) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serve.badinput", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http-url", default="localhost:8000")
    ap.add_argument("--grpc-url", default="localhost:8001")
    ap.add_argument("--pid", type=int, default=None, help="tritonserver's pid: liveness and memory")
    ap.add_argument("--admin-key-file", default=None,
                    help="file holding the management key (else $GRANK_ADMIN_KEY), for config reads")
    ap.add_argument("--markdown", default=None, help="write the table and summary here")
    ap.add_argument("--include-crashers", action="store_true",
                    help="also send the kinds that crash Triton 2.51 (a supervised server only)")
    ap.add_argument("--passes", type=int, default=1, metavar="N",
                    help="run the suite N times on the same server and print the memory after each "
                         "pass: whether it comes back to the level the first pass left")
    ap.add_argument("--crash-recovery", type=int, default=0, metavar="N",
                    help="instead: crash a supervised server (python -m serve) N times and time its return")
    a = ap.parse_args(argv)
    from serve.admin import headers as admin_headers
    from serve.admin import read_key
    headers = admin_headers("http", read_key(a.admin_key_file)) or None
    if a.crash_recovery:
        rows = crash_recovery(a.http_url, a.grpc_url, a.crash_recovery, headers)
        for r in rows:
            print(json.dumps(r))
        return 0 if all(r["identical"] for r in rows) else 1
    if a.passes < 1:
        ap.error(f"--passes must be at least 1, got {a.passes}")
    if a.passes > 1 and a.include_crashers:
        ap.error("--passes N > 1 measures one server's memory across passes; --include-crashers restarts it")
    reports = []
    for i in range(a.passes):
        reports.append(run(a.http_url, a.grpc_url, a.pid, headers, a.include_crashers))
        if a.passes > 1:
            m = reports[-1].memory
            print(f"pass {i + 1}/{a.passes}: memory before {_mb(m['before'])}, peak {_mb(m['peak'])}, "
                  f"after {_mb(m['after'])}", flush=True)
    report = reports[0]
    text = markdown(report)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text)
    print(text if not a.markdown else summary(report))
    bad = [i for i, r in enumerate(reports) if r.failed or not (r.alive and r.ready and r.good_identical)]
    for i in (i for i in bad if i > 0):     # the first pass's summary is printed above
        print(f"pass {i + 1}:\n{summary(reports[i])}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
