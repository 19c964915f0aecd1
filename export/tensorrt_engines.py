"""FP16 TensorRT engines from the exported ONNX models, compared with ONNX Runtime (Polygraphy).

Needs an NVIDIA GPU and TensorRT 10.x (``make setup-gpu``: tensorrt-cu12 10.5.0, the version of
the NGC ``tritonserver:24.10-py3`` container, so the engines load there with
``platform: "tensorrt_plan"``). On other machines ``missing()`` says what is absent and
nothing is built. Optimization profiles come from the signatures: batch 1 / OPT_BATCH /
MAX_BATCH_SIZE with the per-row dims fixed. TensorRT's TopK supports K <= 3840, so k1 and k2
are checked before building.

FP16 tolerances: half precision keeps ~3 significant digits; user_embedding (|x| ~ 1) atol
2e-2, scores (|s| ~ 10, sums over d) atol 0.1, and top-k lists compared up to items within
that tolerance of the cut (``grank.mips.topk_disagreements``).
"""
from __future__ import annotations

from pathlib import Path

from grank.signatures import ONNX_MODELS, signatures

from .parity import TOPK
from .repository import MAX_BATCH_SIZE

TRT_TOPK_MAX = 3840
OPT_BATCH = 16
FP16_ATOL = {"user_embedding": 2e-2, "candidate_scores": 0.1, "scores": 0.1}


def missing() -> str | None:
    """Why engines cannot be built here, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (make setup-gpu installs tensorrt-cu12 10.5.0)"
    try:
        import torch
        if not torch.cuda.is_available():
            return "no NVIDIA GPU visible (torch.cuda.is_available() is False)"
    except ImportError:
        return "torch is missing"
    return None


def build_engines(cfg, schema: dict, onnx_paths: dict, out: Path) -> dict:
    """Build and save ``<out>/<model>.plan`` for each ONNX model; returns the paths."""
    from polygraphy.backend.trt import (CreateConfig, EngineFromNetwork, NetworkFromOnnxPath,
                                        Profile, SaveEngine)
    for k_name, k in (("eval.k1", cfg.eval.k1), ("eval.k2", cfg.eval.k2)):
        if k > TRT_TOPK_MAX:
            raise ValueError(f"{k_name} = {k}: TensorRT TopK supports K <= {TRT_TOPK_MAX}")
    sigs = signatures(cfg, schema)
    out.mkdir(parents=True, exist_ok=True)
    plans = {}
    for name, path in onnx_paths.items():
        prof = Profile()
        for t in sigs[name].inputs:
            prof.add(t.name, min=(1, *t.dims), opt=(OPT_BATCH, *t.dims), max=(MAX_BATCH_SIZE, *t.dims))
        engine = EngineFromNetwork(NetworkFromOnnxPath(str(path)),
                                   config=CreateConfig(fp16=True, profiles=[prof]))
        plans[name] = out / f"{name}.plan"
        SaveEngine(engine, str(plans[name]))()
    return plans


def compare(cfg, schema: dict, onnx_paths: dict, plans: dict, arrays: dict) -> dict[str, list[str]]:
    """Polygraphy: ONNX Runtime (fp32) vs TensorRT (fp16) on the parity inputs."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    from grank.mips import topk_disagreements
    sigs = signatures(cfg, schema)
    problems = {}
    for name in plans:
        sig = sigs[name]
        feed = {t.name: arrays[t.name] for t in sig.inputs}
        runners = [OnnxrtRunner(SessionFromOnnx(str(onnx_paths[name])), name="onnxrt"),
                   TrtRunner(EngineFromBytes(BytesFromPath(str(plans[name]))), name="tensorrt")]
        res = Comparator.run(runners, data_loader=[feed])
        floats = [t.name for t in sig.outputs if t.dtype == "float32"]
        ok = Comparator.compare_accuracy(res, compare_func=SimpleCompareFunc(
            atol={n: FP16_ATOL[n] for n in floats}, rtol={n: 0.0 for n in floats}))
        found = [] if ok else [f"{name}: {', '.join(floats)} beyond the FP16 tolerance"]
        if name in TOPK:
            i, s = TOPK[name]
            a, b = res["onnxrt"][0], res["tensorrt"][0]
            found += [f"{name}: row {r}: {m}" for r, m in
                      topk_disagreements(a[i], a[s], b[i], b[s], FP16_ATOL[s])]
        problems[name] = found
    return problems


def build_and_check(checkpoint, onnx_dir: Path, out: Path) -> int:
    why = missing()
    if why:
        print(f"TensorRT engines not built: {why}.")
        return 2
    from .build import export_checkpoint
    ex = export_checkpoint(checkpoint, onnx_dir)  # fresh ONNX files + parity inputs
    plans = build_engines(ex.cfg, ex.ck["dataset"], ex.paths, out)
    problems = compare(ex.cfg, ex.ck["dataset"], ex.paths, plans, ex.arrays)
    for name in ONNX_MODELS:
        print(f"{name:20s} {plans[name]}  " + ("matches ONNX Runtime (FP16 tolerances)"
                                               if not problems[name] else "; ".join(problems[name][:5])))
    return 1 if any(problems.values()) else 0
