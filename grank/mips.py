"""Brute-force maximum inner product search: the index-free first stage of GRank.

    scores[b, i] = <user_vecs[b], item_vecs[i]> / tau        user_vecs: [B, d] float32
    (row 0 of item_vecs is padding and never returned)        item_vecs: [N+1, d] float32
    exclude: optional [B, N+1] bool, True = never return (e.g. items the user already saw)
    exclude_ids: optional [B, R] int64 dense ids never to return (the served form: the history
        itself; padding 0 is excluded anyway)
    returns (scores [B, k] float32 descending, ids [B, k] int64 dense item ids)

No index to build or refresh: a new model version ships a new item table. Ties are broken by
torch.topk (implementation defined), so callers compare top-k results as sets within groups of
equal scores (see ``tests/test_mips.py``).
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")


def mips_scores(user_vecs: torch.Tensor, item_vecs: torch.Tensor, tau: float = 1.0,
                exclude: torch.Tensor | None = None,
                exclude_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Full score matrix [B, N+1] with padding (and ``exclude``/``exclude_ids``) set to -inf.

    Written for the exported graph, where every op over the [B, N+1] scores is a pass over
    memory as large as the table at batch 1 and 256 times larger at batch 256: 1/tau scales the
    [B, d] user vectors instead, and the padding column joins the history ids in ONE scatter
    (a separate ``s[:, 0] = -inf`` exports as a ScatterND plus shape plumbing)."""
    s = (user_vecs / tau) @ item_vecs.T
    if exclude_ids is not None:
        pad = torch.zeros_like(exclude_ids[:, :1])
        return s.scatter(1, torch.cat([pad, exclude_ids], 1), NEG_INF)
    s[:, 0] = NEG_INF
    if exclude is not None:
        s = s.masked_fill(exclude, NEG_INF)
    return s


def mips_top_k(user_vecs: torch.Tensor, item_vecs: torch.Tensor, k: int, tau: float = 1.0,
               exclude: torch.Tensor | None = None, exclude_ids: torch.Tensor | None = None):
    """Top-k items by inner product; see the module docstring for shapes."""
    n = item_vecs.shape[0] - 1
    if not 1 <= k <= n:
        raise ValueError(f"k: must be in [1, {n}] (catalogue size), got {k}")
    return mips_scores(user_vecs, item_vecs, tau, exclude, exclude_ids).topk(k, dim=1)


def seen_mask(seen, n_items: int) -> torch.Tensor:
    """List of B int arrays of dense ids -> [B, n_items+1] bool mask (True = seen)."""
    mask = torch.zeros(len(seen), n_items + 1, dtype=torch.bool)
    for b, ids in enumerate(seen):
        mask[b, torch.as_tensor(ids, dtype=torch.long)] = True
    return mask


def topk_disagreements(ref_ids, ref_scores, got_ids, got_scores, atol: float) -> list[tuple[int, str]]:
    """Compare two top-k lists per row, tolerating ties and rounding: [B, k] ids and [B, k]
    descending scores from a reference and from another implementation. A row agrees when the
    sorted scores match within ``atol`` and every id scored clearly above the k-th score
    (by more than ``atol``) on one side is in the other side's list: items within ``atol`` of
    the cut may be swapped. Returns (row, message) per disagreeing row (empty = agree)."""
    import numpy as np
    ref_ids, got_ids = np.asarray(ref_ids), np.asarray(got_ids)
    ref_scores, got_scores = np.asarray(ref_scores), np.asarray(got_scores)
    bad = []
    for b in range(ref_ids.shape[0]):
        if not np.allclose(ref_scores[b], got_scores[b], rtol=0, atol=atol):
            err = float(np.abs(ref_scores[b] - got_scores[b]).max())
            bad.append((b, f"scores differ by up to {err:.3g} > atol {atol}"))
            continue
        for name, ids, sc, other in (("reference", ref_ids, ref_scores, got_ids),
                                     ("result", got_ids, got_scores, ref_ids)):
            sure = set(ids[b][sc[b] > sc[b, -1] + atol].tolist())
            missing = sure - set(other[b].tolist())
            if missing:
                bad.append((b, f"{name} ids {sorted(missing)[:5]} clearly in the top-k "
                               "but absent from the other list"))
                break
    return bad
