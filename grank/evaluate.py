"""Offline evaluation exactly as served: MIPS top-k1 -> Ranker -> top-k2, then HR/NDCG@K.

Protocol (stated in every report): chronological leave-last-out per user; the held-out item is
ranked against the full catalogue; in the ``filtered`` variant (the default, as the published
ML-1M anchors do) items already in the user's visible history are excluded from the ranking;
the ``unfiltered`` variant excludes nothing. With one held-out item HR@K = Recall@K.
Ties are pessimistic: an item with a score equal to the target's ranks ahead of it, so a model
that outputs constants never gets credit.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .batches import eval_inputs, eval_times
from .data import Split
from .mips import mips_top_k, seen_mask

MISS = np.inf


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """scores [B, N] (any ids), targets [B] int64 -> 0-based pessimistic rank [B] float
    (inf where the target's score is -inf, i.e. excluded or not retrieved)."""
    t = scores.gather(1, targets[:, None])
    r = (scores >= t).sum(1).to(torch.float64) - 1
    return torch.where(torch.isinf(t[:, 0]) & (t[:, 0] < 0), torch.full_like(r, MISS), r)


def list_ranks(ids: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of each target in a returned list: ids/scores [B, K], targets [B] -> [B] float
    (inf if absent, or present with score -inf: excluded, listed only because K >= the items
    left), pessimistic within ties of the list's scores."""
    hit = ids == targets[:, None]
    t = torch.where(hit, scores, torch.full_like(scores, float("-inf"))).max(1).values
    r = (scores >= t[:, None]).sum(1).to(torch.float64) - 1
    return torch.where(hit.any(1) & torch.isfinite(t), r, torch.full_like(r, MISS))


def metrics_from_ranks(ranks, ks) -> dict:
    """HR@K and NDCG@K (one relevant item: NDCG = 1/log2(rank+2) if rank < K)."""
    r = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = r < k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(np.where(hit, r, 0) + 2), 0.0).mean())
    return out


@torch.no_grad()
def generate(model, hist_ids, hist_ratings, user_feats, k1: int, exclude=None):
    """Stage 1 as served: (item table [N+1, d], user vectors [B, d], MIPS scores [B, k1], candidate
    ids [B, k1]) for torch inputs ([B, R] int64 histories, [B, 4] int64 profile, optional
    [B, N+1] bool exclusion)."""
    table = model.item_vectors()
    u = model.encode_users(hist_ids, hist_ratings, user_feats, table)
    gen_scores, gen_ids = mips_top_k(u, table, k1, model.cfg.tau, exclude)
    return table, u, gen_scores, gen_ids


def recommend(model, hist_ids, hist_ratings, user_feats, k1: int, k2: int, exclude=None,
              request_time=None):
    """The two-stage pipeline as served. Inputs are torch tensors ([B, R] int64 histories,
    [B, 4] int64 profile, optional [B, N+1] bool exclusion, [B] int64 request times for a
    Ranker with ``model.ranker_popularity``). Returns (ids [B, k2], scores [B, k2], generator
    ids [B, k1])."""
    table, u, gen_scores, gen_ids = generate(model, hist_ids, hist_ratings, user_feats, k1, exclude)
    if model.ranker is None:
        return gen_ids[:, :k2], gen_scores[:, :k2], gen_ids
    ids, top = model.rank_top_k(u, hist_ids, hist_ratings, gen_ids, k2, table, request_time)
    return ids, top, gen_ids


def stage_batches(split: Split, stage: str, length: int, batch_size: int, users: np.ndarray | None = None,
                  filtered: bool = True, progress: bool = False, desc: str = ""):
    """The served inputs of ``stage`` ('val' or 'test'), a batch of users at a time, as torch
    tensors: (hist_ids [B, length], hist_ratings [B, length], user_feats [B, 4], targets [B],
    exclusion [B, N+1] bool (None unfiltered), request_time [B])."""
    users = split.users if users is None else users
    for s in tqdm(range(0, len(users), batch_size), desc=desc or f"eval {stage}", disable=not progress,
                  leave=False):
        ub = users[s:s + batch_size]
        ids, rat, feats, targets, seen = eval_inputs(split, ub, stage, length)
        excl = seen_mask(seen, split.data.n_items) if filtered else None
        yield (*map(torch.as_tensor, (ids, rat, feats, targets)), excl,
               torch.as_tensor(eval_times(split, ub, stage)))


