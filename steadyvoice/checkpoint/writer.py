"""Background writer: at most one save in flight, errors never lost, never exit before the last commit.

The training thread hands over a job (a closure writing a snapshot already copied to host memory) and
goes on training. :meth:`AsyncWriter.submit` first waits for the previous job, so at most one save is in
flight and host memory holds at most two snapshots (the one being written and the one being handed
over). An exception raised by a job is kept and re-raised in the training thread at the next
``submit``/``wait``/``close``. The thread is not a daemon (the interpreter waits for it at exit) and an
``atexit`` hook waits too and reports an error that nobody collected.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable

log = logging.getLogger("steadyvoice.checkpoint")


class AsyncWriter:
    def __init__(self, enabled: bool = True, name: str = "steadyvoice-checkpoint-writer"):
        self.enabled = enabled
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        _live_writers.add(self)

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` in the background (or inline when disabled) after the previous one has finished."""
        self.wait()
        if not self.enabled:
            job()
            return
        self._thread = threading.Thread(target=self._run, args=(job,), name=self.name, daemon=False)
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # kept for the training thread; nothing is lost
            with self._lock:
                self._error = exc

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Block until the save in flight is committed; re-raise its error, if any."""
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    close = wait


_live_writers: "weakref.WeakSet[AsyncWriter]" = weakref.WeakSet()


@atexit.register
def _wait_for_writers_at_exit() -> None:
    for writer in list(_live_writers):
        try:
            writer.wait()
        except BaseException as exc:  # the process is ending: the best we can do is say it loudly
            log.error("a checkpoint save failed and nobody collected the error: %s", exc)
