"""Which model batch runs next when Ray workers die: bounded retries, then image by image.

Plain bookkeeping, no Ray: the Ray driver (`ray_engine`) tells it what happened and it
says what to run. The rules:

* A batch whose worker died while running it is charged to that worker and retried
  first, on whichever worker is free next. A batch only decoded for that worker, not yet
  given to it, is put back uncharged (a worker holds one batch at a time, so the one it
  was running is the one to blame).
* A batch charged on two different workers (or `max_tries` times in all) is split into
  one batch per image still to do: a poison image (one that kills whatever worker runs
  it, e.g. by running it out of memory) cannot take its batch-mates with it.
* A single image charged on two different workers (or `max_tries` times) is given up:
  one failure record, never a loop.

A split image runs without its batch-mates, so at a batch size above 1 its numbers may
differ in the last digits from a run where its batch never failed; at batch size 1 (the
CPU default) nothing changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_TRIES = 3
ROW_LISTS = ("paths", "shown", "rels", "ids", "todo", "listed")


@dataclass
class Task:
    """One model batch (a driver row) and its history of worker deaths."""

    row: dict[str, Any]
    failed_on: set[int] = field(default_factory=set)  # worker ids it was charged on
    tries: int = 0  # charged failures
    reasons: list[str] = field(default_factory=list)

    @property
    def todo_rels(self) -> list[str]:
        return [rel for rel, todo in zip(self.row["rels"], self.row["todo"]) if todo]

    @property
    def is_retry(self) -> bool:
        return self.tries > 0 or self.row.get("split", False)


class RetryBook:
    """The queue of batches still to run, with the retry and split rules above."""

    def __init__(self, rows: Iterable[dict[str, Any]], max_tries: int = MAX_TRIES) -> None:
        self.queue: deque[Task] = deque(Task(row) for row in rows)
        self.max_tries = max_tries

    def __len__(self) -> int:
        return len(self.queue)

    def take(self) -> Task | None:
        return self.queue.popleft() if self.queue else None

    def put_back(self, task: Task) -> None:
        """A batch that did not run (queued behind a dying one): first in line, uncharged."""
        self.queue.appendleft(task)

    def charge(self, task: Task, worker: int, reason: str) -> list[tuple[str, str]]:
        """`task` failed on `worker`; requeue, split or give up. Returns the images given
        up, as (rel, reason) pairs."""
        task.tries += 1
        task.failed_on.add(worker)
        task.reasons.append(reason)
        if len(task.failed_on) < 2 and task.tries < self.max_tries:
            self.queue.appendleft(task)  # retried first: its outputs are the oldest owed
            return []
        if len(task.row["rels"]) > 1:
            singles = [_single(task.row, i) for i, todo in enumerate(task.row["todo"]) if todo]
            self.queue.extendleft(reversed([Task(row) for row in singles]))
            return []
        why = (
            f"its Ray worker died while running it, {task.tries} times on "
            f"{len(task.failed_on)} workers (last: {reason})"
        )
        return [(rel, why) for rel in task.todo_rels]


def _single(row: dict[str, Any], i: int) -> dict[str, Any]:
    """Image `i` of a batch row as a batch of its own."""
    single = {key: [row[key][i]] for key in ROW_LISTS if key in row}
    return {**row, **single, "split": True}
