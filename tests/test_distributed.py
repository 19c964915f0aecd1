"""Multi-process training (grank.distributed): ranks split each global batch, DDP averages their
gradients through the training-loss wrapper, and a 2-process CPU run trains, writes a checkpoint
that loads and exports like a 1-process one, and resumes after being killed.

The 2-process runs start ``torchrun --standalone`` on this machine (gloo, free ports), so they
need no GPU. Run as a script under torchrun, this file is the rank program of
``test_ddp_gradients_are_the_global_batch_mean``.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from grank.cli import InputError
from grank.distributed import World, choose, local_batch_size, local_rows, rank_seed

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
TRAIN = [*TORCHRUN, "-m", "grank", "train", "--preset", "tiny", "--threads", "1"]
# 4 epochs: the run killed when epoch 1's last.pt appears has several seconds of epochs left
EPOCHS = ["--set", "train.epochs=4"]


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_rank_slices_of_a_global_batch_are_disjoint_and_cover_it(size):
    for rows in (1, 2, 3, 7, 64, 65, 128):
        parts = [local_rows(rows, World(rank=r, size=size)) for r in range(size)]
        owned = [list(range(rows))[p] for p, w in parts if w > 0]
        flat = [i for o in owned for i in o]
        assert sorted(flat) == list(range(rows)) and len(flat) == rows  # disjoint, covering
        assert max(map(len, owned)) - min(map(len, owned)) <= 1
        # DDP divides the summed gradients by N: the weights make that the global batch's mean
        assert sum(w for _, w in parts) == pytest.approx(size)
        for p, w in parts:
            if w == 0:  # a rank without rows still steps, on a stand-in row that counts for nothing
                assert rows < size and p == slice(0, 1)
    assert local_rows(128, World(rank=1, size=2)) == (slice(64, 128), 1.0)
    assert local_rows(5, World()) == (slice(0, 5), 1.0)  # one process: the batch as it is


def test_the_global_batch_must_split_evenly():
    assert local_batch_size(128, World(size=4)) == 32
    with pytest.raises(InputError, match=r"train.batch_size \(64\) must be divisible by the number of "
                                         r"processes \(3\).*--set train.batch_size=63"):
        local_batch_size(64, World(size=3))


def test_each_rank_draws_its_own_negatives_reproducibly():
    seeds = {rank_seed(0, e, r) for e in range(3) for r in range(4)}
    assert len(seeds) == 12 and rank_seed(0, 1, 2) == rank_seed(0, 1, 2) != rank_seed(1, 1, 2)


def test_device_and_backend_errors_name_the_fix(monkeypatch):
    two = World(rank=1, size=2, local_rank=1, local_size=2)
    with pytest.raises(InputError, match="nccl needs CUDA devices.*--device cuda"):
        choose(two, "cpu", "nccl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InputError, match=r"2 processes on this machine, but it has 1 CUDA device.*--nproc-per-node 1"):
        choose(two, "cuda")
    with pytest.raises(InputError, match="each process trains on cuda:LOCAL_RANK"):
        choose(two, "cuda:0")
    assert choose(two, "cpu") == (World(1, 2, 1, 2, "gloo"), "cpu")
    assert choose(World(), "cpu") == (World(), "cpu")  # one process: no backend, nothing started


def test_ddp_gradients_are_the_global_batch_mean(ml100k, tmp_path):
    """Through the wrapper DDP hands every rank the mean of the ranks' weighted gradients, also
    for a short last batch and for a rank without rows, and the ranks stay equal step by step."""
    out = tmp_path / "ranks.json"
    run = subprocess.run([*TORCHRUN, __file__, str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["rows"] == [8, 3, 1]
    assert max(res["grad_diff"]) < 1e-6, res
    assert res["grad_norm"] and min(res["grad_norm"]) > 0
    assert res["ranks_equal_after_steps"] and res["moved"] > 0


def _rank_program(out: str) -> None:
    """Each rank: gradients of its slice computed plainly, summed over ranks / N, against the
    gradients DDP leaves after backward through ``grank.distributed.wrap``; then two real
    ``train_step``s, after which every rank's parameters must be equal."""
    import torch.distributed as dist

    import grank.train as T
    from grank import distributed as D
    from grank.batches import epoch_samples
    from grank.checkpoint import build_model
    from grank.config import make_config
    from grank.data import load, split

    torch.set_num_threads(1)
    world, device = D.choose(D.from_env())
    D.start(world, device)
    cfg = make_config("tiny", "grank", seed=0)
    data = load(cfg.dataset)
    users, ends = epoch_samples(split(data, cfg.train.max_users), cfg.model.max_history, np.random.default_rng(0))
    torch.manual_seed(0)
    model = build_model(cfg, data)
    plain = copy.deepcopy(model)
    task = D.wrap(model, cfg, T.losses, world, device)
    res = {"rows": [], "grad_diff": [], "grad_norm": []}
    for i, rows in enumerate((8, 3, 1)):
        part, weight = local_rows(rows, world)
        batch = T.make_batch(data, users[:rows][part], ends[:rows][part], cfg)
        grads = []
        for net, fwd in ((plain, lambda b: T.losses(plain, b, cfg)), (model, task)):
            net.zero_grad(set_to_none=False)
            torch.manual_seed(100 * i + world.rank)  # the same negatives in both computations
            (fwd(batch)["total"] * weight).backward()
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        want = grads[0].clone()
        dist.all_reduce(want)
        want /= world.size
        res["rows"].append(rows)
        res["grad_diff"].append(float((want - grads[1]).abs().max()))
        res["grad_norm"].append(float(grads[1].norm()))
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    torch.manual_seed(D.rank_seed(0, 0, world.rank))
    for s in (0, 8):
        part, weight = local_rows(8, world)
        T.train_step(model, opt, T.make_batch(data, users[s:s + 8][part], ends[s:s + 8][part], cfg), cfg, task, weight)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    every = [torch.zeros_like(after) for _ in range(world.size)]
    dist.all_gather(every, after)
    res["ranks_equal_after_steps"] = all(torch.equal(every[0], e) for e in every[1:])
    res["moved"] = float((after - before).abs().max())
    if world.main:
        Path(out).write_text(json.dumps(res))
    D.stop(world)


