"""No-training probes behind docs/EXPERIMENTS.md, "Where validation and test part ways, and a
served blend fitted on held-out data". All on trained checkpoints, HR@10 as served.

    python docs/experiments/popularity_probe.py beta GENONLY_s0 GRANK_s0 GENONLY_s1 GRANK_s1 ...
        served score + beta x log1p(30-day count), beta in BETAS, means over the pairs
    python docs/experiments/popularity_probe.py slope CKPT [CKPT ...]
        how much the served score moves per unit of log1p(count) of each window, through the
        Ranker's own score r (mean over the top 50 candidates of 1,024 test users)
    python docs/experiments/popularity_probe.py sameday GENONLY_s0 GRANK_s0 ...
        GRank minus generator_only by the time between the newest history item and the target
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, '.')
sys.path.insert(0, 'docs/experiments')
from grank.data import load, split as make_split
from grank.evaluate import generate, list_ranks, stage_batches
from grank.popularity import LOG_SCALE, WINDOWS, RecentPopularity
from grank.train import load_checkpoint
from paired import hits

BETAS = (0, 0.1, 0.2, 0.3)


def beta_hits(path, stage, sp, pop):
    """{beta: [users] hits@10} of the served score + beta x log1p(30-day count)"""
    model, cfg, _ = load_checkpoint(path)
    out = {b: [] for b in BETAS}
    with torch.no_grad():
        for ids, rat, feats, targets, excl, when in stage_batches(sp, stage, cfg.model.ranker_history, 512):
            table, u, g, cand = generate(model, ids, rat, feats, cfg.eval.k1, excl)
            served = model.rank(u, ids, rat, cand, table, when) if model.ranker is not None else g
            count30 = pop(when, cand)[..., WINDOWS.index(30)] * LOG_SCALE
            for b in BETAS:
                top, pos = (served + b * count30).topk(10, 1)
                out[b].append((list_ranks(cand.gather(1, pos), top, targets).numpy() < 10) * 1.0)
    return {b: np.concatenate(v) for b, v in out.items()}


def beta(paths):
    sp = make_split(load("ml-1m"))
    pop = RecentPopularity.from_data(sp.data)
    pairs = list(zip(paths[::2], paths[1::2]))
    for stage in ("val", "test"):
        h = {p: beta_hits(p, stage, sp, pop) for pair in pairs for p in pair}
        for b in BETAS:
            base = np.mean([h[p][b].mean() for p, _ in pairs])
            other = np.mean([h[p][b].mean() for _, p in pairs])
            print(f"{stage} beta {b}: base {base:.4f} other {other:.4f} (means over {len(pairs)} pairs)", flush=True)


def slope(paths):
    sp = make_split(load("ml-1m"))
    for path in paths:
        model, cfg, _ = load_checkpoint(path)
        ranker = model.ranker
        with torch.no_grad():
            ids, rat, feats, _, excl, when = next(stage_batches(sp, "test", cfg.model.ranker_history, 1024))
            table, u, _, cand = generate(model, ids, rat, feats, 50, excl)
            pop = model.candidate_popularity(when, cand)
            args = (u, F.embedding(cand, table), F.embedding(ids, table), rat, ids == 0)
            base = ranker(*args, pop, own=True)
            w_r = float(ranker.blend[0])
            for j, w in enumerate(WINDOWS):
                moved = pop.clone()
                moved[..., j] += 1 / LOG_SCALE  # +1 in log1p(count)
                d = float((ranker(*args, moved, own=True) - base).mean())
                direct = float(ranker.blend[1 + j])
                print(f"{path}: log1p({w or 'all'}-day count): r moves {d:.3f}; served score moves "
                      f"{w_r:.3f} x {d:.3f} + {direct:.3f} = {w_r * d + direct:.3f}", flush=True)


def sameday(paths):
    sp = make_split(load("ml-1m"))
    d = sp.data
    pairs = list(zip(paths[::2], paths[1::2]))
    for stage in ("val", "test"):
        ends = np.array([sp.history_len(int(u), stage) for u in sp.users])
        off = d.offsets[sp.users]
        gap = (d.times[off + ends] - d.times[off + ends - 1]) / 86400.0
        diff = np.stack([hits(o, stage) - hits(b, stage) for b, o in pairs]).mean(0)
        for name, m in (("same day (< 1 day)", gap < 1), ("1 to 30 days", (gap >= 1) & (gap < 30)),
                        (">= 30 days", gap >= 30)):
            print(f"{stage}: {name}: {m.sum()} users ({m.mean():.2f}), other minus base {diff[m].mean():+.4f} "
                  f"+- {diff[m].std(ddof=1) / np.sqrt(m.sum()):.4f}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    cmds = {"beta": beta, "slope": slope, "sameday": sameday}
    if len(sys.argv) < 3 or sys.argv[1] not in cmds or (sys.argv[1] != "slope" and len(sys.argv[2:]) % 2):
        sys.exit(__doc__)
    cmds[sys.argv[1]](sys.argv[2:])
