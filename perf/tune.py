"""python -m perf tune: the served ensemble under perf_analyzer, one change at a time.

For each variant (serving settings of ``export.repository.Serving``, or a larger catalogue), a
copy of the built repository with regenerated config.pbtxt files is served by the embedded Triton
on free ports and swept with perf_analyzer on real users' inputs (``perf.sweep``). Each run keeps
its directory (command.txt, perf.csv, perf_analyzer.log, perf.png); the rows (stage
``ensemble``, with the exact command and the per-composing-model breakdown parsed from the log)
are merged into docs/performance.json, which ``perf.report`` turns into PERFORMANCE.md.

    python -m perf tune --checkpoint artifacts/default/grank/best.pt --variants default all_threads ...
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from export.repository import Serving, other_layout, write_configs
from grank.signatures import CATALOGUE, RANKER, VALIDATE, mips_models

# One change at a time. Round 1 against the first committed setting (ONNX Runtime's default
# threads = every core, 100 us batching delay); round 2 against its winner, one intra-op thread
# per instance. "default" is whatever Serving() says now (the committed configs).
ALL_THREADS = dict(intra_op_threads=0, max_queue_delay_us=100)
VARIANTS = {
    "default": Serving(),
    "all_threads": Serving(**ALL_THREADS),
    "all_threads_delay0": Serving(**{**ALL_THREADS, "max_queue_delay_us": 0}),
    "all_threads_delay1ms": Serving(**{**ALL_THREADS, "max_queue_delay_us": 1000}),
    "all_threads_delay4ms": Serving(**{**ALL_THREADS, "max_queue_delay_us": 4000}),
    "threads1": Serving(intra_op_threads=1, max_queue_delay_us=100),
    # NB: Triton already gives every ONNX model two CPU instances when no instance_group is set,
    # so inst2_threads1 is threads1 with the count written out (a repeat run of the same setting)
    "inst2_threads1": Serving(instances=2, intra_op_threads=1, max_queue_delay_us=100),
    "inst1": Serving(instances=1),
    "inst3": Serving(instances=3),
    "threads1_delay0": Serving(intra_op_threads=1, max_queue_delay_us=0),
    "threads1_delay1ms": Serving(intra_op_threads=1, max_queue_delay_us=1000),
    # for a large catalogue, where the MIPS scan is most of the work (run with --items)
    "mips_threads2": Serving(mips_intra_op_threads=2),
    # the item table in S shards merged exactly (run with --items); shards1 is the default
    # layout measured in the same run as its sharded peers
    "shards1": Serving(shards=1),
    "shards2": Serving(shards=2),
    "shards4": Serving(shards=4),
}


# Shapes of the served pipeline (one change at a time, committed serving settings): how many MIPS
# candidates the Ranker re-scores (k1) and how much history the request carries (R, the newest
# items; the Generator always reads the newest 64 of them). These change what comes back, so the
# model is re-exported at that shape (``export_checkpoint(serving=...)``) and each row records the
# test-split quality of its shape beside its speed.
# Names say what changes from the trained shape (k1 500 over R 256). The repository serves k1_200
# (grank.config.ServeConfig): 200 candidates keep the HR@10 of 500 at about 1.3x the throughput,
# while a 128-item history costs the Ranker quality (k1_200_history128 was served until 2026-11-23, with the residual Ranker of that time).
SHAPES = {
    "trained_shape": {"eval.k1": 500, "model.ranker_history": 256},
    "k1_200": {"eval.k1": 200, "model.ranker_history": 256},
    "k1_1000": {"eval.k1": 1000, "model.ranker_history": 256},
    "history128": {"eval.k1": 500, "model.ranker_history": 128},
    "history64": {"eval.k1": 500, "model.ranker_history": 64},
    "k1_200_history128": {"eval.k1": 200, "model.ranker_history": 128},  # the two cheap ones together
}


def shape_repository(checkpoint: str, name: str, overrides: dict, out: Path, data) -> tuple:
    """Export ``checkpoint`` served with ``overrides`` (parity-checked), build a repository for
    it under ``out`` and evaluate that shape on the test split. Returns (repository, config,
    {"HR@10": .., "NDCG@10": ..})."""
    from export.build import build_repository, export_checkpoint
    ex = export_checkpoint(checkpoint, out / "onnx", data=data, serving=overrides)
    bad = {k: v for k, v in ex.problems.items() if v}
    if bad:
        raise RuntimeError(f"{name}: ONNX graphs disagree with PyTorch: {bad}")
    if (out / "repository").exists():
        shutil.rmtree(out / "repository")
    repo = build_repository(ex, out / "repository")
    return repo, ex.cfg, shape_quality(ex.model, ex.cfg, data)


def shape_quality(model, cfg, data) -> dict:
    """Test-split HR@10 / NDCG@10 of ``model`` served as ``cfg`` says (the results protocol)."""
    from grank.data import split
    from grank.evaluate import evaluate_model
    q = evaluate_model(model, split(data), "test", cfg.eval, progress=False)
    return {k: round(q[k], 4) for k in ("HR@10", "NDCG@10")}


def parse_breakdown(log: str) -> dict[float, dict[str, dict]]:
    """perf_analyzer's console output -> {load: {composing model: {avg_batch, queue_ms,
    infer_ms, input_ms, output_ms}}} (averages per request, as perf_analyzer prints them)."""
    out: dict[float, dict[str, dict]] = {}
    blocks = re.split(r"^(?:Request concurrency|Request Rate): ", log, flags=re.M)[1:]
    for b in blocks:
        if "Composing models:" not in b:
            continue  # the closing summary ("Request Rate: 50.00, throughput: ...")
        load = float(re.match(r"[\d.]+", b).group(0))
        models = {}
        for m in re.finditer(r"^  (\w+), version: \S+\n(.*?)(?=^\s*$|\Z)", b.split("Composing models:")[-1],
                             flags=re.M | re.S):
            body = m.group(2)
            num = lambda pat: float(re.search(pat, body).group(1)) if re.search(pat, body) else float("nan")  # noqa: E731
            inf, ex = num(r"Inference count: (\d+)"), num(r"Execution count: (\d+)")
            models[m.group(1)] = {"avg_batch": round(inf / ex, 2) if ex else None,
                                  **{f"{k}_ms": round(num(rf"{k.replace('_', ' ')} (\d+) usec") / 1e3, 3)
                                     for k in ("queue", "compute_infer", "compute_input", "compute_output")}}
        out[load] = models
    return out


def variant_repository(src: Path, dst: Path, cfg, schema: dict, serving: Serving,
                       models: dict | None = None, n_items: int = 0) -> Path:
    """Copy the built repository ``src`` to ``dst`` with configs regenerated for ``serving``;
    ``models``: model name -> an .onnx file to put in place of that model's version 1;
    ``n_items`` above the served catalogue's size: the catalogue of a ``big_catalogue_models``
    table, whose synthetic items get ids after the largest real one (int ids) and no name."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    for m in other_layout(dst, serving.shards):
        shutil.rmtree(dst / m)
    write_configs(cfg, schema, dst, serving)
    for name, onnx_path in (models or {}).items():
        vdir = dst / name / "1"
        vdir.mkdir(parents=True, exist_ok=True)
        for f in vdir.glob("model.onnx*"):
            f.unlink()
        shutil.copyfile(onnx_path, vdir / "model.onnx")
        data = Path(str(onnx_path) + ".data")
        if data.exists():
            shutil.copyfile(data, vdir / data.name)
    for name in (VALIDATE, CATALOGUE):
        f = dst / name / "1" / "catalogue.json"
        c = json.loads(f.read_text(encoding="utf-8"))
        extra = n_items - len(c["item_ids"])
        if extra > 0:
            if not isinstance(c["item_ids"][0], int):
                raise ValueError("--items: a catalogue of string ids cannot be padded with synthetic items")
            top = max(c["item_ids"])
            c["item_ids"] += list(range(top + 1, top + 1 + extra))
            c["item_names"] = c.get("item_names", [""] * (n_items - extra)) + [""] * extra
            f.write_text(json.dumps(c, ensure_ascii=False), encoding="utf-8")
    return dst


