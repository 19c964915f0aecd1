"""Kubernetes manifests for the production server (the NGC Triton container), from typed values.

    python -m serve.kubernetes --out deploy/kubernetes                    # the committed defaults
    python -m serve.kubernetes --out k8s --set repository.url=https://models.internal/grank-2.tar.gz \\
        --set repository.sha256=HEX --set repository.version=2
    python -m serve.kubernetes --out k8s --values values.yaml --check     # report drift, write nothing

Plain Python renders them (no helm binary is needed), following Triton's own chart
(``deploy/k8s-onprem`` of the server repository) where it fits: one Deployment of
``tritonserver``, a Service with the ports ``http`` 8000, ``grpc`` 8001 and ``metrics`` 8002, and
a HorizontalPodAutoscaler on Triton's queue time per request, served to Kubernetes by
prometheus-adapter from ``nv_inference_queue_duration_us`` and ``nv_inference_request_success``.
What differs from that chart, and why:

- the server arguments are ``serve.admin.container_args``, the ones ``make serve-container``
  runs (explicit model control, the management APIs restricted); the key reaches them through
  Kubernetes' ``$(GRANK_ADMIN_KEY)`` expansion of an environment variable filled from a Secret,
  so no manifest holds it, and an init container refuses a key that Triton would take but
  ``serve.admin`` would not;
- the model repository is built per pod into an ``emptyDir``: downloaded as a packed repository
  (``repository.source=download``, the default: built and checked once, by ``make repository``)
  or exported from a checkpoint on a volume (``build``: ``python -m export repository``, in an
  image of this project). Changing ``repository.*`` changes the pod template, so Kubernetes
  rolls the pods: that rollout is the model swap (docs/DEPLOYMENT.md);
- the adapter rule divides the queue time of all the pod's models (a request of the ensemble
  waits in its steps' queues, not in the ensemble's) by the ensemble's requests (label
  ``model``), uses ``increase`` (the series are counters: a restarted container starts them
  from zero, which ``delta`` reads as a negative change) and divides by at least one request
  (an idle pod scores 0, not NaN).

Every field of ``Values`` is listed by ``--help``; a wrong value is an error naming the field.
Torch-free.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from grank.signatures import ENSEMBLE

from .admin import KEY_ENV, MALLOC_ENV, MIN_KEY_LENGTH, container_args

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33"  # the version whose schemas (kubernetes-validate) the tests check
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's defaults: container_args keeps them
MODELS = "/models"             # the repository inside the pod (an emptyDir)
CHECKPOINTS = "/checkpoints"   # build: the checkpoint volume
ADAPTER_VALUES = "prometheus-adapter/values.yaml"


def makefile_image() -> str:
    """The Makefile's ``TRITON_IMAGE``: the container the project serves in, named once."""
    m = re.search(r"^TRITON_IMAGE \?= *(\S+)", (ROOT / "Makefile").read_text(), re.M)
    if not m:
        raise RuntimeError("Makefile: no `TRITON_IMAGE ?= ...` line; pass --set image=...")
    return m.group(1)


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


@dataclass
class Repository:
    source: str = _help("download (a packed repository from url) or build (python -m export repository "
                        "from a checkpoint on a volume)", "download")
    version: int = _help("the deployment its ensemble pins (python -m export repository --version); "
                         "pod label grank/deployment; checked when a pod starts", 1)
    url: str = _help("download: http(s) URL of a .tar.gz of a built repository (tar -C REPOSITORY .)", "")
    sha256: str = _help("download: the file's sha256, checked when set", "")
    size_limit: str = _help("the emptyDir that holds the repository", "4Gi")
    builder_image: str = _help("build: an image of this project (make setup) that runs the export", "")
    checkpoint_claim: str = _help("build: the PersistentVolumeClaim with checkpoints and the data cache",
                                  "grank-checkpoints")
    checkpoint: str = _help("build: the checkpoint, a path inside that volume", "default/grank/best.pt")
    data_cache: str = _help("build: the data-set cache (GRANK_CACHE) inside that volume: the export's "
                            "parity check replays real users", "data")


@dataclass
class Resources:
    cpu: str = _help("CPU request and limit of the server", "2")
    memory: str = _help("memory request and limit of the server (shm counts against it)", "4Gi")
    gpus: int = _help("nvidia.com/gpu per pod; 0 serves on the CPU", 1)
    shm: str = _help("/dev/shm (memory-backed) for the Python backend's tensors", "1Gi")


