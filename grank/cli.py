"""What every command-line entry point shares."""
from __future__ import annotations

import sys
from typing import Callable


def run(main: Callable[[], int | None]) -> None:
    """Exit with ``main()``'s code. A missing input (a checkpoint not trained yet, a data set not
    installed: ``FileNotFoundError``, whose message says how to get it) prints ``error: ...`` and
    exits 2 instead of a traceback; other exceptions are bugs and keep theirs."""
    try:
        code = main()
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)
