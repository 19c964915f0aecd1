"""No leakage: a user's validation and test items never reach training inputs or targets, and
the test item never appears in the history used to evaluate that user."""
import dataclasses

import numpy as np

from grank.batches import epoch_samples, eval_inputs
from grank.config import make_config
from grank.data import split
from grank.train import make_batch


def test_held_out_items_never_reach_training(ml100k):
    d = ml100k
    # Mark every user's validation and test interaction with sentinel ids that occur nowhere else.
    items = d.items.copy()
    VAL, TEST = d.n_items + 1, d.n_items + 2
    items[d.offsets[1:] - 2] = VAL
    items[d.offsets[1:] - 1] = TEST
    marked = dataclasses.replace(d, items=items)
    cfg = make_config("tiny", overrides={"train.max_users": 0})
    sp = split(marked)
    rng = np.random.default_rng(0)
    for _ in range(3):  # several epochs: the random window shifts change
        users, ends = epoch_samples(sp, cfg.model.max_history, rng)
        b = make_batch(marked, users, ends, cfg)
        for key in ("hist_ids", "target", "ntp_targets"):
            arr = b[key].numpy()
            assert not np.isin(arr, [VAL, TEST]).any(), key
    # windows tile the train prefix (each user may skip one run of < L targets per epoch)
    n_train = sum(sp.train_len(int(u)) for u in sp.users)
    assert len(users) >= n_train // cfg.model.max_history - len(sp.users)

    ids, _, _, targets, seen = eval_inputs(sp, sp.users, "test", cfg.model.ranker_history)
    assert (targets == TEST).all()
    assert not (ids == TEST).any() and not any(TEST in s for s in seen)
    ids, _, _, targets, seen = eval_inputs(sp, sp.users, "val", cfg.model.ranker_history)
    assert (targets == VAL).all()
    assert not np.isin(ids, [VAL, TEST]).any() and not any(np.isin(s, [VAL, TEST]).any() for s in seen)


def test_eval_history_is_the_newest_visible_items(ml100k):
    sp = split(ml100k)
    u = sp.users[:3]
    ids, rat, _, targets, seen = eval_inputs(sp, u, "test", 8)
    for b, uu in enumerate(u):
        s = ml100k.seq(int(uu))
        assert ids[b].tolist() == s[-9:-1].tolist()
        assert len(seen[b]) == len(s) - 1
