"""The CLI's face of a run: a rich progress bar, one line per failure, the summary table.

Implements the library's `ProgressListener`; stdout stays free for `--json`, the bar
appears only on a terminal, failures are printed the moment they happen (unless quiet).
"""

from __future__ import annotations

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
from mrcnn_cli.progress import RunSummary


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


class RichProgress:
    """A `ProgressListener` drawing a bar with rate and ETA on stderr.

    The bar is shown only if `enabled` and the console is a terminal; failure lines are
    printed unless `quiet`.
    """

    def __init__(
        self, enabled: bool = True, quiet: bool = False, console: Console | None = None
    ) -> None:
        self.enabled, self.quiet = enabled, quiet
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._worked = 0

    def start(self, total: int, unit: str, description: str) -> None:
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(unit),
            TimeElapsedColumn(),
            _EtaColumn(),
            console=self.console,
            disable=not (self.enabled and self.console.is_terminal),
        )
        self._task = self._progress.add_task(escape(description), total=total, worked=0)
        self._progress.start()

    def _update(self, n: int, worked: int = 0) -> None:
        self._worked += worked
        if self._progress is not None:
            self._progress.update(self._task, advance=n, worked=self._worked)

    def advance(self, n: int, detections: int) -> None:
        self._update(n, worked=n)

    def skip(self, n: int) -> None:
        self._update(n)

    def fail(self, item: FailedItem) -> None:
        self._update(1, worked=1)
        if not self.quiet:
            self.console.print(
                f"[red]failed[/] {escape(item.display_path)}: {escape(item.display_reason)}",
                highlight=False,
                soft_wrap=True,
            )

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


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
        table.add_row(Text(item.display_path), Text(item.display_reason))
    return table


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    """The summary table, then the failures (path, reason) if there were any."""
    console = console or Console(stderr=True)
    console.print(summary_table(summary))
    if summary.failed:
        console.print(failures_table(summary.failed))
