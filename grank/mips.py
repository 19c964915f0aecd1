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

Large catalogues take the top-k in two exact steps (``block_top_k``): the maximum of each of
M / BLOCK groups of scores, the top k groups by that maximum, then the top k of those k groups'
scores. Scoring stays a single matrix product; only the top-k changes.
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")
# Group size of the two-step top-k. Measured (docs/PERFORMANCE.md, "The two-step top-k"): on a
# 2-core CPU (ONNX Runtime, N = 1M, k = 500) groups of 32 made the search 20 to 30% faster than
# one TopK at batch >= 16; on an H100 they took the top-k of a 20M-item batch of 256 from 42.3 to
# 5.9 ms. 32 keeps the second top-k short (32 k scores).
BLOCK = 32


def block_size(n_rows: int, k: int) -> int:
    """Group size of ``block_top_k`` for a table of ``n_rows`` (padding row included) and
    top-``k``: BLOCK where the groups outnumber 2k (the first top-k then runs over a 32x
    shorter row than the plain one and the second over k x BLOCK scores), else 0 (plain top-k:
    a 3,706-item catalogue at k = 500 has too few groups for the two steps to be any shorter)."""
    return BLOCK if n_rows >= 2 * k * BLOCK else 0


def pad_table(item_vecs: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """[N+1, d] -> ([M, d] with M a multiple of ``block``, pad_rows = M - N - 1): zero rows
    appended, which ``mips_scores`` excludes (-inf) like the padding row."""
    pad = (-item_vecs.shape[0]) % block if block else 0
    return torch.cat([item_vecs, item_vecs.new_zeros(pad, item_vecs.shape[1])]), pad


def block_top_k(scores: torch.Tensor, k: int, block: int, sort_groups: bool = True):
    """Exact top-k of ``scores`` [B, M] (M a multiple of ``block``, M / block >= k) in two short
    steps instead of one long one. Returns (values [B, k] descending, column ids [B, k] int64).

    The columns are split into M / block groups of ``block`` (group j = columns j, j + M/block,
    j + 2 M/block, ...). Why the result is exact: let t be the k-th largest group maximum. The
    k chosen groups hold k scores >= t (their maxima); every score outside them is <= its
    group's maximum <= t. So the top k of the chosen groups' scores is the top k of the row (up
    to ties at t). Strided rather than contiguous groups: the maxima are then a reduction over
    the outer axis of a [B, block, M / block] view, which a GPU reads coalesced (7x faster than
    reducing runs of 32 on an H100; on the CPU the two are within 5%).
    Cost: one max-reduction pass over the scores (a memory pass, like TopK's own read) and two
    top-k over [B, M / block] and [B, k * block] instead of one over [B, M].
    Only the SET of chosen groups matters, yet the first top-k stays sorted: the candidates then
    come best group first, and ONNX Runtime's second TopK (a heap of k at these shapes) updates
    its heap only for a value beating the weakest kept; ``sort_groups=False`` measured slower
    (docs/PERFORMANCE.md, "The two-step top-k")."""
    nb = scores.shape[1] // block
    groups = scores.reshape(-1, block, nb)
    top = groups.amax(1).topk(k, dim=1, sorted=sort_groups).indices              # [B, k] group ids
    cand = groups.gather(2, top.unsqueeze(1).expand(-1, block, -1)).reshape(-1, block * k)
    values, pos = cand.topk(k, dim=1)                                            # pos = t * k + i
    return values, (pos // k) * nb + top.gather(1, pos % k)


def mips_scores(user_vecs: torch.Tensor, item_vecs: torch.Tensor, tau: float = 1.0,
                exclude: torch.Tensor | None = None,
                exclude_ids: torch.Tensor | None = None, pad_rows: int = 0) -> torch.Tensor:
    """Full score matrix [B, N+1] with padding (and ``exclude``/``exclude_ids``) set to -inf;
    [B, M] with the last ``pad_rows`` columns -inf too for a table from ``pad_table``.

    Written for the exported graph, where every op over the [B, N+1] scores is a pass over
    memory as large as the table at batch 1 and 256 times larger at batch 256: 1/tau scales the
    [B, d] user vectors instead, and the padding column joins the history ids in ONE scatter
    (a separate ``s[:, 0] = -inf`` exports as a ScatterND plus shape plumbing)."""
    s = (user_vecs / tau) @ item_vecs.T
    m = item_vecs.shape[0]
    if exclude_ids is not None:
        idx = [torch.zeros_like(exclude_ids[:, :1]), exclude_ids]
        if pad_rows:  # a constant [1, pad_rows] row of ids; exported as an initializer
            idx.append(torch.arange(m - pad_rows, m).unsqueeze(0).expand(exclude_ids.shape[0], -1))
        return s.scatter(1, torch.cat(idx, 1), NEG_INF)
    s[:, 0] = NEG_INF
    if pad_rows:
        s[:, m - pad_rows:] = NEG_INF
    if exclude is not None:
        s[:, :exclude.shape[1]].masked_fill_(exclude, NEG_INF)  # in place: no copy of [B, N+1]
    return s


def mips_top_k(user_vecs: torch.Tensor, item_vecs: torch.Tensor, k: int, tau: float = 1.0,
               exclude: torch.Tensor | None = None, exclude_ids: torch.Tensor | None = None,
               block: int = 0, pad_rows: int = 0):
    """Top-k items by inner product; see the module docstring for shapes. ``block`` > 0 takes
    the top-k with ``block_top_k`` over a table from ``pad_table(item_vecs, block)`` whose last
    ``pad_rows`` rows are padding; the results are the same."""
    n = item_vecs.shape[0] - 1 - pad_rows
    if not 1 <= k <= n:
        raise ValueError(f"k: must be in [1, {n}] (catalogue size), got {k}")
    s = mips_scores(user_vecs, item_vecs, tau, exclude, exclude_ids, pad_rows)
    if not block:
        return s.topk(k, dim=1)
    if item_vecs.shape[0] % block or item_vecs.shape[0] // block < k:
        raise ValueError(f"block: a table of {item_vecs.shape[0]} rows needs to be a multiple of "
                         f"block = {block} with at least k = {k} blocks (see pad_table)")
    return block_top_k(s, k, block)


def shard_bounds(n_items: int, shards: int) -> list[int]:
    """Split dense ids 1..``n_items`` into ``shards`` contiguous runs as even as possible:
    returns S+1 bounds b with shard s holding ids b[s]+1 .. b[s+1] (b[0] = 0, b[S] = N)."""
    if shards < 1 or shards > n_items:
        raise ValueError(f"shards: must be in [1, {n_items}] (catalogue size), got {shards}")
    return [n_items * s // shards for s in range(shards + 1)]


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
