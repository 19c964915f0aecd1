"""Proxy for train.ranker_slots (docs/EXPERIMENTS.md): train ONLY the Ranker of a trained
checkpoint on (Generator and item table frozen, L_CA alone) with ranker_slots = K; prints
validation HR@10 / NDCG@10 after each epoch and saves the state dict.

    python docs/experiments/ranker_finetune.py artifacts/default/grank/best.pt 8 3 /tmp/ft8.pt
"""
import sys, time, torch, numpy as np
sys.path.insert(0, '.')
from grank.config import apply_overrides
from grank.data import load, split as make_split
from grank.train import load_checkpoint, make_batch, losses
from grank.batches import epoch_samples
from grank.evaluate import evaluate_model
torch.set_num_threads(2)
ckpt, K, epochs, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model, cfg, _ = load_checkpoint(ckpt)
cfg = apply_overrides(cfg, {"train.ranker_slots": K, "train.loss_weights": (0.0, 0.0, 1.0)})
data = load(cfg.dataset); sp = make_split(data, 0)
for n, p in model.named_parameters():
    p.requires_grad = n.startswith("ranker.")
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01)
torch.manual_seed(1); rng = np.random.default_rng(1)
v = evaluate_model(model, sp, "val", cfg.eval, progress=False)
print("before", round(v["HR@10"], 4), round(v["NDCG@10"], 4), flush=True)
for ep in range(epochs):
    model.train(); model.generator.eval()  # generator frozen and deterministic
    u, e = epoch_samples(sp, cfg.model.max_history, rng); t0 = time.time(); tot = 0
    for s in range(0, len(u), 128):
        b = make_batch(data, u[s:s+128], e[s:s+128], cfg)
        ls = losses(model, b, cfg)
        opt.zero_grad(); ls["ca"].backward(); opt.step(); tot += float(ls["ca"].detach())
    v = evaluate_model(model, sp, "val", cfg.eval, progress=False)
    print(ep + 1, "ca", round(tot / (len(u) / 128), 4), "val", round(v["HR@10"], 4), round(v["NDCG@10"], 4), "gen", round(v["gen_HR@10"], 4), f"{time.time()-t0:.0f}s", flush=True)
torch.save(model.state_dict(), out)
