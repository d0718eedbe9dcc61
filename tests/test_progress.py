"""Progress reporting: counts, failure lines, no bar off a terminal, the summary."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from mrcnn_cli.commands._progress import RichProgress, print_summary
from mrcnn_cli.errors import FailedItem
from mrcnn_cli.progress import RunSummary, Tally, summary_json

BAD = FailedItem(Path("/data/in/broken.jpg"), "not an image (0 bytes)")


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=200), buffer


def run_three(listener: RichProgress | None = None) -> Tally:
    with Tally(3, listener=listener) as tally:
        tally.skip()
        tally.advance(detections=4)
        tally.fail(BAD)
    return tally


def test_tally_counts_processed_skipped_failed_and_detections() -> None:
    summary = run_three().summary()
    assert (summary.total, summary.processed, summary.skipped) == (3, 1, 1)
    assert summary.failed == [BAD] and summary.detections == 4
    assert summary.seconds > 0


def test_a_failure_prints_one_line_with_the_file_and_the_reason() -> None:
    con, buffer = console(terminal=False)
    run_three(RichProgress(enabled=False, console=con))
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
    assert lines == ["failed /data/in/broken.jpg: not an image (0 bytes)"]


def test_a_path_with_brackets_is_printed_literally() -> None:
    con, buffer = console(terminal=False)
    with Tally(1, listener=RichProgress(enabled=False, console=con)) as tally:
        tally.fail(FailedItem("[red]x[/].jpg", "bad [b]"))
    assert "failed [red]x[/].jpg: bad [b]" in buffer.getvalue()


def test_quiet_prints_no_failure_line_but_keeps_the_failure() -> None:
    con, buffer = console(terminal=False)
    tally = run_three(RichProgress(enabled=False, quiet=True, console=con))
    assert buffer.getvalue() == ""
    assert tally.summary().failed == [BAD]


def test_disabled_progress_writes_no_bar_or_escape_codes() -> None:
    con, buffer = console(terminal=True)
    run_three(RichProgress(enabled=False, console=con))
    assert "\x1b" not in buffer.getvalue().replace("\x1b[31mfailed\x1b[0m", "")
    assert "━" not in buffer.getvalue()


def test_enabled_progress_on_a_terminal_draws_the_bar_with_rate() -> None:
    con, buffer = console(terminal=True)
    run_three(RichProgress(enabled=True, console=con))
    out = buffer.getvalue()
    assert "━" in out and "3/3" in out and "images/s" in out


def test_enabled_progress_off_a_terminal_draws_no_bar() -> None:
    con, buffer = console(terminal=False)
    run_three(RichProgress(enabled=True, console=con))
    assert "━" not in buffer.getvalue() and "\x1b" not in buffer.getvalue()


def test_rate_is_processed_items_per_second() -> None:
    summary = RunSummary(total=10, processed=6, skipped=4, detections=20, seconds=3.0)
    assert summary.rate == 2.0


def test_rate_is_zero_when_no_time_passed() -> None:
    assert RunSummary(total=1, processed=0, skipped=1, seconds=0.0).rate == 0.0


def test_summary_json_has_counts_rate_and_failures() -> None:
    summary = RunSummary(total=5, processed=3, skipped=1, failed=[BAD], detections=7, seconds=1.5)
    data = json.loads(summary_json(summary))
    assert data == {
        "unit": "images",
        "total": 5,
        "processed": 3,
        "skipped": 1,
        "failed": 1,
        "detections": 7,
        "seconds": 1.5,
        "rate": 2.0,
        "failures": [{"path": "/data/in/broken.jpg", "reason": "not an image (0 bytes)"}],
    }


def test_printed_summary_shows_the_numbers_and_each_failure() -> None:
    con, buffer = console(terminal=False)
    summary = RunSummary(total=5, processed=3, skipped=1, failed=[BAD], detections=7, seconds=1.5)
    print_summary(summary, con)
    out = buffer.getvalue()
    assert "skipped (already done)" in out and "images/s" in out and "2.00" in out
    assert "/data/in/broken.jpg" in out and "not an image (0 bytes)" in out


def test_printed_summary_without_failures_has_no_failures_table() -> None:
    con, buffer = console(terminal=False)
    print_summary(RunSummary(total=2, processed=2, skipped=0, seconds=1.0), con)
    assert "reason" not in buffer.getvalue()
