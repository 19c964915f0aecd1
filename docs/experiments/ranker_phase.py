"""A Ranker phase after training (docs/EXPERIMENTS.md, "A Ranker that scores on its own"): a
fresh "fused" Ranker (model.ranker_score = "fused": scores each candidate from the long history
alone, served as Generator score + model.ranker_fusion x its score) trained on top of a trained
checkpoint whose Generator and item table stay frozen, L_CA-info alone, hard negatives from the
frozen Generator's top 500 as in joint training. Works on any checkpoint with a query token
(a generator_only one becomes a generator_ranker_no_aux-shaped model). Prints validation HR@10
after each epoch, then validation and test HR@10 / NDCG@10 for a sweep of the fusion weight, and
saves a normal checkpoint (the chosen weight in its config) that `python -m grank evaluate` and
docs/experiments/paired.py read.

    python docs/experiments/ranker_phase.py CKPT OUT.pt [EPOCHS=4] [FUSION=0.5] [SEED=1] [POPULARITY=0]

POPULARITY=1: the Ranker also sees each candidate's popularity as of the request
(model.ranker_popularity, grank/popularity.py).
"""
import sys, time
import numpy as np, torch
sys.path.insert(0, '.')
from grank.config import apply_overrides
from grank.data import load, split as make_split
from grank.train import load_checkpoint, make_batch, losses, save
from grank.batches import epoch_samples
from grank.ranker import Ranker
from grank.popularity import RecentPopularity
sys.path.insert(0, 'docs/experiments')
from correction_weight import ALONE, fusion_sweep

torch.set_num_threads(2)
src, out = sys.argv[1], sys.argv[2]
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 4
if epochs < 1:
    sys.exit("EPOCHS: must be >= 1")
fusion = float(sys.argv[4]) if len(sys.argv) > 4 else 0.5
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 1  # the Ranker's initialisation and sample order
popularity = len(sys.argv) > 6 and sys.argv[6] == "1"
model, cfg0, ck = load_checkpoint(src)
cfg = apply_overrides(cfg0, {"variant": "grank" if cfg0.model.aux_tokens else "generator_ranker_no_aux",
                             "model.ranker": True, "model.ranker_score": "fused", "model.ranker_fusion": fusion,
                             "model.ranker_popularity": popularity,
                             "train.loss_weights": (0.0, 0.0, 1.0)})
data = load(cfg.dataset); sp = make_split(data, 0)
torch.manual_seed(seed); rng = np.random.default_rng(seed)
model.cfg = cfg.model
model.ranker = Ranker(cfg.model)
model.popularity = RecentPopularity.from_data(data) if popularity else None
for n, p in model.named_parameters():
    p.requires_grad = n.startswith("ranker.")
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
WS = sorted({0, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, fusion}) + [ALONE]


def sweep(stage):
    """served HR@10 / NDCG@10 for Generator score + w x the Ranker's own score, each w"""
    return fusion_sweep(model, cfg, sp, stage, WS, ks=(10,), scale=fusion)


t_all = time.time()
for ep in range(epochs):
    model.train(); model.generator.eval()  # the Generator stays frozen and deterministic
    u, e = epoch_samples(sp, cfg.model.max_history, rng); t0 = time.time(); tot = nb = 0
    for s in range(0, len(u), cfg.train.batch_size):
        b = make_batch(data, u[s:s + cfg.train.batch_size], e[s:s + cfg.train.batch_size], cfg)
        ls = losses(model, b, cfg)
        opt.zero_grad(); ls["ca"].backward(); opt.step(); tot += float(ls["ca"].detach()); nb += 1
    v = sweep("val")
    print(f"epoch {ep + 1}: L_CA {tot / nb:.4f}, {time.time() - t0:.0f} s, val HR@10 at w = {fusion}: "
          f"{v[fusion]['HR@10']:.4f} (Generator alone {v[0]['HR@10']:.4f})", flush=True)
t = sweep("test")
for w in WS:
    print(f"w = {w}: val HR@10 {v[w]['HR@10']:.4f} NDCG@10 {v[w]['NDCG@10']:.4f} | "
          f"test HR@10 {t[w]['HR@10']:.4f} NDCG@10 {t[w]['NDCG@10']:.4f}", flush=True)
print(f"Ranker phase: {epochs} epochs, {time.time() - t_all:.0f} s")
# config, weights and data fingerprint only: the source's optimizer, RNG and training state
# describe the source run, not this one (the result is for evaluation, not for resuming)
keep = {k: ck[k] for k in ("data_fingerprint",)}
save(__import__("pathlib").Path(out), {**keep, "config": cfg.to_dict(), "model": model.state_dict(),
                                        "ranker_phase": {"from": src, "epochs": epochs, "seed": seed,
                                                         "popularity": popularity}})
