"""The real Triton server (session-scoped fixture ``triton_server``, tiny repository on free ports):
every model answers, the ensemble equals the offline pipeline over gRPC and HTTP for callers
sending the data set's own item ids, bad input gets errors naming the field, and the server
keeps answering afterwards."""
import asyncio
import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client.grank_client import GRankClient
from grank.replay import own_ids
from grank.signatures import CATALOGUE, ENSEMBLE, MIPS, RANKER, USER_ENCODER, VALIDATE, signatures
from serve.selfcheck import self_check

MODULES = {"grpc": grpcclient, "http": httpclient}
WIRE = {np.dtype("int64"): "INT64", np.dtype("float32"): "FP32", np.dtype(object): "BYTES"}


def raw_infer(server, protocol, model, arrays, sig):
    m = MODULES[protocol]
    c = m.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    ins = []
    for t in sig.inputs:
        a = arrays[t.name]
        x = m.InferInput(t.name, list(a.shape), WIRE.get(a.dtype, "FP64"))
        x.set_data_from_numpy(a)
        ins.append(x)
    r = c.infer(model, ins)
    return {t.name: r.as_numpy(t.name) for t in sig.outputs}


@pytest.fixture(scope="module")
def clients(triton_server):
    return {"grpc": GRankClient(triton_server.grpc_url, "grpc"),
            "http": GRankClient(triton_server.http_url, "http")}


def _sigs(tiny_export):
    return signatures(tiny_export.cfg, tiny_export.ck["dataset"])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_composing_model_answers(triton_server, tiny_export, protocol):
    sigs, a = _sigs(tiny_export), tiny_export.arrays
    batch = {k: v[:8] for k, v in a.items()}
    own = {**batch, "history_ids": own_ids(tiny_export.data, batch["history_ids"])}
    out = raw_infer(triton_server, protocol, VALIDATE, own, sigs[VALIDATE])
    np.testing.assert_array_equal(out["valid_history_ids"], batch["history_ids"])  # made dense
    np.testing.assert_array_equal(out["valid_history_events"], batch["history_events"])
    assert (out["deployment"] == 1).all()  # the validator's version, for the catalogue step
    out = raw_infer(triton_server, protocol, USER_ENCODER, batch, sigs[USER_ENCODER])
    np.testing.assert_allclose(out["user_embedding"], batch["user_embedding"], atol=1e-4, rtol=1e-4)
    out = raw_infer(triton_server, protocol, MIPS, batch, sigs[MIPS])
    np.testing.assert_allclose(out["candidate_scores"], batch["candidate_scores"], atol=1e-3)
    out = raw_infer(triton_server, protocol, RANKER, batch, sigs[RANKER])
    np.testing.assert_allclose(out["scores"], batch["scores"], atol=1e-3)
    batch["deployment"] = np.ones((8, 1), np.int64)
    out = raw_infer(triton_server, protocol, CATALOGUE, batch, sigs[CATALOGUE])
    assert (out["deployment"] == 1).all()
    d = tiny_export.data
    np.testing.assert_array_equal(out["item_ids"], d.item_ids[batch["ranked_ids"]])  # the data set's ids
    assert [n.decode() for n in out["item_names"][0]] == [d.names[i] for i in batch["ranked_ids"][0]]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ensemble_equals_offline_pipeline_for_50_real_users(clients, tiny_export, protocol):
    assert self_check(clients[protocol], tiny_export.model, tiny_export.cfg, tiny_export.ck,
                      tiny_export.data, n_users=50, seed=1) == (50, [])


def test_the_client_learns_everything_from_the_server(clients, tiny_export):
    c = clients["grpc"]
    assert (c.history_length, c.k2) == (tiny_export.cfg.model.ranker_history, tiny_export.cfg.eval.k2)
    assert c.schema["dataset"] == "ml-100k" and not c.strings and c.needs_time
    assert c.events == ["1", "2", "3", "4", "5"]
    assert [f["name"] for f in c.features] == ["gender", "age", "occupation", "zip_digit"]


def test_async_client(clients, ml100k):
    items = [int(m) for m in ml100k.item_ids[1:6]]
    sync = clients["grpc"].recommend(items, k=5, request_time=880_000_000)
    for proto in ("grpc", "http"):
        got = asyncio.run(clients[proto].recommend_async(items, k=5, request_time=880_000_000))
        assert [r.item_id for r in got] == [r.item_id for r in sync]


def test_recommend_explicit_history_with_names(clients, ml100k):
    movies = [int(m) for m in ml100k.item_ids[1:6]]
    recs = clients["http"].recommend(movies, events=["5", "4", 5, "3", 4], k=10,
                                     user_features={"gender": "F", "occupation": "writer"})
    assert len(recs) == 10
    for r in recs:  # the data set's own ids with their names
        assert r.name == ml100k.names[int(np.flatnonzero(ml100k.item_ids == r.item_id)[0])]
    assert not {r.item_id for r in recs} & set(movies)  # the history is never recommended
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)


