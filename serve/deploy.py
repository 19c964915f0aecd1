"""Swap the model a running server answers with, atomically, and roll it back.

  python -m serve.deploy --checkpoint new/best.pt --repository model_repository --url localhost:8000
  python -m serve.deploy --rollback --repository model_repository --url localhost:8000
  python -m serve.deploy --status --repository model_repository --url localhost:8000

A deployment is one version number shared by the composing models (validator, encoder,
MIPS with its item table (or its shards and their merge), Ranker, catalogue). The ensemble pins every step to the current
version, so a request runs one version from its first step to its last; the ``deployment``
output says which. A swap to version ``new`` (Triton's explicit model-control mode; the
management key when the server has one):

1. ``deploy`` exports the checkpoint (ONNX with its parity check on real users) and writes
   ``<model>/<new>/`` for every model; nothing is loaded yet;
2. every composing model's ``version_policy`` lists ``[current, new]`` and is loaded: Triton
   loads the new version beside the serving one (unchanged versions are not reloaded);
3. the ensemble is pinned to ``new`` and loaded: requests arriving from now on run ``new``;
   requests in flight finish on the old ensemble and the versions it started with;
4. a probe request must answer from ``new`` (else the swap is undone);
5. the old version is unloaded (``version_policy`` = ``[new]``) once its requests are done.
   Its files stay on disk (``--keep`` versions in all), so ``--rollback`` is the same switch
   back to the previous version, without an export.

A checkpoint whose served shapes differ (history length, d, k1, k2, user features, id type)
cannot be swapped in: callers would have to change their requests. A grown or changed
catalogue, events or feature values, and any retraining can. If a step fails the configs on
disk are restored and the versions that were serving keep serving.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

from export.repository import SCHEMA_FILE, repository_shards, version_policy, write_atomic
from grank.signatures import DEPLOYMENT, ENSEMBLE, VALIDATE, composing_models

from .admin import KEY_ENV, headers, read_key
_POLICY = re.compile(r"^version_policy: .*$", re.M)
_PIN = re.compile(r"^(\s*model_version: )-?\d+$", re.M)
_SCHEMA = re.compile(r'^(  value: \{ string_value: )".*"( \}\n\})', re.M)
_PLACEMENT = re.compile(r"^instance_group \[\n.*?^\]\n", re.M | re.S)


class DeployError(RuntimeError):
    pass


# ---- the repository on disk -------------------------------------------------------------
def composing(repo: Path) -> tuple:
    """The composing models of the repository ``repo`` (its shard count decides)."""
    return composing_models(repository_shards(repo))


def versions_on_disk(repo: Path) -> list[int]:
    """Versions for which every composing model has a folder, ascending."""
    sets = [{int(p.name) for p in (Path(repo) / m).iterdir() if p.is_dir() and p.name.isdigit()}
            for m in composing(repo)]
    return sorted(set.intersection(*sets))


def current_version(repo: Path) -> int:
    """The version the ensemble's config pins (every step pins the same one)."""
    pins = {int(m.group(0).split(":")[1]) for m in _PIN.finditer((Path(repo) / ENSEMBLE / "config.pbtxt").read_text())}
    if len(pins) != 1 or min(pins) < 1:
        raise DeployError(f"{repo}/{ENSEMBLE}/config.pbtxt pins versions {sorted(pins)}: a deployable "
                          "repository pins one version >= 1 (rebuild it with `python -m export repository`)")
    return pins.pop()


def _set_policy(text: str, loaded) -> str:
    return _POLICY.sub(version_policy(loaded).rstrip("\n"), text)


def _pin(text: str, version: int, schema: str | None) -> str:
    text = _PIN.sub(lambda m: f"{m.group(1)}{version}", text)
    if schema is not None:
        quoted = '"' + schema.replace("\\", "\\\\").replace('"', '\\"') + '"'
        text = _SCHEMA.sub(lambda m: m.group(1) + quoted + m.group(2), text)
    return text


def _normal(text: str) -> str:
    """A config without what a swap may change: versions, the schema parameter, comments, and
    where instances run (a placement, not a shape)."""
    text = _SCHEMA.sub(r"\1SCHEMA\2", _PIN.sub(r"\1V", _POLICY.sub("", _PLACEMENT.sub("", text))))
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))


def _configs(repo: Path) -> dict[str, str]:
    return {m: (Path(repo) / m / "config.pbtxt").read_text() for m in (ENSEMBLE,) + composing(repo)}


