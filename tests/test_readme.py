"""The README is tested like code: its make targets and CLI commands must exist and parse."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def make_targets():
    return set(re.findall(r"^([a-zA-Z_-]+):", (ROOT / "Makefile").read_text(), re.M))


def test_readme_make_targets_exist():
    used = set(re.findall(r"`make ([a-z-]+)`", README)) | set(re.findall(r"^make ([a-z-]+)", README, re.M))
    assert {"demo", "test"} <= used
    assert used <= make_targets(), used - make_targets()


def test_make_help_is_default_and_documents_every_target():
    out = subprocess.run(["make", "-s", "--no-print-directory"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for t in make_targets() - {"help"}:
        if not t.startswith("$"):
            assert t in out.stdout, f"make help does not document {t}"


CLI_LINES = [l for l in README.splitlines()
             if re.match(r"python -m (grank|export|serve|client|perf)(\.\w+)?( |$)", l)]


def _main(pkg):
    import importlib
    # a package's CLI lives in its __main__; a module run with -m (perf.gpu_mips) has its own main
    return importlib.import_module(pkg if "." in pkg else f"{pkg}.__main__").main


@pytest.mark.parametrize("line", CLI_LINES)
def test_readme_cli_lines_parse(line):
    """Every `python -m <package> ...` line of the README is accepted by its argument parser."""
    words = line.split("#")[0].split()
    pkg, args = words[2], words[3:]
    args = [a for a in args if not (a.startswith("[") or a.endswith("]")) and a != "\\"]
    # parse only: --help exits 0 after parsing everything before it
    with pytest.raises(SystemExit) as e:
        _main(pkg)(args + ["--help"])
    assert e.value.code == 0


def test_readme_covers_every_cli():
    assert {l.split()[2].split(".")[0] for l in CLI_LINES} == {"grank", "export", "serve", "client", "perf"}


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_headline_numbers_match_docs_results():
    """Numbers quoted in the README are the measured ones in docs/results.json."""
    import json
    res = json.loads((ROOT / "docs" / "results.json").read_text())
    rows = {r["model"]: r for r in res["rows"]}
    quoted = re.findall(r"`(\w+)` HR@10 = ([0-9]+\.[0-9]+), NDCG@10 = ([0-9]+\.[0-9]+)", README)
    assert quoted, "README quotes no headline numbers"
    for model, hr, ndcg in quoted:
        assert rows[model]["HR@10"] == float(hr) and rows[model]["NDCG@10"] == float(ndcg), model


def _matches(quoted: str, measured: float) -> bool:
    """``quoted`` is ``measured`` rounded to the digits the README shows ("2,847", "53", "1.70")."""
    q = quoted.replace(",", "")
    decimals = len(q.split(".")[1]) if "." in q else 0
    return abs(float(q) - measured) <= 0.5 * 10 ** -decimals + 1e-9


def test_readme_mips_numbers_match_docs_performance():
    """The served module's MIPS latencies and floor multiples quoted in the README are the rows
    of docs/performance.json (CPU rows; the README says which N and k each sentence is about)."""
    perf = json.loads((ROOT / "docs" / "performance.json").read_text())
    rows = {(r["N"], r["k"], r["batch"]): r for r in perf["rows"]
            if r["stage"] == "mips" and r["method"] == "grank_mips" and not r.get("device")}
    sizes = {"1M": 10**6, "5M": 5 * 10**6}
    nums, batches = r"([0-9.,]+(?:\s*/\s*[0-9.,]+)*)", r"([0-9]+(?:\s*/\s*[0-9]+)*)"
    text = re.sub(r"\s+", " ", README)  # sentences wrap anywhere
    quoted = re.findall(rf"N = (1M|5M), k = ([0-9]+), p50[^:]*: the served module answers in {nums} ms "
                        rf"at batch {batches}.*?at {nums} times the floor at batch {batches}", text)
    assert {q[0] for q in quoted} == set(sizes), "README quotes the served module's 1M and 5M numbers"
    for size, k, p50s, b1, multiples, b2 in quoted:
        for values, bs, field in ((p50s, b1, "p50_ms"), (multiples, b2, "p50_over_floor")):
            values, bs = re.split(r"\s*/\s*", values), [int(b) for b in re.split(r"\s*/\s*", bs)]
            assert len(values) == len(bs), (size, k, field)
            for v, b in zip(values, bs):
                measured = rows[(sizes[size], int(k), b)][field]
                assert _matches(v, measured), f"README says {field} {v} at N={size} k={k} batch {b}; " \
                                              f"docs/performance.json has {measured}"