def _good(tiny_export, n=2):
    """The first ``n`` parity users as a caller sends them: the data set's ids, -1 padding."""
    sig = _sigs(tiny_export)[ENSEMBLE]
    a = {t.name: tiny_export.arrays[t.name][:n].copy() for t in sig.inputs}
    a["history_ids"] = own_ids(tiny_export.data, a["history_ids"])
    return a


def _bad_requests(tiny_export, n_items, R):
    """(description, arrays, words the server's error must contain). Ids the catalogue lacks
    are the server's to catch (only it holds the catalogue)."""
    cases = []
    a = _good(tiny_export); a["history_ids"][0, -1] = -3
    cases.append(("negative id", a, ["history_ids", "-3", "not in the served catalogue"]))
    a = _good(tiny_export); a["history_ids"][1, -2] = 10 ** 9
    cases.append(("unknown id", a, ["history_ids", "1000000000", "not in the served catalogue", "row 1"]))
    a = _good(tiny_export); a["history_ids"][0] = -1; a["history_events"][0] = 0
    cases.append(("empty history", a, ["history_ids", "empty"]))
    a = _good(tiny_export); a["history_ids"][0, -1] = -1; a["history_events"][0, -1] = 0
    cases.append(("padding after items", a, ["history_ids", "padding"]))
    a = _good(tiny_export); a["history_events"][0, -1] = 9
    cases.append(("event out of range", a, ["history_events", "1..5"]))
    a = _good(tiny_export); a["history_events"][0, -1] = 0
    cases.append(("no event for an item", a, ["history_events", "1..5"]))
    a = _good(tiny_export); a["user_features"][0, 2] = 999
    cases.append(("profile out of range", a, ["user_features", "column 2"]))
    a = _good(tiny_export); a["request_time"][1, 0] = -1
    cases.append(("request time before 1970", a, ["request_time", ">= 0", "row 1"]))
    a = _good(tiny_export); a["history_ids"] = a["history_ids"].astype(np.float32)
    cases.append(("wrong dtype", a, ["history_ids", "INT64"]))
    a = _good(tiny_export)
    a = {k: np.concatenate([v, v[:, :1]], 1) if k.startswith("history_") else v for k, v in a.items()}
    cases.append(("history longer than the maximum", a, ["unexpected shape", "history_", f"{R}]"]))
    a = {k: np.repeat(v, 129, 0) for k, v in _good(tiny_export).items()}  # 258 rows > 256
    cases.append(("batch above max_batch_size", a, ["batch-size", "256"]))
    return cases


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(triton_server, tiny_export, ml100k, protocol):
    sig = _sigs(tiny_export)[ENSEMBLE]
    good = _good(tiny_export)
    before = raw_infer(triton_server, protocol, ENSEMBLE, good, sig)
    for what, arrays, words in _bad_requests(tiny_export, ml100k.n_items, tiny_export.cfg.model.ranker_history):
        with pytest.raises(InferenceServerException) as e:
            raw_infer(triton_server, protocol, ENSEMBLE, arrays, sig)
        msg = str(e.value)
        assert all(w.lower() in msg.lower() for w in words), (what, msg)
        assert "[500]" not in msg and "INTERNAL" not in msg, (what, msg)  # the caller's mistake
    after = raw_infer(triton_server, protocol, ENSEMBLE, good, sig)
    np.testing.assert_array_equal(before["item_ids"], after["item_ids"])
    assert triton_server.proc.poll() is None


def test_client_rejects_bad_input_before_sending(clients, tiny_export, ml100k):
    c = clients["grpc"]
    for what, arrays, words in _bad_requests(tiny_export, ml100k.n_items, tiny_export.cfg.model.ranker_history):
        if "not in the served catalogue" in words:
            continue  # the server's to catch: above
        with pytest.raises(ValueError) as e:
            c.infer(arrays)
        field = {"batch-size": "batch", "unexpected shape": "history_ids"}.get(words[0], words[0])
        assert str(e.value).startswith(field), (what, str(e.value))
    with pytest.raises(InferenceServerException, match="item 999999 is not in the served catalogue"):
        c.recommend([1, 999999])
    with pytest.raises(ValueError, match="row 0 is empty"):
        c.recommend([])
    with pytest.raises(ValueError, match="at most"):
        c.recommend([int(m) for m in ml100k.item_ids[1:c.history_length + 2]])
    with pytest.raises(ValueError, match="events: 'loved' is neither an event name"):
        c.recommend([1, 2], events=["5", "loved"])
    with pytest.raises(ValueError, match=r"user_features: unknown \['shoe_size'\]"):
        c.recommend([1, 2], user_features={"shoe_size": 44})
    with pytest.raises(ValueError, match="user_features: gender='X' is neither one of its values"):
        c.recommend([1, 2], user_features={"gender": "X"})


