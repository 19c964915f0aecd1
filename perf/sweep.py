"""A perf_analyzer wrapper for the ``grank`` ensemble.

- ``write_input_data``: perf_analyzer's ``--input-data`` JSON built from REAL users' served
  histories (tensor names and shapes from the server's config, i.e. from the signatures), so
  the MIPS exclusion and the Ranker see realistic inputs, not zeros or random ids;
- ``sweep``: runs perf_analyzer over a concurrency range (or ``--request-rate-range``), saves
  its CSV, its full console output (with the per-composing-model breakdown) and the exact
  command next to them, and plots throughput against p50/p99 latency.
"""
from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np

from grank.signatures import ENSEMBLE


def perf_analyzer_bin() -> Path:
    p = Path(sys.executable).parent / "perf_analyzer"
    if not p.exists():
        raise RuntimeError("perf_analyzer not found next to the venv's python: run `make setup` "
                           "(it comes with tritonclient[all]==2.50.0)")
    return p


def perf_env() -> dict:
    """perf_analyzer links libcudart.so.12 even on CPU machines: take it from the
    nvidia-cuda-runtime-cu12 wheel."""
    env = dict(os.environ)
    cudart = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cuda_runtime" / "lib"
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(cudart), env.get("LD_LIBRARY_PATH", "")])
    return env


def write_input_data(client, data, path: Path, n_users: int = 200, seed: int = 0) -> Path:
    """perf_analyzer input JSON: one entry per real user of ``data`` (the data set the served
    model was trained on), replayed as a caller sends it (``grank.replay``: own item ids,
    events, profile, time) in the shapes the server's config says."""
    from grank.replay import user_requests
    rng = np.random.default_rng(seed)
    users = rng.choice(data.n_users, size=min(n_users, data.n_users), replace=False)
    arrays = user_requests(data, users, client.history_length, client.input_names)
    client.check(arrays)

    def content(a):  # perf_analyzer reads BYTES elements as JSON strings
        return [x.decode() for x in a.ravel()] if a.dtype == object else a.ravel().tolist()
    entries = [{name: {"content": content(a[i]), "shape": list(a.shape[1:])} for name, a in arrays.items()}
               for i in range(len(users))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": entries}))
    return path


def read_input_data(path: Path) -> dict:
    """``write_input_data``'s file -> request arrays name -> [n, ...] (one row per entry)."""
    entries = json.loads(Path(path).read_text())["data"]
    out = {}
    for name, t in entries[0].items():
        strings = isinstance(t["content"][0], str)
        rows = [np.array([x.encode() for x in e[name]["content"]] if strings else e[name]["content"],
                         dtype=object if strings else np.int64).reshape(t["shape"]) for e in entries]
        out[name] = np.stack(rows)
    return out


def key_args(protocol: str, key: str | None) -> list[str]:
    """perf_analyzer arguments sending the management key: it reads the model's config, which a
    server with a key restricts."""
    from serve.admin import headers
    return [a for k, v in headers(protocol, key).items() for a in ("-H", f"{k}:{v}")]


def portable(args: list[str]) -> list[str]:
    """Arguments without this machine's directories: paths under the working directory become
    relative, other absolute paths (the venv's binary, temporary folders) their name; also the
    path of a ``--flag=/path`` argument."""
    root = str(Path.cwd()) + "/"

    def one(a: str) -> str:
        flag, eq, value = a.partition("=") if a.startswith("--") else ("", "", a)
        if value.startswith(root):
            value = value[len(root):]
        elif value.startswith("/"):
            value = Path(value).name
        return flag + eq + value
    return [one(a) for a in args]


def redact(cmd: list[str], key: str | None) -> str:
    """The command as text to record or print: the key replaced by its variable's name, and no
    directory of this machine (``portable``), so a recorded command runs from any checkout."""
    from serve.admin import KEY_ENV
    text = shlex.join(portable(cmd))
    # after quoting, so that the shell expands the variable (a key has no character shlex quotes)
    return text.replace(key, "$" + KEY_ENV) if key else text


def command(url: str, protocol: str, input_data: Path, csv_path: Path, model: str = ENSEMBLE,
            concurrency: str | None = "1:4:1", request_rate: str | None = None, batch: int = 1,
            interval_ms: int = 3000, stability: int = 25, extra: list | None = None,
            key: str | None = None) -> list[str]:
    """The perf_analyzer command line. ``stability``: allowed % variation between measurement
    windows (perf_analyzer's default 10 rarely settles on a shared 2-core machine); ``key``: the
    server's management key, if it has one (record the command with ``redact``)."""
    cmd = [str(perf_analyzer_bin()), "-m", model, "-u", url, "-i", protocol, "-b", str(batch),
           "--input-data", str(input_data), "--measurement-interval", str(interval_ms),
           "--stability-percentage", str(stability),
           # stabilise on average latency (p99 of a 2-core box rarely settles); the CSV still
           # carries p50/p90/p95/p99
           "-f", str(csv_path), "--verbose-csv"]
    if request_rate:
        cmd += ["--request-rate-range", request_rate, "--request-distribution", "poisson"]
    else:
        cmd += ["--concurrency-range", concurrency]
    return cmd + key_args(protocol, key) + list(extra or [])


def read_csv(path: Path) -> list[dict]:
    """perf_analyzer's CSV -> rows with throughput and p50/p95/p99 in milliseconds."""
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            key = "Concurrency" if "Concurrency" in r else "Request Rate"
            rows.append({"load": float(r[key]), "load_kind": key.lower(),
                         "qps": float(r["Inferences/Second"]),
                         **{f"p{p}_ms": float(r[f"p{p} latency"]) / 1e3 for p in (50, 95, 99)},
                         "queue_ms": float(r.get("Server Queue", 0)) / 1e3,
                         "compute_ms": float(r.get("Server Compute Infer", 0)) / 1e3})
    return sorted(rows, key=lambda r: r["load"])  # perf_analyzer orders them by throughput


def plot(rows: list[dict], png: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for p, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
        ax.plot([r["qps"] for r in rows], [r[p] for r in rows], style, label=p.replace("_ms", " latency"))
    for r in rows:
        ax.annotate(f"{r['load']:g}", (r["qps"], r["p99_ms"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def sweep(client, data, url: str, protocol: str, out: Path, **kw) -> dict:
    """Run one perf_analyzer sweep with requests replayed from ``data``; writes command.txt,
    perf.csv, perf_analyzer.log, perf.png."""
    out.mkdir(parents=True, exist_ok=True)
    inputs = write_input_data(client, data, out / "input_data.json")
    cmd = command(url, protocol, inputs, out / "perf.csv", **kw)
    shown = redact(cmd, kw.get("key"))
    (out / "command.txt").write_text(shown + "\n")
    r = subprocess.run(cmd, capture_output=True, text=True, env=perf_env())
    (out / "perf_analyzer.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed (exit {r.returncode}): {shown}\n"
                           + (r.stdout + r.stderr)[-3000:])
    rows = read_csv(out / "perf.csv")
    load = "request rate" if kw.get("request_rate") else "concurrency"
    plot(rows, out / "perf.png", f"grank ensemble, {protocol}, {load} sweep (labels: {load})")
    return {"command": shown, "rows": rows, "dir": str(out)}
