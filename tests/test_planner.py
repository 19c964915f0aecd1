"""perf.planner: units from measured rows only, with the stated rules (fill time,
headroom, linear-in-N interpolation, no extrapolation for index methods or ensembles)."""
import math

import pytest

from perf.__main__ import main
from perf.planner import plan


def _row(method, n, b, qps, p99, recall=1.0, device=None, target=None):
    return {"stage": "mips", "method": method, "N": n, "k": 500, "batch": b, "qps": qps, "p99_ms": p99,
            "recall": recall, "recall_target": target, **({"device": device} if device else {})}


PERF = {"machine": {"cpu": "test-cpu", "cores": 2, "read_bandwidth_gbs": 10, "gemm_gflops": 100},
        "rows": [_row("grank_mips", 100_000, 1, 1000, 2.0), _row("grank_mips", 1_000_000, 1, 100, 20.0),
                 _row("grank_mips", 100_000, 16, 4000, 8.0), _row("grank_mips", 1_000_000, 16, 400, 80.0),
                 _row("faiss_hnsw", 1_000_000, 1, 500, 4.0, recall=0.95, target=0.95),
                 _row("faiss_hnsw", 1_000_000, 1, 200, 9.0, recall=0.991, target=0.99),
                 _row("torch_cuda_fp16", 1_000_000, 16, 50_000, 1.0, device="GPU-X"),
                 {"stage": "ensemble", "method": "tuned", "protocol": "grpc", "load_kind": "concurrency",
                  "load": 4, "N": 3706, "qps": 300, "p50_ms": 10, "p95_ms": 20, "p99_ms": 30},
                 {"stage": "ensemble", "method": "tuned", "protocol": "grpc", "load_kind": "concurrency",
                  "load": 8, "N": 3706, "qps": 400, "p50_ms": 20, "p95_ms": 60, "p99_ms": 90}]}


def _one(opts, method):
    return next(o for o in opts if o.method == method)


def test_units_follow_measured_throughput_headroom_and_fill_time():
    p = plan(PERF, qps=1000, budget_ms=50, n=1_000_000, headroom=0.8)
    g = _one(p["mips"], "grank_mips")
    # batch 16 would need 15 arrivals at 320/s (47 ms) + 80 ms: over budget, so batch 1
    assert g.setting == "batch 1" and g.unit_qps == 100 and g.units == math.ceil(1000 / 80)
    # index methods count only at recall >= 0.99
    h = _one(p["mips"], "faiss_hnsw")
    assert h.recall == pytest.approx(0.991) and h.units == math.ceil(1000 / 160)
    gpu = _one(p["mips"], "torch_cuda_fp16")
    assert gpu.unit.startswith("GPU (GPU-X)") and gpu.units == 1


def test_catalogue_between_measured_sizes_is_interpolated_in_time_per_query():
    p = plan(PERF, qps=100, budget_ms=100, n=550_000)
    g = _one(p["mips"], "grank_mips")
    b1 = 1 / (0.5 / 1000 + 0.5 / 100)
    # both batches need one unit; batch 1 has the lower p99 (11 ms vs 25.8 ms fill + 44 ms)
    assert g.note == "interpolated" and g.setting == "batch 1"
    assert g.unit_qps == pytest.approx(b1) and g.p99_ms == pytest.approx(11.0)


def test_beyond_the_largest_catalogue_only_exact_scans_extrapolate():
    p = plan(PERF, qps=10, budget_ms=500, n=3_000_000)
    g = _one(p["mips"], "grank_mips")
    assert "EXTRAPOLATED x3.0" in g.note
    assert not [o for o in p["mips"] if o.method == "faiss_hnsw"]
    # ensemble rows were measured on 3,706 items: never used for a bigger catalogue
    assert p["ensemble"] == []


def test_ensemble_takes_the_best_load_within_budget():
    p = plan(PERF, qps=1000, budget_ms=50, n=3706)
    e = _one(p["ensemble"], "tuned (grpc)")
    assert e.setting == "concurrency 4" and e.unit_qps == 300 and e.units == math.ceil(1000 / 240)


@pytest.mark.parametrize("kw, field", [(dict(qps=0), "--qps"), (dict(headroom=1.5), "--headroom"),
                                       (dict(k=2000), "--k")])
def test_bad_targets_name_the_flag(kw, field):
    args = dict(qps=100, budget_ms=50, n=1000) | kw
    with pytest.raises(ValueError, match=field):
        plan(PERF, **args)


def test_cli_prints_plan_and_assumptions(tmp_path, capsys):
    import json
    f = tmp_path / "performance.json"
    f.write_text(json.dumps(PERF))
    csv = tmp_path / "run1" / "perf.csv"
    csv.parent.mkdir()
    csv.write_text("Concurrency,Inferences/Second,p50 latency,p95 latency,p99 latency\n2,150,8000,12000,15000\n")
    assert main(["plan", "--qps", "500", "--p99-ms", "40", "--items", "100000", "--perf", str(f),
                 "--csv", str(csv), "--csv-items", "100000"]) == 0
    out = capsys.readouterr().out
    assert "Assumptions:" in out and "grank_mips" in out and "csv:run1 (grpc)" in out and "test-cpu" in out
    assert main(["plan", "--qps", "-1", "--p99-ms", "40", "--items", "10", "--perf", str(f)]) == 2
    assert "--qps" in capsys.readouterr().err
    assert main(["plan", "--qps", "1", "--p99-ms", "40", "--items", "10", "--perf", str(tmp_path / "no.json")]) == 2


def test_ensemble_options_name_their_served_shape_and_quality():
    """Shapes (perf.tune.SHAPES) trade quality for speed: an option must say which it is."""
    shaped = [{**r, "method": "short", "R": 64, "k1": 500, "HR@10": 0.2954}
              for r in PERF["rows"] if r["stage"] == "ensemble"]
    p = plan({**PERF, "rows": PERF["rows"] + shaped}, qps=1000, budget_ms=50, n=3706)
    assert _one(p["ensemble"], "short (grpc; R 64 x k1 500, test HR@10 0.2954)").unit_qps == 300
    assert _one(p["ensemble"], "tuned (grpc)")  # rows without a recorded shape keep their name
