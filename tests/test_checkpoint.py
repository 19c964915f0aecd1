"""Checkpoints (grank.checkpoint): versioned, refused with both versions named when they are of
another format, and loaded by export, clients and perf without the training code."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grank.checkpoint import FORMAT_VERSION, load_checkpoint, read, served_config_of

ROOT = Path(__file__).resolve().parents[1]


def _older(src: Path, dst: Path, version=None) -> Path:
    """A copy of checkpoint ``src`` as another format wrote it (version 1 recorded none)."""
    ck = torch.load(src, weights_only=True)
    ck.pop("format_version")
    if version is not None:
        ck["format_version"] = version
    torch.save(ck, dst)
    return dst


def test_checkpoints_record_their_format(tiny_trained):
    _, _, out, summary = tiny_trained
    assert read(out / "best.pt")["format_version"] == FORMAT_VERSION == 4
    assert read(out / "last.pt")["format_version"] == FORMAT_VERSION
    assert summary["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize("version", [None, 2, 5])  # 3 is upgraded: test_sampled_softmax
def test_another_format_is_refused_naming_both_versions(tiny_trained, ml100k, tmp_path, version):
    _, _, out, _ = tiny_trained
    path = _older(out / "best.pt", tmp_path / "other.pt", version)
    found = 1 if version is None else version
    where = {1: r"the code of tag ranker-recipes-2026-12-06 \(commit 311b61e\) reads it",
             2: r"the code of tag checkpoint-format-2 \(commit e01f7d3\) reads it"}.get(found, "newer code wrote it")
    want = (rf"other.pt: checkpoint format version {found}, this code reads version {FORMAT_VERSION}; "
            rf"retrain it with this code \({where}\)")
    with pytest.raises(ValueError, match=want):
        load_checkpoint(path, ml100k)
    with pytest.raises(ValueError, match=want):
        served_config_of(path)


def test_resuming_a_run_of_another_format_is_refused(tiny_trained, ml100k, tiny_cfg, tmp_path):
    from grank.train import train
    _, _, out, _ = tiny_trained
    _older(out / "last.pt", tmp_path / "last.pt")
    with pytest.raises(ValueError, match=f"last.pt: checkpoint format version 1, this code reads version "
                                         f"{FORMAT_VERSION}; start over with --no-resume"):
        train(tiny_cfg, ml100k, tmp_path, progress=False)
    # --no-resume starts over instead
    assert train(tiny_cfg, ml100k, tmp_path, progress=False, resume=False)["format_version"] == FORMAT_VERSION


def test_results_refuse_a_row_of_another_format(tiny_trained, tmp_path):
    """`grank results` never retrains (hours) or re-reads silently a row of another format: it
    says which file and both versions, and --retrain is the way out."""
    from grank.report import run_dir, run_row
    _, _, out, summary = tiny_trained
    row = run_dir(tmp_path, "ml-100k", "tiny", "grank")  # the tiny preset's data set
    row.mkdir(parents=True)
    old = {k: v for k, v in summary.items() if k != "format_version"}
    (row / "train.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=rf"train.json: checkpoint format version 1, this code reads version {FORMAT_VERSION}; "
                                         r"--retrain trains the row again"):
        run_row("grank", "tiny", 0, tmp_path, {}, retrain=False)


def test_a_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file; train one first"):
        read(tmp_path / "none.pt")


@pytest.mark.parametrize("module", ["grank.checkpoint", "export.build", "export.__main__", "client.__main__",
                                    "serve.selfcheck", "perf.__main__", "perf.tune"])
def test_loading_a_model_never_imports_the_training_code(module):
    """Export, clients and perf load checkpoints through grank.checkpoint: importing them must
    not import the training task (losses, negatives, the loop)."""
    code = (f"import importlib, sys; importlib.import_module({module!r}); "
            "sys.exit(int('grank.train' in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"{module} imports grank.train" + r.stderr[-2000:]


@pytest.mark.parametrize("command", [["grank", "evaluate", "{ck}"], ["export", "onnx", "--checkpoint", "{ck}"],
                                     ["serve.selfcheck", "--grpc-url", "localhost:1", "--checkpoint", "{ck}"]])
def test_the_tools_print_the_format_error_without_a_traceback(command, tiny_trained, tmp_path):
    _, _, out, _ = tiny_trained
    ck = _older(out / "best.pt", tmp_path / "old.pt")
    r = subprocess.run([sys.executable, "-m", *(c.format(ck=ck) for c in command)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"error: {ck}: checkpoint format version 1, this code reads version {FORMAT_VERSION}" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_bad_serving_setting_is_an_input_error_naming_it(tiny_trained, ml100k):
    """--set of `grank evaluate` / `export`: an error the command line prints as is, naming the
    setting; any other failure while loading stays a bug with its traceback."""
    from grank.cli import InputError
    _, _, out, _ = tiny_trained
    with pytest.raises(InputError, match="serving setting: model.d_model: not a serving setting"):
        load_checkpoint(out / "best.pt", ml100k, serving={"model.d_model": 8})
