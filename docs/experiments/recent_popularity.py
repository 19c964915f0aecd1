"""How much does "what was rated in the days before the request" add to a trained Generator?
(docs/EXPERIMENTS.md.) No training: the Generator's top-k1 (MIPS) scores plus w x log1p(count)
of one popularity feature of grank/popularity.py (ratings of the candidate in the last 7 / 30
days / all days before the request's day, training interactions only), re-ranked, HR@10 on
validation and test; w = alone ranks by the count alone.

    python -m docs.experiments.recent_popularity artifacts/default/generator_only/best.pt
"""
import argparse

import numpy as np
import torch

from grank.batches import eval_inputs, eval_times
from grank.checkpoint import load_checkpoint
from grank.data import load, split as make_split
from grank.evaluate import list_ranks, metrics_from_ranks
from grank.mips import mips_top_k, seen_mask
from grank.popularity import LOG_SCALE, WINDOWS, RecentPopularity

ALONE = 1e6
WS = [0, 0.1, 0.2, 0.3, 0.5, 1.0, ALONE]


def sweep(model, cfg, sp, pop, stage):
    """{window: {w: HR@10}} for the Generator score + w x log1p(count in that window)."""
    ranks = {(j, w): [] for j in range(len(WINDOWS)) for w in WS}
    with torch.no_grad():
        table = model.item_vectors()
        for s in range(0, len(sp.users), 512):
            ub = sp.users[s:s + 512]
            ids, rat, feats, targets, seen = eval_inputs(sp, ub, stage, cfg.model.ranker_history)
            u = model.encode_users(*map(torch.as_tensor, (ids, rat, feats)), table)
            g, gid = mips_top_k(u, table, cfg.eval.k1, cfg.model.tau, seen_mask(seen, sp.data.n_items))
            f = pop(torch.as_tensor(eval_times(sp, ub, stage)), gid) * LOG_SCALE  # log1p(counts)
            for j in range(len(WINDOWS)):
                for w in WS:
                    sc = g + w * f[..., j] if w < ALONE else f[..., j] + 1e-6 * g  # ties: Generator
                    top, pos = sc.topk(cfg.eval.k2, 1)
                    ranks[j, w].append(list_ranks(gid.gather(1, pos), top, torch.as_tensor(targets)).numpy())
    return {(j, w): metrics_from_ranks(np.concatenate(r), (10,))["HR@10"] for (j, w), r in ranks.items()}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m docs.experiments.recent_popularity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a trained checkpoint; its Generator's candidates are re-ranked "
                   "(its Ranker, if any, is not used)")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    model, cfg, _ = load_checkpoint(a.checkpoint)
    data = load(cfg.dataset)
    sp, pop = make_split(data, 0), RecentPopularity.from_data(data)
    v, t = sweep(model, cfg, sp, pop, "val"), sweep(model, cfg, sp, pop, "test")
    for j, win in enumerate(WINDOWS):
        print(f"{win or 'all'} days: " + "  ".join(
            f"w={'alone' if w == ALONE else w}: {v[j, w]:.4f}/{t[j, w]:.4f}" for w in WS) + "  (val/test HR@10)")


if __name__ == "__main__":
    main()
