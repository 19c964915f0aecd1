"""The Ranker's served blend, fitted on validation after training (grank.blend)."""
import json

import pytest
import torch
import torch.nn.functional as F

from grank.batches import eval_inputs, eval_times
from grank.blend import applies, features, fit, fit_blend, weight_names
from grank.config import effective_dict, make_config
from grank.data import split
from grank.mips import mips_top_k, seen_mask
from grank.popularity import LOG_SCALE
from grank.checkpoint import build_model, load_checkpoint
from grank.train import fit_saved_blend, train


def test_the_fit_recovers_the_weights_that_generated_the_choices():
    """Lists whose chosen item is drawn from softmax(x @ w): the convex fit finds w's ratios to
    the Generator's weight (the temperature, 2 here, is divided out)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6000, 20, 4, generator=g)
    true = torch.tensor([1.0, 0.5, -0.3, 0.2])
    y = torch.multinomial((x @ (2.0 * true)).softmax(-1), 1, generator=g).squeeze(1)
    w, scale, before, after = fit(x, y, torch.zeros(3))
    assert torch.allclose(w, true[1:], atol=0.06), w
    assert scale == pytest.approx(2.0, abs=0.15) and after < before
    # the loss it reports is that of the fitted weights at the fitted scale
    assert F.cross_entropy(x @ (scale * torch.cat([torch.ones(1), w])), y).item() == pytest.approx(after, abs=1e-4)


def test_the_fit_ignores_candidates_masked_out_of_the_list():
    """MIPS fills a short list with -inf scores (a user with fewer unseen items than k1): those
    candidates take no part, and the fit gives the same weights as without them."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 12, 3, generator=g)
    true = torch.tensor([1.0, -0.4, 0.3])
    y = torch.multinomial((x @ (2.0 * true)).softmax(-1), 1, generator=g).squeeze(1)
    padded = torch.cat([x, torch.randn(3000, 4, 3, generator=g)], 1)
    padded[:, 12:, 0] = float("-inf")
    w, _, _, after = fit(x, y, torch.zeros(2))
    w2, _, _, after2 = fit(padded, y, torch.zeros(2))
    assert torch.isfinite(w2).all() and torch.allclose(w, w2, atol=1e-4) and after2 == pytest.approx(after, abs=1e-5)


def test_a_fit_that_would_rank_against_the_generator_is_an_error():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2000, 10, 2, generator=g)
    y = (-x[..., 0]).argmax(1)  # the target is always the Generator's worst candidate
    with pytest.raises(RuntimeError, match=r"blend fit failed: .*Generator weight .* \(must be > 0\)"):
        fit(x, y, torch.zeros(1))


def test_training_fits_the_blend_into_the_kept_checkpoint(ml100k, tiny_cfg, tiny_trained):
    """train.fit_blend (the default): best.pt carries the fitted weights and the summary says
    what the fit saw; the loaded model serves Generator score + w_r x r + w . log1p(counts)."""
    model, cfg, out, summary = tiny_trained
    assert applies(cfg)
    b = summary["blend"]
    assert list(b["weights"]) == weight_names(cfg) == ["ranker", "log1p_count_7d", "log1p_count_30d",
                                                         "log1p_count_all"]
    assert b["fitted_on"] == "val" and b["users"] > 0 and b["loss_after"] <= b["loss_before"]
    assert json.loads((out / "train.json").read_text())["blend"] == b
    w = model.ranker.blend
    assert w.tolist() == pytest.approx(list(b["weights"].values()), abs=1e-4)
    assert w.tolist() != pytest.approx([cfg.model.ranker_fusion, 0, 0, 0])  # the fit moved them
    # the served score is that blend of its parts, on real candidates
    sp = split(ml100k, cfg.train.max_users)
    x, y, kept = features(model, sp, "val", cfg.eval, progress=False)
    assert x.shape[-1] == 2 + 3 and len(y) == b["users"] == int(kept.sum()) and len(kept) == len(sp.users)
    scaled = b["generator_weight"] * torch.cat([torch.ones(1), w])
    assert F.cross_entropy(x @ scaled, y).item() == pytest.approx(b["loss_after"], abs=1e-3)
    assert (b["k1"], b["ranker_history"]) == (cfg.eval.k1, cfg.model.ranker_history)


