"""Parity of every exported graph with PyTorch, on real users, checked with Polygraphy.

Inputs are the served histories of real users (``grank.batches.eval_inputs``, test stage); the
intermediate tensors each graph takes (user_embedding, candidate_ids) come from the PyTorch
pipeline, so every graph is compared on exactly what it sees in the ensemble.

Tolerances (both sides are float32; ONNX Runtime fuses LayerNorm/GELU/MatMul differently and
sums in another order, which moves results by a few float32 ulps per layer):
- user_embedding (LayerNorm outputs, |x| ~ 1): atol 1e-4 + rtol 1e-4;
- scores (inner products over d = 64 of such values, |s| ~ 10): atol 1e-3;
- ids: compared with ``grank.mips.topk_disagreements``: equal up to items whose scores lie
  within the score tolerance of the k-th score (ties and near ties may be cut differently).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from grank.batches import eval_inputs, eval_times
from grank.data import split as make_split
from grank.mips import topk_disagreements
from grank.signatures import (MIPS, MIPS_MERGE, RANKED_IDS, RANKER, REQUEST_TIME, USER_ENCODER,
                              shard_count, shard_of, signatures, takes_request_time)

ATOL = {"user_embedding": 1e-4, "candidate_scores": 1e-3, "scores": 1e-3}
RTOL = {"user_embedding": 1e-4, "candidate_scores": 0.0, "scores": 0.0}
TOPK = {MIPS: ("candidate_ids", "candidate_scores"), MIPS_MERGE: ("candidate_ids", "candidate_scores"),
        RANKER: (RANKED_IDS, "scores")}


def _output_key(model: str, tensor: str) -> str:
    """Where ``pipeline_arrays`` keeps ``model``'s output ``tensor``: a shard's lists are the
    merge's inputs ``candidate_ids_<s>`` / ``candidate_scores_<s>``."""
    s = shard_of(model)
    return tensor if s is None else f"{tensor}_{s}"


def real_inputs(data, cfg, n_users: int = 64, seed: int = 0, stage: str = "test") -> dict:
    """Inputs of the ONNX graphs (dense ids) for ``n_users`` random real users: name -> array
    [n, ...]; ``user_features`` only where the data set has user features."""
    sp = make_split(data, cfg.train.max_users)
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(sp.users, size=min(n_users, len(sp.users)), replace=False))
    ids, rat, feats, _, _ = eval_inputs(sp, users, stage, cfg.model.ranker_history)
    out = {"history_ids": ids, "history_events": rat}
    if feats.shape[1]:
        out["user_features"] = feats.astype(np.int64)
    if takes_request_time(cfg):
        out[REQUEST_TIME] = eval_times(sp, users, stage)[:, None]  # the replayed request's time
    return out


def pipeline_arrays(graphs: dict, inputs: dict) -> dict:
    """Run the PyTorch graphs in ensemble order; returns every tensor by name (numpy)."""
    t = {k: torch.as_tensor(v) for k, v in inputs.items()}
    with torch.no_grad():
        feats = (t["user_features"],) if "user_features" in t else ()
        t["user_embedding"] = graphs[USER_ENCODER](t["history_ids"], t["history_events"], *feats)
        if MIPS_MERGE in graphs:  # a sharded table: each shard's list, then their merge
            parts = []
            for name, g in graphs.items():
                if shard_of(name) is not None:
                    ids, sc = g(t["user_embedding"], t["history_ids"])
                    t[_output_key(name, "candidate_ids")], t[_output_key(name, "candidate_scores")] = ids, sc
                    parts += [ids, sc]
            t["candidate_ids"], t["candidate_scores"] = graphs[MIPS_MERGE](*parts)
        else:
            t["candidate_ids"], t["candidate_scores"] = graphs[MIPS](t["user_embedding"], t["history_ids"])
        when = (t[REQUEST_TIME],) if REQUEST_TIME in t else ()
        t[RANKED_IDS], t["scores"] = graphs[RANKER](t["user_embedding"], t["history_ids"],
                                                    t["history_events"], t["candidate_ids"], *when)
    return {k: v.numpy() for k, v in t.items()}


def check_onnx(paths: dict, cfg, schema: dict, arrays: dict, save_dir: Path | None = None, quiet: bool = True) -> dict[str, list[str]]:
    """Run each ONNX model with Polygraphy's ONNX Runtime runner on ``arrays`` (the PyTorch
    pipeline's tensors) and compare. Returns model name -> list of problems (empty = parity).
    With ``save_dir``, writes Polygraphy JSON inputs and reference outputs per model, so that
    ``polygraphy run <model>.onnx --onnxrt --load-inputs ... --load-outputs ...`` repeats it."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR if quiet else G_LOGGER.INFO
    sigs = signatures(cfg, schema, shard_count(paths))
    problems = {}
    for name, path in paths.items():
        sig = sigs[name]
        feed = {t.name: arrays[t.name] for t in sig.inputs}
        ref = {t.name: arrays[_output_key(name, t.name)] for t in sig.outputs}
        results = Comparator.run([OnnxrtRunner(SessionFromOnnx(str(path)), name="onnxrt")],
                                 data_loader=[feed])
        got = results[0][1][0]
        reference = ("pytorch", [IterationResult(ref, runner_name="pytorch")])
        # Polygraphy compares the float outputs elementwise; id outputs are compared below up
        # to ties (an elementwise check fails on any swap of two equally scored items)
        floats = [t.name for t in sig.outputs if t.dtype == "float32"]
        pyt = RunResults()
        for runner, out in (("pytorch", ref), ("onnxrt", got)):
            # -inf (an excluded item, when a small catalogue has fewer unseen items than the
            # list) must sit in the same places on both sides; (-inf) - (-inf) is NaN otherwise
            finite = {n: np.where(np.isneginf(out[n]), np.float32(-3e38), out[n]) for n in floats}
            pyt.append((runner, [IterationResult(finite, runner_name=runner)]))
        acc = Comparator.compare_accuracy(
            pyt, compare_func=SimpleCompareFunc(atol={n: ATOL[n] for n in floats},
                                                 rtol={n: RTOL[n] for n in floats},
                                                 check_shapes=True),
        )
        found = [] if acc else [f"{name}: {', '.join(floats)} outside atol/rtol (see Polygraphy log)"]
        for t in sig.outputs:
            if got[t.name].dtype != np.dtype(t.dtype) or got[t.name].shape != ref[t.name].shape:
                found.append(f"{name}: {t.name} is {got[t.name].dtype}{list(got[t.name].shape)}, "
                             f"expected {t.dtype}{list(ref[t.name].shape)}")
        if name in TOPK or shard_of(name) is not None:
            i, s = TOPK.get(name, TOPK[MIPS])
            found += [f"{name}: row {b}: {m}"
                      for b, m in topk_disagreements(ref[i], ref[s], got[i], got[s], ATOL[s])]
        problems[name] = found
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            save_json([feed], str(save_dir / f"{name}.inputs.json"))
            only_ref = RunResults()
            only_ref.append(reference)
            save_json(only_ref, str(save_dir / f"{name}.reference.json"))
    return problems
