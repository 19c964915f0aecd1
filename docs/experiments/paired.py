"""Paired comparison of checkpoints on the same users (docs/EXPERIMENTS.md): per-user HR@10 hits
of the served pipeline, then for each checkpoint against the first one the difference, its
paired standard error (std of the per-user differences / sqrt(users)) and the discordant users
(hit by one only). Paired, because every row ranks the same 6,040 held-out items: the
seed-to-seed spread of a row is not the noise of a difference measured on the same users.

    python docs/experiments/paired.py test BASE.pt OTHER.pt [OTHER.pt ...]

``--pairs``: one (BASE, OTHER) pair per seed, e.g. generator_only and GRank of seeds 0, 1, 2;
prints each pair's difference on validation and test, then the mean difference over the pairs
with two standard errors: from the spread of the per-seed differences (what a new seed would
show) and from the per-user differences (the held-out users' noise alone, on either split).

    python docs/experiments/paired.py --pairs BASE_s0.pt OTHER_s0.pt BASE_s1.pt OTHER_s1.pt ...

Several recipes at once: ``--label NAME`` starts a group of pairs; ``--plot PNG`` draws every
seed's difference (with its paired standard error) and each group's mean, validation and test.

    python docs/experiments/paired.py --pairs --plot seeds.png --label A B0 A0 B1 A1 --label C B0 C0 ...
"""
import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, '.')
from grank.data import load, split as make_split
from grank.evaluate import served_ranks
from grank.train import load_checkpoint


@lru_cache(maxsize=None)  # a base checkpoint shared by several groups is evaluated once
def hits(path, stage, k=10, split_cls=None):
    """[users] 1.0 where the served list has the held-out item of ``stage`` in its top k.
    ``split_cls``: a ``Split`` subclass with more stages (``newest_item.py``)."""
    model, cfg, _ = load_checkpoint(path)
    split = make_split(load(cfg.dataset), 0)
    if split_cls is not None:
        split = split_cls(data=split.data, users=split.users)
    final, _ = served_ranks(model, split, stage, cfg.eval, progress=False)
    return (final < k).astype(np.float64)


def against_base(stage, paths):
    base = hits(paths[0], stage)
    print(f"{paths[0]}: {stage} HR@10 {base.mean():.4f}")
    for p in paths[1:]:
        d = hits(p, stage) - base
        print(f"{p}: {stage} HR@10 {base.mean() + d.mean():.4f}  minus base {d.mean():+.4f} +- "
              f"{d.std(ddof=1) / np.sqrt(len(d)):.4f} (paired s.e.; {int((d > 0).sum())} users hit only "
              f"here, {int((d < 0).sum())} only in base)")


def seed_pairs(paths, label="", stages=("val", "test"), split_cls=None):
    """{stage: [(per-seed difference, its paired s.e.), ...]} for (BASE, OTHER) pairs; prints them
    and their mean."""
    pairs = list(zip(paths[::2], paths[1::2]))
    out = {}
    for stage in stages:
        diffs = []
        for base, other in pairs:
            hb, ho = hits(base, stage, split_cls=split_cls), hits(other, stage, split_cls=split_cls)
            diffs.append(ho - hb)
            print(f"{label}{stage}: {other} {ho.mean():.4f} vs {base} {hb.mean():.4f}: {diffs[-1].mean():+.4f} "
                  f"+- {diffs[-1].std(ddof=1) / np.sqrt(len(hb)):.4f}", flush=True)
        means = np.array([d.mean() for d in diffs])
        users = np.stack(diffs).mean(0)  # per-user difference averaged over the seeds
        spread = means.std(ddof=1) / np.sqrt(len(means)) if len(means) > 1 else float("nan")
        print(f"{label}{stage}: mean over {len(pairs)} seeds {means.mean():+.4f}, s.e. {spread:.4f} across seeds, "
              f"{users.std(ddof=1) / np.sqrt(len(users)):.4f} across users; other ahead in "
              f"{int((means > 0).sum())} of {len(pairs)}", flush=True)
        out[stage] = [(d.mean(), d.std(ddof=1) / np.sqrt(len(d))) for d in diffs]
    return out


def plot(groups: dict, path: str):
    """groups: {label: seed_pairs(...) result} -> one panel per split, a row per group."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (matplotlib.ticker.MaxNLocator below)
    fig, axes = plt.subplots(1, 2, figsize=(10, 1.6 + 0.9 * len(groups)), sharey=True)
    for ax, stage in zip(axes, ("val", "test")):
        for y, (label, res) in enumerate(groups.items()):
            d = np.array(res[stage])
            jitter = np.linspace(-0.25, 0.25, len(d)) if len(d) > 1 else np.zeros(1)
            ax.errorbar(d[:, 0], y + jitter, xerr=d[:, 1], fmt="o", ms=4, color="tab:blue", alpha=0.7,
                        label="one seed (paired s.e.)" if y == 0 else None)
            ax.plot([d[:, 0].mean()] * 2, [y - 0.35, y + 0.35], color="tab:red", lw=2.5,
                    label="mean over seeds" if y == 0 else None)
        ax.axvline(0, color="k", lw=0.8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        ax.set_title(f"{'validation' if stage == 'val' else 'test'} split")
        ax.set_xlabel("HR@10, other minus base (same seed)")
        ax.set_yticks(range(len(groups)), list(groups))
    axes[0].invert_yaxis()  # the first group on top
    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    data = {label: {stage: [{"difference": round(float(m), 5), "paired_se": round(float(e), 5)} for m, e in res[stage]]
                    for stage in res} for label, res in groups.items()}
    Path(path).with_suffix(".json").write_text(json.dumps(data, indent=1))
    print(f"wrote {path} and its numbers, {Path(path).with_suffix('.json')}")


def parse_pairs(args):
    """argv after --pairs -> (plot path or None, {label: [checkpoint, ...]})"""
    png, groups, label = None, {}, ""
    i = 0
    while i < len(args):
        if args[i] in ("--plot", "--label") and i + 1 == len(args):
            sys.exit(f"{args[i]}: needs a value")
        if args[i] == "--plot":
            png, i = args[i + 1], i + 2
        elif args[i] == "--label":
            label, i = args[i + 1], i + 2
            if label in groups:
                sys.exit(f"--label {label!r}: given twice")
            groups[label] = []
        else:
            groups.setdefault(label, []).append(args[i])
            i += 1
    groups = {k: v for k, v in groups.items() if v}
    for label, paths in groups.items():  # before any evaluation, which takes minutes per group
        if len(paths) < 2 or len(paths) % 2:
            sys.exit(f"--pairs{f' (group {label!r})' if label else ''}: give BASE OTHER checkpoints, "
                     f"two per seed; got {len(paths)}")
    return png, groups


if __name__ == "__main__":
    torch.set_num_threads(2)
    if len(sys.argv) > 1 and sys.argv[1] == "--pairs":
        png, groups = parse_pairs(sys.argv[2:])
        if not groups:
            sys.exit(__doc__)
        res = {label: seed_pairs(paths, f"[{label}] " if label else "") for label, paths in groups.items()}
        if png:
            plot(res, png)
    elif len(sys.argv) >= 4 and sys.argv[1] in ("val", "test"):
        against_base(sys.argv[1], sys.argv[2:])
    else:
        sys.exit(__doc__)
