"""A server started with a management key: key-less management calls are refused, inference and
metrics stay open, the key never reaches the log; and ``serve.deploy`` swaps the model under
load (clients on both protocols keep calling) with no failed request and no request that mixes
two versions, then rolls it back the same way."""
from __future__ import annotations

import shutil
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from client.grank_client import GRankClient
from grank.replay import user_requests
from serve.admin import GRPC_PREFIX, HEADER, RESTRICTED, read_key, server_flags
from serve.deploy import DeployError, current_version, stage, switch, versions_on_disk
from serve.deploy import Server as DeployServer
from serve.server import TritonServer

KEY = "k" * 8 + "3y-for-tests-0123456789"


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory, ml100k, tiny_cfg):
    """Another tiny model of the same data set and shapes (another seed): a retrained model."""
    from dataclasses import replace

    from grank.train import train
    out = tmp_path_factory.mktemp("tiny_seed1")
    train(replace(tiny_cfg, seed=1), ml100k, out, progress=False)
    return out / "best.pt"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, tiny_repository):
    repo = tmp_path_factory.mktemp("deploy") / "repo"
    shutil.copytree(tiny_repository, repo)
    s = TritonServer(repo, work_dir=tmp_path_factory.mktemp("triton_keyed"), admin_key=KEY)
    s.start(timeout=180)
    yield s
    s.stop()


