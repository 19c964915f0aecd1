"""Synthetic catalogues with the geometry of the trained model (for MIPS benchmarks at scale).

Isotropic noise is the wrong test: real item vectors are clustered and anisotropic, which is
what makes graph and quantization indexes work (or not). So:

1. take the trained item table [N, d] (padding row dropped) and the real users' served vectors;
2. fit a Gaussian mixture to the items: k-means (``k`` clusters, k-means++ seeding) gives the
   components; each gets its weight, mean and covariance, shrunk toward its diagonal
   (``shrink``) so that clusters of ~N/k points still give a positive-definite matrix;
3. draw any number of items from that mixture (seeded): in chunks on the CPU (``sample``), or
   directly on a GPU (``sample_torch``, same distribution, another random stream).

Queries are the real users' vectors (the trained encoder on every user's served history).
``geometry_report`` compares a mixture sample of the real size with the real table on the
real queries (score scale, top-k score gaps), so the report can say how faithful it is.
"""
from __future__ import annotations

import numpy as np
import torch


def trained_vectors(checkpoint, max_users: int = 0):
    """(items [N, d] float32 without padding, user vectors [U, d] float32) of a checkpoint."""
    from grank.batches import eval_inputs
    from grank.data import load, split
    from grank.checkpoint import load_checkpoint
    model, cfg, _ = load_checkpoint(checkpoint)
    data = load(cfg.dataset)
    sp = split(data)
    users = sp.users[:max_users] if max_users else sp.users
    with torch.no_grad():
        table = model.item_vectors()
        vecs = []
        for s in range(0, len(users), 512):
            ids, rat, feats, _, _ = eval_inputs(sp, users[s:s + 512], "test", cfg.model.ranker_history)
            vecs.append(model.encode_users(torch.as_tensor(ids), torch.as_tensor(rat),
                                           torch.as_tensor(feats), table))
    return table[1:].numpy().astype(np.float32), torch.cat(vecs).numpy().astype(np.float32)


def kmeans(x: np.ndarray, k: int, iters: int = 25, seed: int = 0) -> np.ndarray:
    """Plain k-means with k-means++ seeding; returns assignments [N]."""
    rng = np.random.default_rng(seed)
    c = [x[rng.integers(len(x))]]
    d2 = ((x - c[0]) ** 2).sum(1)
    for _ in range(1, k):
        c.append(x[rng.choice(len(x), p=d2 / d2.sum())])
        d2 = np.minimum(d2, ((x - c[-1]) ** 2).sum(1))
    c = np.stack(c)
    for _ in range(iters):
        a = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if (a == j).any():
                c[j] = x[a == j].mean(0)
    return a


def fit_mixture(x: np.ndarray, k: int = 32, shrink: float = 0.2, seed: int = 0) -> dict:
    """A Gaussian mixture fitted to x [N, d]: {"weights" [k'], "means" [k', d], "chol" [k', d, d]
    (Cholesky factors of the shrunk covariances), "k": k', "shrink"}; k' <= k, clusters of fewer
    than 2 points are dropped."""
    a = kmeans(x, k, seed=seed)
    d = x.shape[1]
    w, mu, L = [], [], []
    for j in range(k):
        pts = x[a == j]
        if len(pts) < 2:
            continue
        cov = np.cov(pts, rowvar=False)
        cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov)) + 1e-6 * np.eye(d)
        w.append(len(pts))
        mu.append(pts.mean(0))
        L.append(np.linalg.cholesky(cov))
    w = np.array(w, dtype=np.float64)
    return {"weights": w / w.sum(), "means": np.stack(mu), "chol": np.stack(L), "k": len(w), "shrink": shrink}


def sample(mix: dict, n: int, seed: int = 0, chunk: int = 1 << 20) -> np.ndarray:
    """n items [n, d] float32 from the mixture, in chunks of ``chunk`` rows (memory stays
    O(chunk * d) whatever n)."""
    rng = np.random.default_rng(seed)
    d = mix["means"].shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        comp = rng.choice(mix["k"], size=m, p=mix["weights"])
        z = rng.standard_normal((m, d))
        # per component, not mix["chol"][comp]: that gathers an [m, d, d] float64 array
        # (32 GB at m = 1M, d = 64)
        block = np.empty((m, d))
        for j in range(mix["k"]):
            sel = comp == j
            block[sel] = mix["means"][j] + z[sel] @ mix["chol"][j].T
        out[s:s + m] = block
    return out


def geometry_report(items: np.ndarray, users: np.ndarray, mix: dict, k: int = 500) -> dict:
    """Real table vs a same-size mixture sample, scored by the real user vectors."""
    fake = sample(mix, len(items), seed=1)
    out = {}
    for name, t in (("real", items), ("mixture", fake)):
        s = users[:1000] @ t.T
        top = -np.sort(-s, 1)[:, :k]
        out[name] = {"item_norm_mean": float(np.linalg.norm(t, axis=1).mean()),
                     "score_mean": float(s.mean()), "score_std": float(s.std()),
                     "top1_score_mean": float(top[:, 0].mean()),
                     f"top{k}_score_mean": float(top[:, -1].mean())}
    return out


def sample_torch(mix: dict, n: int, device, seed: int = 0) -> torch.Tensor:
    """n items [n, d] float32 on ``device`` from the mixture (the distribution of ``sample``,
    another random stream): a 100M-item catalogue is drawn where it is searched instead of
    crossing the host link. Components are drawn in one block each, then shuffled."""
    g = torch.Generator(device=device).manual_seed(seed)
    w = torch.as_tensor(mix["weights"], dtype=torch.float64, device=device)
    counts = torch.bincount(torch.multinomial(w, n, replacement=True, generator=g), minlength=len(w))
    d = mix["means"].shape[1]
    out = torch.empty(n, d, device=device)
    s = 0
    for j, c in enumerate(counts.tolist()):
        if c:
            mu = torch.as_tensor(mix["means"][j], dtype=torch.float32, device=device)
            L = torch.as_tensor(mix["chol"][j], dtype=torch.float32, device=device)
            out[s:s + c] = mu + torch.randn(c, d, generator=g, device=device) @ L.T
            s += c
    return out[torch.randperm(n, generator=g, device=device)]
