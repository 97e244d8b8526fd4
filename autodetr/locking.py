"""One writer per folder: an exclusive `fcntl.flock` on `<folder>/.autodetr.lock`, refused at once (with
the holder's pid) when another process holds it. The lock dies with its process, so a killed run never
leaves a folder locked."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from autodetr.errors import InputError

LOCK_NAME = ".autodetr.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text or "unknown"


@contextmanager
def folder_lock(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the lock of `folder` (created if missing) for the block; InputError if another process holds
    it. On exit the lock file is removed, and `folder` too if the block left it empty."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{folder}: cannot create the folder ({error.strerror or error})") from None
    path = folder / LOCK_NAME
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise InputError(
                f"{folder}: another {command} (pid {_holder(path)}) is writing this folder; wait until it has "
                "finished, then run again"
            ) from None
        try:  # the previous holder may have removed the file between our open and flock: lock the new one
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(descriptor)
        if created:
            try:
                folder.rmdir()  # only succeeds when empty
            except OSError:
                pass
