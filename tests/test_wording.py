"""The repository speaks only of the product.

Prose in tracked files names history by date, version or commit (git log holds the rest) and
explains a choice by its reason. It does not narrate how the code came to be written: this test
checks the short vocabulary such narration uses (``WORDS``) in prose (Markdown, JSON, text files,
and the comments and strings of Python files); code identifiers such as an ONNX Runtime
``session`` are not prose.
"""
import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WORDS = ("session", "issue", "lent", "borrowed", "subagent", "sandbox")
FORBIDDEN = re.compile(r"\b(sessions?|issues?|lent|borrowed|sub-?agents?|sandbox(es)?)\b", re.IGNORECASE)
# other software's terms that contain a forbidden word
ALLOWED = re.compile(r"session-scoped|ONNX Runtime (CPU )?sessions?|inference sessions?", re.IGNORECASE)
PROSE = {".md", ".json", ".jsonl", ".txt", ".toml", ".cfg", ".pbtxt", ".yaml", ".yml", ""}
# Python string literals that are identifiers of other software, not prose
ALLOWED_STRINGS = {'"session"', "'session'"}  # pytest.fixture(scope="session")


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def prose_of(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the prose in ``path``: Python comments and string literals,
    the comments of Makefiles and shell scripts, or the whole of a text file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".py":
        out = []
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and tok.string not in ALLOWED_STRINGS):
                out += [(tok.start[0] + i, line) for i, line in enumerate(tok.string.splitlines())]
        return out
    if path.name == "Makefile" or path.suffix == ".sh" or path.parent.name == ".ci":
        return [(i, line) for i, line in enumerate(text.splitlines(), 1) if "#" in line]
    if path.suffix in PROSE:
        return list(enumerate(text.splitlines(), 1))
    return []  # images and other binary files


def offending(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{n}: {line.strip()[:160]}"
            for n, line in prose_of(path) if flagged(line)]


def flagged(text: str) -> bool:
    return bool(FORBIDDEN.search(ALLOWED.sub("", text)))


def test_no_tracked_file_narrates_its_development():
    # this file is the one place that must spell out what it rejects
    bad = [hit for p in tracked_files() if p != Path(__file__).resolve() for hit in offending(p)]
    assert not bad, "development history in tracked files:\n" + "\n".join(bad[:60])


@pytest.mark.parametrize("word", WORDS)
def test_the_check_catches_each_word_in_comments_and_strings(tmp_path, word):
    f = tmp_path / "example.py"
    f.write_text(f"x = 1  # a {word} here\ny = 'a {word.title()} there'\n")
    assert [flagged(t) for _, t in prose_of(f)] == [True, True]


@pytest.mark.parametrize("text", [
    "# measured 2026-11-24 on a 2-core CPU (36.8 GB/s)",
    '@pytest.fixture(scope="session")',
    "self.session = ort.InferenceSession(path)",
    "# a session-scoped fixture starts the server",
    '"""An ONNX Runtime session on two threads"""',
])
def test_the_check_spares_code_and_other_softwares_terms(tmp_path, text):
    f = tmp_path / "example.py"
    f.write_text(text + "\n")
    assert not any(flagged(t) for _, t in prose_of(f))
