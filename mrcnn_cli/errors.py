"""Error types that the CLI turns into one-line messages and exit codes.

Per-file problems are *values* (see `FailedItem`), not exceptions: only problems that
stop the whole run (bad options, missing weights, unwritable output) are raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mrcnn_cli.names import display_name

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


class MrcnnError(Exception):
    """A run-stopping problem the user can fix; printed as one line, exit code 2."""

    exit_code = EXIT_USAGE


class WeightsNotFoundError(MrcnnError):
    """No checkpoint file could be found or downloaded for a model."""


class DecodeError(Exception):
    """An input file could not be turned into an RGB image."""


@dataclass(frozen=True)
class FailedItem:
    """A file that could not be processed, and why (one line, for the summary)."""

    path: Path | str
    reason: str

    @property
    def display_path(self) -> str:
        """The path as printable UTF-8 on one line (see `names.display_name`), for output."""
        return display_name(self.path)

    @property
    def display_reason(self) -> str:
        """The reason, made safe the same way (it may quote an OS message with a name)."""
        return display_name(self.reason)
