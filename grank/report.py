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
from .checkpoint import check_version, load_checkpoint, upgrade
from .config import Config, effective_dict
from .data import configure, pinterest20_negatives, split as make_split
from .evaluate import evaluate_model, evaluate_popularity, evaluate_sampled
from .train import fit_saved_blend, host_description, train

ROWS = ("grank", "generator_only", "generator_ranker_no_aux", "generator_aux", "sasrec", "popularity")
ANCHORS = {  # published, not ours
    # Zhai et al. 2024 (HSTU), Table 4, ML-1M, full ranking
    "ml-1m": [{"model": "SASRec (published)", "HR@10": 0.2853, "NDCG@10": 0.1603},
              {"model": "HSTU (published)", "HR@10": 0.3097, "NDCG@10": 0.1720},
              {"model": "HSTU-large (published)", "HR@10": 0.3294, "NDCG@10": 0.1893}],
    # He et al. 2017 (NCF), Table 2: NeuMF, 16 predictive factors, with pre-training, the best of
    # the table's Pinterest rows; sampled protocol (99 negatives), not comparable to full ranking
    "pinterest-20": [{"model": "NeuMF (published, sampled)", "sampled_HR@10": 0.880,
                      "sampled_NDCG@10": 0.558}],
}
# data sets that ship the NCF paper's sampled negatives: their rows also report that protocol
SAMPLED = {"pinterest-20": pinterest20_negatives}
ORDER = {True: "chronological leave-last-out per user (ties in timestamp broken by file order)",
         False: "leave-last-out per user in file order (the data set has no timestamps)"}
PROTOCOL = ("{dataset}, {order}; the last item of each of the {users:,} users is ranked against the full "
            "catalogue of {items:,} items; items already in the user's history are excluded "
            "(filtered; the unfiltered variant is reported alongside); HR@K = Recall@K with one "
            "held-out item; NDCG@K = 1/log2(rank+2); pessimistic ties. Neural rows are evaluated "
            "through the served pipeline: MIPS top-k1 from the Generator, Ranker re-scores them, "
            "top-k2 returned, at the trained shape (eval.k1, model.ranker_history; the repository's "
            "served shape, serve.k1 / serve.history, is measured by `python -m grank evaluate "
            "--served` and in docs/PERFORMANCE.md); checkpoint chosen by validation HR@10 "
            "(second-to-last item); the Ranker's served blend (the weights of its own score and, "
            "where the data set has timestamps, of the candidates' log1p popularity counts beside "
            "the Generator score) is then fitted on the same validation items (grank.blend), never "
            "on test.")
SAMPLED_PROTOCOL = (" Sampled protocol (columns sampled_*, for comparison with published numbers "
                    "only): the held-out item ranked against the 99 negatives shipped with the data "
                    "set, as in He et al. 2017 (NCF), by each row's served score.")


def run_dir(artifacts: Path, dataset: str, preset: str, row: str) -> Path:
    """Where a results row trains: ``artifacts/PRESET/ROW`` for ML-1M, ``artifacts/DATASET/
    PRESET/ROW`` for any other data set."""
    return Path(artifacts) / preset / row if dataset == "ml-1m" else Path(artifacts) / dataset / preset / row


def run_row(row: str, preset: str, seed: int, artifacts: Path, overrides: dict, retrain: bool):
    cfg, data = configure(preset, row, seed, overrides)
    sp = make_split(data)
    out = run_dir(artifacts, cfg.dataset, preset, row)
    summary_path = out / "train.json"
    stale = True
    if summary_path.exists() and not retrain:
        # a summary of an older format that UPGRADES knows reads as its checkpoint does
        summary = upgrade(json.loads(summary_path.read_text()), n_items=data.n_items)
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
    if cfg.dataset in SAMPLED:
        row_res.update({k: round(v, 4) for k, v in
                        evaluate_sampled(model, sp, *SAMPLED[cfg.dataset](data), cfg.eval).items()})
    cached.write_text(json.dumps(row_res, indent=1))
    return row_res


def popularity_row(preset: str, seed: int, overrides: dict | None = None) -> dict:
    cfg, data = configure(preset, "grank", seed, overrides)
    sp = make_split(data)
    test = evaluate_popularity(sp, "test", cfg.eval)
    unf = evaluate_popularity(sp, "test", cfg.eval, filtered=False)
    row = {"model": "popularity", **{k: round(v, 4) for k, v in test.items() if "@" in k},
           "unfiltered": {k: round(v, 4) for k, v in unf.items() if "@" in k},
           "train_seconds": 0.0, "sequences_per_s": None}
    if cfg.dataset in SAMPLED:
        row.update({k: round(v, 4) for k, v in
                    evaluate_sampled(None, sp, *SAMPLED[cfg.dataset](data), cfg.eval).items()})
    return row


