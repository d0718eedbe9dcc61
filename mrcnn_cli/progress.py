"""Progress bar, per-file failure lines and the end-of-run summary (rich, on stderr).

stdout stays free for `--json`; the bar appears only on a terminal; failures are printed
the moment they happen (unless quiet) and always end up in the summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from mrcnn_cli.errors import FailedItem


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
            "failures": [{"path": str(f.path), "reason": f.reason} for f in self.failed],
        }


def summary_json(summary: RunSummary) -> str:
    return json.dumps(summary.to_dict(), indent=2)


class _RateColumn(ProgressColumn):
    """Units/s over the items actually worked on, so resumed items do not inflate it."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        worked, elapsed = task.fields.get("worked", 0), task.elapsed or 0.0
        if not worked or elapsed <= 0:
            return Text(f"? {self.unit}/s", style="progress.data.speed")
        return Text(f"{worked / elapsed:.2f} {self.unit}/s", style="progress.data.speed")


class _EtaColumn(ProgressColumn):
    """Time left at the rate of _RateColumn (rich's own ETA would count resumed items)."""

    def render(self, task: Task) -> Text:
        worked, elapsed = task.fields.get("worked", 0), task.elapsed or 0.0
        if not worked or elapsed <= 0 or task.total is None:
            return Text("eta -:--:--", style="progress.remaining")
        seconds = int((task.total - task.completed) * elapsed / worked)
        minutes, secs = divmod(seconds, 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"eta {hours}:{minutes:02d}:{secs:02d}", style="progress.remaining")


class ProgressReporter:
    """Counts a run's items, shows the bar, prints failures; `summary()` at the end.

    Every item ends in exactly one of `advance` (done now), `skip` (already done) or
    `fail`; each moves the bar by one. The bar is shown only if `enabled` and the
    console is a terminal; failure lines are printed unless `quiet`.
    """

    def __init__(
        self,
        total: int,
        unit: str = "images",
        enabled: bool = True,
        console: Console | None = None,
        quiet: bool = False,
        description: str = "segmenting",
    ) -> None:
        self.total = total
        self.unit = unit
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.processed = 0
        self.skipped = 0
        self.detections = 0
        self.failed: list[FailedItem] = []
        self._start = time.perf_counter()
        self._end: float | None = None
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(unit),
            TimeElapsedColumn(),
            _EtaColumn(),
            console=self.console,
            disable=not (enabled and self.console.is_terminal),
        )
        self._task = self._progress.add_task(description, total=total, worked=0)

    def __enter__(self) -> ProgressReporter:
        self._start = time.perf_counter()
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end = time.perf_counter()
        self._progress.stop()

    @property
    def seconds(self) -> float:
        return (self._end or time.perf_counter()) - self._start

    def advance(self, n: int = 1, detections: int = 0) -> None:
        """`n` items were processed now, finding `detections` instances in all."""
        self.processed += n
        self.detections += detections
        self._progress.update(self._task, advance=n, worked=self.processed + len(self.failed))

    def skip(self, n: int = 1) -> None:
        """`n` items were already done by an earlier run (resume)."""
        self.skipped += n
        self._progress.update(self._task, advance=n)

    def fail(self, item: FailedItem) -> None:
        """Count a failed item and print one line for it now (above the bar)."""
        self.failed.append(item)
        self._progress.update(self._task, advance=1, worked=self.processed + len(self.failed))
        if not self.quiet:
            self.console.print(
                f"[red]failed[/] {escape(str(item.path))}: {escape(item.reason)}",
                highlight=False,
                soft_wrap=True,
            )

    def summary(self) -> RunSummary:
        return RunSummary(
            total=self.total,
            processed=self.processed,
            skipped=self.skipped,
            failed=list(self.failed),
            detections=self.detections,
            seconds=self.seconds,
            unit=self.unit,
        )


def summary_table(summary: RunSummary) -> Table:
    table = Table(title="mrcnn summary", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    unit = summary.unit
    table.add_row(unit, str(summary.total))
    table.add_row("processed", str(summary.processed))
    table.add_row("skipped (already done)", str(summary.skipped))
    table.add_row("detections", str(summary.detections))
    failed_style = "red" if summary.failed else ""
    table.add_row("failures", Text(str(len(summary.failed)), style=failed_style))
    table.add_row("seconds", f"{summary.seconds:.2f}")
    table.add_row(f"{unit}/s", f"{summary.rate:.2f}")
    return table


def failures_table(failures: list[FailedItem]) -> Table:
    table = Table(title="failures", title_justify="left", title_style="red")
    table.add_column("path", overflow="fold")
    table.add_column("reason", overflow="fold")
    for item in failures:
        table.add_row(Text(str(item.path)), Text(item.reason))
    return table


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    """The summary table, then the failures (path, reason) if there were any."""
    console = console or Console(stderr=True)
    console.print(summary_table(summary))
    if summary.failed:
        console.print(failures_table(summary.failed))