@dataclass
class Autoscaling:
    enabled: bool = _help("render the HorizontalPodAutoscaler and the prometheus-adapter values", True)
    max_replicas: int = _help("most pods the autoscaler runs", 8)
    target_queue_us: int = _help("target of the time a request waits in the ensemble's queues (its steps' "
                                 "summed), microseconds, averaged over pods (docs/DEPLOYMENT.md: sizing)", 1200)
    window: str = _help("Prometheus range of the adapter query", "1m")
    metric: str = _help("the custom metric's name, as the adapter serves it", "avg_time_queue_us")


@dataclass
class Rollout:
    prestop_s: int = _help("seconds a stopping pod keeps serving while it leaves the Service", 10)
    startup_timeout_s: int = _help("longest model load before the pod is restarted", 300)
    min_ready_s: int = _help("seconds a new pod stays ready before the rollout goes on", 10)


@dataclass
class Prometheus:
    namespace: str = _help("the namespace of Prometheus and the adapter (admitted to the metrics port)",
                           "monitoring")
    url: str = _help("Prometheus as the adapter reaches it", "http://prometheus-operated.monitoring.svc")
    port: int = _help("its port", 9090)
    annotations: bool = _help("prometheus.io/scrape annotations on the pods", True)
    service_monitor: bool = _help("render a ServiceMonitor (Prometheus Operator)", False)


@dataclass
class Values:
    name: str = _help("name of every resource and the app label", ENSEMBLE)
    namespace: str = _help("namespace of the server's resources", "grank")
    image: str = field(default_factory=makefile_image,
                       metadata={"help": "the Triton container (Makefile TRITON_IMAGE)"})
    replicas: int = _help("pods: the fixed count, or the autoscaler's minimum", 2)
    admin_secret: str = _help("the Secret holding the management key", "grank-admin")
    admin_secret_key: str = _help("the key of that Secret", "key")
    network_policy: bool = _help("admit only Prometheus' namespace to the metrics port", True)
    repository: Repository = field(default_factory=Repository)
    resources: Resources = field(default_factory=Resources)
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    rollout: Rollout = field(default_factory=Rollout)
    prometheus: Prometheus = field(default_factory=Prometheus)


