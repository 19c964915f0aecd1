"""Every module in docs/experiments/ runs as ``python -m docs.experiments.<name>`` from the
repository root and documents its command line: ``--help`` exits 0 and shows that command.

Modules are found by glob, so one added later is covered without editing this file. Each runs
in this process through ``runpy`` (the machinery behind ``python -m``, ``__main__`` guard
included) with the repository root first on the import path, as ``python -m`` puts it there:
torch is imported once, and the whole file takes a few seconds.
"""
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "docs" / "experiments").glob("*.py"))


def test_modules_found():
    assert MODULES, f"no modules in {ROOT / 'docs' / 'experiments'}"


@pytest.mark.parametrize("name", MODULES)
def test_help(name, monkeypatch, capsys):
    module = f"docs.experiments.{name}"
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    # run it as __main__ even when another experiment already imported it (blend_control uses paired)
    monkeypatch.delitem(sys.modules, module, raising=False)
    path = list(sys.path)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    else:
        pytest.fail(f"{module} --help returned without exiting: it needs "
                    f"`if __name__ == \"__main__\": main()` and an argparse main(argv=None)")
    out = capsys.readouterr().out
    assert code in (0, None), f"{module} --help exited with {code!r}"
    assert f"python -m {module}" in out, \
        f"{module} --help does not show its command line (python -m {module} ...):\n{out}"
    assert sys.path == path, f"{module} changed sys.path; run it with python -m from the repository root"
