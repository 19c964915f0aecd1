"""Open-loop load far above capacity: is overload shed (fast UNAVAILABLE) while admitted
requests keep their latency?

perf_analyzer (2.50) stops at the first failed request, so it cannot measure a server that
sheds load; this generator sends requests at a fixed Poisson rate regardless of answers
(gRPC asyncio, real users' requests from ``perf.sweep.write_input_data``'s file), with a
deadline per request, and sorts every answer into ok / rejected (UNAVAILABLE: queue full or
queue timeout) / deadline exceeded / other error, with latencies.

  python -m perf overload --repository model_repository --rates 400 1500 3000

``compare`` serves a copy of the repository twice, as built (admission control on the
validator, ``export.repository.Serving.admission_queue``) and without it, and offers each rate
to both. The generator shares the machine with the server: on a small machine its own CPU use
lowers what the server can admit, so compare the two configurations, not absolute rates.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import numpy as np

from grank.signatures import ENSEMBLE


def _inputs(m, arrays: dict, row: int) -> list:
    """The InferInputs of one request row of ``arrays`` (``perf.sweep.read_input_data``)."""
    ins = []
    for name, a in arrays.items():
        x = m.InferInput(name, [1, *a.shape[1:]], "BYTES" if a.dtype == object else "INT64")
        x.set_data_from_numpy(a[row:row + 1])
        ins.append(x)
    return ins


async def _run(url: str, arrays: dict, rate: float, seconds: float, deadline_s: float,
               connections: int = 4) -> list[tuple]:
    import tritonclient.grpc.aio as m
    clients = [m.InferenceServerClient(url) for _ in range(connections)]
    prepared = [_inputs(m, arrays, r) for r in range(len(next(iter(arrays.values()))))]
    results, tasks = [], []

    async def one(i: int, t_sent: float):
        c = clients[i % connections]
        try:
            await c.infer(ENSEMBLE, prepared[i % len(prepared)], client_timeout=deadline_s)
            kind = "ok"
        except Exception as e:  # noqa: BLE001  sorted below by message
            s = str(e)
            kind = ("rejected" if "UNAVAILABLE" in s or "queue" in s.lower() or "Request timeout expired" in s
                    else "deadline" if "DEADLINE_EXCEEDED" in s or "Deadline" in s else "error:" + s[:80])
        results.append((t_sent, time.perf_counter() - t_sent, kind))

    start = time.perf_counter()
    t, i = start, 0
    while t - start < seconds:
        t += random.expovariate(rate)
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, time.perf_counter())))
        i += 1
    await asyncio.gather(*tasks)
    for c in clients:
        await c.close()
    return results


def summarize(results: list[tuple], seconds: float) -> dict:
    def pct(xs, q):
        return round(float(np.percentile(xs, q)) * 1e3, 2) if len(xs) else None
    ok = [lat for _, lat, k in results if k == "ok"]
    rej = [lat for _, lat, k in results if k == "rejected"]
    other = {}
    for _, _, k in results:
        if k not in ("ok", "rejected"):
            other[k] = other.get(k, 0) + 1
    return {"sent": len(results), "offered_per_s": round(len(results) / seconds, 1),
            "ok": len(ok), "ok_per_s": round(len(ok) / seconds, 1), "ok_p50_ms": pct(ok, 50),
            "ok_p99_ms": pct(ok, 99), "rejected": len(rej), "rejected_p50_ms": pct(rej, 50),
            "rejected_p99_ms": pct(rej, 99), "other": other}


def run(url: str, input_data: Path, rate: float, seconds: float, deadline_s: float = 5.0) -> dict:
    from .sweep import read_input_data
    results = asyncio.run(_run(url, read_input_data(input_data), rate, seconds, deadline_s))
    return summarize(results, seconds)


def without_admission_control(repo: Path) -> None:
    """Remove the validator's queue policy from a repository (the "before" configuration)."""
    import re

    from grank.signatures import VALIDATE
    p = Path(repo) / VALIDATE / "config.pbtxt"
    p.write_text(re.sub(r"  default_queue_policy \{\n(    .*\n)*  \}\n", "", p.read_text()))


def compare(repository: Path, out: Path, rates, seconds: float = 15.0, deadline_s: float = 5.0) -> dict:
    """Every rate against the repository as built and without admission control."""
    import shutil

    from client.grank_client import GRankClient
    from grank.data import load
    from serve.server import TritonServer

    from .sweep import write_input_data
    out = Path(out)
    report = {"rates": list(rates), "seconds": seconds, "deadline_s": deadline_s, "runs": {}}
    for variant in ("admission control", "unbounded queues"):
        repo = out / variant.replace(" ", "_")
        shutil.rmtree(repo, ignore_errors=True)
        shutil.copytree(repository, repo, ignore=shutil.ignore_patterns("__pycache__"))
        if variant == "unbounded queues":
            without_admission_control(repo)
        server = TritonServer(repo, work_dir=out / "triton")
        server.start()
        try:
            client = GRankClient(server.grpc_url, "grpc")
            data = out / "input_data.json"
            if not data.exists():
                write_input_data(client, load(client.schema["dataset"]), data)
            report["runs"][variant] = {str(r): run(server.grpc_url, data, r, seconds, deadline_s) for r in rates}
        finally:
            server.stop()
    (out / "overload.json").write_text(json.dumps(report, indent=1))
    return report