def _http(url, path, method="GET", body=None, headers=None):
    req = urllib.request.Request(f"http://{url}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_key_rules():
    assert server_flags("127.0.0.1", None) == ["--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
                                               "--metrics-address=127.0.0.1"]
    with pytest.raises(ValueError, match="refusing to serve beyond loopback without a management key"):
        server_flags("0.0.0.0", None)
    flags = server_flags("0.0.0.0", KEY)
    assert f"--http-restricted-api={','.join(RESTRICTED)}:{HEADER}={KEY}" in flags
    with pytest.raises(ValueError, match="at least 16 characters"):
        read_key(env={"GRANK_ADMIN_KEY": "short"})
    with pytest.raises(ValueError, match="without spaces, commas, colons"):
        read_key(env={"GRANK_ADMIN_KEY": "a:b" * 10})
    assert read_key(env={"GRANK_ADMIN_KEY": KEY}) == KEY
    assert read_key(env={}) is None


def test_python_m_serve_refuses_an_exposed_server_without_a_key(tmp_path, monkeypatch):
    from serve.__main__ import main
    monkeypatch.delenv("GRANK_ADMIN_KEY", raising=False)
    assert main(["--host", "0.0.0.0", "--repository", str(tmp_path), "--work-dir", str(tmp_path)]) == 2


def test_management_apis_need_the_key_inference_and_metrics_do_not(keyed_server, tiny_export):
    s = keyed_server
    refused = [("POST", "/v2/repository/index", b"{}"), ("POST", "/v2/repository/models/grank/unload", b"{}"),
               ("GET", "/v2/models/grank/config", None), ("GET", "/v2/logging", None),
               ("POST", "/v2/logging", b'{"log_verbose_level": 3}'), ("GET", "/v2/trace/setting", None),
               ("GET", "/v2/models/stats", None), ("GET", "/v2/systemsharedmemory/status", None),
               ("POST", "/v2/systemsharedmemory/region/x/register",
                b'{"key": "/grank_probe", "offset": 0, "byte_size": 64}')]
    for method, path, body in refused:
        code, text = _http(s.http_url, path, method, body)
        assert code == 403 and f"expecting header '{HEADER}'" in text, (path, code, text)
        code, text = _http(s.http_url, path, method, body, {HEADER: "wrong-" + KEY})
        assert code == 403, (path, "a wrong key must be refused too")
    assert _http(s.http_url, "/v2/repository/index", "POST", b"{}", {HEADER: KEY})[0] == 200
    g = grpcclient.InferenceServerClient(s.grpc_url)
    for call in (lambda h: g.get_model_repository_index(headers=h), lambda h: g.get_model_config("grank", headers=h),
                 lambda h: g.get_log_settings(headers=h), lambda h: g.unload_model("grank", headers=h)):
        with pytest.raises(Exception, match="restricted"):
            call(None)
    assert g.get_model_config("grank", headers={GRPC_PREFIX + HEADER: KEY}).config.name == "grank"
    assert _http(s.http_url, "/v2/models/grank/ready")[0] == 200       # health: open
    assert _http(s.http_url, "/v2/models/grank")[0] == 200             # metadata: open
    with urllib.request.urlopen(s.metrics_url, timeout=10) as r:       # metrics: open
        assert "nv_inference_request_success" in r.read().decode()
    assert KEY not in s.log_file.read_text()


def test_the_client_works_without_the_key_given_the_schema(keyed_server, tiny_export, tmp_path):
    """A key-less caller cannot read the schema from the server: it gets a clear error, and
    works from the schema file that a key holder saved (`python -m client info --save-schema`)."""
    from client.__main__ import main as client_main
    with pytest.raises(ValueError, match="restricts model configs"):
        GRankClient(keyed_server.grpc_url, "grpc")
    path, key = tmp_path / "schema.json", tmp_path / "key.txt"
    key.write_text(KEY + "\n")
    assert client_main(["info", "--url", keyed_server.grpc_url, "--admin-key-file", str(key),
                        "--save-schema", str(path)]) == 0
    keyed = GRankClient(keyed_server.http_url, "http", admin_key=KEY)
    c = GRankClient(keyed_server.http_url, "http", schema=path)
    assert c.schema == keyed.schema and c.max_batch_size is None and keyed.max_batch_size == 256
    d = tiny_export.data
    arrays = user_requests(d, np.arange(4), c.history_length, c.input_names)
    a, b = c.infer(arrays), keyed.infer(arrays)
    np.testing.assert_array_equal(a[0], b[0])
    assert (a.deployment == 1).all()


class Callers:
    """Threads that send one fixed request again and again (gRPC and HTTP) and keep every
    answer: (deployment, ids, scores) or the error."""

    def __init__(self, server, arrays, threads=4):
        self.arrays, self.stop, self.answers, self.errors = arrays, threading.Event(), [], []
        self.server, self.started = server, threading.Barrier(threads + 1)
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i):
        # one client per thread, made in it: the HTTP client's greenlets belong to one thread
        grpc = i % 2 == 0
        c = GRankClient(self.server.grpc_url if grpc else self.server.http_url, "grpc" if grpc else "http",
                        admin_key=KEY, deadline_s=0)
        self.started.wait()
        while not self.stop.is_set():
            try:
                r = c.infer(self.arrays)
                self.answers.append((i, time.monotonic(), r.deployment.copy(), r[0].copy(), r[2].copy()))
            except Exception as e:  # noqa: BLE001  every failure is a finding
                self.errors.append(f"{type(e).__name__}: {e}")

    def __enter__(self):
        for t in self.threads:
            t.start()
        self.started.wait()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_swap_and_rollback_under_load_never_fail_or_mix(keyed_server, tiny_export, second_checkpoint, tmp_path):
    s, repo = keyed_server, keyed_server.repository
    d = tiny_export.data
    probe = GRankClient(s.grpc_url, "grpc", admin_key=KEY)
    arrays = user_requests(d, np.arange(3), probe.history_length, probe.input_names)
    old = probe.infer(arrays)
    assert (old.deployment == 1).all() and current_version(repo) == 1

    deploy = DeployServer(s.http_url, KEY)
    with Callers(s, arrays) as callers:
        time.sleep(1.0)
        v = stage(second_checkpoint, repo, tmp_path / "work", log=lambda *_: None)
        report = switch(repo, deploy, v, log=lambda *_: None)
        time.sleep(1.0)
    assert v == 2 and report["from"] == 1 and report["to"] == 2 and current_version(repo) == 2
    assert not callers.errors, callers.errors[:3]
    new = probe.infer(arrays)
    assert (new.deployment == 2).all()
    assert not np.array_equal(old[2], new[2]), "another seed should score differently"
    by_version = {1: old, 2: new}
    seen = set()
    for _, _, dep, ids, scores in callers.answers:
        assert len(set(dep.tolist())) == 1, "one request, one version"
        ref = by_version[int(dep[0])]
        np.testing.assert_array_equal(ids, ref[0])   # the answer of that version, unmixed
        np.testing.assert_allclose(scores, ref[2], rtol=0, atol=1e-5)
        seen.add(int(dep[0]))
    assert seen == {1, 2}, f"the load must straddle the switch, saw {seen}"
    for i in range(len(callers.threads)):  # per caller, once on the new version never back
        deps = [int(a[2][0]) for a in callers.answers if a[0] == i]
        assert deps == sorted(deps), f"caller {i} went back to the old version"
    assert sorted(deploy.ready_versions("grank_mips")) == [2]  # the old one retired
    # the ensemble keeps its one version (a second one would switch under requests)
    assert sorted(x.name for x in (repo / "grank").iterdir() if x.is_dir()) == ["1"]
    assert deploy.ready_versions("grank") == {1}
    assert versions_on_disk(repo) == [1, 2]                    # kept for a rollback

    with Callers(s, arrays) as callers:
        time.sleep(0.5)
        switch(repo, deploy, 1, log=lambda *_: None)
        time.sleep(1.0)
    assert not callers.errors, callers.errors[:3]
    assert {int(a[2][0]) for a in callers.answers} == {1, 2}
    back = probe.infer(arrays)
    assert (back.deployment == 1).all()
    np.testing.assert_array_equal(back[0], old[0])


