"""A/B of the served MIPS graph: the form before 2026-11-23 (scores divided by tau after the
MatMul, padding column set by its own assignment) against ``export.onnx_models.MipsTopK`` now
(1/tau folded into the user vectors, padding scattered with the history ids). Both exported
the same way, checked for equal answers, then timed alternately with ONNX Runtime (2 threads)
on a 1M-item random table; see docs/SERVING.md. ``python -m perf.mips_graph_ab``."""
import tempfile, numpy as np, torch, onnxruntime as ort
from pathlib import Path
from export.onnx_models import MipsTopK, export_one
from grank.config import make_config
from grank.signatures import MIPS, signatures
from perf.mips_methods import latency
N, d, k, R = 1_000_000, 64, 500, 256
rng = np.random.default_rng(0)
table = torch.cat([torch.zeros(1, d), torch.from_numpy(rng.standard_normal((N, d)).astype(np.float32))])
q = rng.standard_normal((256, d)).astype(np.float32)
hist = rng.integers(0, N, (256, R)).astype(np.int64)

class Old(MipsTopK):
    def forward(self, user_embedding, history_ids):
        s = (user_embedding @ self.item_vectors.T) / self.tau
        s[:, 0] = float("-inf")
        s = s.scatter(1, history_ids, float("-inf"))
        sc, ids = s.topk(self.k, dim=1)
        return ids, sc

cfg = make_config("default", overrides={"eval.k1": k, "eval.k2": 1, "eval.ks": (1,), "model.ranker_history": R})
arrays = {"user_embedding": q[:2], "history_ids": hist[:2]}
d0 = Path(tempfile.mkdtemp())
sess = {}
for name, M in (("old", Old), ("new", MipsTopK)):
    p = export_one(M(table, k).eval(), signatures(cfg)[MIPS], arrays, d0 / f"{name}.onnx")
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    sess[name] = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
o = {n: s.run(None, {"user_embedding": q[:8], "history_ids": hist[:8]}) for n, s in sess.items()}
assert (o["old"][0] == o["new"][0]).all() and np.allclose(o["old"][1], o["new"][1])
for b in (1, 16, 64):
    for rep in range(2):
        for n, s in sess.items():
            r = latency(lambda a, e: s.run(None, {"user_embedding": q[a:e], "history_ids": hist[a:e]}), 256, b, 2.0, 200)
            print(b, n, rep, round(r["p50_ms"], 2), flush=True)
