"""What every command-line entry point shares."""
from __future__ import annotations

import sys
from typing import Callable


class InputError(ValueError):
    """An input the user can fix (a checkpoint of another format, ...): the message says what is
    wrong and how to fix it, so command-line tools print it without a traceback."""


def run(main: Callable[[], int | None]) -> None:
    """Exit with ``main()``'s code. A missing input (a checkpoint not trained yet, a data set not
    installed: ``FileNotFoundError``, whose message says how to get it) or an ``InputError``
    prints ``error: ...`` and exits 2 instead of a traceback; other exceptions are bugs and keep
    theirs."""
    try:
        code = main()
    except (FileNotFoundError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)
