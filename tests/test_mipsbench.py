"""The MIPS benchmark's pieces (``mipsbench``): exact methods agree with brute force, index
methods are tuned to a MEASURED recall, synthetic catalogues keep the geometry they were fitted
to, runs merge by method and catalogue, the report's bars are computed from the rows; and the
investigations in docs/experiments check their forms agree before they time them."""
import numpy as np
import pytest
import torch

from mipsbench.floor import floor_ms, measured_rates
from mipsbench.geometry import fit_mixture, sample
from mipsbench.measure import best_seconds, latency, recall
from mipsbench.methods import EXACT, INDEXED, REDUCED, TorchTopK, timed, tune


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)) * 2
    items = (centres[rng.integers(0, 40, 12000)] + rng.standard_normal((12000, 32)) * 0.5).astype(np.float32)
    queries = (centres[rng.integers(0, 40, 64)] + rng.standard_normal((64, 32))).astype(np.float32)
    return items, queries


def test_exact_methods_equal_brute_force(clustered):
    items, q = clustered
    k = 50
    ref = np.argsort(-(q @ items.T), 1)[:, :k]
    for M in EXACT + REDUCED:
        m = M()
        m.build(items, k)
        # float ties may swap at the cut; the int8 scan may lose an item its re-score cannot see
        assert recall(m.search(q), ref) > (0.999 if M in EXACT else 0.99), M.name
        m.set_k(items, 20)  # graph methods re-export with the new k, index methods keep their index
        assert m.k == 20 and m.search(q).shape == (len(q), 20)


def test_index_methods_are_tuned_to_a_measured_recall(clustered):
    items, q = clustered
    k = 50
    ex = TorchTopK()
    ex.build(items, k)
    exact = ex.search(q)
    for M in INDEXED:
        m = M()
        m.build(items, k)
        v, r = tune(m, q, exact, 0.95)
        if v is None:
            # HNSW on inner products saturates below 0.95 on these data (0.936 at efSearch 3200):
            # reported as such by the benchmark, never rounded up
            assert M.name == "faiss_hnsw" and 0.5 < r < 0.95, (M.name, r)
            continue
        assert r >= 0.95
        assert recall(m.search(q), exact) == r  # the setting stays applied
        t = timed(m, q, 16, min_seconds=0.05)
        assert t["qps"] > 0 and 0 < t["p50_ms"] <= t["p99_ms"]


def test_mixture_sample_keeps_the_geometry(clustered):
    items, _ = clustered
    mix = fit_mixture(items, k=16)
    s = sample(mix, 20000, seed=3)
    assert s.shape == (20000, 32) and s.dtype == np.float32
    np.testing.assert_allclose(s.mean(0), items.mean(0), atol=0.1)
    n_items, n_s = np.linalg.norm(items, axis=1).mean(), np.linalg.norm(s, axis=1).mean()
    assert abs(n_s - n_items) / n_items < 0.05
    # clustered, not isotropic: the sample's variance is as concentrated in few directions
    # as the data's (isotropic noise would put 5/32 = 16% in the top 5)
    def top5(x):
        ev = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
        return ev[:5].sum() / ev.sum()
    assert abs(top5(s) - top5(items)) < 0.03 and top5(items) > 0.3


