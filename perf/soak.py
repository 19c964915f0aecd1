"""A soak: perf_analyzer at a fixed concurrency for many minutes; errors, p50/p99 latency and
the resident memory of the server and each of its Python stubs, per minute.

  python -m perf soak --repository model_repository --minutes 10 --concurrency 16

Not a test (it takes the machine for its whole length). Serves a copy of the repository on a
fresh embedded server and runs perf_analyzer once per minute, back to back (three 20 s windows
each, a second or two between runs); perf_analyzer stops at the first failed request, so each
run's exit status witnesses that minute's errors. (One long run with ``--profile-export-file``
would write every request's inputs and outputs: gigabytes.)
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from grank.signatures import ENSEMBLE
from serve.processes import descendants, rss_kb, stub_model



def stub_rss_mb(server_pid: int) -> dict[str, float]:
    """RSS (MB) of tritonserver itself and of each Python stub, named by its model."""
    out = {"tritonserver": rss_kb(server_pid) / 1024}
    for pid in descendants(server_pid)[1:]:
        model = stub_model(pid) or str(pid)
        name, i = model, 0
        while name in out:  # models with several instances: grank_mips, grank_mips#1
            i += 1
            name = f"{model}#{i}"
        out[name] = rss_kb(pid) / 1024
    return out


def run(repository: Path, out: Path, minutes: float = 10.0, concurrency: int = 16, protocol: str = "grpc",
        log=print) -> dict:
    from client.grank_client import GRankClient
    from grank.data import load
    from serve.server import TritonServer

    from .sweep import perf_analyzer_bin, perf_env, read_csv, redact, write_input_data
    out = Path(out)
    repo = out / "repository"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(repository, repo, ignore=shutil.ignore_patterns("__pycache__"))
    server = TritonServer(repo, work_dir=out / "triton")
    server.start()
    rows = []
    try:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        client = GRankClient(url, protocol)
        data = write_input_data(client, load(client.schema["dataset"]), out / "input_data.json")
        base = [str(perf_analyzer_bin()), "-m", ENSEMBLE, "-u", url, "-i", protocol, "--input-data", str(data),
                "--concurrency-range", str(concurrency), "--stability-percentage", "999", "--max-trials", "3",
                "--measurement-interval", "20000"]
        shown = redact(base, None) + " -f minute-N.csv"
        log(f"{minutes:g} runs of 1 minute at concurrency {concurrency}: {shown}")
        start = time.time()
        memory0 = stub_rss_mb(server.proc.pid)
        for i in range(int(minutes)):
            csv = out / f"minute-{i + 1}.csv"
            r = subprocess.run(base + ["-f", str(csv)], env=perf_env(), capture_output=True, text=True, timeout=600)
            m = read_csv(csv)[0] if r.returncode == 0 and csv.exists() else {}
            mem = stub_rss_mb(server.proc.pid)
            row = {"minute": i + 1, "exit": r.returncode,
                   "errors": [ln for ln in (r.stdout + r.stderr).splitlines() if "rror" in ln][:3],
                   "infer_per_s": round(m.get("qps", 0), 1), "p50_ms": m.get("p50_ms"), "p99_ms": m.get("p99_ms"),
                   "tritonserver_mb": round(mem.get("tritonserver", 0), 1), "total_mb": round(sum(mem.values()), 1),
                   "stubs_mb": {k: round(v, 1) for k, v in mem.items() if k != "tritonserver"}}
            rows.append(row)
            log(json.dumps({k: v for k, v in row.items() if k != "stubs_mb"}))
    finally:
        server.stop()
    report = {"minutes": round((time.time() - start) / 60, 2), "concurrency": concurrency, "protocol": protocol,
              "failed_minutes": sum(r["exit"] != 0 for r in rows), "start_total_mb": round(sum(memory0.values()), 1),
              "per_minute": rows, "command": shown}
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    return report
