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


PACKAGES = {"grank", "export", "serve", "client", "perf", "mipsbench"}
CLI_LINES = [l for l in README.splitlines()
             if re.match(rf"python -m ({'|'.join(PACKAGES)})( |$)", l)]


def _main(pkg):
    import importlib
    return importlib.import_module(f"{pkg}.__main__").main


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
    assert {l.split()[2] for l in CLI_LINES} == PACKAGES


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


SECTIONS = {"MovieLens-1M": "ml-1m", "Pinterest-20": "pinterest-20"}


def test_readme_results_tables_match_docs_results():
    """Each data set's table in the README holds the measured rows of its section of
    docs/results.json, every row of it, and the published anchors as that section records them
    (sampled-protocol anchors in their own column)."""
    every = json.loads((ROOT / "docs" / "results.json").read_text())
    results = README.split("## Results", 1)[1].split("\n## ", 1)[0]
    sections = dict(re.findall(r"^### (\S+)\n(.*?)(?=^### |\Z)", results, re.M | re.S))
    assert set(sections) == set(SECTIONS) and set(SECTIONS.values()) == set(every)
    for title, text in sections.items():
        res = every[SECTIONS[title]]
        rows = {r["model"]: r for r in res["rows"]}
        quoted = re.findall(r"^\| `(\w+)`[^|]*\| ([0-9.]+) \| ([0-9.]+) \|(?: ([0-9.]+) \|)?$", text, re.M)
        assert {m for m, *_ in quoted} == set(rows), f"{title}: the table lists every results row"
        for model, hr, ndcg, sampled in quoted:
            assert (rows[model]["HR@10"], rows[model]["NDCG@10"]) == (float(hr), float(ndcg)), model
            if sampled:
                assert rows[model]["sampled_HR@10"] == float(sampled), model
        anchors = {a["model"].split(" (")[0]: a for a in res["published_anchors"]}
        for name, cols in re.findall(r"^\| (\w+), published[^|]*\|(.*)\|$", text, re.M):
            a, cells = anchors[name], [c.strip() for c in cols.split("|")]
            values = [a.get("HR@10"), a.get("NDCG@10"), a.get("sampled_HR@10")][:len(cells)]
            assert [None if c == "-" else float(c) for c in cells] == values, name


def test_readme_ensemble_numbers_match_docs_performance():
    """The served ensemble's throughput and p99 quoted in the README are rows of
    docs/performance.json (the committed shape, gRPC, closed loop)."""
    perf = json.loads((ROOT / "docs" / "performance.json").read_text())
    rows = {int(r["load"]): r for r in perf["rows"] if r["stage"] == "ensemble" and r["method"] == "default"
            and r["protocol"] == "grpc" and r["load_kind"] == "concurrency"}
    text = re.sub(r"\s+", " ", README)
    m = re.search(r"([0-9,]+) requests/s at concurrency ([0-9]+) over gRPC with p99 ([0-9.]+) ms; "
                  r"([0-9,]+) requests/s with one request in flight \(p99 ([0-9.]+) ms\)", text)
    assert m, "README quotes the ensemble's throughput"
    qps, conc, p99, qps1, p99_1 = m.groups()
    for quoted, measured in ((qps, rows[int(conc)]["qps"]), (p99, rows[int(conc)]["p99_ms"]),
                             (qps1, rows[1]["qps"]), (p99_1, rows[1]["p99_ms"])):
        assert _matches(quoted, measured), (quoted, measured)


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
                        rf"at batch {batches}.*?at {nums} times the (?:machine's )?floor at batch {batches}", text)
    assert quoted and {q[0] for q in quoted} <= set(sizes), "README quotes the served module's MIPS numbers"
    for size, k, p50s, b1, multiples, b2 in quoted:
        for values, bs, field in ((p50s, b1, "p50_ms"), (multiples, b2, "p50_over_floor")):
            values, bs = re.split(r"\s*/\s*", values), [int(b) for b in re.split(r"\s*/\s*", bs)]
            assert len(values) == len(bs), (size, k, field)
            for v, b in zip(values, bs):
                measured = rows[(sizes[size], int(k), b)][field]
                assert _matches(v, measured), f"README says {field} {v} at N={size} k={k} batch {b}; " \
                                              f"docs/performance.json has {measured}"


