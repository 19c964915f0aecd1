"""The GPU MIPS benchmark's pieces (``mipsbench.gpu``): the chunked top-k and the
reduced-precision methods are checked on the CPU against brute force; the merge keeps other
machines' rows and the report shows them. The benchmark itself needs CUDA and is run there
(``python -m mipsbench gpu``)."""
import json

import numpy as np
import pytest
import torch

from mipsbench import gpu as G
from mipsbench.floor import floor_ms
from mipsbench.geometry import fit_mixture, sample_torch
from mipsbench.measure import recall
from mipsbench.report import sections


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 16, generator=g) * 2
    items = centres[torch.randint(0, 20, (6000,), generator=g)] + 0.5 * torch.randn(6000, 16, generator=g)
    q = centres[torch.randint(0, 20, (32,), generator=g)] + torch.randn(32, 16, generator=g)
    return items, q


def test_chunked_top_k_equals_one_pass(data, monkeypatch):
    items, q = data
    ref_s, ref_i = (q @ items.T).topk(100, dim=1)
    monkeypatch.setattr(G, "MAX_SCORE_ELEMS", 32 * 700)  # forces 9 chunks, the last one short
    s, i = G.topk_chunked(q, items, 100)
    torch.testing.assert_close(s, ref_s)
    assert recall(i, ref_i) == 1.0  # random floats: no ties at the cut


@pytest.mark.parametrize("max_elems", [1 << 30, 32 * 3200])  # one pass; chunks of 100 blocks + a short tail
def test_block_top_k_methods_equal_one_pass(data, monkeypatch, max_elems):
    """The ``*_block`` methods' two-step top-k gives the plain top-k, chunked or not."""
    items, q = data
    items = items[:5984]  # 187 blocks of 32: enough for k = 50
    ref_s, ref_i = (q @ items.T).topk(50, dim=1)
    monkeypatch.setattr(G, "MAX_SCORE_ELEMS", max_elems)
    calls, orig = [], G.block_top_k
    monkeypatch.setattr(G, "block_top_k", lambda *a: (calls.append(a[0].shape), orig(*a))[1])
    s, i = G.topk_chunked(q, items, 50, block=True)
    assert calls  # the two-step top-k ran
    torch.testing.assert_close(s, ref_s)
    assert recall(i, ref_i) == 1.0


def test_rescoring_recovers_what_half_precision_loses(data):
    items, q = data
    exact = (q @ items.T).topk(200, dim=1).indices
    plain = G.GpuMethod("bf16", items, torch.bfloat16).search(q, 200)
    rescored = G.GpuMethod("bf16_rescore", items, torch.bfloat16, rescore=True).search(q, 200)
    r_plain, r_res = recall(plain, exact), recall(rescored, exact)
    assert r_plain < 1.0  # bf16 keeps 8 bits of mantissa: near-ties at the cut swap
    assert r_res > r_plain and r_res > 0.999


def test_device_sample_has_the_mixture_geometry(data):
    items, _ = data
    mix = fit_mixture(items.numpy(), k=8)
    s = sample_torch(mix, 20000, "cpu", seed=1)
    assert s.shape == (20000, 16)
    np.testing.assert_allclose(s.mean(0).numpy(), items.mean(0).numpy(), atol=0.1)
    assert abs(s.norm(dim=1).mean() / items.norm(dim=1).mean() - 1) < 0.05


def test_floor_is_the_slower_of_streaming_and_compute():
    # 1M x 64 fp32 = 256 MB at 1000 GB/s = 0.256 ms; batch 1 compute is far below that
    assert floor_ms(256_000_000, 1_000_000, 64, 1, 1000.0, 50_000.0) == pytest.approx(0.256)
    # batch 256: 2*256*1e6*64 FLOPs at 50 TFLOP/s = 0.655 ms > streaming
    assert floor_ms(256_000_000, 1_000_000, 64, 256, 1000.0, 50_000.0) == pytest.approx(0.65536)


def test_merge_keeps_other_rows_and_reports(tmp_path):
    docs = tmp_path
    cpu_row = {"stage": "ensemble", "method": "grank", "concurrency": 1, "qps": 90.0}
    (docs / "performance.json").write_text(json.dumps({"rows": [cpu_row]}))
    row = {"stage": "mips", "method": "torch_cuda_fp16", "N": 1000, "k": 10, "batch": 1, "qps": 5.0,
           "p50_ms": 0.2, "p99_ms": 0.3, "recall": 0.99, "floor_ms": 0.01, "p50_over_floor": 20.0,
           "memory_mb": 0.1, "precision": "fp16", "device": "Fake GPU", "recall_target": None, "params": {}}
    res = {"device": "Fake GPU", "date": "2026-01-01", "copy_bandwidth_gbs": 1000.0,
           "gemm_tflops": {"fp32": 50.0, "fp16": 500.0, "bf16": 500.0}, "rescore_factor": 2,
           "torch": "x", "command": "python -m mipsbench gpu", "rows": [row]}
    p = G.write(res, docs)
    G.write(res, docs)  # idempotent: the same device's rows are replaced, not duplicated
    perf = json.loads(p.read_text())
    assert perf["rows"] == [cpu_row, row] and "Fake GPU" in perf["gpus"]
    md = "\n".join(sections(perf, docs))
    assert "## MIPS stage on a GPU: Fake GPU" in md and "| 1,000 | torch_cuda_fp16 | 0.9900 |" in md
    assert "not run yet" in md  # no CPU MIPS rows: said, not invented
    assert "onnxruntime on 2026-01-01 was the CPU build" in md  # no ONNX Runtime rows: why, dated
    assert (docs / "mips_gpu_latency_vs_n.png").stat().st_size > 0


def test_cli_merge_and_gpu_refusals(tmp_path, capsys):
    """`mipsbench merge` merges a finished run; a missing file, or `gpu` without CUDA or without
    its vectors file, is an error that says what to run instead."""
    from mipsbench.__main__ import main
    res = {"device": "Fake GPU", "date": "2026-01-01", "copy_bandwidth_gbs": 1.0, "gemm_tflops": {"fp32": 1.0},
           "rescore_factor": 2, "torch": "x", "command": "python -m mipsbench gpu", "rows": []}
    (tmp_path / "gpu_mips.json").write_text(json.dumps(res))
    assert main(["merge", str(tmp_path / "gpu_mips.json"), "--docs", str(tmp_path / "docs")]) == 0
    assert "Fake GPU" in json.loads((tmp_path / "docs" / "performance.json").read_text())["gpus"]
    assert "python -m perf report --docs" in capsys.readouterr().out
    assert main(["merge", str(tmp_path / "none.json"), "--docs", str(tmp_path / "docs")]) == 2
    assert "mipsbench gpu" in capsys.readouterr().err
    assert main(["gpu", "--vectors", str(tmp_path / "none.npz"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert ("no CUDA device" in err) if not torch.cuda.is_available() else ("mipsbench vectors" in err)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmark: python -m mipsbench gpu)")
def test_gpu_run_small(tmp_path, data):
    items, q = data
    v = tmp_path / "v.npz"
    np.savez(v, items=items.numpy(), users=q.numpy())
    res = G.run(v, sizes=(6000, 50_000), ks=(100,), batches=(1, 16), seconds=0.05, log=lambda *a: None)
    fp32 = [r for r in res["rows"] if r["method"] == "torch_cuda_fp32"]
    assert fp32 and all(r["recall"] == 1.0 and r["p50_ms"] > 0 for r in fp32)
    assert all(r["recall"] > 0.999 for r in res["rows"] if r["method"].endswith("rescore"))
