import copy
import json

import numpy as np
import pytest
import torch

import grank.train as T
from grank.checkpoint import build_model, load_checkpoint
from grank.config import apply_overrides, make_config
from grank.data import split
from grank.evaluate import evaluate_model, evaluate_popularity, recommend
from grank.mips import seen_mask
from grank.batches import epoch_samples, eval_inputs, eval_times


def _fixed_batch(data, cfg):
    sp = split(data, cfg.train.max_users)
    u, e = epoch_samples(sp, cfg.model.max_history, np.random.default_rng(123))
    return T.make_batch(data, u[:64], e[:64], cfg)


def _loss(model, batch, cfg):
    torch.manual_seed(7)  # the same negatives for both measurements
    model.eval()
    with torch.no_grad():
        return {k: float(v) for k, v in T.losses(model, batch, cfg).items()}


def test_tiny_training_lowers_every_loss(ml100k, tiny_cfg, tiny_trained):
    model, cfg, out, summary = tiny_trained
    batch = _fixed_batch(ml100k, cfg)
    torch.manual_seed(cfg.seed)
    fresh = build_model(cfg, ml100k)
    before, after = _loss(fresh, batch, cfg), _loss(model, batch, cfg)
    for k in ("ntp", "total"):
        # 0.5 nats: the target's probability at least 1.6x higher than before training
        assert after[k] < before[k] - 0.5, (k, before[k], after[k])
    # the auxiliary tokens' loss pulls on shared weights at train.loss_weights[1] (0.03): it falls less
    assert after["sa"] < before["sa"] - 0.05, ("sa", before["sa"], after["sa"])
    # The default Ranker scores on its own (fused) from a zero-initialised last layer and never
    # pulls the shared table, so 3 tiny epochs (about 60 steps) hardly move L_CA; that it learns
    # is checked on one batch: 40 steps of the Ranker's own parameters fit it.
    assert model.ranker.head[-1].weight.abs().max() > 0  # it trained
    fit = copy.deepcopy(model).train()
    opt = torch.optim.Adam(fit.ranker.parameters(), lr=1e-2)
    for _ in range(40):
        torch.manual_seed(0)  # the same hard and random negatives every step
        ca = T.losses(fit, batch, cfg)["ca"]
        opt.zero_grad()
        ca.backward()
        opt.step()
    torch.manual_seed(0)
    with torch.no_grad():
        assert float(T.losses(fit, batch, cfg)["ca"]) < after["ca"] - 0.5
    hist = summary["history"]
    assert hist[-1]["loss_total"] < hist[0]["loss_total"]
    saved = json.loads((out / "train.json").read_text())
    assert saved["best"]["epoch"] >= 1 and saved["sequences_per_s"] > 0


def test_training_is_deterministic(ml100k, tiny_cfg, tmp_path):
    a = T.train(tiny_cfg, ml100k, tmp_path / "a", progress=False)
    b = T.train(tiny_cfg, ml100k, tmp_path / "b", progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "sequences_per_s")} for r in h]
    assert strip(a["history"]) == strip(b["history"])
    c = T.train(make_config("tiny", seed=1), ml100k, tmp_path / "c", progress=False)
    assert strip(c["history"]) != strip(a["history"])


def test_interrupted_training_resumes_identically(ml100k, tiny_cfg, tmp_path, interrupt_at_epoch_2):
    straight = T.train(tiny_cfg, ml100k, tmp_path / "straight", progress=False)
    interrupt_at_epoch_2(lambda: T.train(tiny_cfg, ml100k, tmp_path / "resumed", progress=False))
    resumed = T.train(tiny_cfg, ml100k, tmp_path / "resumed", progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "sequences_per_s")} for r in h]
    assert strip(resumed["history"]) == strip(straight["history"])


def test_resume_refuses_another_config(ml100k, tiny_cfg, tiny_trained):
    _, _, out, _ = tiny_trained
    other = make_config("tiny", overrides={"train.lr": 0.5})
    with pytest.raises(ValueError, match="another config"):
        T.train(other, ml100k, out, progress=False)


