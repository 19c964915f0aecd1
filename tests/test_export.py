"""Export: ONNX graphs match PyTorch on real users (Polygraphy), names/shapes come from the
signatures, the batch axis is dynamic, large tables go to external data."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.onnx_models import export_one, graphs
from export.parity import check_onnx
from grank.signatures import MIPS, ONNX_MODELS, RANKER, USER_ENCODER, mips_signature, signatures


def test_parity_on_real_users(tiny_export):
    assert set(tiny_export.problems) == set(ONNX_MODELS)
    assert tiny_export.problems == {n: [] for n in ONNX_MODELS}
    assert len(tiny_export.arrays["history_ids"]) == 64


def test_onnx_names_dtypes_and_dynamic_batch(tiny_export):
    sigs = signatures(tiny_export.cfg, tiny_export.ck["dataset"])
    for name, path in tiny_export.paths.items():
        g = onnx.load(str(path)).graph
        for vals, tensors in ((g.input, sigs[name].inputs), (g.output, sigs[name].outputs)):
            assert [v.name for v in vals] == [t.name for t in tensors]  # never "input.1"
            for v, t in zip(vals, tensors):
                dims = v.type.tensor_type.shape.dim
                assert dims[0].dim_param == "batch"
                assert [d.dim_value for d in dims[1:]] == list(t.dims)
                assert onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) == np.dtype(t.dtype)


@pytest.mark.parametrize("batch", [1, 7])
def test_any_batch_size_runs(tiny_export, batch):
    """The traced batch was 64; other sizes must give the same rows."""
    a = tiny_export.arrays
    sess = ort.InferenceSession(str(tiny_export.paths[USER_ENCODER]))
    got = sess.run(None, {k: a[k][:batch] for k in ("history_ids", "history_events", "user_features")})[0]
    np.testing.assert_allclose(got, a["user_embedding"][:batch], atol=1e-4, rtol=1e-4)


def test_mips_never_returns_history_or_padding(tiny_export):
    a = tiny_export.arrays
    sess = ort.InferenceSession(str(tiny_export.paths[MIPS]))
    ids, _ = sess.run(None, {"user_embedding": a["user_embedding"], "history_ids": a["history_ids"]})
    assert (ids > 0).all()
    for row, hist in zip(ids, a["history_ids"]):
        assert not set(row.tolist()) & set(hist.tolist())


def test_parity_check_catches_a_wrong_model(tiny_export, tmp_path):
    """The check is not vacuous: a ranker exported from perturbed weights must fail it."""
    import torch
    model = tiny_export.model
    cfg = tiny_export.cfg
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in model.ranker.head.parameters():
                p.add_(0.5)
        bad = export_one(graphs(model, cfg.eval.k1, cfg.eval.k2)[RANKER], signatures(cfg, tiny_export.ck["dataset"])[RANKER],
                         tiny_export.arrays, tmp_path / "ranker.onnx")
    finally:
        model.load_state_dict(state)
    problems = check_onnx({RANKER: bad}, cfg, tiny_export.ck["dataset"], tiny_export.arrays)[RANKER]
    assert problems and any("scores" in p for p in problems)


def test_external_data_for_large_tables(tiny_export, tmp_path):
    """Past the protobuf limit the weights go to <model>.onnx.data; forced here with a tiny
    threshold so that the path is exercised."""
    cfg, a = tiny_export.cfg, tiny_export.arrays
    g = graphs(tiny_export.model, cfg.eval.k1, cfg.eval.k2)[MIPS]
    path = export_one(g, mips_signature(cfg), a, tmp_path / "mips.onnx", external_above=0)
    assert (tmp_path / "mips.onnx.data").stat().st_size > 0
    assert check_onnx({MIPS: path}, cfg, tiny_export.ck["dataset"], a)[MIPS] == []


def test_polygraphy_cli_repeats_the_check(tiny_export):
    """The saved inputs / reference outputs let `polygraphy run` repeat the check (README)."""
    out = tiny_export.paths[USER_ENCODER].parent
    cmd = [str(Path(sys.executable).parent / "polygraphy"), "run", str(tiny_export.paths[USER_ENCODER]), "--onnxrt",
           "--load-inputs", str(out / "parity" / f"{USER_ENCODER}.inputs.json"),
           "--load-outputs", str(out / "parity" / f"{USER_ENCODER}.reference.json"),
           "--atol", "1e-4", "--rtol", "1e-4"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "PASSED" in r.stdout + r.stderr


def test_parity_tolerates_tie_swaps_but_not_wrong_ids(tiny_export, tmp_path):
    """Two identical item vectors tie exactly: either order is a correct top-k, and the check
    must accept both; a genuinely different id must still be caught."""
    import torch

    from export.onnx_models import MipsTopK
    cfg, a = tiny_export.cfg, dict(tiny_export.arrays)
    table = tiny_export.model.item_vectors().detach().clone()
    table[5] = table[6] = table[1:].norm(dim=1).max() * 3 * a["user_embedding"].mean(0) / \
        np.linalg.norm(a["user_embedding"].mean(0))  # a twin pair that tops most lists
    mod = MipsTopK(table, cfg.eval.k1, cfg.model.tau).eval()
    path = export_one(mod, mips_signature(cfg), a, tmp_path / "mips.onnx")
    with torch.no_grad():
        ids, scores = mod(torch.as_tensor(a["user_embedding"]), torch.as_tensor(a["history_ids"]))
    a["candidate_ids"], a["candidate_scores"] = ids.numpy().copy(), scores.numpy()
    both = ((a["candidate_ids"] == 5).any(1) & (a["candidate_ids"] == 6).any(1))[:, None]
    swapped = a["candidate_ids"].copy()
    swapped[both & (a["candidate_ids"] == 5)], swapped[both & (a["candidate_ids"] == 6)] = 6, 5
    assert both.sum() > 10  # rows where neither twin is in the history
    assert check_onnx({MIPS: path}, cfg, tiny_export.ck["dataset"], {**a, "candidate_ids": swapped})[MIPS] == []
    wrong = a["candidate_ids"].copy()
    wrong[0, 1] = 10 ** 6  # an id no correct top-k contains
    assert check_onnx({MIPS: path}, cfg, tiny_export.ck["dataset"], {**a, "candidate_ids": wrong})[MIPS]


def test_export_serves_the_checkpoints_serve_shape(tiny_trained, ml100k, tmp_path):
    """A checkpoint's ``serve`` section (grank.config.ServeConfig) sets the exported shape and
    ``serving`` overrides go on top."""
    import torch

    from export.build import export_checkpoint
    _, cfg, out, _ = tiny_trained
    ck = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    ck["config"]["serve"] = {"k1": 30, "history": 16}
    torch.save(ck, tmp_path / "served.pt")
    ex = export_checkpoint(tmp_path / "served.pt", tmp_path / "onnx", users=16, data=ml100k)
    assert (ex.cfg.eval.k1, ex.cfg.model.ranker_history) == (30, 16) and not any(ex.problems.values())
    sess = ort.InferenceSession(str(ex.paths[RANKER]), providers=["CPUExecutionProvider"])
    assert {i.name: i.shape[1] for i in sess.get_inputs()}["history_ids"] == 16
    ex2 = export_checkpoint(tmp_path / "served.pt", tmp_path / "onnx2", users=16, data=ml100k,
                            serving={"eval.k1": 40})
    assert (ex2.cfg.eval.k1, ex2.cfg.model.ranker_history) == (40, 16)


def test_blocked_mips_exports_with_parity(tiny_export, tmp_path):
    """The two-step top-k (grank.mips.block_top_k, on by default for large catalogues) forced
    onto the tiny table: the exported graph answers like the plain one-TopK module."""
    import torch

    from export.onnx_models import MipsTopK
    cfg, a = tiny_export.cfg, dict(tiny_export.arrays)
    table = tiny_export.model.item_vectors().detach()
    plain = MipsTopK(table, cfg.eval.k1, cfg.model.tau, block=0).eval()
    blocked = MipsTopK(table, cfg.eval.k1, cfg.model.tau, block=8).eval()
    assert blocked.pad_rows == (-table.shape[0]) % 8 and blocked.item_vectors.shape[0] % 8 == 0
    with torch.no_grad():
        ids, scores = plain(torch.as_tensor(a["user_embedding"]), torch.as_tensor(a["history_ids"]))
    a["candidate_ids"], a["candidate_scores"] = ids.numpy(), scores.numpy()
    path = export_one(blocked, mips_signature(cfg), a, tmp_path / "mips.onnx")
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert "ReduceMax" in ops and "GatherElements" in ops  # the two-step form was exported
    assert check_onnx({MIPS: path}, cfg, tiny_export.ck["dataset"], a)[MIPS] == []


def test_the_exported_ranker_is_the_trained_and_blended_one(tiny_export, tiny_trained):
    """Parity alone would also hold for an untrained Ranker (zero last layer: the MIPS order):
    the exported model has a trained score of its own and the blend fitted on validation."""
    model, cfg, _, summary = tiny_trained
    assert tiny_export.model.ranker.head[-1].weight.abs().max() > 0
    assert tiny_export.model.ranker.blend.tolist() == model.ranker.blend.tolist()
    assert tiny_export.model.ranker.blend.tolist() == pytest.approx(list(summary["blend"]["weights"].values()), abs=1e-4)
    assert tiny_export.problems == {n: [] for n in ONNX_MODELS}


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_graphs_flag_rows_with_bad_inputs_and_leave_the_others_alone(tiny_export):
    """Called directly (no validator), each ONNX graph answers a row with out-of-range or
    non-finite inputs as a flagged row (NaN embedding, or ids -1 with NaN scores); the good
    rows of the same batch keep the answer they get alone."""
    a, cfg, schema = tiny_export.arrays, tiny_export.cfg, tiny_export.ck["dataset"]
    n, n_events = schema["n_items"], len(schema["events"])
    sigs = signatures(cfg, schema)
    good = {k: v[:2].copy() for k, v in a.items()}

    def run(name, arrays):
        s = _session(tiny_export.paths[name])
        return dict(zip([t.name for t in sigs[name].outputs],
                        s.run(None, {t.name: arrays[t.name] for t in sigs[name].inputs})))

    def with_bad_row(name, tensor, value, col=-1):
        x = {k: np.concatenate([v, v[:1]]) for k, v in good.items()}  # row 2 = row 0, spoilt
        x[tensor] = x[tensor].copy()
        x[tensor][2, col] = value
        return run(name, x)

    # the guards never flag real users' rows (the reference arrays come from the guarded graphs)
    assert np.isfinite(a["user_embedding"]).all() and (a["candidate_ids"] > 0).all() and (a["ranked_ids"] > 0).all()
    enc_ok = run(USER_ENCODER, good)["user_embedding"]
    for tensor, value in (("history_ids", -1), ("history_ids", n + 1), ("history_ids", 2 ** 62),
                          ("history_events", n_events + 1), ("history_events", -3),
                          ("user_features", 10 ** 6), ("user_features", -1)):
        out = with_bad_row(USER_ENCODER, tensor, value)["user_embedding"]
        assert np.isnan(out[2]).all(), (tensor, value)
        np.testing.assert_allclose(out[:2], enc_ok, rtol=0, atol=1e-5)

    mips_ok = run(MIPS, good)
    # beyond what the encoder's final LayerNorm can output: flagged, overflowing or not
    bound = float(np.abs(enc_ok).max())
    for tensor, value, col in (("user_embedding", np.nan, 0), ("user_embedding", np.inf, 0),
                               ("user_embedding", 3e38, slice(None)), ("user_embedding", 1e38, 0),
                               ("user_embedding", -1e4, 0), ("history_ids", -5, 0),
                               ("history_ids", n + 1, 0)):
        out = with_bad_row(MIPS, tensor, value, col=col)
        assert (out["candidate_ids"][2] == -1).all() and np.isnan(out["candidate_scores"][2]).all(), (tensor, value)
        np.testing.assert_array_equal(out["candidate_ids"][:2], mips_ok["candidate_ids"])

    rank_ok = run(RANKER, good)
    assert bound < 1e4, "the test's -1e4 must be out of the encoder's range"
    bad = [("user_embedding", np.nan), ("user_embedding", -np.inf), ("user_embedding", 1e38), ("history_ids", n + 7),
           ("history_events", n_events + 1), ("candidate_ids", -1), ("candidate_ids", 0),
           ("candidate_ids", n + 1)]
    if "request_time" in good:
        bad.append(("request_time", -1))
    for tensor, value in bad:
        out = with_bad_row(RANKER, tensor, value, col=0)
        assert (out["ranked_ids"][2] == -1).all() and np.isnan(out["scores"][2]).all(), (tensor, value)
        np.testing.assert_array_equal(out["ranked_ids"][:2], rank_ok["ranked_ids"])
