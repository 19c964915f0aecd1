"""python -m serve: run the embedded Triton server on a model repository until Ctrl-C.

  python -m serve --repository model_repository --http-port 8000 --grpc-port 8001 --metrics-port 8002
"""
from __future__ import annotations

import argparse
import signal
import sys
import time

from .server import TritonServer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default="model_repository")
    ap.add_argument("--http-port", type=int, default=8000, help="0 = pick a free port")
    ap.add_argument("--grpc-port", type=int, default=8001, help="0 = pick a free port")
    ap.add_argument("--metrics-port", type=int, default=8002, help="0 = pick a free port")
    ap.add_argument("--work-dir", default="artifacts/triton", help="backend folder and log go here")
    ap.add_argument("--log-verbose", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for the ensemble")
    a = ap.parse_args(argv)
    s = TritonServer(a.repository, a.http_port, a.grpc_port, a.metrics_port,
                     work_dir=a.work_dir, log_verbose=a.log_verbose)
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
    print(f"Triton {a.repository} ready in {time.time() - t0:.1f} s (pid {s.proc.pid})\n"
          f"  HTTP    {s.http_url}   (curl {s.http_url}/v2/models/grank)\n"
          f"  gRPC    {s.grpc_url}\n  metrics {s.metrics_url}\n  log     {s.log_file}\n"
          "Ctrl-C stops the server.", flush=True)
    while not stop["now"] and s.proc.poll() is None:
        time.sleep(0.5)
    code = s.proc.poll()
    s.stop()
    if code is not None:
        print(f"tritonserver exited on its own (code {code}); log: {s.log_file}", file=sys.stderr)
        return 1
    print("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
