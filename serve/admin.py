"""Who may manage a running server: the management key, the restricted APIs and the bind address.

Triton restricts API groups behind a header whose value the server is started with
(``--http-restricted-api`` / ``--grpc-restricted-protocol``); a call without it gets HTTP 403 or
gRPC UNAVAILABLE "This API is restricted". The groups restricted here are everything but
health, metadata and inference: loading and unloading models (the swap of
``serve.deploy``), model configs, shared-memory registration (a caller could otherwise have
results written into, or probe the names of, the host's shared memory), statistics, trace and
log settings. Metrics (their own port) stay readable for Prometheus.

The key comes from the environment (``GRANK_ADMIN_KEY``) or a file (``--admin-key-file``), is
never printed or logged, and reaches ``tritonserver`` as a command-line argument: local users of
the same host can read a process's arguments (``/proc/PID/cmdline``), so on a shared host run
the server in a container or mount ``/proc`` with ``hidepid=2``.

Torch-free: the client and the deploy command import it.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

KEY_ENV = "GRANK_ADMIN_KEY"
HEADER = "grank-admin-key"
# Triton's gRPC frontend expects restricted-protocol headers under this prefix
GRPC_PREFIX = "triton-grpc-protocol-"
RESTRICTED = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")
MIN_KEY_LENGTH = 16


def read_key(key_file: str | os.PathLike | None = None, env: dict | None = None) -> str | None:
    """The management key from ``key_file`` (its first line) or ``$GRANK_ADMIN_KEY``; None
    when neither is set. Raises ValueError for an unreadable, empty or short key."""
    env = os.environ if env is None else env
    if key_file:
        try:
            text = Path(key_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"--admin-key-file: cannot read {key_file}: {e.strerror}") from None
        key, source = (text.splitlines()[0].strip() if text else ""), f"--admin-key-file {key_file}"
    elif env.get(KEY_ENV):
        key, source = env[KEY_ENV].strip(), f"${KEY_ENV}"
    else:
        return None
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"{source}: the management key must have at least {MIN_KEY_LENGTH} characters "
                         "(e.g. `openssl rand -hex 24`)")
    if any(c in key for c in " \t,:=\"'") or not key.isprintable():
        raise ValueError(f"{source}: the management key must be printable, without spaces, "
                         "commas, colons, '=' or quotes (it travels in an HTTP header and a "
                         "Triton flag)")
    return key


def is_loopback(host: str) -> bool:
    """True when ``host`` (a name or an address) resolves to loopback addresses only."""
    try:
        addrs = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addrs = {ipaddress.ip_address(a[4][0].split("%")[0]) for a in socket.getaddrinfo(host, None)}
        except OSError:
            return False
    return bool(addrs) and all(a.is_loopback for a in addrs)


def server_flags(host: str, key: str | None) -> list[str]:
    """tritonserver flags binding HTTP, gRPC and metrics to ``host`` and, with a key,
    restricting the management APIs. Raises ValueError when ``host`` is reachable from other
    machines and there is no key."""
    flags = [f"--http-address={host}", f"--grpc-address={host}", f"--metrics-address={host}"]
    if key is None:
        if not is_loopback(host):
            raise ValueError(f"--host {host}: refusing to serve beyond loopback without a management "
                             f"key: anyone who can reach the port could load, unload or reconfigure "
                             f"models. Set ${KEY_ENV} or pass --admin-key-file (at least "
                             f"{MIN_KEY_LENGTH} characters)")
        return flags
    apis = ",".join(RESTRICTED)
    return flags + [f"--http-restricted-api={apis}:{HEADER}={key}",
                    f"--grpc-restricted-protocol={apis}:{HEADER}={key}"]


def headers(protocol: str, key: str | None) -> dict:
    """The request headers that carry ``key`` over ``protocol`` ("http" or "grpc")."""
    if key is None:
        return {}
    return {(GRPC_PREFIX + HEADER) if protocol == "grpc" else HEADER: key}


def is_restricted_error(e: Exception) -> bool:
    """Triton's answer to a restricted call made without (or with a wrong) key."""
    return "is restricted, expecting header" in str(e)


# ---- the production container (NGC tritonserver, current release) -----------------------
MAX_HTTP_INPUT_BYTES = 16 << 20  # a full batch of 256 JSON requests of 256 string ids fits

# glibc malloc settings for tritonserver and its Python backend stubs, wherever they run. By
# default glibc raises its mmap threshold to the largest block freed so far (up to 32 MB), so
# after one large request (a 10 MB body, a 2 MB request id) blocks of that size come from the
# heap and stay resident, and each of up to 8 arenas per core keeps its own free memory. A
# fixed threshold hands large blocks back to the kernel when they are freed; two arenas bound
# the rest. Measured in docs/RELIABILITY.md ("Bad input"): over eight passes of the bad-input
# suite the ML-1M server went from 706 MB after the first pass to 892 MB with glibc's defaults,
# and from 646 to 698 MB with these (the last three passes level), at the same throughput on 2
# cores (not measured on many cores, where two arenas may contend; the threshold alone keeps most
# of the effect). For python -m serve and the container command a value already in the
# environment wins; the Kubernetes Deployment sets them (kubectl set env changes them).
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}


def container_args(repository: str = "/models", key_ref: str = "${" + KEY_ENV + "}") -> list[str]:
    """tritonserver arguments for the NGC container: the same model control and restrictions
    as ``python -m serve`` (``key_ref``: how the container's shell names the key, never the
    key), plus the request-size limit that Triton >= 2.59 offers. Binds every interface (the
    container's network is what is published); the key is therefore required."""
    apis = ",".join(RESTRICTED)
    return ["tritonserver", f"--model-repository={repository}", "--model-control-mode=explicit",
            "--load-model=*", f"--http-restricted-api={apis}:{HEADER}={key_ref}",
            f"--grpc-restricted-protocol={apis}:{HEADER}={key_ref}",
            f"--http-max-input-size={MAX_HTTP_INPUT_BYTES}", "--exit-timeout-secs=30"]


def container_command(repository: str = "/models") -> str:
    """A shell command for the container that refuses to start without the key."""
    args = " ".join(container_args(repository))
    # set -f: no globbing of --load-model=*
    malloc = " ".join(f'{k}="${{{k}:-{v}}}"' for k, v in MALLOC_ENV.items())
    return (f'set -f; test ${{#{KEY_ENV}}} -ge {MIN_KEY_LENGTH} || {{ echo "{KEY_ENV}: set a management key of at '
            f'least {MIN_KEY_LENGTH} characters" >&2; exit 2; }}; export {malloc}; exec {args}')


if __name__ == "__main__":
    import sys
    if sys.argv[1:] != ["--container-command"]:
        sys.exit("usage: python -m serve.admin --container-command   (prints the NGC container's shell command)")
    print(container_command())
