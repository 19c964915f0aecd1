"""python -m serve: run the embedded Triton server on a model repository until Ctrl-C, and
restart it if it dies.

  python -m serve --repository model_repository                       # loopback, ports 8000-8002
  GRANK_ADMIN_KEY=... python -m serve --host 0.0.0.0 --repository model_repository

Loopback only unless ``--host`` says otherwise; beyond loopback a management key is required
(``$GRANK_ADMIN_KEY`` or ``--admin-key-file``) and restricts loading/unloading models, model
configs, shared memory, statistics, trace and log settings to callers that send it
(``serve.admin``). This server (Triton 2.51 from the nvidia-pytriton wheel) is for development
on a trusted machine: versions before 2.59 crash on some malformed HTTP/JSON requests and have
published vulnerabilities (docs/RELIABILITY.md), so production runs the current NGC container.

Supervision: when tritonserver dies on its own (a crash), it is restarted on the same ports and
repository (the versions the configs on disk name: a swap by ``serve.deploy`` survives), the
crash is counted, logged on stderr and in ``WORK_DIR/supervisor.jsonl``, and the dead server's
log is kept as ``tritonserver.crash-N.log``. More than ``--max-restarts`` crashes within
``--restart-window`` seconds stop the supervisor (exit 1): something is wrong beyond one bad
request.

A Python backend stub that dies (killed, out of memory) leaves its model answering "Stub
process ... is not healthy" forever on Triton 2.51. The supervisor sends a probe request every
``--probe-every`` seconds; when the answer names an unhealthy stub it reloads that model (a
reload with a changed parameter: Triton skips a reload of an unchanged config), which starts a
new stub in about a second, and logs it (event ``stub_restarted``).
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from pathlib import Path

from .admin import KEY_ENV, is_loopback, read_key
from .server import TritonServer


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Keeps one ``TritonServer`` running: restarts it when it dies on its own."""

    UNHEALTHY = re.compile(r"Stub process '(\w+)_\d+' is not healthy")

    def __init__(self, server: TritonServer, max_restarts: int = 5, window_s: float = 300.0,
                 timeout_s: float = 180.0, out=sys.stderr, probe_every_s: float = 2.0):
        self.server, self.max_restarts, self.window_s, self.timeout_s = server, max_restarts, window_s, timeout_s
        self.crashes: list[float] = []
        self.journal = Path(server.work_dir) / "supervisor.jsonl"
        self.out = out
        self.probe_every_s, self.last_probe = probe_every_s, time.time()
        self._client = None

    def heal(self) -> str | None:
        """Probe the ensemble; reload a model whose Python stub died. Returns its name."""
        if not self.probe_every_s or time.time() - self.last_probe < self.probe_every_s:
            return None
        self.last_probe = time.time()
        from .deploy import DeployError, Server, current_version, probe_request
        try:
            if self._client is None:  # one client for the supervisor's life: no socket per probe
                self._client = Server(self.server.http_url, self.server.admin_key, timeout_s=30)
            server = self._client
            server.probe(probe_request(self.server.repository, current_version(self.server.repository)))
            return None
        except (DeployError, OSError, ValueError, KeyError):
            return None  # not a repository this supervisor can probe (or not ready): nothing to heal
        except Exception as e:  # noqa: BLE001  tritonclient's exception type
            m = self.UNHEALTHY.search(str(e))
            if not m:
                return None
            model = m.group(1)
        t0 = time.time()
        try:
            cfg = server.client.get_model_config(model, headers=server.headers)
            cfg.setdefault("parameters", {})["restarted_at"] = {"string_value": f"{time.time():.3f}"}
            server.client.load_model(model, headers=server.headers, config=json.dumps(cfg))
        except Exception as e:  # noqa: BLE001
            print(f"the Python stub of {model} died; reloading it failed: {e}", file=self.out, flush=True)
            self._record(event="stub_reload_failed", model=model, error=str(e)[:200])
            return None
        took = time.time() - t0
        self._record(event="stub_restarted", model=model, seconds=round(took, 2))
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] the Python stub of {model} died; model reloaded "
              f"in {took:.1f} s", file=self.out, flush=True)
        return model

    def _record(self, **event) -> None:
        event = {"time": round(time.time(), 3), **event}
        with open(self.journal, "a") as f:
            f.write(json.dumps(event) + "\n")

    def check(self) -> bool:
        """Called periodically: restart a dead server. False when it must not be restarted."""
        code = self.server.proc.poll()
        if code is None:
            return True
        died = time.time()
        self.crashes.append(died)
        n = len(self.crashes)
        kept = self.server.log_file.with_name(f"{self.server.log_file.stem}.crash-{n}.log")
        try:
            self.server.log_file.replace(kept)
        except OSError:
            kept = self.server.log_file
        recent = [t for t in self.crashes if died - t <= self.window_s]
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] tritonserver (pid {self.server.proc.pid}) died "
              f"with {describe_exit(code)}; crash {n}; its log: {kept}", file=self.out, flush=True)
        self._record(event="crash", crash=n, exit=describe_exit(code), pid=self.server.proc.pid, log=str(kept))
        if len(recent) > self.max_restarts:
            print(f"giving up: {len(recent)} crashes within {self.window_s:.0f} s (--max-restarts "
                  f"{self.max_restarts})", file=self.out, flush=True)
            self._record(event="gave_up", crashes=len(recent))
            return False
        t0 = time.time()
        self._client = None  # its connections were to the dead server
        try:
            self.server.start(timeout=self.timeout_s)
        except RuntimeError as e:
            print(f"restart failed: {e}", file=self.out, flush=True)
            self._record(event="restart_failed", crash=n)
            return False
        back = time.time() - died
        self._record(event="restarted", crash=n, pid=self.server.proc.pid,
                     start_s=round(time.time() - t0, 2), back_s=round(back, 2))
        print(f"restarted (pid {self.server.proc.pid}), serving again {back:.1f} s after the crash",
              file=self.out, flush=True)
        return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default="model_repository")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address HTTP, gRPC and metrics bind to (default loopback; 0.0.0.0 = every "
                         "interface, which needs a management key)")
    ap.add_argument("--admin-key-file", default=None,
                    help=f"file whose first line is the management key (else ${KEY_ENV}); never printed")
    ap.add_argument("--http-port", type=int, default=8000, help="0 = pick a free port")
    ap.add_argument("--grpc-port", type=int, default=8001, help="0 = pick a free port")
    ap.add_argument("--metrics-port", type=int, default=8002, help="0 = pick a free port")
    ap.add_argument("--work-dir", default="artifacts/triton", help="backend folder, logs and supervisor.jsonl go here")
    ap.add_argument("--log-verbose", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for the ensemble")
    ap.add_argument("--max-restarts", type=int, default=5,
                    help="crashes tolerated within --restart-window before giving up (0: never restart)")
    ap.add_argument("--restart-window", type=float, default=300.0, help="seconds")
    ap.add_argument("--probe-every", type=float, default=2.0,
                    help="seconds between probe requests that find dead Python stubs (0: no probes)")
    a = ap.parse_args(argv)
    try:
        key = read_key(a.admin_key_file)
        s = TritonServer(a.repository, a.http_port, a.grpc_port, a.metrics_port, work_dir=a.work_dir,
                         log_verbose=a.log_verbose, host=a.host, admin_key=key)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        s.start(timeout=a.timeout)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while models load: do not leave tritonserver behind
        s.stop()
        print("interrupted while starting; server stopped", file=sys.stderr)
        return 130
    stop = {"now": False}
    # explicit handlers: a shell starts background jobs with SIGINT ignored, and `kill -INT`
    # must still stop them cleanly. Installed BEFORE the banner: whoever reads "Ctrl-C stops
    # the server" may signal at once, and a SIGINT landing between the print and the handler
    # would otherwise raise KeyboardInterrupt and skip the clean stop (seen in CI).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.update(now=True))
    access = ("management APIs need the key (header grank-admin-key)" if key else
              "management APIs open to local users (no key; set " + KEY_ENV + " to restrict them)")
    print(f"Triton {a.repository} ready in {time.time() - t0:.1f} s (pid {s.proc.pid}), bound to {a.host}"
          f"{'' if is_loopback(a.host) else ' (reachable from other machines)'}\n"
          f"  HTTP    {s.http_url}   (curl {s.http_url}/v2/models/grank)\n"
          f"  gRPC    {s.grpc_url}\n  metrics {s.metrics_url}\n  log     {s.log_file}\n"
          f"  {access}\n"
          "Ctrl-C stops the server.", flush=True)
    sup = Supervisor(s, a.max_restarts, a.restart_window, a.timeout, probe_every_s=a.probe_every)
    while not stop["now"]:
        code = s.proc.poll()
        # exit code 0: tritonserver was stopped on purpose (SIGINT/SIGTERM to it): so do we
        if code is not None and (code == 0 or a.max_restarts == 0 or not sup.check()):
            s.stop()
            print(f"tritonserver exited on its own ({describe_exit(s.proc.returncode)}); "
                  f"log: {s.log_file}", file=sys.stderr)
            return 1
        sup.heal()
        time.sleep(0.2)
    s.stop()
    print(f"server stopped ({len(sup.crashes)} crash(es) restarted)" if sup.crashes else "server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
