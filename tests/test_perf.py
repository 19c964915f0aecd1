"""perf_analyzer runs against the real server with real-user input data and leaves its CSV,
log, exact command and plot behind."""
import json

from client.grank_client import GRankClient
from perf.sweep import sweep, write_input_data


def test_input_data_is_real_users_in_signature_shapes(triton_server, ml100k, tmp_path):
    c = GRankClient(triton_server.grpc_url, "grpc", data=ml100k)
    d = json.loads(write_input_data(c, tmp_path / "in.json", n_users=20).read_text())["data"]
    assert len(d) == 20
    for e in d:
        assert set(e) == {"history_ids", "history_ratings", "user_features"}
        assert e["history_ids"]["shape"] == [c.history_length] and len(e["history_ids"]["content"]) == c.history_length
        assert max(e["history_ids"]["content"]) > 0


def test_short_concurrency_sweep(triton_server, ml100k, tmp_path):
    c = GRankClient(triton_server.grpc_url, "grpc", data=ml100k)
    res = sweep(c, triton_server.grpc_url, "grpc", tmp_path, concurrency="1:2:1", interval_ms=1000,
                stability=100)  # a smoke run on a busy machine: any stable-ish window will do
    assert [r["load"] for r in res["rows"]] == [1, 2]
    for r in res["rows"]:
        assert r["qps"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
    assert (tmp_path / "perf.png").stat().st_size > 0
    assert (tmp_path / "command.txt").read_text().startswith(res["command"].split()[0])
    log = (tmp_path / "perf_analyzer.log").read_text()
    assert "Composing models" in log and "grank_ranker" in log  # per-model breakdown
