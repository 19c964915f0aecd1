"""The Ranker's popularity features (grank.popularity): counted from training interactions only,
on days strictly before the request's day, and wired through training, evaluation and the Ranker."""
import dataclasses

import numpy as np
import pytest
import torch

from grank.batches import epoch_samples, eval_times
from grank.config import make_config
from grank.data import split, training_mask
from grank.popularity import DAY, LOG_SCALE, WINDOWS, RecentPopularity
from grank.checkpoint import build_model
from grank.train import losses, make_batch


def _brute(data, t: int, item: int, window: int) -> int:
    """Training ratings of ``item`` on the days [day(t) - window, day(t)) (window 0: all before)."""
    day0 = int(data.times.min()) // DAY * DAY
    day = (data.times - day0) // DAY
    now = (t - day0) // DAY
    lo = now - window if window else -1
    keep = training_mask(data) & (data.items == item) & (day < now) & (day >= lo)
    return int(keep.sum())


def test_counts_match_brute_force_and_ignore_held_out_items(ml100k):
    pop = RecentPopularity.from_data(ml100k)
    rng = np.random.default_rng(0)
    times = rng.choice(ml100k.times, 8)
    items = rng.integers(1, ml100k.n_items + 1, (8, 5))
    with torch.no_grad():
        f = pop(torch.as_tensor(times), torch.as_tensor(items)).numpy()
    assert f.shape == (8, 5, len(WINDOWS))
    want = np.array([[[_brute(ml100k, int(t), int(i), w) for w in WINDOWS] for i in row]
                     for t, row in zip(times, items)])
    np.testing.assert_allclose(f, np.log1p(want) / LOG_SCALE, rtol=1e-6)
    assert want.sum() > 0  # the check compared real counts, not zeros

    # every user's validation and test ratings moved to one item: none of them is ever counted
    d = ml100k
    held = np.zeros(len(d.items), bool)
    held[d.offsets[1:] - 1] = held[d.offsets[1:] - 2] = True
    marked = dataclasses.replace(d, items=np.where(held, 1, d.items))
    late = torch.tensor([int(d.times.max()) + 10 * DAY])
    with torch.no_grad():
        got = RecentPopularity.from_data(marked)(late, torch.tensor([[1]]))[0, 0, -1]
    assert int(round(float(torch.expm1(got * LOG_SCALE)))) == int((d.items[~held] == 1).sum())


def test_requests_outside_the_data_and_on_the_same_day():
    """Before the first day nothing is counted; a rating made on the request's own day is not
    counted yet (day resolution); a request after the data sees the table's last days (a stale
    snapshot until re-exported), never an extrapolation."""
    from grank.data import Interactions
    t0 = 1_000_000 * DAY
    # one user rates items 1 2 1 2 1 2 1 on days 0 0 1 9 12 20 20; the last two are held out
    days = np.array([0, 0, 1, 9, 12, 20, 20])
    data = Interactions(name="t", items=np.array([1, 2, 1, 2, 1, 2, 1]), ratings=np.full(7, 4, np.int8),
                        offsets=np.array([0, 7]), user_feats=np.zeros((1, 0), np.int64),
                        user_feat_sizes=(), item_features=[], user_ids=np.array([1]),
                        item_ids=np.arange(3), names=["", "a", "b"], times=t0 + DAY * days + 5)
    pop = RecentPopularity.from_data(data)
    ids = torch.tensor([[1, 2]])

    def count(day):  # [[7-day, 30-day, all] for item 1, the same for item 2]
        with torch.no_grad():
            f = pop(torch.tensor([t0 + day * DAY + 100]), ids)[0]
        return torch.expm1(f * LOG_SCALE).round().int().tolist()
    assert count(-5) == [[0, 0, 0], [0, 0, 0]]
    assert count(0) == [[0, 0, 0], [0, 0, 0]]        # day 0's ratings: not before day 0
    assert count(1) == [[1, 1, 1], [1, 1, 1]]        # day 1 sees day 0 only
    assert count(10) == [[0, 2, 2], [1, 2, 2]]       # 7-day window: days 3..9
    assert count(13) == [[1, 3, 3], [1, 2, 2]]       # days 6..12
    assert count(999) == count(21) == [[0, 3, 3], [0, 2, 2]]  # days 14..20: only held-out ratings
    with torch.no_grad():  # an item the table does not know (newer than its counts): never rated
        assert pop(torch.tensor([t0 + 13 * DAY]), torch.tensor([[7, 1]]))[0, 0].tolist() == [0, 0, 0]


def _tiny_batch(ml100k, **overrides):
    """(config, split, users, ends, a training batch of 32 windows) of the tiny preset."""
    cfg = make_config("tiny", "grank", overrides=overrides)
    sp = split(ml100k, cfg.train.max_users)
    users, ends = epoch_samples(sp, cfg.model.max_history, np.random.default_rng(0))
    return cfg, sp, users, ends, make_batch(ml100k, users[:32], ends[:32], cfg)


def test_training_and_evaluation_pass_the_request_time(ml100k):
    cfg, sp, users, ends, b = _tiny_batch(ml100k)  # the default Ranker: with popularity
    assert cfg.model.ranker_popularity
    # the newest slot's time is the time of the item just before the target
    want = ml100k.times[ml100k.offsets[users[:32]] + ends[:32] - 1]
    assert (b["hist_times"][:, -1].numpy() == want).all()
    assert ((b["hist_times"] == 0) == (b["hist_ids"] == 0)).all()
    val = eval_times(sp, sp.users[:5], "val")
    test = eval_times(sp, sp.users[:5], "test")
    for u, tv, tt in zip(sp.users[:5], val, test):
        o, n = ml100k.offsets[u], ml100k.lengths()[u]
        assert tv == ml100k.times[o + n - 3] and tt == ml100k.times[o + n - 2]  # newest visible item

    model = build_model(cfg, ml100k)
    assert model.popularity is not None
    torch.manual_seed(0)
    for p in model.ranker.head[-1].parameters():
        torch.nn.init.normal_(p, std=0.5)
    ls = losses(model, b, cfg)
    ls["ca"].backward()
    assert model.ranker.head[0].weight.grad[:, -3:].abs().sum() > 0  # the features reach the head
    u = torch.randn(2, cfg.model.d_model)
    ids = torch.as_tensor(b["hist_ids"][:2])
    rat = torch.as_tensor(b["hist_ratings"][:2])
    cand = torch.randint(1, ml100k.n_items + 1, (2, 9))
    early, late = torch.tensor([int(ml100k.times.min())] * 2), torch.tensor([int(ml100k.times.max())] * 2)
    with torch.no_grad():
        assert not torch.allclose(model.rank(u, ids, rat, cand, request_time=early),
                                  model.rank(u, ids, rat, cand, request_time=late))
    with pytest.raises(ValueError, match="request_time: required"):
        model.rank(u, ids, rat, cand)


def test_l_ca_trains_the_ranker_and_nothing_it_shares(ml100k):
    """L_CA-info reads the shared item table and the history but updates only the Ranker: it
    cannot trade the Generator's next-item quality for its own loss."""
    cfg, _, _, _, b = _tiny_batch(ml100k)
    torch.manual_seed(0)
    model = build_model(cfg, ml100k)
    for p in model.ranker.head[-1].parameters():
        torch.nn.init.normal_(p, std=0.5)
    losses(model, b, cfg)["ca"].backward()
    assert model.ranker.q.weight.grad.abs().sum() > 0
    touched = [n for n, p in model.named_parameters()
               if not n.startswith("ranker.") and p.grad is not None and p.grad.abs().sum() > 0]
    assert touched == []