# ---- values: overrides and checks -------------------------------------------------------
def fields_of(v=None, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every leaf field by dotted name (``repository.url``)."""
    out = {}
    for f in dataclasses.fields(v or Values):
        if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            out.update(fields_of(f.default_factory, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f
    return out


def get(v: Values, key: str):
    """The value at a dotted key."""
    for part in key.split("."):
        v = getattr(v, part)
    return v


def _coerce(key: str, current, value):
    typ = type(current)
    if isinstance(value, str) and typ is not str:
        if typ is bool:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{key}: expected true or false, got {value!r}")
            return value.lower() == "true"
        try:
            return typ(value)
        except ValueError:
            raise ValueError(f"{key}: expected {typ.__name__}, got {value!r}") from None
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ValueError(f"{key}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def flatten(mapping: dict, prefix: str = "") -> dict:
    """A nested values file (``{"repository": {"url": ...}}``) as dotted keys."""
    out = {}
    for k, v in mapping.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + str(k): v})
    return out


def make_values(overrides: dict | None = None) -> Values:
    """``Values`` with dotted overrides applied and checked (ValueError naming the field)."""
    v, known = Values(), fields_of()
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ValueError(f"{key}: unknown value; known: {', '.join(known)}")
        *path, leaf = key.split(".")
        obj = v
        for p in path:
            obj = getattr(obj, p)
        setattr(obj, leaf, _coerce(key, getattr(obj, leaf), value))
    check(v)
    return v


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
CPU = re.compile(r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$")
MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
DURATION = re.compile(r"^[0-9]+[smh]$")


def check(v: Values) -> None:
    r, a, o = v.repository, v.autoscaling, v.rollout
    rules = [
        ("name", DNS_LABEL.match(v.name), "a DNS label (lowercase letters, digits, '-')"),
        ("namespace", DNS_LABEL.match(v.namespace), "a DNS label"),
        ("prometheus.namespace", DNS_LABEL.match(v.prometheus.namespace), "a DNS label"),
        ("admin_secret", DNS_LABEL.match(v.admin_secret), "a Secret name (DNS label)"),
        ("admin_secret_key", re.match(r"^[-._a-zA-Z0-9]+$", v.admin_secret_key), "a Secret key"),
        ("image", v.image and not any(c.isspace() for c in v.image), "an image reference"),
        ("replicas", v.replicas >= 1, ">= 1"),
        ("resources.cpu", CPU.match(v.resources.cpu), "a CPU quantity (2, 1.5, 500m)"),
        ("resources.memory", MEMORY.match(v.resources.memory), "a memory quantity (4Gi, 512Mi)"),
        ("resources.shm", MEMORY.match(v.resources.shm), "a memory quantity"),
        ("resources.gpus", v.resources.gpus >= 0, ">= 0"),
        ("repository.source", r.source in ("download", "build"), "download or build"),
        ("repository.version", r.version >= 1, ">= 1"),
        ("repository.url", not r.url or re.match(r"^https?://[^\s]+$", r.url), "an http:// or https:// URL"),
        ("repository.sha256", not r.sha256 or re.match(r"^[0-9a-f]{64}$", r.sha256), "64 lowercase hex digits"),
        ("repository.size_limit", MEMORY.match(r.size_limit), "a quantity (4Gi)"),
        ("repository.builder_image", r.source != "build" or r.builder_image,
         "set for source=build (an image of this project)"),
        ("repository.checkpoint_claim", r.source != "build" or DNS_LABEL.match(r.checkpoint_claim),
         "a PersistentVolumeClaim name"),
        ("repository.checkpoint", not r.checkpoint.startswith("/") and ".." not in r.checkpoint.split("/"),
         "a relative path inside the checkpoint volume"),
        ("repository.data_cache", not r.data_cache.startswith("/") and ".." not in r.data_cache.split("/"),
         "a relative path inside the checkpoint volume"),
        ("autoscaling.max_replicas", not a.enabled or a.max_replicas >= v.replicas, f">= replicas ({v.replicas})"),
        ("autoscaling.target_queue_us", a.target_queue_us > 0, "> 0"),
        ("autoscaling.window", DURATION.match(a.window), "a Prometheus duration (30s, 1m)"),
        ("autoscaling.metric", re.match(r"^[a-z_][a-z0-9_]*$", a.metric), "a metric name"),
        ("rollout.prestop_s", o.prestop_s >= 0, ">= 0"),
        ("rollout.startup_timeout_s", o.startup_timeout_s >= 10, ">= 10"),
        ("rollout.min_ready_s", o.min_ready_s >= 0, ">= 0"),
        ("prometheus.url", re.match(r"^https?://[^\s]+$", v.prometheus.url), "an http:// or https:// URL"),
        ("prometheus.port", 0 < v.prometheus.port < 65536, "a port"),
    ]
    for key, ok, want in rules:
        if not ok:
            raise ValueError(f"{key}: expected {want}, got {get(v, key)!r}")


# ---- what runs in the pods --------------------------------------------------------------
FORBIDDEN_KEY_CHARS = " \t,:=\"'"  # serve.admin.read_key refuses these (a header value and a flag)
KEY_CHECK = f"""import os, sys
key = os.environ.get("{KEY_ENV}", "")
if len(key) < {MIN_KEY_LENGTH} or not key.isprintable() or set(key) & set({FORBIDDEN_KEY_CHARS!r}):
    sys.exit("{KEY_ENV} (Secret " + sys.argv[1] + "): the management key must have at least {MIN_KEY_LENGTH} "
             "printable characters, without spaces, newlines, commas, colons, '=' or quotes "
             "(kubectl create secret generic ... --from-literal=KEY=...)")
"""

FETCH = r"""import hashlib, re, shutil, sys, tarfile, urllib.request
from pathlib import Path
url, sha256, version, ensemble, dest = sys.argv[1:]
where = url.split("?")[0]
if not url:
    sys.exit("repository.url is not set: render the manifests with --set repository.url=URL of a "
             "packed model repository (docs/DEPLOYMENT.md)")
dest = Path(dest)
for p in dest.iterdir():  # what an earlier, failed start left
    shutil.rmtree(p) if p.is_dir() else p.unlink()
part, digest = dest / ".download.tar.gz", hashlib.sha256()
with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
    for chunk in iter(lambda: r.read(1 << 20), b""):
        digest.update(chunk)
        f.write(chunk)
if sha256 and digest.hexdigest() != sha256:
    sys.exit(f"repository.sha256: {where} has sha256 {digest.hexdigest()}, expected {sha256}")
with tarfile.open(part) as t:
    t.extractall(dest, filter="data")
part.unlink()
config = dest / ensemble / "config.pbtxt"
if not config.is_file():
    sys.exit(f"repository.url: {where} has no {ensemble}/config.pbtxt at its root (pack with tar -C REPOSITORY .)")
pins = sorted(set(re.findall(r"model_version: (-?\d+)", config.read_text())))
if pins != [version]:
    sys.exit(f"repository.version: {where} pins version {', '.join(pins)}, the manifests say {version} "
             f"(build it with python -m export repository --version {version})")
models = sorted(p.name for p in dest.iterdir() if p.is_dir())
print(f"model repository version {version} from {where} (sha256 {digest.hexdigest()}): {', '.join(models)}")
"""


def server_args() -> list[str]:
    """``tritonserver`` and its arguments: ``serve.admin.container_args`` with the key as
    Kubernetes' ``$(VAR)`` reference (expanded by the kubelet, never written down)."""
    return container_args(MODELS, key_ref=f"$({KEY_ENV})")


def exit_timeout_s() -> int:
    """Triton's own drain time on SIGTERM (``--exit-timeout-secs`` of the server args)."""
    return int(next(a.split("=", 1)[1] for a in server_args() if a.startswith("--exit-timeout-secs=")))


def labels(v: Values) -> dict:
    return {"app.kubernetes.io/name": ENSEMBLE, "app.kubernetes.io/instance": v.name}


def _meta(v: Values) -> dict:
    return {"name": v.name, "namespace": v.namespace,
            "labels": {**labels(v), "app.kubernetes.io/component": "triton"}}


def _key_env(v: Values) -> list[dict]:
    return [{"name": KEY_ENV, "valueFrom": {"secretKeyRef": {"name": v.admin_secret, "key": v.admin_secret_key}}}]


RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def init_containers(v: Values) -> list[dict]:
    r = v.repository
    models = {"name": "models", "mountPath": MODELS}
    check_key = {"name": "check-key", "image": v.image, "command": ["python3", "-c", KEY_CHECK, v.admin_secret],
                 "env": _key_env(v), "securityContext": RESTRICTED_CONTAINER}
    if r.source == "download":
        get = {"name": "fetch-repository", "image": v.image,
               "command": ["python3", "-c", FETCH, r.url, r.sha256, str(r.version), ENSEMBLE, MODELS],
               "volumeMounts": [models]}
    else:
        get = {"name": "build-repository", "image": r.builder_image,
               "command": ["python", "-m", "export", "repository", "--checkpoint", f"{CHECKPOINTS}/{r.checkpoint}",
                           "--out", "/tmp/export", "--repository", MODELS, "--version", str(r.version)],
               "env": [{"name": "GRANK_CACHE", "value": f"{CHECKPOINTS}/{r.data_cache}"}],
               "volumeMounts": [models, {"name": "checkpoints", "mountPath": CHECKPOINTS, "readOnly": True}]}
    # the server's CPU and memory: the pod stays in the Guaranteed QoS class
    res = {"requests": {"cpu": v.resources.cpu, "memory": v.resources.memory},
           "limits": {"cpu": v.resources.cpu, "memory": v.resources.memory}}
    return [{**check_key, "resources": res}, {**get, "resources": res, "securityContext": RESTRICTED_CONTAINER}]


def _probe(path: str, period: int, failures: int, timeout: int) -> dict:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "failureThreshold": failures, "timeoutSeconds": timeout}


