"""MIPS top-k methods measured side by side on the CPU: the served module and its peers.

Every method: ``build(items [N, d] float32, k)`` then ``search(queries [B, d] float32) -> ids
[B, k] int64`` (0-based rows of ``items``), ``params`` (the knob tuned for recall, if any) and
``memory_bytes``. ``grank_mips`` is the exported ONNX graph exactly as served
(``export.onnx_models.MipsTopK``: table constant, padding + history exclusion, TopK), run by
ONNX Runtime with an all-padding history so that its answer is the plain exact top-k.
``tune`` picks the cheapest setting of an index method that reaches a recall target;
``timed`` measures a method's latency.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .measure import latency, recall

THREADS = os.cpu_count() or 1
# history_ids columns passed to the MIPS module, so that its scatter of R ids per user is timed
# too: the history the default repository serves (grank.config.ServeConfig keeps the trained
# 256), which every CPU row of docs/performance.json was measured with.
SERVED_HISTORY = 256


def cpu_session(model, threads: int):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads; ``model``: a path or the
    serialized bytes of an ONNX model."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


class Method:
    name = ""
    tunable: str | None = None
    params: dict = {}

    def build(self, items: np.ndarray, k: int) -> float:
        """Returns the build time in seconds."""
        raise NotImplementedError

    def search(self, q: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def set_param(self, value) -> None:
        pass

    def set_k(self, items: np.ndarray, k: int) -> float | None:
        """Switch to another k without rebuilding the index; methods whose graph bakes k in
        rebuild and return the seconds that took (None: nothing was rebuilt)."""
        self.k = k
        return None

    memory_bytes = 0


def _mips_signature(d: int, k: int):
    """The served MIPS signature for a d-wide table, k candidates and the served history."""
    from grank.config import make_config
    from grank.signatures import mips_signature
    cfg = make_config("default", overrides={"model.d_model": d, "eval.k1": k, "eval.k2": 1, "eval.ks": (1,),
                                            "model.ranker_history": SERVED_HISTORY})
    return mips_signature(cfg)


class GrankMips(Method):
    """The served ONNX module (what Triton runs), via ONNX Runtime."""
    name = "grank_mips"

    def build(self, items, k):
        from export.onnx_models import MipsTopK, export_one
        t = time.perf_counter()
        table = torch.cat([torch.zeros(1, items.shape[1]), torch.from_numpy(items)])
        self.k, self.R = k, SERVED_HISTORY
        arrays = {"user_embedding": np.zeros((2, items.shape[1]), np.float32),
                  "history_ids": np.zeros((2, SERVED_HISTORY), np.int64)}
        self._dir = tempfile.TemporaryDirectory()
        path = export_one(MipsTopK(table, k).eval(), _mips_signature(items.shape[1], k), arrays,
                          Path(self._dir.name) / "mips.onnx")
        self._open(path)
        return time.perf_counter() - t

    def _open(self, path: Path) -> None:
        """An ONNX Runtime session on every core, as the benchmark's other methods get; the
        memory is what the model directory holds (graph + external data)."""
        self.sess = cpu_session(str(path), THREADS)
        self.memory_bytes = sum(f.stat().st_size for f in Path(self._dir.name).iterdir())

    def search(self, q):
        hist = np.zeros((len(q), self.R), np.int64)
        ids, _ = self.sess.run(["candidate_ids", "candidate_scores"], {"user_embedding": q, "history_ids": hist})
        return ids - 1

    def set_k(self, items, k):
        return self.build(items, k)


class GrankMipsInt8(GrankMips):
    """``export.mips_int8``: int8 scan of the whole table + exact fp32 re-score of the top 2k,
    same signature as the served module, via ONNX Runtime."""
    name = "grank_mips_int8"
    RESCORE = 2  # short list = RESCORE * k

    def build(self, items, k):
        import onnx

        from export.mips_int8 import int8_mips_model
        t = time.perf_counter()
        table = np.concatenate([np.zeros((1, items.shape[1]), np.float32), items])
        self.k, self.R = k, SERVED_HISTORY
        self._dir = tempfile.TemporaryDirectory()
        path = Path(self._dir.name) / "mips_int8.onnx"
        onnx.save(int8_mips_model(table, k, _mips_signature(items.shape[1], k), rescore=self.RESCORE * k),
                  str(path), save_as_external_data=True, location="mips_int8.onnx.data")
        self._open(path)
        self.params = {"rescore": self.RESCORE * k, "item_bits": 7}
        return time.perf_counter() - t


class TorchTopK(Method):
    name = "torch_topk"

    def build(self, items, k):
        self.t, self.k = torch.from_numpy(items), k
        self.memory_bytes = items.nbytes
        return 0.0

    def search(self, q):
        with torch.no_grad():
            return (torch.from_numpy(q) @ self.t.T).topk(self.k, dim=1).indices.numpy()


class _Faiss(Method):
    def _index(self, items):
        raise NotImplementedError

    def build(self, items, k):
        import faiss
        faiss.omp_set_num_threads(THREADS)
        self.k = k
        t = time.perf_counter()
        self.index = self._index(items)
        dt = time.perf_counter() - t
        self.memory_bytes = int(faiss.serialize_index(self.index).nbytes)
        return dt

    def search(self, q):
        return self.index.search(q, self.k)[1]

    def add_time(self, v: np.ndarray) -> float:
        """Seconds to make one new item retrievable by adding it to the built index."""
        t = time.perf_counter()
        self.index.add(v)
        return time.perf_counter() - t


class FaissFlat(_Faiss):
    name = "faiss_flat"

    def _index(self, items):
        import faiss
        ix = faiss.IndexFlatIP(items.shape[1])
        ix.add(items)
        return ix


def _nlist(n: int) -> int:
    # ~4 sqrt(N) lists, but at least 39 training points per list (faiss's own minimum)
    return int(max(8, min(4 * np.sqrt(n), n // 39)))


class FaissHNSW(_Faiss):
    """HNSW graph (M = 32, efConstruction = 80) over the MIPS -> L2 reduction (Bachrach et al.
    2014): items get an extra coordinate sqrt(max|x|^2 - |x|^2), queries a 0, so the nearest
    item in L2 is the one with the largest inner product. A graph built on raw inner products
    saturated below recall 0.95 at k = 500 (0.949 vs 0.993 at efSearch 4000, 200k items of the
    trained geometry); a new item longer than the longest indexed one needs a rebuild."""
    name = "faiss_hnsw"
    tunable = "efSearch"
    M, EF_CONSTRUCTION = 32, 80

    def _augment(self, x, queries: bool = False):
        extra = np.zeros((len(x), 1), np.float32) if queries else \
            np.sqrt(np.maximum(self._max_sq - (x ** 2).sum(1), 0))[:, None].astype(np.float32)
        return np.ascontiguousarray(np.hstack([x, extra]))

    def _index(self, items):
        import faiss
        self._max_sq = float((items ** 2).sum(1).max())
        ix = faiss.IndexHNSWFlat(items.shape[1] + 1, self.M)
        ix.hnsw.efConstruction = self.EF_CONSTRUCTION
        ix.add(self._augment(items))
        return ix

    def search(self, q):
        return self.index.search(self._augment(q, queries=True), self.k)[1]

    def add_time(self, v):
        t = time.perf_counter()
        self.index.add(self._augment(v))
        return time.perf_counter() - t

    def grid(self, n):
        return [int(self.k * f) for f in (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 32, 64)]

    def set_param(self, v):
        self.index.hnsw.efSearch = int(v)
        self.params = {"M": self.M, "efConstruction": self.EF_CONSTRUCTION, "efSearch": int(v), "reduction": "mips->l2"}


class FaissIVFFlat(_Faiss):
    name = "faiss_ivfflat"
    tunable = "nprobe"

    def _index(self, items):
        import faiss
        self.nlist = _nlist(len(items))
        ix = faiss.IndexIVFFlat(faiss.IndexFlatIP(items.shape[1]), items.shape[1], self.nlist,
                                faiss.METRIC_INNER_PRODUCT)
        ix.train(items[np.random.default_rng(0).permutation(len(items))[:max(256 * self.nlist, 100_000)]])
        ix.add(items)
        return ix

    def grid(self, n):
        return [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p <= self.nlist] + [self.nlist]

    def set_param(self, v):
        self.index.nprobe = int(v)
        self.params = {"nlist": self.nlist, "nprobe": int(v)}


class FaissIVFPQRefine(_Faiss):
    """IVF-PQ (16 sub-quantizers x 8 bits) whose short list of k_factor * k is re-scored exactly."""
    name = "faiss_ivfpq_refine"
    tunable = "nprobe,k_factor"
    PQ_M = 16

    def _index(self, items):
        import faiss
        d = items.shape[1]
        self.nlist = _nlist(len(items))
        ivfpq = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, self.nlist, self.PQ_M, 8, faiss.METRIC_INNER_PRODUCT)
        ix = faiss.IndexRefineFlat(ivfpq)
        ix.train(items[np.random.default_rng(0).permutation(len(items))[:max(256 * self.nlist, 100_000)]])
        ix.add(items)
        return ix

    def grid(self, n):
        probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p <= self.nlist] + [self.nlist]
        return [(p, f) for f in (2, 4, 8) for p in probes]

    def set_param(self, v):
        import faiss
        p, f = v
        faiss.downcast_index(self.index.base_index).nprobe = int(p)
        self.index.k_factor = float(f)
        self.params = {"nlist": self.nlist, "pq_m": self.PQ_M, "nprobe": int(p), "k_factor": f}


EXACT = (GrankMips, TorchTopK, FaissFlat)
REDUCED = (GrankMipsInt8,)  # approximate scan, exact scores of what it returns
INDEXED = (FaissHNSW, FaissIVFFlat, FaissIVFPQRefine)


def tune(method: Method, queries: np.ndarray, exact: np.ndarray, target: float):
    """The cheapest grid value whose recall@k reaches ``target`` (grid is ordered by cost
    within each k_factor); returns (value, recall) or (None, best recall seen)."""
    best = 0.0
    for v in method.grid(len(exact)):
        method.set_param(v)
        r = recall(method.search(queries), exact)
        best = max(best, r)
        if r >= target:
            return v, r
    return None, best


def timed(method: Method, queries: np.ndarray, batch: int, min_seconds: float = 1.0,
          max_calls: int = 200, windows: int = 2) -> dict:
    """Latency of ``search`` on ``batch`` rows, cycling through ``queries``: ``windows``
    windows of ``min_seconds`` (at least 3 calls each); the window with the lowest p50 is
    reported, as the floor takes its best of 5: on a shared machine a neighbour's burst slows a
    whole window, never speeds one up."""
    method.search(queries[:batch])  # warm-up
    runs = [latency(lambda s, e: method.search(queries[s:e]), len(queries), batch, min_seconds, max_calls,
                    min_calls=3) for _ in range(windows)]
    return min(runs, key=lambda t: t["p50_ms"])