def big_catalogue_models(checkpoint: str, n_items: int, out: Path, seed: int = 0,
                         shards=(1,)) -> dict[int, dict]:
    """The trained model with its catalogue padded to ``n_items`` by items drawn from a mixture
    fitted to its own item vectors (``mipsbench.geometry``): the real items keep their ids (so real
    histories stay valid; the user encoder is unchanged) and the MIPS and Ranker graphs get the
    large table, the MIPS stage once per shard count in ``shards``. Checked against PyTorch with
    the export's own parity check. Returns {shard count: {model name: onnx path}}."""
    import torch

    from export.onnx_models import RankerTopK, UserEncoder, export_one, mips_stage
    from export.parity import check_onnx, pipeline_arrays, real_inputs
    from grank.data import load
    from grank.signatures import USER_ENCODER, signatures
    from grank.checkpoint import load_checkpoint

    from mipsbench.geometry import fit_mixture, sample
    model, cfg, ck = load_checkpoint(checkpoint, served=True)  # the shape of the repository's encoder
    real = model.item_vectors().detach()
    if n_items <= len(real) - 1:
        raise ValueError(f"--items: must exceed the real catalogue ({len(real) - 1}), got {n_items}")
    extra = sample(fit_mixture(real[1:].numpy(), k=32), n_items - (len(real) - 1), seed=seed)
    table = torch.cat([real, torch.from_numpy(extra)])
    del extra
    ranker = RankerTopK(model, cfg.eval.k2).eval()
    ranker.item_vectors = table  # the buffer the Ranker gathers candidates from
    inputs = real_inputs(load(cfg.dataset), cfg, 16, seed)
    found, ranker_path = {}, None
    for s in shards:
        graphs = {USER_ENCODER: UserEncoder(model).eval(), **mips_stage(model, table, cfg.eval.k1, s), RANKER: ranker}
        arrays = pipeline_arrays(graphs, inputs)
        sigs = signatures(cfg, ck["dataset"], s)
        d = out / f"shards{s}"
        d.mkdir(parents=True, exist_ok=True)
        paths = {name: export_one(graphs[name], sigs[name], arrays, d / f"{name}.onnx") for name in mips_models(s)}
        if ranker_path is None:  # one Ranker graph serves every layout
            ranker_path = export_one(ranker, sigs[RANKER], arrays, out / f"{RANKER}.onnx")
        paths[RANKER] = ranker_path
        bad = {k: v for k, v in check_onnx(paths, cfg, ck["dataset"], arrays).items() if v}
        if bad:
            raise RuntimeError(f"{n_items:,}-item graphs in {s} shards disagree with PyTorch: {bad}")
        found[s] = paths
        del graphs
    return found


