"""Stage 2, the Ranker: single-head cross-attention from each candidate over the long history.

Shapes (B users, C candidates, R long-history slots, d = ``d_model``):
- memory = MLP(item vector + rating + recency) of the history: [B, R, d] (keys and values);
- each candidate's item vector is the query: [B, C, d] -> attended vector a: [B, C, d];
- ``model.ranker_score = "residual"``: score = <u, v_c> / tau (the Generator's own MIPS score)
  + MLP([a, v_c, a*v_c, u*v_c]), trained on that sum: the Ranker starts from the Generator's
  order and learns target-aware corrections;
- ``"fused"`` (the default): the Ranker's own score r = MLP([a, v_c, a*v_c]) never sees the user
  vector and is trained on its own (L_CA-info over the Ranker's scores, as the paper states);
  served score = <u, v_c> / tau + blend[0] * r (+ blend[1:] . log1p(popularity counts)), where
  the buffer ``blend`` starts as (``model.ranker_fusion``, 0, ...) and is fitted on held-out
  data after training (``grank.blend``).
With ``model.ranker_popularity`` (the default) the head also sees each candidate's popularity as
of the request ([B, C, 3], ``grank.popularity``), appended to its input in both forms.
Whether the Ranker sees U or mixes in the MIPS score is ours to choose (the paper does not say).
Why "fused" exists: trained as a residual on lists whose targets the Generator has memorised,
the correction learns to defer to the (in-sample, over-confident) Generator score; scored on
its own, from the history alone, the Ranker has to be a second opinion (docs/EXPERIMENTS.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import ModelConfig
from .generator import NEG_INF
from .popularity import LOG_SCALE, N_FEATURES


class Ranker(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.tau = cfg.tau
        self.fused = cfg.ranker_score == "fused"
        self.fusion = cfg.ranker_fusion  # the served weight of r until the blend is fitted
        self.rating = nn.Embedding(6, d)
        self.recency = nn.Embedding(cfg.ranker_history, d)
        self.mem = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.n_pop = N_FEATURES if cfg.ranker_popularity else 0
        self.head = nn.Sequential(nn.Linear((3 if self.fused else 4) * d + self.n_pop, d), nn.GELU(),
                                  nn.Dropout(cfg.dropout),
                                  nn.Linear(d, 1))
        # zero-initialised last layer: an untrained Ranker returns the Generator's order exactly
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        if self.fused:
            # served mix (weight of r, then of each log1p(count)); grank.blend fits it after
            # training, on held-out data, where the Generator is not over-confident
            self.register_buffer("blend", self.default_blend())

    def default_blend(self) -> torch.Tensor:
        """[1 + n_pop] float32: r at ``model.ranker_fusion``, popularity only inside r"""
        return torch.tensor([self.fusion] + [0.0] * self.n_pop)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints saved before the blend existed were served with ranker_fusion alone
        if self.fused and prefix + "blend" not in state_dict:
            state_dict[prefix + "blend"] = self.default_blend()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, user_vec, cand_emb, hist_emb, hist_ratings, pad, cand_pop=None,
                detach_residual: bool = False, own: bool = False):
        """user_vec: [B, d]; cand_emb: [B, C, d]; hist_emb: [B, R, d]; hist_ratings: [B, R]
        int64; pad: [B, R] bool (True = padding); cand_pop: [B, C, 3] float32 popularity
        features (required exactly when ``model.ranker_popularity``). Returns scores [B, C]
        float32, as served, or with ``own`` the Ranker's own scores r [B, C].
        ``detach_residual`` (training only; values unchanged) stops the loss from reaching the
        Generator through the residual score. ``own`` (training only, "fused" Ranker): r alone,
        without the Generator score mixed in."""
        if (cand_pop is None) != (self.n_pop == 0):
            raise ValueError("cand_pop: needed exactly when model.ranker_popularity is set")
        if own and not self.fused:
            raise ValueError("own=True: only a 'fused' Ranker (model.ranker_score) has a score of its own")
        R = hist_emb.shape[1]
        mem = self.mem(hist_emb + self.rating(hist_ratings) + self.recency.weight[-R:])
        q, k, v = self.q(cand_emb), self.k(mem), self.v(mem)
        att = (q @ k.transpose(1, 2)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(pad[:, None, :], NEG_INF).softmax(-1)  # [B, C, R]
        a = att @ v
        feats = [a, cand_emb, a * cand_emb]
        if not self.fused:  # the residual head also sees the user vector
            feats.append(user_vec[:, None, :] * cand_emb)
        if cand_pop is not None:
            feats.append(cand_pop)
        r = self.head(torch.cat(feats, -1)).squeeze(-1)
        if own:
            return r
        gen_score = (user_vec[:, None, :] * cand_emb).sum(-1) / self.tau
        if detach_residual:
            gen_score = gen_score.detach()
        if not self.fused:
            return gen_score + r
        served = gen_score + self.blend[0] * r
        if cand_pop is not None:
            served = served + (cand_pop * LOG_SCALE) @ self.blend[1:]  # weights per log1p(count)
        return served
