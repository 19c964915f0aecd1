"""L_NTP over a large catalogue: a sampled softmax with logQ correction, and when to use it.

The exact L_NTP scores each of the M = B x S supervised U tokens of a batch against every item:
[M, N] logits, O(M N) time and memory per step (ML-1M's default step: 2,048 x 3,706). The sampled
softmax (``train.ntp_softmax``) scores them against a candidate set whose size does not grow with N:

- candidates = the T next-item targets of the batch (in-batch negatives: each row's positive is its
  own column, the other rows' targets are its negatives) + K = ``train.ntp_negatives`` items drawn
  with replacement from q (``train.ntp_sampler``: ``uniform`` over the catalogue, or ``popularity``,
  q(c) proportional to the item's training count + 1, so that every item can be drawn), shared by
  every row: logits [T, T + K];
- logQ correction: a negative's logit is s(c) / tau - log E[c], where E[c] = T p(c) + K q(c) is
  the expected number of copies of c in the candidate set (p(c): item c's share of the training
  interactions, the distribution the in-batch targets are drawn from). Then the sum over the
  negatives of exp(logit) estimates the rest of the catalogue's sum of exp(s / tau), so a popular
  item, present many times in every batch, is not pushed down once per copy (Yi et al. 2019,
  in-batch logQ; Yang et al. 2020, mixed negative sampling);
- accidental hits: every other column holding the row's own target (the same item as the target of
  another row, or drawn by the sampler) is masked, so the target is never its own negative;
- the positive's own column keeps its plain logit: it is in its row's set exactly once, by
  construction, not by a draw. The loss then estimates the exact one, value and gradient (tested:
  with many draws it lands on it). Correcting the positive too while masking its other copies
  would push every target up as if its softmax share were 0, however well it is already ranked.

``train.ntp_softmax = "auto"`` takes the exact softmax up to ``AUTO_SAMPLED_ABOVE`` items and the
sampled one above: about where a training step with the exact softmax came to cost 1.5 times one
with the sampled softmax on a 2-core CPU (docs/LARGE_CATALOGUES.md, measured by ``python -m
grank.catalogue_scale``); below, the exact softmax costs less than that, and it is no
approximation. "auto" is part of the checkpoint format: changing the threshold changes how a
stored "auto" config trains, so it comes with a new ``grank.checkpoint.FORMAT_VERSION`` whose
upgrade resolves "auto" by the checkpoint's stored catalogue size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import NTP_SAMPLERS as SAMPLERS, NTP_SOFTMAXES as SOFTMAXES
from .generator import MASKED

# Measured at the default training shape (docs/LARGE_CATALOGUES.md, CPU seconds of a step, the two
# softmaxes interleaved): the exact step cost 1.10x the sampled one at 3,706 items, 1.32x at 7,500,
# 1.44x at 10,000, 1.82x at 12,500 and more above.
AUTO_SAMPLED_ABOVE = 10_000


def resolve(softmax: str, n_items: int) -> str:
    """``train.ntp_softmax`` for a catalogue of ``n_items``: "exact" or "sampled" ("auto" is the
    exact softmax up to ``AUTO_SAMPLED_ABOVE`` items, the sampled one above)."""
    if softmax not in SOFTMAXES:
        raise ValueError(f"train.ntp_softmax: must be one of {SOFTMAXES}, got {softmax!r}")
    if softmax == "auto":
        return "sampled" if n_items > AUTO_SAMPLED_ABOVE else "exact"
    return softmax


class NegativeSampler:
    """Draws L_NTP's extra negatives and knows each item's expected count in a candidate set.

    ``counts``: [N + 1] float64 training interactions per dense item id (row 0, padding, is 0).
    Tensors live on the device the sampler was built on (the training run's)."""

    def __init__(self, counts, kind: str = "uniform", device=None):
        if kind not in SAMPLERS:
            raise ValueError(f"train.ntp_sampler: must be one of {SAMPLERS}, got {kind!r}")
        counts = torch.as_tensor(np.asarray(counts, dtype=np.float64), device=device)
        if counts.ndim != 1 or len(counts) < 2 or counts[0] != 0 or counts.sum() <= 0 or (counts < 0).any():
            raise ValueError("counts: expected [N + 1] non-negative training counts, 0 at padding, not all 0")
        self.kind, self.n_items = kind, len(counts) - 1
        self.p = counts / counts.sum()  # [N + 1]: the in-batch targets' distribution
        if kind == "uniform":
            q = torch.full_like(counts, 1.0 / self.n_items)
        else:
            q = (counts + 1.0) / (counts[1:] + 1.0).sum()
        q[0] = 0.0
        self.q = q                                      # [N + 1] float64, sums to 1
        self.cdf = q[1:].cumsum(0)                      # [N] for drawing by inverse transform

    @classmethod
    def from_data(cls, data, kind: str, device=None) -> "NegativeSampler":
        """Counts from the TRAINING interactions of ``data`` (``grank.data.training_mask``): the
        held-out items never shape the negatives."""
        from .data import training_mask
        keep = training_mask(data)
        return cls(np.bincount(data.items[keep], minlength=data.n_items + 1), kind, device)

    def sample(self, k: int) -> torch.Tensor:
        """[k] int64 dense ids 1..N drawn with replacement from q (torch's global generator)."""
        if self.kind == "uniform":
            return torch.randint(1, self.n_items + 1, (k,), device=self.q.device)
        u = torch.rand(k, dtype=torch.float64, device=self.q.device) * self.cdf[-1]
        return torch.searchsorted(self.cdf, u, right=True).clamp(max=self.n_items - 1) + 1

    def log_expected_count(self, ids: torch.Tensor, in_batch: int, drawn: int) -> torch.Tensor:
        """log E[copies of each of ``ids`` in a candidate set of ``in_batch`` targets and ``drawn``
        draws from q] = log(T p + K q), float32, shaped like ``ids``."""
        return torch.log(in_batch * self.p[ids] + drawn * self.q[ids]).float()


def candidate_softmax(queries, positive, target_ids, cand_ids, cand_vecs, log_q=None):
    """Softmax cross-entropy of each query against a shared candidate set.

    queries [M, d] (already divided by tau); positive [M] int64, the column of each row's target;
    target_ids [M] int64, its item; cand_ids [C] int64; cand_vecs [C, d]; log_q [C] float32 or
    None, subtracted from every logit but the row's positive (the logQ correction of its
    negatives). Columns other than ``positive`` that hold a row's target are masked (accidental
    hits). Returns (mean loss, logits [M, C])."""
    rows = torch.arange(len(positive), device=positive.device)
    logits = queries @ cand_vecs.T
    if log_q is not None:
        logits = (logits - log_q).index_put((rows, positive), log_q[positive], accumulate=True)
    hit = cand_ids[None, :] == target_ids[:, None]
    hit[rows, positive] = False
    logits = logits.masked_fill(hit, MASKED)
    return F.cross_entropy(logits, positive), logits


def sampled_ntp(states, targets, table, sampler: NegativeSampler, negatives: int, tau: float):
    """The sampled L_NTP of one batch. states [B, S, d] U outputs; targets [B, S] int64 dense ids
    of their next items (0: no loss at that slot); table [N + 1, d] item vectors. Returns
    (loss, candidate ids [T + K] int64: the batch's targets then the drawn negatives)."""
    valid = targets > 0
    pos_ids = targets[valid]                       # [T]
    T = len(pos_ids)
    cand = torch.cat([pos_ids, sampler.sample(negatives)])
    loss, _ = candidate_softmax(states[valid] / tau, torch.arange(T, device=cand.device), pos_ids, cand,
                                F.embedding(cand, table), sampler.log_expected_count(cand, T, negatives))
    return loss, cand


@torch.no_grad()
def hard_pool(queries, cand, table, seen, target, size: int) -> torch.Tensor:
    """The Ranker's hard-negative pool without [n, N] scores: each row's top ``size`` of the
    distinct sampled candidates ``cand`` [C] by the Generator's raw score (no logQ: what MIPS
    ranks by when served), its history ``seen`` [n, R] (0 = padding) and its ``target`` [n]
    scored MASKED as in the exact pool. queries [n, d] (divided by tau); table [N + 1, d].
    Returns dense ids [n, min(size, distinct candidates)] int64. Memory O(n x C)."""
    ids = torch.unique(cand)                                   # [U] sorted
    scores = queries @ F.embedding(ids, table).T               # [n, U]
    hit = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
    for col in (seen, target[:, None]):
        at = torch.searchsorted(ids, col).clamp(max=len(ids) - 1)  # where each item would sit in ids
        hit.scatter_add_(1, at, (ids[at] == col).int())        # scatter_add: duplicates add, never race
    scores = scores.masked_fill(hit > 0, MASKED)
    return ids[scores.topk(min(size, len(ids)), dim=1).indices]