def test_floor_is_the_larger_of_bandwidth_and_compute():
    # 1M x 64 fp32 = 256 MB at 64 GB/s = 4 ms; batch 1: 128 MFLOP at 100 GFLOP/s = 1.28 ms
    table = 1_000_000 * 64 * 4
    assert floor_ms(table, 1_000_000, 64, 1, 64, 100) == pytest.approx(4.0)
    assert floor_ms(table, 1_000_000, 64, 256, 64, 100) == pytest.approx(327.68)
    # a half-precision table streams half the bytes: 2 ms
    assert floor_ms(table // 2, 1_000_000, 64, 1, 64, 100) == pytest.approx(2.0)


def test_measured_rates_keep_the_row_field_names():
    """Rows of docs/performance.json name their machine by these fields; old rows must still read."""
    m = measured_rates(25.24, 70.01)
    assert set(m) == {"cpu", "cores", "read_bandwidth_gbs", "gemm_gflops"}
    assert (m["read_bandwidth_gbs"], m["gemm_gflops"]) == (25.2, 70.0) and m["cores"] >= 1


def test_recall_is_a_set_overlap_on_numpy_and_torch():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    got = np.array([[4, 3, 9, 1], [0, 10, 11, 12]])
    assert recall(got, exact) == pytest.approx((3 / 4 + 0) / 2)
    assert recall(torch.from_numpy(got), torch.from_numpy(exact)) == recall(got, exact)
    # an id returned twice counts once (faiss pads missing results with -1, never a real id)
    assert recall(np.array([[1, 1, -1, -1]]), np.array([[1, 2, 3, 4]])) == pytest.approx(0.25)


def test_latency_and_best_seconds_time_what_they_are_given():
    import time
    calls = []
    t = latency(lambda s, e: (calls.append((s, e)), time.sleep(0.002)), n_rows=10, batch=4, min_seconds=0.0,
                max_calls=50, min_calls=5)
    assert t["calls"] == 5 and calls[:3] == [(0, 4), (4, 8), (2, 6)]  # consecutive slices, wrapped
    # bounds that hold however loaded the machine is: every call sleeps at least 2 ms
    assert 2 <= t["p50_ms"] <= t["p99_ms"] and 0 < t["qps"] <= 4 / 0.002
    synced = []
    assert 0.002 <= best_seconds(lambda: time.sleep(0.002), repeats=3, sync=lambda: synced.append(1))
    assert len(synced) == 4  # the warm-up call is synchronised too


def test_mixture_sample_memory_stays_linear_in_the_output(clustered):
    """Sampling goes per component: gathering a Cholesky factor per item would be an [n, d, d]
    float64 stack (32 GB at 1M x 64)."""
    import tracemalloc
    items, _ = clustered
    mix = fit_mixture(items, k=8)
    n = 100_000
    tracemalloc.start()
    out = sample(mix, n, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (n, items.shape[1]) and np.isfinite(out).all()
    assert peak < 16 * out.nbytes, f"peak {peak / 2**20:.0f} MiB for a {out.nbytes / 2**20:.0f} MiB sample"


def _res(rows, bw=20.0):
    return {"machine": {"cpu": "x", "cores": 2, "read_bandwidth_gbs": bw, "gemm_gflops": 60.0},
            "date": "2026-11-23", "geometry": {}, "mixture": {"components": 4, "shrink": 0.2}, "rows": rows}


def test_runs_merge_by_method_and_catalogue(tmp_path):
    """A later run at 5M adds its rows next to an earlier run's 1M rows; a rerun of the same
    (method, N, k) replaces them; GPU rows and other stages are kept; every run is listed."""
    import json

    from mipsbench.cpu import write
    r = lambda m, n, q, **kw: {"stage": "mips", "method": m, "N": n, "k": 500, "batch": 1, "qps": q, **kw}  # noqa: E731
    p = tmp_path / "performance.json"
    p.write_text(json.dumps({"rows": [r("torch_cuda_fp16", 10**6, 9.0, device="GPU"),
                                      {"stage": "ensemble", "method": "default"}]}))
    write(_res([r("grank_mips", 10**6, 1.0), r("faiss_flat", 10**6, 2.0)]), tmp_path, "run A")
    write(_res([r("grank_mips", 5 * 10**6, 3.0)], bw=21.0), tmp_path, "run B", note="5M only")
    write(_res([r("faiss_flat", 10**6, 4.0)]), tmp_path, "run C")
    d = json.loads(p.read_text())
    got = sorted((x["method"], x["N"], x["qps"]) for x in d["rows"] if x["stage"] == "mips" and not x.get("device"))
    assert got == [("faiss_flat", 10**6, 4.0), ("grank_mips", 10**6, 1.0), ("grank_mips", 5 * 10**6, 3.0)]
    assert any(x.get("device") for x in d["rows"]) and any(x["stage"] == "ensemble" for x in d["rows"])
    assert [x["command"] for x in d["mips_runs"]] == ["run A", "run B", "run C"]
    assert d["mips_runs"][1]["note"] == "5M only" and d["mips_runs"][1]["read_bandwidth_gbs"] == 21.0
    # a later run at another k for the same method and size adds timing rows, it does not replace
    # k = 500; its freshness row (per catalogue) replaces the older one
    fresh = lambda k, s: {"stage": "mips_freshness", "method": "grank_mips", "N": 5 * 10**6, "k": k,  # noqa: E731
                          "new_version_s": s}
    write(_res([fresh(500, 50.0)]), tmp_path, "run D")
    write(_res([{**r("grank_mips", 5 * 10**6, 5.0), "k": 2000}, fresh(2000, 60.0)]), tmp_path, "run E")
    d = json.loads(p.read_text())
    mine = [x for x in d["rows"] if x.get("method") == "grank_mips" and x["N"] == 5 * 10**6]
    assert sorted((x["k"], x["qps"]) for x in mine if x["stage"] == "mips") == [(500, 3.0), (2000, 5.0)]
    assert [x["new_version_s"] for x in mine if x["stage"] == "mips_freshness"] == [60.0]


def test_reading_computes_the_bars_from_the_rows():
    """The report's bar lines are computed, never typed: fastest exact method, 2x floor at 1M,
    the int8 speed-up and recall, index peers at recall 0.99."""
    from mipsbench.report import cpu_reading

    def row(m, n, b, p50, floor, target=None, recall=1.0, **kw):
        return {"stage": "mips", "method": m, "N": n, "k": 500, "batch": b, "qps": b / p50 * 1e3, "p50_ms": p50,
                "recall": recall, "recall_target": target, "floor_ms": floor, "p50_over_floor": round(p50 / floor, 2),
                "build_s": kw.get("build_s", 0), "memory_mb": 256, "params": kw.get("params", {})}
    n = 1_000_000
    rows = [row("grank_mips", n, 1, 15, 11), row("grank_mips", n, 16, 61, 30),
            row("torch_topk", n, 1, 30, 11), row("torch_topk", n, 16, 55, 30),
            row("grank_mips_int8", n, 1, 5, 11), row("grank_mips_int8", n, 16, 50, 30, recall=0.999),
            row("faiss_ivfflat", n, 1, 4, 11, target=0.99, recall=0.995, build_s=157,
                params={"nlist": 4000, "nprobe": 64}),
            row("faiss_ivfflat", n, 16, 38, 30, target=0.99, recall=0.995, build_s=157,
                params={"nlist": 4000, "nprobe": 64})]
    text = "\n".join(cpu_reading(rows, []))
    assert "grank_mips in 1 of 2" in text and "torch_topk 55.00 ms vs grank_mips 61.00 ms" in text
    assert "(one TopK)" not in text  # a 1M catalogue takes the two steps: no small-catalogue excuse
    small = [dict(r, N=3706) for r in rows if r["method"] in ("grank_mips", "torch_topk")]
    assert "N=3,706 k=500 b=16 (one TopK): torch_topk" in "\n".join(cpu_reading(small, []))
    assert "batch 16 2.03x (**not met**)" in text
    assert "speed-up 1.22x to 3.00x" in text and "recall@k >= 0.9990" in text
    assert "faiss_ivfflat at recall 0.995" in text and "b=1 3.7x" in text and "build 157 s" in text
    assert "probes 64 of 4000 lists, about 1.6%" in text
    assert "faiss_hnsw" not in text  # not measured: not reported as failing


def test_graph_ab_forms_agree_before_timing(capsys):
    """docs/experiments/mips_graph_ab.py exports every form of the MIPS graph it times (one TopK,
    the two steps with sorted / unsorted first step, contiguous groups, int8) and refuses to time
    forms whose answers differ: all agree here, up to ties."""
    from docs.experiments.mips_graph_ab import main
    main(["--graphs", "plain", "block", "block_unsorted", "contiguous", "int8", "--items", "4000", "--k", "50",
          "--history", "8", "--batches", "2", "--seconds", "0.01", "--rounds", "1"])
    timed_graphs = {line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert timed_graphs == {"plain", "block", "block_unsorted", "contiguous", "int8"}


def test_topk_kernels_agree_before_timing(capsys):
    """docs/experiments/topk_kernels.py: ONNX Runtime's TopK (sorted and not) returns torch.topk's set."""
    from docs.experiments.topk_kernels import main
    main(["--n", "300", "--ks", "20", "--batches", "1", "4", "--seconds", "0.01", "--rounds", "1"])
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[:2] for r in rows] == [["20", "1"], ["20", "4"]]
    assert all(float(v) > 0 for r in rows for v in r.split()[3:])


def test_bench_without_a_checkpoint_says_how_to_get_one(tmp_path, capsys):
    """A fresh clone has no trained model: `make bench-quick` must say what is missing and how to
    make it, not print a bare errno."""
    from mipsbench.__main__ import main
    missing = tmp_path / "none" / "best.pt"
    assert main(["cpu", "--quick", "--checkpoint", str(missing), "--docs", str(tmp_path),
                 "--partial", str(tmp_path / "partial.json")]) != 0
    err = capsys.readouterr().err
    assert str(missing) in err and "make train" in err
    assert main(["vectors", "--checkpoint", str(missing), "--out", str(tmp_path / "v.npz")]) != 0
    assert "make train" in capsys.readouterr().err and not (tmp_path / "v.npz").exists()
    assert not (tmp_path / "performance.json").exists()  # nothing measured, nothing written


def test_cpu_run_on_a_trained_checkpoint_merges_measured_rows(tiny_trained, tmp_path, capsys):
    """`python -m mipsbench cpu` end to end on a tiny trained model: real catalogue, the served
    module and torch, rows with a floor and a recall, the command recorded; `vectors` writes
    what a GPU run needs."""
    import json

    from mipsbench.__main__ import main
    _, cfg, out, _ = tiny_trained
    args = ["cpu", "--checkpoint", str(out / "best.pt"), "--quick", "--sizes", "0", "--ks", "20",
            "--methods", "grank_mips", "torch_topk", "--seconds", "0.01", "--docs", str(tmp_path / "docs"),
            "--partial", str(tmp_path / "partial.json"), "--note", "smoke"]
    assert main(args) == 0
    assert "python -m perf report --docs" in capsys.readouterr().out
    perf = json.loads((tmp_path / "docs" / "performance.json").read_text())
    rows = [r for r in perf["rows"] if r["stage"] == "mips"]
    assert {(r["method"], r["batch"]) for r in rows} == {(m, b) for m in ("grank_mips", "torch_topk") for b in (1, 16)}
    for r in rows:
        assert r["k"] == 20 and r["recall"] > 0.99 and r["floor_ms"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
    assert perf["mips_runs"][0]["command"].startswith("python -m mipsbench cpu --checkpoint")
    assert perf["mips_runs"][0]["note"] == "smoke" and perf["machine"]["gemm_gflops"] > 0
    assert main(["vectors", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "v.npz")]) == 0
    v = np.load(tmp_path / "v.npz")
    assert v["items"].shape[1] == v["users"].shape[1] == cfg.model.d_model and v["items"].dtype == np.float32
