"""Standard streams that a closed or broken pipe cannot stop.

`mrcnn segment ... 2>&1 >/dev/null | head -1` closes the reader of stderr after one
line; the next progress or failure line would raise BrokenPipeError in the middle of
the run. The work matters more than the messages: once a write to a stream fails, the
stream drops everything after it (and its descriptor points at /dev/null, so the
interpreter's last flush at exit fails quietly too), and the run goes on.
"""

from __future__ import annotations

import io
import os
import sys
from typing import TextIO


class DroppingStream(io.TextIOBase):
    """Forwards to `inner` until a write or flush fails with an OSError; drops after that."""

    def __init__(self, inner: TextIO | None) -> None:
        super().__init__()
        self.inner = inner
        self.broken = inner is None

    def _break(self) -> None:
        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.inner.fileno())
            os.close(devnull)
            self.inner.flush()  # what the failed write left buffered now goes nowhere
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.inner.write(text)
            except (OSError, ValueError):  # EPIPE, ENOSPC, EIO, or a closed file
                self._break()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.inner.flush()
            except (OSError, ValueError):
                self._break()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        if self.broken:
            return False
        try:
            return self.inner.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        if self.inner is None:
            raise io.UnsupportedOperation("no underlying stream")
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.inner, "errors", None)


def guard_standard_streams() -> None:
    """Wrap sys.stdout and sys.stderr (once) so that writing to them never raises."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, DroppingStream):
            setattr(sys, name, DroppingStream(stream))
