"""Paired comparison of checkpoints on the same users (docs/EXPERIMENTS.md): per-user HR@10 hits
of the served pipeline, then for each checkpoint against the first one the difference, its
paired standard error (std of the per-user differences / sqrt(users)) and the discordant users
(hit by one only). Paired, because every row ranks the same 6,040 held-out items: the
seed-to-seed spread of a row is not the noise of a difference measured on the same users.

    python docs/experiments/paired.py test BASE.pt OTHER.pt [OTHER.pt ...]
"""
import sys

import numpy as np
import torch

sys.path.insert(0, '.')
from grank.data import load, split as make_split
from grank.evaluate import served_ranks
from grank.train import load_checkpoint

torch.set_num_threads(2)
stage, paths = sys.argv[1], sys.argv[2:]


def hits(path, k=10):
    """[users] 1.0 where the served list has the held-out item in its top k"""
    model, cfg, _ = load_checkpoint(path)
    final, _ = served_ranks(model, make_split(load(cfg.dataset), 0), stage, cfg.eval, progress=False)
    return (final < k).astype(np.float64)


base = hits(paths[0])
print(f"{paths[0]}: {stage} HR@10 {base.mean():.4f}")
for p in paths[1:]:
    h = hits(p)
    d = h - base
    print(f"{p}: {stage} HR@10 {h.mean():.4f}  minus base {d.mean():+.4f} +- {d.std(ddof=1) / np.sqrt(len(d)):.4f} "
          f"(paired s.e.; {int((d > 0).sum())} users hit only here, {int((d < 0).sum())} only in base)")
