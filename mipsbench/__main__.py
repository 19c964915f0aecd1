"""python -m mipsbench: the MIPS stage measured against its peers and the machine's floor.

  python -m mipsbench cpu --checkpoint artifacts/default/grank/best.pt [--quick]
  python -m mipsbench vectors --checkpoint artifacts/default/grank/best.pt --out artifacts/vectors.npz
  python -m mipsbench gpu --vectors artifacts/vectors.npz --out artifacts/gpu-mips     # on a GPU
  python -m mipsbench merge artifacts/gpu-mips/gpu_mips.json --docs docs

Runs merge their rows into DOCS/performance.json; `python -m perf report --docs DOCS` then
renders DOCS/PERFORMANCE.md from it (with the served ensemble's sections).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

CHECKPOINT = "artifacts/default/grank/best.pt"
RENDER = "render the report with `python -m perf report --docs {docs}`"


def parser() -> argparse.ArgumentParser:
    from .gpu import KS as GPU_KS
    from .gpu import METHODS as GPU_METHODS
    from .gpu import SIZES as GPU_SIZES
    from .methods import EXACT, INDEXED, REDUCED
    ap = argparse.ArgumentParser(prog="python -m mipsbench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("cpu", help="CPU: the served module vs torch and FAISS peers, and the machine's floor")
    p.add_argument("--checkpoint", default=CHECKPOINT, help="trained model: its item geometry and user vectors")
    p.add_argument("--quick", action="store_true", help="small smoke run (N up to 50k, k 500, batch 1/16)")
    p.add_argument("--seconds", type=float, default=1.0, help="timing window per point, in seconds")
    p.add_argument("--docs", default="docs", help="folder whose performance.json receives the rows")
    p.add_argument("--partial", default="artifacts/bench-partial.json",
                   help="rows so far, rewritten after every method (kept if the run dies)")
    p.add_argument("--sizes", type=int, nargs="*",
                   help="catalogue sizes instead of the plan's (0 = the real catalogue)")
    p.add_argument("--ks", type=int, nargs="*", help="k values instead of the plan's")
    p.add_argument("--methods", nargs="*", metavar="METHOD",
                   help="only these methods, measured in this order (default: all): "
                        + ", ".join(M.name for M in EXACT + REDUCED + INDEXED))
    p.add_argument("--import-partial", metavar="FILE",
                   help="merge the rows of a stopped run's partial file into --docs instead of measuring")
    p.add_argument("--note", default="", help="a line about this run, shown beside its command in the report")

    p = sub.add_parser("vectors", help="write a checkpoint's item table and user vectors (input of `gpu`)")
    p.add_argument("--checkpoint", default=CHECKPOINT, help="trained model")
    p.add_argument("--out", default="artifacts/vectors.npz", help="npz file to write (items, users)")

    p = sub.add_parser("gpu", help="GPU: brute force in fp32 / fp16 / bf16, re-scored and two-step top-k")
    p.add_argument("--vectors", default="artifacts/vectors.npz", help="npz written by `python -m mipsbench vectors`")
    p.add_argument("--out", default="artifacts/gpu-mips", help="folder for gpu_mips.json (and its partial file)")
    p.add_argument("--sizes", type=int, nargs="+", default=list(GPU_SIZES),
                   help="catalogue sizes (the real size uses the trained table itself)")
    p.add_argument("--ks", type=int, nargs="+", default=list(GPU_KS), help="k values")
    p.add_argument("--methods", nargs="+", default=list(GPU_METHODS), choices=list(GPU_METHODS), metavar="METHOD",
                   help="methods to measure: " + ", ".join(GPU_METHODS))
    p.add_argument("--seconds", type=float, default=0.5, help="timing window per point, in seconds")

    p = sub.add_parser("merge", help="merge a finished GPU run's gpu_mips.json into --docs/performance.json")
    p.add_argument("result", metavar="GPU_MIPS_JSON", help="the gpu_mips.json a `gpu` run wrote")
    p.add_argument("--docs", default="docs", help="folder whose performance.json receives the rows")
    return ap


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    return {"cpu": _cpu, "vectors": _vectors, "gpu": _gpu, "merge": _merge}[a.cmd](a, argv)


def _command(argv) -> str:
    """The command line as a user would type it again, recorded next to the rows."""
    return "python -m mipsbench " + shlex.join(argv if argv is not None else sys.argv[1:])


def _cpu(a, argv) -> int:
    from .cpu import from_partial, run, write
    cmd = _command(argv)
    try:
        if a.import_partial:
            res = from_partial(a.checkpoint, Path(a.import_partial))
            cmd = res["command"]  # the run that measured the rows, not this import
        else:
            res = run(a.checkpoint, quick=a.quick, seconds=a.seconds, partial=Path(a.partial),
                      sizes=a.sizes, ks=a.ks, methods=a.methods, command=cmd)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    p = write(res, Path(a.docs), cmd, a.note)
    took = "imported" if a.import_partial else f"{res['seconds']:.0f} s"
    print(f"rows merged into {p} ({took}); " + RENDER.format(docs=a.docs))
    return 0


def _vectors(a, argv) -> int:
    from .gpu import dump_vectors
    try:
        dump_vectors(a.checkpoint, Path(a.out))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}")
    return 0


def _gpu(a, argv) -> int:
    import torch

    from .gpu import run
    if not torch.cuda.is_available():
        print("error: no CUDA device: this benchmark runs on a GPU (CPU numbers: python -m mipsbench cpu)",
              file=sys.stderr)
        return 2
    if not Path(a.vectors).is_file():
        print(f"error: --vectors: {a.vectors} not found (write it with `python -m mipsbench vectors`)",
              file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = run(Path(a.vectors), tuple(a.sizes), tuple(a.ks), seconds=a.seconds, methods=tuple(a.methods),
              partial=out / "gpu_mips.partial.json")
    res["command"] = _command(argv)
    (out / "gpu_mips.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {out / 'gpu_mips.json'}; merge it with `python -m mipsbench merge {out / 'gpu_mips.json'}`")
    return 0


def _merge(a, argv) -> int:
    from .gpu import write
    src = Path(a.result)
    if not src.is_file():
        print(f"error: {src} not found (a `python -m mipsbench gpu` run writes it)", file=sys.stderr)
        return 2
    p = write(json.loads(src.read_text()), Path(a.docs))
    print(f"merged {src} into {p}; " + RENDER.format(docs=a.docs))
    return 0


if __name__ == "__main__":
    from grank.cli import run
    run(main)