def test_the_blend_features_are_the_parts_of_the_served_score(ml100k, tiny_trained):
    """What the fit weighs is what is served: for the same candidates, Generator score + the
    blend x the other feature columns equals the Ranker stage's served score (model.rank, the
    graph the export traces)."""
    model, cfg, _, _ = tiny_trained
    sp = split(ml100k, cfg.train.max_users)
    x, y, kept = features(model, sp, "val", cfg.eval, progress=False)
    ids, rat, feats, targets, seen = eval_inputs(sp, sp.users, "val", cfg.model.ranker_history)
    ids, rat, feats = map(torch.as_tensor, (ids, rat, feats))
    with torch.no_grad():
        table = model.item_vectors()
        u = model.encode_users(ids, rat, feats, table)
        _, cand = mips_top_k(u, table, cfg.eval.k1, cfg.model.tau, seen_mask(seen, ml100k.n_items))
        served = model.rank(u, ids, rat, cand, table, torch.as_tensor(eval_times(sp, sp.users, "val")))
    keep = (cand == torch.as_tensor(targets)[:, None]).any(1)
    assert torch.equal(keep, kept) and int(keep.sum()) == len(y)
    blended = x[..., 0] + x[..., 1:] @ model.ranker.blend
    assert torch.allclose(blended, served[keep], atol=1e-4)


def test_the_fit_changes_only_the_blend_of_the_checkpoint_it_reads(ml100k, tiny_cfg, tmp_path):
    """fit_saved_blend reads the kept checkpoint itself (not whatever the training loop holds)
    and rewrites only ranker.blend in it; a second call leaves it alone."""
    cfg = make_config("tiny", "grank", overrides={"train.fit_blend": False, "train.epochs": 1})
    train(cfg, ml100k, tmp_path, progress=False)
    before = torch.load(tmp_path / "best.pt", weights_only=True)
    info = fit_saved_blend(tmp_path / "best.pt", ml100k, progress=False)
    after = torch.load(tmp_path / "best.pt", weights_only=True)
    assert after["blend"] == info and "blend" not in before
    changed = [k for k in before["model"] if not torch.equal(before["model"][k], after["model"][k])]
    assert changed == ["ranker.blend"]
    assert info["val_before"]["HR@10"] == pytest.approx(before["state"]["best"]["HR@10"], abs=1e-5)
    again = (tmp_path / "best.pt").read_bytes()
    assert fit_saved_blend(tmp_path / "best.pt", ml100k, progress=False) == info
    assert (tmp_path / "best.pt").read_bytes() == again


def test_a_finished_run_resumed_keeps_its_fit(ml100k, tiny_cfg, tiny_trained):
    """Resuming a finished run (what `grank results` does when a row is already trained) does
    not train again and does not refit a fitted checkpoint."""
    _, _, out, summary = tiny_trained
    before = (out / "best.pt").read_bytes()
    again = train(tiny_cfg, ml100k, out, progress=False)
    assert again["blend"] == summary["blend"] and again["history"] == summary["history"]
    assert (out / "best.pt").read_bytes() == before


