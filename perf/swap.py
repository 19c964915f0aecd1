"""The model swap under load, measured: C closed-loop callers keep the ensemble busy while
``serve.deploy`` deploys a new checkpoint and then rolls it back.

  python -m perf swap --repository model_repository --checkpoint artifacts/fast/grank/best.pt

The repository is copied (``OUT/repository``) and served by a fresh embedded server with a
management key. perf_analyzer measures the load before the swap (same concurrency) but cannot
run through one: it tracks the server-side statistics of each composing model's version and
stops with its own error "failed to find the requested model version" when a swap retires the
version it started with, although every request was answered. So the load through the swaps
comes from C threads of the project's client (gRPC, no retries, real users' requests), which
also check every answer: it must carry one deployment and equal that deployment's answer.
Reported (``OUT/swap.json`` and the console): failed requests, answers that match neither
version, p50/p99 latency before, during and after each switch, the time from each command to
the new version serving and to the old one retired, and the peak resident memory of the server
and its Python stubs (two versions are loaded during a switch).
"""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from grank.signatures import ENSEMBLE
from serve.processes import RssSampler, rss_bytes


class ClosedLoop:
    """``n`` threads, each sending one of ``requests`` (name -> [B, ...] arrays, a row each)
    again and again over gRPC and keeping (start time, latency s, deployment or None, error or
    None, request row, answered ids); ``check`` compares the answers with each version's."""

    def __init__(self, url: str, key: str, requests: dict, n: int):
        import threading
        self.url, self.key, self.requests = url, key, requests
        self.records, self.halt = [], threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int):
        from client.grank_client import GRankClient
        c = GRankClient(self.url, "grpc", admin_key=self.key, deadline_s=0)
        rows = len(next(iter(self.requests.values())))
        j = i
        while not self.halt.is_set():
            r = j % rows
            one = {k: v[r:r + 1] for k, v in self.requests.items()}
            t = time.time()
            try:
                a = c.infer(one, validate=False)
                self.records.append((t, time.time() - t, int(a.deployment[0]), None, r, a[0][0]))
            except Exception as e:  # noqa: BLE001  every failure is a finding
                self.records.append((t, time.time() - t, None, str(e)[:200], r, None))
            j += len(self.threads)

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.halt.set()
        for t in self.threads:
            t.join(30)

    def check(self, reference: dict) -> list:
        """Records, an answer that differs from its deployment's (``reference``: version ->
        [n, k2] ids) turned into a failure: a request mixed versions, or a version misbehaved."""
        out = []
        for t, lat, dep, err, r, ids in self.records:
            if err is None and (dep not in reference or not np.array_equal(ids, reference[dep][r])):
                err = f"the answer of no version (deployment {dep})"
            out.append((t, lat, dep, err))
        return out


def phases(records: list, marks: list[tuple[str, float]]) -> dict:
    """Per phase between consecutive ``marks`` (name, Unix time): requests, failures, the
    deployments that answered, p50/p99 latency (ms)."""
    out = {}
    for (name, start), (_, end) in zip(marks, marks[1:]):
        sel = [r for r in records if start <= r[0] < end]
        lat = np.array([r[1] for r in sel if r[3] is None]) * 1e3
        out[name] = {"requests": len(sel), "failed": sum(r[3] is not None for r in sel),
                     "seconds": round(end - start, 1),
                     "deployments": sorted({r[2] for r in sel if r[2] is not None}),
                     "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                     "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None}
    return out


def run(repository: Path, checkpoint: Path, out: Path, concurrency: int = 8, protocol: str = "grpc",
        settle_s: float = 10.0, log=print) -> dict:
    from client.grank_client import GRankClient
    from grank.checkpoint import served_config_of
    from grank.data import load
    from serve.deploy import Server, current_version, stage, switch
    from serve.server import TritonServer

    from .sweep import key_args, perf_analyzer_bin, perf_env, read_csv, read_input_data, redact, write_input_data

    out = Path(out)
    repo = out / "repository"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(repository, repo, ignore=shutil.ignore_patterns("__pycache__"))
    key = secrets.token_hex(16)
    server = TritonServer(repo, work_dir=out / "triton", admin_key=key)
    server.start()
    before = rss_bytes(server.proc.pid)
    sampler = RssSampler(server.proc.pid, every_s=0.25)
    sampler.start()
    try:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        client = GRankClient(url, protocol, admin_key=key)
        cfg, _ = served_config_of(checkpoint)
        data_path = write_input_data(client, load(cfg.dataset), out / "input_data.json")
        deploy = Server(server.http_url, key)
        # perf_analyzer before the swap: the same concurrency, for comparison
        probe = out / "perf_analyzer_before.csv"
        base = [str(perf_analyzer_bin()), "-m", ENSEMBLE, "-u", url, "-i", protocol, "--input-data",
                str(data_path), "--concurrency-range", str(concurrency), "--stability-percentage", "999",
                "--max-trials", "3", "--measurement-interval", "3000"] + key_args(protocol, key)
        subprocess.run(base + ["-f", str(probe)], env=perf_env(), check=True, capture_output=True, timeout=300)
        pa_before = read_csv(probe)[0]
        t0 = time.perf_counter()
        staged = stage(checkpoint, repo, out / "export", log=log)  # exported before the load starts
        stage_s = time.perf_counter() - t0
        # every answer of each version to the replayed requests, for the check of each answer
        requests = read_input_data(data_path)
        reference = {current_version(repo): answers(client, requests)}
        load_ = ClosedLoop(server.grpc_url, key, requests, concurrency)
        marks = [("before", time.time())]
        load_.start()
        time.sleep(settle_s)
        marks.append(("deploy", time.time()))
        r1 = switch(repo, deploy, staged, log=log)
        marks.append(("after deploy", time.time()))
        reference[staged] = answers(client, requests)  # the new version's answers, once it serves
        time.sleep(settle_s)
        marks.append(("rollback", time.time()))
        r2 = switch(repo, deploy, r1["from"], log=log)
        marks.append(("after rollback", time.time()))
        time.sleep(settle_s)
        marks.append(("end", time.time()))
        load_.stop()
        recs = load_.check(reference)
        report = {
            "concurrency": concurrency, "protocol": "grpc", "requests": len(recs),
            "failed": sum(r[3] is not None for r in recs), "failures": sorted({r[3] for r in recs if r[3]})[:5],
            "perf_analyzer_before": {"infer_per_s": round(pa_before["qps"], 1), "p50_ms": round(pa_before["p50_ms"], 2),
                                     "p99_ms": round(pa_before["p99_ms"], 2), "command": redact(base, key)},
            "stage_s": round(stage_s, 2), "deploy": r1, "rollback": r2,
            "phases": phases(recs, marks),
            "rss_mb": {"before": round(before / 2 ** 20, 1), "peak": round(sampler.stop() / 2 ** 20, 1),
                       "end": round(rss_bytes(server.proc.pid) / 2 ** 20, 1)},
        }
    finally:
        sampler.stop()
        server.stop()
    (out / "swap.json").write_text(json.dumps(report, indent=1))
    return report


def answers(client, requests: dict) -> np.ndarray:
    """The served item ids [n, k2] for each request row (sent in batches)."""
    n = len(next(iter(requests.values())))
    return np.concatenate([client.infer({k: v[i:i + 64] for k, v in requests.items()}, validate=False)[0]
                           for i in range(0, n, 64)])