def run_variant(name: str, repo: Path, protocol: str, out: Path, client_data, n_items: int,
                concurrency: str | None = "1:9:2", request_rate: str | None = None,
                interval_ms: int = 3000, stability: int = 25, log=print, shape: dict | None = None) -> list[dict]:
    """Serve ``repo``, sweep it, stop the server. Rows of stage ``ensemble``; ``shape``
    (R, k1, k2, and the shape's test quality) is copied into every row."""
    from client.grank_client import GRankClient
    from serve.server import TritonServer

    from .sweep import sweep
    rows = []
    with TritonServer(repo, work_dir=out / "triton") as s:
        client = GRankClient(s.grpc_url if protocol == "grpc" else s.http_url, protocol)
        t = time.time()
        res = sweep(client, client_data, s.grpc_url if protocol == "grpc" else s.http_url, protocol, out,
                    concurrency=None if request_rate else concurrency, request_rate=request_rate,
                    interval_ms=interval_ms, stability=stability)
        log(f"  {name} {protocol}: {len(res['rows'])} points in {time.time() - t:.0f} s")
    breakdown = parse_breakdown((out / "perf_analyzer.log").read_text())
    for r in res["rows"]:
        rows.append({"stage": "ensemble", "method": name, "protocol": protocol, "N": n_items,
                     "load_kind": r["load_kind"], "load": r["load"], "qps": round(r["qps"], 1),
                     **{p: round(r[p], 2) for p in ("p50_ms", "p95_ms", "p99_ms")},
                     "models": breakdown.get(r["load"], {}), **(shape or {}),
                     "command": res["command"]})
    return rows


def ranker_kind(cfg, blended: bool = False) -> str:
    """The served Ranker in a word or two, as the perf rows record it: 'fused' (its own score
    mixed into the Generator's), '+popularity' with model.ranker_popularity, '+blend' when the
    checkpoint's served blend was fitted (grank.blend), or 'none'. Rows measured before
    2026-11-24 may say 'residual': the Ranker form of that time (a correction on the
    Generator's score that also saw the user vector)."""
    if not cfg.model.ranker:
        return "none"
    return "fused" + ("+popularity" if cfg.model.ranker_popularity else "") + ("+blend" if blended else "")


def merge(rows: list[dict], docs: Path) -> Path:
    """Replace the ensemble rows of the same (method, protocol, load kind) in performance.json."""
    p = docs / "performance.json"
    old = json.loads(p.read_text()) if p.exists() else {"rows": []}
    keys = {(r["method"], r["protocol"], r["load_kind"]) for r in rows}
    keep = [r for r in old.get("rows", []) if r.get("stage") != "ensemble"
            or (r["method"], r["protocol"], r["load_kind"]) not in keys]
    old["rows"] = keep + rows
    p.write_text(json.dumps(old, indent=1))
    return p
