"""Stage 2, the Ranker: single-head cross-attention from each candidate over the long history.

Shapes (B users, C candidates, R long-history slots, d = ``d_model``):
- memory = MLP(item vector + event + recency) of the history: [B, R, d] (keys and values);
- each candidate's item vector is the query: [B, C, d] -> attended vector a: [B, C, d];
- the Ranker's own score r = MLP([a, v_c, a*v_c (, popularity)]) [B, C] never sees the user
  vector; L_CA-info trains r alone (the paper's "InfoNCE over the ranker scores");
- served score = <u, v_c> / tau + blend[0] * r + blend[1:] . log1p(popularity counts), where
  the buffer ``blend`` starts as (``model.ranker_fusion``, 0, ...) and is fitted on held-out
  data after training (``grank.blend``).
With ``model.ranker_popularity`` (the default) the head also sees each candidate's popularity as
of the request ([B, C, 3], ``grank.popularity``).
Whether the Ranker sees U and how its score meets the Generator's is ours to choose (the paper
does not say). Scored on its own, from the history alone, the Ranker is a second opinion: a
correction on top of the Generator's score, trained on lists whose targets the Generator has
memorised, learns to defer to that over-confident score instead (docs/EXPERIMENTS.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import ModelConfig
from .generator import MASKED
from .popularity import LOG_SCALE, N_FEATURES


class Ranker(nn.Module):
    def __init__(self, cfg: ModelConfig, n_events: int):
        super().__init__()
        d = cfg.d_model
        self.tau = cfg.tau
        self.rating = nn.Embedding(n_events + 1, d)  # event codes 1..E (ratings), 0 = padding
        self.recency = nn.Embedding(cfg.ranker_history, d)
        self.mem = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.n_pop = N_FEATURES if cfg.ranker_popularity else 0
        self.head = nn.Sequential(nn.Linear(3 * d + self.n_pop, d), nn.GELU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(d, 1))
        # zero-initialised last layer: an untrained Ranker returns the Generator's order exactly
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        # served mix (weight of r, then of each log1p(count)); grank.blend fits it after
        # training, on held-out data, where the Generator is not over-confident
        self.register_buffer("blend", torch.tensor([cfg.ranker_fusion] + [0.0] * self.n_pop))

    def own_score(self, cand_emb, hist_emb, hist_ratings, pad, cand_pop=None):
        """The Ranker's own score r [B, C] float32 of candidates cand_emb [B, C, d] given the
        history hist_emb [B, R, d], hist_ratings [B, R] int64, pad [B, R] bool (True =
        padding) and, exactly when ``model.ranker_popularity``, cand_pop [B, C, 3] float32."""
        if (cand_pop is None) != (self.n_pop == 0):
            raise ValueError("cand_pop: needed exactly when model.ranker_popularity is set")
        R = hist_emb.shape[1]
        mem = self.mem(hist_emb + self.rating(hist_ratings) + self.recency.weight[-R:])
        q, k, v = self.q(cand_emb), self.k(mem), self.v(mem)
        att = (q @ k.transpose(1, 2)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(pad[:, None, :], MASKED).softmax(-1)  # [B, C, R]
        a = att @ v
        feats = [a, cand_emb, a * cand_emb] + ([cand_pop] if cand_pop is not None else [])
        return self.head(torch.cat(feats, -1)).squeeze(-1)

    def forward(self, user_vec, cand_emb, hist_emb, hist_ratings, pad, cand_pop=None):
        """The served score [B, C] float32: user_vec [B, d], the rest as in ``own_score``."""
        r = self.own_score(cand_emb, hist_emb, hist_ratings, pad, cand_pop)
        served = (user_vec[:, None, :] * cand_emb).sum(-1) / self.tau + self.blend[0] * r
        if cand_pop is not None:
            served = served + (cand_pop * LOG_SCALE) @ self.blend[1:]  # weights per log1p(count)
        return served
