"""Typed configuration with named presets.

One `Config` (model + training + evaluation) is saved inside every checkpoint, so evaluation
and export rebuild the exact network from the checkpoint alone. Overrides are strict:
an unknown key or a value of the wrong type is an error, never silently ignored.

Presets:
- ``tiny``: seconds on a laptop, for tests (works on ML-100K or synthetic data);
- ``fast``: a few minutes on 2 CPU cores, for the demo;
- ``default``: the real MovieLens-1M run (trains in well under an hour on a 2-core CPU).

Ablations are switches on the same config (see ``VARIANTS``), so every results row is trained
and evaluated by the same code.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class ModelConfig:
    d_model: int = 64          # width of item embeddings, tokens and the MIPS user/item vectors
    n_layers: int = 2          # Generator Transformer blocks (paper: 4; 2 fits a 2-core CPU)
    n_heads: int = 2
    ffn_mult: int = 4
    dropout: float = 0.2
    max_history: int = 64      # L_s: recent behaviour window seen by the Generator (paper: 64)
    ranker_history: int = 256  # long history cap for the Ranker (paper: up to 1000)
    recent_items: int = 3      # the "newest items" sub-sequence of U
    tau: float = 1.0           # InfoNCE temperature (plain dot-product logits; docs/MODEL.md)
    # Which parts exist. Variants switch these (see VARIANTS below).
    query_token: bool = True   # personalised query token U (False: SASRec-style last hidden state)
    aux_tokens: bool = True    # training-only target-aware auxiliary tokens (L_SA-info)
    ranker: bool = True        # second-stage Ranker (L_CA-info)
    # The Ranker scores each candidate on its own, from the long history, and is served as
    # Generator score + ranker_fusion x its score until train.fit_blend replaces that mix with
    # one fitted on validation (grank.blend). Training never reads this weight; the served
    # score, and so the choice of the best epoch, does. 0.3: the best validation HR@10 of the
    # weights tried, averaged over two seeds (docs/EXPERIMENTS.md).
    ranker_fusion: float = 0.3
    # The Ranker also sees each candidate's popularity in the days before the request
    # (grank.popularity): an input the Generator's single inner product cannot have. Served
    # requests then carry their time (the ensemble input ``request_time``). Turn it off for
    # interaction logs without meaningful timestamps.
    ranker_popularity: bool = True


NTP_SOFTMAXES = ("auto", "exact", "sampled")  # train.ntp_softmax (grank.sampled_softmax)
NTP_SAMPLERS = ("uniform", "popularity")      # train.ntp_sampler


@dataclass
class TrainConfig:
    # 24: every row was still improving at 12 (docs/EXPERIMENTS.md), and a default GRank run
    # stays well inside an hour on a 2-core CPU
    epochs: int = 24
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    grad_clip: float = 10.0
    warmup_steps: int = 100
    # (L_NTP, L_SA-info, L_CA-info). Adam normalises each parameter's update, so the auxiliary
    # heads (aux MLP, Ranker) learn at full speed whatever their weight; the weight only sets how
    # hard they pull on the SHARED item table and Transformer. At 1/1/1 they slowed L_NTP. 0.03
    # for L_SA-info won on validation in two of three seeds against 0.1, which still pulled half as
    # hard as L_NTP on the Transformer (docs/EXPERIMENTS.md). L_CA-info's 0.1 reaches only the
    # Ranker: its loss never updates the shared table (grank.train.losses).
    loss_weights: tuple = (1.0, 0.03, 0.1)
    ntp_positions: int = 16     # window slots supervised by L_NTP per step (newest always)
    # L_NTP's softmax (grank.sampled_softmax): "exact" scores every item of the catalogue; "sampled"
    # scores the batch's targets + ntp_negatives items drawn by ntp_sampler ("uniform", or
    # "popularity": proportional to training count + 1), logQ-corrected, at a cost that does not
    # grow with the catalogue; "auto" is the exact one up to grank.sampled_softmax.AUTO_SAMPLED_ABOVE
    # items (10,000: about where an exact step came to cost 1.5 sampled ones on a 2-core CPU,
    # docs/LARGE_CATALOGUES.md), so ML-1M (3,706) and Pinterest-20 (9,916) train with the exact one
    ntp_softmax: str = "auto"
    ntp_negatives: int = 1024   # drawn negatives per step, shared by every row (sampled only)
    ntp_sampler: str = "uniform"  # the drawn negatives' distribution (sampled only)
    aux_negatives: int = 31     # in-batch negatives per user for the auxiliary tokens
    ranker_hard: int = 32       # Ranker negatives taken from the Generator's own top list
    ranker_hard_pool: int = 500  # ...sampled from this many of its top candidates (= eval.k1)
    ranker_random: int = 16     # plus uniform random negatives
    # After training, fit how the Ranker's served score mixes the Generator score, the Ranker's
    # own score and log1p of the popularity counts, on the validation split (grank.blend).
    # Trained in-sample, where the Generator has memorised its targets, the Ranker weighs
    # recent popularity several times too lightly (docs/EXPERIMENTS.md). A step after training:
    # it does not change how the model trains.
    fit_blend: bool = True
    eval_every: int = 4         # epochs between validation passes (best epoch is kept)
    max_users: int = 0          # 0: all users; >0 limits users (tests)


@dataclass
class EvalConfig:
    ks: tuple = (10, 50, 200)   # cut-offs K of HR@K / NDCG@K
    k1: int = 500               # MIPS candidates passed to the Ranker (paper: 2000 of millions)
    k2: int = 200               # items returned by the Ranker (must be >= max(ks))
    batch_size: int = 512


@dataclass
class ServeConfig:
    """The shape the exported model repository serves where it differs from the trained and
    evaluated one (0 keeps that). Measured on the default ML-1M model (`python -m grank evaluate
    --served`, docs/PERFORMANCE.md): 200 candidates score the HR@10 of 500 and 1,000 at about
    1.3x the ensemble's throughput of 500 on a 2-core CPU; a 128-item history costs about
    0.001 HR@10 (U's pooled means and the Ranker both see less), so the repository serves 200
    candidates over the trained 256 items."""
    k1: int = 200       # MIPS candidates the served Ranker re-scores (0: eval.k1)
    history: int = 0    # history items a request carries, newest last (0: model.ranker_history)


@dataclass
class Config:
    dataset: str = "ml-1m"
    variant: str = "grank"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """The inverse of ``to_dict``, strict both ways: a saved config holds every key, so a
        missing key is never filled with today's default (which could change how an older
        model is served) and an unknown one is never ignored."""
        d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
        sub = {"model": ModelConfig, "train": TrainConfig, "eval": EvalConfig, "serve": ServeConfig}
        _check_keys(cls, d)
        return cls(**{k: _build(sub[k], v) if k in sub else v for k, v in d.items()})


def effective_dict(cfg: Config) -> dict:
    """The config as the variant uses it: settings of parts the variant does not have (the
    auxiliary-token loss weight and negatives without aux tokens, the Ranker's loss weight and
    negatives without a Ranker) are dropped, so changing them does not invalidate checkpoints
    of variants they cannot affect."""
    d = cfg.to_dict()
    d.pop("serve")  # how the model is served never changes how it is trained
    m, t = d["model"], d["train"]
    t.pop("fit_blend")  # a step after training (report.run_row checks it on its own)
    w = list(t.pop("loss_weights"))
    if not m["aux_tokens"]:
        t.pop("aux_negatives")
        w[1] = None
    if not m["ranker"]:
        m.pop("ranker_fusion"), m.pop("ranker_popularity")
        for k in ("ranker_hard", "ranker_hard_pool", "ranker_random"):
            t.pop(k)
        w[2] = None
    t["loss_weights"] = w
    if t["ntp_softmax"] == "exact":  # the sampled softmax's settings cannot change its training
        t.pop("ntp_negatives"), t.pop("ntp_sampler")
    return d


def _check_keys(cls, values: dict) -> None:
    names = {f.name for f in fields(cls)}
    unknown, missing = sorted(set(values) - names), sorted(names - set(values))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
    if missing:
        raise ValueError(f"{cls.__name__} keys missing: {missing}")


def _build(cls, values: dict):
    _check_keys(cls, values)
    return cls(**{k: tuple(v) if isinstance(getattr(cls(), k), tuple) else v for k, v in values.items()})


# Ablation rows of the paper plus the SASRec-style baseline: switches on one model.
VARIANTS: dict[str, dict[str, bool]] = {
    "grank": dict(query_token=True, aux_tokens=True, ranker=True),
    "generator_only": dict(query_token=True, aux_tokens=False, ranker=False),
    "generator_ranker_no_aux": dict(query_token=True, aux_tokens=False, ranker=True),
    "generator_aux": dict(query_token=True, aux_tokens=True, ranker=False),
    "sasrec": dict(query_token=False, aux_tokens=False, ranker=False),
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "dataset": "ml-100k",
        "model.d_model": 16, "model.n_layers": 1, "model.n_heads": 1, "model.max_history": 16,
        "model.ranker_history": 32, "model.dropout": 0.0,
        "train.epochs": 3, "train.lr": 5e-3, "train.batch_size": 64, "train.ntp_positions": 8, "train.aux_negatives": 7,
        "train.ranker_hard": 8, "train.ranker_hard_pool": 32, "train.ranker_random": 4,
        "train.eval_every": 1, "train.max_users": 200, "train.warmup_steps": 5,
        "eval.k1": 50, "eval.k2": 20, "eval.ks": (5, 10, 20),
        "serve.k1": 0, "serve.history": 0,
    },
    "fast": {"train.epochs": 3, "train.eval_every": 3, "train.max_users": 0},
    "default": {},
}


def _coerce(current: Any, value: Any, key: str) -> Any:
    """Parse a CLI string (or accept a Python value) into the type of the current value."""
    typ = type(current)
    if isinstance(value, str) and typ is not str:
        if typ is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{key}: expected a boolean (true/false), got {value!r}")
            return value.lower() in ("true", "1")
        if typ is tuple:
            parts = [p for p in value.replace(" ", "").split(",") if p]
            elem = type(current[0]) if current else float
            return tuple(elem(p) for p in parts)
        try:
            return typ(value)
        except ValueError as e:
            raise ValueError(f"{key}: expected {typ.__name__}, got {value!r}") from e
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ValueError(f"{key}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``cfg`` with dotted-key overrides (``"model.d_model": 32``) applied."""
    cfg = Config.from_dict(cfg.to_dict())
    for key, value in overrides.items():
        parts = key.split(".")
        obj = cfg
        for p in parts[:-1]:
            if not hasattr(obj, p) or not dataclasses.is_dataclass(getattr(obj, p)):
                raise ValueError(f"unknown config section in {key!r}")
            obj = getattr(obj, p)
        name = parts[-1]
        if not dataclasses.is_dataclass(obj) or name not in {f.name for f in fields(obj)}:
            raise ValueError(f"unknown config key {key!r}")
        setattr(obj, name, _coerce(getattr(obj, name), value, key))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    m, t, e = cfg.model, cfg.train, cfg.eval
    if cfg.variant not in VARIANTS:
        raise ValueError(f"variant: must be one of {sorted(VARIANTS)}, got {cfg.variant!r}")
    if m.d_model % m.n_heads:
        raise ValueError(f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads})")
    if e.k2 > e.k1:
        raise ValueError(f"eval.k2 ({e.k2}) must be <= eval.k1 ({e.k1})")
    if max(e.ks) > e.k2:
        raise ValueError(f"eval.ks max ({max(e.ks)}) must be <= eval.k2 ({e.k2})")
    if len(t.loss_weights) != 3:
        raise ValueError("train.loss_weights: expected three weights (NTP, SA-info, CA-info)")
    if not m.ranker_fusion > 0:
        raise ValueError(f"model.ranker_fusion: must be > 0, got {m.ranker_fusion}")
    if m.aux_tokens and not m.query_token:
        raise ValueError("model.aux_tokens needs model.query_token (they share the decomposed attention)")
    for name in ("max_history", "ranker_history", "d_model", "n_layers"):
        if getattr(m, name) < 1:
            raise ValueError(f"model.{name} must be >= 1")
    if t.ntp_softmax not in NTP_SOFTMAXES:
        raise ValueError(f"train.ntp_softmax: must be one of {', '.join(NTP_SOFTMAXES)}, got {t.ntp_softmax!r}")
    if t.ntp_sampler not in NTP_SAMPLERS:
        raise ValueError(f"train.ntp_sampler: must be one of {', '.join(NTP_SAMPLERS)}, got {t.ntp_sampler!r}")
    if t.ntp_negatives < 0:
        raise ValueError(f"train.ntp_negatives: must be >= 0 (0: the batch's targets alone), got {t.ntp_negatives}")
    sv = cfg.serve
    if sv.k1 and not e.k2 <= sv.k1:
        raise ValueError(f"serve.k1 ({sv.k1}) must be >= eval.k2 ({e.k2}), or 0 to serve eval.k1")
    if sv.history and not m.max_history <= sv.history <= m.ranker_history:
        raise ValueError(f"serve.history ({sv.history}) must be in [model.max_history ({m.max_history}), "
                         f"model.ranker_history ({m.ranker_history})], or 0 to serve the trained history")


