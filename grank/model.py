"""The GRank network: shared item tower + Generator + Ranker, and its inference graphs.

Training code (losses, negatives) lives in ``train.py``; this module holds only what is served:
- ``item_vectors()``: [N+1, d] precomputed item vectors (row 0 = padding), shared by the
  Generator's inputs, the MIPS table and the Ranker's candidates;
- ``encode_users(...)``: history + profile -> user vector [B, d] (the U output);
- ``rank(...)``: user vector + history + candidate ids (+ request time with
  ``model.ranker_popularity``) -> scores [B, C].
MIPS score = <user_vector, item_vector> / tau (a plain inner product; tau only scales).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .generator import Generator
from .popularity import RecentPopularity
from .ranker import Ranker


EMB_STD = 0.05  # every embedding starts small and at one scale (see init_embeddings)


def init_embeddings(module: nn.Module) -> None:
    """torch's default N(0, 1) embeddings would let position/rating/year vectors (norm ~8)
    drown the item identity and blow up the initial logits; start them all at EMB_STD."""
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=EMB_STD)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()


class ItemTower(nn.Module):
    """Item vector = id embedding + one term per categorical item feature of the data set
    (``grank.data.schema``'s ``item_features``): a multi-valued feature (MovieLens genres) is
    a projection of its multi-hot row averaged over the item's values; a single-valued one
    (MovieLens release-year bucket) an embedding of its code. The feature values of every item
    are buffers, so the state dict carries them and a checkpoint rebuilds the tower alone."""

    def __init__(self, n_items: int, d: int, features: list):
        super().__init__()
        self.id = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.multi = [bool(f["multi"]) for f in features]
        self.features = nn.ModuleList(
            nn.Linear(len(f["values"]), d, bias=False) if f["multi"] else nn.Embedding(len(f["values"]), d)
            for f in features)
        for w in [self.id.weight] + [m.weight for m in self.features]:
            nn.init.normal_(w, std=EMB_STD)
        for i, f in enumerate(features):  # placeholders of the right shape; ``fill`` sets them
            shape = (n_items + 1, len(f["values"])) if f["multi"] else (n_items + 1,)
            self.register_buffer(f"values{i}", torch.zeros(shape, dtype=torch.float32 if f["multi"]
                                                             else torch.long), persistent=True)

    def fill(self, item_features) -> None:
        """Set the feature values from ``grank.data.ItemFeature``s (multi-hot rows averaged)."""
        for i, f in enumerate(item_features):
            v = torch.as_tensor(f.values)
            if f.multi:
                v = v.float() / v.float().sum(1, keepdim=True).clamp(min=1.0)
            getattr(self, f"values{i}").copy_(v)

    def forward(self) -> torch.Tensor:
        table = self.id.weight
        for i, m in enumerate(self.features):
            table = table + m(getattr(self, f"values{i}"))
        return torch.cat([torch.zeros_like(table[:1]), table[1:]])  # padding row is exactly 0


def prefix_means(emb: torch.Tensor, mask: torch.Tensor, window: int = 0) -> torch.Tensor:
    """Running mean over the slots: emb [B, R, d], mask [B, R] bool -> [B, R, d] where row j
    is the mean of the masked vectors in slots 0..j, or only in slots j-window+1..j when
    ``window`` > 0 (0 where there are none)."""
    w = mask.to(emb.dtype)
    s = (emb * w[..., None]).cumsum(1)
    n = w.cumsum(1)
    if window:
        s = s - F.pad(s, (0, 0, window, 0))[:, :-window]
        n = n - F.pad(n, (window, 0))[:, :-window]
    return s / n.clamp(min=1.0)[..., None]


class GRank(nn.Module):
    def __init__(self, cfg: ModelConfig, schema: dict, popularity: RecentPopularity | None = None):
        """``schema``: the data set's ``grank.data.schema`` (catalogue size, events, features)."""
        super().__init__()
        if cfg.ranker_history < cfg.max_history:
            raise ValueError("model.ranker_history must be >= model.max_history "
                             "(the Generator window is the tail of the long history)")
        self.cfg = cfg
        self.n_items = n_items = schema["n_items"]
        self.strong_event = schema["strong_event"]
        self.items = ItemTower(n_items, cfg.d_model, schema["item_features"])
        self.generator = Generator(cfg, len(schema["events"]),
                                   tuple(len(f["values"]) for f in schema["user_features"]))
        self.ranker = Ranker(cfg, len(schema["events"])) if cfg.ranker else None
        init_embeddings(self)
        # item statistics by day (a buffer, no parameters): only a Ranker that uses them has them
        uses = cfg.ranker and cfg.ranker_popularity
        if uses and popularity is None:
            raise ValueError("model.ranker_popularity: the model needs the training counts "
                             "(grank.popularity.RecentPopularity.from_data)")
        self.popularity = popularity if uses else None

    def item_vectors(self) -> torch.Tensor:
        return self.items()

    def history_inputs(self, table, hist_ids, hist_ratings):
        """Common preprocessing of a long history [B, R] (left padded with 0).
        Returns (emb [B, R, d], pad [B, R], pools [B, R, 3d] or None): the running means of
        the behaviour sub-sequences that feed the query token U (all items, high-rated items,
        the ``recent_items`` newest items)."""
        emb = F.embedding(hist_ids, table)
        pad = hist_ids == 0
        if not self.cfg.query_token:
            return emb, pad, None
        pools = torch.cat([prefix_means(emb, ~pad),
                           prefix_means(emb, hist_ratings >= self.strong_event),
                           prefix_means(emb, ~pad, self.cfg.recent_items)], -1)
        return emb, pad, pools

    def encode_users(self, hist_ids, hist_ratings, user_feats, table=None):
        """hist_ids: [B, R] int64 (dense ids, newest last, left padded with 0); hist_ratings:
        [B, R] int64 event codes 0..E (0 = padding); user_feats: [B, F] int64 (F >= 0).
        Returns user vectors [B, d] float32."""
        table = self.item_vectors() if table is None else table
        L = self.cfg.max_history
        emb, pad, pools = self.history_inputs(table, hist_ids, hist_ratings)
        g = self.generator
        h = g.history_tokens(emb[:, -L:], hist_ratings[:, -L:])
        if not self.cfg.query_token:
            h_out, _ = g.run(h, pad[:, -L:])
            return h_out[:, -1]
        x = g.query_tokens(user_feats, pools[:, -1:])
        vis = torch.ones(1, 1, L, dtype=torch.bool, device=h.device)
        _, x_out = g.run(h, pad[:, -L:], x, vis)
        return x_out[:, 0]

    def rank(self, user_vec, hist_ids, hist_ratings, cand_ids, table=None, request_time=None):
        """user_vec: [B, d]; hist_ids/hist_ratings: [B, R]; cand_ids: [B, C] int64;
        request_time: [B] int64 Unix seconds (used, and required, only with
        ``model.ranker_popularity``) -> scores [B, C]. Without a Ranker (ablations) the MIPS
        score is returned."""
        table = self.item_vectors() if table is None else table
        cand = F.embedding(cand_ids, table)
        if self.ranker is None:
            return (user_vec[:, None, :] * cand).sum(-1) / self.cfg.tau
        R = self.cfg.ranker_history
        hist_ids, hist_ratings = hist_ids[:, -R:], hist_ratings[:, -R:]
        return self.ranker(user_vec, cand, F.embedding(hist_ids, table), hist_ratings,
                           hist_ids == 0, self.candidate_popularity(request_time, cand_ids))

    def candidate_popularity(self, request_time, cand_ids):
        """[B, C, 3] popularity features of cand_ids [B, C] as of request_time [B], or None
        when the Ranker does not use them."""
        if self.popularity is None:
            return None
        if request_time is None:
            raise ValueError("request_time: required by a Ranker with model.ranker_popularity")
        return self.popularity(request_time, cand_ids)

    def rank_top_k(self, user_vec, hist_ids, hist_ratings, cand_ids, k: int, table=None,
                   request_time=None):
        """The Ranker stage as served: scores ``cand_ids`` [B, C] and keeps the best ``k``.
        Returns (ids [B, k] int64 taken from cand_ids, scores [B, k] float32), best first."""
        scores = self.rank(user_vec, hist_ids, hist_ratings, cand_ids, table, request_time)
        top, pos = scores.topk(k, dim=1)
        return cand_ids.gather(1, pos), top
