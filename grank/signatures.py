"""Tensor names, dtypes and shapes of every served model, defined once.

Read by the ONNX exporter (input/output names, dynamic batch axis), the config.pbtxt generator,
the ensemble's tensor maps, the clients and the perf_analyzer input generator. Shapes below are
per request row; Triton adds the batch axis (``max_batch_size`` > 0), and so do the ONNX graphs
(axis 0, named ``batch``). R = ``model.ranker_history``, d = ``model.d_model``,
k1 = ``eval.k1``, k2 = ``eval.k2`` of the checkpoint's config; F user features, the id type and
the event vocabulary come from the data set's schema (``grank.data.schema``).

The ensemble ``grank`` speaks the data set's own ids (int64, or strings as BYTES)::

    history_ids [R] int64|bytes (the caller's item ids, newest last, left padded with
    PADDING: -1 or ""), history_events [R] int64 (event codes 1..E, 0 in padding),
    user_features [F] int64 (only when F > 0), request_time [1] int64 (only when the Ranker
    uses popularity, ``model.ranker_popularity``)
      -> grank_validate      (Python backend: range checks with errors naming the field; the
                              caller's item ids -> dense ids 1..N, an unknown id is an error)
      -> grank_user_encoder  (ONNX: Generator, -> user_embedding [d] float32)
      -> grank_mips          (ONNX: item table as a constant, history excluded, top-k1)
      -> grank_ranker        (ONNX: cross-attention Ranker, top-k2; with request_time, the
                              popularity-by-day table as a constant)
      -> grank_catalogue     (Python backend: dense ids -> the caller's ids and display names)
    -> item_ids [k2] int64|bytes (best first), item_names [k2] bytes, scores [k2] float32,
       deployment [1] int64 (the model version that answered, see below)

Every step of one request runs the same model version: the ensemble pins each step's version
and ``serve.deploy`` switches them together. The validator passes its version on as
``deployment``; the catalogue step refuses a request whose validator version differs from its
own (never seen: it would be a mixed request) and returns it, so a caller can tell which
deployment answered.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .validation import PADDING_INT, PADDING_STR

ENSEMBLE = "grank"
VALIDATE = "grank_validate"
USER_ENCODER = "grank_user_encoder"
MIPS = "grank_mips"
RANKER = "grank_ranker"
CATALOGUE = "grank_catalogue"
ONNX_MODELS = (USER_ENCODER, MIPS, RANKER)
PYTHON_MODELS = (VALIDATE, CATALOGUE)
MIPS_MERGE = "grank_mips_merge"  # a sharded table's exact top-k merge (``shards`` > 1)


def mips_shard(s: int) -> str:
    """The model name of MIPS shard ``s`` (0-based) of a sharded item table."""
    return f"{MIPS}_shard{s}"


def shard_of(name: str) -> int | None:
    """The shard number of a MIPS shard model's name (``mips_shard``), else None."""
    prefix = mips_shard(0)[:-1]
    rest = name[len(prefix):]
    return int(rest) if name.startswith(prefix) and rest.isdigit() else None


def shard_count(names) -> int:
    """How many shards the MIPS stage of these model names has (1: one ``grank_mips``)."""
    return sum(shard_of(n) is not None for n in names) or 1


def mips_models(shards: int = 1) -> tuple:
    """The models of the MIPS stage: ``grank_mips`` alone, or S shards and their merge."""
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ValueError(f"shards: must be an integer >= 1, got {shards!r}")
    return (MIPS,) if shards == 1 else tuple(mips_shard(s) for s in range(shards)) + (MIPS_MERGE,)


def onnx_models(shards: int = 1) -> tuple:
    """Every ONNX model of a repository whose item table is split into ``shards``."""
    return (USER_ENCODER,) + mips_models(shards) + (RANKER,)


def composing_models(shards: int = 1) -> tuple:
    """Every model the ensemble runs, in its order."""
    return (VALIDATE,) + onnx_models(shards) + (CATALOGUE,)
PADDING = {"int64": PADDING_INT, "bytes": PADDING_STR}  # the caller's id of an empty history slot

_TRITON = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "bytes": "TYPE_STRING"}
_WIRE = {"int64": "INT64", "float32": "FP32", "bytes": "BYTES"}
_NUMPY = {"int64": "int64", "float32": "float32", "bytes": "object"}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str          # "int64", "float32" or "bytes" (strings: numpy object arrays of bytes)
    dims: tuple         # per request row (no batch axis)
    doc: str = ""

    @property
    def numpy_dtype(self):
        import numpy as np
        return np.dtype(_NUMPY[self.dtype])

    @property
    def triton_type(self) -> str:
        return _TRITON[self.dtype]

    @property
    def wire_type(self) -> str:
        """The datatype string of the KServe v2 protocol / tritonclient."""
        return _WIRE[self.dtype]


