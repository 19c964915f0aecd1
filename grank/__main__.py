"""Command line: ``python -m grank {data,train,evaluate,results,demo,add-items} --help``; ``torchrun
--nproc-per-node N -m grank train ...`` trains on N processes (grank.distributed)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from .config import PRESETS, VARIANTS, parse_override
from .data import BUILTIN


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m grank", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, variant=True):
        p.add_argument("--preset", default="default", choices=sorted(PRESETS))
        if variant:
            p.add_argument("--variant", default="grank", choices=sorted(VARIANTS),
                           help="results row / ablation to train")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--dataset", default=None,
                       help=f"built-in ({', '.join(BUILTIN)}) or built with `python -m grank data "
                            "--name` (default: the preset's, ml-1m)")
        p.add_argument("--set", action="append", type=parse_override, metavar="KEY=VALUE",
                       help="config override, repeatable (e.g. --set train.epochs=3)")

    p = sub.add_parser("data", help="build a data set into the cache (a built-in one, or one of "
                       "your own files with --interactions) and print its summary")
    p.add_argument("--dataset", default="ml-1m", help=f"a built-in data set: {', '.join(BUILTIN)}")
    from .reader import add_arguments
    add_arguments(p)
    p = sub.add_parser("train", help="train one model; resumes from <out>/last.pt")
    common(p)
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: default). Two 1-thread runs side by side use a 2-core "
                        "machine better than one 2-thread run")
    p.add_argument("--device", default="cpu",
                   help="torch device for the run, e.g. cuda (default cpu; results tables are CPU runs); "
                        "under torchrun each process takes cuda:LOCAL_RANK")
    p.add_argument("--backend", default="auto", choices=("auto", "gloo", "nccl"),
                   help="collectives of a torchrun run (grank.distributed): auto = nccl on cuda, gloo on cpu")
    p = sub.add_parser("speed", help="time a few training steps and project epoch/run time")
    common(p)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=0)
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the test (or val) split")
    p.add_argument("checkpoint")
    p.add_argument("--stage", default="test", choices=["val", "test"])
    p.add_argument("--unfiltered", action="store_true", help="do not exclude history items")
    p.add_argument("--served", action="store_true",
                   help="at the shape the model repository serves (the config's serve.k1 / serve.history) "
                        "instead of the trained eval.k1 / model.ranker_history")
    p.add_argument("--set", action="append", type=parse_override, metavar="KEY=VALUE",
                   help="serve the checkpoint with another eval.k1, eval.k2, eval.ks or a shorter "
                        "model.ranker_history (repeatable)")
    for name in ("results", "demo"):
        p = sub.add_parser(name, help="train/evaluate every results row; write docs/results.json "
                           "and docs/RESULTS.md" if name == "results" else
                           "train the demo preset, evaluate it and print the table")
        common(p, variant=False)
        p.add_argument("--artifacts", default="artifacts")
        p.add_argument("--rows", default=None, help="comma-separated subset of rows")
        p.add_argument("--retrain", action="store_true",
                       help="train every row again from scratch, even where a finished run exists")
        p.add_argument("--note", default="", help="a sentence printed under the protocol "
                       "(e.g. how the rows were run)")
        p.add_argument("--docs", default="docs" if name == "results" else "artifacts/demo-docs")
    p = sub.add_parser("add-items", help="append new items (content features, no interactions yet) to a "
                       "trained checkpoint's catalogue, for serve.deploy")
    from .new_items import add_arguments as add_items_arguments
    add_items_arguments(p)
    a = ap.parse_args(argv)
    if a.cmd == "add-items":
        from .new_items import run as add_items
        return add_items(a)
    overrides = {**({"dataset": a.dataset} if getattr(a, "dataset", None) and a.cmd != "data" else {}),
                 **dict(getattr(a, "set", None) or ())}

    if a.cmd == "data":
        if a.interactions:
            from .reader import run as build_from_files
            return build_from_files(a)
        from .data import load
        t = time.time()
        d = load(a.dataset)
        print(json.dumps({"dataset": a.dataset, "users": d.n_users, "items": d.n_items,
                          "interactions": int(len(d.items)), "seconds": round(time.time() - t, 2)}))
        return 0
    if a.cmd == "train":
        from . import distributed
        from .data import configure
        from .train import train
        # under torchrun, one of N processes (grank.distributed); alone, world.size is 1
        world, device = distributed.choose(distributed.from_env(), a.device, a.backend)
        distributed.start(world, device)
        try:
            with distributed.main_first(world):  # one process builds the data cache
                cfg, data = configure(a.preset, a.variant, a.seed, overrides)
            s = train(cfg, data, a.out, resume=not a.no_resume, threads=a.threads, device=device, world=world)
        finally:
            distributed.stop(world)
        if world.main:
            print(json.dumps({k: s[k] for k in ("variant", "train_seconds", "sequences_per_s", "best")}))
        return 0
    if a.cmd == "speed":
        from .data import configure
        from .train import measure_speed
        cfg, data = configure(a.preset, a.variant, a.seed, overrides)
        print(json.dumps(measure_speed(cfg, data, a.steps, threads=a.threads)))
        return 0
    if a.cmd == "evaluate":
        from .data import load, split
        from .evaluate import evaluate_model
        from .checkpoint import load_checkpoint
        model, cfg, _ = load_checkpoint(a.checkpoint, serving=dict(a.set or ()), served=a.served)
        res = evaluate_model(model, split(load(cfg.dataset)), a.stage, cfg.eval, filtered=not a.unfiltered)
        print(json.dumps(res, indent=1))
        return 0
    from .report import ROWS, markdown_one, results
    rows = tuple(a.rows.split(",")) if a.rows else (ROWS if a.cmd == "results" else ("grank", "popularity"))
    cmd = "python -m grank " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    res = results(a.preset, a.seed, a.artifacts, rows, overrides, a.retrain, a.docs, cmd, a.note)
    print(markdown_one(res))
    return 0


if __name__ == "__main__":
    from .cli import run
    run(main)
