"""Brute-force maximum inner product search: the index-free first stage of GRank.

    scores[b, i] = <user_vecs[b], item_vecs[i]> / tau        user_vecs: [B, d] float32
    (row 0 of item_vecs is padding and never returned)        item_vecs: [N+1, d] float32
    exclude: optional [B, N+1] bool, True = never return (e.g. items the user already saw)
    returns (scores [B, k] float32 descending, ids [B, k] int64 dense item ids)

No index to build or refresh: a new model version ships a new item table. Ties are broken by
torch.topk (implementation defined), so callers compare top-k results as sets within groups of
equal scores (see ``tests/test_mips.py``).
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")


def mips_scores(user_vecs: torch.Tensor, item_vecs: torch.Tensor, tau: float = 1.0,
                exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Full score matrix [B, N+1] with padding (and ``exclude``) set to -inf."""
    s = (user_vecs @ item_vecs.T) / tau
    s[:, 0] = NEG_INF
    if exclude is not None:
        s = s.masked_fill(exclude, NEG_INF)
    return s


def mips_top_k(user_vecs: torch.Tensor, item_vecs: torch.Tensor, k: int, tau: float = 1.0,
               exclude: torch.Tensor | None = None):
    """Top-k items by inner product; see the module docstring for shapes."""
    n = item_vecs.shape[0] - 1
    if not 1 <= k <= n:
        raise ValueError(f"k: must be in [1, {n}] (catalogue size), got {k}")
    return mips_scores(user_vecs, item_vecs, tau, exclude).topk(k, dim=1)


def seen_mask(seen, n_items: int) -> torch.Tensor:
    """List of B int arrays of dense ids -> [B, n_items+1] bool mask (True = seen)."""
    mask = torch.zeros(len(seen), n_items + 1, dtype=torch.bool)
    for b, ids in enumerate(seen):
        mask[b, torch.as_tensor(ids, dtype=torch.long)] = True
    return mask