def _descendants(pid: int) -> list[int]:
    """Process ids of every descendant of ``pid`` (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a killed one waiting to be reaped is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _history(summary: dict) -> list:
    return [{k: v for k, v in r.items() if k not in ("seconds", "sequences_per_s")} for r in summary["history"]]


def test_two_processes_train_resume_after_a_kill_and_export(ml100k, tmp_path):
    """A 2-process run killed (torchrun and both ranks, SIGKILL) as soon as epoch 1's last.pt is written,
    then started again with the same command, resumes there and ends where an uninterrupted
    2-process run ends; its checkpoint loads and exports like a 1-process one."""
    from export.build import export_checkpoint
    from grank.checkpoint import load_checkpoint, read
    from grank.data import split
    from grank.evaluate import evaluate_model

    out = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([*TRAIN, *EPOCHS, "--out", str(out)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        ranks = _descendants(proc.pid)  # torchrun starts each rank in a process group of its own
        for pid in [proc.pid, *ranks]:
            _kill(pid)
        proc.wait()
    while any(map(_running, ranks)) and time.time() < deadline:
        time.sleep(0.05)
    assert ranks and not any(map(_running, ranks)), "a rank outlived the kill"
    assert (out / "last.pt").exists(), (tmp_path / "killed.log").read_text()[-3000:]
    stopped_at = read(out / "last.pt")["state"]["epoch"]
    assert 1 <= stopped_at < 4 and not (out / "train.json").exists()

    resumed = subprocess.run([*TRAIN, *EPOCHS, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed {out / 'last.pt'} at epoch {stopped_at}" in resumed.stdout
    epochs = [line for line in resumed.stdout.splitlines() if line.startswith('{"epoch": ')]
    assert len(epochs) == 4 - stopped_at  # each printed once, by rank 0
    straight = subprocess.run([*TRAIN, *EPOCHS, "--out", str(tmp_path / "straight")], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    summary = json.loads((out / "train.json").read_text())
    assert (summary["world_size"], summary["backend"], summary["device"]) == (2, "gloo", "cpu")
    assert len(summary["history"]) == 4 and summary["threads"] == 1
    assert summary["history"][-1]["loss_total"] < summary["history"][0]["loss_total"] - 0.3
    assert _history(summary) == _history(json.loads((tmp_path / "straight" / "train.json").read_text()))

    ck = read(out / "best.pt")
    assert "blend" in ck and not any(k.startswith("module.") for k in ck["model"])
    model, cfg, _ = load_checkpoint(out / "best.pt", ml100k)
    res = evaluate_model(model, split(ml100k, cfg.train.max_users), "val", cfg.eval, progress=False)
    assert res["HR@10"] == pytest.approx(ck["blend"]["val_after"]["HR@10"], abs=1e-4)
    assert res["HR@20"] > 2 * 20 / ml100k.n_items  # clearly above a random ranking
    exported = export_checkpoint(out / "best.pt", tmp_path / "onnx", users=16, data=ml100k)
    assert exported.problems and not any(exported.problems.values())


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (one NCCL rank on each)")
def test_two_gpus_train_with_nccl(ml100k, tmp_path):
    run = subprocess.run([*TRAIN, "--device", "cuda", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "train.json").read_text())
    assert (summary["world_size"], summary["backend"], summary["device"]) == (2, "nccl", "cuda")
    assert summary["history"][-1]["loss_total"] < summary["history"][0]["loss_total"]


if __name__ == "__main__":
    _rank_program(sys.argv[1])
