"""Item popularity as of the request time: a Ranker input the Generator cannot have.

The Generator scores every item with one inner product <U, v_i>, so an item's appeal to everyone
can only live in a fixed direction of its vector: it cannot follow what is being watched *now*.
The Ranker (``model.ranker_popularity``) also sees, for each candidate, how often it was rated
in the days before the request: ``WINDOWS`` = the last 7 days, the last 30 days, and all days
before, each as log1p(count) / ``LOG_SCALE``. Measured before it was built (docs/EXPERIMENTS.md,
"Popularity as of the request"): the 30-day count alone ranks at HR@10 0.06 vs 0.04 for the
all-time count, and added to a trained Generator's scores it lifts validation and test alike.

Leakage: counts come from the TRAINING interactions only (every user's sequence minus its last
two items), and only from days strictly before the request's day (day boundaries every
``DAY`` seconds from ``day0``, the first rating's day), so no held-out item of any user and no
later rating ever feeds a feature. A request's time is that of the newest history item it
carries (offline: the last training item for validation, the validation item for test), or
the client's clock when served.

Shapes: ``table`` [D + 1, N + 1] float32, row d = per-item count of training ratings on days
< d (row 0 all zeros, row D every training rating; column 0 = padding); the export bakes it
into the Ranker graph as a constant (about 15 MB for ML-1M's 1,038 days), as the MIPS graph
bakes the item vectors. Requests after the last day see the counts of the last day before
them that the table knows: refreshing it is re-exporting, like refreshing the item vectors.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .data import Interactions, training_mask

DAY = 86400
WINDOWS = (7, 30, 0)   # days before the request's day; 0 = every day before it
LOG_SCALE = 8.0        # log1p of ML-1M's largest counts is about 8: features land in [0, 1]
N_FEATURES = len(WINDOWS)


def count_table(data: Interactions) -> tuple[int, np.ndarray]:
    """(day0 in Unix seconds, cumulative day table [D + 1, N + 1] float32; see module doc)."""
    keep = training_mask(data)
    day0 = int(data.times.min()) // DAY * DAY if len(data.times) else 0
    day = (data.times - day0) // DAY
    n_days = int(day.max()) + 1 if len(day) else 1
    table = np.zeros((n_days + 1, data.n_items + 1), np.float32)
    np.add.at(table, (day[keep] + 1, data.items[keep]), 1.0)
    return day0, table.cumsum(0, dtype=np.float32)


class RecentPopularity(nn.Module):
    """Per-candidate popularity features as of each request's time (see module doc)."""

    def __init__(self, n_items: int, n_days: int = 1, day0: int = 0):
        super().__init__()
        # placeholders of the right shape; ``fill`` (training) or load_state_dict sets them
        self.register_buffer("table", torch.zeros(n_days + 1, n_items + 1))
        self.register_buffer("day0", torch.tensor(day0, dtype=torch.long))

    @classmethod
    def from_data(cls, data: Interactions) -> "RecentPopularity":
        day0, table = count_table(data)
        m = cls(data.n_items, table.shape[0] - 1, day0)
        m.table.copy_(torch.as_tensor(table))
        return m

    def forward(self, request_time: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
        """request_time: [B] int64 Unix seconds; cand_ids: [B, C] int64 -> [B, C, N_FEATURES]
        float32: log1p(ratings of each candidate in each window before the request's day)
        / LOG_SCALE."""
        D, cols = self.table.shape[0] - 1, self.table.shape[1]
        # days before the data are day 0 (nothing counted), days after it the last one
        day = torch.clamp((request_time - self.day0) // DAY, min=0, max=D)
        # ids past the table (items added to the catalogue after it was counted, or the synthetic
        # ones of perf's large-catalogue graphs) read column 0, padding, which is never rated
        cand_ids = cand_ids.masked_fill(cand_ids >= cols, 0)
        flat = self.table.reshape(-1)  # one lookup per (day, candidate), never a whole day's row

        def counts(d):  # [B] days -> [B, C] cumulative counts of the candidates
            return flat[(d * cols)[:, None] + cand_ids]
        now = counts(day)
        feats = [now - counts(torch.clamp(day - w, min=0)) if w else now for w in WINDOWS]
        return torch.log1p(torch.stack(feats, -1)) / LOG_SCALE
