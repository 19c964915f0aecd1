import math

import numpy as np
import pytest
import torch

from grank.evaluate import list_ranks, metrics_from_ranks, ranks_from_scores


def test_metrics_hand_computed():
    # ranks 0, 3, 12 and a miss; K = 1, 5, 20
    m = metrics_from_ranks([0, 3, 12, np.inf], (1, 5, 20))
    assert m["HR@1"] == 0.25 and m["HR@5"] == 0.5 and m["HR@20"] == 0.75
    assert m["NDCG@1"] == pytest.approx(0.25)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert m["NDCG@20"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(14)) / 4)


def test_ties_are_pessimistic():
    scores = torch.tensor([[0.0, 5.0, 5.0, 5.0, 1.0],    # target 2 ties with 1 and 3 -> rank 2
                           [0.0, 1.0, 1.0, 1.0, 1.0],    # constant model: last place
                           [0.0, 9.0, 3.0, 7.0, 8.0]])   # strict: rank 3
    targets = torch.tensor([2, 4, 2])
    assert ranks_from_scores(scores, targets).tolist() == [2.0, 3.0, 3.0]


def test_excluded_target_is_a_miss():
    scores = torch.tensor([[0.0, float("-inf"), 1.0]])
    assert math.isinf(ranks_from_scores(scores, torch.tensor([1]))[0].item())


def test_list_ranks():
    ids = torch.tensor([[7, 3, 9], [7, 3, 9], [1, 2, 4]])
    sc = torch.tensor([[3.0, 2.0, 1.0], [3.0, 3.0, 1.0], [3.0, 2.0, 1.0]])
    r = list_ranks(ids, sc, torch.tensor([3, 7, 5]))
    assert r[0] == 1 and r[1] == 1 and math.isinf(r[2])  # tie with 3 -> pessimistic rank 1
