"""Start and stop a real Triton Inference Server 2.51 from the ``nvidia-pytriton`` wheel.

Only the wheel's binary is used (not pytriton's Python API). ``prepare_backends`` builds a
backend directory (``artifacts/triton/backends`` by default):
- ``python/``: the wheel's Python backend library and utils, plus the stub matching this
  interpreter (the wheel ships one per Python version; site-packages is never modified). The
  stub ignores PYTHONPATH (isolated embedded Python), so ``triton_python_backend_utils.py`` is
  a shim that puts this venv first, checks numpy < 2, then runs the wheel's module
  (``backends/python_utils_shim.py``);
- ``onnxruntime/model.py``: our Python-based ``onnxruntime`` backend (see its docstring).
The server runs with PYTHONPATH = this venv's site-packages (numpy < 2, onnxruntime) and
LD_LIBRARY_PATH = the wheel's bundled libraries + this interpreter's libpython.

The server binds ``host`` (loopback by default; ``serve.admin`` refuses anything wider without
a management key, and with a key restricts the management APIs). Models are loaded in explicit
model-control mode (all of them at start), so that ``serve.deploy`` can swap model versions
while serving; which versions load is what the configs on disk say.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from grank.signatures import ENSEMBLE

from .admin import MALLOC_ENV, is_loopback, server_flags

HERE = Path(__file__).resolve().parent
# Harmless on a CPU machine (ENVIRONMENT.md); filtered out of the log excerpt shown on failure.
CPU_NOISE = ("CudaDriverHelper", "CUDA driver version is insufficient", "DCGM", "unable to create stream")


def _wheel() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: run `make setup` "
                           "(pip install --no-deps nvidia-pytriton==0.7.0)")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise RuntimeError(f"{root}/bin/tritonserver missing: reinstall nvidia-pytriton==0.7.0")
    return root


def _copy(src: Path, dst: Path) -> None:
    """copy2 unless ``dst`` is already that file: a stub still running from a server that
    just died cannot be overwritten ("Text file busy"), and need not be."""
    if dst.exists() and (dst.stat().st_size, int(dst.stat().st_mtime)) == (src.stat().st_size, int(src.stat().st_mtime)):
        return
    shutil.copy2(src, dst)


def prepare_backends(dest: Path) -> Path:
    """Build the backend directory in ``dest`` (idempotent, cheap); returns it."""
    wheel = _wheel()
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    _copy(wheel / "backends" / "python" / "libtriton_python.so", py / "libtriton_python.so")
    _copy(wheel / "backends" / "python" / "triton_python_backend_utils.py",
          py / "triton_python_backend_utils_wheel.py")
    _copy(HERE / "backends" / "python_utils_shim.py", py / "triton_python_backend_utils.py")
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = wheel / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"the pytriton wheel has no Python backend stub for Python {ver}")
    _copy(stub, py / "triton_python_backend_stub")
    ort = dest / "onnxruntime"
    ort.mkdir(parents=True, exist_ok=True)
    _copy(HERE / "backends" / "onnxruntime" / "model.py", ort / "model.py")
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict:
    wheel = _wheel()
    env = dict(os.environ)
    site = sysconfig.get_paths()["purelib"]
    libs = [str(wheel.parent.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env["PYTHONPATH"] = os.pathsep.join([site] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")  # Triton runs several model instances side by side
    for k, v in MALLOC_ENV.items():     # memory returns after large requests (serve.admin)
        env.setdefault(k, v)
    return env


@dataclass
class TritonServer:
    """A tritonserver process serving ``repository``. Ports of 0 are replaced by free ones.

    >>> with TritonServer("model_repository") as s:   # doctest: +SKIP
    ...     print(s.grpc_url)
    """
    repository: Path
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    log_file: Path | None = None
    work_dir: Path = Path("artifacts/triton")
    log_verbose: int = 0
    extra_args: list = field(default_factory=list)
    host: str = "127.0.0.1"   # HTTP, gRPC and metrics bind here
    admin_key: str | None = field(default=None, repr=False)  # never shown
    proc: subprocess.Popen | None = None

    def __post_init__(self):
        self.repository = Path(self.repository).resolve()
        self.work_dir = Path(self.work_dir)
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        self.log_file = Path(self.log_file or self.work_dir / "tritonserver.log")
        self.flags = server_flags(self.host, self.admin_key)  # refuses an exposed key-less server

    @property
    def local_host(self) -> str:
        """Where this machine reaches the server: a wildcard or loopback bind via localhost."""
        return "localhost" if self.host in ("0.0.0.0", "::") or is_loopback(self.host) else self.host

    @property
    def http_url(self) -> str:
        return f"{self.local_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.local_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.local_host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        return [str(_wheel() / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={(self.work_dir / 'backends').resolve()}",
                f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                f"--metrics-port={self.metrics_port}", f"--log-verbose={self.log_verbose}",
                "--exit-on-error=true", "--model-control-mode=explicit", "--load-model=*",
                # in-flight requests finish in milliseconds; one stuck in a dead Python stub
                # would otherwise hold a shutdown for Triton's default 30 s
                "--exit-timeout-secs=10",
                *self.flags, *self.extra_args]

    def start(self, ready_model: str | None = ENSEMBLE, timeout: float = 180.0) -> "TritonServer":
        """Start the server and wait until ``ready_model`` (or the server) is ready."""
        if not self.repository.is_dir():
            raise RuntimeError(f"model repository {self.repository} does not exist: run `make repository`")
        prepare_backends(self.work_dir / "backends")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "w")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     env=server_env(), start_new_session=True)
        log.close()
        path = f"/v2/models/{ready_model}/ready" if ready_model else "/v2/health/ready"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"tritonserver exited with code {self.proc.returncode} during start-up")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        self._fail(f"{ready_model or 'server'} not ready after {timeout:.0f} s")

    def _fail(self, why: str):
        lines = [ln for ln in self.log_tail(400).splitlines() if not any(n in ln for n in CPU_NOISE)]
        errors = [ln[:1500] for ln in lines if ln.startswith("E") or "UNAVAILABLE" in ln]
        raise RuntimeError(f"{why}; errors from the log {self.log_file}:\n"
                           + "\n".join((errors or lines)[-30:]))

    def log_tail(self, n: int = 50) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT by pid (Triton then unloads models and exits), SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own process group: the stubs go too
            self.proc.wait(5)

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()
