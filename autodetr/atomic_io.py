"""Atomic writes: every output goes to a temporary name in the same folder and is renamed when complete,
so an interrupted run never leaves a half-written file and a rerun can trust what exists.

A temporary name is `.<name>.<pid>-<random>.partial<suffix>` (the name part shortened so the whole stays
within 255 bytes); `remove_stale_partials` deletes those whose writer process no longer exists (a killed
run). A write that fails (full disk, read-only or missing folder, a name too long) raises `OutputError`
naming the file; a JSON or npz file that cannot be read an `InputError` (`missing_file_reason`: a symlink
loop is not "file not found")."""
from __future__ import annotations

import errno
import json
import os
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from autodetr.errors import InputError, OutputError

#: Most file systems limit one name to 255 bytes.
MAX_NAME_BYTES = 255
PARTIAL_MARKER = ".partial"
_RANDOM_PART_BYTES = 8  # mkstemp's random characters

#: Set in worker processes (`autodetr.parallel`): returns True when the parent process is gone, so a
#: worker never renames a finished file into place after the run that started it was killed.
orphan_check: Callable[[], bool] | None = None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _describe(error: OSError) -> str:
    return error.strerror or type(error).__name__


def _temporary_prefix(name: str, suffix: str) -> str:
    """`.<name>.<pid>-`, with `name` shortened so that the temporary name fits in MAX_NAME_BYTES."""
    tail = f".{os.getpid()}-"
    room = MAX_NAME_BYTES - 1 - len(tail.encode()) - _RANDOM_PART_BYTES - len((PARTIAL_MARKER + suffix).encode())
    encoded = name.encode()[: max(room, 1)]
    return "." + encoded.decode(errors="ignore") + tail


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds, else delete it.

    An OSError of the file system (no space, permissions, a parent that is a file, a name too long) becomes
    an InputError naming `path`."""
    target = Path(path)
    if len(target.name.encode()) > MAX_NAME_BYTES:
        raise OutputError(f"{target}: file name longer than {MAX_NAME_BYTES} bytes; use a shorter case or file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=_temporary_prefix(target.name, suffix), suffix=PARTIAL_MARKER + suffix, dir=target.parent
        )
        os.close(handle)
    except OSError as error:
        raise OutputError(f"{target}: cannot write ({_describe(error)})") from None
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        if orphan_check is not None and orphan_check():
            raise SystemExit("parent process gone; not writing " + str(target))
        os.chmod(temporary_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(temporary_path, target)
    except OSError as error:
        temporary_path.unlink(missing_ok=True)
        raise OutputError(f"{target}: cannot write ({_describe(error)})") from None
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files in `folder` left by writers that no longer run (e.g. killed with
    SIGKILL); returns the removed paths. Files of a running writer, and names without a pid, are kept."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.glob(f".*{PARTIAL_MARKER}*"):
        middle = path.name.rsplit(PARTIAL_MARKER, 1)[0]
        pid_part = middle.rsplit(".", 1)[-1].split("-", 1)[0]
        if not pid_part.isdigit() or _writer_alive(int(pid_part)):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def missing_file_reason(path: Path) -> str:
    """Why `path` is no readable file: "symlink loop ...", "broken symlink ...", "is a folder ...", or
    "file not found"."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink loop (the link leads back to itself, so there is no file); replace it with the file"
        if path.is_symlink():
            return f"broken symlink (it points to {os.readlink(path)}, which does not exist)"
        return "file not found"
    return "is a folder, not a file" if os.path.isdir(path) else f"not a regular file (mode {oct(mode)})"


def _to_builtin(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    if isinstance(value, np.ndarray):
        return _to_builtin(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, content: Any) -> None:
    """Write JSON atomically (numpy values become plain numbers, indent 2)."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(_to_builtin(content), indent=2) + "\n")


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key {repeated[0]!r} appears twice")
    return dict(pairs)


def read_json(path: str | os.PathLike, expected: type | tuple[type, ...] | None = None, unique_keys: bool = False) -> Any:
    """Read a JSON file; unreadable, non-UTF-8 or invalid JSON (or, with `expected`, a top-level value of
    another type; with `unique_keys`, a key given twice in one object) raises InputError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        content = json.loads(text, object_pairs_hook=_refuse_duplicate_keys if unique_keys else None)
    except FileNotFoundError:
        raise InputError(f"{path}: {missing_file_reason(path)}") from None
    except OSError as error:
        reason = missing_file_reason(path) if error.errno == errno.ELOOP else f"cannot be read ({_describe(error)})"
        raise InputError(f"{path}: {reason}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text, so not valid JSON") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}); delete or repair it") from None
    except ValueError as error:  # a repeated key
        raise InputError(f"{path}: {error}") from None
    if expected is not None and not isinstance(content, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        wanted = names.replace("dict", "a JSON object").replace("list", "a JSON list")
        raise InputError(f"{path}: expected {wanted} at the top level, got {type(content).__name__}")
    return content


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write a compressed npz atomically."""
    with atomic_path(path, suffix=".npz") as temporary:
        np.savez_compressed(temporary, **arrays)


#: What numpy raises for a truncated or corrupt npz.
NPZ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an npz (no pickled objects); a truncated or corrupt file raises InputError."""
    try:
        with np.load(path, allow_pickle=False) as content:
            return {key: content[key] for key in content.files}
    except NPZ_ERRORS as error:
        raise InputError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None
