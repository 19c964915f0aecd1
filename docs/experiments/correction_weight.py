"""The Ranker's correction re-weighted without retraining (docs/EXPERIMENTS.md):
served score = Generator score + w * (Ranker score - Generator score), on val and test.
``fusion_sweep`` is shared with ranker_phase.py (a fused Ranker's own score is that correction
divided by model.ranker_fusion).

    python docs/experiments/correction_weight.py artifacts/default/grank/best.pt
"""
import sys, numpy as np, torch
sys.path.insert(0, '.')
from grank.train import load_checkpoint
from grank.data import load, split as make_split
from grank.batches import eval_inputs, eval_times
from grank.mips import mips_top_k, seen_mask
from grank.evaluate import list_ranks, metrics_from_ranks

ALONE = 1e6  # a weight this large stands for "the correction alone"


def fusion_sweep(model, cfg, sp, stage, ws, ks=(10, 50), scale=1.0):
    """{w: metrics} of the pipeline served with Generator score + w * (Ranker score - Generator
    score) / scale over the k1 candidates (w = ALONE: that correction alone). On a checkpoint with
    a fitted served blend (grank.blend) the correction includes the blend's popularity terms, so
    w then scales those too, not only the Ranker's own score."""
    model.eval()
    R, ranks = cfg.model.ranker_history, {w: [] for w in ws}
    with torch.no_grad():
        table = model.item_vectors()
        for s in range(0, len(sp.users), 512):
            ub = sp.users[s:s + 512]
            ids, rat, feats, targets, seen = eval_inputs(sp, ub, stage, R)
            ids, rat, feats = map(torch.as_tensor, (ids, rat, feats))
            u = model.encode_users(ids, rat, feats, table)
            g, gid = mips_top_k(u, table, cfg.eval.k1, cfg.model.tau, seen_mask(seen, sp.data.n_items))
            when = torch.as_tensor(eval_times(sp, ub, stage))
            corr = (model.rank(u, ids, rat, gid, table, when) - g) / scale
            for w in ws:
                top, pos = (g + w * corr if w < ALONE else corr).topk(cfg.eval.k2, 1)
                ranks[w].append(list_ranks(gid.gather(1, pos), top, torch.as_tensor(targets)).numpy())
    return {w: metrics_from_ranks(np.concatenate(ranks[w]), ks) for w in ws}


if __name__ == "__main__":
    torch.set_num_threads(2)
    model, cfg, _ = load_checkpoint(sys.argv[1])
    sp = make_split(load(cfg.dataset), 0)
    for stage in ("val", "test"):
        for w, m in fusion_sweep(model, cfg, sp, stage, [0, 0.5, 1, 1.5, 2, 3, ALONE]).items():
            print(stage, 'w=', w, {k: round(v, 4) for k, v in m.items()})