def deployment(v: Values) -> dict:
    o, r, res = v.rollout, v.repository, v.resources
    limits = {"cpu": res.cpu, "memory": res.memory, **({"nvidia.com/gpu": res.gpus} if res.gpus else {})}
    server = {
        "name": "triton", "image": v.image, "args": server_args(),
        "env": _key_env(v) + [{"name": k, "value": val} for k, val in MALLOC_ENV.items()],
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in PORTS.items()],
        # models load before the other probes start: up to startup_timeout_s
        "startupProbe": _probe("/v2/health/ready", 10, math.ceil(o.startup_timeout_s / 10), 5),
        "readinessProbe": _probe("/v2/health/ready", 5, 3, 5),
        "livenessProbe": _probe("/v2/health/live", 10, 3, 5),
        # leave the Service's endpoints before SIGTERM; Triton then drains for --exit-timeout-secs
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(o.prestop_s)]}}},
        "resources": {"requests": {"cpu": res.cpu, "memory": res.memory}, "limits": limits},
        "volumeMounts": [{"name": "models", "mountPath": MODELS, "readOnly": True},
                         {"name": "shm", "mountPath": "/dev/shm"}],
        "securityContext": RESTRICTED_CONTAINER,
    }
    volumes = [{"name": "models", "emptyDir": {"sizeLimit": r.size_limit}},
               {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm}}]
    if r.source == "build":
        volumes.append({"name": "checkpoints",
                        "persistentVolumeClaim": {"claimName": r.checkpoint_claim, "readOnly": True}})
    annotations = ({"prometheus.io/scrape": "true", "prometheus.io/port": str(PORTS["metrics"]),
                    "prometheus.io/path": "/metrics"} if v.prometheus.annotations else {})
    pod = {
        "metadata": {"labels": {**labels(v), "grank/deployment": str(r.version)},
                     **({"annotations": annotations} if annotations else {})},
        "spec": {
            "automountServiceAccountToken": False, "enableServiceLinks": False,
            "terminationGracePeriodSeconds": o.prestop_s + exit_timeout_s() + 5,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": init_containers(v), "containers": [server], "volumes": volumes,
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                           "whenUnsatisfiable": "ScheduleAnyway",
                                           "labelSelector": {"matchLabels": labels(v)}}],
            **({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
               if res.gpus else {}),
        },
    }
    spec = {
        # with the autoscaler on, it owns the count: an apply must not reset it
        **({} if v.autoscaling.enabled else {"replicas": v.replicas}),
        "selector": {"matchLabels": labels(v)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "minReadySeconds": o.min_ready_s,
        "progressDeadlineSeconds": o.startup_timeout_s + 300,
        "revisionHistoryLimit": 5,
        "template": pod,
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(v), "spec": spec}


def service(v: Values) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(v),
            "spec": {"type": "ClusterIP", "selector": labels(v),
                     "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in PORTS.items()]}}


def hpa(v: Values) -> dict:
    a = v.autoscaling
    metric = {"type": "Pods", "pods": {"metric": {"name": a.metric},
                                       "target": {"type": "AverageValue", "averageValue": str(a.target_queue_us)}}}
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(v),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": v.name},
                     "minReplicas": v.replicas, "maxReplicas": a.max_replicas, "metrics": [metric],
                     "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}}}


def pdb(v: Values) -> dict:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(v),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(v)}}}