def test_a_checkpoint_with_other_shapes_is_refused_and_nothing_changes(keyed_server, ml100k, tiny_cfg,
                                                                        second_checkpoint, tmp_path):
    from dataclasses import replace

    from grank.train import train
    cfg = replace(tiny_cfg, eval=replace(tiny_cfg.eval, k1=tiny_cfg.eval.k1 - 10))  # MIPS [k1] changes
    train(cfg, ml100k, tmp_path / "k1", progress=False)
    repo = keyed_server.repository
    before = (current_version(repo), versions_on_disk(repo))
    with pytest.raises(DeployError, match="served shapes differ"):
        stage(tmp_path / "k1" / "best.pt", repo, tmp_path / "work", log=lambda *_: None)
    assert (current_version(repo), versions_on_disk(repo)) == before
    with pytest.raises(DeployError, match="already serving"):
        switch(repo, DeployServer(keyed_server.http_url, KEY), before[0])
    staged = stage(second_checkpoint, repo, tmp_path / "work2", log=lambda *_: None)
    with pytest.raises(DeployError, match="loading grank_validate"):
        switch(repo, DeployServer(keyed_server.http_url, None), staged)  # no key: refused, undone
    assert current_version(repo) == before[0]
    assert "version_policy: { specific: { versions: [ %d ] } }" % before[0] in (repo / "grank_mips" / "config.pbtxt").read_text()
    c = GRankClient(keyed_server.grpc_url, "grpc", admin_key=KEY)
    assert (c.infer(user_requests(ml100k, np.arange(2), c.history_length, c.input_names)).deployment
            == before[0]).all()


def test_a_corrupt_model_in_a_swap_is_refused_under_load_and_the_old_version_keeps_serving(
        keyed_server, tiny_export, second_checkpoint, tmp_path):
    s, repo = keyed_server, keyed_server.repository
    cur = current_version(repo)
    v = stage(second_checkpoint, repo, tmp_path / "work", log=lambda *_: None)
    (repo / "grank_ranker" / str(v) / "model.onnx").write_bytes(b"not an onnx file")
    probe = GRankClient(s.grpc_url, "grpc", admin_key=KEY)
    arrays = user_requests(tiny_export.data, np.arange(3), probe.history_length, probe.input_names)
    with Callers(s, arrays) as callers:
        time.sleep(0.5)
        with pytest.raises(DeployError, match="grank_ranker"):
            switch(repo, DeployServer(s.http_url, KEY), v, log=lambda *_: None)
        time.sleep(0.5)
    assert not callers.errors, callers.errors[:3]
    assert {int(a[2][0]) for a in callers.answers} == {cur}
    assert current_version(repo) == cur and (probe.infer(arrays).deployment == cur).all()
    assert sorted(DeployServer(s.http_url, KEY).ready_versions("grank_validate")) == [cur]  # v unloaded again


def test_a_model_that_fails_to_load_at_start_stops_the_start_with_its_error(tiny_repository, tmp_path):
    from serve.__main__ import main
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository, repo)
    (repo / "grank_mips" / "1" / "model.onnx").write_bytes(b"\x00" * 64)
    with pytest.raises(RuntimeError, match="grank_mips"):
        TritonServer(repo, work_dir=tmp_path / "t1").start(timeout=120)
    assert main(["--repository", str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                 "--work-dir", str(tmp_path / "t2"), "--timeout", "120"]) == 1


def test_new_items_ship_as_a_deployment_and_are_served_at_once(keyed_server, tiny_trained, ml100k, tmp_path):
    """Items with content features and no interactions: add-items, deploy, and the served
    catalogue takes them in histories at once (an unknown id before)."""
    from grank.new_items import add_items
    _, _, out, _ = tiny_trained
    (tmp_path / "new.csv").write_text("item_id,name,genre,year\n90001,New (1998),Comedy,1990-91\n")
    add_items(out / "best.pt", tmp_path / "new.csv", tmp_path / "best+new.pt")
    s, repo = keyed_server, keyed_server.repository
    c = GRankClient(s.grpc_url, "grpc", admin_key=KEY)
    with pytest.raises(Exception, match="90001"):
        c.recommend([1, 2, 90001])
    v = stage(tmp_path / "best+new.pt", repo, tmp_path / "work", log=lambda *_: None)
    switch(repo, DeployServer(s.http_url, KEY), v, log=lambda *_: None)
    c = GRankClient(s.grpc_url, "grpc", admin_key=KEY)
    assert c.schema["n_items"] == ml100k.n_items + 1
    recs = c.recommend([1, 2, 90001], k=5)
    assert len(recs) == 5
    arrays = c.request([[1, 2, 90001]])
    assert (c.infer(arrays).deployment == v).all()
