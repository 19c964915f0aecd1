"""The default Ranker counts popularity before the request (``model.ranker_popularity``): served
for real (the tiny repository and Triton server shared by the test run), the request's time enters the
ensemble as ``request_time``, passes the validator (errors name it), reaches the Ranker graph
(which holds the counts by day as a constant), and the served lists equal the offline
pipeline's, replayed at each user's own time."""
import time

import numpy as np
import torch

from client.grank_client import GRankClient
from grank.replay import user_requests
from grank.signatures import ENSEMBLE, MIPS, ONNX_MODELS, RANKER, USER_ENCODER, VALIDATE, signatures
from grank.validation import check_request, limits_dict
from serve.selfcheck import self_check

SCHEMA = {"n_items": 10, "id_type": "int64", "events": ["1", "2", "3", "4", "5"],
          "user_features": [{"name": f"f{i}", "values": ["", "a"]} for i in range(4)]}


def test_request_time_is_an_input_only_where_the_ranker_uses_it(tiny_export, tiny_cfg):
    from grank.config import apply_overrides
    schema = tiny_export.ck["dataset"]
    with_time = signatures(tiny_export.cfg, schema)
    without = signatures(apply_overrides(tiny_cfg, {"model.ranker_popularity": False}), schema)
    for name in (ENSEMBLE, VALIDATE, RANKER):
        t = with_time[name].input("request_time")
        assert (t.dtype, t.dims) == ("int64", (1,))
        assert "request_time" not in [t.name for t in without[name].inputs]
    for name in (USER_ENCODER, MIPS):
        assert with_time[name] == without[name]
    assert tiny_export.problems == {n: [] for n in ONNX_MODELS}  # Polygraphy parity, every graph


def test_the_exported_ranker_reads_the_request_time(tiny_export):
    """ONNX Runtime, not just PyTorch: the same candidates scored at two times differ (the
    popularity-by-day table is inside the graph), and match PyTorch at both."""
    import onnxruntime as ort
    from export.onnx_models import graphs
    a, sig = tiny_export.arrays, signatures(tiny_export.cfg, tiny_export.ck["dataset"])[RANKER]
    sess = ort.InferenceSession(str(tiny_export.paths[RANKER]), providers=["CPUExecutionProvider"])
    ranker = graphs(tiny_export.model, tiny_export.cfg.eval.k1, tiny_export.cfg.eval.k2)[RANKER]
    d = tiny_export.data
    out = {}
    for name, t in (("early", int(d.times.min()) + 86400), ("late", int(d.times.max()))):
        feed = {s.name: a[s.name][:8] for s in sig.inputs}
        feed["request_time"] = np.full((8, 1), t, np.int64)
        got = sess.run(None, feed)
        with torch.no_grad():
            want = ranker(*(torch.as_tensor(feed[s.name]) for s in sig.inputs))
        np.testing.assert_allclose(got[1], want[1].numpy(), atol=1e-3)
        out[name] = got[1]
    assert not np.allclose(out["early"], out["late"], atol=1e-3)


def test_validator_checks_the_request_time():
    limits = limits_dict(SCHEMA, 4, request_time=True)
    ids, rat, feats = np.array([[0, 1, 2, 3]]), np.array([[0, 4, 4, 4]]), np.zeros((1, 4), np.int64)
    assert check_request(ids, rat, feats, limits, np.array([[1_000_000]])) is None
    assert check_request(ids, rat, feats, limits).startswith("request_time: required")
    assert check_request(ids, rat, feats, limits, np.array([[-5]])).startswith("request_time: must be Unix seconds >= 0")
    assert check_request(ids, rat, feats, limits, np.array([1, 2])).startswith("request_time: shape must be [batch, 1]")
    assert check_request(ids, rat, feats, limits, np.array([[1], [2]])).endswith("batch sizes must be equal")
    assert check_request(ids, rat, feats, limits, np.array([[1.5]])).startswith("request_time: dtype must be int64")
    # a model version without the input ignores it
    assert check_request(ids, rat, feats, limits_dict(SCHEMA, 4)) is None


def test_served_lists_equal_the_offline_pipeline_at_each_users_time(triton_server, tiny_export, ml100k):
    """A replayed user goes at the time of the newest interaction it sends; an explicit history
    at the caller's time or the clock's. (Bad times: tests/test_serving.py.)"""
    for proto, url in (("grpc", triton_server.grpc_url), ("http", triton_server.http_url)):
        c = GRankClient(url, proto)
        assert c.needs_time
        req = user_requests(ml100k, [1, 2], c.history_length, c.input_names, exclude_last=1)
        assert req["request_time"][0, 0] == ml100k.times[ml100k.offsets[2] - 2]  # replayed time
        assert self_check(c, tiny_export.model, tiny_export.cfg, tiny_export.ck, ml100k, n_users=30, seed=2) == (30, [])
        explicit = c.request([[1, 2, 3]], request_time=[123_456_789])
        assert explicit["request_time"].tolist() == [[123_456_789]]
        assert abs(int(c.request([[1, 2, 3]])["request_time"][0, 0]) - time.time()) < 60
        assert len(c.recommend([1, 2, 3], k=5)) == 5
