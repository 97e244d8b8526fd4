"""Run a function over many cases in worker processes, with one progress bar."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

from tqdm import tqdm


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
        with ProcessPoolExecutor(min(num_processes, len(arguments))) as pool:
            futures = [pool.submit(function, *argument) for argument in arguments]
            results = []
            for future in futures:
                results.append(future.result())
                bar.update()
            return results