def served_ranks(model, split: Split, stage: str, ecfg, filtered: bool = True,
                 users: np.ndarray | None = None, progress: bool = True):
    """Per-user 0-based rank of the held-out ``stage`` item ('val' or 'test') in the served
    pipeline's list and in the Generator's k1 candidates: (final [U], gen [U]) float64, MISS
    where absent. ``evaluate_model`` turns them into metrics; paired comparisons use them as is."""
    model.eval()
    final, gen = [], []
    for ids, rat, feats, tt, excl, when in stage_batches(split, stage, model.cfg.ranker_history,
                                                          ecfg.batch_size, users, filtered, progress):
        out_ids, out_scores, gen_ids = recommend(model, ids, rat, feats, ecfg.k1, ecfg.k2, excl, when)
        final.append(list_ranks(out_ids, out_scores, tt).cpu().numpy())
        # generator order: candidate list position is its rank (topk returns sorted scores)
        pos = (gen_ids == tt[:, None]).float().argmax(1).to(torch.float64)
        gen.append(torch.where((gen_ids == tt[:, None]).any(1), pos, torch.full_like(pos, MISS)).cpu().numpy())
    return np.concatenate(final), np.concatenate(gen)


def evaluate_model(model, split: Split, stage: str, ecfg, filtered: bool = True,
                   users: np.ndarray | None = None, progress: bool = True) -> dict:
    """Metrics of the served pipeline on ``stage`` ('val' or 'test'). Also reports the
    Generator stage alone (``gen_HR@K``) and recall of the k1 candidate set."""
    users = split.users if users is None else users
    t0 = time.time()
    final, gen = served_ranks(model, split, stage, ecfg, filtered, users, progress)
    res = metrics_from_ranks(final, ecfg.ks)
    res.update({f"gen_{k}": v for k, v in metrics_from_ranks(gen, ecfg.ks).items()})
    res[f"candidate_recall@{ecfg.k1}"] = float(np.isfinite(gen).mean())
    res["users"] = int(len(users))
    res["eval_seconds"] = round(time.time() - t0, 2)
    return res


def popularity_scores(split: Split) -> torch.Tensor:
    """Training-split interaction counts per item: [N+1] float32 (row 0 = padding)."""
    d = split.data
    idx = np.concatenate([d.seq(int(u))[:split.train_len(int(u))] for u in split.users])
    return torch.as_tensor(np.bincount(idx, minlength=d.n_items + 1).astype(np.float32))


def evaluate_popularity(split: Split, stage: str, ecfg, filtered: bool = True) -> dict:
    """Most-popular baseline under the same protocol (counts from the training split only)."""
    pop = popularity_scores(split)
    ranks = []
    for s in range(0, len(split.users), ecfg.batch_size):
        ub = split.users[s:s + ecfg.batch_size]
        _, _, _, targets, seen = eval_inputs(split, ub, stage, 1)
        scores = pop[None, :].repeat(len(ub), 1)
        scores[:, 0] = float("-inf")
        if filtered:
            scores = scores.masked_fill(seen_mask(seen, split.data.n_items), float("-inf"))
        top, ids = scores.topk(ecfg.k2, dim=1)
        ranks.append(list_ranks(ids, top, torch.as_tensor(targets)).cpu().numpy())
    res = metrics_from_ranks(np.concatenate(ranks), ecfg.ks)
    res["users"] = int(len(split.users))
    return res


@torch.no_grad()
def evaluate_sampled(model, split: Split, users: np.ndarray, negatives: np.ndarray, ecfg,
                     progress: bool = True) -> dict:
    """The sampled protocol of the NCF paper (He et al. 2017), for comparison with published
    numbers only: each user's held-out test item is ranked against its 99 shipped negatives
    (``negatives`` [U, 99] dense ids, aligned with ``users`` [U]) by the served score of the
    final stage (the Ranker's blend, or the MIPS score without a Ranker), on the user's full
    visible history. ``model`` None: the training-split popularity counts. Pessimistic ties.
    Returns ``sampled_HR@10`` and ``sampled_NDCG@10``."""
    pop = popularity_scores(split) if model is None else None
    ranks = []
    length = 1 if model is None else model.cfg.ranker_history
    for s in tqdm(range(0, len(users), ecfg.batch_size), desc="eval sampled", disable=not progress, leave=False):
        ub = users[s:s + ecfg.batch_size]
        ids, rat, feats, targets, _ = eval_inputs(split, ub, "test", length)
        cand = torch.as_tensor(np.concatenate([targets[:, None], negatives[s:s + ecfg.batch_size]], 1))
        if model is None:
            scores = pop[cand]
        else:
            ids, rat, feats = map(torch.as_tensor, (ids, rat, feats))
            table = model.item_vectors()
            u = model.encode_users(ids, rat, feats, table)
            scores = model.rank(u, ids, rat, cand, table, torch.as_tensor(eval_times(split, ub, "test")))
        ranks.append(ranks_from_scores(scores, torch.zeros(len(ub), dtype=torch.long)).cpu().numpy())
    return {f"sampled_{k}": v for k, v in metrics_from_ranks(np.concatenate(ranks), (10,)).items()}
