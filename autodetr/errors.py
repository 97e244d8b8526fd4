"""One error type for bad input, and the CLI wrapper that turns it into one clear line."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable


class InputError(Exception):
    """Bad user input: the message names the file (or value) and what is wrong with it."""


def cli_main(function: Callable[..., int | None]) -> Callable[..., int]:
    """Run a CLI entry point; an InputError prints one line and exits 2 (traceback with AUTODETR_DEBUG=1)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs) -> int:
        try:
            code = function(*args, **kwargs)
        except InputError as error:
            if os.environ.get("AUTODETR_DEBUG"):
                raise
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(code or 0)

    return wrapper