# Settings that change how a trained model is served, not its weights: how many MIPS candidates
# the Ranker re-scores (k1), how many items come back (k2, and the ks evaluated from them), and
# the served history length (the newest R items: a suffix of what the model was trained on).
SERVING_KEYS = ("eval.k1", "eval.k2", "eval.ks", "model.ranker_history", "serve.k1", "serve.history")


def served_config(cfg: Config, overrides: dict[str, Any] | None = None) -> Config:
    """``cfg`` as the model repository serves it: ``cfg.serve``'s shape, then serving-only
    ``overrides`` (``SERVING_KEYS``; a ``serve.*`` key changes the served shape itself)."""
    overrides = dict(overrides or {})
    k1 = int(overrides.pop("serve.k1", cfg.serve.k1))  # --set serve.k1=... changes the served shape too
    history = int(overrides.pop("serve.history", cfg.serve.history))
    shape = {**({"eval.k1": k1} if k1 else {}), **({"model.ranker_history": history} if history else {})}
    # the result serves exactly its own eval.k1 / model.ranker_history: nothing left to apply
    return with_serving(cfg, {**shape, **overrides, "serve.k1": 0, "serve.history": 0})


def with_serving(cfg: Config, overrides: dict[str, Any]) -> Config:
    """``cfg`` (a checkpoint's, at its trained shape) with serving-only ``overrides``
    (``SERVING_KEYS``) applied; anything that would change the trained weights is an error."""
    bad = sorted(set(overrides) - set(SERVING_KEYS))
    if bad:
        raise ValueError(f"{', '.join(bad)}: not a serving setting of a trained model; "
                         f"only {', '.join(SERVING_KEYS)} can change after training")
    new = apply_overrides(cfg, overrides)
    R, trained = new.model.ranker_history, cfg.model.ranker_history
    if not new.model.max_history <= R <= trained:
        raise ValueError(f"model.ranker_history: must be in [{new.model.max_history} (model.max_history), "
                         f"{trained} (trained)], got {R}")
    return new


def parse_override(text: str) -> tuple[str, str]:
    """One ``--set KEY=VALUE`` command-line argument (an argparse ``type``); the value stays a
    string until ``apply_overrides`` types it by the config field."""
    import argparse
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expects key=value (e.g. model.d_model=32), got {text!r}")
    key, value = text.split("=", 1)
    return key, value


def make_config(preset: str = "default", variant: str = "grank", seed: int = 0,
                overrides: dict[str, Any] | None = None) -> Config:
    """Build a config from a preset name, a variant (results row) and dotted overrides."""
    if preset not in PRESETS:
        raise ValueError(f"preset: must be one of {sorted(PRESETS)}, got {preset!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant: must be one of {sorted(VARIANTS)}, got {variant!r}")
    merged = dict(PRESETS[preset])
    merged.update({f"model.{k}": v for k, v in VARIANTS[variant].items()})
    merged.update(overrides or {})
    cfg = Config(variant=variant, seed=seed)
    return apply_overrides(cfg, merged)