def network_policy(v: Values) -> dict:
    from_prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": v.prometheus.namespace}}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(v),
            "spec": {"podSelector": {"matchLabels": labels(v)}, "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]},
                                 {"from": [from_prometheus], "ports": [{"port": "metrics", "protocol": "TCP"}]}]}}


def service_monitor(v: Values) -> dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": _meta(v),
            "spec": {"selector": {"matchLabels": labels(v)}, "endpoints": [{"port": "metrics", "interval": "15s"}]}}


def adapter_rule(v: Values) -> dict:
    """The prometheus-adapter rule serving ``autoscaling.metric`` per pod: the time a request
    of the ensemble waited in queues over ``window``, summed over its steps. The ensemble's own
    queue series stays near zero (its scheduler hands a request to the first step at once; the
    wait is in the steps' queues), so the numerator takes every model of the pod and the
    denominator the ensemble's requests."""
    a, ens = v.autoscaling, f'model="{ENSEMBLE}"'
    per_pod = "sum(increase({}{{<<.LabelMatchers>>{}}}[%s])) by (<<.GroupBy>>)" % a.window
    return {"seriesQuery": f'nv_inference_queue_duration_us{{namespace="{v.namespace}",pod!="",{ens}}}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
            "name": {"matches": "^nv_inference_queue_duration_us$", "as": a.metric},
            "metricsQuery": per_pod.format("nv_inference_queue_duration_us", "") + " / clamp_min("
                            + per_pod.format("nv_inference_request_success", "," + ens) + ", 1)"}


def adapter_values(v: Values) -> dict:
    """Values of the prometheus-community/prometheus-adapter chart."""
    return {"prometheus": {"url": v.prometheus.url, "port": v.prometheus.port},
            "rules": {"custom": [adapter_rule(v)]}}