def _layout() -> dict[str, str]:
    """The README's layout block: top-level folder -> its description."""
    block = README.split("## Layout", 1)[1].split("```")[1]
    entries, current = {}, None
    for line in block.splitlines():
        m = re.match(r"^(\S+/)\s+(.*)", line)
        if m:
            current = m.group(1)
            entries[current] = m.group(2)
        elif current and line.strip():
            entries[current] += " " + line.strip()
    return entries


def test_readme_layout_is_the_repository():
    """The layout section names every top-level folder git tracks, only files and folders that
    exist where it puts them, and every module of the Python packages."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files = [f for f in files if (ROOT / f).exists()]
    entries = _layout()
    assert set(entries) == {f.split("/")[0] + "/" for f in files if "/" in f and not f.startswith(".")}
    for folder, text in entries.items():
        inside = [f[len(folder):] for f in files if f.startswith(folder)]
        for name in re.findall(r"\b[\w.-]+\.(?:py|md)\b", text):
            assert any(f == name or f.endswith("/" + name) for f in inside), f"{folder}{name} is not tracked"
        for sub in re.findall(r"(?<![\w/<>])([a-z_]+)/(?=[\s)]|$)", text):
            assert any(f.startswith(sub + "/") or f"/{sub}/" in f for f in inside), f"{folder}{sub}/ is not tracked"
        if (ROOT / folder / "__init__.py").exists():  # a package: every module is named
            modules = {f for f in inside if "/" not in f and f.endswith(".py")} - {"__init__.py", "__main__.py"}
            missing = sorted(m for m in modules if m not in text.split() and m not in re.findall(r"[\w.]+", text))
            assert not missing, f"the layout does not name {folder}{missing}"


def _snippet(after: str, lang: str) -> str:
    return README.split(after, 1)[1].split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def test_readme_request_snippets_answer_on_a_real_server(triton_server, tiny_repository, tmp_path):
    """The raw tritonclient snippet and the curl line work as written against a served
    repository (the tiny one: its shorter history replaces the README's 256) and agree."""
    R = json.loads(subprocess.run(["curl", "-s", f"http://{triton_server.http_url}/v2/models/grank/config"],
                                  capture_output=True, text=True, check=True).stdout)["input"][0]["dims"][0]
    assert int(R) < 256

    def local(code: str) -> str:
        code = code.replace("localhost:8001", triton_server.grpc_url).replace("localhost:8000", triton_server.http_url)
        return code.replace("256", str(R)).replace("253", str(int(R) - 3))
    py = subprocess.run([sys.executable, "-c", local(_snippet("With `tritonclient` and `numpy` only", "python"))],
                        capture_output=True, text=True, cwd=tmp_path)
    assert py.returncode == 0, py.stderr[-2000:]
    sh = subprocess.run(["bash", "-c", local(_snippet("Or over HTTP with `curl`", "bash"))],
                        capture_output=True, text=True, cwd=tmp_path)
    assert sh.returncode == 0, sh.stderr[-2000:]
    out = {o["name"]: o for o in json.loads(sh.stdout)["outputs"]}
    ids = out["item_ids"]["data"]
    assert out["item_ids"]["shape"][0] == 1 and len(ids) == out["item_ids"]["shape"][1] and not {1, 2, 3} & set(ids)
    printed = [int(x) for x in re.findall(r"\d+", py.stdout.split("]")[0])]
    assert printed == ids[:10]  # the same request over gRPC and HTTP: the same answer
