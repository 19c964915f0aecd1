"""How much does "what was rated in the days before the request" add to a trained Generator?
(docs/EXPERIMENTS.md, "Popularity as of the request"). No training: the Generator's top-k1
(MIPS) scores plus w x log1p(count) of one popularity feature of grank/popularity.py (ratings of
the candidate in the last 7 / 30 days / all days before the request's day, training
interactions only), re-ranked, HR@10 on validation and test; w = ALONE ranks by the count alone.

    python docs/experiments/recent_popularity.py artifacts/default/generator_only/best.pt
"""
import sys
import numpy as np, torch
sys.path.insert(0, '.')
from grank.batches import eval_inputs, eval_times
from grank.data import load, split as make_split
from grank.evaluate import list_ranks, metrics_from_ranks
from grank.mips import mips_top_k, seen_mask
from grank.popularity import LOG_SCALE, WINDOWS, RecentPopularity
from grank.train import load_checkpoint

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


if __name__ == "__main__":
    torch.set_num_threads(2)
    model, cfg, _ = load_checkpoint(sys.argv[1])
    data = load(cfg.dataset)
    sp, pop = make_split(data, 0), RecentPopularity.from_data(data)
    v, t = sweep(model, cfg, sp, pop, "val"), sweep(model, cfg, sp, pop, "test")
    for j, win in enumerate(WINDOWS):
        print(f"{win or 'all'} days: " + "  ".join(
            f"w={'alone' if w == ALONE else w}: {v[j, w]:.4f}/{t[j, w]:.4f}" for w in WS) + "  (val/test HR@10)")
