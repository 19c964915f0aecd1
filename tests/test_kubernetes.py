"""Kubernetes manifests (``serve.kubernetes``): committed and rendered alike, valid against the
schemas of a named Kubernetes version (kubernetes-validate, strict), wired together (probes,
Service and NetworkPolicy ports resolve to the container's named ports; the autoscaler's metric
is the adapter rule's), the server started as ``serve.admin.container_args`` says with the key
from a Secret only, the pods' own scripts run here, and the adapter's source series present in
the metrics of a real Triton server."""
import re
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from grank.signatures import ENSEMBLE
from serve import admin
from serve import kubernetes as k8s

VERSIONS = (k8s.KUBERNETES_VERSION, latest_version())  # the named one and the newest shipped
VARIANTS = {  # value sets whose manifests differ in shape
    "defaults": {},
    "build": {"repository.source": "build", "repository.builder_image": "registry.example/grank:1"},
    "cpu, fixed count": {"resources.gpus": 0, "autoscaling.enabled": False, "network_policy": False},
    "operator": {"prometheus.service_monitor": True, "prometheus.annotations": False},
}
KEY = "k8s-test-key-0123456789abcdef"


def docs(overrides=None) -> dict:
    return k8s.manifests(k8s.make_values(overrides))


def server(d: dict) -> dict:
    return d["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]


def init(d: dict, name: str) -> dict:
    return next(c for c in d["deployment.yaml"]["spec"]["template"]["spec"]["initContainers"] if c["name"] == name)


def test_committed_manifests_have_not_drifted():
    """Fails when the values' defaults or the renderer change without `make kubernetes`."""
    assert k8s.drift(k8s.make_values(), k8s.COMMITTED) == []
    on_disk = sorted(str(p.relative_to(k8s.COMMITTED)) for p in k8s.COMMITTED.rglob("*.yaml"))
    assert on_disk == sorted(k8s.render(k8s.make_values()))


@pytest.mark.parametrize("version", VERSIONS)
def test_committed_manifests_validate_strictly(version):
    """What `kubectl apply -f deploy/kubernetes/` reads: every resource of every file."""
    resources = [d for p in sorted(k8s.COMMITTED.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    assert {d["kind"] for d in resources} == {"Deployment", "Service", "HorizontalPodAutoscaler",
                                              "PodDisruptionBudget", "NetworkPolicy"}
    for d in resources:
        assert kubernetes_validate.validate(d, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_validates_strictly(variant, version):
    for name, d in docs(VARIANTS[variant]).items():
        if name == k8s.ADAPTER_VALUES:
            continue
        if d["kind"] == "ServiceMonitor":  # a custom resource: no schema ships for it
            with pytest.raises(SchemaNotFoundError):
                kubernetes_validate.validate(d, version, strict=True)
            continue
        assert kubernetes_validate.validate(d, version, strict=True), name
    assert k8s.validate(k8s.make_values(VARIANTS[variant]), version) == []


def test_a_wrong_manifest_is_caught():
    """The strict check is not a formality: an unknown field fails it."""
    d = docs()["deployment.yaml"]
    d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["prot"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(d, k8s.KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_and_ports_resolve_to_the_containers_named_ports(variant):
    d = docs(VARIANTS[variant])
    c = server(d)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert not [a for a in c["args"] if re.match(r"--(http|grpc|metrics)-port", a)]  # Triton's defaults hold
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # models load slowly: the startup probe allows startup_timeout_s before liveness applies
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 300
    svc = d["service.yaml"]["spec"]
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["ports"]} == \
        {("http", 8000, "http"), ("grpc", 8001, "grpc"), ("metrics", 8002, "metrics")}
    pod_labels = d["deployment.yaml"]["spec"]["template"]["metadata"]["labels"]
    for selector in (svc["selector"], d["deployment.yaml"]["spec"]["selector"]["matchLabels"],
                     d["pdb.yaml"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    if "networkpolicy.yaml" in d:
        rules = d["networkpolicy.yaml"]["spec"]["ingress"]
        assert {p["port"] for r in rules for p in r["ports"]} == set(ports)
        metrics = next(r for r in rules if r["ports"][0]["port"] == "metrics")
        assert metrics["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    ann = d["deployment.yaml"]["spec"]["template"]["metadata"].get("annotations", {})
    if ann:
        assert ann["prometheus.io/port"] == str(ports["metrics"])
    if "servicemonitor.yaml" in d:
        sm = d["servicemonitor.yaml"]["spec"]
        assert sm["selector"]["matchLabels"].items() <= d["service.yaml"]["metadata"]["labels"].items()
        assert sm["endpoints"][0]["port"] in {p["name"] for p in svc["ports"]}


def test_server_args_are_serve_admin_container_args():
    c = server(docs())
    assert c["image"] == k8s.makefile_image() == "nvcr.io/nvidia/tritonserver:26.09-py3"
    assert c["args"] == admin.container_args("/models", key_ref="$(GRANK_ADMIN_KEY)")
    assert "--model-control-mode=explicit" in c["args"] and "--load-model=*" in c["args"]
    apis = ",".join(admin.RESTRICTED)
    assert f"--http-restricted-api={apis}:{admin.HEADER}=$(GRANK_ADMIN_KEY)" in c["args"]
    assert f"--grpc-restricted-protocol={apis}:{admin.HEADER}=$(GRANK_ADMIN_KEY)" in c["args"]
    assert {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}["/models"] is True


def test_every_way_of_running_the_server_uses_the_same_malloc_settings(monkeypatch):
    from serve.server import server_env
    c = server(docs())
    assert {e["name"]: e["value"] for e in c["env"] if "value" in e} == admin.MALLOC_ENV
    for k, v in admin.MALLOC_ENV.items():
        monkeypatch.delenv(k, raising=False)
        assert server_env()[k] == v                                         # python -m serve
        assert f'{k}="${{{k}:-{v}}}"' in admin.container_command()           # the container
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert server_env()["MALLOC_ARENA_MAX"] == "8"                          # the operator's value wins


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_key_comes_from_the_secret_and_is_never_written(variant, monkeypatch):
    monkeypatch.setenv(admin.KEY_ENV, KEY)  # a key in the renderer's environment must not leak
    v = k8s.make_values(VARIANTS[variant])
    text = "".join(k8s.render(v).values())
    assert KEY not in text
    d = k8s.manifests(v)
    from_secret = [{"name": "GRANK_ADMIN_KEY", "valueFrom": {"secretKeyRef": {"name": "grank-admin", "key": "key"}}}]
    c = server(d)
    assert [e for e in c["env"] if "valueFrom" in e] == from_secret and init(d, "check-key")["env"] == from_secret
    # Kubernetes expands $(VAR) of the container's own variables only: each reference names one
    pod = d["deployment.yaml"]["spec"]["template"]["spec"]
    for container in pod["containers"] + pod["initContainers"]:
        words = container.get("args", []) + container.get("command", [])
        refs = {r for w in words for r in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", w)}
        assert refs <= {e["name"] for e in container.get("env", [])}, container["name"]
    assert sum("$(GRANK_ADMIN_KEY)" in a for a in c["args"]) == 2
    # nothing else carries a header value
    assert all(a.endswith(f"{admin.HEADER}=$(GRANK_ADMIN_KEY)") for a in c["args"] if admin.HEADER in a)


@pytest.mark.parametrize("key", ["x" * 15, "x" * 16, KEY, KEY + ",", KEY + ":", "a b" * 8, KEY + "=",
                                 KEY + '"', KEY + "\n", "\u00e9" * 16 + "\x07"])
def test_the_pods_key_check_agrees_with_serve_admin(key, monkeypatch):
    """The init container refuses what ``serve.admin.read_key`` refuses, and a trailing newline
    (the value reaches Triton unstripped)."""
    monkeypatch.setenv(admin.KEY_ENV, key)
    monkeypatch.setattr(sys, "argv", ["-c", "grank-admin"])
    try:
        admin.read_key(env={admin.KEY_ENV: key})
        accepted = key == key.strip()
    except ValueError:
        accepted = False
    try:
        exec(compile(k8s.KEY_CHECK, "check-key", "exec"), {})
        passed = True
    except SystemExit as e:
        passed = False
        assert "Secret grank-admin" in str(e.code)
    assert passed == accepted


@pytest.fixture(scope="module")
def packed(tmp_path_factory, tiny_repository):
    """The tiny repository packed as `make repository` output is packed for download."""
    path = tmp_path_factory.mktemp("packed") / "repository.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        for p in sorted(Path(tiny_repository).iterdir()):
            t.add(p, arcname=p.name)
    import hashlib
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch(d: dict, dest: Path, url: str, sha256: str, version: str = "1"):
    """The rendered fetch container's command, run here with this interpreter."""
    cmd = init(d, "fetch-repository")["command"]
    assert cmd[:2] == ["python3", "-c"] and cmd[4:] == ["", "1", ENSEMBLE, "/models"]
    dest.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-c", cmd[2], url, sha256, version, ENSEMBLE, str(dest)],
                          capture_output=True, text=True, timeout=60)


def test_the_fetch_container_unpacks_and_checks_the_repository(packed, tmp_path, tiny_repository):
    d, (path, sha) = docs(), packed
    url = path.as_uri()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "stale").write_text("left by a failed start")
    r = _fetch(d, tmp_path / "m", url, sha)
    assert r.returncode == 0, r.stderr
    assert "model repository version 1" in r.stdout
    got = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert got == sorted(p.name for p in Path(tiny_repository).iterdir())  # and nothing else
    assert (tmp_path / "m" / ENSEMBLE / "config.pbtxt").read_text() == \
        (Path(tiny_repository) / ENSEMBLE / "config.pbtxt").read_text()
    for args, field in [((url, "0" * 64), "repository.sha256"), ((url, sha, "2"), "repository.version"),
                        (("", ""), "repository.url")]:
        r = _fetch(d, tmp_path / "bad", *args)
        assert r.returncode != 0 and field in r.stderr, r.stderr


def test_build_mode_runs_the_export_from_the_checkpoint_volume():
    d = docs(VARIANTS["build"] | {"repository.version": 3})
    c = init(d, "build-repository")
    assert c["image"] == "registry.example/grank:1"
    assert c["command"][:4] == ["python", "-m", "export", "repository"]
    from export.__main__ import main
    with pytest.raises(SystemExit) as e:  # every flag exists: parse only
        main(c["command"][3:] + ["--help"])
    assert e.value.code == 0
    args = dict(zip(c["command"][4::2], c["command"][5::2]))
    assert args == {"--checkpoint": "/checkpoints/default/grank/best.pt", "--out": "/tmp/export",
                    "--repository": "/models", "--version": "3"}
    assert c["env"] == [{"name": "GRANK_CACHE", "value": "/checkpoints/data"}]
    vols = {v["name"]: v for v in d["deployment.yaml"]["spec"]["template"]["spec"]["volumes"]}
    assert vols["checkpoints"]["persistentVolumeClaim"] == {"claimName": "grank-checkpoints", "readOnly": True}
    assert d["deployment.yaml"]["spec"]["template"]["metadata"]["labels"]["grank/deployment"] == "3"


def test_a_new_model_rolls_the_pods_without_dropping_capacity():
    before, after = docs(), docs({"repository.url": "https://models.internal/grank-2.tar.gz",
                                  "repository.version": 2})
    spec = before["deployment.yaml"]["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert spec["minReadySeconds"] > 0 and "replicas" not in spec  # the autoscaler owns the count
    assert before["deployment.yaml"]["spec"]["template"] != after["deployment.yaml"]["spec"]["template"]
    assert after["deployment.yaml"]["spec"]["template"]["metadata"]["labels"]["grank/deployment"] == "2"
    assert {n for n in before if before[n] != after[n]} == {"deployment.yaml"}
    pod = spec["template"]["spec"]
    stop = server(before)["lifecycle"]["preStop"]["exec"]["command"]
    assert stop[0] == "sleep" and int(stop[1]) > 0
    assert k8s.exit_timeout_s() == 30
    assert pod["terminationGracePeriodSeconds"] >= int(stop[1]) + k8s.exit_timeout_s()
    assert docs({"autoscaling.enabled": False})["deployment.yaml"]["spec"]["replicas"] == 2


def test_resources_and_gpus():
    c = server(docs())
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"].items() <= c["resources"]["limits"].items()  # Guaranteed QoS
    cpu = server(docs({"resources.gpus": 0, "resources.memory": "12Gi"}))
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"] and cpu["resources"]["limits"]["memory"] == "12Gi"
    assert "tolerations" not in docs({"resources.gpus": 0})["deployment.yaml"]["spec"]["template"]["spec"]


def test_the_autoscaler_reads_the_adapter_rules_metric():
    d = docs()
    metric = d["hpa.yaml"]["spec"]["metrics"][0]
    rule = d[k8s.ADAPTER_VALUES]["rules"]["custom"][0]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"] == "avg_time_queue_us"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "1200"}
    assert d["hpa.yaml"]["spec"]["scaleTargetRef"]["name"] == d["deployment.yaml"]["metadata"]["name"]
    assert rule["seriesQuery"] == f'nv_inference_queue_duration_us{{namespace="grank",pod!="",model="{ENSEMBLE}"}}'
    assert re.match(rule["name"]["matches"], "nv_inference_queue_duration_us")
    q = rule["metricsQuery"]
    num, den = q.split(" / ")
    # every model's queue (the steps'), per request of the ensemble
    assert num == "sum(increase(nv_inference_queue_duration_us{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)"
    assert den == ('clamp_min(sum(increase(nv_inference_request_success{<<.LabelMatchers>>,model="grank"}[1m]))'
                   " by (<<.GroupBy>>), 1)")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}


def _scrape(url: str) -> dict:
    """Triton's metrics: (series, model) -> value."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for name, labels, value in re.findall(r"^(\w+)\{([^}]*)\} (\S+)$", text, re.M):
        out[(name, dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("model"))] = float(value)
    return out


def test_the_adapters_source_series_exist_for_the_ensemble(triton_server, tiny_repository, ml100k):
    """The series the adapter rule reads, in the metrics of a real server: the ensemble's
    request count and every step's queue time. The rule's ratio over a few requests is a queue
    time per request: at least the ensemble's own (near zero), at most the time a request took."""
    from client.grank_client import GRankClient
    c = GRankClient(triton_server.http_url, "http")
    items = [int(m) for m in ml100k.item_ids[1:6]]
    c.recommend(items, k=5, request_time=880_000_000)  # the counters exist once a request was served
    before = _scrape(triton_server.metrics_url)
    for _ in range(5):
        c.recommend(items, k=5, request_time=880_000_000)
    after = _scrape(triton_server.metrics_url)
    steps = tuple(p.name for p in Path(tiny_repository).iterdir() if p.is_dir() and p.name != ENSEMBLE)
    assert len(steps) >= 5
    for model in (ENSEMBLE,) + steps:
        assert ("nv_inference_queue_duration_us", model) in after, model
    assert ("nv_inference_request_success", ENSEMBLE) in after
    grew = {k: after[k] - before.get(k, 0) for k in after}
    done = grew["nv_inference_request_success", ENSEMBLE]
    assert done == 5
    queued = sum(v for (name, _), v in grew.items() if name == "nv_inference_queue_duration_us")  # the rule's sum
    ensemble_own = grew["nv_inference_queue_duration_us", ENSEMBLE]
    assert 0 <= ensemble_own <= queued - ensemble_own  # the wait is in the steps
    assert queued / done <= grew["nv_inference_request_duration_us", ENSEMBLE] / done


@pytest.mark.parametrize("key, value, words", [
    ("resources.gpus", "-1", "resources.gpus: expected >= 0"),
    ("resources.gpus", "one", "resources.gpus: expected int"),
    ("resources.memory", "4GB", "resources.memory: expected a memory quantity"),
    ("repository.source", "s3", "repository.source: expected download or build"),
    ("repository.url", "ftp://x/r.tar.gz", "repository.url: expected an http:// or https:// URL"),
    ("repository.sha256", "abc", "repository.sha256: expected 64 lowercase hex digits"),
    ("repository.source", "build", "repository.builder_image: expected set for source=build"),
    ("repository.checkpoint", "../x.pt", "repository.checkpoint: expected a relative path"),
    ("autoscaling.max_replicas", "1", "autoscaling.max_replicas: expected >= replicas (2)"),
    ("autoscaling.enabled", "yes", "autoscaling.enabled: expected true or false"),
    ("autoscaling.window", "60", "autoscaling.window: expected a Prometheus duration"),
    ("name", "GRank", "name: expected a DNS label"),
    ("replicaz", "3", "replicaz: unknown value"),
])
def test_bad_values_name_the_field(key, value, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        k8s.make_values({key: value})


def test_cli_writes_checks_and_reads_a_values_file(tmp_path, capsys):
    out = tmp_path / "k8s"
    values = tmp_path / "values.yaml"
    values.write_text("repository:\n  url: https://models.internal/grank-2.tar.gz\n  version: 2\nreplicas: 3\n")
    assert k8s.main(["--out", str(out), "--values", str(values), "--set", "replicas=4"]) == 0
    assert "valid for Kubernetes 1.33" in capsys.readouterr().out
    text = (out / "deployment.yaml").read_text()
    assert "replicas=4" in text.splitlines()[0] and "repository.version=2" in text.splitlines()[0]
    assert yaml.safe_load((out / "hpa.yaml").read_text())["spec"]["minReplicas"] == 4
    assert k8s.main(["--out", str(out), "--values", str(values), "--set", "replicas=4", "--check"]) == 0
    assert k8s.main(["--out", str(out), "--check"]) == 1
    assert k8s.main(["--out", str(out), "--set", "autoscaling.enabled=false"]) == 0
    assert not (out / "hpa.yaml").exists() and not (out / k8s.ADAPTER_VALUES).exists()
    assert k8s.main(["--out", str(out), "--set", "resources.gpus=-1"]) == 2
    assert "resources.gpus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        k8s.main(["--help"])
    listing = capsys.readouterr().out
    assert all(key in listing for key in k8s.fields_of())
