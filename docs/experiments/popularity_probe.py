"""No-training probes of the popularity counts that GRank's served score mixes in, and of where
GRank and generator_only differ (docs/EXPERIMENTS.md). All on trained checkpoints, HR@10 as
served, on the data set the checkpoints were trained on.

    python -m docs.experiments.popularity_probe beta GENONLY_s0 GRANK_s0 GENONLY_s1 GRANK_s1 ...
        served score + beta x log1p(30-day count), beta in 0, 0.1, 0.2, 0.3, means over the pairs
    python -m docs.experiments.popularity_probe slope CKPT [CKPT ...]
        how much the served score moves per unit of log1p(count) of each window, through the
        Ranker's own score r (mean over the top 50 candidates of 1,024 test users)
    python -m docs.experiments.popularity_probe sameday GENONLY_s0 GRANK_s0 ...
        GRank minus generator_only by the time between the newest history item and the target
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F

from docs.experiments.paired import check_pairs, hits
from grank.checkpoint import load_checkpoint, read
from grank.config import Config
from grank.data import load, split as make_split
from grank.evaluate import generate, list_ranks, stage_batches
from grank.popularity import LOG_SCALE, WINDOWS, RecentPopularity

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


def beta(sp, paths):
    pop = RecentPopularity.from_data(sp.data)
    pairs = list(zip(paths[::2], paths[1::2]))
    for stage in ("val", "test"):
        h = {p: beta_hits(p, stage, sp, pop) for pair in pairs for p in pair}
        for b in BETAS:
            base = np.mean([h[p][b].mean() for p, _ in pairs])
            other = np.mean([h[p][b].mean() for _, p in pairs])
            print(f"{stage} beta {b}: base {base:.4f} other {other:.4f} (means over {len(pairs)} pairs)", flush=True)


def slope(sp, paths):
    for path in paths:
        model, cfg, _ = load_checkpoint(path)
        ranker = model.ranker
        if ranker is None or ranker.n_pop == 0:
            raise SystemExit(f"{path}: slope needs a Ranker with popularity features (model.ranker_popularity)")
        with torch.no_grad():
            ids, rat, feats, _, excl, when = next(stage_batches(sp, "test", cfg.model.ranker_history, 1024))
            table, _, _, cand = generate(model, ids, rat, feats, 50, excl)
            pop = model.candidate_popularity(when, cand)
            args = (F.embedding(cand, table), F.embedding(ids, table), rat, ids == 0)
            base = ranker.own_score(*args, pop)
            w_r = float(ranker.blend[0])
            for j, w in enumerate(WINDOWS):
                moved = pop.clone()
                moved[..., j] += 1 / LOG_SCALE  # +1 in log1p(count)
                d = float((ranker.own_score(*args, moved) - base).mean())
                direct = float(ranker.blend[1 + j])
                print(f"{path}: log1p({w or 'all'}-day count): r moves {d:.3f}; served score moves "
                      f"{w_r:.3f} x {d:.3f} + {direct:.3f} = {w_r * d + direct:.3f}", flush=True)


def sameday(sp, paths):
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


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m docs.experiments.popularity_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="probe", required=True, metavar="PROBE")
    pairs_help = "BASE OTHER checkpoints, two per seed (generator_only then GRank of the same seed)"
    q = sub.add_parser("beta", help="served score + beta x log1p(30-day count), means over the pairs")
    q.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=pairs_help)
    q = sub.add_parser("slope", help="how much the served score moves per unit of log1p(count) of "
                       "each window, through the Ranker's own score r")
    q.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="checkpoints with a Ranker that reads popularity (model.ranker_popularity)")
    q = sub.add_parser("sameday", help="GRank minus generator_only by the time between the newest "
                       "history item and the target")
    q.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=pairs_help)
    a = p.parse_args(argv)
    if a.probe != "slope":
        check_pairs(p, a.checkpoints)
    datasets = {Config.from_dict(read(path)["config"]).dataset for path in a.checkpoints}
    if len(datasets) > 1:
        p.error(f"checkpoints: trained on different data sets ({', '.join(sorted(datasets))})")
    torch.set_num_threads(2)
    sp = make_split(load(datasets.pop()))
    {"beta": beta, "slope": slope, "sameday": sameday}[a.probe](sp, a.checkpoints)


if __name__ == "__main__":
    main()
