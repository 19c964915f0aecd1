"""The model swap under load, measured: perf_analyzer keeps a concurrency of C on the ensemble
while ``serve.deploy`` deploys a new checkpoint and then rolls it back.

  python -m perf swap --repository model_repository --checkpoint artifacts/fast/grank/best.pt

The repository is copied (``OUT/repository``) and served by a fresh embedded server with a
management key; the load runs through both switches. Reported (``OUT/swap.json`` and the
console): failed requests (perf_analyzer stops at the first one, so any failure shows as its
exit status and its error), p50/p99 latency before, during and after each switch (from every
request's timestamps, ``--profile-export-file``), the time from each command to the new
version serving and to the old one retired, and the peak resident memory of the server and its
Python stubs (two versions are loaded during a switch).
"""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from grank.signatures import ENSEMBLE


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants (MB)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except OSError:
            pass
    return total / 1024


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.every_s, self.samples, self.halt = pid, every_s, [], threading.Event()

    def run(self):
        while not self.halt.is_set():
            self.samples.append((time.time(), tree_rss_mb(self.pid)))
            time.sleep(self.every_s)


def phase_latencies(export: Path, marks: list[tuple[str, float]]) -> dict:
    """p50/p99 (ms) and request counts between consecutive ``marks`` (name, Unix time), from
    perf_analyzer's profile export (request and response timestamps in ns)."""
    doc = json.loads(Path(export).read_text())
    reqs = [(r["timestamp"] / 1e9, (r["response_timestamps"][-1] - r["timestamp"]) / 1e6)
            for e in doc["experiments"] for r in e["requests"] if r.get("response_timestamps")]
    t = np.array([x for x, _ in reqs])
    lat = np.array([y for _, y in reqs])
    out = {}
    for (name, start), (_, end) in zip(marks, marks[1:]):
        sel = lat[(t >= start) & (t < end)]
        out[name] = {"requests": int(sel.size), "seconds": round(end - start, 1),
                     "p50_ms": round(float(np.percentile(sel, 50)), 2) if sel.size else None,
                     "p99_ms": round(float(np.percentile(sel, 99)), 2) if sel.size else None}
    return out


def run(repository: Path, checkpoint: Path, out: Path, concurrency: int = 8, protocol: str = "grpc",
        settle_s: float = 10.0, log=print) -> dict:
    from client.grank_client import GRankClient
    from grank.checkpoint import served_config_of
    from grank.data import load
    from serve.deploy import Server, stage, switch
    from serve.server import TritonServer

    from .sweep import perf_analyzer_bin, perf_env, read_csv, write_input_data

    out = Path(out)
    repo = out / "repository"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(repository, repo, ignore=shutil.ignore_patterns("__pycache__"))
    key = secrets.token_hex(16)
    server = TritonServer(repo, work_dir=out / "triton", admin_key=key)
    server.start()
    sampler = RssSampler(server.proc.pid)
    sampler.start()
    try:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        client = GRankClient(url, protocol, admin_key=key)
        cfg, _ = served_config_of(checkpoint)
        data_path = write_input_data(client, load(cfg.dataset), out / "input_data.json")
        deploy = Server(server.http_url, key)
        # a short run first: the rate at which to size perf_analyzer's run to outlast both switches
        probe = out / "probe.csv"
        base = [str(perf_analyzer_bin()), "-m", ENSEMBLE, "-u", url, "-i", protocol, "--input-data",
                str(data_path), "--concurrency-range", str(concurrency), "--stability-percentage", "999",
                "--max-trials", "3"]
        subprocess.run(base + ["--measurement-interval", "2000", "-f", str(probe)], env=perf_env(),
                       check=True, capture_output=True, timeout=300)
        rate = read_csv(probe)[0]["qps"]
        stage_s = 0.0
        t0 = time.perf_counter()
        staged = stage(checkpoint, repo, out / "export", log=log)  # exported before the load starts
        stage_s = time.perf_counter() - t0
        total_s = 5 * settle_s + 60  # before, switch, after, rollback, after (switches take < 30 s each here)
        export = out / "profile_export.json"
        cmd = base + ["--measurement-mode", "count_windows", "--measurement-request-count",
                      str(int(rate * total_s / 3)), "--profile-export-file", str(export), "-f", str(out / "swap.csv")]
        log(f"perf_analyzer at concurrency {concurrency} ({rate:.0f} infer/s measured): {' '.join(cmd)}")
        pa = subprocess.Popen(cmd, env=perf_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        marks = [("before", time.time())]
        time.sleep(settle_s)
        marks.append(("deploy", time.time()))
        r1 = switch(repo, deploy, staged, log=log)
        marks.append(("after deploy", time.time()))
        time.sleep(settle_s)
        marks.append(("rollback", time.time()))
        r2 = switch(repo, deploy, r1["from"], log=log)
        marks.append(("after rollback", time.time()))
        time.sleep(settle_s)
        still_running = pa.poll() is None
        marks.append(("end", time.time()))
        pa_out, _ = pa.communicate(timeout=600)
        if not still_running:
            log("warning: perf_analyzer finished before the last phase ended")
        failed = pa.returncode != 0 or "error" in pa_out.lower()
        report = {
            "concurrency": concurrency, "protocol": protocol, "perf_analyzer_exit": pa.returncode,
            "failed": failed, "perf_analyzer_errors": [ln for ln in pa_out.splitlines() if "rror" in ln][:5],
            "stage_s": round(stage_s, 2), "deploy": r1, "rollback": r2,
            "phases": phase_latencies(export, marks),
            "rss_mb": {"before": round(sampler.samples[0][1], 1),
                       "peak": round(max(v for _, v in sampler.samples), 1),
                       "end": round(sampler.samples[-1][1], 1)},
            "command": " ".join(cmd),
        }
    finally:
        sampler.halt.set()
        server.stop()
    (out / "swap.json").write_text(json.dumps(report, indent=1))
    return report
