"""A sharded item table: S MIPS models over contiguous runs of dense ids and an exact top-k merge.

The merge is exact (``export.onnx_models`` says why), so the sharded stage must return what the
unsharded one does up to the order of equal scores: checked in PyTorch on tables built with
ties across shard boundaries, through the export's parity check, and on real servers, whose
answers for S = 2 and 4 must equal the unsharded server's. Configs of a sharded repository are
the committed ones plus the shards and the merge, with only the ensemble's MIPS step changed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.onnx_models import MipsMerge, MipsTopK, mips_shards
from export.repository import (COMMITTED, Serving, build, model_configs, other_layout,
                               repository_shards)
from grank.config import make_config, served_config
from grank.mips import shard_bounds, topk_disagreements
from grank.signatures import (ENSEMBLE, MIPS, MIPS_MERGE, composing_models, mips_models, mips_shard,
                              signatures)

CFG = served_config(make_config("default", "grank"))


@pytest.fixture(scope="module")
def ml1m():
    from grank.data import load, schema
    return schema(load("ml-1m"))


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_shard_bounds_cover_every_item_once():
    for n, s in ((10, 1), (10, 3), (3706, 4), (1_000_000, 7)):
        b = shard_bounds(n, s)
        assert b[0] == 0 and b[-1] == n and len(b) == s + 1
        sizes = np.diff(b)
        assert sizes.min() >= n // s and sizes.max() - sizes.min() <= 1
    with pytest.raises(ValueError, match="shards"):
        shard_bounds(3, 4)
    with pytest.raises(ValueError, match="shards"):
        mips_models(0)


def _stage(mods: dict, u, hist):
    """Run a sharded MIPS stage in PyTorch: every shard, then the merge."""
    parts = []
    for name, m in mods.items():
        if name != MIPS_MERGE:
            parts += list(m(u, hist))
    return mods[MIPS_MERGE](*parts)


@pytest.mark.parametrize("shards", [2, 3, 4])
def test_sharded_stage_equals_the_unsharded_one_up_to_ties(shards):
    g = torch.Generator().manual_seed(shards)
    n, d, k, R, B = 2000, 16, 50, 30, 24
    table = torch.randn(n + 1, d, generator=g)
    table[0] = 0
    table[10] *= 3        # a long vector: row 0's two best items are it and its copy, by far
    # exact ties, some straddling shard boundaries, and some on a boundary's either side
    for a, b in ((10, 1500), (499, 501), (1000, 1001), (1999, 3)):
        table[b] = table[a]
    u = torch.randn(B, d, generator=g)
    u[0] = table[10]      # a user whose best items are the tied pair
    hist = torch.randint(0, n + 1, (B, R), generator=g)
    hist[:, :5] = 0       # padding
    hist[1, -1] = 1500    # one of a tied pair seen
    hist[0] = 0
    whole = MipsTopK(table, k, tau=0.5)
    with torch.no_grad():
        ref_s, ref_i = whole(u, hist)[::-1]
        got_i, got_s = _stage(mips_shards(table, k, 0.5, shards), u, hist)
    assert got_i.shape == (B, k) and got_i.dtype == torch.int64
    assert not topk_disagreements(ref_i, ref_s, got_i, got_s, atol=1e-5)
    assert set(got_i[1].tolist()).isdisjoint(set(hist[1].tolist()))  # the history stays excluded
    assert set(got_i[0, :2].tolist()) == {10, 1500}  # the tie across shards leads row 0


def test_flagged_rows_stay_flagged_and_the_merge_guards_its_inputs():
    n, d, k = 400, 8, 20
    table = torch.randn(n + 1, d)
    mods = mips_shards(table, k, 1.0, 2)
    u = torch.randn(3, d)
    u[1, 0] = float("nan")
    hist = torch.zeros(3, 5, dtype=torch.long)
    hist[2, 0] = n + 1  # out of range for the whole catalogue, though not for shard 0's local ids
    with torch.no_grad():
        ids, scores = _stage(mods, u, hist)
    assert (ids[0] >= 1).all() and torch.isfinite(scores[0]).all()
    for r in (1, 2):
        assert (ids[r] == -1).all() and torch.isnan(scores[r]).all()
    merge = MipsMerge(k, 2, n)
    bad = torch.full((1, k), n + 5)  # a direct call with ids beyond the catalogue
    with torch.no_grad():
        ids, scores = merge(bad, torch.zeros(1, k), bad, torch.zeros(1, k))
    assert (ids == -1).all() and torch.isnan(scores).all()


def test_too_many_shards_for_the_catalogue_is_refused_with_the_constraint():
    with pytest.raises(ValueError, match="k1 \\+ history"):
        mips_shards(torch.randn(301, 4), 50, 1.0, 4, min_items=100)


@pytest.mark.parametrize("shards", [2, 4])
def test_sharded_configs_add_shards_and_a_merge_and_change_only_the_mips_step(ml1m, shards):
    """Drift test of the sharded layout against the committed (unsharded) configs."""
    got = model_configs(CFG, ml1m, Serving(shards=shards))
    assert sorted(got) == sorted(composing_models(shards) + (ENSEMBLE,))
    committed = {p.parent.name: p.read_text() for p in COMMITTED.glob("*/config.pbtxt")}
    header = lambda t: "\n".join(ln for ln in t.splitlines() if not ln.startswith("#"))  # noqa: E731
    for name in set(got) - set(mips_models(shards)) - {ENSEMBLE}:
        assert header(got[name]) == header(committed[name]), name
    for s in range(shards):
        assert header(got[mips_shard(s)]) == header(committed[MIPS]).replace(
            f'name: "{MIPS}"', f'name: "{mips_shard(s)}"')
    sigs = signatures(CFG, ml1m, shards)
    for name, text in got.items():
        c = parse(text)
        assert c.name == name
        if name != ENSEMBLE:
            assert [t.name for t in c.input] == [t.name for t in sigs[name].inputs]
            assert [list(t.dims) for t in c.output] == [list(t.dims) for t in sigs[name].outputs]
    ens = parse(got[ENSEMBLE])
    steps = [s.model_name for s in ens.ensemble_scheduling.step]
    assert steps == list(composing_models(shards))
    available = {t.name for t in ens.input}
    for s in ens.ensemble_scheduling.step:
        assert set(s.input_map) == {t.name for t in sigs[s.model_name].inputs}
        assert set(s.input_map.values()) <= available, s.model_name
        available |= set(s.output_map.values())
    merge = ens.ensemble_scheduling.step[steps.index(MIPS_MERGE)]
    assert set(merge.input_map.values()) == {f"{t}_{s}" for s in range(shards)
                                             for t in ("candidate_ids", "candidate_scores")}
    committed_ens = parse(committed[ENSEMBLE])
    assert list(ens.input) == list(committed_ens.input) and list(ens.output) == list(committed_ens.output)


def test_shards_can_be_pinned_to_gpus(ml1m):
    got = model_configs(CFG, ml1m, Serving(shards=4, gpus=2))
    for s in range(4):
        ig = parse(got[mips_shard(s)]).instance_group
        assert len(ig) == 1 and ig[0].kind == mc.ModelInstanceGroup.KIND_GPU and list(ig[0].gpus) == [s % 2]
    assert not parse(got[MIPS_MERGE]).instance_group  # small: Triton places it
    with pytest.raises(ValueError, match="shards > 1"):
        Serving(gpus=2)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_trained, ml100k):
    """{S: repository} of the tiny checkpoint with its table in S shards, parity-checked."""
    from export.build import build_repository, export_checkpoint
    _, _, out, _ = tiny_trained
    repos = {}
    for s in (2, 4):
        ex = export_checkpoint(out / "best.pt", tmp_path_factory.mktemp(f"onnx{s}"), users=64, data=ml100k,
                               shards=s)
        assert not any(ex.problems.values()), ex.problems
        repos[s] = build_repository(ex, tmp_path_factory.mktemp(f"repo{s}"))
    return repos


def test_a_built_repository_knows_its_shards_and_refuses_another_layout(sharded, tiny_export, tmp_path):
    import shutil
    assert repository_shards(sharded[2]) == 2 and repository_shards(sharded[4]) == 4
    repo = tmp_path / "repo"
    shutil.copytree(sharded[2], repo)
    assert other_layout(repo, 1) == [MIPS_MERGE, mips_shard(0), mips_shard(1)]
    ex = tiny_export
    from grank.signatures import takes_request_time
    from grank.validation import limits_dict
    limits = limits_dict(ex.ck["dataset"], ex.cfg.model.ranker_history, takes_request_time(ex.cfg))
    with pytest.raises(ValueError, match="shard count"):
        build(ex.cfg, ex.ck["dataset"], ex.paths, limits, ex.ck["catalogue"], repo)
    build(ex.cfg, ex.ck["dataset"], ex.paths, limits, ex.ck["catalogue"], repo, force=True)
    assert other_layout(repo, 1) == [] and repository_shards(repo) == 1


def test_sharded_servers_answer_as_the_unsharded_one(sharded, triton_server, tiny_export, tiny_trained,
                                                     tmp_path):
    """The served ensemble over S = 2 and 4 shards: the same answers as S = 1 (up to ties), on
    real users' requests, through both protocols; and a model swap (``serve.deploy``) into the
    sharded repository."""
    from client.grank_client import GRankClient
    from grank.replay import user_requests
    from serve.server import TritonServer

    ref_client = GRankClient(triton_server.grpc_url, "grpc")
    arrays = user_requests(tiny_export.data, np.arange(40), ref_client.history_length, ref_client.input_names)
    ref = ref_client.infer(arrays)
    for s, repo in sharded.items():
        with TritonServer(repo, work_dir=tmp_path / f"triton{s}") as server:
            for url, proto in ((server.grpc_url, "grpc"), (server.http_url, "http")):
                got = GRankClient(url, proto).infer(arrays)
                bad = topk_disagreements(_ids(ref[0]), ref[2], _ids(got[0]), got[2], atol=1e-4)
                assert not bad, (s, proto, bad[:3])
                assert (got.deployment == 1).all()
            if s == 4:  # a deployment into a sharded repository ships every shard and the merge
                from serve.deploy import Server, composing, stage, switch
                v = stage(tiny_trained[2] / "best.pt", repo, tmp_path / "work", log=lambda *_: None)
                switch(repo, Server(server.http_url, None), v, log=lambda *_: None)
                assert composing(repo) == composing_models(4)
                assert all((repo / m / str(v)).is_dir() for m in composing_models(4))
                got = GRankClient(server.grpc_url, "grpc").infer(arrays)
                assert (got.deployment == v).all()
                assert not topk_disagreements(_ids(ref[0]), ref[2], _ids(got[0]), got[2], atol=1e-4)


def _ids(a):
    return np.asarray(a).astype(np.int64)


def _gpu_rows(device="GPU-X"):
    """Measured-looking GPU MIPS rows: time linear in N (1 ms per 10M items at batch 1, 4x at
    batch 64), fp32 table of 64 floats per item."""
    rows = []
    for n in (1_000_000, 10_000_000, 100_000_000):
        for b, f in ((1, 1.0), (64, 4.0)):
            ms = f * n / 1e7
            rows.append({"stage": "mips", "method": "torch_cuda_fp32_block", "device": device, "k": 500,
                         "N": n, "batch": b, "p99_ms": ms, "p50_ms": ms, "qps": b / ms * 1e3,
                         "memory_mb": n * 256 / 2 ** 20})
    return {"rows": rows, "gpus": {device: {"copy_bandwidth_gbs": 2000.0}}}


def test_the_planner_places_shards_by_memory_and_time():
    from perf.planner import format_shard_plan, shard_plan
    perf = _gpu_rows()
    # 400M fp32 items = 95 GiB: no single 80 GB GPU (64 GB usable) holds it, two halves do; at
    # batch 64 the score buffer needs four quarters, which serve the most users per second
    opts = shard_plan(perf, 400_000_000, gpus=4, gpu_memory_gb=80, budget_ms=100)
    assert opts and min(o.shards for o in opts) == 2
    best = opts[0]
    assert best.shards == 4 and best.gpus_used == 4 and best.per_gpu == 1 and best.batch == 64
    assert best.stage_ms == pytest.approx(40.0) and best.server_qps == pytest.approx(1600.0)
    assert best.gpu_memory_gb <= 0.8 * 80
    assert best.floor_ms == pytest.approx(100e6 * 256 / 2000e9 * 1e3, rel=1e-3)
    # a table that fits one GPU is replicated on each: G x the users/s of one
    small = shard_plan(perf, 10_000_000, gpus=2, gpu_memory_gb=80, budget_ms=100)
    one = next(o for o in small if o.shards == 1 and o.batch == 64)
    assert one.server_qps == pytest.approx(2 * 64 / 4.0 * 1e3)
    # two shards on one GPU run in turn: no faster than one table
    two = next(o for o in shard_plan(perf, 10_000_000, gpus=1, gpu_memory_gb=80, budget_ms=100)
               if o.shards == 2 and o.batch == 1)
    assert two.per_gpu == 2 and two.stage_ms == pytest.approx(1.0)
    text = format_shard_plan(opts, 400_000_000, 4, 80, 100)
    assert "--shards 4 --gpus 4" in text
    assert "nothing fits" in format_shard_plan(shard_plan(perf, 400_000_000, 1, 16, 100), 400_000_000, 1, 16, 100)
    with pytest.raises(ValueError, match="gpu-method"):
        shard_plan(perf, 10, 1, 80, 10, method="nope")


def test_the_report_has_a_sharded_section():
    rows = []
    for s, q in ((1, 100.0), (2, 150.0)):
        for load, p99 in ((1, 10.0), (3, 30.0)):
            rows.append({"stage": "ensemble", "method": f"shards{s}@1000000", "protocol": "grpc", "N": 1_000_000,
                         "load": load, "load_kind": "concurrency", "qps": q * load / 3, "p50_ms": p99 / 2,
                         "p95_ms": p99, "p99_ms": p99, "command": "perf_analyzer ...", "date": "2026-12-06",
                         "models": {**{f"grank_mips_shard{i}" if s > 1 else "grank_mips":
                                       {"compute_infer_ms": 8.0 / s, "queue_ms": 1.0, "compute_input_ms": 0,
                                        "compute_output_ms": 0, "avg_batch": 1} for i in range(s)},
                                    **({"grank_mips_merge": {"compute_infer_ms": 0.05, "queue_ms": 0.1,
                                                             "compute_input_ms": 0, "compute_output_ms": 0,
                                                             "avg_batch": 1}} if s > 1 else {})}})
    from perf.ensemble_report import sharded_markdown
    closed = {}
    for r in rows:
        closed.setdefault((r["method"], r["protocol"]), []).append(r)
    md = "\n".join(sharded_markdown(closed))
    assert "| 1,000,000 | 1 | grpc | 100.0 (3) |" in md
    assert "| 1,000,000 | 2 | grpc | 150.0 (3) | 5.0 / 10.0 | 150.0 (3) | 30.0 | 4.00 | 1.00 | 0.05 |" in md


def test_a_padded_catalogue_in_shards_serves_through_the_ensemble(tiny_trained, tiny_repository, tiny_export,
                                                                   ml100k, tmp_path):
    """What `python -m perf tune --variants shards2 --items N` serves: the tiny model's table padded
    with synthetic items, in two shards, with a catalogue that names them; real users' requests
    are answered, some with synthetic items, every id from the padded catalogue."""
    import json

    from client.grank_client import GRankClient
    from grank.data import schema
    from grank.replay import user_requests
    from perf.tune import big_catalogue_models, variant_repository
    from serve.server import TritonServer

    _, cfg, out, _ = tiny_trained
    n = ml100k.n_items + 3000
    models = big_catalogue_models(out / "best.pt", n, tmp_path / "graphs", shards=(2,))[2]
    repo = variant_repository(tiny_repository, tmp_path / "repo", tiny_export.cfg, schema(ml100k), Serving(shards=2),
                              models, n)
    assert repository_shards(repo) == 2 and not (repo / MIPS).exists()
    ids = json.loads((repo / "grank_catalogue" / "1" / "catalogue.json").read_text())["item_ids"]
    assert len(ids) == n and ids == sorted(ids)
    with TritonServer(repo, work_dir=tmp_path / "triton") as server:
        c = GRankClient(server.grpc_url, "grpc")
        got = c.infer(user_requests(ml100k, np.arange(16), c.history_length, c.input_names))
    assert (got.deployment == 1).all() and np.isfinite(got[2]).all()
    assert set(np.asarray(got[0]).ravel().tolist()) <= set(ids)


def test_the_export_command_builds_a_sharded_repository(tiny_trained, tmp_path, capsys):
    """`python -m export repository --shards 2` (what `make repository SHARDS=2` runs), and a
    shard count the catalogue cannot hold refused with the constraint."""
    from export.__main__ import main
    _, _, out, _ = tiny_trained
    with pytest.raises(SystemExit, match="--shards: must be >= 1"):
        main(["repository", "--checkpoint", str(out / "best.pt"), "--shards", "0",
              "--repository", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="k1 \\+ history"):
        main(["onnx", "--checkpoint", str(out / "best.pt"), "--shards", "40", "--out", str(tmp_path / "o40")])
    assert main(["repository", "--checkpoint", str(out / "best.pt"), "--shards", "2", "--out", str(tmp_path / "onnx"),
                 "--repository", str(tmp_path / "repo")]) == 0
    assert "item table in 2 shards" in capsys.readouterr().out
    assert repository_shards(tmp_path / "repo") == 2
    assert all((tmp_path / "repo" / m / "1" / "model.onnx").exists() for m in mips_models(2))
