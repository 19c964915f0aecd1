"""Stage 2, the Ranker: single-head cross-attention from each candidate over the long history.

Shapes (B users, C candidates, R long-history slots, d = ``d_model``):
- memory = MLP(item vector + rating + recency) of the history: [B, R, d] (keys and values);
- each candidate's item vector is the query: [B, C, d] -> attended vector a: [B, C, d];
- score = <u, v_c> / tau (the Generator's own MIPS score) + MLP([a, v_c, a*v_c, u*v_c]).
The residual on the Generator score is our choice (the paper does not say whether the Ranker
sees U): the Ranker starts from the Generator's order and learns target-aware corrections.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import ModelConfig
from .generator import NEG_INF


class Ranker(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.tau = cfg.tau
        self.rating = nn.Embedding(6, d)
        self.recency = nn.Embedding(cfg.ranker_history, d)
        self.mem = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.head = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(d, 1))
        # zero-initialised correction: an untrained Ranker returns the Generator's order exactly
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, user_vec, cand_emb, hist_emb, hist_ratings, pad, detach_residual: bool = False):
        """user_vec: [B, d]; cand_emb: [B, C, d]; hist_emb: [B, R, d]; hist_ratings: [B, R]
        int64; pad: [B, R] bool (True = padding). Returns scores [B, C] float32.
        ``detach_residual`` (training only; values unchanged) stops the loss from reaching the
        Generator through the residual score."""
        R = hist_emb.shape[1]
        mem = self.mem(hist_emb + self.rating(hist_ratings) + self.recency.weight[-R:])
        q, k, v = self.q(cand_emb), self.k(mem), self.v(mem)
        att = (q @ k.transpose(1, 2)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(pad[:, None, :], NEG_INF).softmax(-1)  # [B, C, R]
        a = att @ v
        u = user_vec[:, None, :].expand_as(cand_emb)
        feats = torch.cat([a, cand_emb, a * cand_emb, u * cand_emb], -1)
        gen_score = (u * cand_emb).sum(-1) / self.tau
        if detach_residual:
            gen_score = gen_score.detach()
        return gen_score + self.head(feats).squeeze(-1)
