"""The Ranker's correction re-weighted without retraining (docs/EXPERIMENTS.md):
served score = Generator score + w * (Ranker score - Generator score), on val and test.

    python docs/experiments/correction_weight.py artifacts/default/grank/best.pt
"""
import sys, numpy as np, torch
sys.path.insert(0, '.')
from grank.train import load_checkpoint
from grank.data import split as make_split
from grank.batches import eval_inputs
from grank.mips import mips_top_k, seen_mask
from grank.evaluate import list_ranks, metrics_from_ranks
torch.set_num_threads(2)
model, cfg, ck = load_checkpoint(sys.argv[1])
from grank.data import load
data = load(cfg.dataset); sp = make_split(data, 0)
ws = [0, 0.5, 1, 1.5, 2, 3, 1e6]
R = cfg.model.ranker_history
for stage in ("val", "test"):
    ranks = {w: [] for w in ws}
    with torch.no_grad():
        table = model.item_vectors()
        for s in range(0, len(sp.users), 512):
            ub = sp.users[s:s+512]
            ids, rat, feats, targets, seen = eval_inputs(sp, ub, stage, R)
            ids, rat, feats = map(torch.as_tensor, (ids, rat, feats))
            u = model.encode_users(ids, rat, feats, table)
            g, gid = mips_top_k(u, table, cfg.eval.k1, cfg.model.tau, seen_mask(seen, data.n_items))
            full = model.rank(u, ids, rat, gid, table)
            corr = full - g
            for w in ws:
                sc = g + w * corr if w < 1e5 else corr
                top, pos = sc.topk(cfg.eval.k2, 1)
                ranks[w].append(list_ranks(gid.gather(1, pos), top, torch.as_tensor(targets)).numpy())
    for w in ws:
        m = metrics_from_ranks(np.concatenate(ranks[w]), (10, 50))
        print(stage, 'w=', w, {k: round(v, 4) for k, v in m.items()})
