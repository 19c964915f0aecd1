"""The training task: batches, the three contrastive losses, the loop and its checkpoints.

Losses (all InfoNCE with temperature tau, weights ``train.loss_weights``):
- L_NTP: U tokens (one per supervised prefix of the window; the newest one is exactly the served
  user vector) against the next item. ``train.ntp_softmax``: the exact softmax over the WHOLE
  catalogue ([B, S, N] logits), or a sampled one (the batch's targets + ``ntp_negatives`` drawn
  items, logQ-corrected, accidental hits masked: ``grank.sampled_softmax``) whose cost does not
  grow with N; "auto" takes the exact one up to ``AUTO_SAMPLED_ABOVE`` items, a size measured in
  docs/LARGE_CATALOGUES.md (ML-1M's 3,706 items: exact). In sampled mode the Ranker's hard
  negatives come from the sampled candidates' scores instead of the [n, N] logits.
- L_SA-info: training-only auxiliary tokens, one for the target and one for each of
  ``aux_negatives`` in-batch negatives (other users' targets), attend to the history and to
  themselves; score = <token output, item vector> / tau, the target must win.
- L_CA-info: the Ranker's own score of the target against hard negatives sampled from the
  Generator's own current top ``ranker_hard_pool`` (what it sees when served) plus uniform random
  items, at the newest slot; it trains the Ranker alone (the shared table is read, never updated).
After the last epoch, ``train.fit_blend`` fits the Ranker's served mix on validation
(``grank.blend``).
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .batches import epoch_samples, windows
from .blend import applies as blend_applies, fit_blend
from .checkpoint import FORMAT_VERSION, build_model, load_checkpoint, read, save
from .config import Config, effective_dict
from .data import Interactions, Split, split as make_split
from .distributed import SINGLE, World, barrier, local_batch_size, local_rows, merge_sums, rank_seed, wrap
from .evaluate import evaluate_model
from .generator import MASKED
from .model import GRank


def make_batch(data: Interactions, users: np.ndarray, ends: np.ndarray, cfg: Config) -> dict:
    """Arrays for one training step. hist_*: [B, R]; ntp_targets: [B, L] (0 = no loss at that
    slot); target: [B] = seq[end]; user_feats: [B, F]."""
    m = cfg.model
    ids, rat, times = windows(data, users, ends, m.ranker_history, times=True)
    target = data.items[data.offsets[users] + ends]
    L = m.max_history
    nxt = np.concatenate([ids[:, -L + 1:], target[:, None]], axis=1) if L > 1 else target[:, None]
    ntp = np.where(ids[:, -L:] != 0, nxt, 0)  # a slot predicts the next item only if it is real
    t = torch.as_tensor
    return dict(hist_ids=t(ids), hist_ratings=t(rat), target=t(target.astype(np.int64)),
                ntp_targets=t(ntp.astype(np.int64)), user_feats=t(data.user_feats[users]),
                hist_times=t(times))


def losses(model: GRank, batch: dict, cfg: Config) -> dict:
    """Forward pass of the training task; returns the individual losses and their total."""
    from .sampled_softmax import hard_pool, resolve, sampled_ntp
    m, tc = cfg.model, cfg.train
    L, tau = m.max_history, m.tau
    g = model.generator
    table = model.item_vectors()
    hist_ids, hist_rat, target = batch["hist_ids"], batch["hist_ratings"], batch["target"]
    B = hist_ids.shape[0]
    emb, pad, pools = model.history_inputs(table, hist_ids, hist_rat)
    h = g.history_tokens(emb[:, -L:], hist_rat[:, -L:])
    # Next-item supervision at S slots per window: the newest slot (the served user vector) and
    # S-1 random others. Full softmax over the catalogue dominates the step cost on a CPU, so
    # this trades a few targets per window for ~4x fewer logits (docs/MODEL.md, "U tokens per prefix").
    S = min(tc.ntp_positions, L)
    pos = torch.cat([torch.randperm(L - 1)[:S - 1].sort().values, torch.tensor([L - 1])])
    xs, vis = [], []
    if m.query_token:
        xs.append(g.query_tokens(batch["user_feats"], pools[:, -L:][:, pos]))
        vis.append(torch.ones(L, L, dtype=torch.bool).tril()[pos][None])  # U_j sees slots 0..j
    if m.aux_tokens:
        # in-batch negatives: other windows' targets
        C = max(0, min(tc.aux_negatives, B - 1)) + 1
        neg = target[torch.randperm(B)[:C - 1]]
        cand = torch.cat([target[:, None], neg[None, :].expand(B, -1)], 1)  # [B, C]
        cand_emb = F.embedding(cand, table)
        xs.append(g.aux_tokens(cand_emb))
        vis.append(torch.ones(1, C, L, dtype=torch.bool))  # aux tokens see the whole window
    x = torch.cat(xs, 1) if xs else None
    h_out, x_out = g.run(h, pad[:, -L:], x, torch.cat(vis, 1) if vis else None)
    states = x_out[:, :S] if m.query_token else h_out[:, pos]  # [B, S, d] user vector after slot

    out = {}
    sampled = resolve(tc.ntp_softmax, model.n_items) == "sampled"
    if sampled:  # candidates: the batch's targets + drawn items, logQ-corrected (grank.sampled_softmax)
        sampler = getattr(model, "ntp_sampler", None)
        if sampler is None:
            raise ValueError("train.ntp_softmax: the sampled softmax needs the model's training counts; "
                             "build it with grank.checkpoint.build_model(cfg, data)")
        out["ntp"], ntp_cand = sampled_ntp(states, batch["ntp_targets"][:, pos], table, sampler,
                                           tc.ntp_negatives, tau)
    else:
        # Scores against the real items only (column j = dense id j+1): no padding column to mask,
        # and 1/tau folded into the [B, S, d] states instead of the [B, S, N] logits.
        logits = (states / tau) @ table[1:].T  # [B, S, N]
        ntp_t = batch["ntp_targets"][:, pos] - 1  # [B, S] column of the next item, -1 = no loss
        out["ntp"] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ntp_t.reshape(-1), ignore_index=-1)
    total = tc.loss_weights[0] * out["ntp"]
    if m.aux_tokens:
        a = x_out[:, S:]
        s = (a * cand_emb).sum(-1) / tau
        s[:, 1:] = s[:, 1:].masked_fill(cand[:, 1:] == target[:, None], MASKED)
        out["sa"] = F.cross_entropy(s, torch.zeros(B, dtype=torch.long), reduction="none").mean()
        total = total + tc.loss_weights[1] * out["sa"]
    n = 0  # windows that train the Ranker
    if model.ranker is not None:
        # L_CA-info at the newest slot, whose U output is the served user vector: the Ranker
        # sees the whole long history, as when served at the time of the newest item. It reads
        # the shared item table but never updates it (every table input is detached), so the
        # Ranker cannot trade the Generator's next-item quality for its own loss.
        keep = batch["ntp_targets"][:, -1] > 0  # [B]; 0 = a padding slot, no target
        tgt = batch["ntp_targets"][keep, -1]   # [n]
        v_ids, v_rat = hist_ids[keep], hist_rat[keep]                     # [n, R]
        v_emb, v_time = emb[keep].detach(), batch["hist_times"][keep, -1]  # [n, R, d], [n]
        n = len(tgt)
    if n:
        with torch.no_grad():
            # hard negatives: the Generator's own current top list, as it would be served
            if sampled:  # ...among the sampled candidates: O(n x candidates), never [n, N]
                pool = hard_pool(states[keep, -1] / tau, ntp_cand, table, v_ids, tgt, tc.ranker_hard_pool)
            else:
                gl = F.pad(logits[keep, -1].detach(), (1, 0), value=MASKED)  # [n, N+1] by dense id
                gl.scatter_(1, v_ids, MASKED)             # seen items are filtered when served
                gl.scatter_(1, tgt[:, None], MASKED)
                pool = gl.topk(min(tc.ranker_hard_pool, gl.shape[1] - 2), dim=1).indices
            pick = torch.rand(pool.shape).argsort(1)[:, :tc.ranker_hard]
            hard = pool.gather(1, pick)
            rand = torch.randint(1, table.shape[0], (n, tc.ranker_random))
            cand_r = torch.cat([tgt[:, None], hard, rand], 1)
        s = model.ranker.own_score(F.embedding(cand_r, table.detach()), v_emb, v_rat, v_ids == 0,
                                   model.candidate_popularity(v_time, cand_r))
        s[:, 1:] = s[:, 1:].masked_fill(cand_r[:, 1:] == tgt[:, None], MASKED)
        out["ca"] = F.cross_entropy(s, torch.zeros(n, dtype=torch.long))
        total = total + tc.loss_weights[2] * out["ca"]
    out["total"] = total
    return out


def train_step(model: GRank, opt, batch: dict, cfg: Config, task=None, weight: float = 1.0) -> dict:
    """One optimisation step (forward, backward, clip, update); returns the losses.
    ``task``: in a multi-process run, the DDP-wrapped training loss of ``model``
    (``grank.distributed.wrap``), whose backward averages the gradients over the processes, so
    every process clips and applies the same update; ``weight`` scales this process's loss
    (``grank.distributed.local_rows``)."""
    ls = losses(model, batch, cfg) if task is None else task(batch)
    opt.zero_grad(set_to_none=True)
    (ls["total"] if weight == 1 else ls["total"] * weight).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    opt.step()
    return ls


def _lr_lambda(warmup: int, total: int):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))  # cosine down to 10%
    return f


def host_description(device: str = "cpu") -> str:
    """'x86_64, 2 cores, torch 2.13.0' (+ the GPU's name on a CUDA device): where a run ran."""
    gpu = f", {torch.cuda.get_device_name()}" if str(device).startswith("cuda") else ""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}"


