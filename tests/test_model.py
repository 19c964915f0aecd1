"""Inference-graph properties: the training-only auxiliary tokens cannot reach the served path,
and the served user vector is exactly the newest U token of the training forward."""
import pytest
import torch

from grank.config import make_config
from grank.checkpoint import build_model


def _model(ml100k, variant="grank", **over):
    cfg = make_config("tiny", variant, overrides={"model.dropout": 0.0, **over})
    torch.manual_seed(0)
    m = build_model(cfg, ml100k).eval()
    return m, cfg


def _inputs(ml100k, B=6, R=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, ml100k.n_items + 1, (B, R), generator=g)
    ids[0, :20] = 0  # a short, left-padded history
    rat = torch.randint(1, 6, (B, R), generator=g).masked_fill(ids == 0, 0)
    feats = torch.as_tensor(ml100k.user_feats[:B])
    return ids, rat, feats


def _when(ml100k, B=6):
    """Request times [B] inside the data's range (the default Ranker counts popularity before them)."""
    return torch.as_tensor(ml100k.times[:: len(ml100k.times) // B][:B])


def _train_forward(m, ids, rat, feats, cand=None):
    """The training-time layout: U tokens for every slot (+ optional auxiliary tokens)."""
    L = m.cfg.max_history
    table = m.item_vectors()
    g = m.generator
    emb, pad, pools = m.history_inputs(table, ids, rat)
    h = g.history_tokens(emb[:, -L:], rat[:, -L:])
    xs = [g.query_tokens(feats, pools[:, -L:])]
    vis = [torch.ones(L, L, dtype=torch.bool).tril()[None]]
    if cand is not None:
        xs.append(g.aux_tokens(torch.nn.functional.embedding(cand, table)))
        vis.append(torch.ones(1, cand.shape[1], L, dtype=torch.bool))
    return g.run(h, pad[:, -L:], torch.cat(xs, 1), torch.cat(vis, 1))


def test_aux_tokens_cannot_change_u_or_history(ml100k):
    m, cfg = _model(ml100k)
    ids, rat, feats = _inputs(ml100k)
    L = cfg.model.max_history
    with torch.no_grad():
        h0, x0 = _train_forward(m, ids, rat, feats)
        h1, x1 = _train_forward(m, ids, rat, feats, torch.randint(1, 100, (6, 5)))
        h2, x2 = _train_forward(m, ids, rat, feats, torch.randint(100, 900, (6, 9)))
    assert torch.equal(h0, h1) and torch.equal(h0, h2)        # history never attends to them
    assert torch.allclose(x0, x1[:, :L], atol=1e-6) and torch.allclose(x0, x2[:, :L], atol=1e-6)
    assert not torch.allclose(x1[:, L:L + 5], x2[:, L:L + 5])  # (they do see their own content)


def test_no_gradient_flows_from_aux_inputs_to_u(ml100k):
    m, cfg = _model(ml100k)
    ids, rat, feats = _inputs(ml100k)
    L = cfg.model.max_history
    table = m.item_vectors()
    aux_in = torch.nn.functional.embedding(torch.randint(1, 100, (6, 4)), table).detach().requires_grad_()
    g = m.generator
    emb, pad, pools = m.history_inputs(table, ids, rat)
    h = g.history_tokens(emb[:, -L:], rat[:, -L:])
    x = torch.cat([g.query_tokens(feats, pools[:, -L:]), g.aux_tokens(aux_in)], 1)
    vis = torch.cat([torch.ones(L, L, dtype=torch.bool).tril(), torch.ones(4, L, dtype=torch.bool)])[None]
    h_out, x_out = g.run(h, pad[:, -L:], x, vis)
    (x_out[:, :L].sum() + h_out.sum()).backward()
    assert aux_in.grad is None or torch.count_nonzero(aux_in.grad) == 0


def test_served_user_vector_is_the_newest_training_u_token(ml100k):
    m, cfg = _model(ml100k)
    ids, rat, feats = _inputs(ml100k)
    with torch.no_grad():
        _, x = _train_forward(m, ids, rat, feats)
        served = m.encode_users(ids, rat, feats)
    assert torch.allclose(x[:, -1], served, atol=1e-5)


def test_sasrec_serves_the_last_history_state(ml100k):
    m, cfg = _model(ml100k, "sasrec")
    ids, rat, feats = _inputs(ml100k)
    L = cfg.model.max_history
    with torch.no_grad():
        table = m.item_vectors()
        emb, pad, _ = m.history_inputs(table, ids, rat)
        h, _ = m.generator.run(m.generator.history_tokens(emb[:, -L:], rat[:, -L:]), pad[:, -L:])
        assert torch.allclose(h[:, -1], m.encode_users(ids, rat, feats), atol=1e-6)


def test_history_is_causal(ml100k):
    """Changing a newer history item never changes the outputs of older slots."""
    m, cfg = _model(ml100k)
    ids, rat, feats = _inputs(ml100k)
    ids2 = ids.clone()
    ids2[:, -1] = (ids[:, -1] % ml100k.n_items) + 1
    with torch.no_grad():
        h1, x1 = _train_forward(m, ids, rat, feats)
        h2, x2 = _train_forward(m, ids2, rat, feats)
    assert torch.allclose(h1[:, :-1], h2[:, :-1], atol=1e-6)
    assert torch.allclose(x1[:, :-1], x2[:, :-1], atol=1e-6)
    assert not torch.allclose(x1[:, -1], x2[:, -1])


def test_padding_row_is_zero_and_ranker_scores_shape(ml100k):
    m, cfg = _model(ml100k)
    ids, rat, feats = _inputs(ml100k)
    with torch.no_grad():
        t = m.item_vectors()
        assert torch.count_nonzero(t[0]) == 0
        u = m.encode_users(ids, rat, feats)
        cand = torch.randint(1, ml100k.n_items + 1, (6, 11))
        s = m.rank(u, ids, rat, cand, request_time=_when(ml100k))
    assert s.shape == (6, 11) and torch.isfinite(s).all()


def test_prefix_means_hand_computed():
    from grank.model import prefix_means
    emb = torch.tensor([[[1.0], [2.0], [3.0], [4.0], [6.0]]])
    mask = torch.tensor([[False, True, True, False, True]])
    assert prefix_means(emb, mask)[0, :, 0].tolist() == pytest.approx([0.0, 2.0, 2.5, 2.5, 11 / 3])
    assert prefix_means(emb, mask, window=2)[0, :, 0].tolist() == pytest.approx([0.0, 2.0, 2.5, 3.0, 6.0])


def test_untrained_ranker_keeps_the_generator_order(ml100k):
    m, cfg = _model(ml100k)
    ids, rat, feats = _inputs(ml100k)
    with torch.no_grad():
        u = m.encode_users(ids, rat, feats)
        cand = torch.randint(1, ml100k.n_items + 1, (6, 11))
        mips = (u[:, None, :] * torch.nn.functional.embedding(cand, m.item_vectors())).sum(-1)
        assert torch.allclose(m.rank(u, ids, rat, cand, request_time=_when(ml100k)), mips / cfg.model.tau,
                              atol=1e-5)


def test_a_shorter_served_history_is_the_trained_model_on_a_truncated_history(tiny_trained, ml100k):
    """Serving R < trained R (``load_checkpoint(serving=...)``) must equal the trained model fed
    the same newest R items with the older slots padded: the Ranker's recency weights and U's
    pooled means line up from the newest slot, so nothing is re-learnt or shifted."""
    import torch

    from grank.batches import eval_inputs, eval_times
    from grank.data import split
    from grank.checkpoint import load_checkpoint
    model, cfg, out, _ = tiny_trained
    short, scfg, _ = load_checkpoint(out / "best.pt", ml100k, serving={"model.ranker_history": 16})
    assert scfg.model.ranker_history == 16 and cfg.model.ranker_history == 32
    sp = split(ml100k)
    users = sp.users[:64]
    ids, rat, feats, _, _ = (torch.as_tensor(x) if i < 3 else x
                             for i, x in enumerate(eval_inputs(sp, users, "test", 32)))
    assert (ids[:, :16] != 0).any(), "some users must have more than 16 items for this test to bite"
    cut_ids, cut_rat = ids.clone(), rat.clone()
    cut_ids[:, :16] = 0
    cut_rat[:, :16] = 0
    cand = torch.randint(1, ml100k.n_items + 1, (len(users), 20))
    when = torch.as_tensor(eval_times(sp, users, "test"))
    with torch.no_grad():
        u_full = model.encode_users(cut_ids, cut_rat, feats)
        u_short = short.encode_users(ids[:, 16:], rat[:, 16:], feats)
        torch.testing.assert_close(u_short, u_full)
        torch.testing.assert_close(short.rank(u_short, ids[:, 16:], rat[:, 16:], cand, request_time=when),
                                   model.rank(u_full, cut_ids, cut_rat, cand, request_time=when))
        assert not torch.allclose(model.encode_users(ids, rat, feats), u_full)  # the cut mattered


def test_served_score_is_the_mips_score_plus_the_rankers_own(ml100k):
    """The Ranker's own score never sees the user vector (its signature has none); the served
    score is the MIPS score + model.ranker_fusion x it until the blend is fitted, and an
    untrained Ranker keeps the Generator's order (zero-initialised last layer)."""
    m, cfg = _model(ml100k, **{"model.ranker_fusion": 0.7, "model.ranker_popularity": False})
    ids, rat, feats = _inputs(ml100k)
    cand = torch.randint(1, ml100k.n_items + 1, (6, 11))
    with torch.no_grad():
        u = m.encode_users(ids, rat, feats)
        mips = (u[:, None, :] * torch.nn.functional.embedding(cand, m.item_vectors())).sum(-1) / cfg.model.tau
        assert torch.allclose(m.rank(u, ids, rat, cand), mips, atol=1e-5)
        torch.manual_seed(1)
        for p in m.ranker.head[-1].parameters():
            torch.nn.init.normal_(p, std=0.5)
        t = m.item_vectors()
        R = cfg.model.ranker_history
        own = m.ranker.own_score(torch.nn.functional.embedding(cand, t),
                                 torch.nn.functional.embedding(ids[:, -R:], t), rat[:, -R:], ids[:, -R:] == 0)
        assert own.abs().max() > 1e-3
        assert torch.allclose(m.rank(u, ids, rat, cand), mips + 0.7 * own, atol=1e-5)


def test_any_number_of_events_and_no_user_features(tiny_cfg):
    """The history's event channel and the profile follow the data set's schema: 10 event
    types (codes 1..10) and no user features train and serve."""
    import torch

    from grank.model import GRank
    schema = {"n_items": 30, "strong_event": 8, "events": [f"e{i}" for i in range(10)],
              "user_features": [], "item_features": [{"name": "tags", "multi": True, "values": ["a", "b"]}]}
    cfg = tiny_cfg.model.__class__(**{**tiny_cfg.model.__dict__, "ranker_popularity": False})
    m = GRank(cfg, schema).eval()
    R = cfg.ranker_history
    ids = torch.randint(1, 31, (3, R))
    events = torch.full((3, R), 10)
    u = m.encode_users(ids, events, torch.zeros(3, 0, dtype=torch.long))
    scores = m.rank(u, ids, events, torch.randint(1, 31, (3, 7)))
    assert u.shape == (3, cfg.d_model) and scores.shape == (3, 7) and torch.isfinite(scores).all()
    assert m.generator.rating.num_embeddings == m.ranker.rating.num_embeddings == 11
