"""Compare the server's answers with the local PyTorch two-stage pipeline on real users.

The reference is ``grank.evaluate.recommend`` (the function the offline evaluation uses) with
the served exclusion rule: items of the history sent (the newest R) are never returned.
Lists are compared with ``grank.mips.topk_disagreements`` (ties and near ties at the cut may
be swapped; scores must agree within ``atol``: float32 ONNX Runtime vs PyTorch, see
``export/parity.py``).
"""
from __future__ import annotations

import numpy as np
import torch

from grank.evaluate import recommend
from grank.mips import seen_mask, topk_disagreements

ATOL = 1e-3


def reference(model, cfg, arrays: dict):
    """Offline pipeline on the request arrays -> (ids [B, k2], scores [B, k2]) numpy."""
    t = {k: torch.as_tensor(v) for k, v in arrays.items()}
    excl = seen_mask([row[row > 0] for row in arrays["history_ids"]], model.n_items)
    with torch.no_grad():
        when = t["request_time"][:, 0] if "request_time" in t else None
        ids, scores, _ = recommend(model, t["history_ids"], t["history_ratings"], t["user_features"],
                                   cfg.eval.k1, cfg.eval.k2, excl, when)
    return ids.numpy(), scores.numpy()


def self_check(client, model, cfg, n_users: int = 50, seed: int = 0) -> list[str]:
    """Ask the server for ``n_users`` random real users; returns the disagreements (empty = OK)."""
    rng = np.random.default_rng(seed)
    users = rng.choice(client.data.user_ids, size=min(n_users, len(client.data.user_ids)), replace=False)
    arrays = client.user_request(users, exclude_last=1)
    ids, scores = client.infer(arrays)
    ref_ids, ref_scores = reference(model, cfg, arrays)
    return [f"user {users[b]}: {m}" for b, m in topk_disagreements(ref_ids, ref_scores, ids, scores, ATOL)]
