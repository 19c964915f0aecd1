"""The served blend of the Ranker, fitted on held-out data after training.

Served score of candidate c (``grank.ranker``):

    <u, v_c> / tau  +  w_r * r_c  +  sum_j w_j * log1p(count_j(c))

r_c is the Ranker's own score, count_j the candidate's training ratings in the last 7 days, the
last 30 days and all days before the request's day (``grank.popularity``). Training never sets
the w: L_CA-info trains r alone, and until the fit the served mix is ``model.ranker_fusion`` x r
with no popularity term.

Why fit them afterwards, and on held-out data: on training targets the Generator is in-sample
(HR@10 0.47 on each user's last training item vs 0.30 held out), so anything learnt on training
lists learns that the Generator needs little help. The jointly trained Ranker's served slope on
log1p(30-day count) is 0.05, where a blend fitted on validation puts about 0.3 (and adding
0.2 x that count to its served score lifts test HR@10 by 0.005; docs/EXPERIMENTS.md, "Where
validation and test part ways, and a served blend fitted on held-out data"). Classic stacking: the weights that combine a model with signals
it lacks are fitted where the model is not over-confident.

How: for every validation user whose held-out item is among the k1 MIPS candidates, the
features [gen, r, log1p counts] of the k1 candidates; minimise the softmax cross-entropy of the
held-out item over its list. The score is linear in the weights, so the loss is convex and
L-BFGS reaches its minimum. The Generator's weight is fitted too (it sets the softmax
temperature) and then divided out, since the served order depends only on the ratios. A handful
of numbers from thousands of users: after the fit, validation metrics are in-sample for those
numbers only, and the test split is untouched by the fit. The fit is made once, at the trained
shape (eval.k1, model.ranker_history, recorded with it); turning train.fit_blend off later does
not undo a fit already saved in a checkpoint.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .data import Split
from .evaluate import generate, stage_batches
from .popularity import LOG_SCALE, WINDOWS


def applies(cfg: Config) -> bool:
    """whether ``cfg`` trains a model whose served blend is fitted after training"""
    return cfg.train.fit_blend and cfg.model.ranker


def weight_names(cfg: Config) -> list[str]:
    """names of the ``blend`` entries, in order"""
    pop = [f"log1p_count_{w}d" if w else "log1p_count_all" for w in WINDOWS] if cfg.model.ranker_popularity else []
    return ["ranker"] + pop


@torch.no_grad()
def features(model, split: Split, stage: str, ecfg, progress: bool = True, popularity=None):
    """Blend features of the k1 MIPS candidates of every ``split`` user whose ``stage`` item is
    among them: (x [U', k1, 2 + n_pop] float32 = [Generator score, r, log1p counts...],
    target position [U'] int64 in the candidate list, kept [U] bool: which of ``split.users``
    those U' are). A model without a Ranker (the generator_only control of
    docs/experiments/blend_control.py) gives [Generator score, log1p counts...], the counts from
    ``popularity`` (a ``RecentPopularity``)."""
    model.eval()
    ranker = model.ranker
    if ranker is None and popularity is None:
        raise ValueError("popularity: required for a model without a Ranker (a RecentPopularity)")
    xs, ys, kept = [], [], []
    for ids, rat, feats, targets, excl, when in stage_batches(
            split, stage, model.cfg.ranker_history, ecfg.batch_size, progress=progress,
            desc=f"blend features ({stage})"):
        table, u, gen, cand = generate(model, ids, rat, feats, ecfg.k1, excl)
        if ranker is None:
            parts = [gen[..., None], popularity(when, cand) * LOG_SCALE]
        else:
            pop = model.candidate_popularity(when, cand)
            r = ranker.own_score(F.embedding(cand, table), F.embedding(ids, table), rat, ids == 0, pop)
            parts = [gen[..., None], r[..., None]] + ([pop * LOG_SCALE] if pop is not None else [])
        # a target the exclusion hid (seen before; in the list only because k1 >= the unseen
        # items) has a -inf Generator score: no fit can rank it
        hit = (cand == targets[:, None]) & torch.isfinite(gen)
        keep = hit.any(1)
        xs.append(torch.cat(parts, -1)[keep])
        ys.append(hit[keep].to(torch.int64).argmax(1))
        kept.append(keep)
    return torch.cat(xs), torch.cat(ys), torch.cat(kept)


def fit(x: torch.Tensor, y: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, float, float, float]:
    """x [U, C, F] features (column 0 the Generator score), y [U] target positions, start [F - 1]
    the current weights of columns 1.. (the Generator's is 1). Returns (weights [F - 1] with the
    Generator's divided out, the Generator's fitted weight (the softmax temperature), loss at the
    start, loss at the fit). Candidates whose Generator score is -inf (MIPS filled the list with
    excluded items: a user with fewer unseen items than k1) take no part."""
    valid = torch.isfinite(x[..., 0])  # [U, C]
    x = x.masked_fill(~valid[..., None], 0.0)  # 0 x -inf would make every gradient NaN
    w = torch.cat([torch.ones(1, device=x.device), start.to(x.device, torch.float32)]).requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def loss():
        return F.cross_entropy((x @ w).masked_fill(~valid, float("-inf")), y)

    def closure():
        opt.zero_grad()
        value = loss()
        value.backward()
        return value
    with torch.no_grad():
        before = float(loss())
    opt.step(closure)
    w = w.detach()
    with torch.no_grad():
        after = float(loss())
    if not (np.isfinite(after) and float(w[0]) > 0):
        # a non-positive Generator weight means the fit would rank against the Generator: the
        # features do not describe the lists it serves, and dividing it out would flip the order
        raise RuntimeError(f"blend fit failed: loss {after}, Generator weight {float(w[0])} (must be > 0)")
    return w[1:] / w[0], float(w[0]), before, after


def fit_blend(model, split: Split, cfg: Config, progress: bool = True) -> dict:
    """Fit ``model.ranker.blend`` on the validation split (see module doc) and set it. Returns a
    summary: the weights by name, the users the fit saw, the Generator's fitted weight (the
    weights are divided by it), the cross-entropy at the start and at the fit, seconds."""
    if not cfg.model.ranker:
        raise ValueError(f"blend fit: needs a Ranker (variant {cfg.variant!r} has model.ranker=false)")
    t0 = time.time()
    x, y, _ = features(model, split, "val", cfg.eval, progress)
    if len(y) == 0:
        raise ValueError("blend fit: no validation user has the held-out item among the k1 candidates")
    # the loss at the start is that of the current served mix (Generator weight 1, then the blend)
    try:
        w, scale, before, after = fit(x, y, model.ranker.blend.detach())
    except RuntimeError as e:  # too few validation hits to fit: keep serving the trained mix
        w, failed = model.ranker.blend.detach().clone(), str(e)
        print(f"warning: {e}; the served blend stays the trained mix", file=sys.stderr)
    else:
        failed = None
        with torch.no_grad():
            model.ranker.blend.copy_(w)
    info = {"weights": {n: round(float(v), 4) for n, v in zip(weight_names(cfg), w)},
            "fitted_on": "val", "users": int(len(y)), "k1": cfg.eval.k1,
            "ranker_history": cfg.model.ranker_history, "seconds": round(time.time() - t0, 1)}
    if failed:
        return {**info, "failed": failed}
    return {**info, "generator_weight": round(scale, 4), "loss_before": round(before, 4),
            "loss_after": round(after, 4)}
