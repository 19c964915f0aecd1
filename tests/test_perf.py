"""perf_analyzer runs against the real server with real-user input data and leaves its CSV,
log, exact command and plot behind; tune records its rows; the report rewrites only the
generated part of PERFORMANCE.md."""
import json
import shlex

import pytest

from client.grank_client import GRankClient
from perf.sweep import sweep, write_input_data


def test_input_data_is_real_users_in_signature_shapes(triton_server, ml100k, tmp_path):
    c = GRankClient(triton_server.grpc_url, "grpc")
    d = json.loads(write_input_data(c, ml100k, tmp_path / "in.json", n_users=20).read_text())["data"]
    assert len(d) == 20
    names = [t["name"] for t in c.client.get_model_config("grank", as_json=True)["config"]["input"]]
    assert "request_time" in names  # the default Ranker counts popularity before the request
    for e in d:
        assert set(e) == set(names)
        assert e["request_time"]["shape"] == [1] and e["request_time"]["content"][0] > 0
        assert e["history_ids"]["shape"] == [c.history_length] and len(e["history_ids"]["content"]) == c.history_length
        ids = e["history_ids"]["content"]  # the data set's own ids, -1 in padding
        assert max(ids) > 0 and set(ids) - {-1} <= set(ml100k.item_ids[1:].tolist())


