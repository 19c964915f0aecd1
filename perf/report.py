"""docs/PERFORMANCE.md from docs/performance.json, and the one function that writes the file.

The file has two parts. Everything above ``MARKER`` is written by hand (a summary of what the
numbers mean) and is never touched; everything below it is generated: the MIPS sections
(``mipsbench.report``) and the served ensemble's (``perf.ensemble_report``), every number read
from a measured row. ``python -m perf report`` regenerates it without measuring anything;
``python -m perf tune`` regenerates it after merging its rows.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from grank.cli import InputError
from mipsbench.report import sections as mips_sections

from .ensemble_report import ensemble_markdown

MARKER = ("<!-- generated: everything below this line is written by python -m perf report "
          "from docs/performance.json -->")


def write_generated(path: Path, generated: str) -> Path:
    """Replace what follows ``MARKER`` in ``path`` with ``generated``, keeping every byte above
    the marker line; a new file gets the marker at the top, then ``generated``. A file without
    the marker is refused: all of it may be hand-written. The only writer of PERFORMANCE.md. The
    marker counts only as a line of its own, so hand-written text may quote it."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    at = re.search("^" + re.escape(MARKER) + r"[ \t]*$", old, flags=re.M)
    if old and not at:
        raise InputError(f"{path} has no marker line, so regenerating it would overwrite what may be "
                         f"hand-written: put this line where the generated part starts (everything above "
                         f"it is kept), or delete the file: {MARKER}")
    kept = old[:at.start()] if at else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(kept + MARKER + "\n\n" + generated.strip("\n") + "\n")
    return path


def markdown(perf: dict, docs: Path) -> str:
    """The generated part: MIPS sections (CPU, GPUs), then the ensemble's; plots go to ``docs``."""
    return "\n".join(mips_sections(perf, docs) + ensemble_markdown(perf, docs)) + "\n"


def regenerate(docs: Path) -> Path:
    """Rewrite the generated part of ``docs``/PERFORMANCE.md (and its plots) from
    ``docs``/performance.json. Returns the path of PERFORMANCE.md."""
    docs = Path(docs)
    src = docs / "performance.json"
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found (measure first: `make bench`, `make perf-tune`)")
    return write_generated(docs / "PERFORMANCE.md", markdown(json.loads(src.read_text()), docs))
