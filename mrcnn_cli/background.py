"""A writer thread behind a bounded queue: the producer never waits on slow I/O for long,
and memory stays flat however many items pass through."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_END = object()


class BackgroundWriter(Generic[T]):
    """Calls `handle(item)` on a thread for each `put` item, in order (bounded queue).

    After an error the thread keeps draining so `put` never blocks; the error is raised
    in the producer at its next `put` or on leaving the `with` block.
    """

    def __init__(
        self,
        handle: Callable[[T], None],
        finish: Callable[[], None],
        abort: Callable[[], None],
        maxsize: int,
    ) -> None:
        self._handle, self._finish, self._abort = handle, finish, abort
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name="background-write", daemon=True)

    def __enter__(self) -> BackgroundWriter[T]:
        self._thread.start()
        return self

    def _run(self) -> None:
        while (item := self._queue.get()) is not _END:
            if self._error is None and not self._aborted:
                try:
                    self._handle(item)
                except BaseException as exc:
                    self._error = exc
        try:
            if self._error is None and not self._aborted:
                self._finish()
            else:
                self._abort()
        except BaseException as exc:
            self._error = self._error or exc

    def put(self, item: T) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._aborted = exc_type is not None
        self._queue.put(_END)
        self._thread.join()
        if self._error is not None and exc_type is None:
            raise self._error