def test_short_concurrency_sweep(triton_server, ml100k, tmp_path):
    c = GRankClient(triton_server.grpc_url, "grpc")
    res = sweep(c, ml100k, triton_server.grpc_url, "grpc", tmp_path, concurrency="1:2:1", interval_ms=1000,
                stability=100)  # a smoke run on a busy machine: any stable-ish window will do
    assert [r["load"] for r in res["rows"]] == [1, 2]
    for r in res["rows"]:
        assert r["qps"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
    assert (tmp_path / "perf.png").stat().st_size > 0
    assert (tmp_path / "command.txt").read_text().startswith(res["command"].split()[0])
    log = (tmp_path / "perf_analyzer.log").read_text()
    assert "Composing models" in log and "grank_ranker" in log  # per-model breakdown


LOG = """Request concurrency: 2
  Client: 
    Throughput: 93.1 infer/sec
  Composing models: 
  grank_mips, version: 1
      Inference count: 1000
      Execution count: 400
      Successful request count: 1000
      Avg request latency: 1369 usec (overhead 6 usec + queue 197 usec + compute input 36 usec + compute infer 978 usec + compute output 152 usec)

  grank_ranker, version: 1
      Inference count: 1000
      Execution count: 1000
      Avg request latency: 6128 usec (overhead 8 usec + queue 207 usec + compute input 40 usec + compute infer 4721 usec + compute output 1152 usec)

Request concurrency: 4
  Composing models: 
  grank_mips, version: 1
      Inference count: 10
      Execution count: 5
      Avg request latency: 1 usec (overhead 0 usec + queue 2000 usec + compute input 1 usec + compute infer 3000 usec + compute output 1 usec)
"""


def test_breakdown_parsed_per_load_and_model():
    from perf.tune import parse_breakdown
    b = parse_breakdown(LOG)
    assert sorted(b) == [2.0, 4.0]
    assert b[2.0]["grank_mips"] == {"avg_batch": 2.5, "queue_ms": 0.197, "compute_infer_ms": 0.978,
                                    "compute_input_ms": 0.036, "compute_output_ms": 0.152}
    assert b[2.0]["grank_ranker"]["compute_infer_ms"] == 4.721 and b[4.0]["grank_mips"]["queue_ms"] == 2.0


def test_serving_settings_reach_the_configs_and_bad_ones_are_refused(tiny_repository, tiny_cfg, ml100k, tmp_path):
    import pytest

    from export.repository import Serving
    from grank.data import schema
    from perf.tune import variant_repository
    r = variant_repository(tiny_repository, tmp_path / "repo", tiny_cfg, schema(ml100k),
                           Serving(max_queue_delay_us=0, instances=2, intra_op_threads=1))
    text = (r / "grank_ranker" / "config.pbtxt").read_text()
    assert "max_queue_delay_microseconds: 0" in text and "count: 2" in text
    assert 'key: "intra_op_thread_count"' in text and 'string_value: "1"' in text
    assert "instance_group" not in (r / "grank_validate" / "config.pbtxt").read_text()
    assert (r / "grank_ranker" / "1" / "model.onnx").exists()
    with pytest.raises(ValueError, match="serving.instances"):
        Serving(instances=-1)
    r = variant_repository(tiny_repository, tmp_path / "repo2", tiny_cfg, schema(ml100k), Serving(mips_intra_op_threads=2))
    assert 'string_value: "2"' in (r / "grank_mips" / "config.pbtxt").read_text()
    assert 'string_value: "1"' in (r / "grank_ranker" / "config.pbtxt").read_text()
    with pytest.raises(ValueError, match="serving.mips_intra_op_threads: must be an integer >= 0"):
        Serving(mips_intra_op_threads=-2)


def test_tune_serves_a_variant_and_records_rows(tiny_repository, tiny_cfg, ml100k, tmp_path):
    """A real server on the variant repository, a real perf_analyzer sweep, rows merged and
    rendered: the path `python -m perf tune` takes."""
    from export.repository import Serving
    from perf.ensemble_report import ensemble_markdown
    from grank.data import schema
    from perf.tune import merge, run_variant, variant_repository
    r = variant_repository(tiny_repository, tmp_path / "repo", tiny_cfg, schema(ml100k),
                           Serving(instances=2, intra_op_threads=1))
    rows = run_variant("inst2", r, "grpc", tmp_path / "run", ml100k, ml100k.n_items, concurrency="1:2:1",
                       interval_ms=1000, stability=100)
    assert [x["load"] for x in rows] == [1, 2]
    for x in rows:
        assert x["stage"] == "ensemble" and x["qps"] > 0 and 0 < x["p50_ms"] <= x["p99_ms"]
        assert set(x["models"]) == {"grank_validate", "grank_user_encoder", "grank_mips", "grank_ranker",
                                    "grank_catalogue"}
        words = x["command"].split()
        assert words[0].endswith("perf_analyzer") and words[1:3] == ["-m", "grank"]
        assert not [w for w in words if w.startswith("/")], x["command"]  # nothing machine-specific
    docs = tmp_path / "docs"
    docs.mkdir()
    merge(rows, docs)
    perf = json.loads((docs / "performance.json").read_text())
    merge(rows[:1], docs)  # a rerun of the same variant replaces its rows
    assert len(json.loads((docs / "performance.json").read_text())["rows"]) == 1
    md = "\n".join(ensemble_markdown(perf, docs))
    assert "| inst2 | grpc |" in md and (docs / "ensemble_tuning.png").stat().st_size > 0


def test_big_catalogue_graphs_keep_real_ids_and_pass_parity(tiny_trained, ml100k, tmp_path):
    import onnx

    from grank.signatures import MIPS, RANKER
    from perf.tune import big_catalogue_models
    _, cfg, out, _ = tiny_trained
    n = ml100k.n_items + 3000
    layouts = big_catalogue_models(out / "best.pt", n, tmp_path, shards=(1, 2))  # raises unless parity holds
    from grank.mips import block_size, shard_bounds
    from grank.signatures import MIPS_MERGE, mips_shard
    paths = layouts[1]
    block = block_size(n + 1, cfg.eval.k1)
    assert block  # a catalogue this size takes the two-step top-k: its table is padded
    half = shard_bounds(n, 2)[1]
    for name, rows in ((MIPS, n + 1), (RANKER, n + 1), (mips_shard(0), half + 1)):
        m = onnx.load(str(layouts[2 if name == mips_shard(0) else 1][name]))
        # the table as stored ([rows, d], or folded into [d, rows] for the MatMul), padded to a block
        scan = block_size(rows, cfg.eval.k1) if name != RANKER else 0
        want = rows + (-rows) % scan if scan else rows
        table = [i for i in m.graph.initializer if sorted(i.dims) == sorted([want, cfg.model.d_model])]
        assert table, f"{name}: no {want} x d item table"
    assert sorted(layouts[2]) == sorted([mips_shard(0), mips_shard(1), MIPS_MERGE, RANKER])
    assert layouts[2][RANKER] == paths[RANKER]  # one Ranker graph for every layout


def test_shape_variant_is_re_exported_with_its_own_shapes_and_quality(tiny_trained, ml100k, tmp_path):
    """`python -m perf tune --variants history.../k1_...`: a parity-checked export at the new
    shape, configs and validator limits that say it, and the shape's own test quality."""
    from grank.evaluate import evaluate_model
    from grank.data import split
    from perf.tune import shape_repository
    model, cfg, out, _ = tiny_trained
    repo, vcfg, quality = shape_repository(out / "best.pt", "short", {"model.ranker_history": 16, "eval.k1": 30},
                                           tmp_path, ml100k)
    assert (vcfg.model.ranker_history, vcfg.eval.k1) == (16, 30)
    ranker = (repo / "grank_ranker" / "config.pbtxt").read_text()
    assert "dims: [ 16 ]" in ranker and "dims: [ 30 ]" in ranker, ranker
    assert json.loads((repo / "grank_validate" / "1" / "limits.json").read_text())["history_length"] == 16
    base = evaluate_model(model, split(ml100k), "test", cfg.eval, progress=False)
    assert set(quality) == {"HR@10", "NDCG@10"} and 0 <= quality["HR@10"] <= 1
    assert quality != {k: round(base[k], 4) for k in quality}  # another shape, its own numbers


def test_ensemble_rows_say_which_ranker_and_day_they_measured(tmp_path):
    """Rows of other days (other machines, another Ranker) stay in performance.json beside new
    ones; the report must say which is which, and plot each day on its own axes."""
    from grank.config import make_config
    from perf.ensemble_report import ensemble_markdown, plot_panels
    from perf.tune import ranker_kind
    assert ranker_kind(make_config("tiny", "grank")) == "fused+popularity"
    assert ranker_kind(make_config("tiny", "grank"), blended=True) == "fused+popularity+blend"
    assert ranker_kind(make_config("tiny", "generator_only")) == "none"
    assert ranker_kind(make_config("tiny", "grank", overrides={"model.ranker_popularity": False})) == "fused"

    def row(method, load, day, ranker, gflops=None):
        r = {"stage": "ensemble", "method": method, "protocol": "grpc", "N": 10, "load_kind": "concurrency",
             "load": load, "qps": 10.0 * load, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "command": "pa",
             "R": 4, "k1": 8, "date": day, "ranker": ranker}
        if gflops:  # mipsbench.floor.measured_rates
            r["machine"] = {"cpu": "x86_64", "cores": 2, "read_bandwidth_gbs": 30.0, "gemm_gflops": gflops}
        return r
    rows = [row("old", 1, "2026-11-23", "residual"), row("old", 2, "2026-11-23", "residual"),
            row("new", 1, "2026-11-24", "fused+popularity", 218.7)]
    md = "\n".join(ensemble_markdown({"rows": rows}, tmp_path))
    assert "| old | grpc |" in md and "| residual, 2026-11-23 |" in md  # no machine recorded
    assert "| new | grpc |" in md and "| fused+popularity, 2026-11-24, 219 GFLOP/s |" in md
    assert (tmp_path / "ensemble_tuning.png").stat().st_size > 0
    # never one set of axes for two runs: other days, or one day on two machines
    other = row("same_day", 1, "2026-11-24", "fused+popularity", 70.0)
    groups = {("old", "grpc"): rows[:2], ("new", "grpc"): rows[2:], ("same_day", "grpc"): [other]}
    assert plot_panels(groups) == ["2026-11-23", "2026-11-24, 219 GFLOP/s", "2026-11-24, 70 GFLOP/s"]


def test_report_keeps_the_hand_written_part_and_rewrites_the_rest(tmp_path):
    """PERFORMANCE.md: text above the marker line is kept byte for byte, everything below it is
    regenerated; a new file gets the marker at the top; a file without it is refused and kept."""
    from perf.report import MARKER, write_generated
    md = tmp_path / "PERFORMANCE.md"
    assert MARKER == ("<!-- generated: everything below this line is written by python -m perf report "
                      "from docs/performance.json -->")
    write_generated(md, "## Old\n\nold rows\n")  # no file yet
    assert md.read_text() == MARKER + "\n\n## Old\n\nold rows\n"
    md.write_text("# A report without the marker\n")
    with pytest.raises(ValueError, match="has no marker line, so regenerating it would overwrite"):
        write_generated(md, "## Old\n")
    assert md.read_text() == "# A report without the marker\n"
    summary = "# Performance\n\nHand-written: the served ensemble needs 3 machines.\n" \
              f"A quoted marker is not one: `{MARKER}`\n\n"
    md.write_text(summary + MARKER + "\n\n## Old\n\nstale rows\n")
    write_generated(md, "## New\n\nfresh rows")
    assert md.read_text() == summary + MARKER + "\n\n## New\n\nfresh rows\n"
    write_generated(md, "## New\n\nfresh rows")  # idempotent
    assert md.read_text() == summary + MARKER + "\n\n## New\n\nfresh rows\n"


def test_report_command_renders_every_section_from_the_rows(tmp_path, capsys):
    """`python -m perf report --docs DIR`: MIPS (CPU and GPU) and ensemble sections from
    DIR/performance.json, the hand-written summary kept; without rows it says what to run."""
    from perf.__main__ import main
    from perf.report import MARKER
    assert main(["report", "--docs", str(tmp_path)]) == 2
    assert "make bench" in capsys.readouterr().err and not (tmp_path / "PERFORMANCE.md").exists()
    cpu = {"stage": "mips", "method": "grank_mips", "N": 1000, "k": 10, "batch": 1, "qps": 100.0, "p50_ms": 1.0,
           "p99_ms": 2.0, "recall": 1.0, "recall_target": None, "floor_ms": 0.5, "p50_over_floor": 2.0,
           "build_s": 0.1, "memory_mb": 1.0, "params": {}}
    gpu = {**cpu, "method": "torch_cuda_fp32", "precision": "fp32", "device": "Fake GPU"}
    ens = {"stage": "ensemble", "method": "default", "protocol": "grpc", "N": 1000, "load_kind": "concurrency",
           "load": 1, "qps": 50.0, "p50_ms": 10.0, "p95_ms": 15.0, "p99_ms": 20.0, "command": "perf_analyzer -m grank"}
    rates = {"cpu": "x86_64", "cores": 2, "read_bandwidth_gbs": 20.0, "gemm_gflops": 60.0}
    perf = {"machine": rates, "mips_date": "2026-01-01", "geometry": {}, "mixture": {"components": 4, "shrink": 0.2},
            "mips_runs": [{"id": 0, "command": "python -m mipsbench cpu --quick", "date": "2026-01-01", "sizes": [1000],
                           "note": "", **rates}],
            "gpus": {"Fake GPU": {"date": "2026-01-01", "torch": "x", "copy_bandwidth_gbs": 1000.0,
                                  "gemm_tflops": {"fp32": 50.0}, "rescore_factor": 2}},
            "rows": [cpu, gpu, ens]}
    (tmp_path / "performance.json").write_text(json.dumps(perf))
    (tmp_path / "PERFORMANCE.md").write_text("# Performance\n\nSummary.\n\n" + MARKER + "\n\nstale\n")
    assert main(["report", "--docs", str(tmp_path)]) == 0
    md = (tmp_path / "PERFORMANCE.md").read_text()
    assert md.startswith("# Performance\n\nSummary.\n\n" + MARKER + "\n\n## MIPS stage\n") and "stale" not in md
    assert "`python -m mipsbench cpu --quick`" in md and "### N = 1,000, k = 10" in md
    assert "## MIPS stage on a GPU: Fake GPU" in md and "| default | grpc | 1,000 |" in md
    assert md.count(MARKER) == 1
    assert json.loads((tmp_path / "performance.json").read_text()) == perf  # rows read, never written


def test_recorded_commands_hide_the_key_and_this_checkout_s_paths(monkeypatch, tmp_path):
    from perf.sweep import redact
    monkeypatch.chdir(tmp_path)
    cmd = [str(tmp_path / ".venv" / "bin" / "perf_analyzer"), "-m", "grank", "--input-data",
           str(tmp_path / "artifacts" / "in.json"), "-H", "grank-admin-key:s3cret-key-0123456789",
           "--other", "/etc/hosts", f"--csv={tmp_path}/a b/out.csv", "--json", '{"a": 1,  "b": 2}']
    shown = redact(cmd, "s3cret-key-0123456789")
    assert shown.startswith(".venv/bin/perf_analyzer -m grank --input-data artifacts/in.json ")
    assert "s3cret" not in shown and " grank-admin-key:$GRANK_ADMIN_KEY " in shown   # the shell expands it
    assert str(tmp_path) not in shown and "--other hosts" in shown                    # elsewhere: its name
    assert shlex.split(shown)[-3:] == ["--csv=a b/out.csv", "--json", '{"a": 1,  "b": 2}']  # arguments intact