def test_good_and_bad_requests_interleaved_under_concurrency(triton_server, tiny_export, ml100k):
    """Dynamic batching may put requests from different clients into one batch: a bad request
    must fail alone, and every good one must get its own (correct) answer."""
    sig = _sigs(tiny_export)[ENSEMBLE]
    a = {**tiny_export.arrays, "history_ids": own_ids(tiny_export.data, tiny_export.arrays["history_ids"])}
    bad = _good(tiny_export); bad["history_ids"][0, -1] = 10 ** 9

    def call(i):
        if i % 4 == 3:
            try:
                raw_infer(triton_server, "grpc", ENSEMBLE, bad, sig)
            except InferenceServerException as e:
                return "error", str(e)
            return "no error", None
        row = {t.name: a[t.name][i:i + 1] for t in sig.inputs}
        return "ok", (i, raw_infer(triton_server, "grpc", ENSEMBLE, row, sig)["scores"][0])

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(32)))
    for kind, val in results:
        if kind == "ok":
            i, scores = val
            np.testing.assert_allclose(scores, a["scores"][i], atol=1e-3)
        else:
            assert kind == "error" and "history_ids" in val


def _cmdline(proc_dir) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def test_make_serve_entry_point_starts_restarts_after_a_crash_and_stops_on_ctrl_c(tiny_repository, tmp_path):
    """`python -m serve` (what `make serve` runs): ready banner with the URLs, loopback only;
    the one-request crash of Triton 2.51's HTTP/JSON parser (a declared shape of 2**62
    elements) is caught: the server is restarted, the crash counted and logged, and the same
    request answers the same afterwards; clean exit on SIGINT."""
    p = subprocess.Popen([sys.executable, "-m", "serve", "--repository", str(tiny_repository),
                          "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                          "--work-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    lines, deadline = [], time.time() + 180
    try:
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops the server" in line:
                break
        banner = "".join(lines)
        assert "ready in" in banner and "gRPC" in banner and "metrics" in banner, banner
        assert "bound to 127.0.0.1" in banner, banner
        http_url = next(l.split()[1] for l in lines if l.strip().startswith("HTTP"))
        import http.client
        import json
        import urllib.request
        with urllib.request.urlopen(f"http://{http_url}/v2/models/grank/ready", timeout=5) as r:
            assert r.status == 200
        good = json.dumps({"inputs": [{"name": "history_ids", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]})
        host, port = http_url.split(":")

        def post(body):
            c = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                c.request("POST", "/v2/models/grank_catalogue/infer", body, {"Content-Type": "application/json"})
                r = c.getresponse()
                return r.status, r.read()
            finally:
                c.close()
        assert post(good)[0] == 400  # no deployment input: a clean 400, the server fine
        crash = good.replace("[1, 4]", f"[1, {2 ** 62}]")
        t0 = time.time()
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            post(crash)
        while time.time() - t0 < 120:
            line = p.stdout.readline()
            lines.append(line)
            if "restarted" in line or not line:
                break
        back = time.time() - t0
        text = "".join(lines)
        assert "died with signal SIGSEGV; crash 1" in text and "serving again" in text, text
        assert back < 60, back
        with urllib.request.urlopen(f"http://{http_url}/v2/models/grank/ready", timeout=5) as r:
            assert r.status == 200
        journal = [json.loads(x) for x in (tmp_path / "supervisor.jsonl").read_text().splitlines()]
        assert [e["event"] for e in journal] == ["crash", "restarted"]
        assert (tmp_path / "tritonserver.crash-1.log").exists()

        # a Python stub killed: the supervisor's probe finds it and reloads the model; a client
        # with a deadline retries through it and sees no error
        from serve.deploy import current_version, probe_request
        c = GRankClient(http_url, "http", deadline_s=20)
        req = probe_request(tiny_repository, current_version(tiny_repository))
        before = c.infer(req)
        # this server's stubs only: their binary lives in its work dir (other servers share the repository)
        stubs = [int(q.name) for q in Path("/proc").iterdir() if q.name.isdigit()
                 and f"{tmp_path}/backends/python/triton_python_backend_stub".encode() in _cmdline(q)
                 and b"grank_validate" in _cmdline(q)]
        assert stubs
        for pid in stubs:
            os.kill(pid, signal.SIGKILL)
        t0 = time.time()
        after = c.infer(req)  # retried until the model is back
        np.testing.assert_array_equal(after[0], before[0])
        while time.time() - t0 < 60:
            line = p.stdout.readline()
            lines.append(line)
            if "model reloaded" in line or not line:
                break
        assert "the Python stub of grank_validate died; model reloaded" in "".join(lines), "".join(lines)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0 and "server stopped (1 crash(es) restarted)" in out, out
    finally:
        if p.poll() is None:  # SIGINT first: a killed supervisor would leave tritonserver behind
            p.send_signal(signal.SIGINT)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
