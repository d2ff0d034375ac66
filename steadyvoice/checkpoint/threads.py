"""A small thread pool for the file work of a save or a load (writing, reading, checksums release the GIL)."""

from __future__ import annotations

import threading
from collections.abc import Callable

FILE_WORKERS = 2  # files written, read or checked at a time


def parallel_map(fn: Callable, items: list, workers: int = FILE_WORKERS) -> list:
    """``[fn(x) for x in items]`` on ``workers`` threads, in order; the first exception is re-raised.

    Hand-written because concurrent.futures refuses new work once the interpreter is shutting down,
    and the last save of a run may be written exactly then (the process waits for it).
    """
    results: list = [None] * len(items)
    errors: list[BaseException] = []
    next_index = iter(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None or errors:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as exc:  # re-raised in the calling thread below
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker, name="steadyvoice-checkpoint-file") for _ in range(min(workers, len(items)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
