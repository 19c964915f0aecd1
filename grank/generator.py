"""Stage 1, the Generator: a causal Transformer over recent behaviour plus a user query token U.

Shapes (B users, R long-history slots, L = ``max_history`` recent slots, d = ``d_model``):
- history tokens ``h``: [B, L, d] (the last L of the R long-history slots, left padded with id 0);
- query tokens ``x``: [B, M, d]; in training M = L (a U token for every prefix) + C auxiliary
  target tokens; at serving M = 1 (the U token of the whole window).

Decomposed attention (paper: history-history, candidate-history, candidate-self): history tokens
attend causally to history only; every query token attends to the history positions it may see
and to itself, never to another query token; history never attends to query tokens. Hence:
- the U token of the newest slot computes exactly the served user vector (tested), and U tokens
  placed at older slots j (seeing history[0..j]) give extra next-item targets from the same
  forward pass, the way SASRec supervises every position (absolute slot positions, as SASRec);
- the training-only auxiliary tokens cannot change the U outputs (tested).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import ModelConfig

# The logit of a hidden key or an excluded training candidate: large and finite, so softmax gives
# it weight 0 without the NaN of (-inf) - (-inf) in a row where everything is hidden.
# (grank.mips.NEG_INF, -inf, is the score of an item that must never be returned.)
MASKED = -1e9


class Block(nn.Module):
    """Pre-LayerNorm Transformer block with decomposed attention (see module docstring)."""

    def __init__(self, d: int, n_heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.h, self.dh = n_heads, d // n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        # no dropout inside the FFN: on a CPU each dropout mask costs as much as a small GEMM
        self.ffn = nn.Sequential(nn.Linear(d, ffn_mult * d), nn.GELU(), nn.Linear(ffn_mult * d, d))
        self.drop = nn.Dropout(dropout)

    def _heads(self, t: torch.Tensor):
        B, N, _ = t.shape
        q, k, v = self.qkv(t).view(B, N, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        return q, k, v  # each [B, H, N, dh]

    def _merge(self, t: torch.Tensor) -> torch.Tensor:
        B, H, N, dh = t.shape
        return t.transpose(1, 2).reshape(B, N, H * dh)

    def forward(self, h, hh_mask, x=None, xh_mask=None):
        """h: [B, L, d]; hh_mask: [B, 1, L, L] bool (True = may attend);
        x: [B, M, d] or None; xh_mask: [B, 1, M, L] bool. Returns (h, x)."""
        qh, kh, vh = self._heads(self.ln1(h))
        scale = 1.0 / math.sqrt(self.dh)
        att = (qh @ kh.transpose(-1, -2)) * scale
        att = att.masked_fill(~hh_mask, MASKED).softmax(-1)
        h = h + self.drop(self.proj(self._merge(att @ vh)))
        h = h + self.drop(self.ffn(self.ln2(h)))
        if x is None:
            return h, None
        qx, kx, vx = self._heads(self.ln1(x))
        att_xh = ((qx @ kh.transpose(-1, -2)) * scale).masked_fill(~xh_mask, MASKED)
        att_self = (qx * kx).sum(-1, keepdim=True) * scale  # a query token always sees itself
        p = torch.cat([att_xh, att_self], dim=-1).softmax(-1)
        out = p[..., :-1] @ vh + p[..., -1:] * vx
        x = x + self.drop(self.proj(self._merge(out)))
        x = x + self.drop(self.ffn(self.ln2(x)))
        return h, x


class Generator(nn.Module):
    """Recent-history encoder producing the user vector used for MIPS.

    ``query_token=False`` gives the SASRec-style baseline: the user vector is the last history
    position's output and every position predicts the next item.
    """

    def __init__(self, cfg: ModelConfig, n_events: int, user_feat_sizes: tuple):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.pos = nn.Embedding(cfg.max_history, d)
        self.rating = nn.Embedding(n_events + 1, d)  # event codes 1..E (ratings), 0 = padding
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.ffn_mult, cfg.dropout)
                                    for _ in range(cfg.n_layers))
        self.ln_out = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.query_token:
            # U = MLP([profile ; mean(all) ; mean(high-rated) ; mean(newest few)]) + query bias
            self.profile = nn.ModuleList(nn.Embedding(n, d) for n in user_feat_sizes)
            self.fuse = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Linear(d, d))
            self.query = nn.Parameter(torch.zeros(d))
        if cfg.aux_tokens:
            self.aux_mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
            self.aux_type = nn.Parameter(torch.zeros(d))

    # ---- pieces shared by training and serving -------------------------------------------
    def history_tokens(self, emb: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """emb: [B, L, d] item vectors of the last L slots; ratings: [B, L] int64 -> [B, L, d]."""
        pos = self.pos.weight[-emb.shape[1]:]  # right aligned: the newest item is always slot L-1
        return self.drop(emb + self.rating(ratings) + pos)

    def query_tokens(self, user_feats, pools) -> torch.Tensor:
        """user_feats: [B, F] int64; pools: [B, M, 3d] sub-sequence means -> U tokens [B, M, d]."""
        prof = sum((e(user_feats[:, i]) for i, e in enumerate(self.profile)),  # [B, d]
                   pools.new_zeros(pools.shape[0], pools.shape[2] // 3))
        prof = prof[:, None, :].expand(-1, pools.shape[1], -1)
        return self.fuse(torch.cat([prof, pools], -1)) + self.query

    def aux_tokens(self, cand_emb: torch.Tensor) -> torch.Tensor:
        """cand_emb: [B, C, d] item vectors of the target and its negatives -> [B, C, d]."""
        return self.aux_mlp(cand_emb) + self.aux_type

    def run(self, h, pad, x=None, x_vis=None):
        """h: [B, L, d] history tokens, pad: [B, L] bool (True = padding slot);
        x: [B, M, d] query tokens, x_vis: [B or 1, M, L] bool history visibility.
        Returns (history outputs [B, L, d], query outputs [B, M, d] or None), final-LN'd."""
        L = h.shape[1]
        # from a Range + comparisons: exports to ops every ONNX Runtime / TensorRT build has
        # (a boolean EyeLike, which torch.eye(dtype=bool) becomes, has no CPU kernel in ORT)
        idx = torch.arange(L, device=h.device)
        causal = idx[None, :] <= idx[:, None]
        eye = idx[None, :] == idx[:, None]
        # keys that are padding are hidden, except a slot's own key so no row is empty
        hh = (causal[None] & ~pad[:, None, :]) | eye[None]
        xh = None if x is None else (x_vis & ~pad[:, None, :])[:, None]
        hh = hh[:, None]
        for blk in self.blocks:
            h, x = blk(h, hh, x, xh)
        return self.ln_out(h), (None if x is None else self.ln_out(x))
