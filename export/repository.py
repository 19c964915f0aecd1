"""The Triton model repository: config.pbtxt generated from ``grank.signatures``, model files
built from a checkpoint.

Committed: ``model_repository/<model>/config.pbtxt`` for the default ML-1M model (regenerate
with ``python -m export configs``; ``tests/test_repository.py`` fails on drift). Models of other
data sets or shapes are built into another folder. Built (git-ignored):
``<model>/<version>/model.onnx`` for the three ONNX models; ``model.py``, ``validation.py``,
``limits.json`` and ``catalogue.json`` (the data set's item ids and names by dense id) for the
two Python-backend steps, the validator and the catalogue lookup.

The ensemble's config carries the data set's schema as the parameter ``schema`` (JSON: name,
id type, padding id, event names, user and item features with their values), so that a client
needs nothing but the server to build requests (``client/``).

Versions: the ensemble pins every step to one version, the *current deployment*; each composing
model's ``version_policy`` lists the versions to keep loaded (the current one, and during a swap
by ``serve.deploy`` the next or previous one too). Version directories are deployments: all
five composing models of version v were built from the same checkpoint.

No ``instance_group`` is written on purpose: Triton then places one instance on each GPU when
there are GPUs (NGC container: the native ONNX Runtime backend keeps tensors on the GPU between
the ensemble's steps) and on the CPU otherwise (the embedded server), from one repository.

A sharded item table (``Serving.shards`` S > 1; ``python -m export repository --shards S``)
replaces ``grank_mips`` with ``grank_mips_shard0`` .. ``grank_mips_shard<S-1>`` and
``grank_mips_merge``: the ensemble sends the user vector and history to every shard (Triton
runs steps whose inputs are ready concurrently) and the merge waits for all S lists. Every other
model and every tensor a caller sees stay as they are. ``Serving.gpus`` G > 0 pins shard s to
GPU s mod G (``instance_group``), so each GPU holds its part of the table; it needs a server
with that many GPUs.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from grank.config import Config
from grank.signatures import (CATALOGUE, DEPLOYMENT, ENSEMBLE, MIPS, MIPS_MERGE, PADDING,
                              PYTHON_MODELS, RANKED_IDS, RANKER, USER_ENCODER, VALIDATE,
                              VALIDATED_PREFIX, Signature, id_dtype, mips_models, mips_shard,
                              onnx_models, shard_count, shard_of, signatures)

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "model_repository"
PYTHON_SOURCES = {VALIDATE: ROOT / "serve" / "validate" / "model.py",
                  CATALOGUE: ROOT / "serve" / "catalogue" / "model.py"}
SHARED_SOURCE = ROOT / "grank" / "validation.py"  # copied beside each Python model
MAX_LISTED_VALUES = 1000  # a user feature with more values is described by its size alone

MAX_BATCH_SIZE = 256             # rows per request and per dynamically formed batch
MAX_QUEUE_DELAY_US = 100         # dynamic batching: wait at most this long to fill a batch
HEADER = ("# Generated from grank/signatures.py by `python -m export configs` (committed) or\n"
          "# `python -m export repository`; data set {dataset}, history {R}, d {d}, k1 {k1}, k2 {k2}.\n"
          "# Do not edit.\n")


def _tensors(kind: str, tensors) -> str:
    rows = [f'  {{\n    name: "{t.name}"\n    data_type: {t.triton_type}\n'
            f'    dims: [ {", ".join(map(str, t.dims))} ]\n  }}' for t in tensors]
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


@dataclass(frozen=True)
class Serving:
    """Serving settings of the ONNX models' config.pbtxt: what ``python -m perf tune`` varies.
    The defaults are what the committed configs say (measurements: docs/PERFORMANCE.md)."""
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US  # dynamic batching: longest wait to fill a batch
    # instance_group count (kind left to Triton: per GPU, else CPU). 0 = no instance_group:
    # Triton's own default, one instance per GPU, or on a CPU two for ONNX Runtime / TensorRT /
    # TensorFlow models (triton-inference-server/core#82; the server log's
    # "ModelInstanceInitialize: grank_mips_1" shows it) and one for the Python validator.
    instances: int = 0
    # ONNX Runtime intra-op threads per instance (0 = one per core). 1 is the measured choice:
    # four models each spinning a pool over every core oversubscribe a small CPU; one thread each
    # doubled the ensemble's throughput on the 2-core machine (docs/PERFORMANCE.md, `make perf-tune`)
    intra_op_threads: int = 1
    # the MIPS model's own thread count (None: intra_op_threads). On a large catalogue the MIPS
    # scan is most of a request's work, so it may deserve more threads than the other models.
    mips_intra_op_threads: int | None = None
    # Admission control on the ensemble's first step (the validator): at most this many
    # requests wait in its queue; one more is refused at once (gRPC UNAVAILABLE / HTTP 503
    # "Exceeds maximum queue size"), so an overload is shed instead of queued without bound
    # (docs/RELIABILITY.md, "Overload"). Twice the concurrency the soak runs at: a client pool
    # of 16 never meets it. ``admission_timeout_us`` (0 = none) would also refuse requests that
    # waited that long; it is off because it refuses requests whenever the CPU is briefly busy
    # (a model swap loading the next version) although nothing is overloaded, and callers set
    # their own deadlines. Only the first step: a request refused there has cost nothing
    # downstream, and Triton before 26.03 could leave an ensemble request hanging when a later
    # step's queue refused it.
    admission_queue: int = 32
    admission_timeout_us: int = 0
    # The item table split into this many MIPS models plus an exact merge (1: one MIPS model)
    shards: int = 1
    # Shard s runs on GPU s mod gpus (0: no placement written; Triton's default, every GPU)
    gpus: int = 0

    def __post_init__(self):
        for f in ("max_queue_delay_us", "instances", "intra_op_threads", "mips_intra_op_threads",
                  "admission_queue", "admission_timeout_us", "shards", "gpus"):
            v = getattr(self, f)
            if v is None and f == "mips_intra_op_threads":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"serving.{f}: must be an integer >= 0, got {v!r}")
        if self.shards < 1:
            raise ValueError(f"serving.shards: must be >= 1, got {self.shards}")
        if self.gpus and self.shards == 1:
            raise ValueError("serving.gpus: places MIPS shards on GPUs; it needs shards > 1")

    def threads(self, model: str) -> int:
        """ONNX Runtime intra-op threads of ``model`` (0 = ONNX Runtime's default)."""
        scan = model == MIPS or model in mips_models(self.shards)[:-1]  # a scan of (part of) the table
        if scan and self.mips_intra_op_threads is not None:
            return self.mips_intra_op_threads
        return self.intra_op_threads

    def gpu(self, model: str) -> int | None:
        """The GPU ``model`` is pinned to, or None (Triton places it)."""
        if not self.gpus or model not in mips_models(self.shards)[:-1]:
            return None
        return mips_models(self.shards).index(model) % self.gpus


def version_policy(loaded) -> str:
    """The config line that keeps versions ``loaded`` of a model loaded."""
    return f"version_policy: {{ specific: {{ versions: [ {', '.join(map(str, sorted(set(loaded))))} ] }} }}\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``path`` so that a model loaded meanwhile reads the old or the new file, never half."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _queue_policy(serving: Serving) -> str:
    if not (serving.admission_queue or serving.admission_timeout_us):
        return ""
    return ("  default_queue_policy {\n"
            + (f"    max_queue_size: {serving.admission_queue}\n" if serving.admission_queue else "")
            + "    timeout_action: REJECT\n"
            + (f"    default_timeout_microseconds: {serving.admission_timeout_us}\n"
               if serving.admission_timeout_us else "")
            + "  }\n")


def _model_config(sig: Signature, backend: str, serving: Serving = Serving(), loaded=(1,)) -> str:
    text = (f'name: "{sig.name}"\nbackend: "{backend}"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
            + version_policy(loaded)
            + _tensors("input", sig.inputs) + _tensors("output", sig.outputs)
            + f"dynamic_batching {{\n  max_queue_delay_microseconds: {serving.max_queue_delay_us}\n"
            + (_queue_policy(serving) if sig.name == VALIDATE else "") + "}\n")
    gpu = serving.gpu(sig.name)
    if backend == "onnxruntime" and (serving.instances or gpu is not None):
        text += ("instance_group [\n  {\n"
                 + (f"    count: {serving.instances}\n" if serving.instances else "")
                 + (f"    kind: KIND_GPU\n    gpus: [ {gpu} ]\n" if gpu is not None else "")
                 + "  }\n]\n")
    if backend == "onnxruntime" and serving.threads(sig.name):
        # the native ONNX Runtime backend's parameter; serve/backends/onnxruntime honours it too
        text += ('parameters {\n  key: "intra_op_thread_count"\n'
                 f'  value: {{ string_value: "{serving.threads(sig.name)}" }}\n}}\n')
    return text


def _step(model: str, inputs: dict, outputs: dict, version: int) -> str:
    maps = "".join(f'      input_map {{ key: "{k}" value: "{v}" }}\n' for k, v in inputs.items())
    maps += "".join(f'      output_map {{ key: "{k}" value: "{v}" }}\n' for k, v in outputs.items())
    return f'    {{\n      model_name: "{model}"\n      model_version: {version}\n{maps}    }}'


def served_schema(schema: dict) -> dict:
    """What a client needs to build requests for the data set (the ensemble's ``schema``
    parameter): name, id type and padding id, event names (code c = events[c - 1]) and the
    strong events, user features with their values (code j = values[j]; for data sets built
    from files values[0] is "", unknown), and the item features the catalogue was described
    with (informative: requests never carry them)."""
    ids_t = id_dtype(schema)
    pad = PADDING[ids_t].decode() if ids_t == "bytes" else PADDING[ids_t]
    def listed(f):  # a feature with its values, or its size alone when they are many
        return {"name": f["name"], "size": len(f["values"]),
                **({"multi": f["multi"]} if "multi" in f else {}),
                **({"values": f["values"]} if len(f["values"]) <= MAX_LISTED_VALUES else {})}
    return {"dataset": schema["name"], "n_items": schema["n_items"], "id_type": schema["id_type"],
            "padding_id": pad, "events": schema["events"], "strong_event": schema["strong_event"],
            "user_features": [listed(f) for f in schema["user_features"]],
            "item_features": [listed(f) for f in schema["item_features"]]}


def _pbtxt_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mips_steps(sigs: dict, shards: int, version: int, history: str) -> list[str]:
    """The MIPS stage's steps: one model, or every shard (each gets the same inputs) and the
    merge of their lists; its output is ``candidate_ids`` either way."""
    ins = {"user_embedding": "user_embedding", "history_ids": history}
    if shards == 1:
        return [_step(MIPS, ins, {"candidate_ids": "candidate_ids"}, version)]
    steps = [_step(mips_shard(s), ins, {t.name: f"{t.name}_{s}" for t in sigs[mips_shard(s)].outputs}, version)
             for s in range(shards)]
    merged = {t.name: t.name for t in sigs[MIPS_MERGE].inputs}
    return steps + [_step(MIPS_MERGE, merged, {"candidate_ids": "candidate_ids"}, version)]


def _ensemble_config(sigs: dict, schema: dict, current: int = 1, shards: int = 1) -> str:
    ens = sigs[ENSEMBLE]
    v = lambda t: VALIDATED_PREFIX + t  # noqa: E731  tensors that passed the validator
    steps = [
        _step(VALIDATE, {t.name: t.name for t in sigs[VALIDATE].inputs},
              {t.name: v(t.name) if t.name == DEPLOYMENT else t.name for t in sigs[VALIDATE].outputs},
              current),
        _step(USER_ENCODER, {t.name: v(t.name) for t in sigs[USER_ENCODER].inputs},
              {"user_embedding": "user_embedding"}, current),
        *_mips_steps(sigs, shards, current, v("history_ids")),
        _step(RANKER, {t.name: t.name if t.name in ("user_embedding", "candidate_ids") else v(t.name)
                       for t in sigs[RANKER].inputs},
              {t.name: t.name for t in sigs[RANKER].outputs}, current),
        _step(CATALOGUE, {RANKED_IDS: RANKED_IDS, DEPLOYMENT: v(DEPLOYMENT)},
              {t.name: t.name for t in sigs[CATALOGUE].outputs}, current),
    ]
    params = json.dumps(served_schema(schema), ensure_ascii=False, separators=(",", ":"))
    return (f'name: "{ENSEMBLE}"\nplatform: "ensemble"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
            + _tensors("input", ens.inputs) + _tensors("output", ens.outputs)
            + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"
            + f'parameters {{\n  key: "schema"\n  value: {{ string_value: {_pbtxt_string(params)} }}\n}}\n')


def model_configs(cfg: Config, schema: dict, serving: Serving = Serving(), current: int = 1,
                  loaded=None) -> dict[str, str]:
    """config.pbtxt text for every model of the repository, by model name, for the model
    ``cfg`` over the data set ``schema`` (``grank.data.schema``): the ensemble runs version
    ``current`` of every step; the composing models keep ``loaded`` versions loaded (default:
    the current one)."""
    sigs = signatures(cfg, schema, serving.shards)
    loaded = (current,) if loaded is None else tuple(loaded)
    if current not in loaded:
        raise ValueError(f"versions: the current version {current} must be among the loaded ones {loaded}")
    head = HEADER.format(R=cfg.model.ranker_history, d=cfg.model.d_model, k1=cfg.eval.k1,
                         k2=cfg.eval.k2, dataset=schema["name"])
    if serving.shards > 1:
        head = head.replace(".\n# Do not edit", f"; item table in {serving.shards} shards.\n# Do not edit")
    out = {name: head + _model_config(sigs[name], "onnxruntime", serving, loaded)
           for name in onnx_models(serving.shards)}
    for name in PYTHON_MODELS:
        out[name] = head + _model_config(sigs[name], "python", serving, loaded)
    out[ENSEMBLE] = head + _ensemble_config(sigs, schema, current, serving.shards)
    return out


def repository_shards(repo: Path) -> int:
    """How many shards the item table of the repository ``repo`` is served in (its ensemble's
    steps say)."""
    text = (Path(repo) / ENSEMBLE / "config.pbtxt").read_text()
    return shard_count(re.findall(r'model_name: "([^"]+)"', text))


def other_layout(repo: Path, shards: int) -> list[str]:
    """MIPS-stage model folders in ``repo`` that a repository of ``shards`` shards does not
    have (left by a build with another shard count)."""
    every = {MIPS, MIPS_MERGE} | {p.name for p in Path(repo).glob("*") if shard_of(p.name) is not None}
    return sorted(m for m in every if (Path(repo) / m).is_dir() and m not in mips_models(shards))


def write_configs(cfg: Config, schema: dict, repo: Path, serving: Serving = Serving(),
                  current: int = 1, loaded=None) -> list[Path]:
    """Write every config.pbtxt, each atomically (a model loaded meanwhile reads the old or the
    new file, never half of one)."""
    paths = []
    for name, text in model_configs(cfg, schema, serving, current, loaded).items():
        p = Path(repo) / name / "config.pbtxt"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, text)
        paths.append(p)
    return paths


