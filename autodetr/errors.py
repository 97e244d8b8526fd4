"""One error type for bad input, and the CLI wrapper that turns it into one clear line."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable


class InputError(Exception):
    """Bad user input: the message names the file (or value) and what is wrong with it."""


class OutputError(InputError):
    """The file system refused a write (full disk, permissions, a parent that is a file, a name too long):
    the message names the file. An InputError, so callers that report one bad case go on; the CLI exits 1."""


def one_line(text: str) -> str:
    """`text` with line breaks replaced by spaces (an error is reported as one line)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def cli_main(function: Callable[..., int | None]) -> Callable[..., int]:
    """Run a CLI entry point; an InputError prints one line and exits 2, a refused write (OutputError, or an
    OSError of the file system) one line and exits 1 (the traceback with AUTODETR_DEBUG=1)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs) -> int:
        try:
            code = function(*args, **kwargs)
        except InputError as error:
            if os.environ.get("AUTODETR_DEBUG"):
                raise
            print(f"error: {one_line(str(error))}", file=sys.stderr)
            sys.exit(1 if isinstance(error, OutputError) else 2)
        except OSError as error:  # the file system refused: full disk, permissions, a path through a file
            if os.environ.get("AUTODETR_DEBUG"):
                raise
            where = f"{error.filename}: " if error.filename else ""
            print(f"error: {one_line(where + str(error.strerror or error))}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(code or 0)

    return wrapper
