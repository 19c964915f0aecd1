import numpy as np
import pytest
import torch

from grank.mips import mips_top_k, seen_mask


def brute_force(u, items, k, exclude=None):
    s = u @ items.T
    s[:, 0] = -np.inf
    if exclude is not None:
        s[exclude] = -np.inf
    return s


def assert_topk_equal_up_to_ties(scores_ref, ids, k):
    """ids must hold a valid top-k of scores_ref: compare as sets within groups of equal
    scores (the k-th score's group may be cut anywhere)."""
    for b in range(scores_ref.shape[0]):
        got = ids[b].tolist()
        assert len(set(got)) == k
        kth = np.sort(scores_ref[b])[::-1][k - 1]
        above = set(np.flatnonzero(scores_ref[b] > kth).tolist())
        ties = set(np.flatnonzero(scores_ref[b] == kth).tolist())
        assert above <= set(got)
        assert set(got) - above <= ties


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mips_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(501, 16)).astype(np.float32)
    items[0] = 0
    u = rng.normal(size=(8, 16)).astype(np.float32)
    sc, ids = mips_top_k(torch.tensor(u), torch.tensor(items), 20)
    ref = brute_force(u, items, 20)
    assert_topk_equal_up_to_ties(ref, ids.numpy(), 20)
    assert np.allclose(np.sort(ref, 1)[:, ::-1][:, :20], sc.numpy(), atol=1e-5)
    assert (ids.numpy() != 0).all()


def test_mips_with_ties_and_exclusion():
    rng = np.random.default_rng(3)
    items = rng.integers(-2, 3, size=(101, 4)).astype(np.float32)  # integer vectors: many ties
    items[0] = 0
    u = rng.integers(-2, 3, size=(5, 4)).astype(np.float32)
    seen = [rng.choice(np.arange(1, 101), 10, replace=False) for _ in range(5)]
    excl = seen_mask(seen, 100)
    _, ids = mips_top_k(torch.tensor(u), torch.tensor(items), 15, exclude=excl)
    ref = brute_force(u, items, 15, excl.numpy())
    assert_topk_equal_up_to_ties(ref, ids.numpy(), 15)
    for b in range(5):
        assert not set(ids[b].tolist()) & set(seen[b].tolist())


def test_k_out_of_range():
    with pytest.raises(ValueError, match="k: must be in"):
        mips_top_k(torch.zeros(1, 4), torch.zeros(11, 4), 11)


@pytest.mark.parametrize("block", [4, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_block_top_k_is_exact(seed, block):
    """The two-step top-k returns the plain top-k: same values, same ids up to ties, with
    integer scores (many ties, several at the cut) and a max-heavy block layout."""
    from grank.mips import block_top_k
    rng = np.random.default_rng(seed)
    s = torch.tensor(rng.integers(-50, 50, size=(6, 64 * block)).astype(np.float32))
    s[0, :3 * block] = 100  # 3 x block tied best scores side by side: spread over the groups
    k = 40
    v, ids = block_top_k(s, k, block)
    assert torch.equal(v, s.topk(k, dim=1).values)
    assert_topk_equal_up_to_ties(s.numpy(), ids.numpy(), k)
    assert torch.equal(s.gather(1, ids), v)


def test_blocked_mips_with_padding_and_exclusion_matches_plain():
    """A table padded to a multiple of the block (pad_table) answers like the unpadded plain
    search: padding rows never come back, excluded ids neither (both exclusion forms)."""
    from grank.mips import block_size, pad_table
    rng = np.random.default_rng(4)
    items = torch.tensor(rng.normal(size=(1003, 8)).astype(np.float32))
    items[0] = 0
    u = torch.tensor(rng.normal(size=(5, 8)).astype(np.float32))
    hist = torch.tensor(rng.integers(1, 1003, size=(5, 12)))
    k, block = 20, 8
    assert block_size(1003, k) == 0 and block_size(2 * k * 32, k) == 32
    padded, pad = pad_table(items, block)
    assert padded.shape[0] % block == 0 and pad == 5
    ref_s, _ = mips_top_k(u, items, k, exclude_ids=hist)
    for kw in ({"exclude_ids": hist}, {"exclude": seen_mask([h.numpy() for h in hist], 1002)}):
        sc, ids = mips_top_k(u, padded, k, block=block, pad_rows=pad, **kw)
        plain = brute_force(u.numpy(), items.numpy(), k, seen_mask([h.numpy() for h in hist], 1002).numpy())
        assert torch.allclose(sc, ref_s)
        assert_topk_equal_up_to_ties(plain, ids.numpy(), k)
        assert (ids < 1003).all() and (ids > 0).all()
    with pytest.raises(ValueError, match="block"):
        mips_top_k(u, items, k, block=block)