def markdown(results_by_dataset: dict) -> str:
    """RESULTS.md: one section per data set of docs/results.json."""
    parts = ["# Results: GRank and its ablations", "",
             "One section per data set; every row trained and evaluated by the same code and "
             "protocol. The table of each section is regenerated by its command.", ""]
    for res in results_by_dataset.values():
        parts.append(markdown_one(res))
    return "\n".join(parts)


def markdown_one(res: dict) -> str:
    ks = res["ks"]
    cols = [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")]
    sampled = [c for c in ("sampled_HR@10", "sampled_NDCG@10") if any(c in r for r in res["rows"])]
    cols_all = cols + sampled
    lines = [f"## {res['dataset']} ({res['preset']} preset)", "",
             f"Command: `{res['command']}`  ", f"Seed: {res['seed']}. Machine: {res['machine']}. "
             f"Date: {res['date']}. Total wall time: {res['wall_seconds'] / 60:.1f} min.", "",
             f"Protocol: {res['protocol']}", ""] + ([res["note"], ""] if res.get("note") else []) + [
             "| model | " + " | ".join(cols_all) + " | train min | seq/s | best epoch |",
             "|---|" + "---|" * (len(cols_all) + 3)]
    for r in res["rows"]:
        tm = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else "0"
        lines.append(f"| {r['model']} | " + " | ".join(f"{r[c]:.4f}" if c in r else "-" for c in cols_all) +
                     f" | {tm} | {r.get('sequences_per_s') or '-'} | {r.get('best_epoch', '-')} |")
    for a in res.get("published_anchors", []):
        lines.append(f"| {a['model']} | " + " | ".join(f"{a[c]:.4f}" if c in a else "-" for c in cols_all)
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
    if res.get("curves"):
        lines += ["", f"![validation curves, {res['dataset']}]({res['curves']})"]
    return "\n".join(lines) + "\n"


def plot_curves(folders: dict, title: str, path: Path) -> bool:
    """Validation HR@10 and NDCG@10 per epoch of every trained row (``folders``: row -> its
    run folder) -> PNG. False if none was trained."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for row, folder in folders.items():
        f = folder / "train.json"
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
    fig.suptitle(f"Validation curves ({title})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def read_results(path: Path) -> dict:
    """docs/results.json: data set -> its results (see ``results``); {} when absent. A file
    of one data set's results (written before results were keyed by data set) is read as the
    section of the data set its protocol names."""
    if not path.exists():
        return {}
    d = json.loads(path.read_text())
    sections = [d] if "rows" in d else list(d.values())
    named = [{"dataset": r["protocol"].split(",")[0], **r} for r in sections]  # "dataset" kept where present
    return {r["dataset"]: r for r in named}


def results(preset: str, seed: int, artifacts: str, rows=ROWS, overrides=None, retrain=False,
            docs: str = "docs", command: str = "", note: str = "") -> dict:
    """Train (or reuse) and evaluate ``rows`` on the config's data set; its section of
    ``docs``/results.json and RESULTS.md is replaced, other data sets' sections are kept."""
    t0 = time.time()
    overrides = overrides or {}
    out_rows = []
    for row in rows:
        if row not in ROWS:
            raise ValueError(f"rows: unknown row {row!r}; choose from {ROWS}")
        r = popularity_row(preset, seed, overrides) if row == "popularity" else \
            run_row(row, preset, seed, Path(artifacts), overrides, retrain)
        out_rows.append(r)
        print(json.dumps({k: v for k, v in r.items() if k in ("model", "HR@10", "NDCG@10", "train_seconds")}))
    cfg, data = configure(preset, "grank", seed, overrides)
    protocol = PROTOCOL.format(dataset=cfg.dataset, order=ORDER[data.timed],
                               users=len(make_split(data).users), items=data.n_items)
    res = {"dataset": cfg.dataset, "protocol": protocol + (SAMPLED_PROTOCOL if cfg.dataset in SAMPLED else ""),
           "preset": preset, "seed": seed, "ks": list(cfg.eval.ks),
           "k1": cfg.eval.k1, "k2": cfg.eval.k2, "command": command, "machine": host_description(),
           "date": dt.date.today().isoformat(), "note": note, "wall_seconds": round(time.time() - t0, 1),
           "rows": out_rows, "published_anchors": ANCHORS.get(cfg.dataset, [])}
    Path(docs).mkdir(parents=True, exist_ok=True)
    curves = f"training_curves-{cfg.dataset}.png"
    folders = {r: run_dir(Path(artifacts), cfg.dataset, preset, r) for r in rows if r != "popularity"}
    if plot_curves(folders, f"{cfg.dataset}, {preset} preset", Path(docs, curves)):
        res["curves"] = curves
    path = Path(docs, "results.json")
    every = {**read_results(path), cfg.dataset: res}
    path.write_text(json.dumps(every, indent=1) + "\n")
    Path(docs, "RESULTS.md").write_text(markdown(every))
    return res
