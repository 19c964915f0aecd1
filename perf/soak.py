"""A soak: perf_analyzer at a fixed concurrency for many minutes; errors, p50/p99 latency and
the resident memory of the server and each of its Python stubs, per minute.

  python -m perf soak --repository model_repository --minutes 10 --concurrency 16

Not a test (it takes the machine for its whole length). Serves a copy of the repository on a
fresh embedded server; perf_analyzer stops at the first failed request, so its exit status is
the error count's witness (0 = no request failed); latencies come from every request's
timestamps (``--profile-export-file``).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

from grank.signatures import ENSEMBLE

from .swap import phase_latencies


def stub_rss_mb(server_pid: int) -> dict[str, float]:
    """RSS (MB) of tritonserver itself and of each Python stub, named by its model."""
    out = {}
    try:
        out["tritonserver"] = _rss(server_pid)
        kids = [int(c) for t in Path(f"/proc/{server_pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return out
    for k in kids:
        try:
            args = Path(f"/proc/{k}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # the stub's first argument is <repository>/<model>/<version>/model.py
        model = Path(args[1].decode()).parts[-3] if len(args) > 1 and args[1].endswith(b".py") else str(k)
        name, i = model, 0
        while name in out:
            i += 1
            name = f"{model}#{i}"
        out[name] = _rss(k)
    return out


def _rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(repository: Path, out: Path, minutes: float = 10.0, concurrency: int = 16, protocol: str = "grpc",
        log=print) -> dict:
    from client.grank_client import GRankClient
    from grank.data import load
    from serve.server import TritonServer

    from .sweep import perf_analyzer_bin, perf_env, read_csv, write_input_data
    out = Path(out)
    repo = out / "repository"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(repository, repo, ignore=shutil.ignore_patterns("__pycache__"))
    server = TritonServer(repo, work_dir=out / "triton")
    server.start()
    rss, halt = [], threading.Event()

    def sample():
        while not halt.wait(10.0):
            rss.append((time.time(), stub_rss_mb(server.proc.pid)))
    try:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        client = GRankClient(url, protocol)
        data = write_input_data(client, load(client.schema["dataset"]), out / "input_data.json")
        base = [str(perf_analyzer_bin()), "-m", ENSEMBLE, "-u", url, "-i", protocol, "--input-data", str(data),
                "--concurrency-range", str(concurrency), "--stability-percentage", "999", "--max-trials", "3"]
        subprocess.run(base + ["--measurement-interval", "2000", "-f", str(out / "probe.csv")], env=perf_env(),
                       check=True, capture_output=True, timeout=300)
        rate = read_csv(out / "probe.csv")[0]["qps"]
        export = out / "profile_export.json"
        cmd = base + ["--measurement-mode", "count_windows", "--measurement-request-count",
                      str(int(rate * minutes * 60 / 3)), "--profile-export-file", str(export),
                      "-f", str(out / "soak.csv")]
        log(f"{minutes:g} min at concurrency {concurrency} (~{rate:.0f} infer/s): {' '.join(cmd)}")
        rss.append((time.time(), stub_rss_mb(server.proc.pid)))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.time()
        r = subprocess.run(cmd, env=perf_env(), capture_output=True, text=True, timeout=minutes * 60 * 3 + 600)
        t1 = time.time()
        rss.append((t1, stub_rss_mb(server.proc.pid)))
    finally:
        halt.set()
        server.stop()
    edges = [t0 + 60 * i for i in range(int((t1 - t0) // 60) + 1)] + [t1]
    marks = [(f"minute {i + 1}", e) for i, e in enumerate(edges[:-1])] + [("end", edges[-1])]
    per_minute = phase_latencies(export, marks)
    memory = []
    for (name, start), (_, end) in zip(marks, marks[1:]):
        inside = [m for t, m in rss if start <= t <= end + 10] or [rss[-1][1]]
        last = inside[-1]
        memory.append({"minute": name, "tritonserver_mb": round(last.get("tritonserver", 0), 1),
                       "stubs_mb": {k: round(v, 1) for k, v in last.items() if k != "tritonserver"},
                       "total_mb": round(sum(last.values()), 1)})
    report = {"minutes": round((t1 - t0) / 60, 2), "concurrency": concurrency, "protocol": protocol,
              "perf_analyzer_exit": r.returncode, "errors": [ln for ln in (r.stdout + r.stderr).splitlines()
                                                            if "rror" in ln][:5],
              "per_minute": per_minute, "memory": memory, "command": " ".join(cmd)}
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    return report
