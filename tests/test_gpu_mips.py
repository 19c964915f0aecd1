"""The GPU MIPS benchmark's pieces (issue #4): the chunked top-k and the reduced-precision
methods are checked on the CPU against brute force; the merge keeps other machines' rows. The
benchmark itself needs CUDA and is run there (``python -m perf.gpu_mips``)."""
import json

import numpy as np
import pytest
import torch

from perf import gpu_mips as G
from perf.geometry import fit_mixture
from perf.mips_report import markdown


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
    assert G.recall(i, ref_i) == 1.0  # random floats: no ties at the cut


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
    assert G.recall(i, ref_i) == 1.0


def test_recall_counts_the_overlap():
    exact = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    got = torch.tensor([[4, 3, 9, 1], [0, 10, 11, 12]])
    assert G.recall(got, exact) == pytest.approx((3 / 4 + 0) / 2)


def test_rescoring_recovers_what_half_precision_loses(data):
    items, q = data
    exact = (q @ items.T).topk(200, dim=1).indices
    plain = G.Method("bf16", items, torch.bfloat16).search(q, 200)
    rescored = G.Method("bf16_rescore", items, torch.bfloat16, rescore=True).search(q, 200)
    r_plain, r_res = G.recall(plain, exact), G.recall(rescored, exact)
    assert r_plain < 1.0  # bf16 keeps 8 bits of mantissa: near-ties at the cut swap
    assert r_res > r_plain and r_res > 0.999


def test_device_sample_has_the_mixture_geometry(data):
    items, _ = data
    mix = fit_mixture(items.numpy(), k=8)
    s = G.sample_torch(mix, 20000, "cpu", seed=1)
    assert s.shape == (20000, 16)
    np.testing.assert_allclose(s.mean(0).numpy(), items.mean(0).numpy(), atol=0.1)
    assert abs(s.norm(dim=1).mean() / items.norm(dim=1).mean() - 1) < 0.05


def test_floor_is_the_slower_of_streaming_and_compute():
    # 1M x 64 fp32 = 256 MB at 1000 GB/s = 0.256 ms; batch 1 compute is far below that
    assert G.floor_ms(256_000_000, 1_000_000, 64, 1, 1000.0, 50.0) == pytest.approx(0.256)
    # batch 256: 2*256*1e6*64 FLOPs at 50 TFLOP/s = 0.655 ms > streaming
    assert G.floor_ms(256_000_000, 1_000_000, 64, 256, 1000.0, 50.0) == pytest.approx(0.65536)


def test_merge_keeps_other_rows_and_reports(tmp_path):
    docs = tmp_path
    cpu_row = {"stage": "ensemble", "method": "grank", "concurrency": 1, "qps": 90.0}
    (docs / "performance.json").write_text(json.dumps({"rows": [cpu_row]}))
    row = {"stage": "mips", "method": "torch_cuda_fp16", "N": 1000, "k": 10, "batch": 1, "qps": 5.0,
           "p50_ms": 0.2, "p99_ms": 0.3, "recall": 0.99, "floor_ms": 0.01, "p50_over_floor": 20.0,
           "memory_mb": 0.1, "precision": "fp16", "device": "Fake GPU", "recall_target": None, "params": {}}
    res = {"device": "Fake GPU", "date": "2026-01-01", "copy_bandwidth_gbs": 1000.0,
           "gemm_tflops": {"fp32": 50.0, "fp16": 500.0, "bf16": 500.0}, "rescore_factor": 2,
           "torch": "x", "command": "python -m perf.gpu_mips", "rows": [row]}
    p = G.write(res, docs)
    G.write(res, docs)  # idempotent: the same device's rows are replaced, not duplicated
    perf = json.loads(p.read_text())
    assert perf["rows"] == [cpu_row, row] and "Fake GPU" in perf["gpus"]
    md = markdown(perf, docs)
    assert "## MIPS stage on a GPU: Fake GPU" in md and "| 1,000 | torch_cuda_fp16 | 0.9900 |" in md
    assert "not run yet" in md  # no CPU MIPS rows: said, not invented


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmark: python -m perf.gpu_mips)")
def test_gpu_run_small(tmp_path, data):
    items, q = data
    v = tmp_path / "v.npz"
    np.savez(v, items=items.numpy(), users=q.numpy())
    res = G.run(v, sizes=(6000, 50_000), ks=(100,), batches=(1, 16), seconds=0.05, log=lambda *a: None)
    fp32 = [r for r in res["rows"] if r["method"] == "torch_cuda_fp32"]
    assert fp32 and all(r["recall"] == 1.0 and r["p50_ms"] > 0 for r in fp32)
    assert all(r["recall"] > 0.999 for r in res["rows"] if r["method"].endswith("rescore"))