def test_checkpoint_alone_rebuilds_the_model(ml100k, tiny_trained):
    model, cfg, out, _ = tiny_trained
    again, cfg2, ck = load_checkpoint(out / "best.pt", ml100k)
    assert cfg2 == cfg
    sp = split(ml100k)
    ids, rat, feats, _, _ = eval_inputs(sp, sp.users[:4], "test", cfg.model.ranker_history)
    args = (torch.as_tensor(ids), torch.as_tensor(rat), torch.as_tensor(feats))
    with torch.no_grad():
        assert torch.equal(model.encode_users(*args), again.encode_users(*args))


@pytest.mark.parametrize("command", [["grank", "evaluate", "{ck}"], ["export", "onnx", "--checkpoint", "{ck}"]])
def test_a_missing_checkpoint_is_a_clear_error_not_a_traceback(command, tmp_path):
    """On a fresh clone no model is trained yet: the tools that read one name the path and the
    make target that writes it, and exit 2."""
    import subprocess
    import sys
    ck = tmp_path / "none" / "best.pt"
    out = subprocess.run([sys.executable, "-m", *(c.format(ck=ck) for c in command)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert f"error: checkpoint {ck}: no such file" in out.stderr and "make train" in out.stderr
    assert "Traceback" not in out.stderr


def test_served_pipeline_output(ml100k, tiny_trained):
    model, cfg, _, _ = tiny_trained
    sp = split(ml100k)
    users = sp.users[:16]
    ids, rat, feats, _, seen = eval_inputs(sp, users, "test", cfg.model.ranker_history)
    excl = seen_mask(seen, ml100k.n_items)
    out, scores, gen = recommend(model, torch.as_tensor(ids), torch.as_tensor(rat),
                                 torch.as_tensor(feats), cfg.eval.k1, cfg.eval.k2, excl,
                                 torch.as_tensor(eval_times(sp, users, "test")))
    assert out.shape == (16, cfg.eval.k2) and gen.shape == (16, cfg.eval.k1)
    assert (scores[:, :-1] >= scores[:, 1:]).all()                      # sorted
    for b in range(16):
        assert len(set(out[b].tolist())) == cfg.eval.k2                  # no duplicates
        assert set(out[b].tolist()) <= set(gen[b].tolist())              # re-ranks the MIPS set
        assert not set(out[b].tolist()) & set(seen[b].tolist())          # seen items excluded
    res = evaluate_model(model, sp, "test", cfg.eval, users=users, progress=False)
    assert 0 <= res["HR@10"] <= res["HR@20"] <= res[f"candidate_recall@{cfg.eval.k1}"] <= 1


def test_trained_model_beats_chance_on_validation(ml100k, tiny_trained):
    """Tiny and short, so only a weak bar: clearly above a random ranking."""
    model, cfg, _, summary = tiny_trained
    chance = cfg.eval.ks[-1] / ml100k.n_items
    res = evaluate_model(model, split(ml100k, cfg.train.max_users), "val", cfg.eval, progress=False)
    assert res[f"HR@{cfg.eval.ks[-1]}"] > 2 * chance


def test_popularity_baseline(ml100k, tiny_cfg):
    res = evaluate_popularity(split(ml100k), "test", tiny_cfg.eval)
    assert 0.02 < res["HR@10"] < 0.5  # popularity is a real, non-trivial baseline on ML-100K


def test_results_table_has_every_row(tmp_path):
    """`make evaluate` end to end on the tiny preset: every row trained, evaluated, written."""
    from grank.report import ROWS, results
    res = results("tiny", 0, str(tmp_path / "art"), docs=str(tmp_path / "docs"), command="test")
    every = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert list(every) == ["ml-100k"]  # keyed by data set
    saved = every["ml-100k"]
    assert [r["model"] for r in saved["rows"]] == list(ROWS)
    assert "leave-last-out" in saved["protocol"]
    for r in saved["rows"]:
        for k in (5, 10, 20):
            assert 0 <= r[f"NDCG@{k}"] <= r[f"HR@{k}"] <= 1
            if r["model"] in ("popularity", "sasrec", "generator_only", "generator_aux"):
                # single-stage: removing seen items can only move the target up
                assert r[f"HR@{k}"] >= r["unfiltered"][f"HR@{k}"]
    md = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert all(f"| {row} |" in md for row in ROWS)
    # the rows with a fused Ranker carry their fitted served blend, in the json and the table
    assert [r["model"] for r in saved["rows"] if "blend" in r] == ["grank", "generator_ranker_no_aux"]
    assert "Served blend of each Ranker" in md and "| grank | " in md.split("Served blend")[1]
    assert "(published)" not in md  # ML-1M anchors are not shown beside ML-100K numbers
    assert (tmp_path / "docs" / "training_curves-ml-100k.png").stat().st_size > 10_000
    # a second call reuses checkpoints and cached evaluations: same numbers
    again = results("tiny", 0, str(tmp_path / "art"), docs=str(tmp_path / "docs2"), command="test")
    assert [r["HR@10"] for r in again["rows"]] == [r["HR@10"] for r in res["rows"]]
    # another data set's section is added beside it, the first one kept as it was
    results("tiny", 0, str(tmp_path / "art"), rows=("popularity",), overrides={"dataset": "synthetic"},
            docs=str(tmp_path / "docs"), command="test")
    both = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert list(both) == ["ml-100k", "synthetic"] and both["ml-100k"] == saved
    md = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "## ml-100k (tiny preset)" in md and "## synthetic (tiny preset)" in md


def test_speed_projection(ml100k, tiny_cfg):
    r = T.measure_speed(tiny_cfg, ml100k, steps=3, warmup=1)
    assert r["step_seconds"] > 0 and r["steps_per_epoch"] >= 1
    assert r["projected_run_minutes"] == pytest.approx(
        r["step_seconds"] * r["steps_per_epoch"] * tiny_cfg.train.epochs / 60, rel=0.05, abs=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_a_gpu_gives_a_checkpoint_that_loads_on_the_cpu(ml100k, tiny_cfg, tmp_path):
    s = T.train(tiny_cfg, ml100k, tmp_path, progress=False, device="cuda")
    assert s["device"] == "cuda" and s["history"][-1]["loss_total"] < s["history"][0]["loss_total"]
    model, cfg, _ = load_checkpoint(tmp_path / "best.pt", ml100k)
    assert next(model.parameters()).device.type == "cpu"
    res = evaluate_model(model, split(ml100k, cfg.train.max_users), "val", cfg.eval, progress=False)
    assert res["HR@10"] > 0


def _ranker_losses(data, cfg, users, ends):
    """(model, losses) of a fresh model on 32 training windows, L_CA's gradient computed. Its
    Ranker gets a random last layer: a zero one (the initialisation) scores every list alike."""
    torch.manual_seed(0)
    model = build_model(cfg, data)
    for p in model.ranker.head[-1].parameters():
        torch.nn.init.normal_(p, std=0.5)
    ls = T.losses(model, T.make_batch(data, users[:32], ends[:32], cfg), cfg)
    ls["ca"].backward()
    return model, ls


def test_the_ranker_learns_its_own_score(ml100k, tiny_cfg):
    """L_CA is InfoNCE over the Ranker's own scores, so the fusion weight (a serving-time mix)
    does not change it, and its gradient reaches the Ranker."""
    sp = split(ml100k, tiny_cfg.train.max_users)
    users, ends = epoch_samples(sp, tiny_cfg.model.max_history, np.random.default_rng(0))
    out = {}
    for w in (0.5, 3.0):
        cfg = apply_overrides(tiny_cfg, {"model.ranker_fusion": w})
        model, out[w] = _ranker_losses(ml100k, cfg, users, ends)
        assert model.ranker.q.weight.grad.abs().sum() > 0
    assert out[0.5]["ca"].item() == pytest.approx(out[3.0]["ca"].item(), abs=1e-6)
