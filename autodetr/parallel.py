"""Run a function over many cases in worker processes, with one progress bar.

Workers die with the process that started them: on Linux each asks the kernel for SIGKILL when its
parent exits (`prctl(PR_SET_PDEATHSIG)`), and everywhere a worker checks before renaming a finished file
into place that its parent still runs (`autodetr.atomic_io.orphan_check`), so a killed run leaves no
process that keeps writing."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

from tqdm import tqdm

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: SIGKILL when the parent exits (Linux), and an orphan check for atomic writes."""
    from autodetr import atomic_io

    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    atomic_io.orphan_check = lambda: os.getppid() != parent_pid
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def worker_pool(num_processes: int, mp_context: Any = None) -> ProcessPoolExecutor:
    """A process pool whose workers die with this process (see the module docstring)."""
    return ProcessPoolExecutor(num_processes, mp_context=mp_context, initializer=_die_with_parent,
                               initargs=(os.getpid(),))


def progress_map(function: Callable[..., Any], arguments: Sequence[tuple], num_processes: int, description: str) -> list[Any]:
    """`[function(*a) for a in arguments]`, in `num_processes` processes (in-process when <= 1), in order.

    The first exception is re-raised after the bar is closed, so an error message starts on its own line."""
    with tqdm(total=len(arguments), desc=description, unit="case") as bar:
        if num_processes <= 1 or len(arguments) <= 1:
            results = []
            for argument in arguments:
                results.append(function(*argument))
                bar.update()
            return results
        with worker_pool(min(num_processes, len(arguments))) as pool:
            futures = [pool.submit(function, *argument) for argument in arguments]
            results = []
            try:
                for future in futures:
                    results.append(future.result())
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            return results
