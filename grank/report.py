"""The results table: train (or reuse) every row, evaluate it, write docs/results.json + RESULTS.md.

Rows: ``grank`` and the paper's ablations, the SASRec-style baseline and popularity, all
trained and evaluated by the same code and protocol (see ``evaluate.py``).
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

from .blend import applies as blend_applies
from .checkpoint import check_version, load_checkpoint
from .config import Config, effective_dict, make_config
from .data import load, split as make_split
from .evaluate import evaluate_model, evaluate_popularity
from .train import fit_saved_blend, host_description, train

ROWS = ("grank", "generator_only", "generator_ranker_no_aux", "generator_aux", "sasrec", "popularity")
ANCHORS = [  # Zhai et al. 2024 (HSTU), Table 4, ML-1M, full ranking: published, not ours
    {"model": "SASRec (published)", "HR@10": 0.2853, "NDCG@10": 0.1603},
    {"model": "HSTU (published)", "HR@10": 0.3097, "NDCG@10": 0.1720},
    {"model": "HSTU-large (published)", "HR@10": 0.3294, "NDCG@10": 0.1893},
]
PROTOCOL = ("{dataset}, chronological leave-last-out per user (ties in timestamp broken by "
            "file order); the last item of each of the {users:,} users is ranked against the full "
            "catalogue of {items:,} items; items already in the user's history are excluded "
            "(filtered; the unfiltered variant is reported alongside); HR@K = Recall@K with one "
            "held-out item; NDCG@K = 1/log2(rank+2); pessimistic ties. Neural rows are evaluated "
            "through the served pipeline: MIPS top-k1 from the Generator, Ranker re-scores them, "
            "top-k2 returned, at the trained shape (eval.k1, model.ranker_history; the repository's "
            "served shape, serve.k1 / serve.history, is measured by `python -m grank evaluate "
            "--served` and in docs/PERFORMANCE.md); checkpoint chosen by validation HR@10 "
            "(second-to-last item); the Ranker's served blend (the weights of its own score and "
            "of the candidates' log1p popularity counts beside the Generator score) is then fitted "
            "on the same validation items (grank.blend), never on test.")


def run_row(row: str, preset: str, seed: int, artifacts: Path, overrides: dict, retrain: bool):
    cfg = make_config(preset, row, seed, overrides)
    data = load(cfg.dataset)
    sp = make_split(data)
    out = artifacts / preset / row
    summary_path = out / "train.json"
    stale = True
    if summary_path.exists() and not retrain:
        summary = json.loads(summary_path.read_text())
        check_version(summary.get("format_version"), str(summary_path),
                      fix="--retrain trains the row again, or use another --artifacts")
        stale = effective_dict(Config.from_dict(summary["config"])) != effective_dict(cfg)
    if stale:
        summary = train(cfg, data, out, resume=not retrain)
    else:
        print(f"{row}: reusing {out}/best.pt (trained {summary['train_seconds']} s)", file=sys.stderr)
        if blend_applies(cfg) and "blend" not in summary:  # trained with train.fit_blend=false: fit only
            summary["blend"] = fit_saved_blend(out / "best.pt", data)
            summary_path.write_text(json.dumps(summary, indent=1))
    cached = out / "row.json"  # evaluation of this exact checkpoint, reused by later calls
    best = out / "best.pt"
    if cached.exists() and not retrain and cached.stat().st_mtime >= best.stat().st_mtime:
        return json.loads(cached.read_text())
    model, cfg, ck = load_checkpoint(best, data)
    test = evaluate_model(model, sp, "test", cfg.eval)
    unf = evaluate_model(model, sp, "test", cfg.eval, filtered=False)
    row_res = {"model": row, **{k: round(v, 4) for k, v in test.items() if "@" in k},
               "unfiltered": {k: round(v, 4) for k, v in unf.items() if k.startswith(("HR", "NDCG"))},
               "best_epoch": summary["best"]["epoch"], "epochs": cfg.train.epochs,
               "train_seconds": summary["train_seconds"], "sequences_per_s": summary["sequences_per_s"],
               "parameters": summary["parameters"], "machine": summary["machine"],
               "eval_seconds": test["eval_seconds"]}
    if "blend" in summary:
        row_res["blend"] = summary["blend"]["weights"]
    cached.write_text(json.dumps(row_res, indent=1))
    return row_res


def popularity_row(preset: str, seed: int) -> dict:
    cfg = make_config(preset, "grank", seed)
    data = load(cfg.dataset)
    sp = make_split(data)
    test = evaluate_popularity(sp, "test", cfg.eval)
    unf = evaluate_popularity(sp, "test", cfg.eval, filtered=False)
    return {"model": "popularity", **{k: round(v, 4) for k, v in test.items() if "@" in k},
            "unfiltered": {k: round(v, 4) for k, v in unf.items() if "@" in k},
            "train_seconds": 0.0, "sequences_per_s": None}


def markdown(res: dict) -> str:
    ks = res["ks"]
    cols = [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")]
    lines = [f"# Results: GRank ({res['preset']} preset)", "",
             f"Command: `{res['command']}`  ", f"Seed: {res['seed']}. Machine: {res['machine']}. "
             f"Date: {res['date']}. Total wall time: {res['wall_seconds'] / 60:.1f} min.", "",
             f"Protocol: {res['protocol']}", ""] + ([res["note"], ""] if res.get("note") else []) + [
             "| model | " + " | ".join(cols) + " | train min | seq/s | best epoch |",
             "|---|" + "---|" * (len(cols) + 3)]
    for r in res["rows"]:
        tm = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else "0"
        lines.append(f"| {r['model']} | " + " | ".join(f"{r[c]:.4f}" for c in cols) +
                     f" | {tm} | {r.get('sequences_per_s') or '-'} | {r.get('best_epoch', '-')} |")
    for a in res.get("published_anchors", []):
        lines.append(f"| {a['model']} | " + " | ".join(f"{a[c]:.4f}" if c in a else "-" for c in cols)
                     + " | - | - | - |")
    lines += ["", "Unfiltered variant (history items not excluded):", "",
              "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r['unfiltered'][c]:.4f}" for c in cols) + " |")
    gen = [r for r in res["rows"] if "gen_HR@10" in r]
    if gen:
        k0, kn = ks[0], ks[-1]
        lines += ["", f"Generator stage alone (MIPS top-k before the Ranker) and recall of the "
                  f"k1 = {res['k1']} candidates handed to the Ranker:", "",
                  f"| model | gen HR@{k0} | gen NDCG@{k0} | gen HR@{kn} | candidate recall@k1 |",
                  "|---|---|---|---|---|"]
        for r in gen:
            rec = next(v for k, v in r.items() if k.startswith("candidate_recall"))
            lines.append(f"| {r['model']} | {r[f'gen_HR@{k0}']:.4f} | {r[f'gen_NDCG@{k0}']:.4f} | "
                         f"{r[f'gen_HR@{kn}']:.4f} | {rec:.4f} |")
    blended = [r for r in res["rows"] if r.get("blend")]
    if blended:
        names = list(dict.fromkeys(n for r in blended for n in r["blend"]))  # every row's, in order
        lines += ["", "Served blend of each Ranker, fitted on validation after training (grank.blend): "
                  "served score = Generator score + these weights x (the Ranker's own score, log1p of "
                  "the candidate's training ratings in each window before the request's day):", "",
                  "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for r in blended:
            lines.append(f"| {r['model']} | " + " | ".join(f"{r['blend'][n]:+.3f}" if n in r["blend"] else "-"
                                                          for n in names) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(artifacts: Path, preset: str, rows, path: Path) -> bool:
    """Validation HR@10 and NDCG@10 per epoch for every trained row -> PNG. False if none."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for row in rows:
        f = artifacts / preset / row / "train.json"
        if not f.exists():
            continue
        hist = [h for h in json.loads(f.read_text())["history"] if "val" in h]
        for ax, metric in zip(axes, ("HR@10", "NDCG@10")):
            ax.plot([h["epoch"] for h in hist], [h["val"][metric] for h in hist], marker="o", label=row)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    for ax, metric in zip(axes, ("HR@10", "NDCG@10")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Validation curves ({preset} preset)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def results(preset: str, seed: int, artifacts: str, rows=ROWS, overrides=None, retrain=False,
            docs: str = "docs", command: str = "", note: str = "") -> dict:
    t0 = time.time()
    out_rows = []
    for row in rows:
        if row not in ROWS:
            raise ValueError(f"rows: unknown row {row!r}; choose from {ROWS}")
        r = popularity_row(preset, seed) if row == "popularity" else \
            run_row(row, preset, seed, Path(artifacts), overrides or {}, retrain)
        out_rows.append(r)
        print(json.dumps({k: v for k, v in r.items() if k in ("model", "HR@10", "NDCG@10", "train_seconds")}))
    cfg = make_config(preset, "grank", seed, overrides)
    data = load(cfg.dataset)
    protocol = PROTOCOL.format(dataset=cfg.dataset, users=len(make_split(data).users), items=data.n_items)
    res = {"protocol": protocol, "preset": preset, "seed": seed, "ks": list(cfg.eval.ks),
           "k1": cfg.eval.k1, "k2": cfg.eval.k2, "command": command, "machine": host_description(),
           "date": dt.date.today().isoformat(), "note": note, "wall_seconds": round(time.time() - t0, 1),
           "rows": out_rows, "published_anchors": ANCHORS if cfg.dataset == "ml-1m" else []}
    Path(docs).mkdir(parents=True, exist_ok=True)
    Path(docs, "results.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    if plot_curves(Path(artifacts), preset, rows, Path(docs, "training_curves.png")):
        md += "\n![validation curves](training_curves.png)\n"
    Path(docs, "RESULTS.md").write_text(md)
    return res
