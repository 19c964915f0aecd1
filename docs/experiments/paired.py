"""Paired comparison of checkpoints on the same users (docs/EXPERIMENTS.md): per-user HR@10 hits
of the served pipeline, then for each checkpoint against the first one the difference, its
paired standard error (std of the per-user differences / sqrt(users)) and the discordant users
(hit by one only). Paired, because every row ranks the same 6,040 held-out items: the
seed-to-seed spread of a row is not the noise of a difference measured on the same users.

    python -m docs.experiments.paired test BASE.pt OTHER.pt [OTHER.pt ...]

--pairs: one (BASE, OTHER) pair per seed, e.g. generator_only and GRank of seeds 0, 1, 2;
prints each pair's difference on validation and test, then the mean difference over the pairs
with two standard errors: from the spread of the per-seed differences (what a new seed would
show) and from the per-user differences (the held-out users' noise alone, on either split).

    python -m docs.experiments.paired --pairs BASE_s0.pt OTHER_s0.pt BASE_s1.pt OTHER_s1.pt ...

Several recipes at once: --label NAME starts a group of pairs (its checkpoints follow it, up to
the next option); --plot PNG draws every seed's difference (with its paired standard error) and
each group's mean, validation and test, and writes the numbers next to it (PNG with .json).

    python -m docs.experiments.paired --pairs --plot seeds.png --label A B0 A0 B1 A1 --label C B0 C0 ...
"""
import argparse
import json
from functools import lru_cache
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from grank.checkpoint import load_checkpoint
from grank.data import load, split as make_split
from grank.evaluate import served_ranks

STAGES = ("val", "test")


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


def seed_pairs(paths, label="", stages=STAGES, split_cls=None):
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
    matplotlib.use("Agg")  # a file is drawn, whatever display the machine has
    fig, axes = plt.subplots(1, 2, figsize=(10, 1.6 + 0.9 * len(groups)), sharey=True)
    for ax, stage in zip(axes, STAGES):
        for y, (label, res) in enumerate(groups.items()):
            d = np.array(res[stage])
            jitter = np.linspace(-0.25, 0.25, len(d)) if len(d) > 1 else np.zeros(1)
            ax.errorbar(d[:, 0], y + jitter, xerr=d[:, 1], fmt="o", ms=4, color="tab:blue", alpha=0.7,
                        label="one seed (paired s.e.)" if y == 0 else None)
            ax.plot([d[:, 0].mean()] * 2, [y - 0.35, y + 0.35], color="tab:red", lw=2.5,
                    label="mean over seeds" if y == 0 else None)
        ax.axvline(0, color="k", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(5))
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


def check_pairs(parser, paths, what="checkpoints"):
    """``parser.error`` unless ``paths`` are BASE OTHER pairs; called before any evaluation,
    which takes minutes per checkpoint."""
    if len(paths) < 2 or len(paths) % 2:
        parser.error(f"{what}: give BASE OTHER checkpoints, two per seed; got {len(paths)}")


def parse_seed_pairs(name: str, doc: str, help: str, argv=None) -> list[str]:
    """The command line of an experiment that takes BASE OTHER checkpoints, two per seed
    (``python -m docs.experiments.NAME``): the checkpoints, checked before any evaluation."""
    p = argparse.ArgumentParser(prog=f"python -m docs.experiments.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=help)
    paths = p.parse_args(argv).checkpoints
    check_pairs(p, paths)
    torch.set_num_threads(2)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m docs.experiments.paired", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="without --pairs: STAGE (val or test), BASE, then the checkpoints compared to it; "
                        "with --pairs: BASE OTHER checkpoints, two per seed (the group without a label)")
    p.add_argument("--pairs", action="store_true",
                   help="compare (BASE, OTHER) pairs, one per seed, on validation and test")
    p.add_argument("--label", nargs="+", action="append", default=[], metavar=("NAME", "CHECKPOINT"),
                   help="with --pairs: a group of BASE OTHER checkpoints, two per seed, named NAME "
                        "(repeatable)")
    p.add_argument("--plot", metavar="PNG",
                   help="with --pairs: draw every seed's difference and each group's mean into PNG, "
                        "their numbers into PNG with the suffix .json")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    if not a.pairs:
        if a.label or a.plot:
            p.error("--label and --plot: only with --pairs")
        if len(a.args) < 3 or a.args[0] not in STAGES:
            p.error("give STAGE (val or test), BASE and at least one checkpoint to compare to it")
        against_base(a.args[0], a.args[1:])
        return
    groups = {"": a.args}
    for label, *paths in a.label:
        if label in groups:
            p.error(f"--label {label!r}: given twice")
        groups[label] = paths
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        p.error("--pairs: give BASE OTHER checkpoints, two per seed")
    for label, paths in groups.items():  # before any evaluation, which takes minutes per group
        check_pairs(p, paths, f"--pairs{f' (group {label!r})' if label else ''}")
    res = {label: seed_pairs(paths, f"[{label}] " if label else "") for label, paths in groups.items()}
    if a.plot:
        plot(res, a.plot)


if __name__ == "__main__":
    main()