@dataclass(frozen=True)
class Signature:
    name: str
    inputs: tuple
    outputs: tuple

    def input(self, name: str) -> Tensor:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> Tensor:
        return next(t for t in self.outputs if t.name == name)


REQUEST_TIME = "request_time"


def takes_request_time(cfg: Config) -> bool:
    """The request's time is an input only where the Ranker counts popularity before it."""
    return cfg.model.ranker and cfg.model.ranker_popularity


def id_dtype(schema: dict) -> str:
    """The wire dtype of the data set's item ids: "int64" or "bytes"."""
    return "bytes" if schema["id_type"] == "string" else "int64"


def signatures(cfg: Config, schema: dict, shards: int = 1) -> dict[str, Signature]:
    """Every served model's signature for the model described by ``cfg`` over the data set
    described by ``schema`` (``grank.data.schema``, stored in the checkpoint). With ``shards``
    S > 1 the item table is split into S MIPS models, each with ``grank_mips``'s signature (its
    candidates are dense ids of the whole catalogue), and ``grank_mips_merge`` takes their S
    lists (``candidate_ids_<s>``, ``candidate_scores_<s>``) to the top-k1 of their union."""
    R, d = cfg.model.ranker_history, cfg.model.d_model
    k1, k2 = cfg.eval.k1, cfg.eval.k2
    n_feats, n_events, ids_t = len(schema["user_features"]), len(schema["events"]), id_dtype(schema)
    pad = PADDING[ids_t].decode() if ids_t == "bytes" else PADDING[ids_t]
    own = Tensor("history_ids", ids_t, (R,), f"the data set's item ids, newest last, left padded "
                 f"with {pad!r}; at least one real item")
    dense = Tensor("history_ids", "int64", (R,), "dense item ids 1..N, newest last, left padded with 0")
    events = Tensor("history_events", "int64", (R,), f"event codes 1..{n_events} aligned with "
                    "history_ids (ratings for MovieLens); 0 in padding slots")
    feats = (Tensor("user_features", "int64", (n_feats,), "one code per user feature of the data "
                    "set (the ensemble's schema parameter lists each feature's values)"),) if n_feats else ()
    user = Tensor("user_embedding", "float32", (d,), "the Generator's user vector U")
    cids = Tensor("candidate_ids", "int64", (k1,), "MIPS top-k1 dense ids, best first")
    cscores = Tensor("candidate_scores", "float32", (k1,), "<user_embedding, item vector> / tau")
    ranked = Tensor(RANKED_IDS, "int64", (k2,), "the Ranker's top-k2 dense ids, best first")
    scores = Tensor("scores", "float32", (k2,), "Ranker scores of item_ids, best first")
    ids = Tensor("item_ids", ids_t, (k2,), "the data set's ids of the Ranker's top-k2, best first")
    names = Tensor("item_names", "bytes", (k2,), "display names of item_ids")
    version = Tensor(DEPLOYMENT, "int64", (1,), "the model version (deployment) that answered")
    when = (Tensor(REQUEST_TIME, "int64", (1,), "Unix seconds of the request (>= 0): the "
                   "Ranker's popularity features count the days before it"),) \
        if takes_request_time(cfg) else ()
    request = (own, events) + feats + when
    checked = tuple(Tensor(VALIDATED_PREFIX + t.name, t.dtype, t.dims, t.doc)
                    for t in (dense, events) + feats + when)
    sigs = {
        ENSEMBLE: Signature(ENSEMBLE, request, (ids, names, scores, version)),
        VALIDATE: Signature(VALIDATE, request, checked + (version,)),
        USER_ENCODER: Signature(USER_ENCODER, (dense, events) + feats, (user,)),
        MIPS: Signature(MIPS, (user, dense), (cids, cscores)),
        RANKER: Signature(RANKER, (user, dense, events, cids) + when, (ranked, scores)),
        CATALOGUE: Signature(CATALOGUE, (ranked, version), (ids, names, version)),
    }
    if mips_models(shards) != (MIPS,):
        for s in range(shards):
            sigs[mips_shard(s)] = Signature(mips_shard(s), (user, dense), (cids, cscores))
        parts = tuple(Tensor(f"{t.name}_{s}", t.dtype, t.dims, f"shard {s}'s {t.doc}")
                      for s in range(shards) for t in (cids, cscores))
        sigs[MIPS_MERGE] = Signature(MIPS_MERGE, parts, (cids, cscores))
    return sigs


def mips_signature(cfg: Config) -> Signature:
    """The MIPS model's signature alone: it depends on no data-set property (benchmarks)."""
    return signatures(cfg, {"user_features": [], "events": ["interaction"], "id_type": "int64"})[MIPS]


VALIDATED_PREFIX = "valid_"  # the validator's outputs: its inputs once checked (ids made dense)
RANKED_IDS = "ranked_ids"    # the Ranker's dense ids, which the catalogue step turns into the caller's
DEPLOYMENT = "deployment"    # the model version that answered (validator -> catalogue -> caller)
