"""Checkpoints: the one place that writes, reads and rebuilds a trained model.

Export, serving tools, clients, perf and evaluation load a model through this module, never
through the training code. A checkpoint is a ``torch.save`` dict:

- ``format_version``: int, ``FORMAT_VERSION`` of the code that wrote it. A checkpoint of an
  older version that ``UPGRADES`` knows how it was trained is brought to this version on reading;
  any other version is refused with both versions named: configs and state dicts change between
  versions, and guessing how an older model was trained would serve it wrongly;
- ``config``: ``Config.to_dict()``: the model is rebuilt from this alone;
- ``model``: the state dict (the Ranker's ``blend`` buffer included);
- ``data_fingerprint``: ``grank.data.fingerprint`` of the data it was trained on;
- ``dataset``: ``grank.data.schema`` of that data (catalogue size, events, features): with the
  config, all that rebuilding the network needs;
- ``catalogue``: ``grank.data.catalogue``: the data set's own id and name of every item, which
  the model repository serves so that callers never see dense ids;
- ``optimizer``, ``scheduler``, ``torch_rng``, ``numpy_rng``, ``state``: what resuming needs;
- ``blend``: the summary of the served blend's fit (``grank.blend``), once it was fitted.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .cli import InputError
from .config import Config, TrainConfig, served_config, with_serving
from .data import Interactions, catalogue, fingerprint, schema
from .model import GRank
from .popularity import RecentPopularity
from .sampled_softmax import AUTO_SAMPLED_ABOVE, NegativeSampler, resolve
from .signatures import takes_request_time as uses_popularity

# 4 (2026-12-06): L_NTP's softmax is a setting (``train.ntp_softmax``, ``ntp_negatives``,
# ``ntp_sampler``: grank.sampled_softmax); format 3 is upgraded on reading (``UPGRADES``).
# 3 (2026-12-06): any data set: the ``dataset`` schema and ``catalogue`` are stored, item
# features are generic (``items.features``), no ``model.high_rating``. 2 (2026-12-06): the
# Ranker always scores on its own (no ``model.ranker_score``), without the options removed that
# day; it has a ``blend`` buffer. 1: every checkpoint written before.
FORMAT_VERSION = 4

HINT = ("train one first (`make train PRESET=default` writes artifacts/default/grank/best.pt, "
        "`make demo` artifacts/fast/grank/best.pt) or pass the path of an existing best.pt")


def build_model(cfg: Config, data: Interactions) -> GRank:
    """A freshly initialised network for ``cfg`` over ``data``'s catalogue, its item features
    and (only where the Ranker uses them) popularity counts filled in."""
    if uses_popularity(cfg) and not data.timed:
        raise InputError(f"model.ranker_popularity: data set {data.name} has no timestamps, so there is "
                         "no popularity by day; train with --set model.ranker_popularity=false")
    model = GRank(cfg.model, schema(data), RecentPopularity.from_data(data) if uses_popularity(cfg) else None)
    model.items.fill(data.item_features)
    if resolve(cfg.train.ntp_softmax, data.n_items) == "sampled":
        # training-only state, not a buffer: never in the state dict, the export or a DDP broadcast
        model.ntp_sampler = NegativeSampler.from_data(data, cfg.train.ntp_sampler, model.items.id.weight.device)
    return model


def rebuild(cfg: Config, ck: dict) -> GRank:
    """The network of checkpoint dict ``ck`` (at ``cfg``'s shape), from the checkpoint alone."""
    pop = None
    if uses_popularity(cfg):
        days, cols = ck["model"]["popularity.table"].shape
        pop = RecentPopularity(cols - 1, days - 1)
    model = GRank(cfg.model, ck["dataset"], pop)
    model.load_state_dict(ck["model"])
    return model.eval()


def save(path: str | Path, state: dict, data: Interactions) -> None:
    """Write ``state`` (the keys of the module doc; ``format_version``, ``data_fingerprint``,
    ``dataset`` and ``catalogue`` added from ``data``) atomically: an interrupted save never
    corrupts the last good checkpoint."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save({"format_version": FORMAT_VERSION, "data_fingerprint": fingerprint(data),
                "dataset": schema(data), "catalogue": catalogue(data), **state}, tmp)
    tmp.replace(path)


# where the code that reads an older format lives
FORMATS = {1: "tag ranker-recipes-2026-12-06 (commit 311b61e)",
           2: "tag checkpoint-format-2 (commit e01f7d3)"}


def _from_3(ck: dict, n_items: int) -> dict:
    """Format 3 -> 4. Format 3 trained L_NTP with the exact softmax alone and had no
    ``train.ntp_*`` keys. They are filled so that the model trains as it was trained:
    ``ntp_softmax`` "auto" where this format's auto choice is the exact softmax (catalogues of up
    to ``AUTO_SAMPLED_ABOVE`` items, ML-1M's included: a run resumes under the default config),
    "exact" above; ``ntp_negatives`` and ``ntp_sampler`` at their defaults, which the exact
    softmax never reads. Nothing else changed between the formats."""
    if n_items is None:
        raise ValueError("upgrading format 3 needs the catalogue size the model was trained on (n_items)")
    ck = dict(ck)
    config = {**ck["config"], "train": dict(ck["config"]["train"])}
    config["train"].update(ntp_softmax="auto" if n_items <= AUTO_SAMPLED_ABOVE else "exact",
                           ntp_negatives=TrainConfig.ntp_negatives, ntp_sampler=TrainConfig.ntp_sampler)
    ck.update(config=config, format_version=4)
    return ck


# format -> a function (checkpoint dict of that format, catalogue size) -> dict of the next format
UPGRADES = {3: _from_3}


def upgrade(ck: dict, n_items: int | None = None) -> dict:
    """Checkpoint dict ``ck`` brought to ``FORMAT_VERSION`` through ``UPGRADES`` (a new dict;
    ``ck`` is unchanged); a format that cannot be upgraded is returned as it is, for
    ``check_version`` to refuse. ``n_items``: the catalogue size it was trained on, needed only
    where ``ck`` does not store it (a training summary, train.json, has a ``config`` and a
    ``format_version`` but no ``dataset``)."""
    while ck.get("format_version") in UPGRADES:
        ck = UPGRADES[ck["format_version"]](ck, ck["dataset"]["n_items"] if "dataset" in ck else n_items)
    return ck


def check_version(version, what: str, fix: str = "retrain it with this code") -> None:
    """Refuse a checkpoint (or a training summary) written by another format version; ``fix``
    says what to do instead, in the words of the caller (a command-line flag, ...)."""
    version = 1 if version is None else version  # version 1 did not record itself
    if version != FORMAT_VERSION:
        other = (f"the code of {FORMATS[version]} reads it" if version in FORMATS
                 else "grank.checkpoint.upgrade brings a checkpoint of it to this version" if version in UPGRADES
                 else "newer code wrote it")
        raise InputError(f"{what}: checkpoint format version {version}, this code reads version "
                         f"{FORMAT_VERSION}; {fix} ({other})")


def read(path: str | Path, fix: str = "retrain it with this code") -> dict:
    """The checkpoint dict at ``path``, upgraded from an older format that ``UPGRADES`` knows,
    its format version checked (``fix``: what the error tells the user to do about another
    version); a missing file is a ``FileNotFoundError`` that says how to get one (every command
    that reads a model starts here)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file; {HINT}")
    ck = upgrade(torch.load(path, map_location="cpu", weights_only=True))
    check_version(ck.get("format_version"), str(path), fix)
    return ck


def load_checkpoint(path: str | Path, data: Interactions | None = None, serving: dict | None = None,
                    served: bool = False):
    """Rebuild (model in eval mode, config, checkpoint dict) from a checkpoint file alone, at
    the trained shape, or with ``served`` at the shape the repository serves (``cfg.serve``).
    ``serving``: serving-only overrides on top (``config.SERVING_KEYS``, e.g.
    ``{"eval.k1": 1000}``), applied to the returned config and to the model (a shorter history
    uses the newest slots' weights). ``data``: the data set the caller will use with the model,
    checked to be the one it was trained on (the checkpoint alone is enough to rebuild it)."""
    ck = read(path)
    cfg = Config.from_dict(ck["config"])
    if data is not None:
        check_data(path, ck, data)
    model = rebuild(cfg, ck)
    if served or serving:
        try:
            cfg = served_config(cfg, serving) if served else with_serving(cfg, serving)
        except ValueError as e:  # a --set of a command line: says which setting and why
            raise InputError(f"serving setting: {e}") from e
        model.cfg = cfg.model
    return model, cfg, ck


def check_data(path, ck: dict, data: Interactions) -> None:
    """Refuse to use checkpoint ``ck`` (read from ``path``) with data it was not trained on."""
    if ck["data_fingerprint"] != fingerprint(data):
        raise InputError(f"{path}: trained on {ck['dataset']['name']} data with fingerprint "
                         f"{ck['data_fingerprint']}, not on this {data.name} data ({fingerprint(data)})")


def served_config_of(path: str | Path) -> tuple[Config, bool]:
    """(the config a checkpoint is served with, whether its blend was fitted), without
    rebuilding the model or loading its data."""
    ck = read(path)
    return served_config(Config.from_dict(ck["config"])), "blend" in ck
