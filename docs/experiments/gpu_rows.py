r"""Train several results-row recipes side by side on one GPU, evaluate each on the test split,
and append one summary line per run to a JSON-lines file (the format of
docs/experiments_gpu_runs.jsonl). The script behind the GPU tables of docs/EXPERIMENTS.md.

    python -m docs.experiments.gpu_rows --out $OUT/runs.jsonl --work /tmp/runs --run '2026-11-23 b' \
        'grank_rh1000_s0 grank 0 model.ranker_history=1000' 'genonly_s0 generator_only 0'

Each spec is "NAME VARIANT SEED [KEY=VALUE ...]" (the KEY=VALUE pairs become --set overrides on
top of the preset at --epochs epochs). Runs start together (a GPU has room for about ten of
these small models); each is evaluated on the CPU as soon as it finishes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m docs.experiments.gpu_rows", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="+", metavar="SPEC", help='one run: "NAME VARIANT SEED [KEY=VALUE ...]"')
    p.add_argument("--out", required=True, help="JSON-lines file to append summaries to")
    p.add_argument("--work", default="artifacts/gpu-rows",
                   help="folder of the runs' checkpoint folders, one per NAME (default %(default)s)")
    p.add_argument("--epochs", type=int, default=24, help="train.epochs of every run (default %(default)s)")
    p.add_argument("--preset", default="default", help="config preset of every run (default %(default)s)")
    p.add_argument("--device", default="cuda", help="torch device the runs train on (default %(default)s)")
    p.add_argument("--run", default=None,
                   help='label written as "run" in every summary line, to tell apart the runs '
                        'appended to one file (e.g. "2026-11-23 b": a date and a letter)')
    a = p.parse_args(argv)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = {}
    for spec in a.specs:
        name, variant, seed, *sets = spec.split()
        out = Path(a.work) / name
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "grank", "train", "--preset", a.preset, "--variant", variant,
               "--seed", seed, "--set", f"train.epochs={a.epochs}", "--out", str(out),
               "--threads", "1", "--device", a.device, "--no-resume"]
        for s in sets:
            cmd += ["--set", s]
        log = open(out / "train.log", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), out, spec)
        print("started", " ".join(cmd), flush=True)
    t0 = time.time()
    evals = {}  # name -> (evaluate process, out, spec): run side by side on the CPU cores
    while procs or evals:
        for name, (proc, out, spec) in list(procs.items()):
            if proc.poll() is None:
                continue
            del procs[name]
            if proc.returncode != 0:
                print(f"{name}: train failed (rc {proc.returncode}); tail of its log:", flush=True)
                print((out / "train.log").read_text()[-2000:], flush=True)
                continue
            evals[name] = (subprocess.Popen(
                [sys.executable, "-m", "grank", "evaluate", str(out / "best.pt")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=dict(env, OMP_NUM_THREADS="2")), out, spec)
        for name, (ev, out, spec) in list(evals.items()):
            if ev.poll() is None:
                continue
            del evals[name]
            stdout, stderr = ev.communicate()
            if ev.returncode != 0:
                print(f"{name}: evaluate failed:\n{stderr[-2000:]}", flush=True)
                continue
            test = json.loads(stdout)
            tr = json.loads((out / "train.json").read_text())
            row = {"run": a.run} if a.run is not None else {}
            row.update({"name": name, "spec": spec, "train_s": round(tr["train_seconds"], 1),
                        "best": tr["best"],
                        "val": [h["val"]["HR@10"] for h in tr["history"] if "val" in h],
                        "test": {k: v for k, v in test.items()
                                 if k in ("HR@10", "NDCG@10", "HR@50", "gen_HR@10", "gen_NDCG@10")
                                 or k.startswith("candidate_recall")}})
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{time.time() - t0:6.0f}s", json.dumps(row), flush=True)
        time.sleep(2)


if __name__ == "__main__":
    main()