# ---- the running server -----------------------------------------------------------------
class Server:
    """The repository API of a running server (HTTP), with the management key if any."""

    def __init__(self, url: str, key: str | None, timeout_s: float = 300.0):
        import tritonclient.http as http
        self.http = http
        self.client = http.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        self.url, self.headers = url, headers("http", key) or None

    def load(self, model: str) -> None:
        try:
            self.client.load_model(model, headers=self.headers)
        except Exception as e:  # noqa: BLE001  tritonclient's own exception type
            raise DeployError(f"loading {model} on {self.url}: {e}") from None

    def ready_versions(self, model: str) -> set[int]:
        index = self.client.get_model_repository_index(headers=self.headers)
        return {int(m["version"]) for m in index if m["name"] == model and m.get("state") == "READY"
                and m.get("version")}

    def probe(self, arrays: dict) -> int:
        """The deployment that answers ``arrays`` (a request of the served schema)."""
        ins = []
        for name, a in arrays.items():
            x = self.http.InferInput(name, list(a.shape), "BYTES" if a.dtype == object else "INT64")
            x.set_data_from_numpy(a)
            ins.append(x)
        r = self.client.infer(ENSEMBLE, ins, outputs=[self.http.InferRequestedOutput(DEPLOYMENT)])
        return int(r.as_numpy(DEPLOYMENT)[0, 0])


def probe_request(repo: Path, version: int) -> dict:
    """A valid one-row request for ``version``: its catalogue's first item, the first event."""
    import numpy as np
    d = Path(repo) / VALIDATE / str(version)
    limits = json.loads((d / "limits.json").read_text())
    first = json.loads((d / "catalogue.json").read_text(encoding="utf-8"))["item_ids"][0]
    R, strings = limits["history_length"], isinstance(first, str)
    ids = np.full((1, R), b"" if strings else -1, dtype=object if strings else np.int64)
    ids[0, -1] = first.encode() if strings else first
    ev = np.zeros((1, R), np.int64)
    ev[0, -1] = 1
    out = {"history_ids": ids, "history_events": ev}
    if limits["user_feature_sizes"]:
        out["user_features"] = np.zeros((1, len(limits["user_feature_sizes"])), np.int64)
    if limits.get("request_time"):
        out["request_time"] = np.array([[int(time.time())]], np.int64)
    return out


# ---- the switch -------------------------------------------------------------------------
def switch(repo: Path, server: Server, target: int, keep: int = 2, log=print) -> dict:
    """Make ``target`` (already on disk) the serving version, as the module doc describes.
    Returns timings (seconds) and the versions before/after."""
    repo = Path(repo)
    cur = current_version(repo)
    if target == cur:
        raise DeployError(f"version {target} is already serving")
    if target not in versions_on_disk(repo):
        raise DeployError(f"version {target} is not in {repo} (on disk: {versions_on_disk(repo)})")
    before, models = _configs(repo), composing(repo)
    schema = (repo / VALIDATE / str(target) / SCHEMA_FILE)
    schema = schema.read_text(encoding="utf-8") if schema.exists() else None
    t0 = time.perf_counter()
    times = {}
    try:
        for m in models:  # 2. both versions loaded
            write_atomic(repo / m / "config.pbtxt", _set_policy(before[m], (cur, target)))
            server.load(m)
            if target not in server.ready_versions(m):
                raise DeployError(f"{m} version {target} did not become ready (see the server log)")
        times["load_s"] = time.perf_counter() - t0
        log(f"  version {target} loaded beside {cur} ({times['load_s']:.1f} s)")
        write_atomic(repo / ENSEMBLE / "config.pbtxt", _pin(before[ENSEMBLE], target, schema))  # 3. switch
        server.load(ENSEMBLE)
        times["switch_s"] = time.perf_counter() - t0
        got = server.probe(probe_request(repo, target))  # 4. check
        if got != target:
            raise DeployError(f"after the switch a probe request was answered by version {got}, not {target}")
        log(f"  ensemble switched to {target}: probe answered by {got} ({times['switch_s']:.1f} s)")
    except Exception:
        for m, text in before.items():  # restore what was serving
            write_atomic(repo / m / "config.pbtxt", text)
        for m in (ENSEMBLE,) + models:
            try:
                server.load(m)
            except DeployError:
                pass
        raise
    for m in models:  # 5. retire the old version (unloaded when its requests are done)
        write_atomic(repo / m / "config.pbtxt", _set_policy(before[m], (target,)))
        server.load(m)
    times["retire_s"] = time.perf_counter() - t0
    removed = prune(repo, keep, protect=(target, cur))
    log(f"  version {cur} unloaded ({times['retire_s']:.1f} s)"
        + (f"; removed from disk: {removed}" if removed else ""))
    return {"from": cur, "to": target, **{k: round(v, 2) for k, v in times.items()}}