# ---- rendering --------------------------------------------------------------------------
def manifests(v: Values) -> dict[str, dict]:
    """File name -> document: the resources to apply, and the adapter's values."""
    out = {"deployment.yaml": deployment(v), "service.yaml": service(v), "pdb.yaml": pdb(v)}
    if v.autoscaling.enabled:
        out["hpa.yaml"] = hpa(v)
        out[ADAPTER_VALUES] = adapter_values(v)
    if v.network_policy:
        out["networkpolicy.yaml"] = network_policy(v)
    if v.prometheus.service_monitor:
        out["servicemonitor.yaml"] = service_monitor(v)
    return out


ALL_FILES = ("deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml", "networkpolicy.yaml",
             "servicemonitor.yaml", ADAPTER_VALUES)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s,
                                                             style="|" if "\n" in s else None))


def changed(v: Values) -> list[str]:
    """``key=value`` for every value that differs from its default."""
    base = make_values()
    return [f"{k}={get(v, k)}" for k in fields_of() if get(v, k) != get(base, k)]


def render(v: Values) -> dict[str, str]:
    """File name -> YAML text."""
    what = ", ".join(changed(v)) or "the defaults"
    head = (f"# Generated by `python -m serve.kubernetes` (make kubernetes) from its values: {what}.\n"
            "# Do not edit: change a value and render again (docs/DEPLOYMENT.md).\n")
    return {name: head + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=240)
            for name, doc in manifests(v).items()}


def drift(v: Values, out: Path) -> list[str]:
    """Files in ``out`` that differ from what ``v`` renders, or should not be there."""
    files = render(v)
    bad = [n for n, text in files.items() if not (out / n).is_file() or (out / n).read_text() != text]
    return bad + [n for n in ALL_FILES if n not in files and (out / n).exists()]


def write(v: Values, out: Path) -> list[Path]:
    files = render(v)
    for n in ALL_FILES:  # only files this module writes: others in ``out`` stay
        if n not in files and (out / n).exists():
            (out / n).unlink()
    paths = []
    for n, text in files.items():
        p = out / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        paths.append(p)
    return paths


def validate(v: Values, version: str = KUBERNETES_VERSION) -> list[str]:
    """kubernetes-validate (strict) on every resource; problems as text (empty: valid).
    Custom resources (ServiceMonitor) have no schema there and are skipped."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError
    problems = []
    for name, doc in manifests(v).items():
        if name == ADAPTER_VALUES:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except SchemaNotFoundError:
            continue
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
    return problems


def _override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expects key=value (e.g. repository.version=2), got {text!r}")
    return tuple(text.split("=", 1))


def main(argv=None) -> int:
    base = make_values()
    listing = "\n".join(f"  {k:30s} {f.metadata['help']} (default: {get(base, k)!r})" for k, f in fields_of().items())
    ap = argparse.ArgumentParser(prog="python -m serve.kubernetes", description=__doc__,
                                 epilog="values (--set KEY=VALUE, or nested in --values FILE):\n" + listing,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(COMMITTED.relative_to(ROOT)), help="folder for the manifests")
    ap.add_argument("--values", default=None, metavar="FILE", help="a YAML file of values (nested mappings)")
    ap.add_argument("--set", action="append", type=_override, default=[], metavar="KEY=VALUE",
                    help="one value (repeatable; after --values)")
    ap.add_argument("--check", action="store_true", help="only report files that differ; exit 1 if any")
    ap.add_argument("--kubernetes-version", default=KUBERNETES_VERSION,
                    help="validate against this version's schemas (kubernetes-validate, strict)")
    a = ap.parse_args(argv)
    try:
        overrides = {}
        if a.values:
            loaded = yaml.safe_load(Path(a.values).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"--values {a.values}: expected a mapping of values")
            overrides.update(flatten(loaded))
        overrides.update(dict(a.set))
        v = make_values(overrides)
    except (ValueError, OSError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    if a.check:
        bad = drift(v, out)
        print("manifests up to date" if not bad else f"differ from the values: {', '.join(bad)}")
        return 1 if bad else 0
    problems = validate(v, a.kubernetes_version)
    if problems:
        print("error: invalid manifests (kubernetes-validate, strict, Kubernetes "
              f"{a.kubernetes_version}):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    for p in write(v, out):
        print("wrote", p)
    print(f"valid for Kubernetes {a.kubernetes_version} (kubernetes-validate, strict)")
    if v.repository.source == "download" and not v.repository.url:
        print("note: repository.url is not set; the pods will not start until it is "
              "(--set repository.url=..., docs/DEPLOYMENT.md)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
