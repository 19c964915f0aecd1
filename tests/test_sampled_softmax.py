"""The sampled L_NTP (grank.sampled_softmax): the loss against hand-computed and exact values, the
samplers' probabilities, the auto choice, a training run in sampled mode, and the format-3
checkpoint upgrade (format 4 added the ``train.ntp_*`` settings)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import grank.train as T
from grank.checkpoint import FORMAT_VERSION, build_model, check_version, load_checkpoint, read, upgrade
from grank.config import Config, effective_dict, make_config
from grank.sampled_softmax import (AUTO_SAMPLED_ABOVE, NegativeSampler, candidate_softmax, hard_pool, resolve,
                                   sampled_ntp)

NTP_KEYS = ("ntp_softmax", "ntp_negatives", "ntp_sampler")


def test_every_item_as_a_candidate_without_correction_is_the_exact_loss():
    torch.manual_seed(0)
    N, M, d = 50, 12, 8
    table = torch.randn(N + 1, d)
    q, t = torch.randn(M, d), torch.randint(1, N + 1, (M,))
    exact = F.cross_entropy(q @ table[1:].T, t - 1)
    every = torch.arange(1, N + 1)
    loss, logits = candidate_softmax(q, t - 1, t, every, table[every])
    assert logits.shape == (M, N)
    assert loss.item() == pytest.approx(exact.item(), abs=1e-6)


def test_logq_correction_and_accidental_hits_on_a_hand_made_example():
    # two rows; candidates: item 5 twice (the first row's own column and another row's copy), 7, 9
    cand = torch.tensor([5, 7, 5, 9])
    vecs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    q = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    log_q = torch.tensor([0.5, -1.0, 0.5, 2.0])
    loss, logits = candidate_softmax(q, torch.tensor([0, 1]), torch.tensor([5, 7]), cand, vecs, log_q)
    # row 0 (target 5 at column 0): scores 2, 0, 2, 2, the negatives' minus log_q; column 2, its
    # target again, masked
    row0 = [2, 0 + 1.0, 2 - 2.0]
    # row 1 (target 7 at column 1): scores 0, 3, 0, 3, the negatives' minus log_q; nothing to mask
    row1 = [0 - 0.5, 3, 0 - 0.5, 3 - 2.0]
    want = [-row0[0] + math.log(sum(math.exp(x) for x in row0)),
            -row1[1] + math.log(sum(math.exp(x) for x in row1))]
    assert loss.item() == pytest.approx(sum(want) / 2, abs=1e-5)
    assert logits[0, 2] < -1e8 and (logits[1] > -1e8).all()


def test_expected_counts_and_sampler_probabilities():
    counts = np.array([0, 6, 3, 1, 0])
    uni = NegativeSampler(counts, "uniform")
    pop = NegativeSampler(counts, "popularity")
    assert torch.allclose(uni.p, torch.tensor([0, 0.6, 0.3, 0.1, 0], dtype=torch.float64))
    assert torch.allclose(uni.q[1:], torch.full((4,), 0.25, dtype=torch.float64)) and uni.q[0] == 0
    assert torch.allclose(pop.q, torch.tensor([0, 7, 4, 2, 1], dtype=torch.float64) / 14)  # count + 1
    # E[copies] = T p + K q: 10 in-batch targets and 8 draws
    got = uni.log_expected_count(torch.tensor([1, 4]), in_batch=10, drawn=8)
    assert torch.allclose(got, torch.tensor([math.log(10 * 0.6 + 8 * 0.25), math.log(8 * 0.25)]))
    torch.manual_seed(0)
    for s in (uni, pop):
        draws = s.sample(200_000)
        assert draws.min() >= 1 and draws.max() <= 4
        freq = torch.bincount(draws, minlength=5).double() / len(draws)
        assert torch.allclose(freq, s.q, atol=0.005), (s.kind, freq, s.q)
    with pytest.raises(ValueError, match="train.ntp_sampler: must be one of"):
        NegativeSampler(counts, "zipf")


def test_the_corrected_sampled_loss_estimates_the_exact_one():
    """With many uniform draws the logQ-corrected negatives' sum estimates the rest of the
    catalogue's: the sampled loss lands on the exact one, and so does its gradient; uncorrected,
    the loss is off by about log(K / N)."""
    torch.manual_seed(0)
    N, B, S, d, K = 40, 4, 2, 8, 40_000
    table = torch.randn(N + 1, d) * 0.5
    states = torch.randn(B, S, d, requires_grad=True)
    targets = torch.randint(1, N + 1, (B, S))
    targets[0, 0] = 0  # a slot without a target takes no part
    exact = F.cross_entropy((states @ table[1:].T).reshape(-1, N), (targets - 1).reshape(-1), ignore_index=-1)
    sampler = NegativeSampler(np.bincount(np.random.default_rng(0).integers(1, N + 1, 500), minlength=N + 1))
    loss, cand = sampled_ntp(states, targets, table, sampler, K, tau=1.0)
    assert len(cand) == B * S - 1 + K
    assert loss.item() == pytest.approx(exact.item(), abs=0.03)
    g_sampled, = torch.autograd.grad(loss, states)
    g_exact, = torch.autograd.grad(exact, states)
    assert torch.allclose(g_sampled, g_exact, atol=0.01), (g_sampled - g_exact).abs().max()
    sampler.log_expected_count = lambda ids, t, k: torch.zeros(len(ids))  # no correction
    torch.manual_seed(0)
    biased, _ = sampled_ntp(states, targets, table, sampler, K, tau=1.0)
    assert biased.item() - exact.item() == pytest.approx(math.log(K / N), abs=0.2)


def test_the_rankers_hard_pool_comes_from_the_candidates():
    """Each row's top candidates by the Generator's raw score, without its history or target."""
    table = torch.zeros(11, 2)
    table[:, 0] = torch.arange(11, dtype=torch.float)  # item i scores i for a query (1, 0)
    cand = torch.tensor([3, 5, 5, 9, 2, 7])
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    seen = torch.tensor([[0, 0, 5], [0, 7, 3]])  # 0 = padding
    pool = hard_pool(queries, cand, table, seen, torch.tensor([9, 2]), size=3)
    assert pool.tolist()[0][:2] == [7, 3]            # 9 (target) and 5 (seen) masked
    assert pool.tolist()[1][:2] == [9, 5]            # 7 and 3 seen, 2 the target
    assert pool.shape == (2, 3)


def test_the_auto_choice_at_the_threshold(ml100k):
    assert resolve("auto", AUTO_SAMPLED_ABOVE) == "exact"
    assert resolve("auto", AUTO_SAMPLED_ABOVE + 1) == "sampled"
    assert resolve("auto", 3706) == "exact"  # ML-1M keeps the exact softmax
    assert resolve("exact", 10 ** 7) == "exact" and resolve("sampled", 10) == "sampled"
    # only a sampled run carries the sampler (training counts; never in the state dict)
    assert not hasattr(build_model(make_config("tiny"), ml100k), "ntp_sampler")
    model = build_model(make_config("tiny", overrides={"train.ntp_softmax": "sampled"}), ml100k)
    assert model.ntp_sampler.n_items == ml100k.n_items and model.ntp_sampler.p[0] == 0
    assert not any("sampler" in k for k in model.state_dict())


@pytest.mark.parametrize("key,value,msg", [
    ("train.ntp_softmax", "approx", "train.ntp_softmax: must be one of auto, exact, sampled, got 'approx'"),
    ("train.ntp_sampler", "zipf", "train.ntp_sampler: must be one of uniform, popularity, got 'zipf'"),
    ("train.ntp_negatives", -1, "train.ntp_negatives: must be >= 0"),
    ("train.ntp_negatives", "many", "train.ntp_negatives: expected int"),
])
def test_bad_settings_name_the_key(key, value, msg):
    with pytest.raises(ValueError, match=msg):
        make_config("tiny", overrides={key: value})


def test_the_exact_softmax_ignores_the_sampling_settings():
    exact = make_config("tiny", overrides={"train.ntp_softmax": "exact"})
    other = make_config("tiny", overrides={"train.ntp_softmax": "exact", "train.ntp_negatives": 7,
                                           "train.ntp_sampler": "popularity"})
    assert effective_dict(exact) == effective_dict(other)
    sampled = make_config("tiny", overrides={"train.ntp_softmax": "sampled"})
    assert effective_dict(sampled) != effective_dict(make_config(
        "tiny", overrides={"train.ntp_softmax": "sampled", "train.ntp_negatives": 7}))


def test_sampled_training_lowers_the_loss_and_exports(ml100k, tmp_path):
    cfg = make_config("tiny", overrides={"train.ntp_softmax": "sampled", "train.ntp_negatives": 256,
                                         "train.ntp_sampler": "popularity", "train.epochs": 2})
    summary = T.train(cfg, ml100k, tmp_path, progress=False)
    assert summary["config"]["train"]["ntp_softmax"] == "sampled"
    h = summary["history"]
    assert h[-1]["loss_ntp"] < h[0]["loss_ntp"] - 0.2 and h[-1]["loss_ca"] < h[0]["loss_ca"]
    model, cfg2, _ = load_checkpoint(tmp_path / "best.pt", ml100k)
    assert cfg2 == cfg and not hasattr(model, "ntp_sampler")  # serving never needs it
    from export.build import export_checkpoint
    ex = export_checkpoint(tmp_path / "best.pt", tmp_path / "onnx", users=16, data=ml100k)
    assert not any(ex.problems.values()), ex.problems


def _as_format_3(src, dst):
    """A copy of checkpoint ``src`` as format 3 wrote it: no train.ntp_* keys."""
    ck = torch.load(src, weights_only=True)
    for k in NTP_KEYS:
        ck["config"]["train"].pop(k)
    ck["format_version"] = 3
    torch.save(ck, dst)
    return dst


def test_a_format_3_checkpoint_is_upgraded_to_how_it_was_trained(tiny_trained, ml100k, tmp_path):
    model, cfg, out, _ = tiny_trained
    old = _as_format_3(out / "best.pt", tmp_path / "best.pt")
    ck = read(old)
    assert ck["format_version"] == FORMAT_VERSION == 4
    # ML-100K's 1,682 items: "auto", which trains it with the exact softmax, as format 3 did
    assert ck["config"]["train"]["ntp_softmax"] == "auto" and resolve("auto", ml100k.n_items) == "exact"
    assert effective_dict(Config.from_dict(ck["config"])) == effective_dict(cfg)  # so a run resumes
    again, cfg2, _ = load_checkpoint(old, ml100k)
    assert cfg2 == cfg
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # above the auto threshold format 3's exact softmax is written out as "exact"
    big = {"format_version": 3, "config": {"train": {}}, "dataset": {"n_items": AUTO_SAMPLED_ABOVE + 1}}
    assert upgrade(big)["config"]["train"]["ntp_softmax"] == "exact" and big["format_version"] == 3
    # a training summary stores no catalogue: its size is passed
    summary = {"format_version": 3, "config": {"train": {}}}
    assert upgrade(summary, n_items=3706)["config"]["train"]["ntp_softmax"] == "auto"
    with pytest.raises(ValueError, match="needs the catalogue size"):
        upgrade(summary)
    with pytest.raises(ValueError, match="format version 3, this code reads version 4; .*grank.checkpoint.upgrade"):
        check_version(3, "train.json")


def test_an_interrupted_format_3_run_resumes_identically(tiny_trained, ml100k, tiny_cfg, tmp_path,
                                                        interrupt_at_epoch_2):
    """A run interrupted after epoch 1 under format 3 finishes under format 4 exactly as the
    uninterrupted run (tiny_trained) did."""
    _, _, _, straight = tiny_trained
    interrupt_at_epoch_2(lambda: T.train(tiny_cfg, ml100k, tmp_path, progress=False))
    for name in ("last.pt", "best.pt"):
        _as_format_3(tmp_path / name, tmp_path / name)
    resumed = T.train(tiny_cfg, ml100k, tmp_path, progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "sequences_per_s")} for r in h]
    assert strip(resumed["history"]) == strip(straight["history"])
    assert read(tmp_path / "last.pt")["format_version"] == FORMAT_VERSION


def test_results_reuse_a_format_3_row(tiny_trained, tmp_path):
    """`grank results` reads a row trained under format 3 (its train.json and best.pt) as the
    format-4 row it upgrades to: reused, not refused and not retrained."""
    from grank.report import run_dir, run_row
    _, _, out, summary = tiny_trained
    row = run_dir(tmp_path, "ml-100k", "tiny", "grank")   # the tiny preset's data set
    row.mkdir(parents=True)
    _as_format_3(out / "best.pt", row / "best.pt")
    old = json.loads(json.dumps(summary))
    for k in NTP_KEYS:
        old["config"]["train"].pop(k)
    old["format_version"] = 3
    (row / "train.json").write_text(json.dumps(old))
    result = run_row("grank", "tiny", 0, tmp_path, {}, retrain=False)
    assert json.loads((row / "train.json").read_text())["history"] == summary["history"]  # not retrained
    assert not (row / "last.pt").exists() and result["train_seconds"] == summary["train_seconds"]


def test_synthetic_catalogues_of_any_size():
    from grank.data import build, fingerprint, synthetic_size
    assert [synthetic_size(n) for n in ("synthetic-2500", "synthetic-10k", "synthetic-1m", "synthetic", "synthetic-0")] \
        == [2500, 10_000, 1_000_000, None, None]
    d = build("synthetic-3k")
    assert d.n_items == 3000 and len(d.item_ids) == 3001 and d.items.min() >= 1 and d.items.max() <= 3000
    assert d.lengths().min() >= 70 and d.n_users == 2000  # full training windows
    counts = np.bincount(d.items, minlength=3001)
    assert counts.max() > 20 * np.median(counts[1:])  # a popular head and a long tail
    assert fingerprint(build("synthetic")) == "f8ab65b8e185"  # the tests' small data set is unchanged


def test_the_scale_probe_reports_both_softmaxes(tmp_path):
    """grank.catalogue_scale (docs/LARGE_CATALOGUES.md): each probe in a child process under an
    address-space limit, its step time and memory written beside the command that made them."""
    from grank.catalogue_scale import main
    out = tmp_path / "scale.json"
    main(["--datasets", "synthetic-300", "--preset", "tiny", "--set", "model.ranker_history=32",
          "--steps", "1", "--warmup", "0", "--threads", "1", "--limit-gb", "6", "--out", str(out)])
    rows = json.loads(out.read_text())["probes"]
    assert [(r["softmax"], r["resolved"], r["status"]) for r in rows] == [("exact", "exact", "ok"),
                                                                         ("sampled", "sampled", "ok")]
    for r in rows:
        assert r["items"] == 300 and r["step_cpu_seconds"] > 0 and r["peak_rss_gb"] >= r["rss_before_gb"] > 0
        assert r["command"].startswith("python -m grank.catalogue_scale --datasets synthetic-300")
