"""How a run reports what it does: a small listener protocol and the summary it ends with.

The library only counts. A front end that wants a bar passes a `ProgressListener` (the
CLI's rich implementation lives in `commands/`); called from Python with none, a run is
silent and hands back a `RunSummary`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from mrcnn_cli.errors import FailedItem


class ProgressListener(Protocol):
    """Told about every item of a run as it ends: done now, done before, or failed."""

    def start(self, total: int, unit: str, description: str) -> None: ...

    def advance(self, n: int, detections: int) -> None: ...

    def skip(self, n: int) -> None: ...

    def fail(self, item: FailedItem) -> None: ...

    def stop(self) -> None: ...


@dataclass
class RunSummary:
    """What a run did: total = processed + skipped (already done) + failed."""

    total: int
    processed: int
    skipped: int
    failed: list[FailedItem] = field(default_factory=list)
    detections: int = 0
    seconds: float = 0.0
    unit: str = "images"
    tracks: dict[str, int] = field(default_factory=dict)  # per class, when videos are tracked

    @property
    def rate(self) -> float:
        """Processed units per second (skipped ones cost nothing, so they do not count)."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "total": self.total,
            "processed": self.processed,
            "skipped": self.skipped,
            "failed": len(self.failed),
            "detections": self.detections,
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 3),
            "failures": [{"path": f.display_path, "reason": f.display_reason} for f in self.failed],
            **({"tracks": self.tracks} if self.tracks else {}),
        }


def summary_json(summary: RunSummary) -> str:
    return json.dumps(summary.to_dict(), indent=2)


class Tally:
    """Counts a run's items and forwards each event to an optional listener.

    Every item ends in exactly one of `advance` (done now), `skip` (already done) or
    `fail`. Use as a context manager: the listener is started and always stopped.
    """

    def __init__(
        self,
        total: int,
        unit: str = "images",
        description: str = "segmenting",
        listener: ProgressListener | None = None,
    ) -> None:
        self.total, self.unit, self.description = total, unit, description
        self.listener = listener
        self.processed = 0
        self.skipped = 0
        self.detections = 0
        self.failed: list[FailedItem] = []
        self.tracks: dict[str, int] = {}
        self._start = time.perf_counter()
        self._end: float | None = None

    def __enter__(self) -> Tally:
        self._start = time.perf_counter()
        if self.listener is not None:
            self.listener.start(self.total, self.unit, self.description)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end = time.perf_counter()
        if self.listener is not None:
            self.listener.stop()

    @property
    def seconds(self) -> float:
        return (self._end or time.perf_counter()) - self._start

    def advance(self, n: int = 1, detections: int = 0) -> None:
        """`n` items were processed now, finding `detections` instances in all."""
        self.processed += n
        self.detections += detections
        if self.listener is not None:
            self.listener.advance(n, detections)

    def skip(self, n: int = 1) -> None:
        """`n` items were already done by an earlier run (resume)."""
        self.skipped += n
        if self.listener is not None:
            self.listener.skip(n)

    def add_tracks(self, per_class: dict[str, int]) -> None:
        """Tracks a video was followed with, per class (summed over the run's videos)."""
        for name, count in per_class.items():
            self.tracks[name] = self.tracks.get(name, 0) + count

    def fail(self, item: FailedItem) -> None:
        self.failed.append(item)
        if self.listener is not None:
            self.listener.fail(item)

    def summary(self) -> RunSummary:
        return RunSummary(
            total=self.total,
            processed=self.processed,
            skipped=self.skipped,
            failed=list(self.failed),
            detections=self.detections,
            seconds=self.seconds,
            unit=self.unit,
            tracks=dict(self.tracks),
        )