def prune(repo: Path, keep: int, protect=()) -> list[int]:
    """Delete the oldest versions beyond ``keep`` (never a protected one) from disk."""
    old = [v for v in versions_on_disk(repo) if v not in protect]
    drop = old[:max(0, len(old) - max(0, keep - len(protect)))]
    for v in drop:
        for m in composing(repo):  # the ensemble keeps its one version, 1
            shutil.rmtree(Path(repo) / m / str(v), ignore_errors=True)
    return drop


def stage(checkpoint: Path, repo: Path, work: Path, version: int | None = None, log=print) -> int:
    """Export ``checkpoint`` and write it as a new version of ``repo`` (not loaded). Refuses a
    checkpoint whose served shapes differ from the repository's. Returns the version."""
    from export.build import export_checkpoint
    from export.repository import Serving, model_configs, write_version
    from grank.signatures import takes_request_time
    from grank.validation import limits_dict

    repo = Path(repo)
    cur = current_version(repo)
    version = version or max(versions_on_disk(repo) + [cur]) + 1
    shards = repository_shards(repo)
    t0 = time.perf_counter()
    ex = export_checkpoint(checkpoint, Path(work) / f"v{version}", shards=shards)
    bad = {m: p for m, p in ex.problems.items() if p}
    if bad:
        raise DeployError(f"{checkpoint}: the ONNX export failed its parity check: {bad}")
    schema = ex.ck["dataset"]
    want, have = model_configs(ex.cfg, schema, Serving(shards=shards), current=version), _configs(repo)
    differ = [m for m in want if _normal(want[m]) != _normal(have[m])]
    if differ:
        raise DeployError(f"{checkpoint}: its served shapes differ from {repo} in {', '.join(differ)} "
                          "(history length, d, k1, k2, user features or id type): callers would have "
                          "to change their requests, so it cannot be swapped in; serve it from a new "
                          "repository instead")
    limits = limits_dict(schema, ex.cfg.model.ranker_history, takes_request_time(ex.cfg))
    write_version(ex.paths, limits, ex.ck["catalogue"], schema, repo, version)
    log(f"  {checkpoint} exported, checked and written as version {version} ({time.perf_counter() - t0:.1f} s)")
    return version


def status(repo: Path, server: Server | None) -> str:
    cur = current_version(repo)
    lines = [f"{repo}: serving version {cur}; on disk {versions_on_disk(repo)}"]
    if server is not None:
        for m in composing(repo):
            lines.append(f"  {m}: loaded {sorted(server.ready_versions(m))}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serve.deploy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="deploy this checkpoint as a new version")
    what.add_argument("--rollback", action="store_true", help="switch back to the previous version on disk")
    what.add_argument("--to", type=int, help="switch to this version on disk")
    what.add_argument("--status", action="store_true", help="print the serving and loaded versions")
    ap.add_argument("--repository", default="model_repository", help="the repository the server runs")
    ap.add_argument("--url", default="localhost:8000", help="the server's HTTP host:port")
    ap.add_argument("--admin-key-file", default=None, help=f"the management key (else ${KEY_ENV})")
    ap.add_argument("--keep", type=int, default=2, help="versions kept on disk (rollback needs 2)")
    ap.add_argument("--work-dir", default="artifacts/deploy", help="ONNX exports of deployed checkpoints")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        server = Server(a.url, read_key(a.admin_key_file))
        repo = Path(a.repository)
        if a.status:
            print(status(repo, server))
            return 0
        if a.checkpoint:
            target = stage(Path(a.checkpoint), repo, Path(a.work_dir))
        elif a.rollback:
            cur = current_version(repo)
            older = [v for v in versions_on_disk(repo) if v < cur]
            if not older:
                raise DeployError(f"no version before {cur} on disk in {repo}")
            target = older[-1]
        else:
            target = a.to
        r = switch(repo, server, target, a.keep)
    except (DeployError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"serving version {r['to']} (was {r['from']}); {time.perf_counter() - t0:.1f} s from command "
          f"to the new version serving and the old one retired")
    return 0


if __name__ == "__main__":
    sys.exit(main())
