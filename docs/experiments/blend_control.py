"""The control for the fitted served blend (docs/EXPERIMENTS.md): does GRank's Ranker add
anything beyond the popularity counts its served score mixes in? Each generator_only checkpoint
gets the same treatment as GRank's Ranker (grank.blend): Generator score + w . log1p(7-day,
30-day, all-time counts), w fitted on validation by the same convex cross-entropy, then HR@10 on
validation and test, paired per user against the GRank checkpoint of the same seed (its served
score, blend included).

    python -m docs.experiments.blend_control GENONLY_s0.pt GRANK_s0.pt GENONLY_s1.pt GRANK_s1.pt ...
"""

import numpy as np
import torch

from docs.experiments.paired import hits, parse_seed_pairs
from grank.blend import features, fit
from grank.checkpoint import load_checkpoint
from grank.data import load, split as make_split
from grank.popularity import RecentPopularity


def blended_hits(path, k=10):
    """{stage: [users] hits@k} of a Generator-only checkpoint + its fitted popularity blend, and
    the weights. Users whose item is not among the k1 candidates are misses, as when served."""
    model, cfg, _ = load_checkpoint(path)
    sp = make_split(load(cfg.dataset), 0)
    pop = RecentPopularity.from_data(sp.data)
    feats = {stage: features(model, sp, stage, cfg.eval, progress=False, popularity=pop) for stage in ("val", "test")}
    x, y, _ = feats["val"]
    w, _, _, _ = fit(x, y, torch.zeros(x.shape[-1] - 1))
    full = torch.cat([torch.ones(1), w])
    out = {}
    for stage, (xs, ys, kept) in feats.items():
        h = np.zeros(len(sp.users))
        h[kept.numpy()] = pessimistic_hits(xs, ys, full, k)
        out[stage] = h
    return out, w


def pessimistic_hits(x, y, w, k):
    """[U] 1.0 where the target ranks in the top k of its list, ties counted against it (the
    results protocol, grank.evaluate.list_ranks); -inf Generator scores are never above it"""
    s = x.nan_to_num(neginf=-1e30) @ w
    t = s.gather(1, y[:, None])
    return ((s >= t).sum(1) - 1 < k).double().numpy()


def main(argv=None):
    paths = parse_seed_pairs("blend_control", __doc__,
                             "GENONLY GRANK checkpoints, two per seed: a generator_only checkpoint (given "
                             "the fitted popularity blend) then the GRank checkpoint of the same seed", argv)
    diffs = {"val": [], "test": []}
    for base, other in zip(paths[::2], paths[1::2]):
        hb, w = blended_hits(base)
        print(f"{base} + fitted popularity blend {[round(float(v), 3) for v in w]}", flush=True)
        for stage in diffs:
            ho = hits(other, stage)
            d = ho - hb[stage]
            diffs[stage].append(d.mean())
            print(f"  {stage}: {other} {ho.mean():.4f} vs {hb[stage].mean():.4f}: {d.mean():+.4f} +- "
                  f"{d.std(ddof=1) / np.sqrt(len(d)):.4f}", flush=True)
    for stage, m in diffs.items():
        m = np.array(m)
        print(f"{stage}: mean over {len(m)} seeds {m.mean():+.4f}, s.e. {m.std(ddof=1) / np.sqrt(len(m)):.4f} "
              f"across seeds; GRank ahead in {int((m > 0).sum())} of {len(m)}")


if __name__ == "__main__":
    main()