def test_until_the_fit_the_ranker_is_served_at_ranker_fusion(ml100k, tiny_cfg):
    """A new Ranker's blend is (ranker_fusion, 0, 0, 0): served score = Generator score +
    ranker_fusion x r; popularity weights enter the served score linearly, per log1p(count)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg, ml100k)
    assert model.ranker.blend.tolist() == pytest.approx([tiny_cfg.model.ranker_fusion, 0, 0, 0])
    for p in model.ranker.head[-1].parameters():
        torch.nn.init.normal_(p, std=0.5)
    model.eval()
    B, C, R, d = 2, 5, tiny_cfg.model.ranker_history, tiny_cfg.model.d_model
    u, cand, hist = torch.randn(B, d), torch.randn(B, C, d), torch.randn(B, R, d)
    rat, pad, pop = torch.randint(0, 6, (B, R)), torch.zeros(B, R, dtype=torch.bool), torch.rand(B, C, 3)
    with torch.no_grad():
        base = model.ranker(u, cand, hist, rat, pad, pop)
        own = model.ranker.own_score(cand, hist, rat, pad, pop)
        gen = (u[:, None, :] * cand).sum(-1) / tiny_cfg.model.tau
        assert torch.allclose(base, gen + tiny_cfg.model.ranker_fusion * own, atol=1e-5)
        model.ranker.blend[2] = 0.5
        moved = model.ranker(u, cand, hist, rat, pad, pop)
    assert torch.allclose(moved - base, 0.5 * LOG_SCALE * pop[..., 1], atol=1e-5)
    # a state without the blend is not a checkpoint of this format: loading it is an error
    state = {k: v for k, v in model.state_dict().items() if k != "ranker.blend"}
    with pytest.raises(RuntimeError, match="ranker.blend"):
        build_model(tiny_cfg, ml100k).load_state_dict(state)


def test_fit_blend_is_a_step_after_training_for_every_ranker():
    """The setting never changes how a model trains (resume and staleness ignore it); every
    variant with a Ranker has a blend to fit."""
    a, b = make_config("tiny", "grank"), make_config("tiny", "grank", overrides={"train.fit_blend": False})
    assert effective_dict(a) == effective_dict(b)
    assert applies(a) and not applies(b)
    assert not applies(make_config("tiny", "generator_only"))
    assert applies(make_config("tiny", "generator_ranker_no_aux"))


def test_fitting_a_model_without_a_ranker_names_the_setting(ml100k):
    only = make_config("tiny", "generator_only")
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="blend fit: needs a Ranker .*model.ranker=false"):
        fit_blend(build_model(only, ml100k), split(ml100k, only.train.max_users), only, progress=False)
    with pytest.raises(ValueError, match="popularity: required for a model without a Ranker"):
        features(build_model(only, ml100k), split(ml100k, 50), "val", only.eval, progress=False)


def test_training_without_the_fit_keeps_ranker_fusion(ml100k, tiny_cfg, tmp_path):
    cfg = make_config("tiny", "grank", overrides={"train.fit_blend": False, "train.epochs": 1})
    summary = train(cfg, ml100k, tmp_path, progress=False)
    assert "blend" not in summary
    model, _, ck = load_checkpoint(tmp_path / "best.pt", ml100k)
    assert "blend" not in ck and model.ranker.blend.tolist() == pytest.approx([cfg.model.ranker_fusion, 0, 0, 0])


def test_results_fit_a_run_trained_without_the_fit(ml100k, tmp_path):
    """`grank results` on a finished run trained with train.fit_blend=false: the fit is a step
    after training, so the run is reused, not retrained, and only its blend is fitted."""
    from grank.report import run_dir, run_row
    out = run_dir(tmp_path, "ml-100k", "tiny", "grank")
    unfitted = train(make_config("tiny", "grank", overrides={"train.fit_blend": False}), ml100k, out, progress=False)
    assert "blend" not in unfitted
    (out / "last.pt").unlink()  # nothing to resume from: a retraining would start over
    row = run_row("grank", "tiny", 0, tmp_path, {}, retrain=False)
    summary = json.loads((out / "train.json").read_text())
    assert summary["history"] == unfitted["history"] and not (out / "last.pt").exists()  # not retrained
    assert row["blend"] == summary["blend"]["weights"]
    assert load_checkpoint(out / "best.pt", ml100k)[2]["blend"]["weights"] == row["blend"]
