"""Tensor names, dtypes and shapes of every served model, defined once.

Read by the ONNX exporter (input/output names, dynamic batch axis), the config.pbtxt generator,
the ensemble's tensor maps, the clients and the perf_analyzer input generator. Shapes below are
per request row; Triton adds the batch axis (``max_batch_size`` > 0), and so do the ONNX graphs
(axis 0, named ``batch``). R = ``model.ranker_history``, d = ``model.d_model``,
k1 = ``eval.k1``, k2 = ``eval.k2`` of the checkpoint's config.

The ensemble ``grank``::

    history_ids [R] int64, history_ratings [R] int64, user_features [4] int64
    (+ request_time [1] int64 when the Ranker uses popularity, ``model.ranker_popularity``)
      -> grank_validate      (Python backend: range checks with errors naming the field)
      -> grank_user_encoder  (ONNX: Generator, -> user_embedding [d] float32)
      -> grank_mips          (ONNX: item table as a constant, history excluded, top-k1)
      -> grank_ranker        (ONNX: cross-attention Ranker, top-k2; with request_time, the
                              popularity-by-day table as a constant)
    -> item_ids [k2] int64 (dense ids, best first), scores [k2] float32
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import Config

N_USER_FEATURES = 4  # gender, age bucket, occupation, zip-code first digit (grank.data)
MAX_RATING = 5       # ratings 1..5; 0 marks padding slots

ENSEMBLE = "grank"
VALIDATE = "grank_validate"
USER_ENCODER = "grank_user_encoder"
MIPS = "grank_mips"
RANKER = "grank_ranker"
ONNX_MODELS = (USER_ENCODER, MIPS, RANKER)

_TRITON = {"int64": "TYPE_INT64", "float32": "TYPE_FP32"}
_WIRE = {"int64": "INT64", "float32": "FP32"}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str          # numpy dtype name
    dims: tuple         # per request row (no batch axis)
    doc: str = ""

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


def signatures(cfg: Config) -> dict[str, Signature]:
    """Every served model's signature for the model described by ``cfg``."""
    R, d = cfg.model.ranker_history, cfg.model.d_model
    k1, k2 = cfg.eval.k1, cfg.eval.k2
    hist = Tensor("history_ids", "int64", (R,),
                  "dense item ids, newest last, left padded with 0; at least one > 0")
    rat = Tensor("history_ratings", "int64", (R,), f"ratings 1..{MAX_RATING} aligned with "
                 "history_ids; 0 in padding slots")
    feats = Tensor("user_features", "int64", (N_USER_FEATURES,),
                   "gender, age bucket, occupation, zip digit (0 = unknown)")
    user = Tensor("user_embedding", "float32", (d,), "the Generator's user vector U")
    cids = Tensor("candidate_ids", "int64", (k1,), "MIPS top-k1 dense ids, best first")
    cscores = Tensor("candidate_scores", "float32", (k1,), "<user_embedding, item vector> / tau")
    ids = Tensor("item_ids", "int64", (k2,), "the Ranker's top-k2 dense ids, best first")
    scores = Tensor("scores", "float32", (k2,), "Ranker scores of item_ids")
    when = (Tensor(REQUEST_TIME, "int64", (1,), "Unix seconds of the request (>= 0): the "
                   "Ranker's popularity features count the days before it"),) \
        if takes_request_time(cfg) else ()
    request = (hist, rat, feats) + when
    checked = tuple(Tensor(VALIDATED_PREFIX + t.name, t.dtype, t.dims, t.doc) for t in request)
    return {
        ENSEMBLE: Signature(ENSEMBLE, request, (ids, scores)),
        VALIDATE: Signature(VALIDATE, request, checked),
        USER_ENCODER: Signature(USER_ENCODER, (hist, rat, feats), (user,)),
        MIPS: Signature(MIPS, (user, hist), (cids, cscores)),
        RANKER: Signature(RANKER, (user, hist, rat, cids) + when, (ids, scores)),
    }


VALIDATED_PREFIX = "valid_"  # the validator's outputs: its inputs, unchanged, once checked
