"""export.mips_int8: the int8-scan + exact-re-score graph against the fp32 MIPS of
grank.mips, tie-tolerant: same signature, exact scores for what it returns, history and
padding excluded, a user's answer independent of the batch it shares."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.mips_int8 import ITEM_QMAX, int8_mips_model, quantize_table
from grank.config import make_config
from grank.mips import mips_top_k, topk_disagreements
from grank.signatures import mips_signature

N, D, K, R = 6000, 32, 40, 24


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, D)) * 2
    items = centres[rng.integers(0, 30, N)] + rng.standard_normal((N, D)) * 0.5
    table = np.concatenate([np.zeros((1, D)), items]).astype(np.float32)
    cfg = make_config("default", overrides={"model.d_model": D, "eval.k1": K, "eval.k2": 1, "eval.ks": (1,),
                                            "model.ranker_history": R, "serve.k1": 0, "serve.history": 0})
    sig = mips_signature(cfg)
    sess = ort.InferenceSession(int8_mips_model(table, K, sig, tau=0.5).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    users = (centres[rng.integers(0, 30, 32)] + rng.standard_normal((32, D))).astype(np.float32)
    hist = rng.integers(0, N + 1, (32, R)).astype(np.int64)
    hist[:, -5:] = 0  # padding slots
    return table, sig, sess, users, hist


def test_quantized_codes_stay_in_seven_bits():
    q, scale = quantize_table(np.array([[0.0, 1.0], [-2.0, 0.5]], np.float32))
    assert q.dtype == np.int8 and np.abs(q).max() == ITEM_QMAX and scale == pytest.approx(2 / ITEM_QMAX)


def test_int8_graph_matches_fp32_mips(setup):
    table, sig, sess, users, hist = setup
    ids, scores = sess.run([t.name for t in sig.outputs], {"user_embedding": users, "history_ids": hist})
    assert ids.shape == scores.shape == (len(users), K) and ids.dtype == np.int64 and scores.dtype == np.float32
    ref_s, ref_i = mips_top_k(torch.from_numpy(users), torch.from_numpy(table), K, 0.5,
                              exclude_ids=torch.from_numpy(hist))
    # the re-score makes every returned score exact
    exact = (users[:, None, :] / 0.5 * table[ids]).sum(-1)
    np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 0)
    for b in range(len(users)):
        assert not set(ids[b].tolist()) & set(hist[b].tolist()) and 0 not in ids[b]
    # approximate scan: recall is measured, and on these clustered data nothing is lost
    bad = topk_disagreements(ref_i.numpy(), ref_s.numpy(), ids, scores, atol=1e-4)
    assert not bad, bad[:3]


def test_answer_does_not_depend_on_the_batch(setup):
    _, sig, sess, users, hist = setup
    names = [t.name for t in sig.outputs]
    full = sess.run(names, {"user_embedding": users, "history_ids": hist})
    for b in (0, 7):
        one = sess.run(names, {"user_embedding": users[b:b + 1] * 1.0, "history_ids": hist[b:b + 1]})
        np.testing.assert_array_equal(one[0][0], full[0][b])
        np.testing.assert_array_equal(one[1][0], full[1][b])


def test_k_larger_than_the_short_list_is_refused(setup):
    table, sig, *_ = setup
    with pytest.raises(ValueError, match="k: must be in"):
        int8_mips_model(table, 50, sig, rescore=10)


def test_block_top_k_scan_answers_like_one_topk(setup):
    """The scan's top-k in the two exact steps (forced on here; on by default for catalogues
    with enough groups) with padding rows: the same answer as one TopK, padding never returned."""
    table, sig, sess, users, hist = setup
    blocked = ort.InferenceSession(int8_mips_model(table, K, sig, tau=0.5, block=8).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [t.name for t in sig.outputs]
    feed = {"user_embedding": users, "history_ids": hist}
    (ids, scores), (ids_b, scores_b) = sess.run(names, feed), blocked.run(names, feed)
    assert (table.shape[0] % 8) and ids_b.max() < table.shape[0]  # the table did need padding
    np.testing.assert_array_equal(scores_b, scores)
    assert not topk_disagreements(ids, scores, ids_b, scores_b, atol=0)