def train(cfg: Config, data: Interactions, out_dir: str | Path, resume: bool = True,
          progress: bool = True, threads: int = 0, device: str = "cpu", world: World = SINGLE) -> dict | None:
    """Train ``cfg`` on ``data``; writes last.pt (every epoch, resumable) and best.pt (best
    validation HR@10) under ``out_dir``. Returns the summary also saved as train.json.

    ``device`` ("cpu", "cuda", ...) is a run setting like ``threads``: every tensor of the run
    (model, batches, sampling) is created there through torch's default-device context, so the
    training code has no device plumbing. Checkpoints load on any device. GPU runs are not
    bit-identical to CPU runs (other kernels, and the CUDA generator draws the negatives).

    ``world``: this process's place in a multi-process (DDP) run whose process group has
    started, ``device`` then being this process's own (``grank.distributed.choose`` and
    ``start``; the module doc says how the run is split). Only rank 0 evaluates, writes and
    returns the summary; the other ranks return None."""
    with torch.device(device):
        return _train(cfg, data, out_dir, resume, progress, threads, device, world)


def _train(cfg, data, out_dir, resume, progress, threads, device, world=SINGLE) -> dict | None:
    local_batch_size(cfg.train.batch_size, world)  # refuses a global batch N processes cannot split
    progress = progress and world.main
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:  # a run setting, not part of the model config: results do not depend on it
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sp: Split = make_split(data, cfg.train.max_users)
    model = build_model(cfg, data)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    n_samples = len(epoch_samples(sp, cfg.model.max_history, np.random.default_rng(0))[0])
    steps_per_epoch = math.ceil(n_samples / cfg.train.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(cfg.train.warmup_steps, steps_per_epoch * cfg.train.epochs))
    state = dict(epoch=0, history=[], best=None, train_seconds=0.0, sequences=0)
    last = out / "last.pt"
    trained_config = cfg.to_dict()
    if resume and last.exists():
        ck = read(last, fix="start over with --no-resume (or resume=False), or train into a new --out")
        if effective_dict(Config.from_dict(ck["config"])) != effective_dict(cfg):
            raise ValueError(f"{last} was trained with another config; use a new --out or --no-resume")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        rng.bit_generator.state = ck["numpy_rng"]
        state = ck["state"]
        trained_config = ck["config"]  # may differ only in settings this variant does not use
        if world.main:
            print(f"resumed {last} at epoch {state['epoch']}")
    task = wrap(model, cfg, losses, world, device) if world.size > 1 else None

    def checkpoint(path: Path):
        save(path, dict(config=trained_config, model=model.state_dict(), optimizer=opt.state_dict(),
                        scheduler=sched.state_dict(), torch_rng=torch.get_rng_state(),
                        numpy_rng=rng.bit_generator.state, state=state), data)

    for epoch in range(state["epoch"], cfg.train.epochs):
        model.train()
        users, ends = epoch_samples(sp, cfg.model.max_history, rng)  # the same on every rank
        if world.size > 1:  # each rank its own negatives and dropout (grank.distributed)
            torch.manual_seed(rank_seed(cfg.seed, epoch, world.rank))
        t0 = time.time()
        sums, n, seen = {}, 0, 0  # n: this rank's windows; seen: the global batches' windows
        bar = tqdm(range(0, len(users), cfg.train.batch_size), disable=not progress,
                   desc=f"{cfg.variant} epoch {epoch + 1}/{cfg.train.epochs}")
        for s in bar:
            gu, ge = users[s:s + cfg.train.batch_size], ends[s:s + cfg.train.batch_size]
            part, weight = local_rows(len(gu), world)  # one process: all of it, weight 1
            batch = make_batch(data, gu[part], ge[part], cfg)
            ls = train_step(model, opt, batch, cfg, task, weight)
            sched.step()
            nb = len(batch["target"]) if weight else 0  # a stand-in row (weight 0) is not logged
            n += nb
            seen += len(gu)
            for k, v in ls.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * nb
            bar.set_postfix(loss=f"{sums['total'] / max(n, 1):.3f}", seq_s=f"{seen / (time.time() - t0):.0f}")
        dt = time.time() - t0
        sums, n = merge_sums(sums, n, world)  # every rank's windows: the global batches' mean
        state["train_seconds"] += dt
        state["sequences"] += n
        rec = {"epoch": epoch + 1, "seconds": round(dt, 1), "sequences_per_s": round(n / dt, 1),
               **{f"loss_{k}": round(v / n, 5) for k, v in sums.items()}}
        due = (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs
        if due and world.main:  # one rank validates and writes; the others wait at the barrier below
            val = evaluate_model(model, sp, "val", cfg.eval, progress=progress)
            rec["val"] = {k: round(v, 5) for k, v in val.items() if "@" in k}
            if state["best"] is None or val["HR@10"] > state["best"]["HR@10"]:
                state["best"] = {"epoch": epoch + 1, "HR@10": val["HR@10"], "NDCG@10": val["NDCG@10"]}
                state["epoch"] = epoch + 1
                checkpoint(out / "best.pt")
        state["history"].append(rec)
        state["epoch"] = epoch + 1
        if world.main:
            checkpoint(last)
            print(json.dumps(rec))
        barrier(world)
    if not world.main:  # the blend fit and the summary are rank 0's alone
        return None
    blend = fit_saved_blend(out / "best.pt", data, progress) if blend_applies(cfg) else None
    summary = dict(format_version=FORMAT_VERSION, variant=cfg.variant, config=trained_config, machine=host_description(device),
                   train_seconds=round(state["train_seconds"], 1), sequences=state["sequences"],
                   sequences_per_s=round(state["sequences"] / max(state["train_seconds"], 1e-9), 1),
                   best=state["best"], history=state["history"],
                   parameters=sum(p.numel() for p in model.parameters()),
                   threads=torch.get_num_threads(), world_size=world.size, backend=world.backend,
                   device=device if world.size == 1 else torch.device(device).type)  # threads: per process
    if blend is not None:
        summary["blend"] = blend
    (out / "train.json").write_text(json.dumps(summary, indent=1))
    return summary


def fit_saved_blend(best: str | Path, data: Interactions, progress: bool = True) -> dict:
    """train.fit_blend: fit the served blend of the checkpoint ``best`` (the kept epoch) on
    validation (grank.blend) and save it there, once: a checkpoint that has one keeps it. Returns
    the fit's summary, with validation HR@10 / NDCG@10 before (the kept epoch's) and after (in-sample
    for the few blend weights; test never enters)."""
    best = Path(best)
    ck = read(best)
    if "blend" not in ck:
        model, cfg, _ = load_checkpoint(best, data)
        sp = make_split(data, cfg.train.max_users)
        info = fit_blend(model, sp, cfg, progress)
        val = evaluate_model(model, sp, "val", cfg.eval, progress=progress)
        info["val_before"] = {k: round(ck["state"]["best"][k], 5) for k in ("HR@10", "NDCG@10")}
        info["val_after"] = {k: round(val[k], 5) for k in ("HR@10", "NDCG@10")}
        ck["model"], ck["blend"] = {k: v.cpu() for k, v in model.state_dict().items()}, info
        save(best, ck, data)
    print(json.dumps({"blend": ck["blend"]}))
    return ck["blend"]


def measure_speed(cfg: Config, data: Interactions, steps: int = 30, warmup: int = 3,
                  threads: int = 0) -> dict:
    """Time ``steps`` real training steps (after ``warmup``) and project the epoch and run time
    of ``cfg`` on this machine. Validation passes are not included in the projection."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    sp = make_split(data, cfg.train.max_users)
    model = build_model(cfg, data).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    users, ends = epoch_samples(sp, cfg.model.max_history, np.random.default_rng(cfg.seed))
    bs = cfg.train.batch_size
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.time()
        j = (i * bs) % max(1, len(users) - bs)
        train_step(model, opt, make_batch(data, users[j:j + bs], ends[j:j + bs], cfg), cfg)
    step_s = (time.time() - t0) / steps
    steps_per_epoch = math.ceil(len(users) / bs)
    return {"variant": cfg.variant, "threads": torch.get_num_threads(), "step_seconds": round(step_s, 3),
            "sequences_per_s": round(bs / step_s, 1), "steps_per_epoch": steps_per_epoch,
            "projected_epoch_minutes": round(step_s * steps_per_epoch / 60, 2),
            "projected_run_minutes": round(step_s * steps_per_epoch * cfg.train.epochs / 60, 1),
            "machine": host_description()}
