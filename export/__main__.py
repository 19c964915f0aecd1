"""python -m export {onnx,repository,configs,tensorrt}: see ``--help`` of each."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from grank.config import parse_override, served_config


def _export(checkpoint: str, out: Path, users: int, seed: int, serving: dict | None = None, shards: int = 1):
    """Export + Polygraphy parity on real users, printed; exits non-zero on a mismatch."""
    from .build import export_checkpoint
    t0 = time.time()
    from grank.cli import InputError
    try:
        ex = export_checkpoint(checkpoint, out, users, seed, serving=serving, shards=shards)
    except InputError:
        raise  # grank.cli.run prints it and exits 2
    except ValueError as e:  # e.g. more shards than the catalogue can hold
        raise SystemExit(f"error: {e}")
    for name, p in ex.paths.items():
        status = "parity OK" if not ex.problems[name] else f"{len(ex.problems[name])} PROBLEMS"
        print(f"{name:20s} {p}  ({p.stat().st_size / 2**20:.2f} MiB)  {status} on {users} real users")
        for msg in ex.problems[name][:10]:
            print("   ", msg)
    if any(ex.problems.values()):
        raise SystemExit("ONNX Runtime does not match PyTorch (see above)")
    print(f"exported and checked in {time.time() - t0:.1f} s; Polygraphy inputs/reference outputs in {out}/parity")
    return ex


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def ck(p):
        p.add_argument("--checkpoint", required=True, help="a grank checkpoint (best.pt)")
        p.add_argument("--out", default="artifacts/export", help="folder for the ONNX files")
        p.add_argument("--users", type=int, default=64, help="real users in the parity check")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--set", action="append", type=parse_override, metavar="KEY=VALUE",
                       help="serve with another eval.k1 / eval.k2 / eval.ks or a shorter "
                            "model.ranker_history than the checkpoint's (repeatable; build such a "
                            "repository into another --repository)")
        p.add_argument("--shards", type=int, default=1,
                       help="split the item table into this many MIPS models, merged exactly by the "
                            "ensemble (default 1: one MIPS model)")

    ck(sub.add_parser("onnx", help="export the three ONNX models and check them against PyTorch"))
    p = sub.add_parser("repository", help="export, check, and build a Triton model repository")
    ck(p)
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--force", action="store_true", help="overwrite config.pbtxt files that differ")
    p.add_argument("--gpus", type=int, default=0,
                   help="with --shards: pin shard s to GPU s mod GPUS (instance_group; the server needs "
                        "that many GPUs). Default 0: Triton places every model on every GPU")
    p = sub.add_parser("configs", help="regenerate the committed config.pbtxt files")
    p.add_argument("--preset", default="default")
    p.add_argument("--repository", default=None, help="default: the committed model_repository/")
    p.add_argument("--check", action="store_true", help="only report drift; exit 1 if any")
    p = sub.add_parser("tensorrt", help="build FP16 TensorRT engines and compare with ONNX Runtime (GPU)")
    p.add_argument("--onnx-dir", default="artifacts/export")
    p.add_argument("--checkpoint", required=True, help="the checkpoint the ONNX files came from")
    p.add_argument("--out", default="artifacts/tensorrt")
    a = ap.parse_args(argv)

    if a.cmd == "onnx":
        _export(a.checkpoint, Path(a.out), a.users, a.seed, dict(a.set or ()), a.shards)
    elif a.cmd == "repository":
        from .build import build_repository
        from .repository import Serving
        try:
            serving = Serving(shards=a.shards, gpus=a.gpus)
        except ValueError as e:
            raise SystemExit(f"error: --{str(e)[len('serving.'):]}")
        ex = _export(a.checkpoint, Path(a.out), a.users, a.seed, dict(a.set or ()), a.shards)
        try:
            repo = build_repository(ex, a.repository, a.version, a.force, serving)
        except ValueError as e:
            raise SystemExit(f"error: {e}")
        print(f"model repository ready: {repo} (version {a.version}"
              + (f", item table in {a.shards} shards" if a.shards > 1 else "") + ")")
    elif a.cmd == "configs":
        from grank.data import configure, schema

        from .repository import COMMITTED, config_drift, write_configs
        repo = Path(a.repository) if a.repository else COMMITTED
        cfg, data = configure(a.preset, "grank")
        cfg = served_config(cfg)
        if a.check:
            drift = config_drift(cfg, schema(data), repo)
            print("configs up to date" if not drift else f"drift in: {', '.join(drift)}")
            return 1 if drift else 0
        for p in write_configs(cfg, schema(data), repo):
            print("wrote", p)
    elif a.cmd == "tensorrt":
        from .tensorrt_engines import build_and_check
        return build_and_check(a.checkpoint, Path(a.onnx_dir), Path(a.out))
    return 0


if __name__ == "__main__":
    from grank.cli import run
    run(main)