def config_drift(cfg: Config, schema: dict, repo: Path, current: int = 1, loaded=None,
                 serving: Serving = Serving()) -> list[str]:
    """Models whose config.pbtxt in ``repo`` differs from what ``cfg`` and ``schema`` generate."""
    return [name for name, text in model_configs(cfg, schema, serving, current, loaded).items()
            if not (Path(repo) / name / "config.pbtxt").exists()
            or (Path(repo) / name / "config.pbtxt").read_text() != text]


SCHEMA_FILE = "served_schema.json"  # beside each version's validator: its ensemble ``schema`` parameter


def write_version(onnx_paths: dict, limits: dict, catalogue: dict, schema: dict, repo: Path,
                  version: int) -> None:
    """The model files of one version (deployment) of every model; configs untouched. The
    version's ``served_schema`` is kept beside its validator, for a switch back to it."""
    repo = Path(repo)
    for name in onnx_paths:
        d = repo / name / str(version)
        d.mkdir(parents=True, exist_ok=True)
        src = Path(onnx_paths[name])
        shutil.copyfile(src, d / "model.onnx")
        data = src.with_name(src.name + ".data")
        if data.exists():  # external data keeps the location written in the model: the same name
            shutil.copyfile(data, d / data.name)
    # the ensemble itself has one version, 1, forever (Triton needs the folder, empty): its
    # config pins the steps' versions. A second ensemble version would make every reload
    # switch the ensemble's own version, and requests meeting the switch would fail.
    (repo / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)
    for name, src in PYTHON_SOURCES.items():
        d = repo / name / str(version)
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, d / "model.py")
        shutil.copyfile(SHARED_SOURCE, d / SHARED_SOURCE.name)
        (d / "catalogue.json").write_text(json.dumps(catalogue, ensure_ascii=False), encoding="utf-8")
    (repo / VALIDATE / str(version) / "limits.json").write_text(json.dumps(limits, indent=1))
    (repo / VALIDATE / str(version) / SCHEMA_FILE).write_text(
        json.dumps(served_schema(schema), ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def build(cfg: Config, schema: dict, onnx_paths: dict, limits: dict, catalogue: dict, repo: Path,
          version: int = 1, force: bool = False, serving: Serving = Serving()) -> Path:
    """Write configs and model files for one model version into ``repo``, serving that version
    alone; ``catalogue``: ``grank.data.catalogue`` of the checkpoint's data set. (A running
    server takes a new version through ``serve.deploy`` instead.)

    Refuses (unless ``force``) to overwrite existing config.pbtxt files that differ from the
    ones this checkpoint needs, e.g. building a tiny checkpoint, or one of another data set,
    into the committed repository.
    """
    repo = Path(repo)
    drift = [n for n in config_drift(cfg, schema, repo, version, serving=serving)
             if (repo / n / "config.pbtxt").exists()]
    stale = other_layout(repo, serving.shards)
    if (drift or stale) and not force:
        raise ValueError(f"{repo}: config.pbtxt of {', '.join(drift + stale)} would change or go (this "
                         "checkpoint has other shapes or another data set, or the item table another "
                         "shard count); build into another --repository or pass --force")
    for m in stale:  # a server loading every model of the folder would load them too
        shutil.rmtree(repo / m)
    write_configs(cfg, schema, repo, serving, current=version)
    write_version(onnx_paths, limits, catalogue, schema, repo, version)
    return repo
